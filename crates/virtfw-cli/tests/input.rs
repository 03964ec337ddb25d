//! Input that cannot be reinterpreted, through the built binary: items that would change
//! meaning when batched, interface names that are not one word, documents too deep to parse,
//! and the group-index shift of action-less groups. Every refusal is exit 2, names the file
//! and line, applies nothing and leaves other software's rules alone, on both apply paths.

mod common;
use common::*;

use std::process::Output;

/// `virtfw [--no-batch] ARGS…` in `env`.
fn run_on(env: &Env, per_command: bool, args: &[&str]) -> Output {
    let mut all: Vec<&str> = Vec::new();
    if per_command {
        all.push("--no-batch");
    }
    all.extend(args);
    let mut cmd = env.cmd(&all);
    cmd.env(
        "VIRTFW_NETWORK_CONF",
        env.dir.path().join("no-network.conf"),
    );
    cmd.output().unwrap()
}

/// Someone else's firewall: an nft table with a rule, an iptables chain holding a rule.
fn others(env: &Env) {
    env.prime_iptables();
    for argv in [
        &["nft", "add", "table", "inet", "theirs"][..],
        &["nft", "add", "chain", "inet", "theirs", "keep"],
        &[
            "nft", "add", "rule", "inet", "theirs", "keep", "tcp", "dport", "22", "accept",
        ],
        &["iptables", "-w", "-N", "VICTIM"],
        &[
            "iptables",
            "-w",
            "-A",
            "VICTIM",
            "-s",
            "192.0.2.7",
            "-j",
            "ACCEPT",
        ],
    ] {
        env.ns.run(argv).unwrap();
    }
}

/// Run `args` on both paths in fresh namespaces holding others' rules: exit 2, `needle` in
/// stderr, the ruleset exactly as before, no plan stored.
fn refused_on_both_paths(prefix: &str, file: &str, doc: &str, args: &[&str], needle: &str) {
    for per_command in [true, false] {
        let env = Env::new(prefix);
        others(&env);
        let f = env.write(file, doc);
        let before = env.snapshot();
        let mut argv: Vec<&str> = args.to_vec();
        argv.push(path_of(&f));
        let o = run_on(&env, per_command, &argv);
        assert_eq!(
            o.status.code(),
            Some(2),
            "no-batch={per_command}: {}",
            text(&o)
        );
        assert!(
            stderr(&o).contains(needle),
            "no-batch={per_command}: expected {needle:?} in {}",
            text(&o)
        );
        assert_eq!(
            env.snapshot(),
            before,
            "no-batch={per_command}: the ruleset changed"
        );
    }
}

fn ipt_doc(first: &[&str]) -> String {
    format!(
        "<firewall backend='iptables'>\n<group autoRollback='yes'>\n{}\n{}\n</group>\n</firewall>\n",
        action("ipv4", &["--append", "INPUT", "--source", "10.7.0.1", "--jump", "ACCEPT"]),
        action("ipv4", first),
    )
}

#[test]
fn an_iptables_policy_line_as_first_item_is_refused() {
    refused_on_both_paths(
        "vfin-policy",
        "policy.xml",
        &ipt_doc(&[":INPUT DROP"]),
        &["apply"],
        "policy.xml:4:",
    );
    refused_on_both_paths(
        "vfin-policy2",
        "policy.xml",
        &ipt_doc(&[":INPUT", "DROP", "--append", "INPUT", "--jump", "ACCEPT"]),
        &["apply"],
        "a chain policy line",
    );
}

#[test]
fn a_chain_line_cannot_flush_someone_elses_chain() {
    refused_on_both_paths(
        "vfin-victim",
        "victim.xml",
        &ipt_doc(&[":VICTIM", "-", "--append", "INPUT", "--jump", "ACCEPT"]),
        &["apply"],
        "argument 0 (\":VICTIM\") of command 1 in group 0",
    );
    for first in ["*nat", "COMMIT", "#"] {
        refused_on_both_paths(
            "vfin-line",
            "line.xml",
            &ipt_doc(&[
                "--table", "filter", first, "--append", "INPUT", "--jump", "ACCEPT",
            ]),
            &["apply"],
            "iptables-restore would read a line starting with it",
        );
    }
}

#[test]
fn an_nft_string_cannot_swallow_the_next_command() {
    let doc = format!(
        "<firewall backend='nftables'>\n<group autoRollback='yes'>\n{}\n{}\n{}\n{}\n</group>\n</firewall>\n",
        action("ipv4", &["add", "table", "ip", "mine"]),
        action("ipv4", &["add", "chain", "ip", "mine", "c"]),
        action("ipv4", &["add", "rule", "ip", "mine", "c", "counter", "comment", "\"a"]),
        action("ipv4", &["add", "rule", "ip", "mine", "c", "b\" ; add table ip extra"]),
    );
    refused_on_both_paths("vfin-quote", "quote.xml", &doc, &["apply"], "quote.xml:5:");
    for (item, why) in [
        ("counter ; flush ruleset", "';' outside a quoted string"),
        ("counter # accept", "'#' outside a quoted string"),
        ("{", "opens a '{'"),
    ] {
        let doc = format!(
            "<firewall backend='nftables'>\n<group>\n{}\n</group>\n</firewall>\n",
            action("ipv4", &["add", "rule", "inet", "theirs", "keep", item]),
        );
        refused_on_both_paths("vfin-nft", "nft.xml", &doc, &["apply"], why);
    }
}

const FORWARD_DEV_NET: &str = "<network>
  <name>inj</name>
  <bridge name='vfinbr0'/>
  <forward mode='nat' dev='lo accept ; flush ruleset #'/>
  <ip address='192.168.131.1' prefix='24'/>
</network>
";

#[test]
fn a_forward_dev_cannot_inject_commands() {
    for backend in ["nftables", "iptables"] {
        refused_on_both_paths(
            "vfin-fwd",
            "inj.xml",
            FORWARD_DEV_NET,
            &["network", "start", "--backend", backend],
            "inj.xml:4:3: invalid interface name \"lo accept ; flush ruleset #\" in attribute 'dev' of <forward>",
        );
    }
    let interface = "<network><name>i</name><bridge name='vfinbr1'/><forward mode='route'><interface dev='eth0;x'/></forward></network>";
    refused_on_both_paths(
        "vfin-iface",
        "iface.xml",
        interface,
        &["network", "start", "--backend", "nftables"],
        "attribute 'dev' of <interface>",
    );
}

#[test]
fn a_bridge_name_must_be_one_word() {
    for (name, needle) in [
        (
            "lo#",
            "invalid interface name \"lo#\" in attribute 'name' of <bridge>",
        ),
        ("br\"x", "only ASCII letters"),
        ("virbr+", "only ASCII letters"),
        ("..", "'.' and '..'"),
        ("abcdefghijklmnop", "1 to 15 bytes"),
    ] {
        let net = format!(
            "<network>\n  <name>b</name>\n  <bridge name='{}'/>\n  <ip address='192.168.132.1' prefix='24'/>\n</network>\n",
            name.replace('"', "&quot;")
        );
        for backend in ["nftables", "iptables"] {
            let args = ["network", "start", "--backend", backend];
            refused_on_both_paths("vfin-br", "br.xml", &net, &args, needle);
        }
    }
}

fn nested(depth: usize) -> String {
    format!("{}{}", "<x>".repeat(depth), "</x>".repeat(depth))
}

#[test]
fn deep_documents_are_an_error_not_a_crash() {
    let doc = format!(
        "<firewall backend='nftables'>\n{}\n</firewall>\n",
        nested(20_000)
    );
    refused_on_both_paths("vfin-deep", "deep.xml", &doc, &["apply"], "deep.xml:2:");
    let net = format!(
        "<network>\n<name>deep</name><bridge name='vfinbr2'/>\n{}\n</network>\n",
        nested(20_000)
    );
    let args = ["network", "start", "--backend", "nftables"];
    refused_on_both_paths("vfin-deepn", "deepnet.xml", &net, &args, "deepnet.xml:3:");
}

/// A definition at the definition depth limit starts, and its status file (one level deeper)
/// still parses, so it stops again.
#[test]
fn a_network_at_the_definition_depth_limit_can_be_stopped() {
    let limit = virtfw::xml::Limits::DEFINITION.max_depth;
    for backend in ["nftables", "iptables"] {
        let env = Env::new("vfin-limit");
        env.prime_iptables();
        // <network> is depth 1, <description> 2, the nesting inside it the rest.
        let net = format!(
            "<network>\n<name>lim</name><bridge name='vfinbr3'/>\n<forward mode='nat'/>\n<ip address='192.168.133.1' prefix='24'/>\n<description>{}</description>\n</network>\n",
            nested(limit - 2)
        );
        let start = |f: &std::path::Path| {
            run_on(
                &env,
                false,
                &["network", "start", path_of(f), "--backend", backend],
            )
        };
        let o = start(&env.write("lim.xml", &net));
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let o = run_on(&env, false, &["network", "stop", "lim"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        // The network's own rules are gone (libvirt's global chains stay, by design).
        let after = env.snapshot();
        assert!(
            !after.contains("vfinbr3") && !after.contains("192.168.133."),
            "{backend}: {after}"
        );
        assert!(!env.state().join("networks/lim.xml").exists());
        // One level more is refused before anything happens.
        let net = net
            .replace("<description>", "<description><x>")
            .replace("</description>", "</x></description>");
        let o = start(&env.write("over.xml", &net));
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(stderr(&o).contains("nest more than"), "{}", text(&o));
    }
}

/// A stored plan holding an item that would change meaning is refused as bad input (exit 2),
/// not run: plans are read with the same checks as transactions.
#[test]
fn removing_a_plan_with_an_unsafe_item_is_refused() {
    let env = Env::new("vfin-plan");
    let f = env.write("ok.xml", &nft_tx("ok", "okt"));
    let o = env.run(&["apply", path_of(&f)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let plan_path = env.state().join("plans/ok.plan");
    let mut plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan_path).unwrap()).unwrap();
    let removal = plan["removal"].as_str().unwrap().to_string();
    let tampered = removal.replacen(
        "<item>delete</item>",
        "<item>flush ruleset ; delete</item>",
        1,
    );
    assert_ne!(tampered, removal);
    plan["removal"] = serde_json::Value::String(tampered);
    std::fs::write(&plan_path, serde_json::to_vec(&plan).unwrap()).unwrap();
    let before = env.snapshot();
    for per_command in [true, false] {
        let o = run_on(&env, per_command, &["remove", "ok"]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(stderr(&o).contains("ok.plan:"), "{}", text(&o));
        assert!(
            stderr(&o).contains("';' outside a quoted string"),
            "{}",
            text(&o)
        );
        assert_eq!(env.snapshot(), before);
        assert!(plan_exists(&env, "ok"));
    }
}

/// Item 6: a group whose actions all lack `<args>` before a group that creates a table, then a
/// failing command in a group without auto-rollback. The journal's copy of the transaction is
/// read back to undo; with the empty group lost on rewrite, the undo took the table's group for
/// the failing one (no auto-rollback, so no inverses of its creates) and the table leaked.
#[test]
fn an_action_less_group_does_not_shift_the_undo() {
    for per_command in [true, false] {
        let env = Env::new("vfin-shift");
        others(&env);
        let before = env.snapshot();
        let doc = format!(
            "<firewall name='shift' backend='nftables'>\n\
             <group><action layer='ipv4'/></group>\n\
             <group autoRollback='yes'>{}{}</group>\n\
             <group>{}</group>\n\
             </firewall>\n",
            action("ipv4", &["add", "table", "ip", "shifted"]),
            action("ipv4", &["add", "chain", "ip", "shifted", "c"]),
            action(
                "ipv4",
                &["add", "rule", "ip", "shifted", "nosuchchain", "accept"]
            ),
        );
        let f = env.write("shift.xml", &doc);
        let o = run_on(&env, per_command, &["apply", path_of(&f)]);
        assert_eq!(
            o.status.code(),
            Some(1),
            "no-batch={per_command}: {}",
            text(&o)
        );
        assert_eq!(
            env.snapshot(),
            before,
            "no-batch={per_command}: the failed apply left something behind"
        );
        assert!(!plan_exists(&env, "shift"));
    }
}
