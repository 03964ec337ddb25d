//! The executor of state-changing commands: journals every command before it runs and lets the
//! child write its output straight into the journal.
//!
//! Compared with the engine's `ProcessExecutor` it differs in three ways that crash recovery
//! relies on:
//!
//! * a `start` record (argv, group) is written and fdatasync'ed BEFORE the child is spawned, so
//!   every command that may have touched the kernel is known to `recover`;
//! * standard output and error go to files (`N.out`, `N.err`) opened by us and written by the
//!   child, not to pipes: if virtfw dies, an `nft -ae` child that still commits writes its
//!   `# handle N` echo to the file anyway;
//! * the state lock's descriptor is inherited by the child (the lock's open file description
//!   stays referenced), so the lock is only free again once every such child has exited and
//!   its output file is complete.
//!
//! It still enters `--netns` with `setns` between fork and exec, like `ProcessExecutor`.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtfw::batch::IgnoredCounter;
use virtfw::executor::{self, Invocation, Output};
use virtfw::{ApplyObserver, Command as FwCommand, ExecError, Executor};

use crate::error::{CliError, CliResult};
use crate::journal::{Journal, Record};

const NO_GROUP: usize = usize::MAX;

/// Open `/run/netns/NAME` (or a path), the namespace commands run in; a missing one is the
/// CLI's usage error.
pub(crate) fn open_netns(name: &str) -> CliResult<OwnedFd> {
    executor::open_netns(name).map_err(|err| match err {
        ExecError::Netns { netns, source } => CliError::Netns {
            name: netns,
            source,
        },
        other => CliError::Netns {
            name: name.to_string(),
            source: std::io::Error::other(other),
        },
    })
}

/// Spawns firewall programs, journalling each one (see the module docs).
pub(crate) struct JournalExecutor {
    netns: Option<OwnedFd>,
    lock_fd: Option<RawFd>,
    journal: Arc<Journal>,
    group: AtomicUsize,
    ignored: IgnoredCounter,
}

impl JournalExecutor {
    pub(crate) fn new(
        netns: Option<&str>,
        lock_fd: Option<RawFd>,
        journal: Arc<Journal>,
    ) -> CliResult<Self> {
        let netns = netns.map(open_netns).transpose()?;
        Ok(JournalExecutor {
            netns,
            lock_fd,
            journal,
            group: AtomicUsize::new(NO_GROUP),
            ignored: IgnoredCounter::default(),
        })
    }

    /// Failures the engine ignored so far, as reported to the observer on both the
    /// per-command and the batch path: (objects already gone, other failures). A failed batch
    /// that the engine retries is not counted, only the commands it finally gave up on.
    pub(crate) fn ignored(&self) -> (usize, usize) {
        (self.ignored.missing(), self.ignored.failed())
    }

    /// Append a phase mark to the journal.
    pub(crate) fn mark(&self, mark: &str) -> CliResult<()> {
        self.journal.append(
            &Record::Mark {
                mark: mark.to_string(),
            },
            true,
        )
    }

    fn spawn_and_wait(&self, seq: u64, inv: &Invocation<'_>) -> Result<Output, ExecError> {
        let (program, args) = inv
            .argv
            .split_first()
            .ok_or_else(|| ExecError::Other("empty argv".into()))?;
        let other = |e: std::io::Error| ExecError::Spawn {
            program: program.clone(),
            source: e,
        };
        let create = |p: &Path| {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(p)
        };
        let stdin = match inv.stdin {
            Some(input) => {
                let path = self.journal.cmd_file(seq, "in");
                let mut f = create(&path).map_err(other)?;
                f.write_all(input).map_err(other)?;
                drop(f);
                Stdio::from(File::open(&path).map_err(other)?)
            }
            None => Stdio::null(),
        };
        let out_path = self.journal.cmd_file(seq, "out");
        let err_path = self.journal.cmd_file(seq, "err");
        let out = create(&out_path).map_err(other)?;
        let err = create(&err_path).map_err(other)?;
        let mut cmd = Command::new(OsStr::new(program));
        cmd.args(args).stdin(stdin).stdout(out).stderr(err);
        let netns_fd = self.netns.as_ref().map(|fd| fd.as_raw_fd());
        let inherit: &[RawFd] = self.lock_fd.as_slice();
        executor::enter_netns_and_inherit(&mut cmd, netns_fd, inherit);
        let status = cmd
            .spawn()
            .map_err(|source| executor::spawn_error(program, source))?
            .wait()
            .map_err(other)?;
        let read = |p: &Path| {
            std::fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        Ok(Output {
            status: executor::exit_code(status),
            stdout: read(&out_path),
            stderr: read(&err_path),
        })
    }
}

impl Executor for JournalExecutor {
    fn run(&self, inv: Invocation<'_>) -> Result<Output, ExecError> {
        let seq = self.journal.next_seq();
        let group = self.group.load(Ordering::SeqCst);
        self.journal
            .append(
                &Record::Start {
                    seq,
                    group: (group != NO_GROUP).then_some(group),
                    argv: inv.argv.to_vec(),
                    stdin: inv.stdin.is_some(),
                },
                true,
            )
            .map_err(|e| ExecError::Journal(e.to_string()))?;
        match self.spawn_and_wait(seq, &inv) {
            Ok(out) => {
                // Not fsync'ed: see docs/cli.md (recovery derives outcomes from N.out and
                // from the ruleset when a `done` record is missing).
                let _ = self.journal.append(
                    &Record::Done {
                        seq,
                        status: out.status,
                    },
                    false,
                );
                Ok(out)
            }
            Err(e) => {
                let _ = self.journal.append(
                    &Record::NotRun {
                        seq,
                        error: e.to_string(),
                    },
                    false,
                );
                Err(e)
            }
        }
    }

    fn check_program(&self, program: &str) -> Result<(), ExecError> {
        executor::require_program(program)
    }
}

impl ApplyObserver for JournalExecutor {
    fn will_run(&self, group: usize, _argv: &[String]) {
        self.group.store(group, Ordering::SeqCst);
    }
    fn rolling_back(&self, first: usize, failed: usize) {
        let _ = self.mark(&format!("rollback {first} {failed}"));
    }
    fn ignored_failure(&self, group: usize, cmd: &FwCommand, missing: bool) {
        self.ignored.ignored_failure(group, cmd, missing);
    }
}
