//! Issue 8, "one truth for what did this command create", against the real kernel: an
//! auto-rollback `add table`/`add chain` of an object that existed before the apply records no
//! inverse, on the per-command and on the batch path; handles are read from the trailing
//! `# handle N` only; an item holding several nft words gets the same inverse as one word per
//! item. After every scenario `nft -s list ruleset` must equal what it was before, except for
//! what the scenario itself created and still holds.
//!
//! Root required (throwaway namespaces, as in tests/kernel.rs).

use virtfw::executor::Invocation;
use virtfw::netns::Netns;
use virtfw::{ApplyOptions, Backend, Executor, Firewall, Layer, TransactionFlags};

fn netns(prefix: &str) -> Netns {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "kernel tests need root");
    Netns::new(prefix).expect("cannot create a network namespace")
}

fn ruleset(ns: &Netns) -> String {
    ns.run(&["nft", "-s", "list", "ruleset"]).unwrap()
}

/// Run an `nft -f -` script in the namespace (the hand-made state of "someone else").
fn nft_script(ns: &Netns, script: &str) {
    let exec = ns.executor().unwrap();
    let argv: Vec<String> = ["nft", "-f", "-"].iter().map(|s| s.to_string()).collect();
    let out = exec
        .run(Invocation {
            argv: &argv,
            stdin: Some(script.as_bytes()),
        })
        .unwrap();
    assert!(out.success(), "{script}: {}", out.stderr);
}

fn options(per_command: bool) -> ApplyOptions<'static> {
    ApplyOptions {
        observer: None,
        per_command,
    }
}

fn w(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// One auto-rollback transaction of these nft commands (each an argv tail).
fn tx(cmds: &[Vec<String>]) -> Firewall {
    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    for c in cmds {
        fw.add_cmd(Layer::Ipv4, c.clone());
    }
    fw
}

fn apply(ns: &Netns, fw: &mut Firewall, per_command: bool) -> virtfw::Result<Firewall> {
    fw.apply_with(&ns.executor().unwrap(), options(per_command))?;
    Ok(fw.new_from_rollback().unwrap())
}

fn remove(ns: &Netns, plan: &mut Firewall, per_command: bool) {
    plan.apply_with(&ns.executor().unwrap(), options(per_command))
        .unwrap();
}

/// The args of every command of a plan.
fn plan_cmds(plan: &Firewall) -> Vec<Vec<String>> {
    plan.groups()
        .iter()
        .flat_map(|g| g.actions())
        .map(|c| c.args().to_vec())
        .collect()
}

/// Someone else's tables, made first so that the low table handles are theirs.
const DECOYS: &str = "add table ip decoy\nadd table inet decoy6\n\
    add chain ip decoy c { type filter hook output priority 0; policy accept; }\n\
    add rule ip decoy c counter accept\n";

fn web() -> Vec<Vec<String>> {
    vec![
        w("add table inet myweb"),
        vec![
            "add".into(),
            "chain".into(),
            "inet".into(),
            "myweb".into(),
            "input".into(),
            "{ type filter hook input priority 0; policy accept; }".into(),
        ],
        w("add rule inet myweb input tcp dport 80 accept"),
    ]
}

/// Item 1: the same transaction twice under two names. The second records only its own rule;
/// removing it leaves the first's objects; removing both restores the ruleset.
#[test]
fn same_transaction_twice_owns_only_its_rule() {
    for per_command in [true, false] {
        let ns = netns("vfw-own-twice");
        nft_script(&ns, DECOYS);
        let before = ruleset(&ns);
        let mut plan1 = apply(&ns, &mut tx(&web()), per_command).unwrap();
        assert_eq!(plan_cmds(&plan1).len(), 3, "{per_command}");
        let after1 = ruleset(&ns);
        let mut plan2 = apply(&ns, &mut tx(&web()), per_command).unwrap();
        let cmds = plan_cmds(&plan2);
        assert_eq!(cmds.len(), 1, "per_command={per_command}: {cmds:?}");
        assert_eq!(cmds[0][..5], w("delete rule inet myweb input"));
        remove(&ns, &mut plan2, per_command);
        assert_eq!(ruleset(&ns), after1, "per_command={per_command}");
        remove(&ns, &mut plan1, per_command);
        assert_eq!(ruleset(&ns), before, "per_command={per_command}");
    }
}

/// Item 1, failure case: the re-add followed by a failing command rolls back only what the
/// second apply created.
#[test]
fn failed_second_apply_leaves_the_first_ones_objects() {
    for per_command in [true, false] {
        let ns = netns("vfw-own-twice-fail");
        nft_script(&ns, DECOYS);
        let before = ruleset(&ns);
        let mut plan1 = apply(&ns, &mut tx(&web()), per_command).unwrap();
        let after1 = ruleset(&ns);
        let mut cmds = web();
        cmds.push(w("add rule inet myweb input jump nosuch"));
        let err = apply(&ns, &mut tx(&cmds), per_command).unwrap_err();
        assert!(err.to_string().contains("nosuch"), "{err}");
        assert_eq!(ruleset(&ns), after1, "per_command={per_command}");
        remove(&ns, &mut plan1, per_command);
        assert_eq!(ruleset(&ns), before);
    }
}

/// A table and chain made by hand, holding a set with elements and rules.
const HAND_MADE: &str = "add table ip hm\n\
    add set ip hm s { type ipv4_addr; elements = { 10.9.9.9, 10.8.8.8 }; }\n\
    add chain ip hm c { type filter hook input priority 0; policy accept; }\n\
    add rule ip hm c ip saddr @s counter accept\n\
    add rule ip hm c counter comment \"hand made\"\n";

fn own_in_hand_made() -> Vec<Vec<String>> {
    vec![
        w("add table ip hm"),
        w("add chain ip hm c"),
        w("add chain ip hm mine"),
        w("add rule ip hm mine ip saddr 10.1.1.1 accept"),
        w("add rule ip hm c jump mine"),
        w("insert rule ip hm c ip daddr 10.2.2.2 drop"),
    ]
}

/// A transaction that `add`s a hand-made table and chain and then its own chain and rules:
/// apply + remove, and a failure injected at every later position; everything not created by
/// the operation stays exactly as before.
#[test]
fn hand_made_table_and_chain_survive_apply_failure_and_remove() {
    for per_command in [true, false] {
        let ns = netns("vfw-own-hand");
        nft_script(&ns, DECOYS);
        nft_script(&ns, HAND_MADE);
        let before = ruleset(&ns);
        let mut plan = apply(&ns, &mut tx(&own_in_hand_made()), per_command).unwrap();
        let cmds = plan_cmds(&plan);
        assert_eq!(cmds.len(), 4, "only our chain and rules: {cmds:?}");
        assert!(cmds.iter().all(|c| c[1] != "table"), "{cmds:?}");
        assert_eq!(cmds.iter().filter(|c| c[1] == "chain").count(), 1);
        remove(&ns, &mut plan, per_command);
        assert_eq!(ruleset(&ns), before, "per_command={per_command}");
        for at in 2..=own_in_hand_made().len() {
            let mut cmds = own_in_hand_made();
            cmds.insert(at, w("add rule ip hm c jump nosuch"));
            let err = apply(&ns, &mut tx(&cmds), per_command).unwrap_err();
            assert!(err.to_string().contains("nosuch"), "{err}");
            // libvirt's rollback runs the inverses forward (creation order), so our chain
            // `mine` survives when our jump to it was made: it is ours, and the only thing
            // allowed to remain (the CLI undoes newest first and leaves nothing).
            let _ = ns.run(&["nft", "delete", "chain", "ip", "hm", "mine"]);
            assert_eq!(
                ruleset(&ns),
                before,
                "per_command={per_command}, failure at {at}"
            );
        }
    }
}

/// Two plans add rules into one hand-made chain; each removal removes only its own rules.
#[test]
fn two_plans_share_a_hand_made_chain() {
    for per_command in [true, false] {
        let ns = netns("vfw-own-share");
        nft_script(&ns, HAND_MADE);
        let before = ruleset(&ns);
        let first = vec![
            w("add table ip hm"),
            w("add chain ip hm c"),
            w("add rule ip hm c ip saddr 10.3.3.3 accept"),
        ];
        let second = vec![
            w("add table ip hm"),
            w("add chain ip hm c"),
            w("add rule ip hm c ip saddr 10.4.4.4 accept"),
        ];
        let mut plan1 = apply(&ns, &mut tx(&first), per_command).unwrap();
        let mut plan2 = apply(&ns, &mut tx(&second), per_command).unwrap();
        assert_eq!(plan_cmds(&plan1).len(), 1);
        assert_eq!(plan_cmds(&plan2).len(), 1);
        remove(&ns, &mut plan1, per_command);
        let listing = ruleset(&ns);
        assert!(listing.contains("10.4.4.4") && !listing.contains("10.3.3.3"));
        remove(&ns, &mut plan2, per_command);
        assert_eq!(ruleset(&ns), before, "per_command={per_command}");
    }
}

/// Item 3: a rule whose comment contains `# handle 2`. The plan deletes the rule's own handle
/// (the trailing one of the echo), and removal leaves the others' rules, handle 2 included.
#[test]
fn rule_comment_with_a_handle_marker_is_not_read_as_the_handle() {
    for per_command in [true, false] {
        let ns = netns("vfw-own-comment");
        nft_script(&ns, HAND_MADE);
        let before = ruleset(&ns);
        let cmds = vec![
            w("add table ip hm"),
            w("add chain ip hm c"),
            vec![
                "add".into(),
                "rule".into(),
                "ip".into(),
                "hm".into(),
                "c".into(),
                "counter".into(),
                "accept".into(),
                "comment".into(),
                "\"x # handle 2\"".into(),
            ],
        ];
        let mut plan = apply(&ns, &mut tx(&cmds), per_command).unwrap();
        let listing = ns.run(&["nft", "-a", "list", "table", "ip", "hm"]).unwrap();
        let ours = listing
            .lines()
            .find(|l| l.contains("x # handle 2"))
            .and_then(virtfw::nft::trailing_handle)
            .unwrap();
        assert_ne!(ours, 2);
        assert_eq!(
            plan_cmds(&plan),
            [w(&format!("delete rule ip hm c handle {ours}"))]
        );
        remove(&ns, &mut plan, per_command);
        assert_eq!(ruleset(&ns), before, "per_command={per_command}");
    }
}

/// Item 9, inverse half: several nft words in one item, or a whole command in one item, give
/// the same removal plan as one word per item (fresh namespaces with the same history give the
/// same handles), and removal restores the ruleset.
#[test]
fn words_in_one_item_get_the_same_inverse() {
    let one_word: Vec<Vec<String>> = vec![
        w("add table ip q"),
        w("add chain ip q c"),
        w("add rule ip q c counter accept"),
        w("insert rule ip q c ip saddr 10.5.5.5 drop"),
    ];
    let several: Vec<Vec<String>> = vec![
        vec!["add".into(), "table".into(), "ip q".into()],
        vec!["add".into(), "chain".into(), "ip q c".into()],
        vec!["add".into(), "rule".into(), "ip q c counter accept".into()],
        vec!["insert rule".into(), "ip q c ip saddr 10.5.5.5 drop".into()],
    ];
    let whole: Vec<Vec<String>> = one_word.iter().map(|c| vec![c.join(" ")]).collect();
    for per_command in [true, false] {
        let mut plans = Vec::new();
        for form in [&one_word, &several, &whole] {
            let ns = netns("vfw-own-words");
            nft_script(&ns, DECOYS);
            let before = ruleset(&ns);
            let mut plan = apply(&ns, &mut tx(form), per_command).unwrap();
            plans.push(plan.to_xml());
            remove(&ns, &mut plan, per_command);
            assert_eq!(ruleset(&ns), before, "per_command={per_command}: {form:?}");
        }
        assert_eq!(plans[0], plans[1], "per_command={per_command}");
        assert_eq!(plans[0], plans[2], "per_command={per_command}");
        assert_eq!(plans[0].matches("<action").count(), 4);
    }
}
