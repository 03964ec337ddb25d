//! virtfw: host firewall rules as transactions that can always be taken away again exactly.
//!
//! This crate is the engine. A [`Firewall`] is an ordered list of groups; each group holds
//! commands (argv tails for `iptables`, `ip6tables`, `ebtables` or `nft`) and rollback commands.
//! [`Firewall::apply`] runs the groups in order through an [`Executor`]; when a group fails its
//! rollback runs (and earlier groups' too, with [`RollbackFlags::INHERIT_PREVIOUS`]) and the first
//! error is returned. With [`TransactionFlags::AUTO_ROLLBACK`] the inverse of each create is
//! recorded as it runs, so [`Firewall::new_from_rollback`] yields an exact removal plan that can
//! be stored as XML ([`Firewall::to_xml`]) and applied by a later process.
//!
//! ```
//! use virtfw::{Backend, Firewall, Layer, TransactionFlags, executor::FakeExecutor};
//!
//! let mut fw = Firewall::new(Backend::Nftables);
//! fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
//! fw.add_cmd(Layer::Ipv4, ["add", "table", "ip", "demo"]);
//! fw.add_cmd(Layer::Ipv4, ["add", "chain", "ip", "demo", "input"]);
//! let exec = FakeExecutor::new();
//! fw.apply(&exec).unwrap();
//! let removal = fw.new_from_rollback().unwrap();
//! assert!(removal.to_xml().contains("<item>delete</item>"));
//! ```
//!
//! # The model, mapped to libvirt
//!
//! Every concept of libvirt's `virFirewall` has one counterpart here:
//!
//! | libvirt (`src/util/virfirewall.h`) | virtfw |
//! |---|---|
//! | `virFirewall` | [`Firewall`] |
//! | group (`virFirewallGroup`) | [`Group`] |
//! | `virFirewallCmd` | [`Command`] |
//! | `virFirewallBackend` (`NONE`, `IPTABLES`, `NFTABLES`) | [`Backend`] (`None`, `Iptables`, `Nftables`) |
//! | `virFirewallLayer` (`ETHERNET`, `IPV4`, `IPV6`, `TC`) | [`Layer`] |
//! | `VIR_FIREWALL_TRANSACTION_IGNORE_ERRORS` | [`TransactionFlags::IGNORE_ERRORS`] |
//! | `VIR_FIREWALL_TRANSACTION_AUTO_ROLLBACK` | [`TransactionFlags::AUTO_ROLLBACK`] |
//! | `VIR_FIREWALL_ROLLBACK_INHERIT_PREVIOUS` | [`RollbackFlags::INHERIT_PREVIOUS`] |
//! | `virFirewallNew` | [`Firewall::new`] |
//! | `virFirewallGetBackend` / `GetName` / `SetName` | [`Firewall::backend`] / [`Firewall::name`] / [`Firewall::set_name`] |
//! | `virFirewallStartTransaction` | [`Firewall::start_transaction`] |
//! | `virFirewallStartRollback` | [`Firewall::start_rollback`] |
//! | `virFirewallTransactionGetFlags` | [`Firewall::transaction_flags`] |
//! | `virFirewallAddCmd` | [`Firewall::add_cmd`] |
//! | `virFirewallAddCmdFull` (ignore flag, query callback) | [`Firewall::add_cmd_full`] with a [`QueryCallback`] closure |
//! | `virFirewallAddRollbackCmd` | [`Firewall::add_rollback_cmd`] |
//! | `virFirewallRemoveCmd` | [`Firewall::remove_cmd`] |
//! | `virFirewallCmdAddArg` / `AddArgFormat` / `AddArgSet` / `AddArgList` | [`Firewall::cmd_add_arg`] (any iterator of strings; format with `format!`) |
//! | `virFirewallCmdGetArgCount` | [`Firewall::cmd_arg_count`] |
//! | `virFirewallCmdToString` | [`transcript::command_line`] |
//! | query callback `virFirewallQueryCallback(fw, layer, lines, opaque)` | closure `FnMut(&mut QueryContext) -> Result<(), String>`; the context gives the layer and lines and adds commands |
//! | `virFirewallApply` | [`Firewall::apply`] / [`Firewall::apply_with`] |
//! | `virFirewallNewFromRollback` | [`Firewall::new_from_rollback`] |
//! | `virFirewallFormat` / `virFirewallParseXML` | [`Firewall::to_xml`] / [`Firewall::from_xml`], [`xml::parse_firewall_element`] |
//! | `virCommandRun` (+ `virCommandSetDryRun` in tests) | [`executor::ProcessExecutor`] (+ [`executor::FakeExecutor`]) |
//! | sticky `err` of the builder | [`Firewall::build_error`], [`BuildError`] |
//!
//! # Behaviour kept from libvirt on purpose
//!
//! * The rollback of failed group `i` starts at the lowest group `k >= 1` flagged
//!   `INHERIT_PREVIOUS`, minus one (group 0's flag is never read and gaps do not stop the scan);
//!   see [`Firewall::rollback_start`]. Rollback lists run forward, their errors are ignored, and
//!   the error returned is the first one.
//! * Commands that query callbacks add run at the end of their group.
//! * A failing `nft list …` is not an error (a missing table is a normal answer).
//! * A failure that is ignored creates no inverse.
//!
//! # Where virtfw deliberately differs from libvirt
//!
//! Most differences only show in cases where libvirt's behaviour would be a bug for the user.
//! The batching and `appended` items below do change what runs (batches instead of single
//! commands) and what is written (`appended='yes'` in plans of appended rules); the
//! per-command path, and libvirt's network plans (all inserts), are unaffected, which the
//! conformance suite checks byte for byte.
//!
//! * **Preflight.** Before anything runs, `apply` refuses a firewall with a builder error, an
//!   empty command, backend `none`, or a program missing from `PATH`, so bad input never
//!   half-applies. libvirt finds these mid-apply, after earlier groups ran.
//! * **Family-less nft creates.** `add table foo` creates `ip foo` (nft's default); libvirt would
//!   copy `foo` into the inverse as if it were the family, so its `delete` would fail. virtfw
//!   writes `delete table ip handle N`.
//! * **Positional iptables inserts.** libvirt turns `-I CHAIN 3 …` into `--delete CHAIN 3 …`,
//!   which deletes *rule number 3*, whatever it is by then. virtfw drops the position, so the
//!   inverse deletes by specification.
//! * **Rollback commands never get `-ae`.** libvirt still consults the group's `AUTO_ROLLBACK`
//!   while running a rollback list, so a hand-written nft *create* in a rollback list would run
//!   with `-ae` and grow the list it is iterating. Rollback commands are undo commands; virtfw
//!   runs them as written.
//! * **Appended rules are marked.** The inverse of an append (`add rule` without a position,
//!   `-A`/`--append`) carries [`Command::appended`], written as `appended='yes'` on `<action>`
//!   (only when set; libvirt's parser ignores it), so the batch path can delete front-first
//!   instead of in quadratic time. Plans of inserted rules (all of libvirt's networks) are
//!   byte-identical to libvirt's.
//! * **Batching.** Unless [`ApplyOptions::per_command`] is set (or `VIRTFW_NO_BATCH=1`), groups
//!   run as one kernel transaction each where that cannot change the outcome (see [`batch`]); a
//!   failed batch is re-run command by command so the error and rollback are libvirt's.
//!
//! The `virtfw` command adds one more rule of its own: a failed `apply` is all-or-nothing (the
//! groups libvirt's rollback rule would keep are undone too), because an operator who gets exit
//! status 1 expects nothing to have changed.

pub mod batch;
pub mod engine;
pub mod error;
pub mod executor;
pub mod firewall;
pub mod model;
pub mod netns;
pub mod rollback;
pub mod transcript;
pub mod validate;
pub mod xml;

pub use engine::{ApplyObserver, ApplyOptions};
pub use error::{BuildError, Error, ExecError, Result};
pub use executor::{Executor, FakeExecutor, LibnftExecutor, ProcessExecutor};
pub use firewall::{CmdId, Firewall, Group};
pub use model::{
    Backend, Command, Layer, QueryCallback, QueryContext, RollbackFlags, TransactionFlags,
};
