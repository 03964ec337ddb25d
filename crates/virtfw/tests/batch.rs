//! The batch fast path against the real kernel, each test in its own throwaway namespace: the
//! batch and the per-command path must leave identical rulesets and report identical errors.

use std::sync::atomic::{AtomicUsize, Ordering};

use virtfw::batch::IgnoredCounter;
use virtfw::executor::{Invocation, Output};
use virtfw::netns::Netns;
use virtfw::{ApplyOptions, Backend, ExecError, Executor, Firewall, Layer, TransactionFlags};

/// An executor that counts the `iptables-restore` processes it runs, so a test can tell the
/// batch path from a silent fall back to one process per command.
struct CountingRestores<E> {
    inner: E,
    restores: AtomicUsize,
}

impl<E: Executor> CountingRestores<E> {
    fn new(inner: E) -> Self {
        CountingRestores {
            inner,
            restores: AtomicUsize::new(0),
        }
    }
    /// The count so far, reset to zero.
    fn take(&self) -> usize {
        self.restores.swap(0, Ordering::SeqCst)
    }
}

impl<E: Executor> Executor for CountingRestores<E> {
    fn run(&self, inv: Invocation<'_>) -> Result<Output, ExecError> {
        if inv.argv.first().is_some_and(|p| p == "iptables-restore") {
            self.restores.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.run(inv)
    }
    fn check_program(&self, program: &str) -> Result<(), ExecError> {
        self.inner.check_program(program)
    }
    fn supports_batch(&self) -> bool {
        self.inner.supports_batch()
    }
}

fn opts(per_command: bool) -> ApplyOptions<'static> {
    ApplyOptions::new().per_command(per_command)
}

fn nft_firewall(rules: usize, bad_at: Option<usize>) -> Firewall {
    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, ["add", "table", "ip", "vt"]);
    fw.add_cmd(
        Layer::Ipv4,
        [
            "add",
            "chain",
            "ip",
            "vt",
            "gfwd",
            "{ type filter hook forward priority 0; policy accept; }",
        ],
    );
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    for i in 0..rules {
        let addr = format!("10.9.{}.{}/32", i >> 8, i & 255);
        let port = (1024 + i).to_string();
        let verb = if i % 3 == 0 { "insert" } else { "add" };
        if Some(i) == bad_at {
            fw.add_cmd(
                Layer::Ipv4,
                [verb, "rule", "ip", "vt", "gfwd", "jump", "nosuch"],
            );
        }
        fw.add_cmd(
            Layer::Ipv4,
            [
                verb,
                "rule",
                "ip",
                "vt",
                "gfwd",
                "ip",
                "saddr",
                &addr,
                "tcp",
                "dport",
                &port,
                "counter",
                "accept",
                "comment",
                "\"rule x\"",
            ],
        );
    }
    fw
}

fn ruleset(ns: &Netns) -> String {
    ns.run(&["nft", "-a", "list", "ruleset"]).unwrap()
}

#[test]
fn nft_batch_apply_and_removal_match_the_per_command_path() {
    let (batch_ns, plain_ns) = (Netns::new("vfb").unwrap(), Netns::new("vfb").unwrap());
    let mut batch = nft_firewall(40, None);
    batch
        .apply_with(&batch_ns.executor().unwrap(), opts(false))
        .unwrap();
    let mut plain = nft_firewall(40, None);
    plain
        .apply_with(&plain_ns.executor().unwrap(), opts(true))
        .unwrap();
    let listing = ruleset(&batch_ns);
    assert!(listing.contains("comment \"rule x\""), "{listing}");
    assert_eq!(listing, ruleset(&plain_ns));
    // Same handles in the same order on the rollback lists.
    let (rb, rp) = (
        batch.new_from_rollback().unwrap(),
        plain.new_from_rollback().unwrap(),
    );
    assert_eq!(rb.to_xml(), rp.to_xml());
    assert_eq!(rb.command_count(), 42);

    let mut removal = rb;
    let counter = IgnoredCounter::default();
    removal
        .apply_with(
            &batch_ns.executor().unwrap(),
            ApplyOptions::new().per_command(false).observer(&counter),
        )
        .unwrap();
    assert_eq!((counter.missing(), counter.failed()), (0, 0));
    assert_eq!(ruleset(&batch_ns), "");
}

#[test]
fn failing_nft_batch_falls_back_and_rolls_back_exactly() {
    let (batch_ns, plain_ns) = (Netns::new("vfb").unwrap(), Netns::new("vfb").unwrap());
    let mut batch = nft_firewall(10, Some(6));
    let err = batch
        .apply_with(&batch_ns.executor().unwrap(), opts(false))
        .unwrap_err()
        .to_string();
    let mut plain = nft_firewall(10, Some(6));
    let err2 = plain
        .apply_with(&plain_ns.executor().unwrap(), opts(true))
        .unwrap_err()
        .to_string();
    assert!(err.contains("jump nosuch"), "{err}");
    assert_eq!(err, err2);
    // Group 1 failed and was rolled back; group 0 (table, chain) stays, as in libvirt.
    let listing = ruleset(&batch_ns);
    assert!(listing.contains("chain gfwd"), "{listing}");
    assert!(!listing.contains("saddr"), "{listing}");
    // Handles are compared without their numbers: the aborted batch used up a table handle
    // of the namespace-wide counter (the kernel allocates it even for an aborted transaction).
    let plain = |ns: &Netns| ns.run(&["nft", "list", "ruleset"]).unwrap();
    assert_eq!(plain(&batch_ns), plain(&plain_ns));
}

#[test]
fn stale_handles_in_a_removal_are_dropped_and_counted() {
    let ns = Netns::new("vfb").unwrap();
    let exec = ns.executor().unwrap();
    let mut fw = nft_firewall(20, None);
    fw.apply_with(&exec, opts(false)).unwrap();
    let mut removal = fw.new_from_rollback().unwrap();
    // Someone else deleted two of our rules meanwhile.
    let handles: Vec<String> = ruleset(&ns)
        .lines()
        .filter(|l| l.contains("saddr"))
        .filter_map(|l| l.rsplit("# handle ").next().map(str::to_string))
        .take(2)
        .collect();
    for h in &handles {
        ns.run(&["nft", "delete", "rule", "ip", "vt", "gfwd", "handle", h])
            .unwrap();
    }
    let counter = IgnoredCounter::default();
    removal
        .apply_with(
            &exec,
            ApplyOptions::new().per_command(false).observer(&counter),
        )
        .unwrap();
    assert_eq!((counter.missing(), counter.failed()), (2, 0));
    assert_eq!(ruleset(&ns), "");
}

fn ipt_firewall(bad_nat: bool) -> Firewall {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, ["--table", "filter", "--new-chain", "VF_IN"]);
    fw.add_cmd(Layer::Ipv4, ["--table", "nat", "--new-chain", "VF_NAT"]);
    fw.add_cmd(Layer::Ipv6, ["--table", "filter", "--new-chain", "VF_IN"]);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    for i in 0..12 {
        let src = format!("192.168.{i}.0/24");
        fw.add_cmd(
            Layer::Ipv4,
            [
                "--table", "filter", "--insert", "VF_IN", "--source", &src, "--jump", "ACCEPT",
            ],
        );
        fw.add_cmd(
            Layer::Ipv4,
            [
                "--table",
                "nat",
                "--append",
                "VF_NAT",
                "--source",
                &src,
                "--jump",
                "MASQUERADE",
            ],
        );
        let src6 = format!("2001:db8:{i}::/48");
        fw.add_cmd(
            Layer::Ipv6,
            [
                "--table",
                "filter",
                "-A",
                "VF_IN",
                "--source",
                &src6,
                "-m",
                "comment",
                "--comment",
                "a b",
                "-j",
                "DROP",
            ],
        );
    }
    if bad_nat {
        fw.add_cmd(
            Layer::Ipv4,
            [
                "--table",
                "nat",
                "--append",
                "VF_NAT",
                "--jump",
                "NOSUCHCHAIN",
            ],
        );
    }
    fw
}

fn ipt_state(ns: &Netns) -> String {
    let mut s = ns.run(&["iptables", "-w", "-S"]).unwrap();
    s.push_str(&ns.run(&["iptables", "-w", "-t", "nat", "-S"]).unwrap());
    s.push_str(&ns.run(&["ip6tables", "-w", "-S"]).unwrap());
    s
}

#[test]
fn iptables_batch_apply_removal_and_failure_match_the_per_command_path() {
    let (batch_ns, plain_ns) = (Netns::new("vfb").unwrap(), Netns::new("vfb").unwrap());
    let mut batch = ipt_firewall(false);
    batch
        .apply_with(&batch_ns.executor().unwrap(), opts(false))
        .unwrap();
    let mut plain = ipt_firewall(false);
    plain
        .apply_with(&plain_ns.executor().unwrap(), opts(true))
        .unwrap();
    let state = ipt_state(&batch_ns);
    assert!(
        state.contains("-A VF_NAT -s 192.168.11.0/24 -j MASQUERADE"),
        "{state}"
    );
    assert!(state.contains("--comment \"a b\""), "{state}");
    assert_eq!(state, ipt_state(&plain_ns));
    let mut removal = batch.new_from_rollback().unwrap();
    assert_eq!(
        removal.to_xml(),
        plain.new_from_rollback().unwrap().to_xml()
    );
    // A rule removed behind our back: the removal still completes and counts it.
    batch_ns
        .run(&[
            "iptables",
            "-w",
            "-t",
            "nat",
            "-D",
            "VF_NAT",
            "-s",
            "192.168.3.0/24",
            "-j",
            "MASQUERADE",
        ])
        .unwrap();
    let counter = IgnoredCounter::default();
    removal
        .apply_with(
            &batch_ns.executor().unwrap(),
            ApplyOptions::new().per_command(false).observer(&counter),
        )
        .unwrap();
    assert_eq!((counter.missing(), counter.failed()), (1, 0));
    let empty = ipt_state(&batch_ns);
    assert!(!empty.contains("-A VF_"), "{empty}");

    // A failing nat rule: the filter and ip6 sections that committed are taken back, then the
    // per-command path reports the failing command and rolls back, as libvirt would.
    let (batch_ns, plain_ns) = (Netns::new("vfb").unwrap(), Netns::new("vfb").unwrap());
    let mut batch = ipt_firewall(true);
    let err = batch
        .apply_with(&batch_ns.executor().unwrap(), opts(false))
        .unwrap_err()
        .to_string();
    let mut plain = ipt_firewall(true);
    let err2 = plain
        .apply_with(&plain_ns.executor().unwrap(), opts(true))
        .unwrap_err()
        .to_string();
    assert!(err.contains("NOSUCHCHAIN"), "{err}");
    assert_eq!(err, err2);
    let state = ipt_state(&batch_ns);
    assert!(
        state.contains("-N VF_IN") && !state.contains("-A VF_"),
        "{state}"
    );
    assert_eq!(state, ipt_state(&plain_ns));
}

/// Rules appended and inserted, mixed, into a chain that also holds rules of another
/// transaction: the batch removal (which deletes appended rules front first) leaves exactly
/// what the per-command removal (libvirt's newest-first order) leaves.
#[test]
fn removal_of_mixed_appended_and_inserted_rules_matches_the_per_command_path() {
    fn nft_rules(fw: &mut Firewall, tag: &str, n: usize) {
        fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
        for i in 0..n {
            let verb = if i % 4 == 1 { "insert" } else { "add" };
            let port = (2000 + i).to_string();
            let comment = format!("\"{tag} {i}\"");
            fw.add_cmd(
                Layer::Ipv4,
                [
                    verb, "rule", "ip", "vt", "c", "tcp", "dport", &port, "accept", "comment",
                    &comment,
                ],
            );
        }
    }
    fn ipt_rules(fw: &mut Firewall, n: usize) {
        fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
        for i in 0..n {
            let verb = if i % 4 == 1 { "--insert" } else { "-A" };
            // Every fifth rule repeats one spec, so deletes by specification hit duplicates.
            let src = format!("10.7.0.{}", if i % 5 == 0 { 250 } else { i });
            fw.add_cmd(Layer::Ipv4, [verb, "VF", "-s", &src, "-j", "ACCEPT"]);
        }
    }
    let run = |per_command: bool| -> (String, String) {
        let ns = Netns::new("vfb").unwrap();
        let exec = ns.executor().unwrap();
        // The other transaction's rules stay.
        let mut base = Firewall::new(Backend::Nftables);
        base.start_transaction(TransactionFlags::empty());
        base.add_cmd(Layer::Ipv4, ["add", "table", "ip", "vt"]);
        base.add_cmd(Layer::Ipv4, ["add", "chain", "ip", "vt", "c"]);
        nft_rules(&mut base, "base", 6);
        base.apply_with(&exec, opts(true)).unwrap();
        let mut ours = Firewall::new(Backend::Nftables);
        nft_rules(&mut ours, "ours", 30);
        nft_rules(&mut ours, "more", 9);
        ours.apply_with(&exec, opts(per_command)).unwrap();
        // And rules added after ours, at both ends of the chain.
        let mut late = Firewall::new(Backend::Nftables);
        nft_rules(&mut late, "late", 3);
        late.apply_with(&exec, opts(true)).unwrap();

        let mut ibase = Firewall::new(Backend::Iptables);
        ibase.start_transaction(TransactionFlags::empty());
        ibase.add_cmd(Layer::Ipv4, ["--new-chain", "VF"]);
        ipt_rules(&mut ibase, 7);
        ibase.apply_with(&exec, opts(true)).unwrap();
        let mut iours = Firewall::new(Backend::Iptables);
        ipt_rules(&mut iours, 30);
        iours.apply_with(&exec, opts(per_command)).unwrap();

        let removal = ours.new_from_rollback().unwrap();
        let iremoval = iours.new_from_rollback().unwrap();
        let xml = removal.to_xml();
        assert!(xml.contains("appended='yes'"), "{xml}");
        // Through the plan file, as a later `remove` would read it.
        let counter = IgnoredCounter::default();
        for plan in [xml, iremoval.to_xml()] {
            Firewall::from_xml(&plan, "plan.xml")
                .unwrap()
                .apply_with(
                    &exec,
                    ApplyOptions::new()
                        .per_command(per_command)
                        .observer(&counter),
                )
                .unwrap();
        }
        assert_eq!((counter.missing(), counter.failed()), (0, 0));
        (
            ns.run(&["nft", "list", "table", "ip", "vt"]).unwrap(),
            ns.run(&["iptables", "-w", "-S", "VF"]).unwrap(),
        )
    };
    let (nft_batch, ipt_batch) = run(false);
    let (nft_plain, ipt_plain) = run(true);
    assert!(
        nft_batch.contains("\"base 5\"") && nft_batch.contains("\"late 2\""),
        "{nft_batch}"
    );
    assert!(!nft_batch.contains("ours") && !nft_batch.contains("more"));
    assert_eq!(nft_batch.matches("comment").count(), 9, "{nft_batch}");
    assert_eq!(nft_batch, nft_plain);
    assert_eq!(ipt_batch.lines().count(), 8, "{ipt_batch}");
    assert_eq!(ipt_batch, ipt_plain);
}

/// Three tables of one program, so one `iptables-restore` of three sections: a failure in the
/// last section leaves the two committed before it to be undone (the state ends as on the
/// per-command path, with libvirt's error); stale deletes in the middle and last sections are
/// each counted once, and everything else is removed.
#[test]
fn later_sections_of_one_restore_fail_and_go_stale_exactly() {
    fn three_tables(bad_mangle: bool) -> Firewall {
        let mut fw = Firewall::new(Backend::Iptables);
        fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
        for i in 0..4 {
            let src = format!("10.7.{i}.0/24");
            for (table, chain, target) in [
                ("filter", "FORWARD", "ACCEPT"),
                ("nat", "POSTROUTING", "MASQUERADE"),
                ("mangle", "POSTROUTING", "ACCEPT"),
            ] {
                fw.add_cmd(
                    Layer::Ipv4,
                    [
                        "--table", table, "--append", chain, "--source", &src, "--jump", target,
                    ],
                );
            }
        }
        if bad_mangle {
            fw.add_cmd(
                Layer::Ipv4,
                [
                    "--table", "mangle", "--append", "NOSUCH", "--jump", "ACCEPT",
                ],
            );
        }
        fw
    }
    let state = |ns: &Netns| {
        let mut s = String::new();
        for t in ["filter", "nat", "mangle"] {
            s.push_str(&ns.run(&["iptables", "-w", "-t", t, "-S"]).unwrap());
        }
        s
    };

    let (batch_ns, plain_ns) = (Netns::new("vfb").unwrap(), Netns::new("vfb").unwrap());
    let before = state(&batch_ns);
    let exec = CountingRestores::new(batch_ns.executor().unwrap());
    let err = three_tables(true)
        .apply_with(&exec, opts(false))
        .unwrap_err()
        .to_string();
    // One process for the three sections (filter and nat commit, mangle fails), one to delete
    // what filter and nat added; then libvirt's commands one by one.
    assert_eq!(exec.take(), 2);
    let err2 = three_tables(true)
        .apply_with(&plain_ns.executor().unwrap(), opts(true))
        .unwrap_err()
        .to_string();
    assert!(err.contains("NOSUCH"), "{err}");
    assert_eq!(err, err2);
    assert_eq!(state(&batch_ns), before);
    assert_eq!(state(&batch_ns), state(&plain_ns));

    // Stale rules in the nat section (second of the removal's input: the plan is newest
    // first, so mangle comes first) and in the filter section (last).
    let ns = Netns::new("vfb").unwrap();
    let exec = CountingRestores::new(ns.executor().unwrap());
    let mut fw = three_tables(false);
    fw.apply_with(&exec, opts(false)).unwrap();
    assert_eq!(exec.take(), 1, "all three tables in one process");
    let mut removal = fw.new_from_rollback().unwrap();
    for (table, chain, src, target) in [
        ("nat", "POSTROUTING", "10.7.1.0/24", "MASQUERADE"),
        ("nat", "POSTROUTING", "10.7.2.0/24", "MASQUERADE"),
        ("filter", "FORWARD", "10.7.3.0/24", "ACCEPT"),
    ] {
        ns.run(&[
            "iptables", "-w", "-t", table, "-D", chain, "-s", src, "-j", target,
        ])
        .unwrap();
    }
    let counter = IgnoredCounter::default();
    removal
        .apply_with(
            &exec,
            ApplyOptions::new().per_command(false).observer(&counter),
        )
        .unwrap();
    assert_eq!((counter.missing(), counter.failed()), (3, 0));
    assert_eq!(state(&ns), before);
    // Each stale rule costs one retry without it: mangle commits in the first process, nat
    // in the third, filter in the fourth — never one process per rule.
    assert_eq!(exec.take(), 4);
}
