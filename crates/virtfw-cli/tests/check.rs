//! `virtfw apply --check`: the kernel is asked about every command (`nft -c`,
//! `iptables-restore --test`) and nothing changes — no rule, no plan, no journal — whether it
//! accepts the transaction (exit 0) or refuses a command (exit 1, naming it).

mod common;

use common::*;

fn check(env: &Env, file: &std::path::Path) -> std::process::Output {
    env.run(&["apply", path_of(file), "--check"])
}

#[test]
fn a_valid_transaction_checks_clean_and_changes_nothing() {
    for (backend, tx) in [
        ("nftables", nft_tx("chk", "vfchk")),
        ("iptables", ipt_tx("chk", 3)),
    ] {
        let env = Env::new("vfw-cli-check");
        let file = env.write("chk.xml", &tx);
        let before = env.snapshot();
        let o = check(&env, &file);
        assert_eq!(o.status.code(), Some(0), "{backend}: {}", text(&o));
        assert!(
            stdout(&o).contains("the kernel accepts all"),
            "{backend}: {}",
            text(&o)
        );
        assert_eq!(
            env.snapshot(),
            before,
            "{backend}: the check changed the ruleset"
        );
        assert!(!plan_exists(&env, "chk"), "{backend}: a plan was stored");
        // The JSON form is the same report.
        let o = env.run(&["--json", "apply", path_of(&file), "--check"]);
        assert_eq!(o.status.code(), Some(0), "{backend}: {}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["clean"], true, "{v}");
        assert_eq!(v["check"], "chk", "{v}");
    }
}

#[test]
fn a_refused_command_is_named_and_nothing_changes() {
    let nft =
        format!(
        "<firewall name='bad' backend='nftables'><group autoRollback='yes'>{}{}</group></firewall>",
        action("ipv4", &["add", "table", "ip", "vfbad"]),
        action("ipv4", &["add", "rule", "ip", "vfbad", "nosuchchain", "accept"]),
    );
    let ipt =
        format!(
        "<firewall name='bad' backend='iptables'><group autoRollback='yes'>{}{}</group></firewall>",
        action("ipv4", &["-A", "INPUT", "-s", "192.0.2.9", "-j", "ACCEPT"]),
        action("ipv4", &["-A", "INPUT", "-m", "nosuchmatch", "-j", "ACCEPT"]),
    );
    for (backend, tx, needle) in [
        ("nftables", nft, "nosuchchain"),
        ("iptables", ipt, "nosuchmatch"),
    ] {
        let env = Env::new("vfw-cli-check-bad");
        let file = env.write("bad.xml", &tx);
        let before = env.snapshot();
        let o = check(&env, &file);
        assert_eq!(o.status.code(), Some(1), "{backend}: {}", text(&o));
        let out = stdout(&o);
        assert!(
            out.contains("refused") && out.contains(needle),
            "{backend}: {out}"
        );
        assert!(out.contains("group 0 command 1"), "{backend}: {out}");
        assert_eq!(
            env.snapshot(),
            before,
            "{backend}: the check changed the ruleset"
        );
        assert!(!plan_exists(&env, "bad"), "{backend}");
    }
}
