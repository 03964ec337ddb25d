//! Restore sections against the scripted fake: committed sections, blamed lines, deaths.

use super::super::test_support::*;
use crate::error::Error;
use crate::executor::{Executor, FakeExecutor, FakeResponse, Invocation, Output};
use crate::model::{Backend, Layer, TransactionFlags};
use crate::{ApplyOptions, Firewall, IgnoredCounter};

fn ipt_firewall() -> Firewall {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(
        Layer::Ipv4,
        ["--table", "filter", "--insert", "INPUT", "-j", "ACCEPT"],
    );
    fw.add_cmd(
        Layer::Ipv4,
        ["--table", "nat", "-A", "POSTROUTING", "-j", "MASQUERADE"],
    );
    fw.add_cmd(Layer::Ipv6, ["-A", "FORWARD", "-j", "DROP"]);
    fw
}

#[test]
fn iptables_sections_run_one_process_per_program_and_failures_undo_committed_sections() {
    let fake = FakeExecutor::new().with_batching();
    let mut fw = ipt_firewall();
    batched(&mut fw, &fake).unwrap();
    let mut inv = fake.invocations();
    inv.sort_by(|a, b| a.0[0].cmp(&b.0[0]));
    let programs: Vec<&str> = inv.iter().map(|(a, _)| a[0].as_str()).collect();
    assert_eq!(programs, ["ip6tables-restore", "iptables-restore"]);
    assert_eq!(
        String::from_utf8(inv[1].1.clone().unwrap()).unwrap(),
        "*filter\n--insert INPUT -j ACCEPT\nCOMMIT\n*nat\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n"
    );
    let plain = FakeExecutor::new();
    let mut fw2 = ipt_firewall();
    per_command(&mut fw2, &plain).unwrap();
    assert_eq!(rollbacks(&fw), rollbacks(&fw2));

    // The nat section (second of iptables-restore's input) fails: the filter section
    // before it committed, and so did ip6tables-restore's. Both are undone, then libvirt's
    // sequence runs, ending in the same error and rollback.
    let fail = |f: FakeExecutor| {
        f.on(
            FakeExecutor::args_contain(&["MASQUERADE"]),
            FakeResponse::fail(1, "iptables: No chain/target/match by that name."),
        )
    };
    let fake = fail(FakeExecutor::new().with_batching());
    let mut fw = ipt_firewall();
    let err = batched(&mut fw, &fake).unwrap_err().to_string();
    let plain = fail(FakeExecutor::new());
    let mut fw2 = ipt_firewall();
    let err2 = per_command(&mut fw2, &plain).unwrap_err().to_string();
    assert_eq!(err, err2);
    assert_eq!(rollbacks(&fw), rollbacks(&fw2));
    let cmds = fake.commands();
    let mut undo: Vec<(String, String)> = fake
        .invocations()
        .into_iter()
        .filter_map(|(argv, stdin)| {
            let input = String::from_utf8(stdin?).unwrap();
            input.contains("--delete").then(|| (argv[0].clone(), input))
        })
        .collect();
    undo.sort();
    assert_eq!(
        undo,
        [
            (
                "ip6tables-restore".to_string(),
                "*filter\n--delete FORWARD -j DROP\nCOMMIT\n".to_string()
            ),
            (
                "iptables-restore".to_string(),
                "*filter\n--delete INPUT -j ACCEPT\nCOMMIT\n".to_string()
            ),
        ],
        "{cmds:?}"
    );
    assert_eq!(cmds.len(), 4 + plain.commands().len(), "{cmds:?}");
    assert_eq!(cmds[4..], plain.commands()[..]);
}

#[test]
fn a_failing_first_section_leaves_nothing_to_undo() {
    let fail = |f: FakeExecutor| {
        f.on(
            FakeExecutor::args_contain(&["--insert", "INPUT"]),
            FakeResponse::fail(1, "iptables: No chain/target/match by that name."),
        )
    };
    let fake = fail(FakeExecutor::new().with_batching());
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, ["--insert", "INPUT", "-j", "ACCEPT"]);
    fw.add_cmd(
        Layer::Ipv4,
        ["-t", "nat", "-A", "POSTROUTING", "-j", "RETURN"],
    );
    let err = batched(&mut fw, &fake).unwrap_err().to_string();
    assert!(err.contains("--insert INPUT"), "{err}");
    // One batch, no undo (nothing committed), then the one failing command (libvirt stops
    // at the first failure and has nothing to roll back).
    let cmds = fake.commands();
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    assert_eq!(cmds[0], ["iptables-restore", "-w", "--noflush"]);
    assert_eq!(cmds[1][..3], ["iptables", "-w", "--insert"]);
    assert!(fw.groups()[0].rollbacks().is_empty());
}

#[test]
fn stale_deletes_in_later_sections_resend_only_what_did_not_commit() {
    let stale = |f: FakeExecutor| {
        f.on(
            FakeExecutor::args_contain(&["--delete", "C"]),
            FakeResponse::fail(1, "Bad rule (does a matching rule exist in that chain?)."),
        )
        .on(
            FakeExecutor::args_contain(&["--delete", "E"]),
            FakeResponse::fail(1, "Bad rule (does a matching rule exist in that chain?)."),
        )
    };
    let fake = stale(FakeExecutor::new().with_batching());
    let mut removal = Firewall::new(Backend::Iptables);
    removal.start_transaction(TransactionFlags::IGNORE_ERRORS);
    for r in [
        "--delete A -j DROP",
        "--delete B -j DROP",
        "-t nat --delete C -j DROP",
        "-t nat --delete D -j DROP",
        "-t mangle --delete E -j DROP",
        "-t mangle --delete F -j DROP",
        "-t raw --delete G -j DROP",
    ] {
        removal.add_cmd(Layer::Ipv4, r.split(' '));
    }
    let counter = IgnoredCounter::default();
    removal
        .apply_with(
            &fake,
            ApplyOptions::new().per_command(false).observer(&counter),
        )
        .unwrap();
    assert_eq!((counter.missing(), counter.failed()), (2, 0));
    let inputs: Vec<String> = fake
        .invocations()
        .into_iter()
        .map(|(argv, stdin)| {
            assert_eq!(argv, ["iptables-restore", "-w", "--noflush"]);
            String::from_utf8(stdin.unwrap()).unwrap()
        })
        .collect();
    assert_eq!(
        inputs,
        [
            // C (line 6) is stale: filter committed, nat rolled back, the rest never ran.
            "*filter\n--delete A -j DROP\n--delete B -j DROP\nCOMMIT\n\
                 *nat\n--delete C -j DROP\n--delete D -j DROP\nCOMMIT\n\
                 *mangle\n--delete E -j DROP\n--delete F -j DROP\nCOMMIT\n\
                 *raw\n--delete G -j DROP\nCOMMIT\n",
            // From nat on, without C; E (line 5) is stale: nat committed.
            "*nat\n--delete D -j DROP\nCOMMIT\n\
                 *mangle\n--delete E -j DROP\n--delete F -j DROP\nCOMMIT\n\
                 *raw\n--delete G -j DROP\nCOMMIT\n",
            "*mangle\n--delete F -j DROP\nCOMMIT\n*raw\n--delete G -j DROP\nCOMMIT\n",
        ]
    );

    // A stale delete in the last section: everything before it is never sent again.
    let fake = stale(FakeExecutor::new().with_batching());
    let mut removal = Firewall::new(Backend::Iptables);
    removal.start_transaction(TransactionFlags::IGNORE_ERRORS);
    for r in ["--delete A -j DROP", "-t mangle --delete E -j DROP"] {
        removal.add_cmd(Layer::Ipv4, r.split(' '));
    }
    let counter = IgnoredCounter::default();
    removal
        .apply_with(
            &fake,
            ApplyOptions::new().per_command(false).observer(&counter),
        )
        .unwrap();
    assert_eq!((counter.missing(), counter.failed()), (1, 0));
    assert_eq!(fake.commands().len(), 1, "{:?}", fake.commands());
}

#[test]
fn iptables_removal_deletes_appended_rules_front_first_per_table() {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    for r in [
        "-A FORWARD -s 10.0.0.1 -j ACCEPT",
        "--insert FORWARD -s 10.0.0.2 -j ACCEPT",
        "-t nat --append POSTROUTING -s 10.0.0.3 -j MASQUERADE",
        "--append FORWARD -s 10.0.0.4 -j ACCEPT",
        "-t nat -A POSTROUTING -s 10.0.0.5 -j MASQUERADE",
    ] {
        fw.add_cmd(Layer::Ipv4, r.split(' '));
    }
    let fake = FakeExecutor::new().with_batching();
    batched(&mut fw, &fake).unwrap();
    let mut removal = fw.new_from_rollback().unwrap();
    fake.clear();
    batched(&mut removal, &fake).unwrap();
    let inputs: Vec<String> = fake
        .invocations()
        .into_iter()
        .map(|(_, stdin)| String::from_utf8(stdin.unwrap()).unwrap())
        .collect();
    // One process, one section per table (first use in the plan: nat's delete comes first,
    // the plan being newest first).
    assert_eq!(
        inputs,
        ["*nat\n--delete POSTROUTING -s 10.0.0.3 -j MASQUERADE\n\
              --delete POSTROUTING -s 10.0.0.5 -j MASQUERADE\nCOMMIT\n\
              *filter\n--delete FORWARD -s 10.0.0.2 -j ACCEPT\n\
              --delete FORWARD -s 10.0.0.1 -j ACCEPT\n\
              --delete FORWARD -s 10.0.0.4 -j ACCEPT\nCOMMIT\n"]
    );
}

#[test]
fn iptables_removal_drops_the_blamed_line_and_retries() {
    let fake = FakeExecutor::new().with_batching().on(
        FakeExecutor::args_contain(&["--delete", "INPUT", "DROP"]),
        FakeResponse::fail(1, "Bad rule (does a matching rule exist in that chain?)."),
    );
    let mut removal = Firewall::new(Backend::Iptables);
    removal.start_transaction(TransactionFlags::IGNORE_ERRORS);
    removal.add_cmd(Layer::Ipv4, ["--delete", "INPUT", "-j", "ACCEPT"]);
    removal.add_cmd(Layer::Ipv4, ["--delete", "INPUT", "-j", "DROP"]);
    removal.add_cmd(
        Layer::Ipv4,
        ["--table", "nat", "--delete", "X", "-j", "DROP"],
    );
    let counter = IgnoredCounter::default();
    removal
        .apply_with(
            &fake,
            ApplyOptions::new().per_command(false).observer(&counter),
        )
        .unwrap();
    assert_eq!(counter.missing(), 1);
    // One process for both tables; the retry resends the filter section without the
    // blamed line (it was rolled back whole) and the nat section (it never ran).
    assert_eq!(
        last_batch(&fake),
        [
            "*filter",
            "--delete INPUT -j ACCEPT",
            "COMMIT",
            "*nat",
            "--delete X -j DROP",
            "COMMIT"
        ]
    );
    assert_eq!(fake.commands().len(), 2);
}

/// A matcher on a command's argv and standard input.
type Matcher = fn(&[String], &str) -> bool;

/// The fake (which still records every command), except that commands a rule matches get
/// that rule's answer instead: an exit status and output, or (`None`) the executor's own
/// failure, as the CLI's executor reports a journal it could not write.
struct Broken<'a> {
    fake: &'a FakeExecutor,
    rules: Vec<(Matcher, Option<Output>)>,
}

impl Executor for Broken<'_> {
    fn run(&self, inv: Invocation<'_>) -> Result<Output, crate::ExecError> {
        let input = String::from_utf8_lossy(inv.stdin.unwrap_or_default()).into_owned();
        let argv = inv.argv;
        let real = self.fake.run(inv);
        match self.rules.iter().find(|(m, _)| m(argv, &input)) {
            Some((_, Some(out))) => Ok(out.clone()),
            Some((_, None)) => Err(crate::ExecError::Journal("No space left on device".into())),
            None => real,
        }
    }
    fn check_program(&self, program: &str) -> Result<(), crate::ExecError> {
        self.fake.check_program(program)
    }
    fn supports_batch(&self) -> bool {
        self.fake.supports_batch()
    }
}

/// A restore program killed by a signal: no line named, perhaps after a COMMIT.
fn died() -> Option<Output> {
    Some(Output {
        status: 137,
        stdout: String::new(),
        stderr: String::new(),
    })
}

fn ipt_removal() -> Firewall {
    let mut removal = Firewall::new(Backend::Iptables);
    removal.start_transaction(TransactionFlags::IGNORE_ERRORS);
    removal.add_cmd(Layer::Ipv4, ["--delete", "INPUT", "-j", "ACCEPT"]);
    removal.start_transaction(TransactionFlags::IGNORE_ERRORS);
    removal.add_cmd(Layer::Ipv4, ["-t", "nat", "--delete", "X", "-j", "DROP"]);
    removal
}

fn nft_removal_plan() -> Firewall {
    let mut removal = Firewall::new(Backend::Nftables);
    removal.start_transaction(TransactionFlags::IGNORE_ERRORS);
    removal.add_cmd(Layer::Ipv4, "delete rule ip T C handle 2".split(' '));
    removal.add_cmd(Layer::Ipv4, "delete chain ip T handle 1".split(' '));
    removal
}

fn remove_with(fw: &mut Firewall, exec: &dyn Executor, per_command: bool) -> crate::Result<()> {
    let counter = IgnoredCounter::default();
    let result = fw.apply_with(
        exec,
        ApplyOptions::new()
            .per_command(per_command)
            .observer(&counter),
    );
    // A hard failure is the removal's error, never an ignored failure.
    assert_eq!((counter.missing(), counter.failed()), (0, 0));
    result.map(drop)
}

fn is_journal_error(result: crate::Result<()>) -> bool {
    matches!(
        result,
        Err(Error::Exec {
            source: crate::ExecError::Journal(_),
            ..
        })
    )
}

#[test]
fn a_hard_failure_fails_a_removal_on_both_paths() {
    // Per-command (libvirt): the executor's own failure fails even an ignore-errors group.
    let plain = FakeExecutor::new();
    let broken = Broken {
        fake: &plain,
        rules: vec![(|a, _| a[0] == "iptables", None)],
    };
    assert!(is_journal_error(remove_with(
        &mut ipt_removal(),
        &broken,
        true
    )));
    assert_eq!(plain.commands().len(), 1, "it stops at the first command");

    // The batch could not run.
    let fake = FakeExecutor::new().with_batching();
    let broken = Broken {
        fake: &fake,
        rules: vec![(|a, _| a[0] == "iptables-restore", None)],
    };
    assert!(is_journal_error(remove_with(
        &mut ipt_removal(),
        &broken,
        false
    )));
    assert_eq!(fake.commands().len(), 1, "{:?}", fake.commands());

    // The batch died naming no line; the command-by-command fallback hits the failure.
    let fake = FakeExecutor::new().with_batching();
    let broken = Broken {
        fake: &fake,
        rules: vec![
            (|a, _| a[0] == "iptables-restore", died()),
            (|a, _| a[0] == "iptables", None),
        ],
    };
    assert!(is_journal_error(remove_with(
        &mut ipt_removal(),
        &broken,
        false
    )));
    assert_eq!(fake.commands().len(), 2, "{:?}", fake.commands());

    // nft: per command, as one batch, and while listing what a failed batch left.
    let plain = FakeExecutor::new();
    let broken = Broken {
        fake: &plain,
        rules: vec![(|a, _| a[0] == "nft", None)],
    };
    assert!(is_journal_error(remove_with(
        &mut nft_removal_plan(),
        &broken,
        true
    )));
    let fake = FakeExecutor::new().with_batching();
    let broken = Broken {
        fake: &fake,
        rules: vec![(|a, _| a[0] == "nft", None)],
    };
    assert!(is_journal_error(remove_with(
        &mut nft_removal_plan(),
        &broken,
        false
    )));
    let fake = FakeExecutor::new().with_batching();
    let broken = Broken {
        fake: &fake,
        rules: vec![
            (|a, _| a.contains(&"-f".to_string()), died()),
            (|a, _| a.contains(&"list".to_string()), None),
        ],
    };
    assert!(is_journal_error(remove_with(
        &mut nft_removal_plan(),
        &broken,
        false
    )));
    // The objects are still there, the batch keeps dying: the command-by-command
    // fallback hits the failure and the removal stops there.
    let fake = FakeExecutor::new().with_batching().on(
        FakeExecutor::args_contain(&["-a", "list", "table"]),
        FakeResponse::stdout(
            "table ip T { # handle 4\n\tchain C { # handle 1\n\t\taccept # handle 2\n\t}\n}\n",
        ),
    );
    let broken = Broken {
        fake: &fake,
        rules: vec![
            (|a, _| a.contains(&"-f".to_string()), died()),
            (|a, _| a.contains(&"delete".to_string()), None),
        ],
    };
    assert!(is_journal_error(remove_with(
        &mut nft_removal_plan(),
        &broken,
        false
    )));
}

/// Three iptables sections (filter, mangle, nat); the nat one fails when `nat_fails`.
fn three_sections() -> Firewall {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, ["--insert", "INPUT", "-j", "ACCEPT"]);
    fw.add_cmd(Layer::Ipv4, ["--insert", "FORWARD", "-j", "DROP"]);
    fw.add_cmd(
        Layer::Ipv4,
        ["-t", "mangle", "-A", "OUTPUT", "-j", "RETURN"],
    );
    fw.add_cmd(
        Layer::Ipv4,
        ["-t", "nat", "-A", "POSTROUTING", "-j", "MASQUERADE"],
    );
    fw
}

fn masquerade_fails(f: FakeExecutor) -> FakeExecutor {
    f.on(
        FakeExecutor::args_contain(&["-A", "POSTROUTING", "MASQUERADE"]),
        FakeResponse::fail(1, "iptables: No chain/target/match by that name."),
    )
}

/// The commands the fake saw, as lines; a batch as its program and input.
fn seen_by(fake: &FakeExecutor) -> Vec<String> {
    fake.invocations()
        .into_iter()
        .map(|(argv, stdin)| match stdin {
            Some(input) => format!("{} <<{}", argv[0], String::from_utf8(input).unwrap()),
            None => argv.join(" "),
        })
        .collect()
}

#[test]
fn a_restore_that_dies_without_a_line_is_settled_by_check() {
    // The program died after committing filter and mangle, not nat: what --check finds
    // present is undone, the rest re-run command by command — nothing is added twice.
    let fake = FakeExecutor::new().with_batching().on(
        FakeExecutor::args_contain(&["--check", "POSTROUTING"]),
        FakeResponse::fail(
            1,
            "iptables: Bad rule (does a matching rule exist in that chain?).",
        ),
    );
    let broken = Broken {
        fake: &fake,
        rules: vec![(
            |a, input| a[0] == "iptables-restore" && input.contains("-A"),
            died(),
        )],
    };
    let mut fw = three_sections();
    fw.apply_with(&broken, ApplyOptions::new().per_command(false))
        .unwrap();
    let seen = seen_by(&fake);
    assert_eq!(
        seen[1..5],
        [
            "iptables -w --check INPUT -j ACCEPT",
            "iptables -w --check FORWARD -j DROP",
            "iptables -w -t mangle --check OUTPUT -j RETURN",
            "iptables -w -t nat --check POSTROUTING -j MASQUERADE",
        ],
        "{seen:#?}"
    );
    assert_eq!(
        seen[5],
        "iptables-restore <<*mangle\n--delete OUTPUT -j RETURN\nCOMMIT\n\
             *filter\n--delete FORWARD -j DROP\n--delete INPUT -j ACCEPT\nCOMMIT\n"
    );
    assert_eq!(seen[6], "iptables -w --insert INPUT -j ACCEPT", "{seen:#?}");
    assert_eq!(seen.len(), 10, "{seen:#?}");
    let plain = FakeExecutor::new();
    let mut fw2 = three_sections();
    per_command(&mut fw2, &plain).unwrap();
    assert_eq!(rollbacks(&fw), rollbacks(&fw2));

    // Died after every COMMIT: all present, so it is applied, inverses recorded.
    let fake = FakeExecutor::new().with_batching();
    let broken = Broken {
        fake: &fake,
        rules: vec![(|a, _| a[0] == "iptables-restore", died())],
    };
    let mut fw = three_sections();
    fw.apply_with(&broken, ApplyOptions::new().per_command(false))
        .unwrap();
    assert_eq!(seen_by(&fake).len(), 5, "one batch and four checks");
    assert_eq!(rollbacks(&fw), rollbacks(&fw2));
}

#[test]
fn an_undo_that_dies_without_a_line_does_not_resend_what_committed() {
    // nat fails (line named): filter and mangle committed and are undone in one process
    // (mangle first). That process dies naming no line; --check finds mangle's rule gone
    // and filter's still there: only filter's deletes run again, one by one.
    let fake = masquerade_fails(FakeExecutor::new().with_batching()).on(
        FakeExecutor::args_contain(&["--check", "OUTPUT"]),
        FakeResponse::fail(
            1,
            "iptables: Bad rule (does a matching rule exist in that chain?).",
        ),
    );
    let broken = Broken {
        fake: &fake,
        rules: vec![(
            |a, input| a[0] == "iptables-restore" && input.contains("--delete"),
            died(),
        )],
    };
    let mut fw = three_sections();
    assert!(fw
        .apply_with(&broken, ApplyOptions::new().per_command(false),)
        .is_err());
    let seen = seen_by(&fake);
    assert!(seen[1].contains("*mangle\n--delete OUTPUT"), "{seen:#?}");
    assert_eq!(
        seen[2..6],
        [
            "iptables -w -t mangle --check OUTPUT -j RETURN",
            "iptables -w --check FORWARD -j DROP",
            "iptables -w --delete FORWARD -j DROP",
            "iptables -w --delete INPUT -j ACCEPT",
        ],
        "{seen:#?}"
    );
    // Then libvirt's sequence: the creates again, up to the failing one.
    assert_eq!(seen[6], "iptables -w --insert INPUT -j ACCEPT", "{seen:#?}");
}

#[test]
fn an_undo_drops_the_rule_it_cannot_remove_and_retries() {
    // nat fails; filter's undo cannot delete FORWARD's rule (gone meanwhile): that line is
    // dropped and the section retried, so INPUT's rule does not stay (and get added twice).
    let fake = masquerade_fails(FakeExecutor::new().with_batching()).on(
        FakeExecutor::args_contain(&["--delete", "FORWARD"]),
        FakeResponse::fail(
            1,
            "iptables: Bad rule (does a matching rule exist in that chain?).",
        ),
    );
    let mut fw = three_sections();
    assert!(batched(&mut fw, &fake).is_err());
    let seen = seen_by(&fake);
    assert_eq!(
        seen[1],
        "iptables-restore <<*mangle\n--delete OUTPUT -j RETURN\nCOMMIT\n\
             *filter\n--delete FORWARD -j DROP\n--delete INPUT -j ACCEPT\nCOMMIT\n"
    );
    // mangle committed; filter is retried without the blamed line, alone.
    assert_eq!(
        seen[2],
        "iptables-restore <<*filter\n--delete INPUT -j ACCEPT\nCOMMIT\n"
    );
    assert_eq!(seen[3], "iptables -w --insert INPUT -j ACCEPT", "{seen:#?}");
}
