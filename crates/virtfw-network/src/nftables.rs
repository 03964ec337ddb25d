//! The nftables backend (spec §5.3, §5.4, state 7): one `libvirt_network` table per family
//! (`ip`, `ip6`) with its own chains, and the rules of one network in it.
//!
//! libvirt keeps out of the `filter` table iptables-nft uses and out of the `inet` family, so
//! its rules never collide with another tool's and can differ per family.

use std::collections::BTreeSet;

use virtfw::{Backend, Firewall, Layer, QueryContext, TransactionFlags};

use crate::def::{IpDef, NetworkDef};
use crate::error::Result;
use crate::iptables::{address_set, AddressSet};

/// The table every libvirt network rule lives in (per family).
pub const TABLE: &str = "libvirt_network";

/// (chain, parent it is jumped to from, base-chain definition), in creation order. The jumps
/// are inserted at the top of `forward`, so their final order is cross, input, output.
const CHAINS: [(&str, Option<&str>, Option<&str>); 5] = [
    (
        "forward",
        None,
        Some("{ type filter hook forward priority 0; policy accept; }"),
    ),
    ("guest_output", Some("forward"), None),
    ("guest_input", Some("forward"), None),
    ("guest_cross", Some("forward"), None),
    (
        "guest_nat",
        None,
        Some("{ type nat hook postrouting priority 100; policy accept; }"),
    ),
];

/// The nft family name of a layer.
pub fn family(layer: Layer) -> &'static str {
    match layer {
        Layer::Ipv6 => "ip6",
        _ => "ip",
    }
}

/// What `nft list table F libvirt_network` says: does the table exist, which chains, and which
/// chain jumps to which. Only our own table is listed, and unknown lines are skipped.
#[derive(Debug, Default)]
struct Listing {
    table: bool,
    chains: BTreeSet<String>,
    jumps: BTreeSet<(String, String)>,
}

fn scan_listing(fam: &str, lines: &[String]) -> Listing {
    let mut listing = Listing::default();
    let header = format!("table {fam} {TABLE} {{");
    let mut current: Option<String> = None;
    for line in lines {
        let line = line.trim_start();
        if line.trim_end() == header {
            listing.table = true;
        } else if let Some(rest) = line.strip_prefix("chain ") {
            if let Some(name) = rest.split_whitespace().next() {
                listing.chains.insert(name.to_string());
                current = Some(name.to_string());
            }
        } else if let Some(at) = line.find("jump ") {
            let target = line[at + 5..].split_whitespace().next();
            if let (Some(parent), Some(child)) = (&current, target) {
                listing.jumps.insert((parent.clone(), child.to_string()));
            }
        }
    }
    listing
}

/// The one-time setup of table and chains for both families: a listing per family whose
/// callback adds what is missing (existing tables and chains, e.g. from another network or
/// libvirt itself, are reused). One group per family, so a missing `ip6` table cannot stop the
/// `ip` one; see [`crate::global::setup`] for how failures are kept apart.
pub fn global_setup(layer: Layer) -> Firewall {
    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::empty());
    let fam = family(layer);
    let callback = move |ctx: &mut QueryContext<'_>| -> Result<(), String> {
        let listing = scan_listing(fam, ctx.lines());
        let layer = ctx.layer();
        if !listing.table {
            ctx.add_cmd(layer, ["add", "table", fam, TABLE]);
        }
        for (chain, parent, definition) in CHAINS {
            if !listing.table || !listing.chains.contains(chain) {
                let mut args = vec!["add", "chain", fam, TABLE, chain];
                args.extend(definition);
                ctx.add_cmd(layer, args);
            }
            if let Some(parent) = parent {
                if !listing
                    .jumps
                    .contains(&(parent.to_string(), chain.to_string()))
                {
                    ctx.add_cmd(
                        layer,
                        [
                            "insert", "rule", fam, TABLE, parent, "counter", "jump", chain,
                        ],
                    );
                }
            }
        }
        Ok(())
    };
    fw.add_cmd_full(
        layer,
        false,
        Some(Box::new(callback)),
        ["list", "table", fam, TABLE],
    );
    fw
}

struct Builder<'a> {
    def: &'a NetworkDef,
    fw: Firewall,
}

impl Builder<'_> {
    fn insert(&mut self, layer: Layer, chain: &str, tail: &[&str]) {
        let mut args = vec!["insert", "rule", family(layer), TABLE, chain];
        args.extend_from_slice(tail);
        self.fw.add_cmd(layer, args);
    }

    /// Reject what is not explicitly allowed; let guests on the bridge talk to each other.
    fn general(&mut self, layer: Layer) {
        let br = self.def.bridge.clone();
        self.insert(layer, "guest_output", &["iif", &br, "counter", "reject"]);
        self.insert(layer, "guest_input", &["oif", &br, "counter", "reject"]);
        self.insert(
            layer,
            "guest_cross",
            &["iif", &br, "oif", &br, "counter", "accept"],
        );
    }

    fn routing(&mut self, ip: &IpDef) {
        let layer = layer_of(ip);
        let f = family(layer);
        let net = ip.network().to_string();
        let br = self.def.bridge.clone();
        let dev = self.def.forward_dev.clone();
        let mut out = vec![f, "saddr", &net, "iif", &br];
        if let Some(d) = &dev {
            out.extend(["oifname", d]);
        }
        out.extend(["counter", "accept"]);
        self.insert(layer, "guest_output", &out);
        let mut inn = vec![f, "daddr", &net];
        if let Some(d) = &dev {
            inn.extend(["iifname", d]);
        }
        inn.extend(["oif", &br, "counter", "accept"]);
        self.insert(layer, "guest_input", &inn);
    }

    fn nat_target(&self, ip: &IpDef, proto: Option<&str>) -> Result<Vec<String>> {
        let nat = &self.def.nat;
        let ports = match proto {
            Some(_) => Some(nat.port_range()?),
            None => None,
        };
        let same_family = |a: &std::net::IpAddr| a.is_ipv4() == ip.is_ipv4();
        Ok(match nat.address_start.filter(same_family) {
            Some(start) => {
                let mut to = start.to_string();
                if let Some(end) = nat.address_end.filter(same_family) {
                    to = format!("{to}-{end}");
                }
                if let Some((s, e)) = ports {
                    to = format!("{to}:{s}-{e}");
                }
                vec!["snat".into(), "to".into(), to]
            }
            None => {
                let mut t = vec!["masquerade".to_string()];
                if let Some((s, e)) = ports {
                    t.extend(["to".to_string(), format!(":{s}-{e}")]);
                }
                t
            }
        })
    }

    fn masquerade(&mut self, ip: &IpDef) -> Result<()> {
        let layer = layer_of(ip);
        let f = family(layer);
        let net = ip.network().to_string();
        let br = self.def.bridge.clone();
        let dev = self.def.forward_dev.clone();

        let mut r1 = vec![f, "saddr", &net, "iif", &br];
        if let Some(d) = &dev {
            r1.extend(["oifname", d]);
        }
        r1.extend(["counter", "accept"]);
        self.insert(layer, "guest_output", &r1);

        let mut r2: Vec<&str> = Vec::new();
        if let Some(d) = &dev {
            r2.extend(["iifname", d]);
        }
        r2.extend([
            "oif",
            &br,
            f,
            "daddr",
            &net,
            "ct",
            "state",
            "related,established",
            "counter",
            "accept",
        ]);
        self.insert(layer, "guest_input", &r2);

        for proto in [None, Some("udp"), Some("tcp")] {
            let target = self.nat_target(ip, proto)?;
            let mut r: Vec<&str> = Vec::new();
            if let Some(p) = proto {
                r.extend(["meta", "l4proto", p]);
            }
            r.extend([f, "saddr", &net, f, "daddr", "!=", &net]);
            if let Some(d) = &dev {
                r.extend(["oifname", d]);
            }
            r.push("counter");
            r.extend(target.iter().map(String::as_str));
            self.insert(layer, "guest_nat", &r);
        }

        let dests: &[&str] = if ip.is_ipv4() {
            &["255.255.255.255/32", "224.0.0.0/24"]
        } else {
            &["ff02::/16"]
        };
        for dest in dests {
            let mut r: Vec<&str> = Vec::new();
            if let Some(d) = &dev {
                r.extend(["oifname", d]);
            }
            r.extend([f, "saddr", &net, f, "daddr", dest, "counter", "return"]);
            self.insert(layer, "guest_nat", &r);
        }
        Ok(())
    }
}

fn layer_of(ip: &IpDef) -> Layer {
    if ip.is_ipv4() {
        Layer::Ipv4
    } else {
        Layer::Ipv6
    }
}

/// The network's firewall (§5.4): one auto-rollback transaction — general IPv4, general IPv6
/// (when the network has IPv6), then each `<ip>`'s set in document order.
pub fn network_firewall(def: &NetworkDef) -> Result<Firewall> {
    let mut b = Builder {
        def,
        fw: Firewall::new(Backend::Nftables),
    };
    b.fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    b.general(Layer::Ipv4);
    if def.needs_ipv6_rules() {
        b.general(Layer::Ipv6);
    }
    for ip in &def.ips {
        match address_set(def, ip) {
            AddressSet::Masquerade => b.masquerade(ip)?,
            AddressSet::Routing => b.routing(ip),
            AddressSet::Nothing => {}
        }
    }
    Ok(b.fw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_scan_finds_table_chains_jumps() {
        let text = "table ip libvirt_network {\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tcounter packets 0 bytes 0 jump guest_cross\n\t}\n\tchain guest_cross {\n\t}\n}\n";
        let lines: Vec<String> = text.split('\n').map(str::to_string).collect();
        let l = scan_listing("ip", &lines);
        assert!(l.table);
        assert!(l.chains.contains("forward") && l.chains.contains("guest_cross"));
        assert!(l.jumps.contains(&("forward".into(), "guest_cross".into())));
        assert!(!scan_listing("ip6", &lines).table);
    }
}
