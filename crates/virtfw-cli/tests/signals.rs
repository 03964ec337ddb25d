//! SIGINT and SIGTERM during `apply`, `remove` and `network start`: virtfw stops between
//! commands, undoes what it did exactly as after a failure, and exits 128 + the signal, with
//! no pending journal.
//!
//! Wrapper programs first on PATH count their invocations; the K-th runs its real command and
//! then holds on (recording its pid) until the test releases it, exiting with the real
//! command's status. The test sends the signal to virtfw while that command is held, then
//! releases it: the signal lands right after a known command, which completes normally, and
//! the next command must not start.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const AT: &str = "VFW_SIG_AT";
const DIR: &str = "VFW_SIG_DIR";

const WRAPPED: &[&str] = &[
    "nft",
    "iptables",
    "ip6tables",
    "iptables-restore",
    "ip6tables-restore",
    "ip",
];

/// The holding wrappers of the module docs in `dir/sigbin`; returns a PATH with them first.
fn holding_wrappers(dir: &Path) -> String {
    install_wrappers(dir, "sigbin", WRAPPED, |real, program| {
        format!(
            "#!/bin/bash\n\
             if [ -n \"${DIR}\" ]; then\n\
             \x20 exec 9>>\"${DIR}/lock\"; flock 9\n\
             \x20 n=$(( $(cat \"${DIR}/count\" 2>/dev/null || echo 0) + 1 ))\n\
             \x20 echo $n >\"${DIR}/count\"; echo \"$n {program} $*\" >>\"${DIR}/calls\"; exec 9>&-\n\
             \x20 if [ \"$n\" -eq \"${AT}\" ]; then\n\
             \x20   {real} \"$@\"; status=$?\n\
             \x20   echo $$ >\"${DIR}/held.tmp\"; mv \"${DIR}/held.tmp\" \"${DIR}/held\"\n\
             \x20   while [ ! -e \"${DIR}/release\" ]; do sleep 0.02; done\n\
             \x20   exit $status\n\
             \x20 fi\n\
             fi\n\
             exec {real} \"$@\"\n"
        )
    })
}

struct SigEnv {
    env: Env,
    path: String,
}

impl SigEnv {
    fn new(prefix: &str) -> SigEnv {
        let env = Env::new(prefix);
        let path = holding_wrappers(env.dir.path());
        SigEnv { env, path }
    }

    /// A virtfw command with the wrappers first on PATH; the path is the one its arguments
    /// choose (`--no-batch` or not), whatever the environment says.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.env.cmd(args);
        c.env("PATH", &self.path).env_remove("VIRTFW_NO_BATCH").env(
            "VIRTFW_NETWORK_CONF",
            self.env.dir.path().join("no-network.conf"),
        );
        c
    }

    fn ok(&self, args: &[&str]) -> Output {
        let o = self.cmd(args).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        o
    }

    fn counter(&self) -> PathBuf {
        let dir = self.env.dir.path().join("sig");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// How many wrapped invocations `args` makes when nothing is held.
    fn count(&self, args: &[&str]) -> u64 {
        let dir = self.counter();
        let o = self.cmd(args).env(AT, "0").env(DIR, &dir).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        std::fs::read_to_string(dir.join("count"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Run `args`; once its `at`-th wrapped invocation has run and is held, send `signal` to
    /// virtfw, then let the command finish. virtfw's output.
    fn interrupt(&self, args: &[&str], at: u64, signal: i32) -> Output {
        let dir = self.counter();
        let mut child = self
            .cmd(args)
            .env(AT, at.to_string())
            .env(DIR, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dir.join("held").exists() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{args:?} exited ({status}) before invocation {at}");
            }
            assert!(Instant::now() < deadline, "nothing held within 60 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = child.id() as i32;
        // SAFETY: kill(2) of the virtfw process this test started.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        std::fs::write(dir.join("release"), "").unwrap();
        child.wait_with_output().unwrap()
    }

    /// The wrapped invocations after the `at`-th of the last run (`N program args…`).
    fn calls_after(&self, at: u64) -> Vec<String> {
        let calls = std::fs::read_to_string(self.env.dir.path().join("sig/calls")).unwrap();
        calls
            .lines()
            .filter(|l| l.split(' ').next().unwrap().parse::<u64>().unwrap() > at)
            .map(String::from)
            .collect()
    }

    /// No command that creates (the forward part) started after the `at`-th invocation: what
    /// ran after it is the undo (deletes, checks, listings). `undo`: some did run.
    fn assert_stopped_after(&self, at: u64, undo: bool, what: &str) {
        let after = self.calls_after(at);
        let creates = [
            " add ", " insert ", " create ", " -ae ", "--append", "--insert",
        ];
        let forward: Vec<&String> = after
            .iter()
            .filter(|l| creates.iter().any(|c| format!("{l} ").contains(c)))
            .collect();
        assert!(
            forward.is_empty(),
            "{what}: started after the signal: {forward:?}"
        );
        assert!(!undo || !after.is_empty(), "{what}: nothing was undone");
    }

    /// After an interruption: exit 128 + `signal`, the message, no pending journal, and
    /// `virtfw list` works.
    fn assert_interrupted(&self, o: &Output, signal: i32, what: &str) {
        let name = if signal == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        assert_eq!(o.status.code(), Some(128 + signal), "{what}: {}", text(o));
        let err = stderr(o);
        assert!(
            err.contains(&format!(
                "was interrupted by {name}: stopped between commands"
            )),
            "{what}: {err}"
        );
        assert_eq!(self.env.journals(), 0, "{what}: journal left");
        let list = self.cmd(&["--json", "list"]).output().unwrap();
        assert_eq!(list.status.code(), Some(0), "{what}: {}", text(&list));
        let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        assert_eq!(v["pending_journals"], 0, "{what}: {v}");
    }
}

/// An interruption point: the path (batched or not), the wrapped invocation after which the
/// signal lands, the signal, and whether anything had been created by then (to be undone).
type Point = (bool, u64, i32, bool);

/// Interrupt an apply of `file` at each of `points`: no command that creates starts after
/// it, nothing is left of it, no plan is stored; then it applies and removes as usual.
fn apply_interrupted(env: &SigEnv, file: &Path, name: &str, points: &[Point]) {
    let before = env.env.snapshot();
    for &(batch, at, signal, created) in points {
        let what = format!("apply (batch: {batch}) interrupted after invocation {at}");
        let mut args = vec!["apply", path_of(file)];
        if !batch {
            args.insert(0, "--no-batch");
        }
        let o = env.interrupt(&args, at, signal);
        env.assert_interrupted(&o, signal, &what);
        assert!(
            stderr(&o).contains("everything it changed was undone"),
            "{what}: {}",
            text(&o)
        );
        assert!(!plan_exists(&env.env, name), "{what}: a plan was stored");
        env.assert_stopped_after(at, created, &what);
        assert_eq!(env.env.snapshot(), before, "{what}: ruleset changed");
    }
    env.ok(&["apply", path_of(file)]);
    env.ok(&["remove", name]);
    assert_eq!(env.env.snapshot(), before);
}

#[test]
fn interrupted_nftables_apply_is_undone() {
    let env = SigEnv::new("vfw-sig-nft");
    let file = env.env.write("s.xml", &nft_tx("signft", "st1"));
    // Per command: a listing, then creates; held after the table and chain were created.
    // Batched: a listing, then one batch of every create; held after the listing (the batch
    // is never started) and after the batch (every command had run: undone all the same).
    apply_interrupted(
        &env,
        &file,
        "signft",
        &[
            (false, 3, libc::SIGINT, true),
            (false, 5, libc::SIGTERM, true),
            (true, 1, libc::SIGINT, false),
            (true, 2, libc::SIGTERM, true),
        ],
    );
}

#[test]
fn interrupted_iptables_apply_is_undone() {
    let env = SigEnv::new("vfw-sig-ipt");
    env.env.prime_iptables();
    let file = env.env.write("s.xml", &ipt_tx("sigipt", 4));
    apply_interrupted(
        &env,
        &file,
        "sigipt",
        &[
            (false, 2, libc::SIGINT, true),
            (false, 4, libc::SIGTERM, true),
            (true, 1, libc::SIGINT, true),
        ],
    );
}

/// A removal interrupted between its deletes stops as a failed one does: what it deleted stays
/// deleted, the plan is kept and the journal settled, and `remove` run again finishes it.
#[test]
fn interrupted_remove_keeps_its_plan_and_runs_again() {
    let env = SigEnv::new("vfw-sig-rm");
    let file = env.env.write("s.xml", &nft_tx("sigrm", "st2"));
    let before = env.env.snapshot();
    env.ok(&["apply", path_of(&file)]);
    let applied = env.env.snapshot();
    let o = env.interrupt(&["--no-batch", "remove", "sigrm"], 2, libc::SIGINT);
    env.assert_interrupted(&o, libc::SIGINT, "remove");
    // Nothing ran after the held delete: the removal stopped there.
    assert_eq!(env.calls_after(2), Vec::<String>::new());
    assert!(
        stderr(&o).contains("the plan is kept (run `virtfw remove` again"),
        "{}",
        text(&o)
    );
    assert!(plan_exists(&env.env, "sigrm"), "the plan was dropped");
    let partial = env.env.snapshot();
    assert!(
        partial != applied && partial != before,
        "the removal did not stop part-way:\n{partial}"
    );
    let o = env.ok(&["--no-batch", "remove", "sigrm"]);
    assert!(
        stdout(&o).contains(" 2 object(s) were already gone"),
        "{}",
        text(&o)
    );
    assert!(!plan_exists(&env.env, "sigrm"));
    assert_eq!(env.env.snapshot(), before);
}

const NET: &str = "<network>
  <name>signet</name>
  <bridge name='vfsig0'/>
  <forward mode='nat'/>
  <ip address='192.168.125.1' netmask='255.255.255.0'/>
  <ip family='ipv6' address='2001:db8:125::1' prefix='64'/>
</network>
";

/// A network start interrupted while it adds its rules is undone as a failed start: its rules
/// and its bridge are gone, nothing is stored as running (the global chains stay, as after
/// any start).
#[test]
fn interrupted_network_start_is_undone() {
    let env = SigEnv::new("vfw-sig-net");
    let file = env.env.write("signet.xml", NET);
    let file = path_of(&file);
    let start = |batch: bool| {
        let mut args = vec!["network", "start", file, "--backend", "nftables"];
        if !batch {
            args.insert(0, "--no-batch");
        }
        args
    };
    // Once, for the global chains every later start finds in place.
    env.ok(&start(true));
    env.ok(&["network", "stop", "signet"]);
    let before = without_counters(&env.env.snapshot());
    let has_bridge = || {
        env.env
            .ns
            .run(&["ip", "link", "show", "dev", "vfsig0"])
            .is_ok()
    };
    for (batch, signal) in [(false, libc::SIGTERM), (true, libc::SIGINT)] {
        let what = format!("network start (batch: {batch})");
        let count = env.count(&start(batch));
        env.ok(&["network", "stop", "signet"]);
        assert!(count >= 3, "{what}: only {count} invocations");
        // Held at the last command but one: the bridge exists and rules are being added.
        let o = env.interrupt(&start(batch), count - 1, signal);
        env.assert_interrupted(&o, signal, &what);
        env.assert_stopped_after(count - 1, true, &what);
        assert!(
            stderr(&o).contains("network start of signet was interrupted"),
            "{what}: {}",
            text(&o)
        );
        assert!(!has_bridge(), "{what}: bridge left");
        assert!(
            !env.env.state().join("networks/signet.xml").exists(),
            "{what}: stored as running"
        );
        assert_eq!(
            without_counters(&env.env.snapshot()),
            before,
            "{what}: ruleset changed"
        );
        env.ok(&["network", "list"]);
    }
    env.ok(&start(true));
    env.ok(&["network", "stop", "signet"]);
    assert_eq!(without_counters(&env.env.snapshot()), before);
}

/// `network stop` is not stopped by a signal: it deletes the status first (as libvirt), so a
/// stop cut short could not be run again and would leave its rules. It runs to its end.
#[test]
fn network_stop_runs_to_its_end_through_a_signal() {
    let env = SigEnv::new("vfw-sig-stop");
    let file = env.env.write("signet.xml", NET);
    let start = ["network", "start", path_of(&file), "--backend", "nftables"];
    env.ok(&start);
    env.ok(&["network", "stop", "signet"]);
    let before = without_counters(&env.env.snapshot());
    env.ok(&start);
    let o = env.interrupt(&["network", "stop", "signet"], 1, libc::SIGTERM);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        !env.calls_after(1).is_empty(),
        "nothing ran after the signal"
    );
    assert_eq!(without_counters(&env.env.snapshot()), before);
    assert!(env
        .env
        .ns
        .run(&["ip", "link", "show", "dev", "vfsig0"])
        .is_err());
    assert!(!env.env.state().join("networks/signet.xml").exists());
    assert_eq!(env.env.journals(), 0);
}
