//! Bounded everything, through the built binary in throwaway namespaces:
//!
//! * a firewall program that hangs is killed at `--child-timeout`, the apply is undone and the
//!   lock is free again (both backends, both apply paths);
//! * a state filesystem that fills up (a small tmpfs the test mounts as the state dir) stops
//!   the operation cleanly: nothing applied, or the journal kept for `recover`, which refuses
//!   to count errors as "already absent" while the disk is full and finishes once it is not;
//! * `recover` goes on past unreadable journals, reports them, and `recover --drop ID`
//!   discards one; `remove --forget` drops a corrupt plan.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The source address that makes the wrapped programs hang.
const MARK: &str = "10.66.66.66";

const PROGRAMS: &[&str] = &[
    "nft",
    "iptables",
    "ip6tables",
    "iptables-restore",
    "ip6tables-restore",
];

fn install(bin: &Path, program: &str, script: &str) {
    std::fs::create_dir_all(bin).unwrap();
    let p = bin.join(program);
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn path_with(bin: &Path) -> String {
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Wrappers that exec the real program, except for a create carrying `$VIRTFW_HANG_ON` (in
/// the argv, or in the input of `nft -f -` / `*-restore`; any command with `$VIRTFW_HANG_ANY`):
/// that one sleeps forever — at once, or with `$VIRTFW_HANG_AFTER` set after running the real
/// program (stuck after its commit, so only its echo file or `--check` can tell what it did).
/// Returns a PATH.
fn hanging_wrappers(dir: &Path) -> String {
    let bin = dir.join("hangbin");
    for &program in PROGRAMS {
        let real = real(program);
        let script = format!(
            "#!/bin/bash\n\
             creates=' (-ae|add|insert|-A|-I|--append|--insert) '\n\
             [ -n \"$VIRTFW_HANG_ANY\" ] && creates='.'\n\
             if [[ \" $* \" == *' -f '* || {program} == *-restore ]]; then\n\
             \x20 input=$(cat; echo x); input=${{input%x}}\n\
             \x20 if [[ \"$input\" == *\"$VIRTFW_HANG_ON\"* ]] && [[ \" ${{input//$'\\n'/ }} \" =~ $creates ]]; then\n\
             \x20   [ -n \"$VIRTFW_HANG_AFTER\" ] && {real} \"$@\" <<<\"$input\"\n\
             \x20   exec sleep 100000\n\
             \x20 fi\n\
             \x20 exec {real} \"$@\" <<<\"$input\"\n\
             fi\n\
             if [[ \" $* \" == *\"$VIRTFW_HANG_ON\"* && \" $* \" =~ $creates ]]; then\n\
             \x20 [ -n \"$VIRTFW_HANG_AFTER\" ] && {real} \"$@\"\n\
             \x20 exec sleep 100000\n\
             fi\n\
             exec {real} \"$@\"\n"
        );
        install(&bin, program, &script);
    }
    path_with(&bin)
}

/// The table the nftables transaction's last group creates; its create is the one that hangs.
const HANG_TABLE: &str = "vfbhang";

fn nft_tx() -> String {
    let a = |args: &[&str]| action("ipv4", args);
    format!(
        "<firewall name='bounded' backend='nftables'>\
         <group autoRollback='yes'>{}{}{}</group>\
         <group autoRollback='yes'><rollback inheritPrevious='yes'/>{}</group>\
         </firewall>",
        a(&["add", "table", "ip", "vfb"]),
        a(&[
            "add",
            "chain",
            "ip",
            "vfb",
            "fw",
            "{ type filter hook forward priority 0; policy accept; }"
        ]),
        a(&["add", "rule", "ip", "vfb", "fw", "ip", "saddr", "10.1.1.1", "accept"]),
        a(&["add", "table", "ip", HANG_TABLE]),
    )
}

fn ipt_tx() -> String {
    let a = |args: &[&str]| action("ipv4", args);
    let mark = format!("{MARK}/32");
    format!(
        "<firewall name='bounded' backend='iptables'>\
         <group autoRollback='yes'>{}{}</group>\
         <group autoRollback='yes'><rollback inheritPrevious='yes'/>{}</group>\
         </firewall>",
        a(&[
            "--table",
            "filter",
            "--append",
            "FORWARD",
            "--source",
            "10.1.1.1/32",
            "--jump",
            "ACCEPT"
        ]),
        a(&[
            "--table",
            "filter",
            "--insert",
            "INPUT",
            "--source",
            "10.1.1.1/32",
            "--jump",
            "ACCEPT"
        ]),
        a(&["--table", "filter", "--append", "FORWARD", "--source", &mark, "--jump", "ACCEPT"]),
    )
}

/// Objects of "someone else" that every test checks are left exactly as they were.
fn hand_made(env: &Env) {
    env.prime_iptables();
    for argv in [
        &["nft", "add", "table", "ip", "other"][..],
        &["nft", "add", "chain", "ip", "other", "c"],
        &[
            "nft", "add", "rule", "ip", "other", "c", "ip", "saddr", "10.5.5.5", "accept",
        ],
        &[
            "iptables",
            "-w",
            "-A",
            "FORWARD",
            "-s",
            "10.5.5.5/32",
            "-j",
            "ACCEPT",
        ],
    ] {
        env.ns.run(argv).unwrap();
    }
}

/// Run `virtfw ARGS`, check its exit status and that its stdout says `says`.
fn expect(env: &Env, args: &[&str], code: i32, says: &str) -> std::process::Output {
    let o = env.run(args);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {}", text(&o));
    assert!(stdout(&o).contains(says), "{args:?}: {says}: {}", text(&o));
    o
}

/// Check that the stderr of `o` says each of `needles`.
fn complains(o: &std::process::Output, what: &str, needles: &[&str]) {
    for needle in needles {
        assert!(stderr(o).contains(needle), "{what}: {needle}: {}", text(o));
    }
}

fn pending_journals(env: &Env) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(env.state().join("journal"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Each backend's transaction and the text that marks its hanging create.
fn backends() -> [(&'static str, String, &'static str); 2] {
    [
        ("nftables", nft_tx(), HANG_TABLE),
        ("iptables", ipt_tx(), MARK),
    ]
}

/// The transactions without the hanging create, plus a last group that the batch path runs
/// as a batch of its own (nft without auto-rollback; iptables not a create): so that on both
/// paths a command comes after the one during which the disk fills up.
fn full_disk_backends() -> [(&'static str, String); 2] {
    let last = |tx: String, action: String| {
        tx.replace(MARK, "10.1.1.2").replace(
            "</firewall>",
            &format!("<group>{action}</group></firewall>"),
        )
    };
    [
        (
            "nftables",
            last(
                nft_tx(),
                action(
                    "ipv4",
                    &[
                        "add", "rule", "ip", "vfb", "fw", "ip", "saddr", "10.1.1.3", "accept",
                    ],
                ),
            ),
        ),
        (
            "iptables",
            last(
                ipt_tx(),
                action("ipv4", &["--table", "filter", "--new-chain", "VFBC"]),
            ),
        ),
    ]
}

#[test]
fn a_hanging_child_is_killed_the_apply_undone_and_the_lock_freed() {
    for (backend, tx, hang_on) in backends() {
        for per_command in [true, false] {
            for after_commit in [false, true] {
                let what = format!(
                    "{backend}, per_command={per_command}, hangs after its commit={after_commit}"
                );
                let env = Env::new("vfbhang");
                hand_made(&env);
                let path = hanging_wrappers(env.dir.path());
                let file = env.write("tx.xml", &tx);
                let before = env.snapshot();
                let mut args = vec!["--child-timeout", "2"];
                if per_command {
                    args.push("--no-batch");
                }
                args.extend(["apply", path_of(&file)]);
                let mut cmd = env.cmd(&args);
                if !per_command {
                    // The test picks the path: its batch case stays batched under
                    // VIRTFW_NO_BATCH.
                    cmd.env_remove("VIRTFW_NO_BATCH");
                }
                cmd.env("PATH", &path).env("VIRTFW_HANG_ON", hang_on);
                if after_commit {
                    cmd.env("VIRTFW_HANG_AFTER", "1");
                }
                let o = cmd.output().unwrap();
                assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
                // The command that timed out: the hanging create, or the batch holding it.
                let culprit = match (per_command, backend) {
                    (true, _) => hang_on,
                    (false, "nftables") => "nft -ae -f -",
                    (false, _) => "iptables-restore",
                };
                complains(
                    &o,
                    &what,
                    &[
                        culprit,
                        "did not finish within 2s and was killed",
                        "rolled back",
                    ],
                );
                // Committed or not, what the killed command made is gone too (read from its
                // echo file, or found with --check), and nothing else was touched.
                assert_eq!(env.snapshot(), before, "{what}: ruleset changed");
                assert!(pending_journals(&env).is_empty(), "{what}: journal left");
                assert!(!plan_exists(&env, "bounded"), "{what}");
                // The killed child held the state lock; it is free again.
                expect(&env, &["--lock-timeout", "1", "list"], 0, "");
                // The variable sets the bound too.
                if per_command && !after_commit {
                    let o = env
                        .cmd(&args[2..])
                        .env("PATH", &path)
                        .env("VIRTFW_HANG_ON", hang_on)
                        .env("VIRTFW_CHILD_TIMEOUT", "1")
                        .output()
                        .unwrap();
                    assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
                    complains(&o, &what, &["within 1s"]);
                    assert_eq!(env.snapshot(), before, "{what}: ruleset changed");
                }
            }
        }
    }
}

#[test]
fn a_bad_child_timeout_is_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    for (flag, env) in [(Some("0"), None), (None, Some("soon"))] {
        let mut cmd = Command::new(BIN);
        cmd.arg("--state-dir").arg(&state);
        if let Some(f) = flag {
            cmd.args(["--child-timeout", f]);
        }
        if let Some(e) = env {
            cmd.env("VIRTFW_CHILD_TIMEOUT", e);
        }
        let o = cmd.arg("list").output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    }
}

/// A tmpfs mounted by the test, unmounted when dropped (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let o = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .unwrap();
        assert!(o.status.success(), "mount: {}", text(&o));
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Wrappers whose first invocation that is not a listing (the engine lists a table before it
/// creates it, to learn what exists) fills the filesystem of `$VIRTFW_FILL` to the last block,
/// runs the real program (its echo must still reach `N.out`: virtfw reserved the room before
/// the spawn), then writes more to stderr than virtfw reserved for it (the write fails when it
/// runs out of room), so that the room the command was given is used up when it exits: the
/// disk filled up while the operation ran. Returns a PATH.
fn filling_wrappers(dir: &Path) -> String {
    let bin = dir.join("fillbin");
    for &program in PROGRAMS {
        let real = real(program);
        let script = format!(
            "#!/bin/bash\n\
             if [ -n \"$VIRTFW_FILL\" ] && [[ \" $* \" != *\" list \"* ]] && mkdir \"$VIRTFW_FILL_MARK\" 2>/dev/null; then\n\
             \x20 dd if=/dev/zero of=\"$VIRTFW_FILL\" bs=4096 2>/dev/null\n\
             \x20 {real} \"$@\"; status=$?\n\
             \x20 head -c 1000000 /dev/zero | tr '\\0' x >&2\n\
             \x20 exit $status\n\
             fi\n\
             exec {real} \"$@\"\n"
        );
        install(&bin, program, &script);
    }
    path_with(&bin)
}

#[test]
fn a_full_state_filesystem_stops_cleanly_and_recover_waits_for_space() {
    for (backend, tx) in full_disk_backends() {
        for per_command in [true, false] {
            let what = format!("{backend}, per_command={per_command}");
            let env = Env::new("vfbfull");
            let _tmpfs = Tmpfs::mount(&env.state(), "2m");
            hand_made(&env);
            let path = filling_wrappers(env.dir.path());
            let file = env.write("tx.xml", &tx);
            // The state dir's layout first, while there is room.
            assert_eq!(env.run(&["list"]).status.code(), Some(0), "{what}");
            let before = env.snapshot();
            let fill = env.state().join("fill");
            let mut args = vec![];
            if per_command {
                args.push("--no-batch");
            }
            args.extend(["apply", path_of(&file)]);
            let o = env
                .cmd(&args)
                .env("PATH", &path)
                .env("VIRTFW_FILL", &fill)
                .env("VIRTFW_FILL_MARK", env.dir.path().join("filled"))
                .output()
                .unwrap();
            assert!(fill.exists(), "{what}: the wrappers did not fill the disk");
            assert_eq!(o.status.code(), Some(4), "{what}: {}", text(&o));
            assert!(!plan_exists(&env, "bounded"), "{what}");
            // The first command committed and its echo was recorded in the room reserved
            // for it; the next could not be recorded, so it did not run, and neither could
            // the undo: the journal is kept.
            let pending = pending_journals(&env);
            assert_eq!(pending.len(), 1, "{what}: {}", text(&o));
            complains(
                &o,
                &what,
                &["is kept: run `virtfw recover`", "No space left"],
            );
            assert_ne!(env.snapshot(), before, "{what}: nothing was applied");
            // Still full: recover refuses to count its failures as "already absent".
            let o = env.run(&["--json", "recover"]);
            assert_eq!(o.status.code(), Some(4), "{what}: {}", text(&o));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["unsettled"].as_array().unwrap().len(), 1, "{what}: {v}");
            assert!(v["recovered"].as_array().unwrap().is_empty(), "{what}: {v}");
            assert_eq!(pending_journals(&env), pending, "{what}: journal lost");
            assert_ne!(env.snapshot(), before, "{what}: rules gone while full?");
            // Writers refuse meanwhile, naming the journal.
            let o = env.run(&["apply", path_of(&file), "--name", "again"]);
            assert_eq!(o.status.code(), Some(4), "{what}: {}", text(&o));
            complains(&o, &what, &[&pending[0]]);
            // Room again: recover removes our rules and nothing else.
            std::fs::remove_file(&fill).unwrap();
            let o = env.run(&["recover"]);
            assert_eq!(o.status.code(), Some(0), "{what}: {}", text(&o));
            assert!(pending_journals(&env).is_empty(), "{what}");
            assert_eq!(env.snapshot(), before, "{what}: ruleset changed");
            assert!(!plan_exists(&env, "bounded"), "{what}");
        }
    }
}

/// Kill an apply after its first create took effect (invocation 2: the engine's listing of
/// the table comes first), leaving a journal to recover.
fn interrupted_apply(env: &Env, file: &Path) {
    let path = wrappers(env.dir.path(), PROGRAMS);
    let stall = Stall::new(env.dir.path());
    let mut cmd = env.cmd(&["--no-batch", "apply", path_of(file)]);
    cmd.env("PATH", &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    stall.arm(&mut cmd, 2, None);
    let mut child = cmd.spawn().unwrap();
    let stalled = stall.wait(&mut child);
    stall.kill(&mut child, stalled);
}

#[test]
fn an_undo_command_that_hangs_stops_recover_and_keeps_the_journal() {
    let env = Env::new("vfbrhang");
    hand_made(&env);
    let before = env.snapshot();
    let file = env.write("tx.xml", &nft_tx());
    interrupted_apply(&env, &file);
    let pending = pending_journals(&env);
    assert_eq!(pending.len(), 1, "{pending:?}");
    let path = hanging_wrappers(env.dir.path());
    let o = env
        .cmd(&["--child-timeout", "1", "--json", "recover"])
        .env("PATH", &path)
        .env("VIRTFW_HANG_ON", "delete")
        .env("VIRTFW_HANG_ANY", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let error = v["unsettled"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("undo stopped at `nft delete"), "{v}");
    assert!(error.contains("did not finish within 1s"), "{v}");
    assert!(v["recovered"].as_array().unwrap().is_empty(), "{v}");
    // Kept, not counted as "already absent"; the killed child's lock is free again.
    assert_eq!(pending_journals(&env), pending);
    assert_ne!(env.snapshot(), before);
    let o = expect(&env, &["--lock-timeout", "1", "--json", "recover"], 0, "");
    assert!(recovered_commands(&o) > 0, "{}", text(&o));
    assert!(pending_journals(&env).is_empty());
    assert_eq!(env.snapshot(), before, "ruleset changed");
}

#[test]
fn recover_goes_past_unreadable_journals_and_drop_discards_them() {
    let env = Env::new("vfbjrn");
    hand_made(&env);
    let before = env.snapshot();
    let file = env.write("tx.xml", &nft_tx());
    interrupted_apply(&env, &file);
    let valid = pending_journals(&env);
    assert_eq!(valid.len(), 1, "{valid:?}");
    assert_ne!(
        env.snapshot(),
        before,
        "the interrupted apply changed nothing"
    );
    // Three unreadable journals, sorted before the valid one.
    let jdir = env.state().join("journal");
    std::fs::create_dir(jdir.join("0000-corrupt")).unwrap();
    std::fs::write(jdir.join("0000-corrupt/op.json"), "{not json").unwrap();
    std::fs::create_dir(jdir.join("0001-empty")).unwrap();
    std::fs::create_dir(jdir.join("0002-newer")).unwrap();
    let header = std::fs::read_to_string(jdir.join(&valid[0]).join("op.json")).unwrap();
    let mut newer: serde_json::Value = serde_json::from_str(&header).unwrap();
    newer["version"] = 2.into();
    std::fs::write(jdir.join("0002-newer/op.json"), newer.to_string()).unwrap();

    // Writers refuse, naming the journal and both ways out.
    let o = env.run(&["apply", path_of(&file), "--name", "other"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    complains(
        &o,
        "writer",
        &[
            "0000-corrupt",
            "run `virtfw recover` first",
            "`virtfw recover --drop 0000-corrupt`",
        ],
    );

    // recover settles the valid one behind them and reports each unreadable one.
    let o = env.run(&["--json", "recover"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(recovered_commands(&o) > 0, "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let unsettled: Vec<&str> = v["unsettled"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["op_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        unsettled,
        ["0000-corrupt", "0001-empty", "0002-newer"],
        "{v}"
    );
    assert!(v["unsettled"][2]["error"]
        .as_str()
        .unwrap()
        .contains("version 2"));
    assert_eq!(env.snapshot(), before, "the valid journal was not undone");
    assert_eq!(
        pending_journals(&env),
        ["0000-corrupt", "0001-empty", "0002-newer"]
    );
    expect(&env, &["recover"], 4, "journal 0001-empty NOT settled");

    // Dropping them one by one, saying what each was.
    expect(
        &env,
        &["recover", "--drop", "0000-corrupt"],
        0,
        "dropped unreadable journal 0000-corrupt",
    );
    expect(&env, &["recover", "--drop", "no-such-journal"], 4, "");
    for id in ["0001-empty", "0002-newer"] {
        let o = expect(&env, &["--json", "recover", "--drop", id], 0, "");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["dropped"], id, "{v}");
    }
    assert!(pending_journals(&env).is_empty());
    expect(&env, &["recover"], 0, "nothing to recover");

    // A readable journal dropped says what it was (and runs nothing).
    interrupted_apply(&env, &file);
    let id = pending_journals(&env).remove(0);
    let says = format!("dropped journal {id}: apply bounded");
    expect(&env, &["recover", "--drop", &id], 0, &says);
    assert_ne!(env.snapshot(), before, "--drop ran something");

    // Writers work again.
    let other = env.write("other.xml", &nft_tx().replace("vfb", "vfbo"));
    expect(
        &env,
        &["apply", path_of(&other), "--name", "again"],
        0,
        "applied again",
    );
}

#[test]
fn forget_drops_a_corrupt_or_unreadable_plan() {
    let env = Env::new("vfbfgt");
    let file = env.write("tx.xml", &nft_tx().replace(MARK, "10.1.1.2"));
    let o = env.run(&["apply", path_of(&file)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let plan = env.state().join("plans/bounded.plan");
    for garbage in ["{\"version\": 1, \"name\":", ""] {
        std::fs::write(&plan, garbage).unwrap();
        let o = env.run(&["remove", "bounded"]);
        assert_eq!(o.status.code(), Some(4), "{}", text(&o));
        assert!(plan.exists());
        let says = "forgot unreadable plan bounded";
        expect(&env, &["remove", "bounded", "--forget"], 0, says);
        assert!(!plan.exists());
        let o = env.run(&["remove", "bounded", "--forget"]);
        assert_eq!(o.status.code(), Some(4), "no plan left: {}", text(&o));
    }
}
