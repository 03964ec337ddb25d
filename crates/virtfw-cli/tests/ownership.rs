//! Issue 8 through the built `virtfw` binary: what an apply did not create is never removed —
//! by `remove`, by the undo of a failed apply, or by `recover` after kill -9 — and `verify`
//! without nft is an error, not drift. Both apply paths (`--no-batch` and the batches); every
//! scenario compares `nft -s list ruleset` with what it was before.

mod common;
use common::*;

use std::path::Path;

fn ruleset(env: &Env) -> String {
    env.ns.run(&["nft", "-s", "list", "ruleset"]).unwrap()
}

/// Run `virtfw [--no-batch] ARGS…` and return its output.
fn vfw(env: &Env, per_command: bool, args: &[&str]) -> std::process::Output {
    let mut all: Vec<&str> = Vec::new();
    if per_command {
        all.push("--no-batch");
    }
    all.extend(args);
    env.run(&all)
}

/// [`vfw`], which must exit 0.
fn ok(env: &Env, per_command: bool, args: &[&str]) -> std::process::Output {
    let o = vfw(env, per_command, args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    o
}

fn nft_script(env: &Env, script: &str) {
    let path = env.write("hand.nft", script);
    env.ns.run(&["nft", "-f", path_of(&path)]).unwrap();
}

fn tx(name: &str, actions: &[&[&str]]) -> String {
    let body: String = actions.iter().map(|a| action("ipv4", a)).collect();
    format!(
        "<firewall name='{name}' backend='nftables'><group autoRollback='yes'>{body}</group></firewall>"
    )
}

const WEB_CHAIN: &[&str] = &[
    "add",
    "chain",
    "inet",
    "myweb",
    "input",
    "{ type filter hook input priority 0; policy accept; }",
];
const WEB_RULE: &[&str] = &[
    "add", "rule", "inet", "myweb", "input", "tcp", "dport", "80", "accept",
];

fn web_xml() -> String {
    tx(
        "web",
        &[&["add", "table", "inet", "myweb"], WEB_CHAIN, WEB_RULE],
    )
}

/// Someone else's tables, made first so that the low table handles are theirs.
const DECOYS: &str = "add table ip decoy\nadd table inet decoy6\n\
    add chain ip decoy c { type filter hook output priority 0; policy accept; }\n\
    add rule ip decoy c counter accept\n";

/// The removal commands of stored plan `name`.
fn plan_deletes(env: &Env, name: &str) -> Vec<String> {
    let o = env.run(&["--json", "show", name]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let xml = v["removal"].as_str().unwrap_or_else(|| panic!("{v}"));
    let fw = virtfw::Firewall::from_xml(xml, "plan").unwrap();
    fw.groups()
        .iter()
        .flat_map(|g| g.actions())
        .map(|c| c.args().join(" "))
        .collect()
}

/// Item 1: `apply web.xml --name web`, then `--name web2`: web2 succeeds with a plan that
/// deletes only its own rule; removing web2 then web restores the ruleset.
#[test]
fn same_transaction_under_two_names() {
    for per_command in [true, false] {
        let env = Env::new("vfw-cli-own-twice");
        nft_script(&env, DECOYS);
        let file = env.write("web.xml", &web_xml());
        let before = ruleset(&env);
        ok(
            &env,
            per_command,
            &["apply", path_of(&file), "--name", "web"],
        );
        let after_web = ruleset(&env);
        ok(
            &env,
            per_command,
            &["apply", path_of(&file), "--name", "web2"],
        );
        let deletes = plan_deletes(&env, "web2");
        assert_eq!(deletes.len(), 1, "{deletes:?}");
        assert!(deletes[0].starts_with("delete rule inet myweb input handle "));
        ok(&env, per_command, &["remove", "web2"]);
        assert_eq!(ruleset(&env), after_web, "per_command={per_command}");
        ok(&env, per_command, &["remove", "web"]);
        assert_eq!(ruleset(&env), before, "per_command={per_command}");
    }
}

/// Item 1: the re-add followed by a failing command exits 1 and leaves web's objects; in the
/// other order (web removed first) web2's removal finds its rule already gone.
#[test]
fn failed_re_add_and_removal_in_the_other_order() {
    for per_command in [true, false] {
        let env = Env::new("vfw-cli-own-fail");
        nft_script(&env, DECOYS);
        let file = env.write("web.xml", &web_xml());
        let failing = env.write(
            "web-fail.xml",
            &tx(
                "web2",
                &[
                    &["add", "table", "inet", "myweb"],
                    WEB_CHAIN,
                    WEB_RULE,
                    &["add", "rule", "inet", "myweb", "input", "jump", "nosuch"],
                ],
            ),
        );
        let before = ruleset(&env);
        ok(
            &env,
            per_command,
            &["apply", path_of(&file), "--name", "web"],
        );
        let after_web = ruleset(&env);
        let o = vfw(
            &env,
            per_command,
            &["apply", path_of(&failing), "--name", "web2"],
        );
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert_eq!(ruleset(&env), after_web, "per_command={per_command}");
        assert!(!plan_exists(&env, "web2"));

        ok(
            &env,
            per_command,
            &["apply", path_of(&file), "--name", "web2"],
        );
        ok(&env, per_command, &["remove", "web"]);
        assert_eq!(ruleset(&env), before);
        let o = ok(&env, per_command, &["remove", "web2"]);
        assert!(
            stdout(&o).contains("1 object(s) were already gone"),
            "{}",
            text(&o)
        );
        assert_eq!(ruleset(&env), before, "per_command={per_command}");
    }
}

/// Item 10, nft half: `verify` when nft cannot be run is an error (exit 4), never drift.
#[test]
fn verify_without_nft_is_an_error_not_drift() {
    let env = Env::new("vfw-cli-own-verify");
    let file = env.write("web.xml", &web_xml());
    let o = env.run(&["apply", path_of(&file), "--name", "web"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // A PATH holding `ip` (and nothing else).
    let bin = env.dir.path().join("no-nft-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(real("ip"), bin.join("ip")).unwrap();
    let o = env
        .cmd(&["verify", "web"])
        .env("PATH", &bin)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(all.contains("cannot run nft"), "{}", text(&o));
    assert!(!all.contains("missing"), "{}", text(&o));
    let o = env
        .cmd(&["--json", "verify", "web"])
        .env("PATH", &bin)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    // The report, then the error.
    let v: serde_json::Value = serde_json::Deserializer::from_slice(&o.stdout)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(v["missing"], 0, "{v}");
    assert!(v["plans"][0]["report"]["error"]
        .as_str()
        .is_some_and(|e| e.contains("cannot run nft")));
    // With nft back, the plan verifies.
    let o = env.run(&["verify", "web"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// A hand-made table and chain holding a set, elements and rules.
const HAND_MADE: &str = "add table ip hm\n\
    add set ip hm s { type ipv4_addr; elements = { 10.9.9.9, 10.8.8.8 }; }\n\
    add chain ip hm c { type filter hook input priority 0; policy accept; }\n\
    add rule ip hm c ip saddr @s counter accept\n";

fn hand_made_tx() -> String {
    tx(
        "hm",
        &[
            &["add", "table", "ip", "hm"],
            &["add", "chain", "ip", "hm", "c"],
            &["add", "chain", "ip", "hm", "mine"],
            &["add", "rule", "ip", "hm", "mine", "accept"],
            &["add", "rule", "ip", "hm", "c", "jump", "mine"],
        ],
    )
}

/// kill -9 of `apply` at a fixed point, then `recover`: the ruleset is what it was.
fn kill_and_recover(env: &Env, file: &Path, per_command: bool, at: u64) -> u64 {
    let path = wrappers(env.dir.path(), &["nft"]);
    let mut args = vec!["apply", path_of(file)];
    if per_command {
        args.insert(0, "--no-batch");
    }
    let mut cmd = env.cmd(&args);
    cmd.env("PATH", &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let stall = Stall::new(env.dir.path());
    stall.arm(&mut cmd, at, Some("nft"));
    let mut child = cmd.spawn().unwrap();
    let stalled = stall.wait(&mut child);
    stall.kill(&mut child, stalled);
    let o = env.cmd(&["--json", "recover"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    recovered_commands(&o)
}

/// kill -9 just after the idempotent `add chain` of the hand-made chain ran (nft echoed its
/// old handle into the journal), and later; `recover` leaves the hand-made objects and removes
/// ours. Handles are arranged so that a positional pairing would hit someone else's table.
#[test]
fn recover_after_kill_keeps_hand_made_objects() {
    // Per-command invocations of nft: 1 listing, 2 `add table` (existing, silent), 3 `add
    // chain c` (existing, old handle), 4 `create chain mine`, 5 its rule, 6 the jump.
    for (per_command, at, ours) in [(true, 3, 0), (true, 5, 2), (true, 6, 3), (false, 2, 3)] {
        let env = Env::new("vfw-cli-own-kill");
        nft_script(&env, DECOYS);
        nft_script(&env, HAND_MADE);
        let file = env.write("hm.xml", &hand_made_tx());
        let before = ruleset(&env);
        let undone = kill_and_recover(&env, &file, per_command, at);
        assert_eq!(
            undone, ours,
            "per_command={per_command}, killed after nft invocation {at}"
        );
        assert_eq!(
            ruleset(&env),
            before,
            "per_command={per_command}, killed after nft invocation {at}"
        );
        assert!(!plan_exists(&env, "hm"));
    }
}

/// Apply + remove of the hand-made transaction through the CLI, both paths.
#[test]
fn hand_made_objects_survive_apply_and_remove() {
    for per_command in [true, false] {
        let env = Env::new("vfw-cli-own-hand");
        nft_script(&env, DECOYS);
        nft_script(&env, HAND_MADE);
        let file = env.write("hm.xml", &hand_made_tx());
        let before = ruleset(&env);
        ok(&env, per_command, &["apply", path_of(&file)]);
        assert_eq!(plan_deletes(&env, "hm").len(), 3);
        ok(&env, per_command, &["remove", "hm"]);
        assert_eq!(ruleset(&env), before, "per_command={per_command}");
    }
}

/// An `nft` whose echo is lost (as when its output file cannot be written): the create
/// committed but its handle is unknown. virtfw never guesses: `apply` exits 4 and keeps its
/// journal, and `recover` refuses the same way instead of dropping it; nothing else is
/// touched.
#[test]
fn lost_echo_keeps_the_journal_and_exits_4() {
    for per_command in [true, false] {
        let env = Env::new("vfw-cli-own-echo");
        nft_script(&env, DECOYS);
        let before = ruleset(&env);
        let file = env.write("web.xml", &web_xml());
        let bin = env.dir.path().join("lost-echo");
        std::fs::create_dir_all(&bin).unwrap();
        let script = format!(
            "#!/bin/bash\ncase \" $* \" in *\" -ae \"*) exec {nft} \"$@\" >/dev/null ;; esac\nexec {nft} \"$@\"\n",
            nft = real("nft")
        );
        let wrapper = bin.join("nft");
        std::fs::write(&wrapper, script).unwrap();
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let mut args = vec!["apply", path_of(&file), "--name", "web"];
        if per_command {
            args.insert(0, "--no-batch");
        }
        let o = env.cmd(&args).env("PATH", &path).output().unwrap();
        assert_eq!(o.status.code(), Some(4), "{}", text(&o));
        assert!(stderr(&o).contains("echo"), "{}", text(&o));
        assert!(!plan_exists(&env, "web"));
        let journals = || {
            std::fs::read_dir(env.state().join("journal"))
                .unwrap()
                .count()
        };
        assert_eq!(journals(), 1, "the journal is kept");
        let o = env.cmd(&["recover"]).env("PATH", &path).output().unwrap();
        assert_eq!(o.status.code(), Some(4), "{}", text(&o));
        assert_eq!(journals(), 1, "recover keeps it too");
        // What existed before is untouched; the object with the unknown handle is reported,
        // not deleted by guess.
        let now = ruleset(&env);
        assert!(now.contains("table inet myweb"), "{now}");
        env.ns
            .run(&["nft", "delete", "table", "inet", "myweb"])
            .unwrap();
        assert_eq!(ruleset(&env), before, "per_command={per_command}");
    }
}
