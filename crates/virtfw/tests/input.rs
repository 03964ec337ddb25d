//! Input that cannot be reinterpreted: what the XML reader and writer keep, the limits checked
//! before parsing, and — against the real kernel, over generated hostile transactions — the
//! property that one input gets the same verdict, the same kernel state and the same removal
//! plan on the per-command and the batch path.
//!
//! The kernel half needs root and creates throwaway network namespaces (never the host's
//! firewall), like tests/kernel.rs.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use virtfw::netns::Netns;
use virtfw::validate::UnsafeReason;
use virtfw::xml::{parse_document, parse_document_with, Limits};
use virtfw::{
    ApplyOptions, Backend, Error, FakeExecutor, Firewall, Layer, RollbackFlags, TransactionFlags,
};

/// Everything a firewall stores, in a comparable form (Firewall has no `PartialEq`: callbacks).
type Shape = (
    Option<String>,
    Backend,
    Vec<(
        u32,
        u32,
        Vec<(Layer, Vec<String>, bool, bool)>,
        Vec<(Layer, Vec<String>, bool, bool)>,
    )>,
);

fn shape(fw: &Firewall) -> Shape {
    let cmds = |list: &[virtfw::Command]| {
        list.iter()
            .map(|c| {
                (
                    c.layer(),
                    c.args().to_vec(),
                    c.ignore_errors(),
                    c.appended(),
                )
            })
            .collect::<Vec<_>>()
    };
    (
        fw.name().map(str::to_owned),
        fw.backend(),
        fw.groups()
            .iter()
            .map(|g| {
                (
                    g.flags().bits(),
                    g.rollback_flags().bits(),
                    cmds(g.actions()),
                    cmds(g.rollbacks()),
                )
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// The XML reader and writer.

/// Items the validator accepts on the nftables backend, with every character XML escapes.
fn safe_item() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_./:-]{1,12}",
        Just("\"a <b> & 'c' \"".to_string()),
        Just("\"tab\there\"".to_string()),
        Just("{ type filter hook input priority 0; policy accept; }".to_string()),
        Just("ip saddr 10.0.0.1 counter".to_string()),
    ]
}

/// Names with what attribute-value normalisation would change (TAB, LF, CR) and markup.
fn any_name() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop_oneof![
        "[a-z]{1,8}",
        Just("a\tb\nc\rd".to_string()),
        Just("<'&\">".to_string()),
        Just("  two  spaces ".to_string()),
    ])
}

fn command() -> impl Strategy<Value = (Layer, Vec<String>, bool, bool)> {
    (
        prop_oneof![Just(Layer::Ipv4), Just(Layer::Ipv6), Just(Layer::Ethernet)],
        proptest::collection::vec(safe_item(), 1..5),
        any::<bool>(),
        any::<bool>(),
    )
}

#[derive(Debug, Clone)]
struct GroupSpec {
    flags: u32,
    inherit: bool,
    actions: Vec<(Layer, Vec<String>, bool, bool)>,
    rollbacks: Vec<(Layer, Vec<String>, bool, bool)>,
}

fn group() -> impl Strategy<Value = GroupSpec> {
    (
        0u32..4,
        any::<bool>(),
        proptest::collection::vec(command(), 0..3),
        proptest::collection::vec(command(), 0..3),
    )
        .prop_map(|(flags, inherit, actions, rollbacks)| GroupSpec {
            flags,
            inherit,
            actions,
            rollbacks,
        })
}

/// A firewall built through the public API (empty groups, rollback-only groups included).
fn build(name: Option<String>, groups: &[GroupSpec]) -> Firewall {
    let mut fw = Firewall::new(Backend::Nftables);
    fw.set_name(name.as_deref());
    for g in groups {
        fw.start_transaction(TransactionFlags::from_bits_truncate(g.flags));
        for (layer, args, ignore, _) in &g.actions {
            fw.add_cmd_full(*layer, *ignore, None, args.clone());
        }
        if g.inherit {
            fw.start_rollback(RollbackFlags::INHERIT_PREVIOUS);
        }
        for (layer, args, _, _) in &g.rollbacks {
            fw.add_rollback_cmd(*layer, args.clone());
        }
    }
    fw
}

proptest! {
    #![proptest_config(Config { cases: 256, ..Config::default() })]

    /// What is written is what is read back: names with TAB/LF/CR, items with markup, and
    /// groups without actions keep their place.
    #[test]
    fn to_xml_then_from_xml_is_the_identity(
        name in any_name(),
        groups in proptest::collection::vec(group(), 0..5),
    ) {
        let fw = build(name, &groups);
        let xml = fw.to_xml();
        let back = Firewall::from_xml(&xml, "gen.xml").unwrap();
        prop_assert_eq!(shape(&back), shape(&fw), "{}", xml);
    }

    /// Reading and writing agree on which groups exist, for documents that libvirt's reader
    /// treats specially: actions without `<args>`, empty groups, rollback-only groups.
    #[test]
    fn reparsing_a_document_keeps_its_groups(
        groups in proptest::collection::vec(
            proptest::collection::vec(0u8..4, 0..4), 0..6),
    ) {
        let mut doc = String::from("<firewall backend='nftables'>\n");
        for g in &groups {
            doc.push_str("<group autoRollback='yes'>");
            for &part in g {
                doc.push_str(match part {
                    0 => "<action layer='ipv4'/>",
                    1 => "<action layer='ipv4'><args><item>add</item><item>table</item><item>ip</item><item>t</item></args></action>",
                    2 => "<rollback/>",
                    _ => "<foo/>",
                });
            }
            doc.push_str("</group>\n");
        }
        doc.push_str("</firewall>\n");
        let Ok(first) = Firewall::from_xml(&doc, "gen.xml") else {
            // Two <rollback> in one group: refused, nothing to compare.
            prop_assert!(groups.iter().any(|g| g.iter().filter(|&&p| p == 2).count() > 1));
            return Ok(());
        };
        let again = Firewall::from_xml(&first.to_xml(), "again.xml").unwrap();
        prop_assert_eq!(shape(&again), shape(&first), "{}", doc);
    }
}

#[test]
fn a_carriage_return_in_an_item_is_refused_with_its_position() {
    let doc = "<firewall backend='nftables'>\n  <group>\n    <action layer='ipv4'>\n      <args>\n        <item>add</item>\n        <item>table&#13;</item>\n      </args>\n    </action>\n  </group>\n</firewall>\n";
    let err = Firewall::from_xml(doc, "cr.xml").unwrap_err();
    assert!(
        matches!(
            &err,
            Error::UnsafeArgument {
                location: Some(l),
                item: 1,
                reason: UnsafeReason::LineBreak("carriage return"),
                ..
            } if l.source_name == "cr.xml" && l.line == 6 && l.column == 9
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("cr.xml:6:9: argument 1 (\"table\\r\") of command 0 in group 0"),
        "{err}"
    );
}

#[test]
fn the_batch_fusion_of_the_issue_is_refused_on_both_paths_before_anything_runs() {
    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(
        Layer::Ipv4,
        ["add", "rule", "ip", "t", "c", "comment", "\"a"],
    );
    fw.add_cmd(
        Layer::Ipv4,
        ["add", "rule", "ip", "t", "c", "b\" ; add table ip extra"],
    );
    for per_command in [true, false] {
        let fake = FakeExecutor::new();
        let err = fw
            .clone_plain()
            .apply_with(
                &fake,
                ApplyOptions {
                    observer: None,
                    per_command,
                },
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnsafeArgument {
                    group: 0,
                    command: 0,
                    item: 6,
                    reason: UnsafeReason::UnbalancedQuote,
                    location: None,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(fake.commands().is_empty(), "nothing ran");
    }
}

fn nested(depth: usize) -> String {
    let mut s = String::with_capacity(depth * 8);
    for _ in 0..depth {
        s.push_str("<a>");
    }
    for _ in 0..depth {
        s.push_str("</a>");
    }
    s
}

#[test]
fn deep_documents_are_refused_before_parsing_not_by_a_stack_overflow() {
    // 100,000 levels overflowed roxmltree's recursion long before: this must be an error.
    let deep = format!(
        "<firewall backend='nftables'>\n{}</firewall>",
        nested(100_000)
    );
    let err = Firewall::from_xml(&deep, "deep.xml").unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("deep.xml:2:"), "{msg}");
    assert!(msg.contains("nest more than 128 deep"), "{msg}");
    // Unclosed, and malformed further on: still refused by depth, not parsed.
    let unclosed = format!("<x>{}", "<a>".repeat(50_000));
    let err = parse_document(&unclosed).unwrap_err();
    assert!(err.message.contains("nest more than"), "{err:?}");
    // At the limit it parses; one more level does not.
    parse_document(&nested(Limits::DOCUMENT.max_depth)).unwrap();
    parse_document(&nested(Limits::DOCUMENT.max_depth + 1)).unwrap_err();
    parse_document_with(&nested(Limits::DEFINITION.max_depth), Limits::DEFINITION).unwrap();
    parse_document_with(
        &nested(Limits::DEFINITION.max_depth + 1),
        Limits::DEFINITION,
    )
    .unwrap_err();
}

#[test]
fn size_and_doctype_are_checked_too() {
    let small = Limits {
        max_bytes: 10,
        max_depth: 10,
    };
    let err = parse_document_with("<a>0123456789</a>", small).unwrap_err();
    assert_eq!((err.line, err.column), (1, 1));
    assert!(
        err.message.contains("more than the limit of 10 bytes"),
        "{err:?}"
    );
    let err =
        parse_document("<?xml version='1.0'?>\n<!DOCTYPE a [<!ENTITY e '<a/>'>]>\n<a>&e;</a>")
            .unwrap_err();
    assert_eq!(err.line, 2, "{err:?}");
    // Ordinary syntax errors keep roxmltree's words and position.
    let err = parse_document("<a>\n<b></a>").unwrap_err();
    assert_eq!(err.line, 2, "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Same input, same verdict, same kernel state, same plan: against the kernel.

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the kernel tests need root");
}

fn run(ns: &Netns, argv: &[&str]) -> String {
    ns.run(argv)
        .unwrap_or_else(|e| panic!("{} in {}: {e}", argv.join(" "), ns.name()))
}

/// The namespace's whole firewall state, without handles or timestamps.
fn snapshot(ns: &Netns, backend: Backend) -> String {
    let mut out = run(ns, &["nft", "-s", "list", "ruleset"]);
    if backend == Backend::Iptables {
        for tool in ["iptables-save", "ip6tables-save"] {
            out.push_str(&format!("== {tool}\n"));
            for l in run(ns, &[tool]).lines().filter(|l| !l.starts_with('#')) {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

/// A namespace with someone else's objects: a table with a rule (nft), a chain holding a rule
/// and the built-in chains (iptables).
fn prepared(backend: Backend) -> Netns {
    let ns = Netns::new("vfin").expect("create a network namespace");
    match backend {
        Backend::Nftables => {
            run(&ns, &["nft", "add", "table", "ip", "other"]);
            run(&ns, &["nft", "add", "chain", "ip", "other", "keep"]);
            run(
                &ns,
                &[
                    "nft", "add", "rule", "ip", "other", "keep", "counter", "accept",
                ],
            );
        }
        _ => {
            for chain in ["INPUT", "FORWARD", "OUTPUT"] {
                run(&ns, &["iptables", "-w", "-P", chain, "ACCEPT"]);
            }
            run(&ns, &["iptables", "-w", "-N", "VICTIM"]);
            run(
                &ns,
                &[
                    "iptables",
                    "-w",
                    "-A",
                    "VICTIM",
                    "-s",
                    "192.0.2.9",
                    "-j",
                    "ACCEPT",
                ],
            );
            run(
                &ns,
                &["iptables", "-w", "-t", "nat", "-P", "POSTROUTING", "ACCEPT"],
            );
        }
    }
    ns
}

/// What one apply path did with a transaction.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// `Ok`, or the error's kind (and for a refusal before anything ran, all of it).
    verdict: String,
    after: String,
    plan: Option<String>,
    restored: bool,
}

fn verdict(result: &virtfw::Result<()>) -> String {
    match result {
        Ok(()) => "ok".into(),
        Err(e @ Error::UnsafeArgument { .. }) => e.to_string(),
        Err(e) => format!("{:?}", std::mem::discriminant(e)),
    }
}

fn outcome(fw: &Firewall, backend: Backend, per_command: bool) -> Outcome {
    let ns = prepared(backend);
    let exec = ns.executor().expect("executor");
    let before = snapshot(&ns, backend);
    let mut fw = fw.clone_plain();
    let options = ApplyOptions {
        observer: None,
        per_command,
    };
    let result = fw.apply_with(&exec, options);
    let after = snapshot(&ns, backend);
    if matches!(result, Err(Error::UnsafeArgument { .. })) {
        assert_eq!(after, before, "a refused input changed the ruleset");
    }
    let mut plan = None;
    let mut restored = after == before;
    if result.is_ok() {
        let mut removal = fw.new_from_rollback().expect("removal");
        plan = Some(removal.to_xml());
        removal
            .apply_with(&exec, options)
            .expect("a removal plan ignores errors");
        restored = snapshot(&ns, backend) == before;
    }
    Outcome {
        verdict: verdict(&result),
        after,
        plan,
        restored,
    }
}

/// Pieces of nft rules: ordinary ones (weighted up, so that many cases apply) and hostile ones.
fn nft_piece() -> impl Strategy<Value = Vec<String>> {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    prop_oneof![
        6 => Just(v(&["counter"])),
        3 => Just(v(&["accept"])),
        3 => Just(v(&["comment", "\"x y\""])),
        3 => Just(v(&["comment", "\"q # ; { }\""])),
        3 => Just(v(&["ip saddr 10.0.0.1 counter"])),
        3 => Just(v(&["ip", "daddr", "{ 10.0.0.1, 10.0.0.2 }"])),
        1 => Just(v(&["comment", "\"a"])),
        1 => Just(v(&["b\" ; add table ip extra"])),
        1 => Just(v(&[";", "add", "table", "ip", "extra"])),
        1 => Just(v(&["#", "drop"])),
        1 => Just(v(&["{"])),
        1 => Just(v(&["}"])),
        1 => Just(v(&["\\"])),
        1 => Just(v(&["a\nb"])),
        1 => Just(v(&[""])),
        1 => Just(v(&[" "])),
        1 => Just(v(&["meta mark set 1 ; add table ip extra"])),
    ]
}

/// A rule command, in the transaction's own chain or in someone else's (where only an exact
/// inverse removes it again): the usual prefix and pieces, or several words in one item.
fn nft_rule() -> impl Strategy<Value = Vec<String>> {
    let chain = prop_oneof![Just(("gen", "c")), Just(("other", "keep"))];
    (chain, 0..8u8, proptest::collection::vec(nft_piece(), 0..3)).prop_map(
        |((table, chain), form, pieces)| {
            let mut args: Vec<String> = match form {
                0 => vec![format!("add rule ip {table} {chain} counter")],
                1 => vec![
                    "add".into(),
                    "rule".into(),
                    format!("ip {table}"),
                    chain.into(),
                ],
                _ => ["add", "rule", "ip", table, chain].map(String::from).into(),
            };
            args.extend(pieces.into_iter().flatten());
            args
        },
    )
}

fn nft_transaction() -> impl Strategy<Value = Firewall> {
    proptest::collection::vec(nft_rule(), 1..4).prop_map(|rules| {
        let mut fw = Firewall::new(Backend::Nftables);
        fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
        fw.add_cmd(Layer::Ipv4, ["add", "table", "ip", "gen"]);
        fw.add_cmd(Layer::Ipv4, ["add", "chain", "ip", "gen", "c"]);
        fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
        for args in rules {
            fw.add_cmd(Layer::Ipv4, args);
        }
        fw.start_rollback(RollbackFlags::INHERIT_PREVIOUS);
        fw
    })
}

/// Pieces of iptables rules, ordinary (weighted up) and hostile.
fn ipt_piece() -> impl Strategy<Value = Vec<String>> {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    prop_oneof![
        4 => Just(v(&["-s", "10.0.0.1"])),
        3 => Just(v(&["-m", "comment", "--comment", "a b"])),
        3 => Just(v(&["-m", "comment", "--comment", "say \"hi\""])),
        3 => Just(v(&["-m", "comment", "--comment", "it's #1; {ok}"])),
        3 => Just(v(&["-m", "comment", "--comment", ""])),
        2 => Just(v(&["-m", "comment", "--comment", "x\\y"])),
        3 => Just(v(&["-p", "tcp", "--dport", "1024:65535"])),
        1 => Just(v(&["-s 10.0.0.2"])),
        1 => Just(v(&["-t", "filter"])),
        1 => Just(v(&["COMMIT"])),
        1 => Just(v(&["a\nb"])),
    ]
}

/// The first items of an iptables command: a normal append or something restore reads.
fn ipt_head() -> impl Strategy<Value = Vec<String>> {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    prop_oneof![
        10 => Just(v(&["-A", "INPUT"])),
        3 => Just(v(&["-t", "filter", "-I", "INPUT"])),
        1 => Just(v(&[":INPUT DROP"])),
        1 => Just(v(&[":INPUT", "DROP", "-A", "INPUT"])),
        1 => Just(v(&[":VICTIM", "-", "-A", "INPUT"])),
        1 => Just(v(&["*nat", "-A", "POSTROUTING"])),
        1 => Just(v(&["#", "-A", "INPUT"])),
        1 => Just(v(&["COMMIT", "-A", "INPUT"])),
        1 => Just(v(&["-t", "filter", ":INPUT", "DROP"])),
    ]
}

fn ipt_transaction() -> impl Strategy<Value = Firewall> {
    proptest::collection::vec(
        (ipt_head(), proptest::collection::vec(ipt_piece(), 0..3)),
        1..4,
    )
    .prop_map(|rules| {
        let mut fw = Firewall::new(Backend::Iptables);
        fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
        for (head, pieces) in rules {
            let mut args = head;
            args.extend(pieces.into_iter().flatten());
            args.extend(["-j".to_string(), "ACCEPT".to_string()]);
            fw.add_cmd(Layer::Ipv4, args);
        }
        fw
    })
}

fn cases() -> u32 {
    std::env::var("VIRTFW_INPUT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// Run the generated cases on both paths; assert they agree. With `require_restore`, also that
/// every removal (or failed apply) gave back the ruleset from before; without, cases that did
/// not are printed (they are the same on both paths, which is what is asserted then).
fn both_paths_agree(
    strategy: impl Strategy<Value = Firewall>,
    backend: Backend,
    require_restore: bool,
) {
    require_root();
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let not_restored = std::cell::RefCell::new(Vec::new());
    let refused = std::cell::Cell::new(0);
    let applied = std::cell::Cell::new(0);
    runner
        .run(&strategy, |fw| {
            let per_command = outcome(&fw, backend, true);
            let batched = outcome(&fw, backend, false);
            prop_assert_eq!(&per_command, &batched, "{}", fw.to_xml());
            if per_command.verdict.contains("is refused") {
                refused.set(refused.get() + 1);
            } else if per_command.verdict == "ok" {
                applied.set(applied.get() + 1);
            }
            if !per_command.restored {
                not_restored.borrow_mut().push(fw.to_xml());
            }
            Ok(())
        })
        .unwrap();
    let (applied, refused, not_restored) = (applied.get(), refused.get(), not_restored.take());
    eprintln!(
        "{backend}: {applied} applied, {refused} refused before running, of {} cases",
        cases()
    );
    // Generated cases whose removal (or rollback) did not give back the ruleset from before,
    // on both paths alike: a remaining inverse problem, shown in full rather than hidden.
    if !not_restored.is_empty() {
        let report = format!(
            "{} case(s) not restored after removal (alike on both paths), e.g.:\n{}",
            not_restored.len(),
            not_restored[0]
        );
        assert!(!require_restore, "{report}");
        eprintln!("{report}");
    }
    assert!(
        refused > 0 && applied > 0,
        "the generator must hit both verdicts"
    );
}

#[test]
fn nft_hostile_items_get_the_same_verdict_state_and_plan_on_both_paths() {
    both_paths_agree(nft_transaction(), Backend::Nftables, false);
}

/// The same cases, also requiring that every removal restores the ruleset. Fails today: an
/// item holding several nft words (`add rule ip other keep counter` as ONE item, or `ip other`)
/// gets no inverse on either path, so the rule stays in someone else's chain after `remove`
/// (issue 8, item 9, inverse part). Run it with `--ignored` once that fix is in.
#[test]
#[ignore = "issue 8 item 9 (inverse of several words in one item) is fixed elsewhere"]
fn nft_hostile_items_are_removed_exactly() {
    both_paths_agree(nft_transaction(), Backend::Nftables, true);
}

#[test]
fn iptables_hostile_items_get_the_same_verdict_state_and_plan_on_both_paths() {
    both_paths_agree(ipt_transaction(), Backend::Iptables, true);
}
