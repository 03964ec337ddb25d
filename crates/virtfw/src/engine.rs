//! Applying a firewall: libvirt's algorithm, step for step.
//!
//! Groups run in order. Inside a group, commands run in order, and commands that query callbacks
//! add while the group runs are executed after the ones already there. When a command fails and
//! does not ignore errors, the group fails: the rollback lists of the failing group and (through
//! `INHERIT_PREVIOUS`) of earlier groups run forward, their errors are ignored, and the first
//! error is returned. See the crate documentation for the quirks this keeps on purpose.

use std::collections::BTreeSet;
use std::sync::Mutex;

use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::executor::{Executor, Invocation, Output};
use crate::firewall::Firewall;
use crate::model::{Backend, Command, Layer, QueryContext, RollbackFlags, TransactionFlags};
use crate::rollback;
use crate::transcript::command_line;

/// libvirt serialises every apply in the process; so do we, so that two firewalls built from
/// the same listing (e.g. the global chain setup) cannot interleave.
static APPLY_LOCK: Mutex<()> = Mutex::new(());

/// Hooks into an apply, for journalling and progress reporting. Every method has a no-op default.
pub trait ApplyObserver: Sync {
    /// A command is about to run (full argv, program first). `group` is the group index.
    fn will_run(&self, _group: usize, _argv: &[String]) {}
    /// An inverse was recorded on `group`'s rollback list by auto-rollback.
    fn inverse_recorded(&self, _group: usize, _inverse: &Command) {}
    /// Group `failed` failed; groups `first..=failed` are about to be rolled back.
    fn rolling_back(&self, _first: usize, _failed: usize) {}
    /// A command of `group` that ignores errors did not take effect and the failure was
    /// ignored (not called for `nft list`). `missing` is true when the object it deletes was
    /// already gone: a removal's stale handle or rule. Both paths report here; the batch path
    /// may call it from several threads. See [`crate::batch::IgnoredCounter`].
    fn ignored_failure(&self, _group: usize, _cmd: &Command, _missing: bool) {}
}

/// Options of [`Firewall::apply_with`].
///
/// `ApplyOptions::default()` honours the environment switch `VIRTFW_NO_BATCH=1`
/// ([`crate::batch::NO_BATCH_ENV`]), so a whole test suite or program can be run on the
/// per-command path without code changes; options written out field by field do not read it.
#[derive(Clone, Copy)]
pub struct ApplyOptions<'a> {
    /// Observer of the apply, if any.
    pub observer: Option<&'a dyn ApplyObserver>,
    /// Force libvirt's one-process-per-command path (the CLI's `--no-batch`): identical logs and
    /// transcripts to libvirt, for debugging and conformance tests. When false the engine may
    /// run a group as one atomic batch where that cannot change the outcome.
    pub per_command: bool,
}

impl Default for ApplyOptions<'_> {
    fn default() -> Self {
        ApplyOptions {
            observer: None,
            per_command: crate::batch::disabled_by_env(),
        }
    }
}

struct NoObserver;
impl ApplyObserver for NoObserver {}

/// What running one command produced.
pub(crate) struct Ran {
    stdout: String,
    inverse: Option<Command>,
}

/// The full argv of a command under `backend`, and whether it is an auto-rollback create.
pub(crate) fn argv_for(
    backend: Backend,
    auto_rollback: bool,
    cmd: &Command,
) -> (Vec<String>, Option<rollback::NftCreate>, bool) {
    let (program, lead) = cmd.layer.program(backend);
    let mut argv = Vec::with_capacity(cmd.args.len() + 3);
    argv.push(program.to_string());
    argv.extend(lead.iter().map(|s| s.to_string()));
    let mut nft_create = None;
    let mut ipt_create = false;
    if auto_rollback && cmd.layer != Layer::Tc {
        match backend {
            Backend::Nftables => {
                nft_create = rollback::nft_create(&cmd.args);
                if nft_create.is_some() {
                    argv.push("-ae".to_string());
                }
            }
            Backend::Iptables => ipt_create = rollback::iptables_is_create(&cmd.args),
            Backend::None => {}
        }
    }
    argv.extend(cmd.args.iter().cloned());
    (argv, nft_create, ipt_create)
}

/// Run one command and derive its inverse when it is an auto-rollback create.
pub(crate) fn run_command(
    backend: Backend,
    flags: TransactionFlags,
    cmd: &Command,
    exec: &dyn Executor,
    observer: &dyn ApplyObserver,
    group: usize,
) -> Result<Ran> {
    let auto = flags.contains(TransactionFlags::AUTO_ROLLBACK);
    let (argv, nft_create, ipt_create) = argv_for(backend, auto, cmd);
    if backend == Backend::None {
        return Err(Error::BackendNotImplemented {
            cmdline: command_line(&argv),
        });
    }
    observer.will_run(group, &argv);
    debug!(cmd = %command_line(&argv), "running firewall command");
    let out: Output = exec
        .run(Invocation {
            argv: &argv,
            stdin: None,
        })
        .map_err(|source| Error::Exec {
            cmdline: command_line(&argv),
            source,
        })?;
    if !out.success() {
        let is_list = backend == Backend::Nftables
            && cmd.layer != Layer::Tc
            && cmd.args.first().is_some_and(|a| a == "list");
        if is_list || cmd.ignore_errors {
            if !is_list {
                debug!(cmd = %command_line(&argv), status = out.status, stderr = %out.stderr.trim_end(), "ignoring failure");
                observer.ignored_failure(group, cmd, crate::batch::failure_is_missing(&out.stderr));
            }
            return Ok(Ran {
                stdout: out.stdout,
                inverse: None,
            });
        }
        return Err(Error::CommandFailed {
            cmdline: command_line(&argv),
            status: out.status,
            stderr: out.stderr.trim_end().to_string(),
        });
    }
    let inverse = if let Some(create) = nft_create {
        let handle = rollback::parse_handle(&out.stdout).ok_or_else(|| Error::NoHandle {
            cmdline: command_line(&argv),
            stdout: out.stdout.clone(),
        })?;
        Some(
            Command::new(cmd.layer, rollback::nft_inverse(&cmd.args, create, handle))
                .with_appended(rollback::nft_is_append(&cmd.args, create)),
        )
    } else if ipt_create {
        Some(
            Command::new(cmd.layer, rollback::iptables_inverse(&cmd.args))
                .with_appended(rollback::iptables_is_append(&cmd.args)),
        )
    } else {
        None
    };
    Ok(Ran {
        stdout: out.stdout,
        inverse: inverse.map(|c| c.with_ignore_errors(true)),
    })
}

impl Firewall {
    /// Apply the firewall with `exec` (libvirt `virFirewallApply`).
    ///
    /// On success the groups' rollback lists hold everything needed to undo the firewall; turn
    /// them into a removal plan with [`Firewall::new_from_rollback`].
    pub fn apply(&mut self, exec: &dyn Executor) -> Result<()> {
        self.apply_with(exec, ApplyOptions::default())
    }

    /// [`Firewall::apply`] with options.
    pub fn apply_with(&mut self, exec: &dyn Executor, options: ApplyOptions<'_>) -> Result<()> {
        let _guard = APPLY_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        self.apply_locked(exec, options)
    }

    /// Apply firewalls that touch disjoint tables (the IPv4 and IPv6 global setups, say) at the
    /// same time, one thread each, and return each one's result in order. On the per-command
    /// path (or with an executor that does not batch) they run one after the other, in order,
    /// as libvirt would. The caller vouches that no two of them read or change the same table:
    /// otherwise their query callbacks could act on each other's stale listings.
    pub fn apply_concurrently(
        firewalls: &mut [Firewall],
        exec: &dyn Executor,
        options: ApplyOptions<'_>,
    ) -> Vec<Result<()>> {
        let _guard = APPLY_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if options.per_command || !exec.supports_batch() || firewalls.len() < 2 {
            return firewalls
                .iter_mut()
                .map(|fw| fw.apply_locked(exec, options))
                .collect();
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = firewalls
                .iter_mut()
                .map(|fw| scope.spawn(move || fw.apply_locked(exec, options)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    }

    /// [`Firewall::apply_with`] with [`APPLY_LOCK`] already held.
    fn apply_locked(&mut self, exec: &dyn Executor, options: ApplyOptions<'_>) -> Result<()> {
        self.preflight(exec)?;
        let observer = options.observer.unwrap_or(&NoObserver);
        // The fast path (crate::batch) takes runs of groups it can apply as one kernel
        // transaction; everything else, and every failed batch, runs command by command.
        let batching = !options.per_command && exec.supports_batch();
        let mut per_command_until = 0;
        let mut i = 0;
        while i < self.groups.len() {
            if batching && i >= per_command_until {
                match self.batch_step(i, exec, observer) {
                    crate::batch::Step::Applied { next } => {
                        i = next;
                        continue;
                    }
                    crate::batch::Step::PerCommand { until } => per_command_until = until,
                    crate::batch::Step::Failed { group, error } => {
                        warn!(group, error = %error, "firewall group failed, rolling back");
                        self.rollback_from(group, exec, observer);
                        return Err(error);
                    }
                }
            }
            if let Err(err) = self.apply_group(i, exec, observer, batching) {
                warn!(group = i, error = %err, "firewall group failed, rolling back");
                self.rollback_from(i, exec, observer);
                return Err(err);
            }
            i += 1;
        }
        Ok(())
    }

    /// Refuse, before anything runs, what can never succeed: a builder error, an empty
    /// command, backend `none`, a program that is not installed. This is stricter than libvirt
    /// (which finds these mid-apply) and guarantees that bad input applies nothing.
    fn preflight(&self, exec: &dyn Executor) -> Result<()> {
        if let Some(err) = &self.error {
            return Err(Error::Build(err.clone()));
        }
        crate::validate::check_firewall(self)?;
        let mut programs = BTreeSet::new();
        for (gi, group) in self.groups.iter().enumerate() {
            for (ci, cmd) in group.actions.iter().chain(&group.rollbacks).enumerate() {
                if cmd.args.is_empty() {
                    return Err(Error::EmptyCommand {
                        group: gi,
                        index: ci,
                    });
                }
                if self.backend == Backend::None {
                    return Err(Error::BackendNotImplemented {
                        cmdline: command_line(&cmd.args),
                    });
                }
                programs.insert(cmd.layer.program(self.backend).0);
            }
        }
        for program in programs {
            exec.check_program(program).map_err(|source| Error::Exec {
                cmdline: program.to_string(),
                source,
            })?;
        }
        Ok(())
    }

    /// Run group `gi` command by command. With `batching`, the commands query callbacks add
    /// run as batches where that is exact ([`Firewall::batch_added`]).
    fn apply_group(
        &mut self,
        gi: usize,
        exec: &dyn Executor,
        observer: &dyn ApplyObserver,
        batching: bool,
    ) -> Result<()> {
        self.current_group = gi;
        self.groups[gi].adding_rollback = false;
        let backend = self.backend;
        let flags = self.groups[gi].flags;
        let original = self.groups[gi].actions.len();
        let mut per_command_until = 0;
        let mut i = 0;
        // The length is read again on every step: callbacks append to this very list.
        while i < self.groups[gi].actions.len() {
            if batching && i >= original && i >= per_command_until {
                let (next, until) = self.batch_added(gi, i, exec, observer)?;
                per_command_until = until;
                if next > i {
                    i = next;
                    continue;
                }
            }
            let cmd = &self.groups[gi].actions[i];
            if cmd.args.is_empty() {
                return Err(Error::EmptyCommand {
                    group: gi,
                    index: i,
                });
            }
            let ran = run_command(backend, flags, cmd, exec, observer, gi)?;
            if let Some(inverse) = ran.inverse {
                observer.inverse_recorded(gi, &inverse);
                self.groups[gi].rollbacks.push(inverse);
            }
            if let Some(mut callback) = self.groups[gi].actions[i].query.take() {
                let cmd = &self.groups[gi].actions[i];
                // Split like glib's g_strsplit, which libvirt uses: empty output is no lines
                // at all, and a trailing newline leaves a final empty line.
                let lines: Vec<String> = if ran.stdout.is_empty() {
                    Vec::new()
                } else {
                    ran.stdout.split('\n').map(str::to_owned).collect()
                };
                let mut ctx = QueryContext {
                    layer: cmd.layer,
                    lines: &lines,
                    group_flags: flags,
                    added: Vec::new(),
                };
                let result = callback(&mut ctx);
                let added = std::mem::take(&mut ctx.added);
                let auto = flags.contains(TransactionFlags::AUTO_ROLLBACK);
                let cmdline = command_line(&argv_for(backend, auto, cmd).0);
                self.groups[gi].actions[i].query = Some(callback);
                self.groups[gi].actions.extend(added);
                if let Err(message) = result {
                    return Err(Error::Query { cmdline, message });
                }
            }
            i += 1;
        }
        Ok(())
    }

    /// Which group the rollback of failed group `failed` starts at (libvirt: the lowest group
    /// `k >= 1` with `INHERIT_PREVIOUS`, minus one; group 0's flag is never consulted; a gap
    /// does not stop the scan).
    pub fn rollback_start(&self, failed: usize) -> usize {
        let mut first = failed;
        for k in (1..=failed).rev() {
            if self.groups[k]
                .rollback_flags
                .contains(RollbackFlags::INHERIT_PREVIOUS)
            {
                first = k - 1;
            }
        }
        first
    }

    fn rollback_from(&mut self, failed: usize, exec: &dyn Executor, observer: &dyn ApplyObserver) {
        let first = self.rollback_start(failed);
        observer.rolling_back(first, failed);
        let backend = self.backend;
        for j in first..=failed {
            self.current_group = j;
            self.groups[j].adding_rollback = true;
            // Rollback commands are deletes; they never produce inverses, so the flags that
            // would trigger auto-rollback are not passed on.
            for cmd in &self.groups[j].rollbacks {
                if let Err(err) =
                    run_command(backend, TransactionFlags::empty(), cmd, exec, observer, j)
                {
                    debug!(error = %err, "ignoring rollback failure");
                }
            }
        }
    }
}
