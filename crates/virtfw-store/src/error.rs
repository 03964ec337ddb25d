//! The store's errors, and the one table of what each kind means to a caller.
//!
//! Every [`StoreError`] has a [`kind`](StoreError::kind), one of a few [`ErrorKind`]s; the CLI
//! turns a kind into its exit status, and its `--help` text and the docs' tables of exit
//! statuses are made from (or checked against) [`EXIT_STATUSES`]. The kind is part of the
//! interface (scripts branch on the exit status, bindings on the kind), so it is chosen by one
//! exhaustive match: adding a variant forces a decision there.

use std::path::PathBuf;

/// What kind of failure an error is: the decision a caller makes on it.
///
/// Each kind is one row of [`EXIT_STATUSES`], which gives its stable number (the CLI's exit
/// status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The firewall refused a command (everything an apply changed was rolled back; a removal
    /// keeps its plan for another try).
    Refused,
    /// Bad usage or bad input: a file, XML, name, namespace or missing program. Nothing ran.
    Usage,
    /// `verify` (or `network status`) found objects missing from the live ruleset. Not an
    /// error of any operation: the outcome of a report ([`crate::VerifyReport::drift`]).
    Drift,
    /// A state problem: the lock, a plan, the state directory, or a journal waiting for
    /// [`crate::Store::recover`].
    State,
    /// The operation was asked to stop (a signal through its [`crate::Cancel`]) and stopped
    /// between commands; what it did was undone as after a failure. Two rows of
    /// [`EXIT_STATUSES`] (128 + the signal: 130 SIGINT, 143 SIGTERM);
    /// [`StoreError::exit_code`] picks the error's.
    Interrupted,
}

/// One exit status of the `virtfw` command: its number, the kind it stands for (`None` for
/// success) and what it means, in the words `--help` and the docs use.
#[derive(Debug, Clone, Copy)]
pub struct ExitStatus {
    /// The process exit status.
    pub code: i32,
    /// The error kind it reports; `None` for success.
    pub kind: Option<ErrorKind>,
    /// Its name in a few words: every table of exit statuses (docs/cli.md, README.md) starts
    /// its meaning with these words.
    pub summary: &'static str,
    /// What it means, the summary with its details (`--help`'s text).
    pub meaning: &'static str,
}

/// THE table of exit statuses: [`ErrorKind::exit_code`] reads it, the CLI's `--help` is made
/// from it ([`exit_status_help`]), and a test checks that docs/cli.md and README.md say the
/// same.
pub const EXIT_STATUSES: [ExitStatus; 7] = [
    ExitStatus {
        code: 0,
        summary: "success",
        kind: None,
        meaning: "success",
    },
    ExitStatus {
        code: 1,
        summary: "the firewall refused a command",
        kind: Some(ErrorKind::Refused),
        meaning: "the firewall refused a command (everything applied was rolled back)",
    },
    ExitStatus {
        code: 2,
        summary: "bad usage or bad input",
        kind: Some(ErrorKind::Usage),
        meaning: "bad usage or bad input (file, XML, name, namespace, missing program)",
    },
    ExitStatus {
        code: 3,
        summary: "verify found drift",
        kind: Some(ErrorKind::Drift),
        meaning: "verify found drift (objects of a plan missing from the ruleset)",
    },
    ExitStatus {
        code: 4,
        summary: "state problem",
        kind: Some(ErrorKind::State),
        meaning: "state problem (lock timeout, corrupt or missing plan, name already stored, \
                  unsafe state directory, interrupted operation waiting for `virtfw recover`, \
                  state directory full / journal not written, a journal recover could not settle)",
    },
    ExitStatus {
        code: 128 + libc::SIGINT,
        summary: "interrupted by SIGINT",
        kind: Some(ErrorKind::Interrupted),
        meaning: "interrupted by SIGINT: stopped between commands and undone as after a failure \
                  (a removal keeps its plan)",
    },
    ExitStatus {
        code: 128 + libc::SIGTERM,
        summary: "interrupted by SIGTERM",
        kind: Some(ErrorKind::Interrupted),
        meaning: "interrupted by SIGTERM: the same as 130",
    },
];

/// Exit status of success.
pub const EXIT_OK: i32 = EXIT_STATUSES[0].code;

impl ErrorKind {
    /// The kind's stable number (the CLI's exit status), from [`EXIT_STATUSES`]: its first
    /// row ([`ErrorKind::Interrupted`] has one per signal; [`StoreError::exit_code`] is the
    /// error's own).
    pub fn exit_code(self) -> i32 {
        EXIT_STATUSES
            .iter()
            .find(|s| s.kind == Some(self))
            .map(|s| s.code)
            .expect("every ErrorKind has a row in EXIT_STATUSES")
    }
}

/// The "Exit status:" paragraph of `virtfw --help`, made from [`EXIT_STATUSES`]: long
/// meanings are wrapped at 76 columns under their text.
pub fn exit_status_help() -> String {
    let mut out = String::from("Exit status:");
    for s in &EXIT_STATUSES {
        let mut line = format!("\n  {}  ", s.code);
        let mut width = line.len() - 1;
        for (i, word) in s.meaning.split_whitespace().enumerate() {
            if i > 0 && width + 1 + word.len() > 76 {
                line.push_str("\n     ");
                width = 5;
            } else if i > 0 {
                line.push(' ');
                width += 1;
            }
            line.push_str(word);
            width += word.len();
        }
        out.push_str(&line);
    }
    out
}

/// Everything a store operation can fail with. [`StoreError::kind`] sorts it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Bad usage: a name, a flag value, a definition that cannot be used.
    #[error("{0}")]
    Usage(String),

    /// An input file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadInput {
        /// The file (`-` for stdin).
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// The transaction or plan could not be parsed, or is refused before anything runs.
    #[error("{0}")]
    Input(virtfw::Error),

    /// The network namespace commands were to run in cannot be opened.
    #[error("network namespace '{name}' does not exist or cannot be opened: {source}")]
    Netns {
        /// The namespace as given.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// The firewall refused a command; the engine rolled back and so did we.
    #[error("{0} (everything this apply changed was rolled back)")]
    Refused(virtfw::Error),

    /// A removal stopped part-way (a program could not be run). Nothing is rolled back: what
    /// was deleted stays deleted, and the plan is kept so that `remove` can be run again.
    #[error("{0} (removal stopped part-way; the plan is kept: run `virtfw remove` or `virtfw network stop` again)")]
    RemoveFailed(virtfw::Error),

    /// The operation journal could not be written (the state directory is full, say), so the
    /// operation was stopped before the command it could not record: without its journal a
    /// crash could not be recovered.
    #[error("{0} (state directory full or the operation journal could not be written: the operation stopped before this command)")]
    Journal(virtfw::Error),

    /// The state directory may not be trusted (owner, mode, a symlink).
    #[error("state directory {path} is unsafe: {reason}")]
    UnsafeStateDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A file of the state directory is not as it must be.
    #[error("{path}: {message}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// Another process held the state lock for longer than the lock timeout.
    #[error("timed out after {seconds}s waiting for the lock {path} (another virtfw, or a firewall command it started, still runs)")]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// The timeout.
        seconds: u64,
    },

    /// No plan of that name is stored.
    #[error("no stored plan named '{name}' in {dir}")]
    NoSuchPlan {
        /// The name asked for.
        name: String,
        /// The plans directory.
        dir: PathBuf,
    },

    /// A plan of that name is stored already.
    #[error("a plan named '{name}' is already stored; remove it first or choose another --name")]
    PlanExists {
        /// The name.
        name: String,
    },

    /// A plan file cannot be read.
    #[error("corrupt plan {path}: {message}")]
    CorruptPlan {
        /// The plan file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The plan's rules went with an old boot or namespace: it is never run.
    #[error("plan '{name}' is stale ({reason}); its rules are gone with the old boot or namespace. Use `virtfw remove --forget {name}` to drop it")]
    StalePlan {
        /// The plan.
        name: String,
        /// Why it is stale.
        reason: String,
    },

    /// A writer found a journal of an interrupted operation: recover first.
    #[error("an interrupted operation is pending in {}; run `virtfw recover` first (or `virtfw recover --drop {id}` to discard it)", path.display())]
    PendingJournal {
        /// The journal's directory.
        path: PathBuf,
        /// Its id.
        id: String,
    },

    /// An undo (of a failed apply or start, or by `recover`) could not run one of its
    /// commands: an executor or journal error. It stopped there; never counted as "already
    /// absent".
    #[error("undo stopped at `{cmdline}`: {source}")]
    UndoStopped {
        /// The command it stopped at.
        cmdline: String,
        /// Why.
        #[source]
        source: virtfw::ExecError,
    },

    /// An operation could not be settled (its undo stopped, or what it created cannot be
    /// known from its records): the journal stays for `virtfw recover`.
    #[error("{context}: {reason}; the journal {} is kept: run `virtfw recover` once the cause is fixed (e.g. space freed in the state directory)", journal.display())]
    KeptJournal {
        /// The operation and how it failed.
        context: String,
        /// Why it could not be settled.
        reason: String,
        /// The journal kept.
        journal: PathBuf,
    },

    /// `recover` left journals it could not settle (reported one by one).
    #[error("{count} journal(s) could not be settled and are kept (see above); fix the cause and run `virtfw recover` again, or discard one with `virtfw recover --drop ID`")]
    Unsettled {
        /// How many.
        count: usize,
    },

    /// No pending journal has that id.
    #[error("no pending journal '{id}' in {dir}")]
    NoSuchJournal {
        /// The id asked for.
        id: String,
        /// The journal directory.
        dir: PathBuf,
    },

    /// A file of the state directory could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },

    /// Something else failed (a network's rules could not be checked, a plan not computed).
    #[error("{0}")]
    Failed(String),

    /// The operation was asked to stop ([`crate::Cancel`], the CLI's SIGINT and SIGTERM) and
    /// did not start its next command; what it had done was undone as after a failure
    /// (`outcome` says what that leaves).
    #[error("{operation} was interrupted by {}: {outcome}", signal_name(*signal))]
    Interrupted {
        /// The signal that asked to stop.
        signal: i32,
        /// What was interrupted (`apply of web`).
        operation: String,
        /// What the undo left.
        outcome: &'static str,
    },
}

impl StoreError {
    /// What kind of failure this is (and so the CLI's exit status, [`ErrorKind::exit_code`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Usage(_)
            | StoreError::ReadInput { .. }
            | StoreError::Input(_)
            | StoreError::Netns { .. } => ErrorKind::Usage,
            StoreError::Refused(_) | StoreError::RemoveFailed(_) | StoreError::Failed(_) => {
                ErrorKind::Refused
            }
            StoreError::UnsafeStateDir { .. }
            | StoreError::State { .. }
            | StoreError::LockTimeout { .. }
            | StoreError::NoSuchPlan { .. }
            | StoreError::PlanExists { .. }
            | StoreError::CorruptPlan { .. }
            | StoreError::StalePlan { .. }
            | StoreError::PendingJournal { .. }
            | StoreError::UndoStopped { .. }
            | StoreError::KeptJournal { .. }
            | StoreError::Unsettled { .. }
            | StoreError::NoSuchJournal { .. }
            | StoreError::Journal(_)
            | StoreError::Io { .. } => ErrorKind::State,
            StoreError::Interrupted { .. } => ErrorKind::Interrupted,
        }
    }

    /// The error's exit status: its kind's row of [`EXIT_STATUSES`], for an interruption
    /// the row of its signal (128 + the signal).
    pub fn exit_code(&self) -> i32 {
        match self {
            StoreError::Interrupted { signal, .. } => EXIT_STATUSES
                .iter()
                .find(|s| s.kind == Some(ErrorKind::Interrupted) && s.code == 128 + signal)
                .map_or(128 + signal, |s| s.code),
            other => other.kind().exit_code(),
        }
    }

    /// Shorthand for an I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }

    /// Sort an engine error from `apply`: problems found before anything ran are bad input
    /// (exit 2); a journal that could not be written is a state problem (exit 4); a command
    /// the firewall refused is exit 1.
    pub fn from_apply(err: virtfw::Error) -> Self {
        Self::classify(err).unwrap_or_else(StoreError::Refused)
    }

    /// Sort an engine error from `remove` like [`StoreError::from_apply`], but a removal is
    /// never rolled back: its failure says so.
    pub fn from_remove(err: virtfw::Error) -> Self {
        Self::classify(err).unwrap_or_else(StoreError::RemoveFailed)
    }

    /// The errors `apply` and `remove` sort alike; `Err` gives back the firewall's own failures.
    fn classify(err: virtfw::Error) -> Result<Self, virtfw::Error> {
        use virtfw::{Error, ExecError};
        match err {
            Error::Build(_)
            | Error::EmptyCommand { .. }
            | Error::BackendNotImplemented { .. }
            | Error::UnknownBackend(_)
            | Error::UnknownLayer(_)
            | Error::Xml { .. }
            | Error::UnsafeArgument { .. }
            | Error::Exec {
                source: ExecError::NotFound { .. } | ExecError::Netns { .. },
                ..
            } => Ok(StoreError::Input(err)),
            // The CLI's executor refuses to run a command it could not record first. Other
            // executor failures (`Other`: a libnftables worker that stopped, say) are the
            // firewall's.
            Error::Exec {
                source: ExecError::Journal(_) | ExecError::Unrecorded { .. },
                ..
            } => Ok(StoreError::Journal(err)),
            other => Err(other),
        }
    }
}

/// Whether the engine says that objects a create committed have handles nobody knows (an
/// echo without one): the undo cannot take them away, so the journal is kept for `recover`.
/// (The engine reports this as [`virtfw::Error::EchoIncomplete`].)
pub fn handles_unknown(err: &virtfw::Error) -> bool {
    matches!(err, virtfw::Error::EchoIncomplete { .. })
}

/// `SIGINT`, `SIGTERM`, or `signal N`.
fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

/// Result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use virtfw::{Error, ExecError};

    fn exec_error(source: ExecError) -> Error {
        Error::Exec {
            cmdline: "nft delete rule ip t c handle 4".into(),
            source,
        }
    }

    fn spawn_failure() -> Error {
        exec_error(ExecError::Spawn {
            program: "nft".into(),
            source: std::io::Error::from_raw_os_error(libc::EAGAIN),
        })
    }

    #[test]
    fn every_kind_has_one_exit_status_and_help_lists_them_in_order() {
        let kinds = [
            ErrorKind::Refused,
            ErrorKind::Usage,
            ErrorKind::Drift,
            ErrorKind::State,
        ];
        for (code, kind) in (1..).zip(kinds) {
            assert_eq!(kind.exit_code(), code, "{kind:?}");
        }
        let help = exit_status_help();
        assert!(
            help.starts_with("Exit status:\n  0  success\n  1  the firewall refused"),
            "{help}"
        );
        assert!(help.lines().all(|l| l.len() <= 76), "{help}");
        assert!(help.contains("\n  4  state problem"), "{help}");
    }

    #[test]
    fn an_interruption_exits_128_plus_its_signal_from_the_table() {
        for (signal, code, name) in [
            (libc::SIGINT, 130, "SIGINT"),
            (libc::SIGTERM, 143, "SIGTERM"),
        ] {
            let err = StoreError::Interrupted {
                signal,
                operation: "apply of web".into(),
                outcome: "everything it changed was undone",
            };
            assert_eq!(err.kind(), ErrorKind::Interrupted);
            assert_eq!(err.exit_code(), code, "{err}");
            assert_eq!(
                err.to_string(),
                format!("apply of web was interrupted by {name}: everything it changed was undone")
            );
            let row = EXIT_STATUSES.iter().find(|s| s.code == code).unwrap();
            assert_eq!(row.kind, Some(ErrorKind::Interrupted));
            assert!(exit_status_help().contains(&format!("\n  {code}  interrupted by {name}")));
        }
        assert_eq!(ErrorKind::Interrupted.exit_code(), 130);
        // Any other error's code is its kind's.
        let err = StoreError::from_apply(spawn_failure());
        assert_eq!(err.exit_code(), err.kind().exit_code());
    }

    #[test]
    fn remove_failure_does_not_claim_a_rollback() {
        let err = StoreError::from_remove(spawn_failure());
        assert_eq!(err.kind(), ErrorKind::Refused);
        let msg = err.to_string();
        assert!(msg.contains("nft delete rule ip t c handle 4"), "{msg}");
        assert!(msg.contains("the plan is kept"), "{msg}");
        assert!(!msg.contains("rolled back"), "{msg}");
        // The same error from apply does say so (apply undoes everything it did).
        let err = StoreError::from_apply(spawn_failure());
        assert_eq!(err.kind(), ErrorKind::Refused);
        assert!(err.to_string().contains("rolled back"), "{err}");
    }

    #[test]
    fn journal_write_failure_is_a_state_problem() {
        for err in [
            StoreError::from_apply(exec_error(ExecError::Journal(
                "journal: No space left".into(),
            ))),
            StoreError::from_remove(exec_error(ExecError::Journal(
                "journal: No space left".into(),
            ))),
        ] {
            assert_eq!(err.kind(), ErrorKind::State, "{err}");
            assert!(
                err.to_string().contains("journal could not be written"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_timed_out_command_is_the_firewalls_an_unrecorded_one_a_state_problem() {
        let timeout = || {
            exec_error(ExecError::Timeout {
                program: "nft".into(),
                after: std::time::Duration::from_secs(2),
            })
        };
        let err = StoreError::from_apply(timeout());
        assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
        assert!(
            err.to_string().contains("did not finish within 2s"),
            "{err}"
        );
        assert!(err.to_string().contains("rolled back"), "{err}");
        let err = StoreError::from_apply(exec_error(ExecError::Unrecorded {
            program: "nft".into(),
            status: 0,
            message: "No space left on device".into(),
        }));
        assert_eq!(err.kind(), ErrorKind::State, "{err}");
        assert!(err.to_string().contains("state directory full"), "{err}");
    }

    #[test]
    fn stopped_undos_and_unsettled_journals_are_state_problems_naming_recover() {
        let stopped = StoreError::UndoStopped {
            cmdline: "nft delete table ip handle 3".into(),
            source: ExecError::Journal("No space left on device".into()),
        };
        let kept = StoreError::KeptJournal {
            context: "apply of web failed (…)".into(),
            reason: format!("undoing it stopped: {stopped}"),
            journal: "/var/lib/virtfw/journal/1-2".into(),
        };
        assert!(kept.to_string().contains("run `virtfw recover`"), "{kept}");
        assert!(kept.to_string().contains("journal/1-2 is kept"), "{kept}");
        let pending = StoreError::PendingJournal {
            path: "/var/lib/virtfw/journal/1-2".into(),
            id: "1-2".into(),
        };
        assert!(
            pending.to_string().contains("`virtfw recover --drop 1-2`"),
            "{pending}"
        );
        for err in [
            stopped,
            kept,
            pending,
            StoreError::Unsettled { count: 2 },
            StoreError::NoSuchJournal {
                id: "x".into(),
                dir: "/d".into(),
            },
        ] {
            assert_eq!(err.kind(), ErrorKind::State, "{err}");
        }
    }

    #[test]
    fn other_executor_failures_are_the_firewalls() {
        let other = || {
            exec_error(ExecError::Other(
                "the libnftables worker stopped while running an nft command".into(),
            ))
        };
        let err = StoreError::from_apply(other());
        assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
        assert!(!err.to_string().contains("journal"), "{err}");
        let err = StoreError::from_remove(other());
        assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
        assert!(err.to_string().contains("the plan is kept"), "{err}");
    }

    #[test]
    fn refusals_before_anything_ran_stay_bad_input() {
        for err in [
            StoreError::from_apply(exec_error(ExecError::NotFound {
                program: "nft".into(),
            })),
            StoreError::from_remove(exec_error(ExecError::NotFound {
                program: "nft".into(),
            })),
            StoreError::from_remove(Error::UnknownLayer("ipv5".into())),
        ] {
            assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
        }
    }
}
