//! Errors of the network layer. Definition errors carry the document name and the line and
//! column of the element at fault, because the reader is an operator fixing an XML file.

/// Everything that can go wrong between a network definition and the rules in the kernel.
/// Everything starting, stopping or describing a network can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The network definition (or status file) is malformed or asks for something unsupported.
    #[error("{source_name}:{line}:{column}: {message}")]
    Definition {
        /// The file (or other source) at fault.
        source_name: String,
        /// 1-based line of the element at fault.
        line: u32,
        /// 1-based column.
        column: u32,
        /// What is wrong.
        message: String,
    },

    /// A value only checked when the rules are built (libvirt checks these late too), e.g. the
    /// NAT port range.
    #[error("{0}")]
    Rules(String),

    /// The engine failed (a command failed, a program is missing, a stored plan is invalid).
    #[error(transparent)]
    Firewall(#[from] virtfw::Error),

    /// The one-time global chain setup of one address family failed earlier, and this network
    /// needs that family.
    #[error("global {family} firewall setup failed: {message}")]
    GlobalSetup {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// Why the setup failed.
        message: String,
    },

    /// Creating, configuring or deleting the bridge failed.
    #[error("bridge {bridge}: {message}")]
    Bridge {
        /// The bridge's name.
        bridge: String,
        /// What `ip` said.
        message: String,
    },

    /// No firewall backend can be used on this host.
    #[error("{0}")]
    Backend(String),
}

impl NetworkError {
    pub(crate) fn at(
        source_name: &str,
        pos: roxmltree::TextPos,
        message: impl Into<String>,
    ) -> Self {
        NetworkError::Definition {
            source_name: source_name.to_string(),
            line: pos.row,
            column: pos.col,
            message: message.into(),
        }
    }

    /// A document that is not well-formed XML.
    pub(crate) fn syntax(source_name: &str, err: virtfw::xml::SyntaxError) -> Self {
        NetworkError::Definition {
            source_name: source_name.to_string(),
            line: err.line,
            column: err.column,
            message: err.message,
        }
    }

    /// True for errors in the input (definition or late rule validation), as opposed to errors
    /// of the host; the CLI maps these to its "bad input" exit status.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            NetworkError::Definition { .. } | NetworkError::Rules(_)
        )
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = NetworkError> = std::result::Result<T, E>;
