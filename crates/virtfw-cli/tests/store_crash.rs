//! The crash test against the library API: a program that applies through
//! `virtfw_store::Store` directly is killed with SIGKILL — at fixed points (a wrapper runs its
//! command and stalls, `common::Stall`) and at random moments — and then `Store::recover`
//! (called here, in the test process) must leave zero leaks: the ruleset as before and no
//! journal, or a complete plan that verifies and whose removal restores the ruleset. Both
//! backends; even runs on libvirt's per-command path, odd runs batched. Runs per backend:
//! `VIRTFW_CRASH_RUNS` (default 8).
//!
//! The program killed is this test binary itself, re-run as the ignored test
//! [`store_apply_child`] with its arguments in the environment: a library user, not the CLI.

mod common;
#[path = "support/kill.rs"]
mod kill;
use common::*;
use kill::{runs, spawn_and_kill, WRAPPED};

use std::path::Path;
use std::process::Command;

use virtfw::Firewall;
use virtfw_store::{PlanRow, Store, StoreOptions};

const CHILD_STATE: &str = "VIRTFW_STORE_CHILD_STATE";
const CHILD_NETNS: &str = "VIRTFW_STORE_CHILD_NETNS";
const CHILD_FILE: &str = "VIRTFW_STORE_CHILD_FILE";
const CHILD_NAME: &str = "VIRTFW_STORE_CHILD_NAME";
const CHILD_PER_COMMAND: &str = "VIRTFW_STORE_CHILD_PER_COMMAND";

fn store(env: &Env, per_command: bool) -> Store {
    Store::open(
        env.state(),
        StoreOptions::new()
            .netns(Some(env.ns.name().to_string()))
            .per_command(per_command),
    )
}

/// The library user that gets killed: open a store, apply the file, done. Run only by
/// [`crash_runs`] (ignored otherwise: without its environment it has nothing to apply).
#[test]
#[ignore = "the child the store crash tests kill; run by them"]
fn store_apply_child() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let store = Store::open(
        var(CHILD_STATE),
        StoreOptions::new()
            .netns(Some(var(CHILD_NETNS)))
            .per_command(var(CHILD_PER_COMMAND) == "1"),
    );
    let text = std::fs::read_to_string(var(CHILD_FILE)).unwrap();
    let mut fw = Firewall::from_xml(&text, &var(CHILD_FILE)).unwrap();
    store.apply(&mut fw, &var(CHILD_NAME)).unwrap();
}

fn child(env: &Env, file: &Path, name: &str, per_command: bool, path: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "store_apply_child", "--ignored", "--nocapture"])
        .env(CHILD_STATE, env.state())
        .env(CHILD_NETNS, env.ns.name())
        .env(CHILD_FILE, file)
        .env(CHILD_NAME, name)
        .env(CHILD_PER_COMMAND, if per_command { "1" } else { "0" })
        .env("PATH", path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd
}

/// `listings`: invocations before the first create (as in crash.rs).
fn crash_runs(env: &Env, file: &Path, name: &str, listings: u64) {
    let path = wrappers(env.dir.path(), WRAPPED);
    let before = env.snapshot();
    let mut rng = Rng::new();
    let (mut fixed_runs, mut undone_runs, mut completed) = (0, 0, 0);
    for run in 0..runs() {
        let per_command = run % 2 == 0;
        let mut cmd = child(env, file, name, per_command, &path);

        // Runs 0, 1, 4, 5, …: a fixed kill point; the others: a random moment.
        let fixed = (run / 2) % 2 == 0;
        let what = spawn_and_kill(
            env.dir.path(),
            &mut cmd,
            fixed,
            per_command,
            listings,
            &mut rng,
        );
        let store = store(env, per_command);
        let report = store.recover().unwrap();
        assert!(report.is_clean(), "run {run}: {report}");
        let undo_commands: usize = report.recovered.iter().map(|s| s.commands).sum();
        if fixed {
            fixed_runs += 1;
            assert!(
                undo_commands > 0,
                "run {run} ({what}): recover ran no undo command: {report}"
            );
            assert!(!plan_exists(env, name), "run {run}: a plan was stored");
        }
        if undo_commands > 0 {
            undone_runs += 1;
        }
        let listed = store.list().unwrap();
        assert_eq!(listed.pending_journals, 0, "run {run}");
        if plan_exists(env, name) {
            completed += 1;
            assert!(matches!(&listed.plans[..], [PlanRow::Stored(p)] if p.name == name));
            let verified = store.verify(&[name.to_string()]).unwrap();
            assert!(
                !verified.drift() && verified.problem.is_none(),
                "run {run}: stored plan incomplete: {verified}"
            );
            let removed = store.remove(name).unwrap();
            assert_eq!(removed.missing, 0, "run {run}: {removed}");
        } else {
            assert!(listed.plans.is_empty(), "run {run}: {listed}");
        }
        assert_eq!(
            env.snapshot(),
            before,
            "run {run}: leak or loss after recover"
        );
        let journals = std::fs::read_dir(env.state().join("journal"))
            .unwrap()
            .count();
        assert_eq!(journals, 0, "run {run}: journal left behind");
    }
    eprintln!(
        "{name}: {} runs through the store ({fixed_runs} at a fixed kill point), {undone_runs} undone by recover, {completed} completed",
        runs()
    );
    assert!(fixed_runs > 0 && undone_runs >= fixed_runs);
}

#[test]
fn store_crash_nftables() {
    let env = Env::new("vfw-scrash-nft");
    let file = env.write("c.xml", &nft_tx("scrashnft", "sct1"));
    crash_runs(&env, &file, "scrashnft", 1);
}

#[test]
fn store_crash_iptables() {
    let env = Env::new("vfw-scrash-ipt");
    env.prime_iptables();
    let file = env.write("c.xml", &ipt_tx("scrashipt", 4));
    crash_runs(&env, &file, "scrashipt", 0);
}
