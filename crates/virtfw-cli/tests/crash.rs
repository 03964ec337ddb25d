//! Kill `virtfw apply` with SIGKILL; after `virtfw recover` the ruleset is the pre-apply one,
//! or the plan is complete and `remove` restores it. Zero leaks.
//!
//! Wrapper `nft`/`iptables`/`ip6tables`/`*-restore` scripts first on PATH sleep a random short
//! time before exec'ing the real program, so kills land before, during and after commands, and
//! children outlive the killed virtfw. Half of the runs kill at a random moment; the other half
//! at a fixed point: a wrapper runs its command and stalls (see `common::Stall`), and virtfw is
//! killed then, so every run of the test proves that a half-applied transaction is recovered
//! (recover runs undo commands, no plan is stored). Runs per backend: `VIRTFW_CRASH_RUNS`
//! (default 8; use 50+ by hand).

mod common;
#[path = "support/kill.rs"]
mod kill;
use common::*;
use kill::{runs, spawn_and_kill, WRAPPED};

use std::path::Path;

/// `listings`: invocations before the first create that change nothing (the engine lists a
/// table before its first `add table`/`add chain` in it: one per nft table touched).
fn crash_runs(env: &Env, file: &Path, name: &str, listings: u64) {
    let path = wrappers(env.dir.path(), WRAPPED);
    let before = env.snapshot();
    let mut rng = Rng::new();
    let (mut rolled_back, mut completed, mut recovered_with_undo) = (0, 0, 0);
    let mut fixed_runs = 0;
    for run in 0..runs() {
        // Even runs: libvirt's one process per command; odd runs: the engine's batches.
        let per_command = run % 2 == 0;
        let mut args = vec!["apply", path_of(file)];
        if per_command {
            args.insert(0, "--no-batch");
        }
        let mut cmd = env.cmd(&args);
        cmd.env("PATH", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
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
        let o = env
            .cmd(&["--json", "recover"])
            .env("PATH", &path)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "run {run}: {}", text(&o));
        let undone = recovered_commands(&o);
        if undone > 0 {
            recovered_with_undo += 1;
        }
        if fixed {
            // The stalled command changed the ruleset and virtfw died before storing a plan:
            // recovery must have found and undone that half-applied transaction.
            fixed_runs += 1;
            assert!(
                undone > 0,
                "run {run} ({what}): recover ran no undo command: {}",
                text(&o)
            );
            assert!(
                !plan_exists(env, name),
                "run {run} ({what}): a plan was stored"
            );
        }
        if plan_exists(env, name) {
            completed += 1;
            let o = env.run(&["verify", name]);
            assert_eq!(
                o.status.code(),
                Some(0),
                "run {run}: stored plan incomplete: {}",
                text(&o)
            );
            let o = env.run(&["remove", name]);
            assert_eq!(o.status.code(), Some(0), "run {run}: {}", text(&o));
            assert!(
                stdout(&o).contains(" 0 object(s) were already gone"),
                "run {run}: {}",
                text(&o)
            );
        } else {
            rolled_back += 1;
        }
        assert_eq!(
            env.snapshot(),
            before,
            "run {run} ({what}): leak or loss after recover"
        );
        let journals = std::fs::read_dir(env.state().join("journal"))
            .unwrap()
            .count();
        assert_eq!(journals, 0, "run {run}: journal left behind");
    }
    eprintln!(
        "{name}: {} runs ({fixed_runs} at a fixed kill point), {rolled_back} rolled back ({recovered_with_undo} by recover running undo commands), {completed} completed",
        runs()
    );
    assert!(
        recovered_with_undo >= fixed_runs && fixed_runs > 0,
        "no run exercised a real recovery"
    );
}

#[test]
fn crash_nftables() {
    let env = Env::new("vfw-crash-nft");
    let file = env.write("c.xml", &nft_tx("crashnft", "ct1"));
    crash_runs(&env, &file, "crashnft", 1);
}

#[test]
fn crash_iptables() {
    let env = Env::new("vfw-crash-ipt");
    env.prime_iptables();
    let file = env.write("c.xml", &ipt_tx("crashipt", 3));
    crash_runs(&env, &file, "crashipt", 0);
}
