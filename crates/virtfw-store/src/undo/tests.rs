//! Unit tests of the undo computations: journals written by hand, no kernel needed.

use super::*;

fn v(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// A kernel that answers every check and listing with success and no output.
fn no_probe(_: &[String]) -> Option<String> {
    Some(String::new())
}

#[test]
fn bridge_is_undone_only_when_our_add_did_not_fail() {
    let start = |seq, argv: &str| Record::Start {
        seq,
        group: None,
        argv: v(argv),
        stdin: false,
    };
    // Killed while `ip link add` ran: unknown, so a guarded delete.
    let records = vec![
        start(0, "ip link show dev br7"),
        Record::Done { seq: 0, status: 1 },
        start(1, "ip link add br7 type bridge"),
    ];
    assert_eq!(
        undo_bridge(&records),
        vec![UndoCmd {
            argv: v("ip link del dev br7"),
            check: Some(v("ip link show dev br7")),
        }]
    );
    // The add failed (someone else's link appeared): nothing is ours.
    let records = vec![
        start(1, "ip link add br7 type bridge"),
        Record::Done { seq: 1, status: 2 },
    ];
    assert!(undo_bridge(&records).is_empty());
    // The bridge existed: only `ip link show` ran.
    let records = vec![
        start(0, "ip link show dev br7"),
        Record::Done { seq: 0, status: 0 },
    ];
    assert!(undo_bridge(&records).is_empty());
}

/// Concurrent steps interleave their records in one phase (docs/cli.md, "Steps that run
/// at the same time"): each undo must pick out its own commands by what they are.
#[test]
fn interleaved_records_of_a_concurrent_step_are_inert() {
    let start = |seq, argv: &str, stdin| Record::Start {
        seq,
        group: Some(0),
        argv: v(argv),
        stdin,
    };
    // Start: the global setup's batches run beside `ip link add`.
    let records = vec![
        start(0, "nft list table ip libvirt_network", false),
        start(1, "ip link show dev br7", false),
        Record::Done { seq: 1, status: 1 },
        start(2, "nft -f -", true),
        start(3, "ip link add br7 type bridge", false),
        Record::Done { seq: 0, status: 1 },
        Record::Done { seq: 2, status: 1 },
        Record::Done { seq: 3, status: 0 },
    ];
    assert_eq!(
        undo_bridge(&records),
        vec![UndoCmd {
            argv: v("ip link del dev br7"),
            check: Some(v("ip link show dev br7")),
        }]
    );
    // Stop: `ip link del` completed beside the removal, which was killed before its second
    // delete finished; only the plan's commands not completed are left.
    let plan = Firewall::from_xml(
        "<firewall backend='iptables'><group ignoreErrors='yes'>\
         <action layer='ipv4'><args><item>--delete</item><item>FWD</item><item>-j</item><item>A</item></args></action>\
         <action layer='ipv4'><args><item>--delete</item><item>FWD</item><item>-j</item><item>B</item></args></action>\
         </group></firewall>",
        "p.xml",
    )
    .unwrap();
    let records = vec![
        start(0, "ip link del dev br7", false),
        start(1, "iptables -w --delete FWD -j A", false),
        Record::Done { seq: 0, status: 0 },
        Record::Done { seq: 1, status: 0 },
        start(2, "iptables -w --delete FWD -j B", false),
    ];
    assert_eq!(
        undo_remove(&plan, Path::new("/nonexistent"), &records, &|_| Some(
            String::new()
        )),
        vec![UndoCmd {
            argv: v("iptables -w --delete FWD -j B"),
            check: Some(v("iptables -w --check FWD -j B")),
        }]
    );
}

#[test]
fn words_follow_quotes() {
    assert_eq!(
        split_words(r#"-A FWD -m comment --comment "a b\"c" -j ACCEPT"#),
        v("-A FWD -m comment --comment")
            .into_iter()
            .chain(["a b\"c".to_string(), "-j".into(), "ACCEPT".into()])
            .collect::<Vec<_>>()
    );
    assert_eq!(
        split_words("add rule ip t c  '{ x }'"),
        vec!["add", "rule", "ip", "t", "c", "{ x }"]
    );
}

#[test]
fn check_twin_replaces_only_the_delete() {
    assert_eq!(
        check_of_delete(&v("iptables -w --delete FWD -s 1.2.3.4 -j ACCEPT")),
        Some(v("iptables -w --check FWD -s 1.2.3.4 -j ACCEPT"))
    );
    assert_eq!(check_of_delete(&v("iptables -w -X FWD")), None);
    assert_eq!(check_of_delete(&v("iptables -w -I FWD -j ACCEPT")), None);
}

fn tx() -> Firewall {
    Firewall::from_xml(
        "<firewall backend='nftables'><group autoRollback='yes'><action layer='ipv4'><args><item>add</item><item>table</item><item>ip</item><item>t</item></args></action></group></firewall>",
        "t.xml",
    )
    .unwrap()
}

#[test]
fn nft_outcome_comes_from_the_echo_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        cmd_file(dir.path(), 9, "err"),
        "Error: No such file or directory\n",
    )
    .unwrap();
    std::fs::write(
        cmd_file(dir.path(), 0, "out"),
        "create table ip t # handle 7\n",
    )
    .unwrap();
    std::fs::write(cmd_file(dir.path(), 1, "out"), "").unwrap();
    let records = vec![
        // The engine's listing before the first table/chain create: no such table.
        Record::Start {
            seq: 9,
            group: Some(0),
            argv: v("nft -a list table ip t"),
            stdin: false,
        },
        Record::Done { seq: 9, status: 1 },
        Record::Start {
            seq: 0,
            group: Some(0),
            argv: v("nft -ae create table ip t"),
            stdin: false,
        },
        // killed while the second create ran, and it did not commit: no echo
        Record::Start {
            seq: 1,
            group: Some(0),
            argv: v("nft -ae create chain ip t c"),
            stdin: false,
        },
    ];
    let undo = undo_apply(&tx(), dir.path(), &records, &no_probe).unwrap();
    assert_eq!(
        undo,
        vec![UndoCmd {
            argv: v("nft delete table ip handle 7"),
            check: None
        }]
    );
}

/// The engine's listing of `ip t` (record `listing`, exit `status`), then the create
/// record `seq` (`argv`, batch when `stdin`), with no `done` record yet.
fn listed_then(listing: u64, status: i32, seq: u64, argv: &str, stdin: bool) -> Vec<Record> {
    vec![
        Record::Start {
            seq: listing,
            group: Some(0),
            argv: v("nft -a list table ip t"),
            stdin: false,
        },
        Record::Done {
            seq: listing,
            status,
        },
        Record::Start {
            seq,
            group: Some(0),
            argv: v(argv),
            stdin,
        },
    ]
}

/// The undo of one `nft -ae -f -` batch with `input` and `echo`, after the engine's
/// listing of `ip t` printed `listing`; killed before its `done` record.
fn batch_undo(dir: &Path, listing: &str, input: &str, echo: &str) -> Vec<Vec<String>> {
    std::fs::write(cmd_file(dir, 0, "out"), listing).unwrap();
    std::fs::write(cmd_file(dir, 1, "in"), input).unwrap();
    std::fs::write(cmd_file(dir, 1, "out"), echo).unwrap();
    let records = listed_then(0, 0, 1, "nft -ae -f -", true);
    undo_apply(&tx(), dir, &records, &no_probe)
        .unwrap()
        .into_iter()
        .map(|u| u.argv)
        .collect()
}

#[test]
fn batch_echo_maps_trailing_handles_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let undo = batch_undo(
        dir.path(),
        "table ip t { # handle 4\n}\n",
        "add chain ip t c\nadd rule ip t c accept\nadd rule ip t c drop\n",
        "add chain ip t c # handle 1\nadd rule ip t c handle 3 accept # handle 2\nadd rule ip t c drop # handle 3\n# new generation 5 by process 9 (nft)\n",
    );
    assert_eq!(
        undo,
        vec![
            v("nft delete rule ip t c handle 3"),
            v("nft delete rule ip t c handle 2"),
            v("nft delete chain ip t handle 1")
        ]
    );
}

/// Item 1 of issue 8 in `recover`: a batch that `add`s a hand-made table and chain (nft
/// 1.0.6 echoes nothing for the table and the chain's old handle) undoes only its own
/// chain and rule, never by position.
#[test]
fn hand_made_table_and_chain_get_no_inverse() {
    let dir = tempfile::tempdir().unwrap();
    let undo = batch_undo(
        dir.path(),
        "table ip t { # handle 1\n\tchain c { # handle 1\n\t\taccept # handle 2\n\t}\n}\n",
        "add table ip t\nadd chain ip t c\ncreate chain ip t mine\nadd rule ip t c accept comment \"# handle 2\"\nadd rule ip t mine accept\n",
        "add chain ip t c # handle 1\ncreate chain ip t mine # handle 5\nadd rule ip t c accept comment \"# handle 2\" # handle 6\nadd rule ip t mine accept # handle 7\n# new generation 3 by process 9 (nft)\n",
    );
    assert_eq!(
        undo,
        vec![
            v("nft delete rule ip t mine handle 7"),
            v("nft delete rule ip t c handle 6"),
            v("nft delete chain ip t handle 5"),
        ]
    );
    // Completed (exit 0): the same answer.
    let mut records = listed_then(0, 0, 1, "nft -ae -f -", true);
    records.push(Record::Done { seq: 1, status: 0 });
    assert_eq!(
        undo_apply(&tx(), dir.path(), &records, &no_probe)
            .unwrap()
            .len(),
        3
    );
}

/// A create that completed (exit 0) but whose echo file lost what it made: its handle is
/// unknown, so the undo refuses (the journal is kept) instead of guessing.
#[test]
fn completed_create_with_incomplete_echo_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        cmd_file(dir.path(), 0, "err"),
        "Error: No such file or directory\n",
    )
    .unwrap();
    std::fs::write(cmd_file(dir.path(), 1, "out"), "").unwrap();
    let mut records = listed_then(0, 1, 1, "nft -ae create table ip t", false);
    records.push(Record::Done { seq: 1, status: 0 });
    let err = undo_apply(&tx(), dir.path(), &records, &no_probe).unwrap_err();
    assert_eq!(err.seq, 1);
    // Interrupted instead (no `done`): no echo means it made nothing.
    assert!(undo_apply(&tx(), dir.path(), &records[..3], &no_probe)
        .unwrap()
        .is_empty());
}

#[test]
fn iptables_unknown_outcome_is_checked_and_failed_ones_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let fw = Firewall::from_xml(
        "<firewall backend='iptables'><group autoRollback='yes'><action layer='ipv4'><args><item>-A</item><item>FORWARD</item></args></action></group></firewall>",
        "t.xml",
    )
    .unwrap();
    let records = vec![
        Record::Start {
            seq: 0,
            group: Some(0),
            argv: v("iptables -w -A FORWARD -s 1.1.1.1 -j ACCEPT"),
            stdin: false,
        },
        Record::Done { seq: 0, status: 0 },
        Record::Start {
            seq: 1,
            group: Some(0),
            argv: v("iptables -w -A FORWARD -s 2.2.2.2 -j ACCEPT"),
            stdin: false,
        },
        Record::Done { seq: 1, status: 1 },
        Record::Start {
            seq: 2,
            group: Some(0),
            argv: v("iptables -w -A FORWARD -s 3.3.3.3 -j ACCEPT"),
            stdin: false,
        },
        Record::Mark {
            mark: "rollback 0 0".into(),
        },
        Record::Start {
            seq: 3,
            group: Some(0),
            argv: v("iptables -w --delete FORWARD -s 1.1.1.1 -j ACCEPT"),
            stdin: false,
        },
        Record::Done { seq: 3, status: 0 },
    ];
    let undo = undo_apply(&fw, dir.path(), &records, &no_probe).unwrap();
    assert_eq!(
        undo,
        vec![UndoCmd {
            argv: v("iptables -w --delete FORWARD -s 3.3.3.3 -j ACCEPT"),
            check: Some(v("iptables -w --check FORWARD -s 3.3.3.3 -j ACCEPT")),
        }]
    );
}

/// The batch path's restore of two groups failed in its second section: only the first
/// committed, and the engine took that back with a restore of deletes before re-running
/// the groups one by one (created again, then undone by its rollback). Every undo argv is
/// the engine's rollback argv of the command (no `--table filter` prefix), so each create
/// is undone exactly once.
#[test]
fn restore_undo_counts_committed_sections_only_with_the_engines_argv() {
    let dir = tempfile::tempdir().unwrap();
    let fw = Firewall::from_xml(
        "<firewall backend='iptables'><group autoRollback='yes'>\
         <action layer='ipv4'><args><item>-I</item><item>FORWARD</item><item>-s</item><item>1.1.1.1</item><item>-j</item><item>ACCEPT</item></args></action>\
         <action layer='ipv4'><args><item>-t</item><item>nat</item><item>-A</item><item>POSTROUTING</item><item>-j</item><item>MASQUERADE</item></args></action>\
         </group><group autoRollback='yes'>\
         <action layer='ipv4'><args><item>-t</item><item>nat</item><item>-A</item><item>NOPE</item><item>-j</item><item>ACCEPT</item></args></action>\
         </group></firewall>",
        "t.xml",
    )
    .unwrap();
    let write =
        |seq, ext, text: &str| std::fs::write(cmd_file(dir.path(), seq, ext), text).unwrap();
    write(0, "in", "*filter\n-I FORWARD -s 1.1.1.1 -j ACCEPT\nCOMMIT\n*nat\n-A POSTROUTING -j MASQUERADE\n-A NOPE -j ACCEPT\nCOMMIT\n");
    write(0, "err", "iptables-restore: line 6 failed\n");
    write(
        1,
        "in",
        "*filter\n--delete FORWARD -s 1.1.1.1 -j ACCEPT\nCOMMIT\n",
    );
    let start = |seq, group, argv: &str, stdin| Record::Start {
        seq,
        group: Some(group),
        argv: v(argv),
        stdin,
    };
    let done = |seq, status| Record::Done { seq, status };
    let records = vec![
        start(0, 1, "iptables-restore -w --noflush", true),
        done(0, 1),
        start(1, 1, "iptables-restore -w --noflush", true),
        done(1, 0),
        start(2, 0, "iptables -w -I FORWARD -s 1.1.1.1 -j ACCEPT", false),
        done(2, 0),
        start(
            3,
            0,
            "iptables -w -t nat -A POSTROUTING -j MASQUERADE",
            false,
        ),
        done(3, 0),
        start(4, 1, "iptables -w -t nat -A NOPE -j ACCEPT", false),
        done(4, 1),
        Record::Mark {
            mark: "rollback 1 1".into(),
        },
    ];
    let undo: Vec<_> = undo_apply(&fw, dir.path(), &records, &no_probe)
        .unwrap()
        .into_iter()
        .map(|u| u.argv)
        .collect();
    assert_eq!(
        undo,
        vec![
            v("iptables -w -t nat --delete POSTROUTING -j MASQUERADE"),
            v("iptables -w --delete FORWARD -s 1.1.1.1 -j ACCEPT"),
        ]
    );
    // Killed while the first restore ran: its outcome is unknown, so every create of it
    // is undone behind its `--check` (and nothing else ran).
    let undo = undo_apply(&fw, dir.path(), &records[..1], &no_probe).unwrap();
    assert_eq!(undo.len(), 3, "{undo:?}");
    assert!(undo
        .iter()
        .all(|u| u.check.is_some() && !u.argv.contains(&"filter".to_string())));
}

/// An undo pass was killed right after a delete: the rule count of its chain, against the
/// witness that pass listed first, says whether it took effect (someone else's identical
/// rule would make `--check` answer "there" either way).
#[test]
fn interrupted_delete_is_settled_by_the_witness_count() {
    let dir = tempfile::tempdir().unwrap();
    let fw = Firewall::from_xml(
        "<firewall backend='iptables'><group autoRollback='yes'>\
         <action layer='ipv4'><args><item>-A</item><item>FWD</item><item>-s</item><item>1.1.1.1</item><item>-j</item><item>ACCEPT</item></args></action>\
         </group></firewall>",
        "t.xml",
    )
    .unwrap();
    let listing = "-N FWD\n-A FWD -s 1.1.1.1/32 -j ACCEPT\n-A FWD -s 1.1.1.1/32 -j ACCEPT\n";
    std::fs::write(cmd_file(dir.path(), 2, "out"), listing).unwrap();
    let start = |seq, argv: &str| Record::Start {
        seq,
        group: Some(0),
        argv: v(argv),
        stdin: false,
    };
    let records = vec![
        start(0, "iptables -w -A FWD -s 1.1.1.1 -j ACCEPT"),
        Record::Done { seq: 0, status: 0 },
        Record::Mark {
            mark: "recover".into(),
        },
        start(2, "iptables -w -t filter -S FWD"),
        Record::Done { seq: 2, status: 0 },
        start(3, "iptables -w --check FWD -s 1.1.1.1 -j ACCEPT"),
        Record::Done { seq: 3, status: 0 },
        start(4, "iptables -w --delete FWD -s 1.1.1.1 -j ACCEPT"),
    ];
    let now = |rules: usize| {
        move |argv: &[String]| {
            (argv == v("iptables -w -t filter -S FWD").as_slice())
                .then(|| "-A FWD -s 1.1.1.1/32 -j ACCEPT\n".repeat(rules))
        }
    };
    // One rule fewer than the witness: the delete took effect.
    assert!(undo_apply(&fw, dir.path(), &records, &now(1))
        .unwrap()
        .is_empty());
    // As many: it did not; it runs again, behind its check.
    assert_eq!(
        undo_apply(&fw, dir.path(), &records, &now(2)).unwrap(),
        vec![UndoCmd {
            argv: v("iptables -w --delete FWD -s 1.1.1.1 -j ACCEPT"),
            check: Some(v("iptables -w --check FWD -s 1.1.1.1 -j ACCEPT")),
        }]
    );
}

/// A removal restore batch virtfw was killed during: its section committed iff some rule
/// of it is gone (someone else's identical rule keeps the other answering "there"); a
/// committed section's deletes are done and are not run again.
#[test]
fn killed_removal_restore_is_settled_by_any_rule_gone() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Firewall::from_xml(
        "<firewall backend='iptables'><group ignoreErrors='yes'>\
         <action layer='ipv4'><args><item>--delete</item><item>FWD</item><item>-s</item><item>1.1.1.1</item><item>-j</item><item>ACCEPT</item></args></action>\
         <action layer='ipv4'><args><item>--delete</item><item>FWD</item><item>-s</item><item>2.2.2.2</item><item>-j</item><item>ACCEPT</item></args></action>\
         </group></firewall>",
        "p.xml",
    )
    .unwrap();
    std::fs::write(
        cmd_file(dir.path(), 0, "in"),
        "*filter\n--delete FWD -s 1.1.1.1 -j ACCEPT\n--delete FWD -s 2.2.2.2 -j ACCEPT\nCOMMIT\n",
    )
    .unwrap();
    let records = vec![Record::Start {
        seq: 0,
        group: Some(0),
        argv: v("iptables-restore -w --noflush"),
        stdin: true,
    }];
    // 1.1.1.1 has a twin (still there), 2.2.2.2 is gone: the section committed.
    let twin_only = |argv: &[String]| {
        (argv == v("iptables -w --check FWD -s 1.1.1.1 -j ACCEPT").as_slice()).then(String::new)
    };
    let undo = undo_remove(&plan, dir.path(), &records, &twin_only);
    assert!(undo.is_empty(), "{undo:?}");
    // Both there: it did not commit; both deletes run, behind their checks.
    let undo = undo_remove(&plan, dir.path(), &records, &no_probe);
    assert_eq!(undo.len(), 2, "{undo:?}");
    assert!(undo.iter().all(|u| u.check.is_some()));
}
