//! `virtfw-bench`: how close virtfw comes to the kernel's own batch cost, and how far it is from
//! libvirt's one process per rule. Everything runs in throwaway network namespaces (one per
//! measurement), never in the caller's namespace. Needs root.
//!
//! For N rules it times apply + removal of one auto-rollback transaction by (a) virtfw's batch
//! path, (b) virtfw's per-command path (libvirt's way), (c) a raw batch with no handle capture
//! (`nft -f -` then `nft flush chain`; `iptables-restore --noflush` then `iptables -F`). It also
//! times start + stop of libvirt's nat-default and nat-ipv6 networks on both backends, and the
//! peak memory of a child process doing the N = 10000 batch apply + removal.
//!
//! Usage: `virtfw-bench [--quick] [--max-n N] [--per-command-max N] [--reps R]`.

use std::time::{Duration, Instant};

use virtfw::executor::Invocation;
use virtfw::netns::Netns;
use virtfw::{ApplyOptions, Backend, Executor, Firewall, Layer, ProcessExecutor, TransactionFlags};
use virtfw_network::NetworkDef;

const NETWORKS: [(&str, &str); 2] = [
    ("nat-default", include_str!("../data/nat-default.xml")),
    ("nat-ipv6", include_str!("../data/nat-ipv6.xml")),
];

struct Config {
    sizes: Vec<usize>,
    per_command_max: usize,
    reps: usize,
}

fn parse_args() -> Result<Config, String> {
    let mut cfg = Config {
        sizes: vec![10, 100, 1000, 10000],
        per_command_max: 1000,
        reps: 5,
    };
    let mut max_n = usize::MAX;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--quick" => {
                max_n = max_n.min(1000);
                cfg.per_command_max = 100;
                cfg.reps = 3;
            }
            "--max-n" => max_n = num("--max-n")?,
            "--per-command-max" => cfg.per_command_max = num("--per-command-max")?,
            "--reps" => cfg.reps = num("--reps")?.max(1),
            "-h" | "--help" => {
                println!(
                    "usage: virtfw-bench [--quick] [--max-n N] [--per-command-max N] [--reps R]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    cfg.sizes.retain(|&n| n <= max_n);
    Ok(cfg)
}

fn run(exec: &dyn Executor, argv: &[&str], stdin: Option<&str>) {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let out = exec
        .run(Invocation {
            argv: &argv,
            stdin: stdin.map(str::as_bytes),
        })
        .expect("spawn");
    assert!(out.success(), "{argv:?} failed: {}", out.stderr);
}

/// Rule `i` in nft and iptables syntax (the rules of the performance baseline).
fn rule(i: usize) -> (String, String) {
    let addr = format!("10.{}.{}.{}", 100 + (i >> 16), (i >> 8) & 255, i & 255);
    let port = 1024 + i % 60000;
    (
        format!("ip saddr {addr}/32 tcp dport {port} accept"),
        format!("-s {addr}/32 -p tcp --dport {port} -j ACCEPT"),
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Fam {
    Nft,
    Ipt,
}

impl Fam {
    fn name(self) -> &'static str {
        match self {
            Fam::Nft => "nftables",
            Fam::Ipt => "iptables",
        }
    }
}

/// A fresh namespace with the base chain the rules go to (not timed).
fn prepared(fam: Fam) -> (Netns, ProcessExecutor) {
    let ns = Netns::new("vfbench").expect("netns");
    let exec = ns.executor().expect("executor");
    match fam {
        Fam::Nft => run(
            &exec,
            &["nft", "-f", "-"],
            Some("add table ip T\nadd chain ip T C { type filter hook forward priority 0; policy accept; }\n"),
        ),
        Fam::Ipt => run(&exec, &["iptables", "-w", "-P", "FORWARD", "ACCEPT"], None),
    }
    (ns, exec)
}

fn transaction(fam: Fam, n: usize) -> Firewall {
    let backend = match fam {
        Fam::Nft => Backend::Nftables,
        Fam::Ipt => Backend::Iptables,
    };
    let mut fw = Firewall::new(backend);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    for i in 0..n {
        let (nft, ipt) = rule(i);
        match fam {
            Fam::Nft => fw.add_cmd(
                Layer::Ipv4,
                ["add", "rule", "ip", "T", "C"]
                    .into_iter()
                    .map(String::from)
                    .chain(nft.split(' ').map(String::from)),
            ),
            Fam::Ipt => fw.add_cmd(
                Layer::Ipv4,
                ["-A", "FORWARD"]
                    .into_iter()
                    .map(String::from)
                    .chain(ipt.split(' ').map(String::from)),
            ),
        };
    }
    fw
}

/// (apply, removal) of N rules through virtfw.
fn virtfw_once(fam: Fam, n: usize, per_command: bool) -> (Duration, Duration) {
    let (ns, exec) = prepared(fam);
    let mut fw = transaction(fam, n);
    let opts = ApplyOptions {
        observer: None,
        per_command,
    };
    let t = Instant::now();
    fw.apply_with(&exec, opts).expect("apply");
    let mut removal = fw.new_from_rollback().expect("removal plan");
    let apply = t.elapsed();
    let t = Instant::now();
    removal.apply_with(&exec, opts).expect("remove");
    let remove = t.elapsed();
    verify_empty(fam, &ns);
    (apply, remove)
}

/// (apply, removal) of N rules by one raw batch, no handle capture, removal by flushing.
fn raw_once(fam: Fam, n: usize) -> (Duration, Duration) {
    let (ns, exec) = prepared(fam);
    let mut input = String::new();
    if fam == Fam::Ipt {
        input.push_str("*filter\n");
    }
    for i in 0..n {
        let (nft, ipt) = rule(i);
        match fam {
            Fam::Nft => input.push_str(&format!("add rule ip T C {nft}\n")),
            Fam::Ipt => input.push_str(&format!("-A FORWARD {ipt}\n")),
        }
    }
    if fam == Fam::Ipt {
        input.push_str("COMMIT\n");
    }
    let t = Instant::now();
    match fam {
        Fam::Nft => run(&exec, &["nft", "-f", "-"], Some(&input)),
        Fam::Ipt => run(
            &exec,
            &["iptables-restore", "-w", "--noflush"],
            Some(&input),
        ),
    }
    let apply = t.elapsed();
    let t = Instant::now();
    match fam {
        Fam::Nft => run(&exec, &["nft", "flush", "chain", "ip", "T", "C"], None),
        Fam::Ipt => run(&exec, &["iptables", "-w", "-F", "FORWARD"], None),
    }
    let remove = t.elapsed();
    verify_empty(fam, &ns);
    (apply, remove)
}

/// Not timed: the removal really removed every rule.
fn verify_empty(fam: Fam, ns: &Netns) {
    let listing = match fam {
        Fam::Nft => ns.run(&["nft", "list", "chain", "ip", "T", "C"]),
        Fam::Ipt => ns.run(&["iptables", "-w", "-S", "FORWARD"]),
    }
    .expect("listing");
    assert!(
        !listing.contains("saddr") && !listing.contains("-A FORWARD"),
        "rules left behind:\n{listing}"
    );
}

/// Start + stop of a libvirt network through virtfw-network's lifecycle (global setup, bridge,
/// rules; then rules and bridge removed). Returns (start+stop total, rules-only apply+removal).
fn network_once(backend: Backend, xml: &str, per_command: bool) -> (Duration, Duration) {
    let ns = Netns::new("vfbench").expect("netns");
    let exec = ns.executor().expect("executor");
    let opts = ApplyOptions {
        observer: None,
        per_command,
    };
    let def = NetworkDef::from_xml(xml, "bench").expect("network xml");
    let t = Instant::now();
    let status = virtfw_network::start(def.clone(), backend, &exec, opts).expect("start");
    virtfw_network::stop(&status, &exec, opts).expect("stop");
    let total = t.elapsed();
    // Rules only (global setup already present now, bridge created by hand, not timed).
    let def2 = def.clone();
    run(
        &exec,
        &["ip", "link", "add", &def2.bridge, "type", "bridge"],
        None,
    );
    let mut fw = match backend {
        Backend::Nftables => virtfw_network::nftables::network_firewall(&def2),
        _ => virtfw_network::iptables::network_firewall(&def2),
    }
    .expect("network firewall");
    let t = Instant::now();
    fw.apply_with(&exec, opts).expect("rules");
    fw.new_from_rollback()
        .expect("removal")
        .apply_with(&exec, opts)
        .expect("rules removal");
    (total, t.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// Median (apply, remove, total) over `reps` runs.
fn measure(
    reps: usize,
    mut f: impl FnMut() -> (Duration, Duration),
) -> (Duration, Duration, Duration) {
    let mut a = Vec::new();
    let mut r = Vec::new();
    let mut t = Vec::new();
    for _ in 0..reps {
        let (x, y) = f();
        a.push(x);
        r.push(y);
        t.push(x + y);
    }
    (median(a), median(r), median(t))
}

/// The child of the memory measurement: N rules applied and removed by virtfw's batch path,
/// then this process's peak resident set (VmHWM) and its children's (`nft` / restore).
fn memory_child(fam: Fam, n: usize) {
    let _ = virtfw_once(fam, n, false);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("0");
    // SAFETY: getrusage only writes the struct it is given.
    let children = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru.ru_maxrss
    };
    println!("{hwm} {children}");
}

fn memory(fam: Fam, n: usize) -> Option<(u64, u64)> {
    let me = std::env::current_exe().ok()?;
    let out = std::process::Command::new(me)
        .args(["--memory-child", fam.name(), &n.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|w| w.parse().ok());
    Some((it.next()??, it.next()??))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--memory-child") {
        let fam = if args[2] == "nftables" {
            Fam::Nft
        } else {
            Fam::Ipt
        };
        memory_child(fam, args[3].parse().expect("n"));
        return;
    }
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("virtfw-bench: {e}");
            std::process::exit(2);
        }
    };
    println!("## N rules: apply + removal of one AUTO_ROLLBACK transaction (medians)\n");
    println!("| backend | N | virtfw apply | virtfw remove | virtfw total | raw batch total | per-command total | virtfw / raw | per-command / virtfw |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for fam in [Fam::Nft, Fam::Ipt] {
        for &n in &cfg.sizes {
            let reps = if n >= 10000 {
                cfg.reps.min(3)
            } else {
                cfg.reps
            };
            let (va, vr, vt) = measure(reps, || virtfw_once(fam, n, false));
            let (_, _, rt) = measure(reps, || raw_once(fam, n));
            let pc = (n <= cfg.per_command_max).then(|| {
                let reps = if n >= 1000 { 1 } else { reps.min(3) };
                measure(reps, || virtfw_once(fam, n, true)).2
            });
            println!(
                "| {} | {n} | {} | {} | {} | {} | {} | {:.2}× | {} |",
                fam.name(),
                ms(va),
                ms(vr),
                ms(vt),
                ms(rt),
                pc.map_or("not run".to_string(), ms),
                ratio(vt, rt),
                pc.map_or("–".to_string(), |p| format!("{:.0}×", ratio(p, vt))),
            );
        }
    }
    println!("\n## Network start + stop (medians)\n");
    println!("| backend | network | batch start+stop | per-command start+stop | per-command / batch | batch rules only | per-command rules only | ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    for backend in [Backend::Nftables, Backend::Iptables] {
        for (name, xml) in NETWORKS {
            let reps = cfg.reps.min(5);
            let mut bt = Vec::new();
            let mut br = Vec::new();
            let mut pt = Vec::new();
            let mut pr = Vec::new();
            for _ in 0..reps {
                let (t, r) = network_once(backend, xml, false);
                bt.push(t);
                br.push(r);
                let (t, r) = network_once(backend, xml, true);
                pt.push(t);
                pr.push(r);
            }
            let (bt, br, pt, pr) = (median(bt), median(br), median(pt), median(pr));
            println!(
                "| {backend} | {name} | {} | {} | {:.1}× | {} | {} | {:.1}× |",
                ms(bt),
                ms(pt),
                ratio(pt, bt),
                ms(br),
                ms(pr),
                ratio(pr, br)
            );
        }
    }
    if let Some(&n) = cfg.sizes.last() {
        println!("\n## Peak memory, virtfw batch apply + removal of N = {n} (child process)\n");
        for fam in [Fam::Nft, Fam::Ipt] {
            match memory(fam, n) {
                Some((own, children)) => println!(
                    "- {}: virtfw process VmHWM {:.1} MB; largest child ({}) max RSS {:.1} MB",
                    fam.name(),
                    own as f64 / 1024.0,
                    if fam == Fam::Nft {
                        "nft"
                    } else {
                        "iptables-restore"
                    },
                    children as f64 / 1024.0
                ),
                None => println!("- {}: measurement failed", fam.name()),
            }
        }
    }
}
