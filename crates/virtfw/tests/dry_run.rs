//! `executor::DryRun`: what `virtfw apply --dry-run` and `virtfw network plan` run on. It
//! records every invocation, answers as a fresh host where everything succeeds, and its
//! transcript is libvirt's format.

use virtfw::executor::{DryRun, Executor, Invocation};
use virtfw::{Backend, Firewall, Layer, RollbackFlags, TransactionFlags};

/// The only place this file builds an invocation.
fn invocation<'a>(argv: &'a [String], stdin: Option<&'a [u8]>) -> Invocation<'a> {
    Invocation { argv, stdin }
}

fn run(dry: &DryRun, argv: &[&str], stdin: Option<&str>) -> virtfw::executor::Output {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    dry.run(invocation(&argv, stdin.map(str::as_bytes)))
        .unwrap()
}

/// The commands of an applied firewall's removal plan, one line each.
fn removal_plan(fw: &Firewall) -> Vec<String> {
    fw.new_from_rollback()
        .unwrap()
        .groups()
        .iter()
        .flat_map(|g| g.actions())
        .map(|c| c.args().join(" "))
        .collect()
}

#[test]
fn an_nft_apply_records_every_command_and_yields_a_removal_plan() {
    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, ["add", "table", "ip", "demo"]);
    fw.add_cmd(Layer::Ipv4, ["add", "chain", "ip", "demo", "input"]);
    fw.add_cmd(
        Layer::Ipv4,
        ["add", "rule", "ip", "demo", "input", "accept"],
    );
    let dry = DryRun::new();
    fw.apply(&dry).unwrap();
    // Per command (not batched), with the engine's listing first: the table is absent, so the
    // adds of table and chain become creates.
    let commands = dry.commands();
    assert_eq!(
        commands,
        [
            vec!["nft", "-a", "list", "table", "ip", "demo"],
            vec!["nft", "-ae", "create", "table", "ip", "demo"],
            vec!["nft", "-ae", "create", "chain", "ip", "demo", "input"],
            vec!["nft", "-ae", "add", "rule", "ip", "demo", "input", "accept"],
        ]
    );
    // Placeholder handles make the removal plan: newest first.
    assert_eq!(
        removal_plan(&fw),
        [
            "delete rule ip demo input handle 3",
            "delete chain ip demo handle 2",
            "delete table ip handle 1"
        ]
    );
    assert!(dry
        .transcript()
        .starts_with("nft \\\n-a list \\\ntable \\\nip \\\ndemo\nnft \\\n-ae create"));
    assert_eq!(dry.recorded()[1].stdin, None);
}

#[test]
fn listings_say_absent_until_the_run_created_the_table() {
    let dry = DryRun::new();
    let out = run(&dry, &["nft", "-a", "list", "table", "ip", "t"], None);
    assert_eq!(out.status, 1);
    assert!(out.stderr.contains("No such file or directory"));
    let out = run(&dry, &["nft", "list", "ruleset"], None);
    assert_eq!(out.status, 1);
    let out = run(&dry, &["nft", "-j", "list", "tables"], None);
    assert_eq!(out.stdout, r#"{"nftables":[]}"#);
    // A batch is recorded with its input and echoes per create.
    let out = run(
        &dry,
        &["nft", "-ae", "-f", "-"],
        Some("add table ip t\nadd chain ip t c\nadd rule ip t c drop\n"),
    );
    assert_eq!(
        out.stdout,
        "add table ip t # handle 1\nadd chain ip t c # handle 2\nadd rule ip t c drop # handle 3\n"
    );
    assert_eq!(
        dry.recorded().last().unwrap().stdin.as_deref(),
        Some("add table ip t\nadd chain ip t c\nadd rule ip t c drop\n")
    );
    let listing = run(&dry, &["nft", "-a", "list", "table", "ip", "t"], None);
    assert_eq!(listing.status, 0);
    let parsed = virtfw::nft::parse_listing(&listing.stdout);
    assert_eq!((parsed.table, parsed.chains["c"]), (Some(1), 2));
    assert_eq!(
        run(&dry, &["nft", "list", "table", "ip", "t"], None).status,
        0
    );
    assert_eq!(
        run(&dry, &["nft", "list", "table", "ip6", "t"], None).status,
        1
    );
    // An existing table echoes nothing, an existing chain its handle (nft 1.0.6).
    let out = run(&dry, &["nft", "-ae", "add", "table", "ip", "t"], None);
    assert_eq!(out.stdout, "");
    let out = run(&dry, &["nft", "-ae", "add", "chain", "ip", "t", "c"], None);
    assert_eq!(out.stdout, "add chain ip t c # handle 2\n");
    let tables =
        virtfw::nft::parse_tables_json(&run(&dry, &["nft", "-j", "list", "tables"], None).stdout)
            .unwrap();
    assert_eq!(tables.len(), 1);
    assert_eq!((tables[0].name.as_str(), tables[0].handle), ("t", 1));
}

#[test]
fn an_iptables_apply_succeeds_everywhere_and_shows_libvirts_sequence() {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(
        Layer::Ipv4,
        ["--table", "filter", "--insert", "INPUT", "--jump", "ACCEPT"],
    );
    fw.add_cmd(
        Layer::Ethernet,
        ["-t", "nat", "-A", "PREROUTING", "-j", "ACCEPT"],
    );
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(
        Layer::Ipv6,
        ["--table", "filter", "--delete", "INPUT", "--jump", "DROP"],
    );
    fw.start_rollback(RollbackFlags::empty());
    fw.add_rollback_cmd(Layer::Ipv6, ["--table", "filter", "--flush", "INPUT"]);
    let dry = DryRun::new();
    fw.apply(&dry).unwrap();
    assert_eq!(
        dry.transcript(),
        "iptables \\\n-w \\\n--table filter \\\n--insert INPUT \\\n--jump ACCEPT\n\
         ebtables \\\n--concurrent \\\n-t nat \\\n-A PREROUTING \\\n-j ACCEPT\n\
         ip6tables \\\n-w \\\n--table filter \\\n--delete INPUT \\\n--jump DROP\n"
    );
    assert!(!dry.supports_batch());
    // The creates' inverses (and the hand-written rollback) make the removal plan.
    assert_eq!(
        removal_plan(&fw),
        [
            "--table filter --flush INPUT",
            "-t nat --delete PREROUTING -j ACCEPT",
            "--table filter --delete INPUT --jump ACCEPT",
        ]
    );
}
