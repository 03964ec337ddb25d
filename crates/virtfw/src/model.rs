//! The vocabulary of a firewall transaction: backends, layers, flags and commands.
//!
//! These mirror libvirt's enumerations one to one (see the mapping table in the crate docs), and
//! their string forms are the ones libvirt persists in XML, so a plan written by either program
//! reads in the other.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// Which tool family turns commands into kernel state.
///
/// A firewall has exactly one backend; its commands are argv tails for that family's programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// Placeholder that fails every command: lets a host without any firewall tool still load
    /// plans and report a clear error instead of guessing.
    None,
    /// `iptables`, `ip6tables` and `ebtables` (one process per command in libvirt).
    Iptables,
    /// `nft` (and `tc` for the tc layer).
    Nftables,
}

impl Backend {
    /// The string libvirt writes in `<firewall backend='…'>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::None => "none",
            Backend::Iptables => "iptables",
            Backend::Nftables => "nftables",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "none" => Ok(Backend::None),
            "iptables" => Ok(Backend::Iptables),
            "nftables" => Ok(Backend::Nftables),
            other => Err(Error::UnknownBackend(other.to_string())),
        }
    }
}

/// The protocol layer a command acts on; with the backend it selects the program to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Layer {
    /// Bridge/ethernet frames: `ebtables --concurrent` (iptables backend) or `nft`.
    Ethernet,
    /// IPv4: `iptables -w` or `nft`.
    Ipv4,
    /// IPv6: `ip6tables -w` or `nft`.
    Ipv6,
    /// Traffic control: `tc`, never auto-rolled-back.
    Tc,
}

impl Layer {
    /// The string libvirt writes in `<action layer='…'>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Ethernet => "ethernet",
            Layer::Ipv4 => "ipv4",
            Layer::Ipv6 => "ipv6",
            Layer::Tc => "tc",
        }
    }

    /// The program and the leading options the engine adds when it runs a command of this layer.
    ///
    /// `-w`/`--concurrent` make the iptables family wait for the xtables lock instead of failing
    /// when another tool holds it; they are never stored in commands or plans.
    pub fn program(self, backend: Backend) -> (&'static str, &'static [&'static str]) {
        match (backend, self) {
            (_, Layer::Tc) => ("tc", &[]),
            (Backend::Nftables, _) => ("nft", &[]),
            (_, Layer::Ethernet) => ("ebtables", &["--concurrent"]),
            (_, Layer::Ipv4) => ("iptables", &["-w"]),
            (_, Layer::Ipv6) => ("ip6tables", &["-w"]),
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Layer {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "ethernet" => Ok(Layer::Ethernet),
            "ipv4" => Ok(Layer::Ipv4),
            "ipv6" => Ok(Layer::Ipv6),
            "tc" => Ok(Layer::Tc),
            other => Err(Error::UnknownLayer(other.to_string())),
        }
    }
}

bitflags::bitflags! {
    /// Flags of a transaction (a group), given to [`Firewall::start_transaction`](crate::Firewall::start_transaction).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct TransactionFlags: u32 {
        /// Every action of the group ignores a non-zero exit status (folded into each command
        /// when it is added, as libvirt does).
        const IGNORE_ERRORS = 1;
        /// Every successful create gets its inverse recorded on the group's rollback list at the
        /// moment it runs, so the rollback is exact even for objects only the kernel can name
        /// (nftables handles).
        const AUTO_ROLLBACK = 2;
    }
}

bitflags::bitflags! {
    /// Flags of a group's rollback block, given to [`Firewall::start_rollback`](crate::Firewall::start_rollback).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct RollbackFlags: u32 {
        /// When this group fails, earlier groups are rolled back too (see the apply docs for the
        /// exact, libvirt-compatible rule that decides how far back).
        const INHERIT_PREVIOUS = 1;
    }
}

/// What a query callback sees and may do: the output lines of the query, and a way to add
/// commands to the group being applied (they run after the group's existing commands).
pub struct QueryContext<'a> {
    pub(crate) layer: Layer,
    pub(crate) lines: &'a [String],
    pub(crate) group_flags: TransactionFlags,
    pub(crate) added: Vec<Command>,
}

impl QueryContext<'_> {
    /// The layer of the query command.
    pub fn layer(&self) -> Layer {
        self.layer
    }

    /// The query's standard output split on `\n`; output ending in a newline yields a final
    /// empty string and empty output yields no lines, exactly as libvirt passes it (glib's
    /// `g_strsplit`).
    pub fn lines(&self) -> &[String] {
        self.lines
    }

    /// Append a command to the group being applied (libvirt's `AddCmd` from inside a callback).
    pub fn add_cmd<I, S>(&mut self, layer: Layer, args: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.add_cmd_full(layer, false, None, args);
    }

    /// Append a command with its own ignore-errors flag and, optionally, a query callback.
    pub fn add_cmd_full<I, S>(
        &mut self,
        layer: Layer,
        ignore_errors: bool,
        query: Option<QueryCallback>,
        args: I,
    ) where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let ignore = ignore_errors || self.group_flags.contains(TransactionFlags::IGNORE_ERRORS);
        self.added.push(
            Command::new(layer, args)
                .with_ignore_errors(ignore)
                .with_query(query),
        );
    }
}

/// A query callback: receives the output of its command and may add commands to the group.
/// Returning `Err` aborts the apply and rolls back, like a negative return in libvirt.
pub type QueryCallback = Box<dyn FnMut(&mut QueryContext<'_>) -> Result<(), String> + Send>;

/// One command: a layer and the arguments after the program name.
///
/// The program and its locking option (`-w`, `--concurrent`) and nft's `-ae` are not stored:
/// the engine adds them when it runs the command, which keeps stored plans portable.
pub struct Command {
    pub(crate) id: u64,
    pub(crate) layer: Layer,
    pub(crate) args: Vec<String>,
    pub(crate) ignore_errors: bool,
    pub(crate) query: Option<QueryCallback>,
    /// This command deletes a rule that was *appended* (`add rule` without a position,
    /// `-A`/`--append`), i.e. one near the back of its chain. Recorded on the inverse when the
    /// create runs, because a removal plan cannot tell it from the command alone; the batch
    /// removal uses it to delete front first (see [`crate::batch`]). Not part of equality.
    pub(crate) appended: bool,
    /// Made by the engine during an apply, not by the caller: an inverse auto-rollback
    /// recorded, or a command a query callback added. The next apply of the same firewall
    /// drops these first, so applying twice neither doubles the undo nor re-runs what a
    /// callback added as if the caller had written it.
    pub(crate) by_apply: bool,
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Command {
    /// A plain command (errors not ignored, no callback).
    pub fn new<I, S>(layer: Layer, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Command {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            layer,
            args: args.into_iter().map(Into::into).collect(),
            ignore_errors: false,
            query: None,
            appended: false,
            by_apply: false,
        }
    }

    /// Mark this command as made by the apply that runs (see `by_apply`).
    pub(crate) fn made_by_apply(mut self) -> Self {
        self.by_apply = true;
        self
    }

    pub(crate) fn with_ignore_errors(mut self, ignore: bool) -> Self {
        self.ignore_errors = ignore;
        self
    }

    pub(crate) fn with_query(mut self, query: Option<QueryCallback>) -> Self {
        self.query = query;
        self
    }

    pub(crate) fn with_appended(mut self, appended: bool) -> Self {
        self.appended = appended;
        self
    }

    /// Whether this command deletes a rule that was appended to its chain (the inverse of an
    /// `add rule` without position or of `-A`/`--append`); persisted as `appended='yes'`.
    pub fn appended(&self) -> bool {
        self.appended
    }

    /// The layer this command acts on.
    pub fn layer(&self) -> Layer {
        self.layer
    }

    /// The stored arguments (without program, `-w`, `--concurrent` or `-ae`).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Whether a non-zero exit of this command is ignored.
    pub fn ignore_errors(&self) -> bool {
        self.ignore_errors
    }

    /// Whether this command hands its output to a query callback.
    pub fn is_query(&self) -> bool {
        self.query.is_some()
    }

    /// A copy without the callback (callbacks are code and cannot be cloned or stored).
    pub fn clone_plain(&self) -> Command {
        let mut copy = Command::new(self.layer, self.args.iter().cloned())
            .with_ignore_errors(self.ignore_errors)
            .with_appended(self.appended);
        copy.by_apply = self.by_apply;
        copy
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Command")
            .field("layer", &self.layer)
            .field("args", &self.args)
            .field("ignore_errors", &self.ignore_errors)
            .field("query", &self.query.is_some())
            .field("appended", &self.appended)
            .finish()
    }
}

impl PartialEq for Command {
    /// Commands compare by what they do; callbacks cannot be compared and are ignored.
    fn eq(&self, other: &Self) -> bool {
        self.layer == other.layer
            && self.args == other.args
            && self.ignore_errors == other.ignore_errors
    }
}
