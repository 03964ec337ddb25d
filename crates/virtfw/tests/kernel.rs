//! The engine against the real kernel: `nft`, `iptables`, `ip6tables` and `ebtables` run inside
//! a throwaway network namespace per test (never the host's own firewall).
//!
//! These tests need root. They fail, loudly, when run without it: CI runs as root, and a test
//! suite that silently skips its kernel half would report a success it never checked.
//!
//! How rulesets are compared. For nftables, `nft list ruleset` before and after. For the
//! iptables family, `iptables-save`, `ip6tables-save` and `ebtables-save` (without their `#`
//! comment lines, which hold timestamps) plus `nft list ruleset`, because these tools are the
//! nf_tables variants and keep their state in nft tables. Those variants create a table and its
//! built-in base chain the first time a command touches them, and never remove them again; that
//! is the tools' doing, not ours, so each namespace is first "primed" by setting the policy of
//! every built-in chain the test uses to ACCEPT (which creates exactly those tables and chains),
//! and the "before" snapshot is taken after that. Each namespace also holds a bystander rule of
//! someone else's, which must survive untouched.

use virtfw::netns::Netns;
use virtfw::{ApplyOptions, Backend, Firewall, Layer, RollbackFlags, TransactionFlags};

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the kernel tests need root (they create network namespaces and change their firewall); \
         run them as root, as CI does"
    );
}

fn netns(prefix: &str) -> Netns {
    Netns::new(prefix).unwrap_or_else(|e| panic!("cannot create a network namespace: {e}"))
}

fn run(ns: &Netns, argv: &[&str]) -> String {
    ns.run(argv)
        .unwrap_or_else(|e| panic!("{} in {}: {e}", argv.join(" "), ns.name()))
}

fn without_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Everything the iptables family can see in the namespace, plus the nft view of it.
fn xt_snapshot(ns: &Netns) -> String {
    let mut out = String::new();
    for tool in ["iptables-save", "ip6tables-save", "ebtables-save"] {
        out.push_str(&format!("== {tool}\n"));
        out.push_str(&without_comments(&run(ns, &[tool])));
    }
    out.push_str("== nft list ruleset\n");
    out.push_str(&run(ns, &["nft", "list", "ruleset"]));
    out
}

fn nft_snapshot(ns: &Netns) -> String {
    run(ns, &["nft", "list", "ruleset"])
}

/// Create the built-in tables and chains the iptables tests use, and a bystander rule.
fn prime_xt(ns: &Netns) {
    for chain in ["INPUT", "FORWARD", "OUTPUT"] {
        run(ns, &["iptables", "-w", "-P", chain, "ACCEPT"]);
        run(ns, &["ip6tables", "-w", "-P", chain, "ACCEPT"]);
        run(ns, &["ebtables", "--concurrent", "-P", chain, "ACCEPT"]);
    }
    run(
        ns,
        &["iptables", "-w", "-t", "nat", "-P", "POSTROUTING", "ACCEPT"],
    );
    run(
        ns,
        &[
            "iptables",
            "-w",
            "-A",
            "OUTPUT",
            "-d",
            "198.51.100.7",
            "-j",
            "ACCEPT",
        ],
    );
}

/// Someone else's table, which must survive untouched.
fn prime_nft(ns: &Netns) {
    run(ns, &["nft", "add", "table", "inet", "bystander"]);
    run(
        ns,
        &[
            "nft",
            "add",
            "chain",
            "inet",
            "bystander",
            "out",
            "{ type filter hook output priority 10; policy accept; }",
        ],
    );
    run(
        ns,
        &[
            "nft",
            "add",
            "rule",
            "inet",
            "bystander",
            "out",
            "ip",
            "daddr",
            "198.51.100.7",
            "counter",
            "accept",
        ],
    );
}

/// Both ways the engine can apply: libvirt's one process per command, and the default (which
/// may batch groups into one kernel transaction where that cannot change the outcome).
const PATHS: [bool; 2] = [true, false];

fn options(per_command: bool) -> ApplyOptions<'static> {
    ApplyOptions::new().per_command(per_command)
}

fn w(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// A chain spec argument (`{ … }`) must stay one argv element; everything else splits on spaces.
fn nft_args(s: &str) -> Vec<String> {
    match s.find(" {") {
        Some(at) => {
            let mut v = w(&s[..at]);
            v.push(s[at + 1..].to_string());
            v
        }
        None => w(s),
    }
}

// ---------------------------------------------------------------------------------------------
// (a) apply, then apply the removal plan: the ruleset is back to what it was
// ---------------------------------------------------------------------------------------------

/// Store the removal plan as XML and read it back, as a later process would.
fn removal_through_xml(fw: &Firewall) -> Firewall {
    let mut removal = fw.new_from_rollback().expect("removal plan");
    removal.set_name(Some("fwRemoval"));
    let xml = removal.to_xml();
    let back = Firewall::from_xml(&xml, "removal.xml").expect("plan parses");
    assert_eq!(back.to_xml(), xml);
    back
}

#[test]
fn nftables_apply_and_remove_restores_ruleset() {
    require_root();
    for per_command in PATHS {
        nftables_apply_and_remove(per_command);
    }
}

fn nftables_apply_and_remove(per_command: bool) {
    let ns = netns("vfwk-nfta");
    prime_nft(&ns);
    let before = nft_snapshot(&ns);
    let exec = ns.executor().unwrap();

    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    for (layer, cmd) in [
        (Layer::Ipv4, "add table ip vfa"),
        (
            Layer::Ipv4,
            "add chain ip vfa input { type filter hook input priority 0; policy accept; }",
        ),
        (Layer::Ipv4, "add chain ip vfa custom"),
        (
            Layer::Ipv4,
            "add rule ip vfa custom ip saddr 192.0.2.1 counter accept",
        ),
        (Layer::Ipv4, "insert rule ip vfa input jump custom"),
        (Layer::Ipv6, "add table ip6 vfa"),
        (
            Layer::Ipv6,
            "add chain ip6 vfa forward_chain { type filter hook forward priority 0; policy accept; }",
        ),
        (
            Layer::Ipv6,
            "add rule ip6 vfa forward_chain ip6 saddr 2001:db8::1 drop",
        ),
    ] {
        fw.add_cmd(layer, nft_args(cmd));
    }
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    for (layer, cmd) in [
        (Layer::Ipv4, "add rule ip vfa input tcp dport 22 accept"),
        (Layer::Ipv6, "create chain ip6 vfa extra"),
        (Layer::Ipv6, "insert rule ip6 vfa forward_chain jump extra"),
        (Layer::Ipv4, "add table inet vfa_inet"),
        (Layer::Ipv4, "add chain inet vfa_inet c"),
        // A rule in someone else's table: the removal must take exactly this one away.
        (
            Layer::Ipv4,
            "add rule inet bystander out ip daddr 203.0.113.9 drop",
        ),
    ] {
        fw.add_cmd(layer, nft_args(cmd));
    }
    fw.apply_with(&exec, options(per_command)).expect("apply");

    let during = nft_snapshot(&ns);
    for needle in [
        "table ip vfa",
        "table ip6 vfa",
        "table inet vfa_inet",
        "jump custom",
        "jump extra",
        "ip daddr 203.0.113.9 drop",
    ] {
        assert!(during.contains(needle), "{needle} missing from:\n{during}");
    }
    assert_eq!(fw.groups()[0].rollbacks().len(), 8);
    assert_eq!(fw.groups()[1].rollbacks().len(), 6);

    let mut removal = removal_through_xml(&fw);
    assert_eq!(removal.command_count(), 14);
    removal
        .apply_with(&exec, options(per_command))
        .expect("removal");
    assert_eq!(nft_snapshot(&ns), before, "per_command={per_command}");
}

#[test]
fn iptables_apply_and_remove_restores_ruleset() {
    require_root();
    for per_command in PATHS {
        iptables_apply_and_remove(per_command);
    }
}

fn iptables_apply_and_remove(per_command: bool) {
    let ns = netns("vfwk-xta");
    prime_xt(&ns);
    let before = xt_snapshot(&ns);
    let exec = ns.executor().unwrap();

    let mut fw = Firewall::new(Backend::Iptables);
    // Chains are not auto-rolled-back (-N has no inverse in libvirt), so the first group makes
    // them with a hand-written rollback.
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, w("-N VFA4"));
    fw.add_cmd(Layer::Ipv4, w("--table nat --new-chain VFA4NAT"));
    fw.add_cmd(Layer::Ipv6, w("-N VFA6"));
    fw.add_cmd(Layer::Ethernet, w("-N VFAEB"));
    fw.add_rollback_cmd(Layer::Ipv4, w("-X VFA4"));
    fw.add_rollback_cmd(Layer::Ipv4, w("--table nat --delete-chain VFA4NAT"));
    fw.add_rollback_cmd(Layer::Ipv6, w("-X VFA6"));
    fw.add_rollback_cmd(Layer::Ethernet, w("-X VFAEB"));
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    for (layer, cmd) in [
        (
            Layer::Ipv4,
            "--table filter --insert VFA4 --source 192.0.2.1 --jump ACCEPT",
        ),
        (
            Layer::Ipv4,
            "-A VFA4 -s 192.0.2.2 -p tcp --dport 22 -j DROP",
        ),
        (Layer::Ipv4, "-I INPUT 1 -j VFA4"),
        (
            Layer::Ipv4,
            "-t nat --append VFA4NAT -s 10.0.0.0/8 ! -d 10.0.0.0/8 -j MASQUERADE",
        ),
        (Layer::Ipv4, "-t nat -I POSTROUTING -j VFA4NAT"),
        (Layer::Ipv6, "--append VFA6 -s 2001:db8::1 -j ACCEPT"),
        (Layer::Ipv6, "-I INPUT -j VFA6"),
        (
            Layer::Ethernet,
            "--append VFAEB -s 52:54:00:00:00:01 -j ACCEPT",
        ),
        (Layer::Ethernet, "-I FORWARD -j VFAEB"),
        // Next to someone else's rule in a built-in chain.
        (Layer::Ipv4, "-A OUTPUT -d 203.0.113.9 -j DROP"),
    ] {
        fw.add_cmd(layer, w(cmd));
    }
    fw.apply_with(&exec, options(per_command)).expect("apply");

    let during = xt_snapshot(&ns);
    for needle in [
        "-A VFA4 -s 192.0.2.1/32 -j ACCEPT",
        "-A INPUT -j VFA4",
        "-A VFA4NAT -s 10.0.0.0/8 ! -d 10.0.0.0/8 -j MASQUERADE",
        "-A VFA6 -s 2001:db8::1/128 -j ACCEPT",
        "-A VFAEB -s 52:54:00:00:00:01 -j ACCEPT",
        "-A FORWARD -j VFAEB",
        "-A OUTPUT -d 203.0.113.9/32 -j DROP",
    ] {
        assert!(during.contains(needle), "{needle} missing from:\n{during}");
    }

    let mut removal = removal_through_xml(&fw);
    assert_eq!(removal.groups().len(), 2);
    assert_eq!(removal.command_count(), 14);
    removal
        .apply_with(&exec, options(per_command))
        .expect("removal");
    assert_eq!(xt_snapshot(&ns), before, "per_command={per_command}");
}

// ---------------------------------------------------------------------------------------------
// (b) a failure injected at every position
// ---------------------------------------------------------------------------------------------

type Cmds = Vec<(Layer, &'static str)>;

/// A transaction as data, so it can be rebuilt with one command replaced or groups left out.
struct Plan {
    backend: Backend,
    /// Per group: flags, actions, hand-written rollback.
    groups: Vec<(TransactionFlags, Cmds, Cmds)>,
    /// A command of this layer that the kernel refuses whatever state it is in.
    refused: fn(Layer) -> &'static str,
    split: fn(&str) -> Vec<String>,
}

impl Plan {
    fn len(&self) -> usize {
        self.groups.iter().map(|g| g.1.len()).sum()
    }

    fn group_of(&self, position: usize) -> usize {
        let mut left = position;
        for (g, group) in self.groups.iter().enumerate() {
            if left < group.1.len() {
                return g;
            }
            left -= group.1.len();
        }
        panic!("position {position} out of range")
    }

    /// The firewall of the first `groups` groups, with command `fail_at` (counted over all
    /// groups) replaced by a refused one, and every group from 1 on flagged `INHERIT_PREVIOUS`
    /// when `inherit`.
    fn build(&self, groups: usize, fail_at: Option<usize>, inherit: bool) -> Firewall {
        let mut fw = Firewall::new(self.backend);
        let mut position = 0;
        for (g, (flags, actions, rollbacks)) in self.groups.iter().take(groups).enumerate() {
            fw.start_transaction(*flags);
            for (layer, cmd) in actions {
                let text = if fail_at == Some(position) {
                    (self.refused)(*layer)
                } else {
                    cmd
                };
                fw.add_cmd(*layer, (self.split)(text));
                position += 1;
            }
            let flags = if inherit && g > 0 {
                RollbackFlags::INHERIT_PREVIOUS
            } else {
                RollbackFlags::empty()
            };
            fw.start_rollback(flags);
            for (layer, cmd) in rollbacks {
                fw.add_cmd(*layer, (self.split)(cmd));
            }
        }
        fw
    }
}

/// Inject a failure at every position, with and without `INHERIT_PREVIOUS`, each run in a fresh
/// namespace, and compare the ruleset after the failed apply with the one it must equal.
fn inject_everywhere(prefix: &str, plan: &Plan, prime: fn(&Netns), snapshot: fn(&Netns) -> String) {
    require_root();
    assert!(plan.len() >= 12 && plan.groups.len() >= 4);

    // What the namespace looks like after only the first `g` groups applied cleanly.
    let expected: Vec<String> = (0..plan.groups.len())
        .map(|g| {
            let ns = netns(prefix);
            prime(&ns);
            let mut fw = plan.build(g, None, false);
            fw.apply_with(&ns.executor().unwrap(), options(true))
                .unwrap_or_else(|e| panic!("clean apply of {g} groups: {e}"));
            snapshot(&ns)
        })
        .collect();
    // Sanity: the groups change something, so the comparisons below can tell them apart.
    for g in 1..expected.len() {
        assert_ne!(
            expected[g - 1],
            expected[g],
            "group {} changes nothing",
            g - 1
        );
    }

    for (per_command, inherit) in PATHS.into_iter().flat_map(|p| [(p, false), (p, true)]) {
        for k in 0..plan.len() {
            let failing_group = plan.group_of(k);
            let ns = netns(prefix);
            prime(&ns);
            let before = snapshot(&ns);
            assert_eq!(before, expected[0]);
            let mut fw = plan.build(plan.groups.len(), Some(k), inherit);
            let err = fw
                .apply_with(&ns.executor().unwrap(), options(per_command))
                .expect_err("the injected command must fail");
            assert!(
                err.to_string().contains("VFNOSUCH") || err.to_string().contains("vfnosuch"),
                "the error names the refused command: {err}"
            );
            let after = snapshot(&ns);
            let want = if inherit {
                &before
            } else {
                &expected[failing_group]
            };
            assert_eq!(
                &after, want,
                "failure injected at command {k} (group {failing_group}), inherit={inherit}, \
                 per_command={per_command}"
            );
        }
    }
}

#[test]
fn nftables_failure_at_every_position_rolls_back_exactly() {
    let auto = TransactionFlags::AUTO_ROLLBACK;
    let plan = Plan {
        backend: Backend::Nftables,
        groups: vec![
            (
                auto,
                vec![
                    (Layer::Ipv4, "add table ip vfb"),
                    (
                        Layer::Ipv4,
                        "add chain ip vfb c0 { type filter hook input priority 0; policy accept; }",
                    ),
                    (Layer::Ipv4, "add rule ip vfb c0 ip saddr 10.0.0.1 accept"),
                ],
                vec![],
            ),
            (
                auto,
                vec![
                    (Layer::Ipv4, "add chain ip vfb c1"),
                    (Layer::Ipv4, "add rule ip vfb c1 counter"),
                    (Layer::Ipv4, "insert rule ip vfb c0 jump c1"),
                ],
                vec![],
            ),
            (
                auto,
                vec![
                    (Layer::Ipv6, "add table ip6 vfb"),
                    (Layer::Ipv6, "add chain ip6 vfb c2"),
                    (
                        Layer::Ipv6,
                        "add rule ip6 vfb c2 ip6 saddr 2001:db8::2 drop",
                    ),
                ],
                vec![],
            ),
            (
                auto,
                vec![
                    (Layer::Ipv4, "add chain ip vfb c3"),
                    (Layer::Ipv4, "add rule ip vfb c3 tcp dport 80 accept"),
                    (Layer::Ipv4, "add rule ip vfb c0 jump c3"),
                ],
                vec![],
            ),
        ],
        refused: |layer| match layer {
            Layer::Ipv6 => "add rule ip6 vfb c2 jump vfnosuch",
            _ => "add rule ip vfb c0 jump vfnosuch",
        },
        split: nft_args,
    };
    inject_everywhere("vfwk-nfti", &plan, prime_nft, nft_snapshot);
}

#[test]
fn iptables_failure_at_every_position_rolls_back_exactly() {
    let auto = TransactionFlags::AUTO_ROLLBACK;
    let plan = Plan {
        backend: Backend::Iptables,
        groups: vec![
            (
                // The chains, with a hand-written rollback that also works when it runs first
                // (rollbacks run forward, so with INHERIT_PREVIOUS this one runs before the
                // later groups' deletes): unhook, flush, delete.
                TransactionFlags::empty(),
                vec![
                    (Layer::Ipv4, "-N VFB4"),
                    (Layer::Ipv4, "-I INPUT -j VFB4"),
                    (Layer::Ipv6, "-N VFB6"),
                    (Layer::Ethernet, "--new-chain VFBEB"),
                ],
                vec![
                    (Layer::Ipv4, "-D INPUT -j VFB4"),
                    (Layer::Ipv4, "-F VFB4"),
                    (Layer::Ipv4, "-X VFB4"),
                    (Layer::Ipv6, "-F VFB6"),
                    (Layer::Ipv6, "-X VFB6"),
                    (Layer::Ethernet, "-F VFBEB"),
                    (Layer::Ethernet, "-X VFBEB"),
                ],
            ),
            (
                auto,
                vec![
                    (Layer::Ipv4, "-A VFB4 -s 192.0.2.1 -j ACCEPT"),
                    (Layer::Ipv4, "--insert VFB4 -s 192.0.2.2 -j DROP"),
                    (Layer::Ipv6, "--append VFB6 -s 2001:db8::1 -j ACCEPT"),
                ],
                vec![],
            ),
            (
                auto,
                vec![
                    (Layer::Ethernet, "-A VFBEB -s 52:54:00:00:00:01 -j ACCEPT"),
                    (Layer::Ethernet, "--insert VFBEB -p IPv4 -j ACCEPT"),
                    (Layer::Ipv6, "-I VFB6 -s 2001:db8::2 -j DROP"),
                ],
                vec![],
            ),
            (
                auto,
                vec![
                    (Layer::Ipv4, "-A VFB4 -p tcp --dport 22 -j ACCEPT"),
                    (Layer::Ipv6, "-A VFB6 -p udp --dport 53 -j ACCEPT"),
                    (Layer::Ethernet, "-A VFBEB -j DROP"),
                ],
                vec![],
            ),
        ],
        refused: |layer| match layer {
            Layer::Ipv6 => "-A VFB6 -j VFNOSUCH",
            Layer::Ethernet => "-A VFBEB -j VFNOSUCH",
            _ => "-A VFB4 -j VFNOSUCH",
        },
        split: w,
    };
    inject_everywhere("vfwk-xti", &plan, prime_xt, xt_snapshot);
}
