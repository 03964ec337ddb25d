//! libvirt virtual networks on the virtfw engine: a `<network>` definition becomes exactly the
//! firewall libvirt would install (both backends, checked against libvirt's golden files), and
//! the network's lifecycle keeps libvirt's status file so either program can stop what the
//! other started.
//!
//! * [`def`] reads the definition, [`iptables`] and [`nftables`] build the rules,
//!   [`global`] makes the shared private chains, [`status`] reads and writes `<networkstatus>`,
//!   [`backend`] picks the backend, [`lifecycle`] starts, stops, reloads and checks networks.
//!
//! ```
//! use virtfw::{ApplyOptions, Backend, FakeExecutor};
//! use virtfw_network::{lifecycle, NetworkDef};
//!
//! let def = NetworkDef::from_xml(
//!     "<network><name>demo</name><bridge name='virbr9'/><forward/>\
//!      <ip address='192.168.99.1' prefix='24'/></network>",
//!     "demo.xml",
//! ).unwrap();
//! let text = lifecycle::plan(&def, Backend::Nftables, false).unwrap();
//! assert!(text.contains("masquerade"));
//! ```

#![warn(missing_docs)]

pub mod backend;
pub mod def;
pub mod error;
pub mod global;
pub mod iptables;
pub mod lifecycle;
pub mod nftables;
pub mod status;

pub use def::{ForwardMode, IpDef, NatDef, NetworkDef};
pub use error::{NetworkError, Result};
pub use lifecycle::{check, plan, reload, start, stop, Reloaded, RuleCheck};
pub use status::NetworkStatus;
