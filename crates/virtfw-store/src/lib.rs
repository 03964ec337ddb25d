//! virtfw's crash-safe state, as a library: removal plans kept on disk, a write-ahead journal
//! of every firewall command, the state lock every command inherits, and recovery — with the
//! operations that use them (apply, remove, verify, recover, network start/stop/reload).
//!
//! The engine ([`virtfw`]) applies a transaction and computes its exact removal plan; this
//! crate makes that survive the caller: a [`Store`] applies through a journalling executor (each
//! command recorded durably before it runs, its output written by the child straight into the
//! journal), stores the plan atomically, and on the next start [`Store::recover`] finishes or
//! undoes whatever a killed process left half done — nothing leaked, nothing run twice. The
//! `virtfw` command is a thin front end over this crate; a VM manager gets the same guarantees
//! in a few lines:
//!
//! ```
//! use virtfw::Firewall;
//! use virtfw_store::{Store, StoreOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let ns = virtfw::netns::Netns::new("vfw-store-doc")?; // a throwaway namespace (needs root)
//! # let tmp = tempfile::tempdir()?;
//! # let state_dir = tmp.path().join("state"); // e.g. /var/lib/my-vmm/firewall
//! # let xml = "<firewall backend='nftables'><group><action layer='ipv4'><args><item>add</item><item>table</item><item>ip</item><item>vmm</item></args></action></group></firewall>";
//! let store = Store::open(&state_dir, StoreOptions::new().netns(Some(ns.name().into())));
//! // At start-up: settle what a crash of the previous run left (undo a half-done apply, ...).
//! let recovered = store.recover()?;
//! if let Some(e) = recovered.error() { return Err(e.into()); }
//! // Apply a transaction; its removal plan is stored under the name "vm1".
//! let mut fw = Firewall::from_xml(xml, "vm1.xml")?;
//! let applied = store.apply(&mut fw, "vm1")?;
//! println!("{applied}"); // or serde_json::to_string(&applied)
//! // Later, perhaps after a restart: remove exactly what was created.
//! store.remove("vm1")?;
//! # assert!(store.list()?.plans.is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! Errors are [`StoreError`]s; [`StoreError::kind`] sorts each into an [`ErrorKind`] with a
//! stable number ([`EXIT_STATUSES`], the CLI's exit statuses). Every operation answers with a
//! serde report type ([`report`]); the CLI's `--json` and text output are made from them.
//!
//! See examples/crash_safe.rs for a program that runs this in a throwaway namespace, and
//! docs/cli.md for the on-disk format and what recovery assumes.

#![warn(missing_docs)]

mod cancel;
mod error;
mod exec;
mod journal;
mod lock;
mod network;
mod network_journal;
mod operation;
mod plan;
mod recover;
pub mod report;
mod state;
mod store;
mod undo;
mod verify;

pub use cancel::Cancel;
pub use error::{
    exit_status_help, ErrorKind, ExitStatus, Result, StoreError, EXIT_OK, EXIT_STATUSES,
};
pub use network::{
    configured_backend, default_network_conf, network_plan, parse_backend, read_network_def,
};
pub use recover::{Settled, Unsettled};
pub use report::*;
pub use store::{Store, StoreOptions, DEFAULT_STATE_DIR};
pub use verify::{MissingObject, PlanCheck};
