//! `virtfw::check::kernel_check` against the real tools, in throwaway network namespaces: a
//! valid firewall checks clean and changes nothing, a bad command is reported at its group and
//! index, for both backends. Needs root (fails loudly without it, like tests/kernel.rs).

use virtfw::check::{kernel_check, Verdict};
use virtfw::netns::Netns;
use virtfw::{Backend, Firewall, Layer, TransactionFlags};

fn netns(prefix: &str) -> Netns {
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the check tests need root");
    Netns::new(prefix).unwrap_or_else(|e| panic!("cannot create a network namespace: {e}"))
}

fn run(ns: &Netns, argv: &[&str]) -> String {
    ns.run(argv)
        .unwrap_or_else(|e| panic!("{} in {}: {e}", argv.join(" "), ns.name()))
}

fn snapshot(ns: &Netns) -> String {
    let mut out = run(ns, &["nft", "-s", "list", "ruleset"]);
    for tool in ["iptables-save", "ip6tables-save"] {
        out.push_str(&format!("== {tool}\n"));
        for l in run(ns, &[tool]).lines().filter(|l| !l.starts_with('#')) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// An nft firewall whose second group needs the first group's table and chain.
fn nft_firewall(bad: Option<&str>) -> Firewall {
    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, ["add", "table", "ip", "chk"]);
    fw.add_cmd(
        Layer::Ipv4,
        [
            "add",
            "chain",
            "ip",
            "chk",
            "input",
            "{ type filter hook input priority 0; policy accept; }",
        ],
    );
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(
        Layer::Ipv4,
        [
            "add", "rule", "ip", "chk", "input", "tcp", "dport", "22", "accept",
        ],
    );
    if let Some(bad) = bad {
        fw.add_cmd(Layer::Ipv4, bad.split(' '));
    }
    fw.add_cmd(
        Layer::Ipv4,
        ["add", "rule", "ip", "chk", "input", "counter"],
    );
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, ["add", "rule", "ip", "chk", "input", "drop"]);
    fw
}

#[test]
fn nft_valid_firewall_checks_clean_and_changes_nothing() {
    let ns = netns("vfchk");
    run(&ns, &["nft", "add", "table", "inet", "bystander"]);
    let before = snapshot(&ns);
    let report = kernel_check(&nft_firewall(None), &ns.executor().unwrap()).unwrap();
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(report.groups.len(), 3);
    assert!(report
        .groups
        .iter()
        .flat_map(|g| &g.commands)
        .all(|c| c.verdict == Verdict::Accepted));
    assert_eq!(snapshot(&ns), before, "the check changed the ruleset");
}

#[test]
fn nft_bad_command_is_named_at_its_group_and_index() {
    let ns = netns("vfchk");
    let before = snapshot(&ns);
    // A jump to a chain nobody made: the kernel refuses it.
    let fw = nft_firewall(Some("add rule ip chk input jump nochain"));
    let report = kernel_check(&fw, &ns.executor().unwrap()).unwrap();
    assert!(!report.is_clean());
    let refused: Vec<(usize, usize)> = report.refused().map(|(g, c)| (g, c.index)).collect();
    assert_eq!(refused, [(1, 1)], "{report:#?}");
    let (_, c) = report.refused().next().unwrap();
    assert!(c.command.contains("jump nochain"), "{}", c.command);
    match &c.verdict {
        Verdict::Refused { message } => {
            assert!(message.contains("No such file or directory"), "{message}")
        }
        v => panic!("{v:?}"),
    }
    // The other commands of the group were checked without it and are fine; the group after
    // it is never reached by an apply.
    let g1 = &report.groups[1];
    assert_eq!(g1.commands[0].verdict, Verdict::Accepted);
    assert_eq!(g1.commands[2].verdict, Verdict::Accepted);
    assert_eq!(report.groups[2].commands[0].verdict, Verdict::NotReached);
    assert_eq!(report.first_refused().unwrap().group, 1);
    assert_eq!(snapshot(&ns), before, "the check changed the ruleset");
}

#[test]
fn nft_create_of_an_existing_table_is_refused_and_ignored_failures_are_not() {
    let ns = netns("vfchk");
    run(&ns, &["nft", "add", "table", "ip", "taken"]);
    let before = snapshot(&ns);
    let mut fw = Firewall::new(Backend::Nftables);
    // A removal plan of something already gone: its failure is ignored, the apply goes on.
    fw.start_transaction(TransactionFlags::IGNORE_ERRORS);
    fw.add_cmd(Layer::Ipv4, ["delete", "table", "ip", "handle", "999999"]);
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, ["create", "table", "ip", "taken"]);
    let report = kernel_check(&fw, &ns.executor().unwrap()).unwrap();
    assert!(
        matches!(
            report.groups[0].commands[0].verdict,
            Verdict::IgnoredFailure { .. }
        ),
        "{report:#?}"
    );
    assert!(!report.groups[0].is_refused());
    match &report.groups[1].commands[0].verdict {
        Verdict::Refused { message } => assert!(message.contains("File exists"), "{message}"),
        v => panic!("{v:?}"),
    }
    assert_eq!(snapshot(&ns), before);
}

fn ipt_firewall(bad: Option<&[&str]>) -> Firewall {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, ["--table", "filter", "--new-chain", "CHK"]);
    fw.add_cmd(
        Layer::Ipv4,
        ["--table", "filter", "--insert", "INPUT", "--jump", "CHK"],
    );
    fw.add_cmd(
        Layer::Ipv6,
        [
            "--table", "filter", "--append", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT",
        ],
    );
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(
        Layer::Ipv4,
        [
            "--table",
            "nat",
            "--append",
            "POSTROUTING",
            "-s",
            "10.0.0.0/24",
            "-j",
            "MASQUERADE",
        ],
    );
    if let Some(bad) = bad {
        fw.add_cmd(Layer::Ipv4, bad.iter().copied());
    }
    fw.add_cmd(
        Layer::Ethernet,
        ["-t", "filter", "-A", "INPUT", "-j", "ACCEPT"],
    );
    fw
}

#[test]
fn iptables_valid_firewall_checks_clean_and_changes_nothing() {
    let ns = netns("vfchk");
    run(
        &ns,
        &[
            "iptables",
            "-w",
            "-A",
            "INPUT",
            "-s",
            "192.0.2.1",
            "-j",
            "DROP",
        ],
    );
    let before = snapshot(&ns);
    let report = kernel_check(&ipt_firewall(None), &ns.executor().unwrap()).unwrap();
    assert!(report.is_clean(), "{report:#?}");
    // ebtables-restore has no --test: said so, not run.
    assert!(matches!(
        report.groups[1].commands[1].verdict,
        Verdict::NotCheckable { .. }
    ));
    assert_eq!(report.groups[0].commands[2].verdict, Verdict::Accepted);
    assert_eq!(snapshot(&ns), before, "the check changed the ruleset");
}

#[test]
fn iptables_bad_lines_are_all_named() {
    let ns = netns("vfchk");
    let before = snapshot(&ns);
    let mut fw = ipt_firewall(Some(&[
        "--table",
        "filter",
        "--append",
        "INPUT",
        "-m",
        "nosuchmatch",
        "-j",
        "ACCEPT",
    ]));
    fw.add_cmd(
        Layer::Ipv4,
        ["--table", "filter", "--append", "INPUT", "--no-such-option"],
    );
    let report = kernel_check(&fw, &ns.executor().unwrap()).unwrap();
    let refused: Vec<(usize, usize)> = report.refused().map(|(g, c)| (g, c.index)).collect();
    assert_eq!(refused, [(1, 1), (1, 3)], "{report:#?}");
    let (_, c) = report.refused().next().unwrap();
    match &c.verdict {
        Verdict::Refused { message } => assert!(message.contains("nosuchmatch"), "{message}"),
        v => panic!("{v:?}"),
    }
    assert_eq!(report.groups[1].commands[0].verdict, Verdict::Accepted);
    assert_eq!(snapshot(&ns), before);
}

/// What the check documents about the tools, pinned down: iptables-nft's `--test` does not
/// reach the kernel (a rule for a missing chain passes), and ebtables-restore has no `--test`.
#[test]
fn the_tools_dry_runs_are_what_the_check_says() {
    let ns = netns("vfchk");
    let exec = ns.executor().unwrap();
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(
        Layer::Ipv4,
        ["--table", "filter", "--append", "NOCHAIN", "-j", "ACCEPT"],
    );
    assert!(kernel_check(&fw, &exec).unwrap().is_clean());
    let argv: Vec<String> = ["ebtables-restore", "--test"].map(String::from).to_vec();
    let out = virtfw::Executor::run(&exec, invocation(&argv, Some(b"*filter\nCOMMIT\n"))).unwrap();
    assert_ne!(out.status, 0);
    assert!(out.stderr.contains("unrecognized option"), "{}", out.stderr);
}

/// The only place this file builds an invocation.
fn invocation<'a>(argv: &'a [String], stdin: Option<&'a [u8]>) -> virtfw::executor::Invocation<'a> {
    virtfw::executor::Invocation { argv, stdin }
}

/// Library users can test their checks without root: the fake's model answers `nft -c -f -`
/// like the kernel and keeps nothing.
#[test]
fn the_check_runs_on_the_fake_model_too() {
    let fake = virtfw::FakeExecutor::new().strict();
    let fw = nft_firewall(Some("add rule ip chk nochain accept"));
    let report = kernel_check(&fw, &fake).unwrap();
    let refused: Vec<(usize, usize)> = report.refused().map(|(g, c)| (g, c.index)).collect();
    assert_eq!(refused, [(1, 1)], "{report:#?}");
    assert_eq!(fake.model(), virtfw::executor::FakeModel::default());
    assert!(fake
        .commands()
        .iter()
        .all(|argv| argv[..3] == ["nft", "-c", "-f"]));
    assert!(kernel_check(&nft_firewall(None), &fake).unwrap().is_clean());
}
