//! The iptables backend: libvirt's private `LIBVIRT_*` chains and the rules of one network
//! (spec §5.1, §5.2), plus the legacy removal for networks started before removal plans were
//! stored (§5.2.7).
//!
//! Every rule is `--insert`ed, so a chain ends up in the reverse order of creation; the order
//! below is libvirt's, which the conformance transcripts check argument for argument.

use std::collections::BTreeSet;

use virtfw::{Backend, Firewall, Layer, QueryContext, TransactionFlags};

use crate::def::{ForwardMode, IpDef, NetworkDef};
use crate::error::Result;

const INP: &str = "LIBVIRT_INP";
const OUT: &str = "LIBVIRT_OUT";
const FWO: &str = "LIBVIRT_FWO";
const FWI: &str = "LIBVIRT_FWI";
const FWX: &str = "LIBVIRT_FWX";
const PRT: &str = "LIBVIRT_PRT";

/// (table, [(parent, child)]) in creation order. FORWARD gets three inserts at position 1, so
/// its final order is FWX, FWI, FWO: cross-bridge accept first, then the per-direction chains.
const PRIVATE_CHAINS: [(&str, &[(&str, &str)]); 3] = [
    (
        "filter",
        &[
            ("INPUT", INP),
            ("OUTPUT", OUT),
            ("FORWARD", FWO),
            ("FORWARD", FWI),
            ("FORWARD", FWX),
        ],
    ),
    ("nat", &[("POSTROUTING", PRT)]),
    ("mangle", &[("POSTROUTING", PRT)]),
];

/// What a `--list-rules` listing says about chains: which exist, which are jumped to from where.
/// Only `-N` and `-A … -j` lines matter; anything else (other software's rules) is skipped.
fn scan_list_rules(lines: &[String]) -> (BTreeSet<String>, BTreeSet<(String, String)>) {
    let mut chains = BTreeSet::new();
    let mut jumps = BTreeSet::new();
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["-N", chain, ..] => {
                chains.insert(chain.to_string());
            }
            ["-A", parent, rest @ ..] => {
                if let Some(i) = rest.iter().position(|w| *w == "-j" || *w == "--jump") {
                    if let Some(child) = rest.get(i + 1) {
                        jumps.insert((parent.to_string(), child.to_string()));
                    }
                }
            }
            _ => {}
        }
    }
    (chains, jumps)
}

/// The one-time setup of the private chains for one family (`layer` ipv4 or ipv6): three
/// listings whose callbacks create the missing chains and jumps, so chains that already exist
/// (another network, an earlier run, libvirt itself) are reused.
pub fn global_setup(layer: Layer) -> Firewall {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::empty());
    for (table, wanted) in PRIVATE_CHAINS {
        let callback = move |ctx: &mut QueryContext<'_>| -> Result<(), String> {
            let (chains, jumps) = scan_list_rules(ctx.lines());
            let layer = ctx.layer();
            for (parent, child) in wanted {
                if !chains.contains(*child) {
                    ctx.add_cmd(layer, ["--table", table, "--new-chain", child]);
                }
                if !jumps.contains(&(parent.to_string(), child.to_string())) {
                    ctx.add_cmd(
                        layer,
                        ["--table", table, "--insert", parent, "--jump", child],
                    );
                }
            }
            Ok(())
        };
        fw.add_cmd_full(
            layer,
            false,
            Some(Box::new(callback)),
            ["--table", table, "--list-rules"],
        );
    }
    fw
}

/// A command of the network's rule set: layer and args, with `--insert` as the create option.
type Rule = (Layer, Vec<String>);

fn rule(layer: Layer, args: &[&str]) -> Rule {
    (layer, args.iter().map(|s| s.to_string()).collect())
}

fn port_rule(layer: Layer, chain: &str, bridge: &str, proto: &str, port: &str) -> Rule {
    let dir = if chain == INP {
        "--in-interface"
    } else {
        "--out-interface"
    };
    rule(
        layer,
        &[
            "--table",
            "filter",
            "--insert",
            chain,
            dir,
            bridge,
            "--protocol",
            proto,
            "--destination-port",
            port,
            "--jump",
            "ACCEPT",
        ],
    )
}

/// The three bridge-wide forward rules: reject everything not explicitly allowed, but let
/// guests on the same bridge talk to each other.
fn reject_rules(layer: Layer, bridge: &str) -> Vec<Rule> {
    vec![
        rule(
            layer,
            &[
                "--table",
                "filter",
                "--insert",
                FWO,
                "--in-interface",
                bridge,
                "--jump",
                "REJECT",
            ],
        ),
        rule(
            layer,
            &[
                "--table",
                "filter",
                "--insert",
                FWI,
                "--out-interface",
                bridge,
                "--jump",
                "REJECT",
            ],
        ),
        rule(
            layer,
            &[
                "--table",
                "filter",
                "--insert",
                FWX,
                "--in-interface",
                bridge,
                "--out-interface",
                bridge,
                "--jump",
                "ACCEPT",
            ],
        ),
    ]
}

/// §5.2.1: DHCP, DNS, (TFTP) to dnsmasq on the host, and the reject rules — for every network,
/// even one without IPv4 (libvirt does so).
fn general_ipv4(def: &NetworkDef) -> Vec<Rule> {
    let br = def.bridge.as_str();
    let l = Layer::Ipv4;
    let mut rules = vec![
        port_rule(l, INP, br, "tcp", "67"),
        port_rule(l, INP, br, "udp", "67"),
        port_rule(l, OUT, br, "tcp", "68"),
        port_rule(l, OUT, br, "udp", "68"),
        port_rule(l, INP, br, "tcp", "53"),
        port_rule(l, INP, br, "udp", "53"),
        port_rule(l, OUT, br, "tcp", "53"),
        port_rule(l, OUT, br, "udp", "53"),
    ];
    if def
        .first_ipv4_dhcp_or_tftp()
        .is_some_and(|ip| ip.tftp_root.is_some())
    {
        rules.push(port_rule(l, INP, br, "udp", "69"));
        rules.push(port_rule(l, OUT, br, "udp", "69"));
    }
    rules.extend(reject_rules(l, br));
    rules
}

/// §5.2.2: the IPv6 reject rules, and DNS/DHCPv6 when the network has an IPv6 address.
fn general_ipv6(def: &NetworkDef) -> Vec<Rule> {
    if !def.needs_ipv6_rules() {
        return Vec::new();
    }
    let br = def.bridge.as_str();
    let l = Layer::Ipv6;
    let mut rules = reject_rules(l, br);
    if def.has_ipv6() {
        rules.extend([
            port_rule(l, INP, br, "tcp", "53"),
            port_rule(l, INP, br, "udp", "53"),
            port_rule(l, OUT, br, "tcp", "53"),
            port_rule(l, OUT, br, "udp", "53"),
            port_rule(l, INP, br, "udp", "547"),
            port_rule(l, OUT, br, "udp", "546"),
        ]);
    }
    rules
}

fn layer_of(ip: &IpDef) -> Layer {
    if ip.is_ipv4() {
        Layer::Ipv4
    } else {
        Layer::Ipv6
    }
}

/// Which per-address set an `<ip>` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddressSet {
    Masquerade,
    Routing,
    Nothing,
}

pub(crate) fn address_set(def: &NetworkDef, ip: &IpDef) -> AddressSet {
    match def.forward {
        ForwardMode::Nat if ip.is_ipv4() || def.nat.ipv6 => AddressSet::Masquerade,
        ForwardMode::Nat | ForwardMode::Route => AddressSet::Routing,
        _ => AddressSet::Nothing,
    }
}

/// The two forward-accept rules of a routed address: out from the subnet, in to it.
fn routing_rules(def: &NetworkDef, ip: &IpDef) -> Vec<Rule> {
    let l = layer_of(ip);
    let net = ip.network().to_string();
    let br = def.bridge.as_str();
    let mut out: Vec<&str> = vec!["--table", "filter", "--insert", FWO, "--source", &net];
    out.extend(["--in-interface", br]);
    if let Some(dev) = &def.forward_dev {
        out.extend(["--out-interface", dev]);
    }
    out.extend(["--jump", "ACCEPT"]);
    let mut inn: Vec<&str> = vec!["--table", "filter", "--insert", FWI, "--destination", &net];
    if let Some(dev) = &def.forward_dev {
        inn.extend(["--in-interface", dev]);
    }
    inn.extend(["--out-interface", br, "--jump", "ACCEPT"]);
    vec![rule(l, &out), rule(l, &inn)]
}

/// The NAT target of a masquerade rule: SNAT to `<nat><address>` of this family, else
/// MASQUERADE; udp/tcp rules restrict the source ports.
fn nat_target(def: &NetworkDef, ip: &IpDef, proto: Option<&str>) -> Result<Vec<String>> {
    let ports = match proto {
        Some(_) => Some(def.nat.port_range()?),
        None => None,
    };
    let same_family = |a: &std::net::IpAddr| a.is_ipv4() == ip.is_ipv4();
    Ok(match def.nat.address_start.filter(same_family) {
        Some(start) => {
            let mut to = start.to_string();
            if let Some(end) = def.nat.address_end.filter(same_family) {
                to = format!("{to}-{end}");
            }
            if let Some((s, e)) = ports {
                to = format!("{to}:{s}-{e}");
            }
            vec!["--jump".into(), "SNAT".into(), "--to-source".into(), to]
        }
        None => {
            let mut t = vec!["--jump".to_string(), "MASQUERADE".to_string()];
            if let Some((s, e)) = ports {
                t.extend(["--to-ports".to_string(), format!("{s}-{e}")]);
            }
            t
        }
    })
}

/// §5.2.3 masquerade set, in creation order 1…7.
fn masquerade_rules(def: &NetworkDef, ip: &IpDef) -> Result<Vec<Rule>> {
    let l = layer_of(ip);
    let net = ip.network().to_string();
    let br = def.bridge.as_str();
    let dev = def.forward_dev.as_deref();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let mut rules = Vec::new();

    let mut r1 = s(&[
        "--table",
        "filter",
        "--insert",
        FWO,
        "--source",
        &net,
        "--in-interface",
        br,
    ]);
    if let Some(d) = dev {
        r1.extend(s(&["--out-interface", d]));
    }
    r1.extend(s(&["--jump", "ACCEPT"]));
    rules.push((l, r1));

    let mut r2 = s(&["--table", "filter", "--insert", FWI, "--destination", &net]);
    if let Some(d) = dev {
        r2.extend(s(&["--in-interface", d]));
    }
    r2.extend(s(&[
        "--out-interface",
        br,
        "--match",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "--jump",
        "ACCEPT",
    ]));
    rules.push((l, r2));

    for proto in [None, Some("udp"), Some("tcp")] {
        let mut r = s(&["--table", "nat", "--insert", PRT, "--source", &net]);
        if let Some(p) = proto {
            r.extend(s(&["-p", p]));
        }
        r.extend(s(&["!", "--destination", &net]));
        if let Some(d) = dev {
            r.extend(s(&["--out-interface", d]));
        }
        r.extend(nat_target(def, ip, proto)?);
        rules.push((l, r));
    }

    let mut dont_nat = |dest: &str| {
        let mut r = s(&["--table", "nat", "--insert", PRT]);
        if let Some(d) = dev {
            r.extend(s(&["--out-interface", d]));
        }
        r.extend(s(&[
            "--source",
            &net,
            "--destination",
            dest,
            "--jump",
            "RETURN",
        ]));
        rules.push((l, r));
    };
    if ip.is_ipv4() {
        dont_nat("255.255.255.255/32");
        dont_nat("224.0.0.0/24");
    } else {
        dont_nat("ff02::/16");
    }
    Ok(rules)
}

fn address_rules(def: &NetworkDef, ip: &IpDef) -> Result<Vec<Rule>> {
    Ok(match address_set(def, ip) {
        AddressSet::Masquerade => masquerade_rules(def, ip)?,
        AddressSet::Routing => routing_rules(def, ip),
        AddressSet::Nothing => Vec::new(),
    })
}

/// §5.2.4: fill in the checksum of DHCP replies (virtio guests with offloading otherwise get
/// packets some DHCP clients drop).
fn checksum_rules(def: &NetworkDef) -> Vec<Rule> {
    if def.first_ipv4_dhcp().is_none() {
        return Vec::new();
    }
    vec![rule(
        Layer::Ipv4,
        &[
            "--table",
            "mangle",
            "--insert",
            PRT,
            "--out-interface",
            &def.bridge,
            "--protocol",
            "udp",
            "--destination-port",
            "68",
            "--jump",
            "CHECKSUM",
            "--checksum-fill",
        ],
    )]
}

/// The network's firewall (§5.2.5): T1 with auto-rollback holds every rule that matters; T2,
/// which may fail without failing the network, the checksum rule (older kernels lack the
/// target). Fails only on input that cannot become rules (a bad NAT port range).
pub fn network_firewall(def: &NetworkDef) -> Result<Firewall> {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    let mut rules = general_ipv4(def);
    rules.extend(general_ipv6(def));
    for ip in &def.ips {
        rules.extend(address_rules(def, ip)?);
    }
    for (layer, args) in rules {
        fw.add_cmd(layer, args);
    }
    fw.start_transaction(TransactionFlags::IGNORE_ERRORS | TransactionFlags::AUTO_ROLLBACK);
    for (layer, args) in checksum_rules(def) {
        fw.add_cmd(layer, args);
    }
    Ok(fw)
}

/// The same arguments with `--insert` turned into `--delete`.
fn to_delete((layer, args): Rule) -> Rule {
    let args = args
        .into_iter()
        .map(|a| {
            if a == "--insert" {
                "--delete".into()
            } else {
                a
            }
        })
        .collect();
    (layer, args)
}

/// The general IPv4 rules (§5.2.1) in the order libvirt's legacy removal deletes them
/// (§5.2.7). libvirt writes that list by hand and it is not the creation order reversed: TFTP
/// INP before OUT, and DNS INP udp, INP tcp, OUT udp, OUT tcp. The order matters only to
/// transcripts (deletes of distinct rules commute), but those are compared with libvirt's.
fn legacy_general_ipv4(def: &NetworkDef) -> Vec<Rule> {
    let br = def.bridge.as_str();
    let l = Layer::Ipv4;
    let mut rules: Vec<Rule> = reject_rules(l, br).into_iter().rev().collect();
    if def
        .first_ipv4_dhcp_or_tftp()
        .is_some_and(|ip| ip.tftp_root.is_some())
    {
        rules.push(port_rule(l, INP, br, "udp", "69"));
        rules.push(port_rule(l, OUT, br, "udp", "69"));
    }
    rules.extend([
        port_rule(l, INP, br, "udp", "53"),
        port_rule(l, INP, br, "tcp", "53"),
        port_rule(l, OUT, br, "udp", "53"),
        port_rule(l, OUT, br, "tcp", "53"),
        port_rule(l, OUT, br, "udp", "68"),
        port_rule(l, OUT, br, "tcp", "68"),
        port_rule(l, INP, br, "udp", "67"),
        port_rule(l, INP, br, "tcp", "67"),
    ]);
    rules
}

/// libvirt's removal for a network with no stored plan (started by libvirt ≤ 10.3): every
/// delete libvirt would issue, in its order, all errors ignored (§5.2.7).
pub fn legacy_removal(def: &NetworkDef) -> Firewall {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::IGNORE_ERRORS);
    for r in checksum_rules(def) {
        let (l, a) = to_delete(r);
        fw.add_cmd(l, a);
    }
    fw.start_transaction(TransactionFlags::IGNORE_ERRORS);
    let mut deletes: Vec<Rule> = Vec::new();
    for ip in &def.ips {
        // Masquerade set deleted 7, 6, 5, 4, 3, 2, 1; routing set FWI then FWO: both are the
        // creation order reversed. A bad port range (refused at parse) would skip the address.
        if let Ok(rules) = address_rules(def, ip) {
            deletes.extend(rules.into_iter().rev());
        }
    }
    deletes.extend(legacy_general_ipv4(def));
    deletes.extend(general_ipv6(def).into_iter().rev());
    for r in deletes {
        let (l, a) = to_delete(r);
        fw.add_cmd(l, a);
    }
    fw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_is_scanned_tolerantly() {
        let lines: Vec<String> = [
            "-P INPUT ACCEPT",
            "-N LIBVIRT_INP",
            "-N DOCKER",
            "-A INPUT -j LIBVIRT_INP",
            "-A FORWARD -i docker0 -o docker0 -j ACCEPT",
            "garbage line",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (chains, jumps) = scan_list_rules(&lines);
        assert!(chains.contains("LIBVIRT_INP") && chains.contains("DOCKER"));
        assert!(jumps.contains(&("INPUT".into(), "LIBVIRT_INP".into())));
        assert_eq!(jumps.len(), 2);
    }
}
