//! Kill `virtfw apply` with SIGKILL at random moments; after `virtfw recover` the ruleset is
//! the pre-apply one, or the plan is complete and `remove` restores it. Zero leaks.
//!
//! Wrapper `nft`/`iptables`/`ip6tables` scripts first on PATH sleep a random short time before
//! exec'ing the real program, so kills land before, during and after commands, and children
//! outlive the killed virtfw. Runs per backend: `VIRTFW_CRASH_RUNS` (default 8; use 50+ by hand).

mod common;
use common::*;

use std::path::Path;
use std::time::Duration;

fn runs() -> usize {
    std::env::var("VIRTFW_CRASH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

fn crash_runs(env: &Env, file: &Path, name: &str) {
    let path = wrappers(env.dir.path(), &["nft", "iptables", "ip6tables"]);
    let before = env.snapshot();
    let mut rng = Rng::new();
    let (mut rolled_back, mut completed, mut recovered_with_undo) = (0, 0, 0);
    for run in 0..runs() {
        // Even runs: libvirt's one process per command; odd runs: the engine's batches.
        let mut args = vec!["apply", path_of(file)];
        if run % 2 == 0 {
            args.insert(0, "--no-batch");
        }
        let mut child = env
            .cmd(&args)
            .env("PATH", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // An apply of 7 commands takes ~0.2-0.4 s with the wrappers: kill anywhere in it
        // (sometimes after it finished).
        std::thread::sleep(Duration::from_millis(rng.below(450)));
        let _ = child.kill();
        let _ = child.wait();
        let o = env
            .cmd(&["--json", "recover"])
            .env("PATH", &path)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "run {run}: {}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        for s in v["recovered"].as_array().unwrap() {
            if s["commands"].as_u64().unwrap() > 0 {
                recovered_with_undo += 1;
            }
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
            "run {run}: leak or loss after recover"
        );
        let journals = std::fs::read_dir(env.state().join("journal"))
            .unwrap()
            .count();
        assert_eq!(journals, 0, "run {run}: journal left behind");
    }
    eprintln!(
        "{name}: {} runs, {rolled_back} rolled back ({recovered_with_undo} by recover running undo commands), {completed} completed",
        runs()
    );
    if runs() >= 20 {
        assert!(recovered_with_undo > 0, "no run exercised a real recovery");
    }
}

#[test]
fn crash_nftables() {
    let env = Env::new("vfw-crash-nft");
    let file = env.write("c.xml", &nft_tx("crashnft", "ct1"));
    crash_runs(&env, &file, "crashnft");
}

#[test]
fn crash_iptables() {
    let env = Env::new("vfw-crash-ipt");
    env.prime_iptables();
    let file = env.write("c.xml", &ipt_tx("crashipt", 3));
    crash_runs(&env, &file, "crashipt");
}
