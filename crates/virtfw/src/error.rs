//! Error types. Each variant says what failed and names the command, file position or value at
//! fault, because the reader is usually an operator looking at a log line.

use std::io;

/// A misuse of the builder API, remembered by the firewall and reported by `apply`
/// (libvirt's sticky `err` field, with a name instead of an errno).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// `add_cmd` before `start_transaction`.
    #[error("a command was added before any transaction was started")]
    CommandWithoutTransaction,
    /// `start_rollback` before `start_transaction`.
    #[error("a rollback was started before any transaction")]
    RollbackWithoutTransaction,
    /// `new_from_rollback` of a firewall with a builder error.
    #[error("error in original firewall object: {0}")]
    OriginalInError(Box<BuildError>),
}

/// Failure to start or talk to a child process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// The program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The program is not installed.
    #[error("program {program} not found on PATH")]
    NotFound {
        /// The program.
        program: String,
    },
    /// The network namespace could not be opened or entered.
    #[error("cannot enter network namespace {netns}: {source}")]
    Netns {
        /// Its name or path.
        netns: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The executor refused to run the command because it could not record it first (the
    /// CLI journals every command before it runs); nothing was started.
    #[error("not started, its journal record could not be written: {0}")]
    Journal(String),
    /// The program did not finish within the executor's timeout: its process group was
    /// killed and the child reaped. What it did before is unknown (see
    /// [`ExecError::outcome_unknown`]).
    #[error("{program} did not finish within {after:?} and was killed (its effect is unknown)")]
    Timeout {
        /// The program.
        program: String,
        /// The timeout it exceeded.
        after: std::time::Duration,
    },
    /// The program ran to its end (exit status `status`) but the executor could not record
    /// its outcome (the CLI's journal could not be written): to whoever reads the record, its
    /// effect is unknown.
    #[error(
        "{program} ran (exit status {status}) but its outcome could not be recorded: {message}"
    )]
    Unrecorded {
        /// The program.
        program: String,
        /// Its exit status.
        status: i32,
        /// Why the outcome could not be recorded.
        message: String,
    },
    /// The executor did not start the command because the operation was asked to stop (the
    /// CLI's SIGINT or SIGTERM): nothing of it ran. The apply fails at this command exactly
    /// as if the command had failed, and is rolled back; a batch is not re-run command by
    /// command after it (see [`ExecError::ends_step`]).
    #[error("not started: the operation was interrupted by signal {signal}")]
    Interrupted {
        /// The signal number that asked to stop (2 SIGINT, 15 SIGTERM).
        signal: i32,
    },
    /// Anything else an executor reports.
    #[error("{0}")]
    Other(String),
}

impl ExecError {
    /// Whether the command may have run, with an effect nobody saw ([`ExecError::Timeout`],
    /// [`ExecError::Unrecorded`]). Such a failure must not be retried in another form (a
    /// batch re-run command by command could apply twice): it fails the command.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            ExecError::Timeout { .. } | ExecError::Unrecorded { .. }
        )
    }

    /// Whether the failure ends the batch step it happened in, which then fails instead of
    /// falling back to running its commands one by one: an unknown outcome
    /// ([`ExecError::outcome_unknown`]) or an interruption ([`ExecError::Interrupted`], after
    /// which no further command of the apply may start).
    pub fn ends_step(&self) -> bool {
        self.outcome_unknown() || matches!(self, ExecError::Interrupted { .. })
    }
}

/// Everything that can go wrong in virtfw's engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The firewall was built wrongly ([`crate::Firewall::build_error`]).
    #[error("unable to create firewall command: {0}")]
    Build(#[from] BuildError),

    /// A command without arguments.
    #[error("can't apply empty firewall command (group {group}, command {index})")]
    EmptyCommand {
        /// Its group.
        group: usize,
        /// Its index in the group.
        index: usize,
    },

    /// Backend `none` was asked to run a command.
    #[error("firewall backend is not implemented (backend 'none' cannot run {cmdline})")]
    BackendNotImplemented {
        /// The command.
        cmdline: String,
    },

    /// The firewall program refused a command (non-zero exit); the apply was rolled back.
    #[error("failed to run firewall command {cmdline}: {stderr}")]
    CommandFailed {
        /// The full command line.
        cmdline: String,
        /// Its exit status.
        status: i32,
        /// What it wrote to standard error.
        stderr: String,
    },

    /// The executor could not run a command (see [`ExecError`]).
    #[error("failed to run firewall command {cmdline}: {source}")]
    Exec {
        /// The full command line.
        cmdline: String,
        /// What went wrong.
        #[source]
        source: ExecError,
    },

    /// An nft create succeeded but its echo does not account for an object it made (the echo
    /// is incomplete or garbled, e.g. its output file could not be written): the object may
    /// exist with a handle nobody knows, so no inverse is guessed. Nothing of it is rolled back;
    /// a caller that journals commands keeps its journal (the CLI exits 4).
    #[error("nft applied {cmdline} but its echo does not account for what it created (got '{stdout}'); the object may exist with an unknown handle")]
    EchoIncomplete {
        /// The create.
        cmdline: String,
        /// Its echo.
        stdout: String,
    },

    /// Listing a table before an `add table`/`add chain` (to know whether the object existed
    /// already) failed for another reason than "no such table": nothing was created.
    #[error("cannot tell what exists before {cmdline}: {source}")]
    Listing {
        /// The listing command.
        cmdline: String,
        /// What it said.
        #[source]
        source: crate::nft::ListingFailed,
    },

    /// A query callback returned an error.
    #[error("query callback of {cmdline} failed: {message}")]
    Query {
        /// The command whose output it read.
        cmdline: String,
        /// The callback's message.
        message: String,
    },

    /// A backend name that is none of libvirt's.
    #[error("unknown firewall backend '{0}' (expected none, iptables or nftables)")]
    UnknownBackend(String),

    /// A layer name that is none of libvirt's.
    #[error("unknown firewall layer '{0}' (expected ethernet, ipv4, ipv6 or tc)")]
    UnknownLayer(String),

    /// A firewall document that cannot be read.
    #[error("{source_name}:{line}:{column}: {message}")]
    Xml {
        /// The document's name.
        source_name: String,
        /// 1-based line.
        line: u32,
        /// 1-based column.
        column: u32,
        /// What is wrong.
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
        location: Option<ItemLocation>,
        /// The group of the command.
        group: usize,
        /// Index among the group's actions, or among its rollbacks when `rollback`.
        command: usize,
        /// Whether the command is a rollback command.
        rollback: bool,
        /// Index of the item among the command's arguments.
        item: usize,
        /// The item.
        value: String,
        /// Why it is refused.
        reason: UnsafeReason,
    },
}

/// What kind of failure an [`Error`] is, with numbers that stay the same across releases so
/// that bindings (C, Python, a daemon's wire format) can map them. A new kind gets a new number;
/// numbers are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The firewall was built wrongly or holds an empty command ([`Error::Build`],
    /// [`Error::EmptyCommand`]). Nothing ran.
    Build = 1,
    /// A document, backend or layer name that cannot be read ([`Error::Xml`],
    /// [`Error::UnknownBackend`], [`Error::UnknownLayer`]). Nothing ran.
    Input = 2,
    /// An argument that would change meaning in a batch ([`Error::UnsafeArgument`]). Nothing
    /// ran.
    UnsafeArgument = 3,
    /// The firewall program refused a command; the apply was rolled back
    /// ([`Error::CommandFailed`]).
    CommandFailed = 4,
    /// The executor could not run a command (missing program, namespace, journal:
    /// [`Error::Exec`] other than a timeout).
    Exec = 5,
    /// A command did not finish in time and was killed; its effect is unknown
    /// ([`Error::Exec`] with [`ExecError::Timeout`]).
    Timeout = 6,
    /// nft's echo does not account for an object it created ([`Error::EchoIncomplete`]).
    EchoIncomplete = 7,
    /// A query callback failed ([`Error::Query`]).
    Query = 8,
    /// Backend `none` was asked to run a command ([`Error::BackendNotImplemented`]).
    NotImplemented = 9,
    /// What existed before a create could not be listed ([`Error::Listing`]). Nothing ran.
    Listing = 10,
    /// The operation was asked to stop (a signal) and the executor did not start the command;
    /// the apply was rolled back ([`Error::Exec`] with [`ExecError::Interrupted`]).
    Interrupted = 11,
}

impl Error {
    /// The kind of this error, for bindings ([`ErrorKind`] numbers are stable).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Build(_) | Error::EmptyCommand { .. } => ErrorKind::Build,
            Error::UnknownBackend(_) | Error::UnknownLayer(_) | Error::Xml { .. } => {
                ErrorKind::Input
            }
            Error::UnsafeArgument { .. } => ErrorKind::UnsafeArgument,
            Error::CommandFailed { .. } => ErrorKind::CommandFailed,
            Error::Exec {
                source: ExecError::Timeout { .. },
                ..
            } => ErrorKind::Timeout,
            Error::Exec {
                source: ExecError::Interrupted { .. },
                ..
            } => ErrorKind::Interrupted,
            Error::Exec { .. } => ErrorKind::Exec,
            Error::EchoIncomplete { .. } => ErrorKind::EchoIncomplete,
            Error::Query { .. } => ErrorKind::Query,
            Error::BackendNotImplemented { .. } => ErrorKind::NotImplemented,
            Error::Listing { .. } => ErrorKind::Listing,
        }
    }

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

/// Why an item is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnsafeReason {
    /// A line break (`\n` or `\r`, named).
    #[error(
        "it contains a {0} character, which would end a line of a batch file and split the command"
    )]
    LineBreak(&'static str),
    /// Another control character (its code point), which no XML document can hold.
    #[error("it contains the control character U+{0:04X}, which a removal plan (XML) cannot hold")]
    Control(u32),
    /// An empty item under nft.
    #[error("it is empty: nft joins its arguments with spaces, so an empty one vanishes and moves every later word")]
    Empty,
    /// An odd number of `"`.
    #[error("it has an unbalanced double quote: nft's string would run on into the next argument or command")]
    UnbalancedQuote,
    /// A `;` outside strings and blocks.
    #[error("it has ';' outside a quoted string and outside {{ … }}: nft would start another command there")]
    Semicolon,
    /// A `#` outside strings.
    #[error(
        "it has '#' outside a quoted string: nft would ignore the rest of the command as a comment"
    )]
    Comment,
    /// A `\` outside strings.
    #[error("it has '\\' outside a quoted string (other than nft's '\\*'): at the end of a batch line nft reads it as a line continuation")]
    Backslash,
    /// A `{` never closed.
    #[error("it opens a '{{' that no later argument of the command closes: in a batch the block would go on into the next command")]
    UnclosedBrace,
    /// A `}` never opened.
    #[error("it closes a '}}' that was never opened")]
    UnopenedBrace,
    /// A first word the restore programs read as a directive (named).
    #[error("it is the first word of an iptables-family command: iptables-restore would read a line starting with it as {0}")]
    RestoreDirective(&'static str),
    /// Longer than a restore line carries.
    #[error("the command is {len} bytes long, more than the {limit} bytes an iptables-restore line can carry unchanged")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit ([`crate::validate::RESTORE_LINE_LIMIT`]).
        limit: usize,
    },
}

/// Where an item was read from (the `<item>` element of a file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemLocation {
    /// The document's name (a file name, `-`).
    pub source_name: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers are a promise to bindings: changing one is a breaking change.
    #[test]
    fn error_kind_numbers_are_pinned() {
        let pinned = [
            (ErrorKind::Build, 1),
            (ErrorKind::Input, 2),
            (ErrorKind::UnsafeArgument, 3),
            (ErrorKind::CommandFailed, 4),
            (ErrorKind::Exec, 5),
            (ErrorKind::Timeout, 6),
            (ErrorKind::EchoIncomplete, 7),
            (ErrorKind::Query, 8),
            (ErrorKind::NotImplemented, 9),
            (ErrorKind::Listing, 10),
            (ErrorKind::Interrupted, 11),
        ];
        for (kind, number) in pinned {
            assert_eq!(kind as u32, number, "{kind:?}");
        }
    }

    #[test]
    fn errors_map_to_their_kinds() {
        let exec = |source| Error::Exec {
            cmdline: "nft".into(),
            source,
        };
        let cases = [
            (
                Error::Build(BuildError::CommandWithoutTransaction),
                ErrorKind::Build,
            ),
            (Error::EmptyCommand { group: 0, index: 0 }, ErrorKind::Build),
            (Error::UnknownLayer("x".into()), ErrorKind::Input),
            (
                Error::CommandFailed {
                    cmdline: "nft".into(),
                    status: 1,
                    stderr: String::new(),
                },
                ErrorKind::CommandFailed,
            ),
            (
                exec(ExecError::NotFound {
                    program: "nft".into(),
                }),
                ErrorKind::Exec,
            ),
            (
                exec(ExecError::Timeout {
                    program: "nft".into(),
                    after: std::time::Duration::from_secs(1),
                }),
                ErrorKind::Timeout,
            ),
            (
                exec(ExecError::Interrupted { signal: 15 }),
                ErrorKind::Interrupted,
            ),
            (
                Error::BackendNotImplemented {
                    cmdline: "x".into(),
                },
                ErrorKind::NotImplemented,
            ),
        ];
        for (error, kind) in cases {
            assert_eq!(error.kind(), kind, "{error}");
        }
    }
}
