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
//! * before it starts a command of an operation's forward part it reads the operation's
//!   [`Cancel`] token: set (a signal asked to stop), the command is not started and fails with
//!   [`ExecError::Interrupted`], which the engine treats as that command's failure. From the
//!   engine's rollback on ([`ApplyObserver::rolling_back`]) and in the store's undo
//!   ([`JournalExecutor::undoing`]) nothing is refused: an undo always runs to its end.
//!
//! It still enters `--netns` with `setns` between fork and exec, like `ProcessExecutor`, and
//! bounds every child with the same timeout (`StoreOptions::child_timeout`, the CLI's `--child-timeout`; `executor::wait_child`).
//!
//! # A full state filesystem
//!
//! Nothing may run that the journal cannot account for. Before a command is spawned, the
//! space its records and output files will need is reserved (`fallocate` with
//! `FALLOC_FL_KEEP_SIZE`: the files keep their size, the blocks are theirs): the log gets room
//! for the `start` and `done` records, `N.out` and `N.err` twice the input plus 64 KiB each
//! (an echo repeats every input line with its handle; an error quotes the failing lines).
//! When that, or the durable `start` record, fails, the command is not run
//! ([`ExecError::Journal`]): the state directory is full, and the operation stops cleanly.
//! What is left of a reservation after the child exited is given back. A filesystem without
//! `fallocate` is used without reservations.
//!
//! A `done` record that still cannot be written (a filesystem that does not honour the
//! reservation) leaves the command's outcome unknown to the journal, exactly as if virtfw had
//! been killed while it ran; the command then fails with [`ExecError::Unrecorded`], and
//! recovery treats it as unknown (docs/cli.md, "What recovery assumes").

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use virtfw::batch::IgnoredCounter;
use virtfw::executor::{self, Invocation, Output};
use virtfw::{ApplyObserver, Command as FwCommand, ExecError, Executor};

use crate::cancel::Cancel;
use crate::error::{Result, StoreError};
use crate::journal::{self, Journal, Record};

const NO_GROUP: usize = usize::MAX;

/// Room reserved in each output file beyond twice the input.
const OUTPUT_RESERVE: u64 = 64 * 1024;
/// Room reserved in the log beyond the `start` record: its `done` record and a few marks.
const LOG_RESERVE: u64 = 4 * 1024;

/// What every child of an operation gets: the state lock's descriptor to inherit, and how long
/// it may run before it is killed (`StoreOptions::child_timeout`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Children {
    pub lock_fd: RawFd,
    pub timeout: Duration,
}

/// Give back what is left of a [`journal::reserve`] past the end of `path` (best effort): a
/// truncation to its own length frees the blocks beyond the end (ext4, xfs, tmpfs; punching a
/// hole past the end does not, on ext4). The child has exited: nothing writes the file now.
fn release(path: &Path) {
    if let Ok(file) = OpenOptions::new().write(true).open(path) {
        if let Ok(meta) = file.metadata() {
            let _ = file.set_len(meta.len());
        }
    }
}

/// The files of one command, created and reserved before it is spawned.
struct CmdFiles {
    stdin: Stdio,
    out: File,
    err: File,
}

/// Open `/run/netns/NAME` (or a path), the namespace commands run in; a missing one is the
/// CLI's usage error.
pub(crate) fn open_netns(name: &str) -> Result<OwnedFd> {
    executor::open_netns(name).map_err(|err| match err {
        ExecError::Netns { netns, source } => StoreError::Netns {
            name: netns,
            source,
        },
        other => StoreError::Netns {
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
    timeout: Duration,
    cancel: Cancel,
    /// Running an undo: the token is not read.
    undoing: AtomicBool,
    /// The signal for which a command was refused (0: none was).
    refused: AtomicUsize,
}

impl JournalExecutor {
    pub(crate) fn new(
        netns: Option<&str>,
        lock_fd: Option<RawFd>,
        timeout: Duration,
        journal: Arc<Journal>,
        cancel: Cancel,
    ) -> Result<Self> {
        let netns = netns.map(open_netns).transpose()?;
        Ok(JournalExecutor {
            netns,
            lock_fd,
            journal,
            group: AtomicUsize::new(NO_GROUP),
            ignored: IgnoredCounter::default(),
            timeout,
            cancel,
            undoing: AtomicBool::new(false),
            refused: AtomicUsize::new(0),
        })
    }

    /// Whether commands from here on belong to an undo (never refused for a signal) or to
    /// the forward part of the operation (refused once its [`Cancel`] is set). The engine's
    /// rollback switches to undo by itself (`rolling_back`); a step of the forward part that
    /// follows (a network's next step) switches back.
    pub(crate) fn undoing(&self, undoing: bool) {
        self.undoing.store(undoing, Ordering::SeqCst);
    }

    /// The signal for which a command was not started, if one was: the operation stopped
    /// because of it.
    pub(crate) fn interrupted(&self) -> Option<i32> {
        match self.refused.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n as i32),
        }
    }

    /// The signal that asked the operation to stop, if one did (whether or not a command
    /// was refused for it yet).
    pub(crate) fn cancelled(&self) -> Option<i32> {
        self.cancel.signal()
    }

    /// Failures the engine ignored so far, as reported to the observer on both the
    /// per-command and the batch path: (objects already gone, other failures). A failed batch
    /// that the engine retries is not counted, only the commands it finally gave up on.
    pub(crate) fn ignored(&self) -> (usize, usize) {
        (self.ignored.missing(), self.ignored.failed())
    }

    /// Append a phase mark to the journal.
    pub(crate) fn mark(&self, mark: &str) -> Result<()> {
        self.journal.append(
            &Record::Mark {
                mark: mark.to_string(),
            },
            true,
        )
    }

    /// Create command `seq`'s files (`N.in` written, `N.out`/`N.err` empty) and reserve the
    /// space its output will take. Nothing has run yet; a failure means the state directory
    /// cannot hold the command's record.
    fn prepare(&self, seq: u64, inv: &Invocation<'_>) -> std::io::Result<CmdFiles> {
        let create = |p: &Path| {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(p)
        };
        let input = inv.stdin.map_or(0, |i| i.len() as u64);
        let reserved = 2 * input + OUTPUT_RESERVE;
        let stdin = match inv.stdin {
            Some(bytes) => {
                let path = self.journal.cmd_file(seq, "in");
                let mut f = create(&path)?;
                f.write_all(bytes)?;
                drop(f);
                Stdio::from(File::open(&path)?)
            }
            None => Stdio::null(),
        };
        let out = create(&self.journal.cmd_file(seq, "out"))?;
        let err = create(&self.journal.cmd_file(seq, "err"))?;
        journal::reserve(&out, reserved)?;
        journal::reserve(&err, reserved)?;
        Ok(CmdFiles { stdin, out, err })
    }

    fn spawn_and_wait(
        &self,
        seq: u64,
        inv: &Invocation<'_>,
        files: CmdFiles,
    ) -> Result<Output, ExecError> {
        let (program, args) = inv
            .argv
            .split_first()
            .ok_or_else(|| ExecError::Other("empty argv".into()))?;
        let mut cmd = Command::new(OsStr::new(program));
        cmd.args(args)
            .stdin(files.stdin)
            .stdout(files.out)
            .stderr(files.err);
        let netns_fd = self.netns.as_ref().map(|fd| fd.as_raw_fd());
        let inherit: &[RawFd] = self.lock_fd.as_slice();
        executor::enter_netns_and_inherit(&mut cmd, netns_fd, inherit);
        let mut child = executor::spawn_child(&mut cmd, program)?;
        // The parent's copies of the descriptors go with `cmd`: only the child writes them.
        drop(cmd);
        let waited = executor::wait_child(&mut child, program, self.timeout);
        let out_path = self.journal.cmd_file(seq, "out");
        let err_path = self.journal.cmd_file(seq, "err");
        release(&out_path);
        release(&err_path);
        let status = waited?;
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
    /// A command of the CLI's own (an undo, a check): journalled with the group of the last
    /// command the engine ran.
    fn run(&self, inv: Invocation<'_>) -> Result<Output, ExecError> {
        let group = self.group.load(Ordering::SeqCst);
        self.run_in_group(inv, (group != NO_GROUP).then_some(group))
    }

    /// The engine names each command's group itself (no observer side channel, so global
    /// setups applied at the same time cannot mix their groups up).
    fn run_in_group(&self, inv: Invocation<'_>, group: Option<usize>) -> Result<Output, ExecError> {
        // Between commands only: a command already running is left to finish (its process
        // group is its own, so a terminal's Ctrl-C does not reach it). Nothing is journalled
        // for a command that is not started.
        if !self.undoing.load(Ordering::SeqCst) {
            if let Some(signal) = self.cancel.signal() {
                self.refused.store(signal as usize, Ordering::SeqCst);
                return Err(ExecError::Interrupted { signal });
            }
        }
        if let Some(g) = group {
            self.group.store(g, Ordering::SeqCst);
        }
        let seq = self.journal.next_seq();
        let start = Record::Start {
            seq,
            group,
            argv: inv.argv.to_vec(),
            stdin: inv.stdin.is_some(),
        };
        // Room first (the log's records, the output files), then the durable start record:
        // a command is spawned only when the journal can account for all of it.
        let files = self
            .journal
            .reserve(&start, LOG_RESERVE)
            .and_then(|()| {
                self.prepare(seq, &inv).map_err(|e| {
                    StoreError::io(format!("cannot prepare the files of command {seq}"), e)
                })
            })
            .and_then(|files| self.journal.append(&start, true).map(|()| files))
            .map_err(|e| ExecError::Journal(e.to_string()))?;
        match self.spawn_and_wait(seq, &inv, files) {
            Ok(out) => {
                // Not fsync'ed: a kill of virtfw loses no written data, and a power loss takes
                // the ruleset too (docs/cli.md). Not written at all: the outcome is unknown to
                // the journal, so the command cannot count as a success.
                let done = Record::Done {
                    seq,
                    status: out.status,
                };
                match self.journal.append(&done, false) {
                    Ok(()) => Ok(out),
                    Err(e) => Err(ExecError::Unrecorded {
                        program: inv.argv[0].clone(),
                        status: out.status,
                        message: e.to_string(),
                    }),
                }
            }
            Err(e) => {
                // A child that was started and then killed (timeout) did run: its outcome is
                // unknown, which recovery reads from the absence of a `done` record. Only a
                // spawn that failed is recorded as never run.
                let rec = if e.outcome_unknown() {
                    Record::Killed {
                        seq,
                        error: e.to_string(),
                    }
                } else {
                    Record::NotRun {
                        seq,
                        error: e.to_string(),
                    }
                };
                let _ = self.journal.append(&rec, false);
                Err(e)
            }
        }
    }

    fn check_program(&self, program: &str) -> Result<(), ExecError> {
        executor::require_program(program)
    }
}

impl ApplyObserver for JournalExecutor {
    fn rolling_back(&self, first: usize, failed: usize) {
        self.undoing(true);
        let _ = self.mark(&format!("rollback {first} {failed}"));
    }
    fn ignored_failure(&self, group: usize, cmd: &FwCommand, missing: bool) {
        self.ignored.ignored_failure(group, cmd, missing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{read_records, OpHeader, OpKind, JOURNAL_VERSION};
    use crate::state::StateDir;

    fn journal(dir: &Path) -> Arc<Journal> {
        let state = StateDir::open(&dir.join("state")).unwrap();
        let header = OpHeader {
            version: JOURNAL_VERSION,
            op_id: "1-1".into(),
            kind: OpKind::Apply,
            name: "t".into(),
            backend: "nftables".into(),
            netns: None,
            netns_id: String::new(),
            boot_id: String::new(),
            created: 0,
            document: String::new(),
            status: None,
        };
        Arc::new(Journal::begin(&state, &header).unwrap())
    }

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn a_killed_child_is_journalled_as_unknown_and_a_failed_spawn_as_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let journal = journal(dir.path());
        let mut exec = JournalExecutor::new(
            None,
            None,
            executor::DEFAULT_CHILD_TIMEOUT,
            journal.clone(),
            Cancel::new(),
        )
        .unwrap();
        exec.timeout = Duration::from_millis(200);
        let sleep = argv(&["sleep", "600"]);
        let err = exec
            .run(Invocation {
                argv: &sleep,
                stdin: Some(b"input\n"),
            })
            .unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err:?}");
        let missing = argv(&["virtfw-no-such-program"]);
        let err = exec
            .run(Invocation {
                argv: &missing,
                stdin: None,
            })
            .unwrap_err();
        assert!(matches!(err, ExecError::NotFound { .. }), "{err:?}");
        let records = read_records(journal.dir());
        assert!(matches!(
            &records[0],
            Record::Start {
                seq: 0,
                stdin: true,
                ..
            }
        ));
        assert!(
            matches!(&records[1], Record::Killed { seq: 0, .. }),
            "{records:?}"
        );
        assert!(matches!(&records[2], Record::Start { seq: 1, .. }));
        assert!(
            matches!(&records[3], Record::NotRun { seq: 1, .. }),
            "{records:?}"
        );
        assert_eq!(records.len(), 4, "{records:?}");
        // The reservation beyond what was written was given back.
        let out = std::fs::metadata(journal.cmd_file(0, "out")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((out.len(), out.blocks()), (0, 0));
    }

    /// The token is read before a command starts: once set, a forward command is not started
    /// (nothing journalled) and fails as interrupted; once the engine reports its rollback,
    /// or the store runs an undo, commands run again whatever the token says.
    #[test]
    fn a_set_token_refuses_forward_commands_but_not_the_undo() {
        let dir = tempfile::tempdir().unwrap();
        let journal = journal(dir.path());
        let cancel = Cancel::new();
        let exec = JournalExecutor::new(
            None,
            None,
            executor::DEFAULT_CHILD_TIMEOUT,
            journal.clone(),
            cancel.clone(),
        )
        .unwrap();
        let run = |words: &[&str]| {
            let argv = argv(words);
            exec.run(Invocation {
                argv: &argv,
                stdin: None,
            })
        };
        assert!(run(&["true"]).unwrap().success());
        assert_eq!((exec.interrupted(), exec.cancelled()), (None, None));
        cancel.cancel(15);
        let err = run(&["true"]).unwrap_err();
        assert!(
            matches!(err, ExecError::Interrupted { signal: 15 }),
            "{err:?}"
        );
        assert!(err.ends_step() && !err.outcome_unknown());
        assert_eq!(exec.interrupted(), Some(15));
        // Nothing was journalled for the refused command.
        assert_eq!(read_records(journal.dir()).len(), 2);
        // The engine's rollback: undo commands run.
        exec.rolling_back(0, 0);
        assert!(run(&["true"]).unwrap().success());
        // A later forward step is refused again; the store's undo is not.
        exec.undoing(false);
        assert!(matches!(
            run(&["true"]),
            Err(ExecError::Interrupted { signal: 15 })
        ));
        exec.undoing(true);
        assert!(run(&["true"]).unwrap().success());
        let starts = read_records(journal.dir())
            .iter()
            .filter(|r| matches!(r, Record::Start { .. }))
            .count();
        assert_eq!(starts, 3);
    }
}
