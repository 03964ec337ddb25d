//! The nft batch runs against the scripted fake.

use super::super::test_support::*;
use crate::executor::{FakeExecutor, FakeResponse};
use crate::model::{Backend, Layer, TransactionFlags};
use crate::{ApplyOptions, Firewall, IgnoredCounter};

#[test]
fn consecutive_create_groups_run_as_one_echo_batch() {
    let fake = FakeExecutor::new().with_batching();
    let mut fw = nft_firewall();
    batched(&mut fw, &fake).unwrap();
    let inv = fake.invocations();
    // The table its table and chain creates touch is listed first (it is absent, so they
    // run as `create`), then one batch.
    assert_eq!(inv.len(), 2, "{:?}", fake.commands());
    assert_eq!(inv[0].0, ["nft", "-a", "list", "table", "ip", "T"]);
    assert_eq!(inv[1].0, ["nft", "-ae", "-f", "-"]);
    let input = String::from_utf8(inv[1].1.clone().unwrap()).unwrap();
    assert_eq!(input.lines().next(), Some("create table ip T"));
    assert_eq!(
        input.lines().nth(1),
        Some("create chain ip T C { type filter hook forward priority 0; policy accept; }")
    );
    assert_eq!(
        input.lines().nth(4),
        Some("add rule ip6 T C comment \"x y\"")
    );
    // The same handles in the same order as one process per command would get.
    let plain = FakeExecutor::new();
    let mut fw2 = nft_firewall();
    per_command(&mut fw2, &plain).unwrap();
    assert_eq!(rollbacks(&fw), rollbacks(&fw2));
    assert_eq!(plain.commands().len(), 6);
}

#[test]
fn failing_batch_falls_back_and_rolls_back_like_libvirt() {
    let script = |fake: FakeExecutor| {
        fake.on(
            FakeExecutor::args_contain(&["drop"]),
            FakeResponse::fail(
                1,
                "Error: Could not process rule: No such file or directory",
            ),
        )
    };
    let batching = script(FakeExecutor::new().with_batching());
    let mut fw = nft_firewall();
    fw.start_rollback(crate::RollbackFlags::INHERIT_PREVIOUS);
    let err = batched(&mut fw, &batching).unwrap_err().to_string();

    let plain = script(FakeExecutor::new());
    let mut fw2 = nft_firewall();
    fw2.start_rollback(crate::RollbackFlags::INHERIT_PREVIOUS);
    let err2 = per_command(&mut fw2, &plain).unwrap_err().to_string();
    assert_eq!(err, err2);
    assert!(err.contains("drop"), "{err}");
    assert_eq!(rollbacks(&fw), rollbacks(&fw2));
    // After the one failed batch, exactly the per-command sequence (with its rollback).
    // The listing ran once, before the batch; the fallback reuses its facts.
    let cmds = batching.commands();
    assert_eq!(cmds[0], ["nft", "-a", "list", "table", "ip", "T"]);
    assert_eq!(cmds[1], ["nft", "-ae", "-f", "-"]);
    assert_eq!(cmds[2..], plain.commands()[1..]);
    assert_eq!(plain.commands()[0], cmds[0]);
    assert!(plain
        .transcript()
        .contains("delete \\\ntable \\\nip \\\nhandle \\\n1"));
}

#[test]
fn nft_removal_drops_vanished_handles_and_counts_them() {
    let listing = "table ip T { # handle 4\n\tchain C { # handle 1\n\t\tip saddr 1.2.3.4 accept # handle 2\n\t}\n}\n";
    let fake = FakeExecutor::new()
            .with_batching()
            .on(
                FakeExecutor::args_contain(&["handle", "9"]),
                FakeResponse::fail(1, "Error: Could not process rule: No such file or directory"),
            )
            .on(
                FakeExecutor::args_contain(&["-a", "list", "table"]),
                FakeResponse::stdout(listing),
            )
            .on(
                FakeExecutor::args_contain(&["-j", "list", "tables"]),
                FakeResponse::stdout(
                    r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "ip", "name": "T", "handle": 4}}]}"#,
                ),
            );
    let mut removal = Firewall::new(Backend::Nftables);
    removal.start_transaction(TransactionFlags::IGNORE_ERRORS);
    for args in [
        "delete rule ip T C handle 2",
        "delete rule ip T C handle 9",
        "delete chain ip T handle 1",
        "delete table ip handle 4",
    ] {
        removal.add_cmd(Layer::Ipv4, args.split(' '));
    }
    let counter = IgnoredCounter::default();
    removal
        .apply_with(
            &fake,
            ApplyOptions::new().per_command(false).observer(&counter),
        )
        .unwrap();
    assert_eq!((counter.missing(), counter.failed()), (1, 0));
    let inv = fake.invocations();
    let last = String::from_utf8(inv.last().unwrap().1.clone().unwrap()).unwrap();
    assert_eq!(
        last,
        "delete rule ip T C handle 2\ndelete chain ip T handle 1\ndelete table ip handle 4\n"
    );
    assert_eq!(inv.len(), 4, "{:?}", fake.commands());
}

#[test]
fn removal_deletes_appended_rules_front_first_and_per_command_keeps_plan_order() {
    let build = || {
        let mut fw = Firewall::new(Backend::Nftables);
        fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
        fw.add_cmd(Layer::Ipv4, ["add", "table", "ip", "T"]);
        fw.add_cmd(Layer::Ipv4, ["add", "chain", "ip", "T", "C"]);
        for r in [
            "add rule ip T C a",
            "insert rule ip T C b",
            "add rule ip T C c",
        ] {
            fw.add_cmd(Layer::Ipv4, r.split(' '));
        }
        fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
        for r in ["add rule ip T C d", "add rule ip T C position 3 e"] {
            fw.add_cmd(Layer::Ipv4, r.split(' '));
        }
        fw
    };
    // Handles 1..=7 in creation order: table 1, chain 2, a 3, b 4, c 5, d 6, e 7.
    let fake = FakeExecutor::new().with_batching();
    let mut fw = build();
    batched(&mut fw, &fake).unwrap();
    let mut removal = fw.new_from_rollback().unwrap();
    let appended: Vec<(String, bool)> = removal
        .groups()
        .iter()
        .flat_map(|g| g.actions())
        .map(|c| (c.args().join(" "), c.appended()))
        .collect();
    assert_eq!(
        appended,
        [
            ("delete rule ip T C handle 7".to_string(), false),
            ("delete rule ip T C handle 6".to_string(), true),
            ("delete rule ip T C handle 5".to_string(), true),
            ("delete rule ip T C handle 4".to_string(), false),
            ("delete rule ip T C handle 3".to_string(), true),
            ("delete chain ip T handle 2".to_string(), false),
            ("delete table ip handle 1".to_string(), false),
        ]
    );
    // The mark survives the plan file; only appended deletes carry it.
    let xml = removal.to_xml();
    assert_eq!(xml.matches(" appended='yes'").count(), 3, "{xml}");
    let reread = Firewall::from_xml(&xml, "plan.xml").unwrap();
    assert_eq!(reread.to_xml(), xml);

    fake.clear();
    batched(&mut removal, &fake).unwrap();
    assert_eq!(fake.commands().len(), 1, "{:?}", fake.commands());
    assert_eq!(
        last_batch(&fake),
        [
            // Inserted (and positioned) ones in plan order, then appended in creation order,
            // all before the chain and table deletes they must not cross.
            "delete rule ip T C handle 7",
            "delete rule ip T C handle 4",
            "delete rule ip T C handle 3",
            "delete rule ip T C handle 5",
            "delete rule ip T C handle 6",
            "delete chain ip T handle 2",
            "delete table ip handle 1",
        ]
    );

    let plain = FakeExecutor::new();
    let mut removal = Firewall::from_xml(&xml, "plan.xml").unwrap();
    per_command(&mut removal, &plain).unwrap();
    let handles: Vec<String> = plain
        .commands()
        .iter()
        .map(|a| a.last().unwrap().clone())
        .collect();
    assert_eq!(handles, ["7", "6", "5", "4", "3", "2", "1"]);
}
