//! The one-time global setup: libvirt's private chains (iptables) or tables (nftables), shared
//! by every network on the host.
//!
//! Each family is set up by its own firewall, and a failure of one is kept apart from the other
//! (libvirt does the same): a host without IPv6 netfilter can still run IPv4-only networks.

use virtfw::{ApplyOptions, Backend, Executor, Firewall, Layer};

use crate::def::NetworkDef;
use crate::error::{NetworkError, Result};
use crate::{iptables, nftables};

/// The setup firewall of one family, not yet applied.
pub fn setup_firewall(backend: Backend, layer: Layer) -> Firewall {
    match backend {
        Backend::Nftables => nftables::global_setup(layer),
        _ => iptables::global_setup(layer),
    }
}

/// The outcome of the setup, per family.
#[derive(Debug)]
pub struct GlobalSetup {
    /// The IPv4 setup's outcome (its error as text: it is reported with each network needing it).
    pub ipv4: Result<(), String>,
    /// The IPv6 setup's outcome.
    pub ipv6: Result<(), String>,
}

impl GlobalSetup {
    /// Fail with the saved error of a family this network needs.
    pub fn require(&self, def: &NetworkDef) -> Result<()> {
        if let Err(message) = &self.ipv4 {
            if def.has_ipv4() || !def.needs_ipv6_rules() {
                return Err(NetworkError::GlobalSetup {
                    family: "IPv4",
                    message: message.clone(),
                });
            }
        }
        if let Err(message) = &self.ipv6 {
            if def.needs_ipv6_rules() {
                return Err(NetworkError::GlobalSetup {
                    family: "IPv6",
                    message: message.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Create whatever private chains/tables are missing, IPv4 then IPv6. Idempotent: existing
/// chains and jumps are found by listing and reused.
///
/// The two families touch disjoint tables (`ip` vs `ip6`, iptables vs ip6tables), so off the
/// per-command path they run at the same time; with `per_command` they run in libvirt's order.
pub fn setup(backend: Backend, exec: &dyn Executor, options: ApplyOptions<'_>) -> GlobalSetup {
    let mut firewalls = [
        setup_firewall(backend, Layer::Ipv4),
        setup_firewall(backend, Layer::Ipv6),
    ];
    let mut results = Firewall::apply_concurrently(&mut firewalls, exec, options)
        .into_iter()
        .map(|r| r.map(drop).map_err(|e| e.to_string()));
    let ipv4 = results.next().unwrap_or(Ok(()));
    let ipv6 = results.next().unwrap_or(Ok(()));
    GlobalSetup { ipv4, ipv6 }
}
