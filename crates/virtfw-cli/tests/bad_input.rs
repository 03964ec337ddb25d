//! Bad input: a clear error naming what is at fault, exit 2 or 4, nothing applied, nothing lost.

mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;

fn refused(env: &Env, args: &[&str], code: i32, needle: &str) {
    let before = env.snapshot();
    let o = env.run(args);
    assert_eq!(o.status.code(), Some(code), "{}", text(&o));
    assert!(
        stderr(&o).contains(needle),
        "expected '{needle}' in: {}",
        text(&o)
    );
    assert_eq!(
        env.snapshot(),
        before,
        "a refused command changed the ruleset"
    );
}

#[test]
fn malformed_xml_names_file_and_line() {
    let env = Env::new("vfw-bad-xml");
    let f = env.write(
        "broken.xml",
        "<firewall backend='nftables'>\n  <group>\n    <action layer='ipv4'>\n</firewall>\n",
    );
    refused(&env, &["apply", path_of(&f)], 2, "broken.xml:4:");
}

#[test]
fn unknown_backend_layer_and_empty_args() {
    let env = Env::new("vfw-bad-model");
    let f = env.write("b.xml", "<firewall backend='pf'><group><action layer='ipv4'><args><item>x</item></args></action></group></firewall>");
    refused(
        &env,
        &["apply", path_of(&f)],
        2,
        "unknown firewall backend 'pf'",
    );
    let f = env.write("l.xml", "<firewall backend='nftables'><group><action layer='ipx'><args><item>x</item></args></action></group></firewall>");
    refused(
        &env,
        &["apply", path_of(&f)],
        2,
        "unknown firewall layer 'ipx'",
    );
    let f = env.write("e.xml", "<firewall backend='nftables'><group><action layer='ipv4'><args></args></action></group></firewall>");
    refused(&env, &["apply", path_of(&f)], 2, "e.xml:1:");
    let o = env.run(&["apply", "/nonexistent/x.xml"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(stderr(&o).contains("/nonexistent/x.xml"));
}

#[test]
fn missing_netns_applies_nothing() {
    let env = Env::new("vfw-bad-ns");
    let f = env.write("ok.xml", &nft_tx("ok", "tt"));
    let o = std::process::Command::new(BIN)
        .arg("--state-dir")
        .arg(env.state())
        .args(["--netns", "vfw-no-such-namespace", "apply", path_of(&f)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(stderr(&o).contains("vfw-no-such-namespace"), "{}", text(&o));
    assert!(!plan_exists(&env, "ok"));
}

#[test]
fn refused_command_rolls_everything_back_with_exit_1() {
    let env = Env::new("vfw-bad-refused");
    let before = env.snapshot();
    // Group 0 succeeds and does not inherit; group 1 fails: libvirt would leave group 0 applied,
    // virtfw's apply is all or nothing.
    let xml = format!(
        "<firewall backend='nftables'><group autoRollback='yes'>{}</group><group autoRollback='yes'>{}</group></firewall>",
        action("ipv4", &["add", "table", "ip", "ok1"]),
        action("ipv4", &["add", "rule", "ip", "nosuchtable", "c", "accept"]),
    );
    let f = env.write("refused.xml", &xml);
    let o = env.run(&["apply", path_of(&f)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("nosuchtable"), "{}", text(&o));
    assert_eq!(env.snapshot(), before);
    assert!(!plan_exists(&env, "refused"));
}

#[test]
fn duplicate_name_corrupt_and_unreadable_plans() {
    let env = Env::new("vfw-bad-plan");
    let f = env.write("p.xml", &nft_tx("p", "pt"));
    let o = env.run(&["apply", path_of(&f)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    refused(&env, &["apply", path_of(&f)], 4, "already stored");

    let plans = env.state().join("plans");
    std::fs::write(plans.join("junk.plan"), "{ not json").unwrap();
    refused(&env, &["remove", "junk"], 4, "junk.plan");
    refused(&env, &["show", "junk"], 4, "corrupt plan");
    assert!(plans.join("junk.plan").exists(), "corrupt plan was lost");
    std::fs::create_dir(plans.join("dir.plan")).unwrap();
    refused(&env, &["show", "dir"], 4, "unreadable");
    let o = env.run(&["list"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(
        stdout(&o).contains("CORRUPT") && stdout(&o).contains("p "),
        "{}",
        text(&o)
    );
    refused(
        &env,
        &["remove", "nosuch"],
        4,
        "no stored plan named 'nosuch'",
    );
    refused(&env, &["show", "../etc/passwd"], 2, "invalid plan name");
    // The good plan survived all that.
    let o = env.run(&["remove", "p"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn unsafe_state_dir_is_refused() {
    let env = Env::new("vfw-bad-state");
    let f = env.write("s.xml", &nft_tx("s", "st"));
    let state = env.state();
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(&env, &["apply", path_of(&f)], 4, "group or others write");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    refused(&env, &["apply", path_of(&f)], 4, "owned by uid 65534");
    refused(&env, &["list"], 4, "owned by uid 65534");
}

#[test]
fn stale_plan_is_flagged_not_run() {
    let env = Env::new("vfw-stale");
    let f = env.write("s.xml", &nft_tx("s", "st"));
    let o = env.run(&["apply", path_of(&f)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Pretend the plan was made in another boot.
    let p = env.state().join("plans/s.plan");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["boot_id"] = "00000000-0000-0000-0000-000000000000".into();
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    let o = env.run(&["list"]);
    assert!(
        stdout(&o).contains("stale: made before the last reboot"),
        "{}",
        text(&o)
    );
    let o = env.run(&["verify"]);
    assert!(stdout(&o).contains("STALE"), "{}", text(&o));
    let before = env.snapshot();
    refused(&env, &["remove", "s"], 4, "stale");
    assert_eq!(env.snapshot(), before);
    let o = env.run(&["remove", "--forget", "s"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!p.exists());
    env.ns.run(&["nft", "delete", "table", "ip", "st"]).unwrap();
}
