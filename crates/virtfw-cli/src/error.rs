//! The CLI's errors and the exit code each one maps to.
//!
//! The exit code is part of the interface (scripts branch on it), so it is chosen by one
//! exhaustive match: adding a variant forces a decision here.

use std::path::PathBuf;

/// Exit status: success.
pub const EXIT_OK: i32 = 0;
/// Exit status: the firewall refused a command; everything applied was rolled back.
pub const EXIT_REFUSED: i32 = 1;
/// Exit status: bad usage or bad input (file, XML, name, namespace, missing program).
pub const EXIT_USAGE: i32 = 2;
/// Exit status: `verify` found objects of a plan missing from the live ruleset.
pub const EXIT_DRIFT: i32 = 3;
/// Exit status: a state problem (lock timeout, corrupt or missing plan, unsafe state dir,
/// name already stored, interrupted operation waiting for `recover`).
pub const EXIT_STATE: i32 = 4;

/// Everything the `virtfw` command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),

    #[error("cannot read {path}: {source}")]
    ReadInput {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// The transaction or plan could not be parsed, or is refused before anything runs.
    #[error("{0}")]
    Input(virtfw::Error),

    #[error("network namespace '{name}' does not exist or cannot be opened: {source}")]
    Netns {
        name: String,
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

    /// The operation journal could not be written, so the operation was stopped: without its
    /// journal a crash could not be recovered.
    #[error("{0} (the operation journal could not be written; see `virtfw recover`)")]
    Journal(virtfw::Error),

    #[error("state directory {path} is unsafe: {reason}")]
    UnsafeStateDir { path: PathBuf, reason: String },

    #[error("{path}: {message}")]
    State { path: PathBuf, message: String },

    #[error("timed out after {seconds}s waiting for the lock {path} (another virtfw, or a firewall command it started, still runs)")]
    LockTimeout { path: PathBuf, seconds: u64 },

    #[error("no stored plan named '{name}' in {dir}")]
    NoSuchPlan { name: String, dir: PathBuf },

    #[error("a plan named '{name}' is already stored; remove it first or choose another --name")]
    PlanExists { name: String },

    #[error("corrupt plan {path}: {message}")]
    CorruptPlan { path: PathBuf, message: String },

    #[error("plan '{name}' is stale ({reason}); its rules are gone with the old boot or namespace. Use `virtfw remove --forget {name}` to drop it")]
    StalePlan { name: String, reason: String },

    #[error("an interrupted operation is pending in {path}; run `virtfw recover` first")]
    PendingJournal { path: PathBuf },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_)
            | CliError::ReadInput { .. }
            | CliError::Input(_)
            | CliError::Netns { .. } => EXIT_USAGE,
            CliError::Refused(_) | CliError::RemoveFailed(_) | CliError::Failed(_) => EXIT_REFUSED,
            CliError::UnsafeStateDir { .. }
            | CliError::State { .. }
            | CliError::LockTimeout { .. }
            | CliError::NoSuchPlan { .. }
            | CliError::PlanExists { .. }
            | CliError::CorruptPlan { .. }
            | CliError::StalePlan { .. }
            | CliError::PendingJournal { .. }
            | CliError::Journal(_)
            | CliError::Io { .. } => EXIT_STATE,
        }
    }

    /// Shorthand for an I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CliError::Io {
            context: context.into(),
            source,
        }
    }

    /// Sort an engine error from `apply`: problems found before anything ran are bad input
    /// (exit 2); a journal that could not be written is a state problem (exit 4); a command
    /// the firewall refused is exit 1.
    pub fn from_apply(err: virtfw::Error) -> Self {
        Self::classify(err).unwrap_or_else(CliError::Refused)
    }

    /// Sort an engine error from `remove` like [`CliError::from_apply`], but a removal is
    /// never rolled back: its failure says so.
    pub fn from_remove(err: virtfw::Error) -> Self {
        Self::classify(err).unwrap_or_else(CliError::RemoveFailed)
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
            } => Ok(CliError::Input(err)),
            // The CLI's executor refuses to run a command it could not record first. Other
            // executor failures (`Other`: a libnftables worker that stopped, say) are the
            // firewall's.
            Error::Exec {
                source: ExecError::Journal(_),
                ..
            } => Ok(CliError::Journal(err)),
            other => Err(other),
        }
    }
}

/// Result of a CLI operation.
pub type CliResult<T> = Result<T, CliError>;

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
    fn remove_failure_does_not_claim_a_rollback() {
        let err = CliError::from_remove(spawn_failure());
        assert_eq!(err.exit_code(), EXIT_REFUSED);
        let msg = err.to_string();
        assert!(msg.contains("nft delete rule ip t c handle 4"), "{msg}");
        assert!(msg.contains("the plan is kept"), "{msg}");
        assert!(!msg.contains("rolled back"), "{msg}");
        // The same error from apply does say so (apply undoes everything it did).
        let err = CliError::from_apply(spawn_failure());
        assert_eq!(err.exit_code(), EXIT_REFUSED);
        assert!(err.to_string().contains("rolled back"), "{err}");
    }

    #[test]
    fn journal_write_failure_is_a_state_problem() {
        for err in [
            CliError::from_apply(exec_error(ExecError::Journal(
                "journal: No space left".into(),
            ))),
            CliError::from_remove(exec_error(ExecError::Journal(
                "journal: No space left".into(),
            ))),
        ] {
            assert_eq!(err.exit_code(), EXIT_STATE, "{err}");
            assert!(
                err.to_string().contains("journal could not be written"),
                "{err}"
            );
        }
    }

    #[test]
    fn other_executor_failures_are_the_firewalls() {
        let other = || {
            exec_error(ExecError::Other(
                "the libnftables worker stopped while running an nft command".into(),
            ))
        };
        let err = CliError::from_apply(other());
        assert_eq!(err.exit_code(), EXIT_REFUSED, "{err}");
        assert!(!err.to_string().contains("journal"), "{err}");
        let err = CliError::from_remove(other());
        assert_eq!(err.exit_code(), EXIT_REFUSED, "{err}");
        assert!(err.to_string().contains("the plan is kept"), "{err}");
    }

    #[test]
    fn refusals_before_anything_ran_stay_bad_input() {
        for err in [
            CliError::from_apply(exec_error(ExecError::NotFound {
                program: "nft".into(),
            })),
            CliError::from_remove(exec_error(ExecError::NotFound {
                program: "nft".into(),
            })),
            CliError::from_remove(Error::UnknownLayer("ipv5".into())),
        ] {
            assert_eq!(err.exit_code(), EXIT_USAGE, "{err}");
        }
    }
}
