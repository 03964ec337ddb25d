//! Kill `virtfw network start|stop|reload` with SIGKILL at random moments; after `virtfw
//! recover` the network is either not running and the ruleset is the post-global-setup one,
//! or it is running with all its rules and `network stop` restores that ruleset. No bridge is
//! leaked, no status file lost, no journal left.
//!
//! Wrapper `nft`/`iptables`/`ip6tables`/`*-restore`/`ip` scripts first on PATH sleep 0-39 ms
//! before exec'ing the real program, so kills land before, during and after commands (bridge
//! creation included) and children outlive the killed virtfw. Runs per backend:
//! `VIRTFW_NET_CRASH_RUNS` (default 6; 30+ by hand), seed `VIRTFW_CRASH_SEED`.

mod common;
use common::*;

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

const NET: &str = "<network>
  <name>crashnet</name>
  <bridge name='vfcrash0'/>
  <forward mode='nat'/>
  <ip address='192.168.124.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.124.2' end='192.168.124.254'/></dhcp>
  </ip>
  <ip family='ipv6' address='2001:db8:124::1' prefix='64'/>
</network>
";
const NAME: &str = "crashnet";
const BRIDGE: &str = "vfcrash0";

fn runs() -> usize {
    std::env::var("VIRTFW_NET_CRASH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6)
}

struct NetEnv {
    env: Env,
    slow_path: String,
    file: String,
    backend: &'static str,
}

impl NetEnv {
    fn new(backend: &'static str) -> NetEnv {
        let env = Env::new("vfw-netcrash");
        let slow_path = wrappers(
            env.dir.path(),
            &[
                "nft",
                "iptables",
                "ip6tables",
                "iptables-restore",
                "ip6tables-restore",
                "ip",
            ],
        );
        let file = path_of(&env.write("crashnet.xml", NET)).to_string();
        NetEnv {
            env,
            slow_path,
            file,
            backend,
        }
    }

    /// A virtfw command; `slow` puts the sleeping wrappers first on PATH.
    fn cmd(&self, args: &[&str], slow: bool) -> std::process::Command {
        let mut c = self.env.cmd(args);
        if !args.contains(&"--no-batch") {
            // This test picks the path with --no-batch itself: the batch runs stay batched
            // under VIRTFW_NO_BATCH.
            c.env_remove("VIRTFW_NO_BATCH");
        }
        c.env(
            "VIRTFW_NETWORK_CONF",
            self.env.dir.path().join("no-network.conf"),
        );
        if slow {
            c.env("PATH", &self.slow_path);
        }
        c
    }

    fn run(&self, args: &[&str], slow: bool) -> Output {
        self.cmd(args, slow).output().unwrap()
    }

    fn ok(&self, args: &[&str], slow: bool) -> Output {
        let o = self.run(args, slow);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        o
    }

    fn start_args(&self, batch: bool) -> Vec<&str> {
        let mut args = vec!["network", "start", &self.file, "--backend", self.backend];
        if !batch {
            args.insert(0, "--no-batch");
        }
        args
    }

    fn running(&self) -> bool {
        self.env
            .state()
            .join("networks")
            .join(format!("{NAME}.xml"))
            .exists()
    }

    /// The ruleset, counters left out (the bridge's own IPv6 packets move them).
    fn snapshot(&self) -> String {
        without_counters(&self.env.snapshot())
    }

    fn has_bridge(&self) -> bool {
        self.env
            .ns
            .run(&["ip", "link", "show", "dev", BRIDGE])
            .is_ok()
    }

    /// Run `args` slowly and SIGKILL it after `delay`; then `recover`. Returns how many
    /// journals recovery settled and how many commands it ran.
    fn kill_and_recover(&self, args: &[&str], delay: Duration, run: usize) -> (usize, u64) {
        let mut child = self
            .cmd(args, true)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        let o = self.run(&["--json", "recover"], true);
        assert_eq!(o.status.code(), Some(0), "run {run}: {}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let settled = v["recovered"].as_array().unwrap();
        let commands = settled
            .iter()
            .map(|s| s["commands"].as_u64().unwrap())
            .sum();
        (settled.len(), commands)
    }

    /// After recovery: the network runs with all its rules (then stop it), or it does not.
    /// Either way the end state must be the baseline.
    fn settle(&self, baseline: &str, run: usize, what: &str) -> bool {
        let running = self.running();
        if running {
            let o = self.run(&["--json", "network", "status", NAME], false);
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            if v["stored_plan"] == true {
                assert_eq!(
                    o.status.code(),
                    Some(0),
                    "run {run} ({what}): a stored network misses rules: {}",
                    text(&o)
                );
            } else {
                // An interrupted reload is recovered like a failed one: status kept without a
                // plan. Adding the rules again must work.
                self.ok(
                    &["network", "reload", NAME, "--backend", self.backend],
                    false,
                );
                self.ok(&["network", "status", NAME], false);
            }
            let o = self.ok(&["network", "stop", NAME], false);
            assert!(
                stdout(&o).contains("(0 rule(s) were already gone)"),
                "run {run} ({what}): {}",
                text(&o)
            );
        }
        assert!(!self.running(), "run {run} ({what}): status file left");
        assert!(!self.has_bridge(), "run {run} ({what}): bridge leaked");
        assert_eq!(
            self.snapshot(),
            baseline,
            "run {run} ({what}): ruleset differs from the post-global-setup one"
        );
        let journals = std::fs::read_dir(self.env.state().join("journal"))
            .unwrap()
            .count();
        assert_eq!(journals, 0, "run {run} ({what}): journal left behind");
        running
    }
}

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn crash_runs(backend: &'static str) {
    let n = NetEnv::new(backend);
    if backend == "iptables" {
        n.env.prime_iptables();
    }
    // The global setup happens once and stays (libvirt's shared chains): the baseline is the
    // ruleset after one full start and stop.
    n.ok(&n.start_args(true), false);
    n.ok(&["network", "stop", NAME], false);
    let baseline = n.snapshot();
    assert!(!n.has_bridge());

    // How long each operation takes with the slow wrappers: the kill window.
    let t_start = timed(|| {
        n.ok(&n.start_args(false), true);
    });
    let t_reload = timed(|| {
        n.ok(&["--no-batch", "network", "reload", NAME], true);
    });
    let t_stop = timed(|| {
        n.ok(&["--no-batch", "network", "stop", NAME], true);
    });
    assert_eq!(n.snapshot(), baseline);
    let window = |t: Duration| (t.as_millis() as u64 * 11 / 10).max(50);

    let mut rng = Rng::new();
    let mut count = std::collections::BTreeMap::<&str, usize>::new();
    let mut bump = |k: &'static str| *count.entry(k).or_default() += 1;
    for run in 0..runs() {
        let batch = run % 2 == 1;
        match (run / 2) % 3 {
            0 => {
                let delay = Duration::from_millis(rng.below(window(t_start)));
                let (_, undone) = n.kill_and_recover(&n.start_args(batch), delay, run);
                if undone > 0 {
                    bump("start: recover ran undo commands");
                }
                if n.settle(&baseline, run, "start killed") {
                    bump("start: completed (status stored, stop restored)");
                } else {
                    bump("start: rolled back");
                }
            }
            1 => {
                n.ok(&n.start_args(true), false);
                let mut args = vec!["network", "stop", NAME];
                if !batch {
                    args.insert(0, "--no-batch");
                }
                let delay = Duration::from_millis(rng.below(window(t_stop)));
                let (settled, finished) = n.kill_and_recover(&args, delay, run);
                if n.running() {
                    // Killed before its journal existed: the stop had not begun, the network
                    // runs with all its rules (checked by `settle`).
                    assert_eq!(settled, 0, "run {run}: a journalled stop must end stopped");
                    bump("stop: killed before it began");
                } else if finished > 0 {
                    bump("stop: finished by recover");
                } else {
                    bump("stop: nothing left to do");
                }
                n.settle(&baseline, run, "stop killed");
            }
            _ => {
                n.ok(&n.start_args(true), false);
                let mut args = vec!["network", "reload", NAME];
                if !batch {
                    args.insert(0, "--no-batch");
                }
                let delay = Duration::from_millis(rng.below(window(t_reload)));
                let (settled, _) = n.kill_and_recover(&args, delay, run);
                assert!(n.running(), "run {run}: a killed reload keeps the network");
                let planless = !std::fs::read_to_string(
                    n.env.state().join("networks").join(format!("{NAME}.xml")),
                )
                .unwrap()
                .contains("fwRemoval");
                bump(match (planless, settled) {
                    (true, _) => "reload: undone by recover, rules re-added by `network reload`",
                    (false, 0) => "reload: completed, or killed before it began",
                    (false, _) => "reload: committed, status stored by recover",
                });
                n.settle(&baseline, run, "reload killed");
            }
        }
    }
    eprintln!(
        "{backend}: {} runs (start {:?}, stop {:?}, reload {:?} with wrappers): {count:#?}",
        runs(),
        t_start,
        t_stop,
        t_reload
    );
    if runs() >= 30 {
        assert!(
            count.contains_key("start: rolled back")
                && count.contains_key("stop: finished by recover"),
            "the runs did not exercise both recoveries: {count:?}"
        );
    }
    fixed_start_kills(&n, &baseline);
}

/// Whatever the random runs hit: kill a start on each path after its last firewall command
/// took effect and before its status was stored (a wrapper runs that command, then stalls).
/// Recovery must undo the whole start.
fn fixed_start_kills(n: &NetEnv, baseline: &str) {
    for batch in [false, true] {
        // The program that applies the network's rules: on the batch path the iptables
        // family's rules go through iptables-restore (plain iptables only lists, in the
        // global setup, before them).
        let program = match (n.backend, batch) {
            ("nftables", _) => "nft",
            (_, false) => "iptables",
            (_, true) => "iptables-restore",
        };
        // Count the firewall program's invocations of one whole start (never stalls).
        let stall = Stall::new(n.env.dir.path());
        let mut cmd = n.cmd(&n.start_args(batch), true);
        stall.arm(&mut cmd, u64::MAX >> 1, Some(program));
        let o = cmd.output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let last = stall.count();
        n.ok(&["network", "stop", NAME], false);
        assert!(last > 0, "start ran no {program}");

        let stall = Stall::new(n.env.dir.path());
        let mut cmd = n.cmd(&n.start_args(batch), true);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        stall.arm(&mut cmd, last, Some(program));
        let mut child = cmd.spawn().unwrap();
        let stalled = stall.wait(&mut child);
        stall.kill(&mut child, stalled);
        let what = format!("start killed after {program} invocation {last} (batch {batch})");
        assert_ne!(
            n.snapshot(),
            baseline,
            "{what}: the kill landed before the network's rules were applied"
        );
        let o = n.run(&["--json", "recover"], true);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let undone = recovered_commands(&o);
        assert!(
            undone > 0,
            "{what}: recover ran no undo command: {}",
            text(&o)
        );
        assert!(!n.settle(baseline, 0, &what), "{what}: the start survived");
        eprintln!("{what}: recover ran {undone} undo command(s)");
    }
}

#[test]
fn network_crash_nftables() {
    crash_runs("nftables");
}

#[test]
fn network_crash_iptables() {
    crash_runs("iptables");
}
