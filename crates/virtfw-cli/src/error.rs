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
            CliError::Refused(_) | CliError::Failed(_) => EXIT_REFUSED,
            CliError::UnsafeStateDir { .. }
            | CliError::State { .. }
            | CliError::LockTimeout { .. }
            | CliError::NoSuchPlan { .. }
            | CliError::PlanExists { .. }
            | CliError::CorruptPlan { .. }
            | CliError::StalePlan { .. }
            | CliError::PendingJournal { .. }
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
    /// (exit 2); a command the firewall refused is exit 1.
    pub fn from_apply(err: virtfw::Error) -> Self {
        use virtfw::{Error, ExecError};
        match err {
            Error::Build(_)
            | Error::EmptyCommand { .. }
            | Error::BackendNotImplemented { .. }
            | Error::UnknownBackend(_)
            | Error::UnknownLayer(_)
            | Error::Xml { .. }
            | Error::Exec {
                source: ExecError::NotFound { .. } | ExecError::Netns { .. },
                ..
            } => CliError::Input(err),
            other => CliError::Refused(other),
        }
    }
}

/// Result of a CLI operation.
pub type CliResult<T> = Result<T, CliError>;
