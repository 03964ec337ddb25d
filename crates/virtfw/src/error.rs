//! Error types. Each variant says what failed and names the command, file position or value at
//! fault, because the reader is usually an operator looking at a log line.

use std::io;

/// A misuse of the builder API, remembered by the firewall and reported by `apply`
/// (libvirt's sticky `err` field, with a name instead of an errno).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("a command was added before any transaction was started")]
    CommandWithoutTransaction,
    #[error("a rollback was started before any transaction")]
    RollbackWithoutTransaction,
    #[error("error in original firewall object: {0}")]
    OriginalInError(Box<BuildError>),
}

/// Failure to start or talk to a child process.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("program {program} not found on PATH")]
    NotFound { program: String },
    #[error("cannot enter network namespace {netns}: {source}")]
    Netns {
        netns: String,
        #[source]
        source: io::Error,
    },
    /// The executor refused to run the command because it could not record it first (the
    /// CLI journals every command before it runs); nothing was started.
    #[error("not started, its journal record could not be written: {0}")]
    Journal(String),
    #[error("{0}")]
    Other(String),
}

/// Everything that can go wrong in virtfw's engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unable to create firewall command: {0}")]
    Build(#[from] BuildError),

    #[error("can't apply empty firewall command (group {group}, command {index})")]
    EmptyCommand { group: usize, index: usize },

    #[error("firewall backend is not implemented (backend 'none' cannot run {cmdline})")]
    BackendNotImplemented { cmdline: String },

    #[error("failed to run firewall command {cmdline}: {stderr}")]
    CommandFailed {
        cmdline: String,
        status: i32,
        stderr: String,
    },

    #[error("failed to run firewall command {cmdline}: {source}")]
    Exec {
        cmdline: String,
        #[source]
        source: ExecError,
    },

    #[error(
        "couldn't register rollback command - command '{cmdline}' had no valid handle in output ('{stdout}')"
    )]
    NoHandle { cmdline: String, stdout: String },

    #[error("query callback of {cmdline} failed: {message}")]
    Query { cmdline: String, message: String },

    #[error("unknown firewall backend '{0}' (expected none, iptables or nftables)")]
    UnknownBackend(String),

    #[error("unknown firewall layer '{0}' (expected ethernet, ipv4, ipv6 or tc)")]
    UnknownLayer(String),

    #[error("{source_name}:{line}:{column}: {message}")]
    Xml {
        source_name: String,
        line: u32,
        column: u32,
        message: String,
    },

    /// An argument that would change meaning when commands are joined into a batch (see
    /// [`crate::validate`]); refused before anything runs, on both apply paths.
    #[error(
        "{}argument {item} ({value:?}) of {} {command} in group {group} is refused: {reason}",
        .location.as_ref().map(|l| format!("{}:{}:{}: ", l.source_name, l.line, l.column)).unwrap_or_default(),
        if *.rollback { "rollback command" } else { "command" }
    )]
    UnsafeArgument {
        /// The `<item>` it was read from, when it came from a file.
        location: Option<crate::validate::ItemLocation>,
        group: usize,
        /// Index among the group's actions, or among its rollbacks when `rollback`.
        command: usize,
        rollback: bool,
        item: usize,
        value: String,
        reason: crate::validate::UnsafeReason,
    },
}

impl Error {
    /// An XML error at a position in a named document.
    pub(crate) fn xml(
        source_name: &str,
        pos: roxmltree::TextPos,
        message: impl Into<String>,
    ) -> Self {
        Error::Xml {
            source_name: source_name.to_string(),
            line: pos.row,
            column: pos.col,
            message: message.into(),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
