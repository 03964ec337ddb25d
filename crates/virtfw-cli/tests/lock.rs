//! The state lock and the pending-journal guard, seen from a second virtfw: it waits for the
//! lock (and says so), gives up after `--lock-timeout` with a clear message and exit 4, and
//! refuses to change anything while an interrupted operation waits for `virtfw recover`.

mod common;
use common::*;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Take the state lock the way another virtfw would hold it (an exclusive flock on DIR/lock).
fn hold_lock(env: &Env) -> File {
    let o = env.run(&["list"]); // creates the state directory
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(env.state().join("lock"))
        .unwrap();
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "could not take the lock in the test");
    f
}

fn no_journal(env: &Env) -> bool {
    std::fs::read_dir(env.state().join("journal"))
        .unwrap()
        .next()
        .is_none()
}

#[test]
fn lock_timeout_is_exit_4_with_a_clear_message() {
    let env = Env::new("vfw-lock-to");
    let file = env.write("t.xml", &nft_tx("locked", "lt"));
    let net = env.write(
        "n.xml",
        "<network><name>locknet</name><bridge name='vflock0'/><forward/>\
         <ip address='10.77.0.1' prefix='24'/></network>",
    );
    let before = env.snapshot();
    let held = hold_lock(&env);
    let lock = env.state().join("lock");
    for args in [
        vec!["--lock-timeout", "1", "apply", path_of(&file)],
        vec![
            "--lock-timeout",
            "1",
            "network",
            "start",
            path_of(&net),
            "--backend",
            "nftables",
        ],
        vec!["--lock-timeout", "1", "recover"],
    ] {
        let t = Instant::now();
        let o = env.run(&args);
        assert_eq!(o.status.code(), Some(4), "{args:?}: {}", text(&o));
        assert!(t.elapsed() >= Duration::from_millis(900), "did not wait");
        let expected = format!(
            "virtfw: error: timed out after 1s waiting for the lock {} (another virtfw, or a firewall command it started, still runs)",
            lock.display()
        );
        assert!(stderr(&o).contains(&expected), "{args:?}: {}", text(&o));
    }
    // --json: the same error as a document, with its exit code.
    let o = env.run(&["--json", "--lock-timeout", "1", "apply", path_of(&file)]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exit_code"], 4, "{v}");
    assert!(v["error"].as_str().unwrap().contains("timed out after 1s"));
    drop(held);
    // Nothing was applied, started or journalled.
    assert_eq!(env.snapshot(), before);
    assert!(!plan_exists(&env, "locked"));
    assert!(!env.state().join("networks/locknet.xml").exists());
    assert!(env
        .ns
        .run(&["ip", "link", "show", "dev", "vflock0"])
        .is_err());
    assert!(no_journal(&env));
}

#[test]
fn a_second_virtfw_waits_for_the_lock_then_runs() {
    let env = Env::new("vfw-lock-wait");
    let file = env.write("t.xml", &nft_tx("waited", "lw"));
    let held = hold_lock(&env);
    let mut child = env
        .cmd(&["-v", "--lock-timeout", "60", "apply", path_of(&file)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the second virtfw did not wait for the lock"
    );
    assert!(
        !plan_exists(&env, "waited"),
        "it ran while the lock was held"
    );
    drop(held);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stderr(&o).contains("waiting for another virtfw"),
        "{}",
        text(&o)
    );
    assert!(plan_exists(&env, "waited"));
    let o = env.run(&["remove", "waited"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// A killed apply whose firewall command outlives it: the next virtfw waits for that command
/// (it holds the inherited lock), then refuses to run over the pending journal until `recover`.
#[test]
fn interrupted_operation_must_be_recovered_first() {
    let env = Env::new("vfw-lock-pending");
    let first = env.write("a.xml", &nft_tx("first", "pa"));
    let second = env.write("b.xml", &nft_tx("second", "pb"));
    let net = env.write(
        "n.xml",
        "<network><name>pendnet</name><bridge name='vfpend0'/><forward/>\
         <ip address='10.78.0.1' prefix='24'/></network>",
    );
    let before = env.snapshot();
    // An nft that takes 2 s: virtfw is killed while it runs.
    let bin = env.dir.path().join("slownft");
    std::fs::create_dir_all(&bin).unwrap();
    let nft = bin.join("nft");
    std::fs::write(
        &nft,
        format!("#!/bin/bash\nsleep 2\nexec {} \"$@\"\n", real("nft")),
    )
    .unwrap();
    std::fs::set_permissions(&nft, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = env
        .cmd(&["--no-batch", "apply", path_of(&first)])
        .env("PATH", &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until its first command has started (journalled), then kill virtfw only.
    let journal = env.state().join("journal");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let started = std::fs::read_dir(&journal).ok().and_then(|mut d| d.next());
        if let Some(Ok(dir)) = started {
            if std::fs::read_to_string(dir.path().join("log")).is_ok_and(|l| l.contains("start")) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "apply never started a command");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let pending = "an interrupted operation is pending in";
    for args in [
        vec!["apply", path_of(&second)],
        vec!["network", "start", path_of(&net), "--backend", "nftables"],
        vec!["remove", "first"],
    ] {
        let o = env.run(&args);
        assert_eq!(o.status.code(), Some(4), "{args:?}: {}", text(&o));
        assert!(
            stderr(&o).contains(pending) && stderr(&o).contains("run `virtfw recover` first"),
            "{args:?}: {}",
            text(&o)
        );
    }
    assert!(!plan_exists(&env, "second"));
    assert!(!env.state().join("networks/pendnet.xml").exists());
    let o = env.run(&["list"]);
    assert!(
        stdout(&o).contains("1 interrupted operation(s) pending: run `virtfw recover`"),
        "{}",
        text(&o)
    );

    let o = env.run(&["--json", "recover"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["recovered"][0]["kind"], "apply", "{v}");
    assert_eq!(
        v["recovered"][0]["action"], "rolled back the interrupted apply",
        "{v}"
    );
    // The table the killed command created after virtfw died is gone again.
    assert_eq!(env.snapshot(), before);
    assert!(no_journal(&env));
    let o = env.run(&["apply", path_of(&second)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = env.run(&["remove", "second"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(env.snapshot(), before);
}
