//! A quick measurement of [`LibnftExecutor`] against the `nft` process, in throwaway namespaces
//! (needs root): N rules applied as one `nft -ae -f -` batch with their handles read back, then
//! removed as one `nft -f -` batch of `delete … handle H`; and the same through the engine (an
//! AUTO_ROLLBACK transaction and its removal plan). Prints medians in milliseconds.
//!
//! ```text
//! cargo run --release -p virtfw --example libnft_speed [N…]   # default: 1000 10000
//! ```
//!
//! The project's benchmark (`virtfw-bench`) is the reference for published numbers; this is
//! the executor's own sanity check.

use std::time::{Duration, Instant};

use virtfw::executor::Invocation;
use virtfw::netns::Netns;
use virtfw::{ApplyOptions, Backend, Executor, Firewall, Layer, LibnftExecutor, TransactionFlags};

fn run(exec: &dyn Executor, argv: &[&str], stdin: Option<&str>) -> String {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let out = exec
        .run(Invocation {
            argv: &argv,
            stdin: stdin.map(str::as_bytes),
        })
        .expect("runs");
    assert!(out.success(), "{}: {}", argv.join(" "), out.stderr);
    out.stdout
}

fn rule(i: usize) -> String {
    format!(
        "ip saddr 10.{}.{}.{} tcp dport {} accept",
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255,
        1024 + i % 60000
    )
}

fn setup(ns: &Netns) {
    ns.run(&["nft", "add", "table", "ip", "T"]).unwrap();
    ns.run(&[
        "nft",
        "add",
        "chain",
        "ip",
        "T",
        "C",
        "{ type filter hook forward priority 0; policy accept; }",
    ])
    .unwrap();
}

/// Times of one raw round: apply with handles, removal.
fn raw_round(exec: &dyn Executor, n: usize) -> (Duration, Duration) {
    let input: String = (0..n)
        .map(|i| format!("add rule ip T C {}\n", rule(i)))
        .collect();
    let t = Instant::now();
    let echo = run(exec, &["nft", "-ae", "-f", "-"], Some(&input));
    let handles: Vec<&str> = echo
        .lines()
        .filter_map(|l| l.rsplit_once(" # handle ").map(|(_, h)| h))
        .collect();
    let apply = t.elapsed();
    assert_eq!(handles.len(), n);
    let removal: String = handles
        .iter()
        .map(|h| format!("delete rule ip T C handle {h}\n"))
        .collect();
    let t = Instant::now();
    run(exec, &["nft", "-f", "-"], Some(&removal));
    (apply, t.elapsed())
}

fn firewall(n: usize) -> Firewall {
    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    for i in 0..n {
        let mut args: Vec<String> = ["add", "rule", "ip", "T", "C"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(rule(i).split(' ').map(String::from));
        fw.add_cmd(Layer::Ipv4, args);
    }
    fw
}

/// Times of one engine round: apply, removal.
fn engine_round(exec: &dyn Executor, n: usize) -> (Duration, Duration) {
    let mut fw = firewall(n);
    let opts = ApplyOptions::new().per_command(false);
    let t = Instant::now();
    fw.apply_with(exec, opts).expect("apply");
    let apply = t.elapsed();
    let mut removal = fw.new_from_rollback().expect("removal plan");
    let t = Instant::now();
    removal.apply_with(exec, opts).expect("removal");
    (apply, t.elapsed())
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("N"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1000, 10000]
    } else {
        sizes
    };
    println!(
        "{:>6} {:>8} {:<8} {:>9} {:>9} {:>9} {:>9}",
        "N", "path", "executor", "init", "apply", "remove", "close"
    );
    for n in sizes {
        let rounds = if n >= 10000 { 3 } else { 7 };
        for engine in [false, true] {
            for in_process in [false, true] {
                let (mut init, mut apply, mut remove, mut close) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for _ in 0..rounds {
                    let ns = Netns::new("vfspeed").unwrap();
                    setup(&ns);
                    let t = Instant::now();
                    let (exec, process): (Option<LibnftExecutor>, _) = if in_process {
                        let e = LibnftExecutor::in_netns(ns.name()).unwrap();
                        assert!(e.is_in_process(), "libnftables not loaded");
                        (Some(e), None)
                    } else {
                        (None, Some(ns.executor().unwrap()))
                    };
                    init.push(t.elapsed());
                    let dyn_exec: &dyn Executor = match (&exec, &process) {
                        (Some(e), _) => e,
                        (_, Some(p)) => p,
                        _ => unreachable!(),
                    };
                    let (a, r) = if engine {
                        engine_round(dyn_exec, n)
                    } else {
                        raw_round(dyn_exec, n)
                    };
                    apply.push(a);
                    remove.push(r);
                    let t = Instant::now();
                    if let Some(e) = exec {
                        e.close();
                    }
                    close.push(t.elapsed());
                    let left = ns.run(&["nft", "list", "chain", "ip", "T", "C"]).unwrap();
                    assert!(!left.contains("saddr"), "rules left behind");
                }
                println!(
                    "{n:>6} {:>8} {:<8} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                    if engine { "engine" } else { "raw" },
                    if in_process { "libnft" } else { "process" },
                    median(init),
                    median(apply),
                    median(remove),
                    median(close),
                );
            }
        }
    }
    // Dropping (not closing) leaves the grace period to the worker thread.
    let ns = Netns::new("vfspeed").unwrap();
    setup(&ns);
    let exec = LibnftExecutor::in_netns(ns.name()).unwrap();
    raw_round(&exec, 1000);
    let t = Instant::now();
    drop(exec);
    println!(
        "drop after removing 1000 rules: {:.3} ms on the caller's thread",
        t.elapsed().as_secs_f64() * 1000.0
    );
}
