//! Applying a firewall: libvirt's algorithm, step for step.
//!
//! Groups run in order. Inside a group, commands run in order, and commands that query callbacks
//! add while the group runs are executed after the ones already there. When a command fails and
//! does not ignore errors, the group fails: the rollback lists of the failing group and (through
//! `INHERIT_PREVIOUS`) of earlier groups run forward, their errors are ignored, and the first
//! error is returned. See the crate documentation for the quirks this keeps on purpose.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::firewall::Firewall;
use crate::model::{Backend, QueryContext, RollbackFlags, TransactionFlags};
use crate::nft;
use crate::observer::{ApplyObserver, Counting, IgnoredCounter, NoObserver};
use crate::run::{argv_for, run_command};
use crate::transcript::command_line;

/// One lock per firewall the applies act on ([`Executor::lock_key`]): libvirt serialises every
/// apply in the process, so that two firewalls built from the same listing (e.g. the global
/// chain setup) cannot interleave; applies in different network namespaces touch different
/// rulesets and may run at the same time.
static APPLY_LOCKS: Mutex<Option<HashMap<String, Arc<Mutex<()>>>>> = Mutex::new(None);

/// The lock of the ruleset `exec` acts on.
fn apply_lock(exec: &dyn Executor) -> Arc<Mutex<()>> {
    let key = exec.lock_key();
    let mut locks = APPLY_LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    locks
        .get_or_insert_with(HashMap::new)
        .entry(key)
        .or_default()
        .clone()
}

/// Options of [`Firewall::apply_with`], built with [`ApplyOptions::new`] and its setters:
///
/// ```
/// # use virtfw::{ApplyOptions, IgnoredCounter};
/// let counter = IgnoredCounter::default();
/// let options = ApplyOptions::new().per_command(true).observer(&counter);
/// assert!(options.per_command);
/// ```
///
/// The defaults read no environment variable: the `virtfw` command maps `VIRTFW_NO_BATCH=1`
/// ([`crate::batch::NO_BATCH_ENV`]) to [`ApplyOptions::per_command`] itself.
#[derive(Clone, Copy, Default)]
#[non_exhaustive]
pub struct ApplyOptions<'a> {
    /// Observer of the apply, if any.
    pub observer: Option<&'a dyn ApplyObserver>,
    /// Force libvirt's one-process-per-command path (the CLI's `--no-batch`): identical logs and
    /// transcripts to libvirt, for debugging and conformance tests. When false the engine may
    /// run a group as one atomic batch where that cannot change the outcome.
    pub per_command: bool,
}

impl<'a> ApplyOptions<'a> {
    /// The defaults: batching allowed, no observer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Take (or not) libvirt's one-process-per-command path.
    pub fn per_command(mut self, per_command: bool) -> Self {
        self.per_command = per_command;
        self
    }

    /// Report the apply's progress to `observer`.
    pub fn observer(mut self, observer: &'a dyn ApplyObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Report to `observer` when there is one ([`ApplyOptions::observer`] with an option).
    pub fn maybe_observer(mut self, observer: Option<&'a dyn ApplyObserver>) -> Self {
        self.observer = observer;
        self
    }
}

/// What an apply did: the plan that removes it exactly, and what it ignored.
#[derive(Debug)]
#[non_exhaustive]
pub struct Applied {
    /// The firewall that undoes this apply (what [`Firewall::new_from_rollback`] returns right
    /// after it): store it (e.g. with [`Firewall::to_xml`]) and apply it later to remove.
    pub removal: Firewall,
    /// The failures the apply ignored (ignore-errors commands that did not take effect).
    pub ignored: IgnoredReport,
}

/// The failures an apply ignored, counted on both apply paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IgnoredReport {
    /// Commands whose object was already gone (a removal's stale handle or rule).
    pub missing: usize,
    /// Commands that failed for another reason.
    pub failed: usize,
}

impl Firewall {
    /// Apply the firewall with `exec` (libvirt `virFirewallApply`).
    ///
    /// Returns what the apply did: the exact removal plan and the failures it ignored. The
    /// groups' rollback lists also hold the undo afterwards, so
    /// [`Firewall::new_from_rollback`] gives the same plan. Applying the same firewall again
    /// starts from what the caller built: the inverses and callback commands of the previous
    /// apply are dropped first, so the undo is never doubled.
    ///
    /// Applies of executors with the same [`Executor::lock_key`] (the same network namespace)
    /// run one at a time; others may run at once.
    pub fn apply(&mut self, exec: &dyn Executor) -> Result<Applied> {
        self.apply_with(exec, ApplyOptions::new())
    }

    /// [`Firewall::apply`] with options.
    pub fn apply_with(
        &mut self,
        exec: &dyn Executor,
        options: ApplyOptions<'_>,
    ) -> Result<Applied> {
        let lock = apply_lock(exec);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.apply_locked(exec, options)
    }

    /// Apply firewalls that touch disjoint tables (the IPv4 and IPv6 global setups, say) at the
    /// same time, one thread each, and return each one's result in order. On the per-command
    /// path (or with an executor that does not batch) they run one after the other, in order,
    /// as libvirt would, and so do firewalls of the iptables backend (the nf_tables flavour of
    /// its restore programs races itself in one namespace). The caller vouches that no two of
    /// them read or change the same table: otherwise their query callbacks could act on each
    /// other's stale listings.
    pub fn apply_concurrently(
        firewalls: &mut [Firewall],
        exec: &dyn Executor,
        options: ApplyOptions<'_>,
    ) -> Vec<Result<Applied>> {
        let lock = apply_lock(exec);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        // The iptables family's programs race each other in one namespace (see
        // `batch::restore::each_family`): only nft firewalls run side by side.
        let xtables = firewalls.iter().any(|fw| fw.backend() == Backend::Iptables);
        if options.per_command || !exec.supports_batch() || firewalls.len() < 2 || xtables {
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

    /// [`Firewall::apply_with`] with the apply lock already held.
    fn apply_locked(&mut self, exec: &dyn Executor, options: ApplyOptions<'_>) -> Result<Applied> {
        self.preflight(exec)?;
        self.forget_previous_apply();
        self.existing = nft::Existing::default();
        let counting = Counting {
            inner: options.observer.unwrap_or(&NoObserver),
            counter: IgnoredCounter::default(),
        };
        self.run_groups(exec, &counting, options.per_command)?;
        let removal = self.new_from_rollback()?;
        Ok(Applied {
            removal,
            ignored: IgnoredReport {
                missing: counting.counter.missing(),
                failed: counting.counter.failed(),
            },
        })
    }

    /// Drop what a previous apply of this firewall added (recorded inverses, commands query
    /// callbacks added), so that this one starts from what the caller built.
    fn forget_previous_apply(&mut self) {
        for group in &mut self.groups {
            group.actions.retain(|c| !c.by_apply);
            group.rollbacks.retain(|c| !c.by_apply);
        }
    }

    /// Run the groups in order (both paths), rolling back as libvirt does on a failure.
    fn run_groups(
        &mut self,
        exec: &dyn Executor,
        observer: &dyn ApplyObserver,
        per_command: bool,
    ) -> Result<()> {
        // The fast path (crate::batch) takes runs of groups it can apply as one kernel
        // transaction; everything else, and every failed batch, runs command by command.
        let batching = !per_command && exec.supports_batch();
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
            let ran = run_command(backend, flags, cmd, exec, observer, gi, &mut self.existing)?;
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
                // What a callback adds is checked like the commands given up front (preflight),
                // before any of it runs, on both paths.
                let base = self.groups[gi].actions.len();
                for (k, cmd) in added.iter().enumerate() {
                    crate::validate::check_command(backend, cmd.layer, &cmd.args).map_err(|u| {
                        crate::validate::unsafe_error(u, &cmd.args, gi, base + k, false, None)
                    })?;
                }
                self.groups[gi]
                    .actions
                    .extend(added.into_iter().map(|c| c.made_by_apply()));
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
                let mut none = nft::Existing::default();
                if let Err(err) = run_command(
                    backend,
                    TransactionFlags::empty(),
                    cmd,
                    exec,
                    observer,
                    j,
                    &mut none,
                ) {
                    debug!(error = %err, "ignoring rollback failure");
                }
            }
        }
    }
}
