//! Running one command: its full argv, the facts an nft create needs first, the run itself and
//! the inverse it leaves. Both apply paths use it: the engine (command by command) and the
//! batch path (for its fallbacks, listings and batches).

use tracing::debug;

use crate::error::{Error, Result};
use crate::executor::{Executor, Invocation, Output};
use crate::failure::FailureKind;
use crate::model::{Backend, Command, Layer, TransactionFlags};
use crate::nft::{self, Echo};
use crate::observer::ApplyObserver;
use crate::transcript::command_line;
use crate::xtables;

/// What running one command produced.
pub(crate) struct Ran {
    pub(crate) stdout: String,
    pub(crate) inverse: Option<Command>,
}

/// The full argv of a command under `backend`, and whether it is an auto-rollback create.
pub(crate) fn argv_for(
    backend: Backend,
    auto_rollback: bool,
    cmd: &Command,
) -> (Vec<String>, Option<nft::NftCreate>, bool) {
    let (program, lead) = cmd.layer.program(backend);
    let mut argv = Vec::with_capacity(cmd.args.len() + 3);
    argv.push(program.to_string());
    argv.extend(lead.iter().map(|s| s.to_string()));
    let mut nft_create = None;
    let mut ipt_create = false;
    if auto_rollback && cmd.layer != Layer::Tc {
        match backend {
            Backend::Nftables => {
                nft_create = nft::nft_create(&cmd.args);
                if nft_create.is_some() {
                    argv.push("-ae".to_string());
                }
            }
            Backend::Iptables => ipt_create = xtables::iptables_is_create(&cmd.args),
            Backend::None => {}
        }
    }
    argv.extend(cmd.args.iter().cloned());
    (argv, nft_create, ipt_create)
}

/// Run `argv` without input; the executor's own failure is an [`Error::Exec`].
pub(crate) fn run_argv(
    exec: &dyn Executor,
    argv: &[String],
    group: Option<usize>,
) -> Result<Output> {
    exec.run_in_group(Invocation { argv, stdin: None }, group)
        .map_err(|source| Error::Exec {
            cmdline: command_line(argv),
            source,
        })
}

/// Make sure `existing` knows what `create`'s table held before this apply: list the table
/// through the executor the first time a table or chain create touches it (so the CLI
/// journals the listing like every command and can rebuild the same facts). A listing that
/// cannot run, or fails other than with "no such table", fails the apply before anything of
/// the create runs.
pub(crate) fn learn_table(
    existing: &mut nft::Existing,
    create: &nft::NftCreate,
    exec: &dyn Executor,
    group: Option<usize>,
) -> Result<()> {
    let Some((family, table)) = existing.to_list(create) else {
        return Ok(());
    };
    let argv = nft::listing_argv(&family, &table);
    debug!(cmd = %command_line(&argv), "listing a table before creating in it");
    let out = run_argv(exec, &argv, group)?;
    existing
        .record_listing(&family, &table, out.status, &out.stdout, &out.stderr)
        .map_err(|source| Error::Listing {
            cmdline: command_line(&argv),
            source,
        })
}

/// Whether `create` makes a table or chain that the facts say is absent: it then runs as
/// `create`, which fails with "File exists" if someone made the object after the listing,
/// instead of adopting theirs.
pub(crate) fn absent_before(existing: &nft::Existing, create: &nft::NftCreate) -> bool {
    create.object != nft::NftObject::Rule
        && create.verb_word == "add"
        && existing.exists(create) == Some(false)
}

/// Run one command and derive its inverse when it is an auto-rollback create. `existing`
/// holds the facts of this apply ([`learn_table`]).
pub(crate) fn run_command(
    backend: Backend,
    flags: TransactionFlags,
    cmd: &Command,
    exec: &dyn Executor,
    observer: &dyn ApplyObserver,
    group: usize,
    existing: &mut nft::Existing,
) -> Result<Ran> {
    let auto = flags.contains(TransactionFlags::AUTO_ROLLBACK);
    let (mut argv, nft_create, ipt_create) = argv_for(backend, auto, cmd);
    if backend == Backend::None {
        return Err(Error::BackendNotImplemented {
            cmdline: command_line(&argv),
        });
    }
    if let Some(create) = &nft_create {
        learn_table(existing, create, exec, Some(group))?;
        if absent_before(existing, create) {
            argv.truncate(argv.len() - cmd.args.len());
            argv.extend(nft::as_create(&cmd.args));
        }
    }
    observer.will_run(group, &argv);
    debug!(cmd = %command_line(&argv), "running firewall command");
    let out: Output = run_argv(exec, &argv, Some(group))?;
    if !out.success() {
        let is_list = backend == Backend::Nftables
            && cmd.layer != Layer::Tc
            && cmd.args.first().is_some_and(|a| a == "list");
        if is_list || cmd.ignore_errors {
            if !is_list {
                debug!(cmd = %command_line(&argv), status = out.status, stderr = %out.stderr.trim_end(), "ignoring failure");
                observer.ignored_failure(group, cmd, missing(backend, &out.stderr));
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
        match nft::map_echo(std::slice::from_ref(&create), existing, &out.stdout)[0] {
            Echo::Ours(handle) => {
                Some(Command::new(cmd.layer, create.inverse(handle)).with_appended(create.appends))
            }
            Echo::Existed => None,
            Echo::Unaccounted => {
                return Err(Error::EchoIncomplete {
                    cmdline: command_line(&argv),
                    stdout: out.stdout,
                })
            }
        }
    } else if ipt_create {
        Some(
            Command::new(cmd.layer, xtables::iptables_inverse(&cmd.args))
                .with_appended(xtables::iptables_is_append(&cmd.args)),
        )
    } else {
        None
    };
    Ok(Ran {
        stdout: out.stdout,
        inverse: inverse.map(|c| c.with_ignore_errors(true).made_by_apply()),
    })
}

/// Whether a failure message of `backend`'s tools says the object to delete was already gone
/// (each tool classifies its own output).
pub(crate) fn missing(backend: Backend, stderr: &str) -> bool {
    let kind = match backend {
        Backend::Nftables => nft::failure_kind(stderr),
        Backend::Iptables => xtables::failure_kind(stderr),
        Backend::None => FailureKind::Other,
    };
    kind == FailureKind::NotFound
}

pub(crate) fn strings(argv: &[&str]) -> Vec<String> {
    argv.iter().map(|s| s.to_string()).collect()
}

/// Run a batch. The executor's own failure (the program could not start, the CLI could not
/// journal it) is an [`Error::Exec`]: an apply re-runs the groups command by command, which
/// reports it properly; a removal fails with it, as the per-command path would.
pub(crate) fn run_batch(
    exec: &dyn Executor,
    argv: &[String],
    input: &str,
) -> Result<Output, Error> {
    exec.run(Invocation {
        argv,
        stdin: Some(input.as_bytes()),
    })
    .map_err(|source| {
        debug!(cmd = %command_line(argv), error = %source, "batch could not run");
        Error::Exec {
            cmdline: command_line(argv),
            source,
        }
    })
}

/// An executor that runs everything for one group (what it is told otherwise wins): the
/// batches of commands a callback added to group `.1`.
pub(crate) struct InGroup<'a>(pub(crate) &'a dyn Executor, pub(crate) usize);

impl Executor for InGroup<'_> {
    fn run(&self, invocation: Invocation<'_>) -> Result<Output, crate::ExecError> {
        self.0.run_in_group(invocation, Some(self.1))
    }
    fn run_in_group(
        &self,
        invocation: Invocation<'_>,
        group: Option<usize>,
    ) -> Result<Output, crate::ExecError> {
        self.0.run_in_group(invocation, group.or(Some(self.1)))
    }
    fn check_program(&self, program: &str) -> Result<(), crate::ExecError> {
        self.0.check_program(program)
    }
    fn supports_batch(&self) -> bool {
        self.0.supports_batch()
    }
    fn lock_key(&self) -> String {
        self.0.lock_key()
    }
}
