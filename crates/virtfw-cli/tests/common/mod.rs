//! Helpers shared by the CLI integration tests: run the built binary against a throwaway
//! namespace and a temporary state directory, and take comparable snapshots of the ruleset.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

pub use virtfw::netns::Netns;

pub const BIN: &str = env!("CARGO_BIN_EXE_virtfw");

/// A namespace plus a state directory, both thrown away at the end.
pub struct Env {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new(prefix: &str) -> Env {
        let ns = Netns::new(prefix).expect("create netns (tests need root)");
        let dir = tempfile::tempdir().unwrap();
        Env { ns, dir }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A `virtfw` command with `--state-dir` and `--netns` set.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--state-dir")
            .arg(self.state())
            .arg("--netns")
            .arg(self.ns.name())
            .args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Everything a test compares: the nft ruleset (iptables-nft rules included) and the
    /// iptables views.
    pub fn snapshot(&self) -> String {
        let mut out = String::new();
        for argv in [
            &["nft", "list", "ruleset"][..],
            &["iptables", "-w", "-S"],
            &["iptables", "-w", "-t", "nat", "-S"],
            &["ip6tables", "-w", "-S"],
        ] {
            out.push_str(&self.ns.run(argv).unwrap());
        }
        out
    }

    /// iptables-nft creates tables and built-in chains on first use and never deletes them:
    /// create the ones the tests use first, so "ruleset as before" is an exact comparison.
    pub fn prime_iptables(&self) {
        for (prog, table, chain) in [
            ("iptables", "filter", "FORWARD"),
            ("iptables", "filter", "INPUT"),
            ("iptables", "nat", "POSTROUTING"),
            ("ip6tables", "filter", "FORWARD"),
        ] {
            for op in ["-A", "-D"] {
                self.ns
                    .run(&[prog, "-w", "-t", table, op, chain, "-j", "ACCEPT"])
                    .unwrap();
            }
        }
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// How many undo commands a `virtfw --json recover` ran, over all the operations it settled:
/// the crash tests use it to prove a kill really left something to undo.
pub fn recovered_commands(o: &Output) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["recovered"]
        .as_array()
        .unwrap_or_else(|| panic!("no 'recovered' list in {v}"))
        .iter()
        .map(|s| s["commands"].as_u64().unwrap())
        .sum()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `<action>` with these args.
pub fn action(layer: &str, args: &[&str]) -> String {
    let items: String = args
        .iter()
        .map(|a| {
            format!(
                "<item>{}</item>",
                a.replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
            )
        })
        .collect();
    format!("<action layer='{layer}'><args>{items}</args></action>")
}

/// A multi-group nftables transaction on table `table`.
pub fn nft_tx(name: &str, table: &str) -> String {
    let a = |args: &[&str]| action("ipv4", args);
    format!(
        "<firewall name='{name}' backend='nftables'>\
         <group autoRollback='yes'>{}{}</group>\
         <group autoRollback='yes'><rollback inheritPrevious='yes'/>{}{}{}</group>\
         <group autoRollback='yes'><rollback inheritPrevious='yes'/>{}{}</group>\
         </firewall>",
        a(&["add", "table", "ip", table]),
        a(&[
            "add",
            "chain",
            "ip",
            table,
            "fwdc",
            "{ type filter hook forward priority 0; policy accept; }"
        ]),
        a(&[
            "add",
            "rule",
            "ip",
            table,
            "fwdc",
            "ip",
            "saddr",
            "10.1.0.0/24",
            "accept"
        ]),
        a(&[
            "insert",
            "rule",
            "ip",
            table,
            "fwdc",
            "ip",
            "daddr",
            "10.1.0.0/24",
            "ct",
            "state",
            "related,established",
            "accept"
        ]),
        a(&["add", "rule", "ip", table, "fwdc", "iifname", "vnet0", "drop"]),
        a(&["add", "chain", "ip", table, "extra"]),
        a(&["add", "rule", "ip", table, "extra", "tcp", "dport", "22", "accept"]),
    )
}

/// A multi-group iptables transaction whose rules carry `tag` (a distinct /32 source).
pub fn ipt_tx(name: &str, tag: u8) -> String {
    let src = format!("10.9.{tag}.1/32");
    let src6 = format!("fd00:{tag}::1/128");
    format!(
        "<firewall name='{name}' backend='iptables'>\
         <group autoRollback='yes'>{}{}</group>\
         <group autoRollback='yes'><rollback inheritPrevious='yes'/>{}{}</group>\
         <group autoRollback='yes'><rollback inheritPrevious='yes'/>{}{}</group>\
         </firewall>",
        action(
            "ipv4",
            &["--table", "filter", "--append", "FORWARD", "--source", &src, "--jump", "ACCEPT"]
        ),
        action(
            "ipv4",
            &["--table", "filter", "--insert", "INPUT", "--source", &src, "--jump", "ACCEPT"]
        ),
        action(
            "ipv4",
            &[
                "--table",
                "nat",
                "--insert",
                "POSTROUTING",
                "--source",
                &src,
                "!",
                "--destination",
                "10.9.0.0/16",
                "--jump",
                "MASQUERADE"
            ]
        ),
        action(
            "ipv6",
            &["--table", "filter", "--append", "FORWARD", "--source", &src6, "--jump", "ACCEPT"]
        ),
        action(
            "ipv4",
            &[
                "--table",
                "filter",
                "--append",
                "FORWARD",
                "--destination",
                &src,
                "--jump",
                "ACCEPT"
            ]
        ),
        action(
            "ipv6",
            &[
                "--table",
                "filter",
                "--insert",
                "FORWARD",
                "--destination",
                &src6,
                "--jump",
                "DROP"
            ]
        ),
    )
}

pub fn plan_exists(env: &Env, name: &str) -> bool {
    env.state()
        .join("plans")
        .join(format!("{name}.plan"))
        .exists()
}

pub fn path_of(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small xorshift generator seeded from the clock (the seed is printed for reruns).
pub struct Rng(pub u64);
impl Rng {
    pub fn new() -> Rng {
        let seed = std::env::var("VIRTFW_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("crash test seed {seed} (VIRTFW_CRASH_SEED to repeat)");
        Rng(seed)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

pub fn real(program: &str) -> String {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(program);
        if p.exists() {
            return p.display().to_string();
        }
    }
    panic!("{program} not installed");
}

/// Wrapper scripts for `programs` in `dir/slowbin` that sleep 0-39 ms, then exec the real
/// program (keeping every descriptor, the state lock's included); returns a PATH with them first.
///
/// With [`STALL_AT`] in the environment the wrappers also count their invocations (see
/// [`Stall`]): the K-th runs the real program and then, instead of exiting, records its pid and
/// sleeps, so a test can kill virtfw at a known point, after that command took effect and
/// before virtfw saw it finish.
pub fn wrappers(dir: &Path, programs: &[&str]) -> String {
    install_wrappers(dir, "slowbin", programs, |real, program| {
        stall_script(
            real,
            &format!("[ -z \"${STALL_ONLY}\" -o \"${STALL_ONLY}\" = {program} ]"),
            "sleep 0.0$((RANDOM % 4))$((RANDOM % 10))\n",
        )
    })
}

/// The wrapper script of [`wrappers`] and [`matching_wrappers`]: with [`STALL_AT`] set, the
/// invocations for which the shell test `counted` holds are counted, and the K-th runs `real`
/// then records its pid and sleeps; every other invocation runs `before_exec` (a random delay,
/// say) and then `real`.
fn stall_script(real: &str, counted: &str, before_exec: &str) -> String {
    format!(
        "#!/bin/bash\n\
         if [ -n \"${STALL_AT}\" ] && {counted}; then\n\
         \x20 exec 9>>\"${STALL_DIR}/lock\"; flock 9\n\
         \x20 n=$(( $(cat \"${STALL_DIR}/count\" 2>/dev/null || echo 0) + 1 ))\n\
         \x20 echo $n >\"${STALL_DIR}/count\"; exec 9>&-\n\
         \x20 if [ \"$n\" -eq \"${STALL_AT}\" ]; then\n\
         \x20   {real} \"$@\"; echo $$ >\"${STALL_DIR}/stalled.tmp\"\n\
         \x20   mv \"${STALL_DIR}/stalled.tmp\" \"${STALL_DIR}/stalled\"; exec sleep 120\n\
         \x20 fi\n\
         fi\n\
         {before_exec}exec {real} \"$@\"\n"
    )
}

/// Environment variable of the wrappers: the invocation (1-based) that stalls.
pub const STALL_AT: &str = "VIRTFW_STALL_AT";
/// Environment variable of the wrappers: count only this program's invocations.
pub const STALL_ONLY: &str = "VIRTFW_STALL_ONLY";
/// Environment variable of the wrappers: where the count, lock and `stalled` pid file live.
pub const STALL_DIR: &str = "VIRTFW_STALL_DIR";

/// A deterministic kill point for a command run with the [`wrappers`] first on PATH: the
/// `at`-th invocation (of `only`, or of any wrapped program) runs, then stalls.
pub struct Stall {
    dir: PathBuf,
}

impl Stall {
    /// A fresh counter in `dir/stall`.
    pub fn new(dir: &Path) -> Stall {
        let dir = dir.join("stall");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Stall { dir }
    }

    /// Set the environment of `cmd` so that its `at`-th wrapped invocation stalls.
    pub fn arm(&self, cmd: &mut Command, at: u64, only: Option<&str>) {
        cmd.env(STALL_AT, at.to_string())
            .env(STALL_DIR, &self.dir)
            .env(STALL_ONLY, only.unwrap_or(""));
    }

    /// How many invocations the wrappers counted so far (arm with an unreachable `at` to count
    /// a whole run's).
    pub fn count(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("count"))
            .map(|t| t.trim().parse().unwrap())
            .unwrap_or(0)
    }

    /// Wait until the stalled invocation is sleeping (its command has run) and return its pid;
    /// panics if `child` exits first or nothing stalls within 60 s.
    pub fn wait(&self, child: &mut std::process::Child) -> i32 {
        let marker = self.dir.join("stalled");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(&marker) {
                return text.trim().parse().unwrap();
            }
            if let Some(status) = child.try_wait().unwrap() {
                let count = std::fs::read_to_string(self.dir.join("count")).unwrap_or_default();
                panic!(
                    "the command exited ({status}) before its stall point ({} invocation(s))",
                    count.trim()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nothing stalled within 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Kill `child` (virtfw) while the stalled command sleeps, then the stalled command, which
    /// holds virtfw's state lock: the kill lands after the command took effect and before
    /// virtfw saw it finish.
    pub fn kill(&self, child: &mut std::process::Child, stalled: i32) {
        let _ = child.kill();
        let _ = child.wait();
        // SAFETY: a plain kill(2) of the wrapper this test's child started (its pid, read
        // from the marker it wrote).
        unsafe {
            libc::kill(stalled, libc::SIGKILL);
        }
    }
}

/// `text` with the values of `counter packets N bytes M` dropped: packets a test's own bridge
/// sends (IPv6 neighbour discovery) move the counters of iptables-nft's rules.
pub fn without_counters(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut words = line.split(' ').peekable();
        let mut kept: Vec<&str> = Vec::new();
        while let Some(w) = words.next() {
            kept.push(w);
            if w.ends_with("counter") && words.peek() == Some(&"packets") {
                for _ in 0..4 {
                    words.next();
                }
            }
        }
        out.push_str(&kept.join(" "));
        out.push('\n');
    }
    out
}

impl Env {
    /// `iptables-save` and `ip6tables-save` of the namespace without their timestamp comment
    /// lines: what the iptables ownership tests compare, rule for rule and with multiplicity.
    pub fn ipt_save(&self) -> String {
        let mut out = String::new();
        for program in ["iptables-save", "ip6tables-save"] {
            let text = self.ns.run(&[program]).unwrap();
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Run an iptables-family command in the namespace as "someone else" (not through virtfw).
    pub fn by_hand(&self, argv: &[&str]) {
        self.ns
            .run(argv)
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    }
}

/// How many lines of `text` are exactly `line`.
pub fn count_lines(text: &str, line: &str) -> usize {
    text.lines().filter(|l| *l == line).count()
}

/// Run `cmd` (a virtfw command with the [`wrappers`] first on PATH) until its `at`-th wrapped
/// invocation (of `only`, or of any wrapped program) has run, then kill it with SIGKILL, and
/// the stalled command too: a deterministic kill -9 right after a known command.
pub fn kill_after(dir: &Path, mut cmd: Command, at: u64, only: Option<&str>) {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let stall = Stall::new(dir);
    stall.arm(&mut cmd, at, only);
    let mut child = cmd.spawn().unwrap();
    let stalled = stall.wait(&mut child);
    stall.kill(&mut child, stalled);
}

impl Env {
    /// `nft -s list ruleset` of the namespace (stateless: no counter values).
    pub fn nft_state(&self) -> String {
        self.ns.run(&["nft", "-s", "list", "ruleset"]).unwrap()
    }

    /// `virtfw --json recover`, which must succeed; returns how many undo commands it ran.
    pub fn recover(&self) -> u64 {
        let o = self.run(&["--json", "recover"]);
        assert_eq!(o.status.code(), Some(0), "recover: {}", text(&o));
        recovered_commands(&o)
    }

    /// How many journals are pending.
    pub fn journals(&self) -> usize {
        std::fs::read_dir(self.state().join("journal"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// Environment variable of [`matching_wrappers`]: only invocations whose arguments, joined
/// with spaces, contain this text are counted towards [`STALL_AT`].
pub const STALL_MATCH: &str = "VIRTFW_STALL_MATCH";

/// Like [`wrappers`] (in `dir/matchbin`, without the random delay), but the stall counts only
/// the invocations whose arguments contain [`STALL_MATCH`]: a kill right after one particular
/// command (say, the delete of one rule), wherever it falls in the sequence.
pub fn matching_wrappers(dir: &Path, programs: &[&str]) -> String {
    install_wrappers(dir, "matchbin", programs, |real, _| {
        stall_script(real, &format!("[[ \"$*\" == *\"${STALL_MATCH}\"* ]]"), "")
    })
}

/// Install a bash wrapper script for each of `programs` in `dir/sub`, its text made by
/// `script(real_program_path, program)`; returns a PATH with them first.
pub fn install_wrappers(
    dir: &Path,
    sub: &str,
    programs: &[&str],
    script: impl Fn(&str, &str) -> String,
) -> String {
    let bin = dir.join(sub);
    std::fs::create_dir_all(&bin).unwrap();
    for &program in programs {
        let p = bin.join(program);
        std::fs::write(&p, script(&real(program), program)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// [`kill_after`], unless `cmd` exits before its `at`-th wrapped invocation: then `false`
/// (it ran fewer commands than that) and nothing is killed.
pub fn try_kill_after(dir: &Path, mut cmd: Command, at: u64, only: Option<&str>) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let stall = Stall::new(dir);
    stall.arm(&mut cmd, at, only);
    let mut child = cmd.spawn().unwrap();
    let marker = stall.dir.join("stalled");
    loop {
        if let Ok(text) = std::fs::read_to_string(&marker) {
            stall.kill(&mut child, text.trim().parse().unwrap());
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Someone else's iptables rules for the ownership tests (argv, split at spaces); the three of
/// [`IPT_TWINS`] are identical to rules of [`IPT_OURS`]. Each twin stands where a delete by
/// specification (which removes the first match) leaves the chain's order as it was: first in
/// a chain we insert into, last in one we append to.
pub const IPT_OTHERS: &[&str] = &[
    "iptables -w -N OTHERS",
    "iptables -w -A OTHERS -d 10.7.0.8/32 -j ACCEPT",
    "iptables -w -A OTHERS -d 10.7.0.2/32 -j DROP",
    "iptables -w -A FORWARD -s 10.7.0.1/32 -j ACCEPT",
    "iptables -w -A FORWARD -s 10.7.0.9/32 -j DROP",
    "iptables -w -t nat -A POSTROUTING -s 10.7.9.0/24 -j MASQUERADE",
    "ip6tables -w -A FORWARD -s fd00:7::1/128 -j ACCEPT",
];

/// The rules of [`IPT_OTHERS`] we have a twin of, as `iptables-save` prints them.
pub const IPT_TWINS: &[&str] = &[
    "-A OTHERS -d 10.7.0.2/32 -j DROP",
    "-A FORWARD -s 10.7.0.1/32 -j ACCEPT",
    "-A FORWARD -s fd00:7::1/128 -j ACCEPT",
];

/// Our creates (layer, args split at spaces): filter (a built-in and someone else's custom
/// chain, with and without `--table`), nat, IPv6 filter.
pub const IPT_OURS: &[(&str, &str)] = &[
    ("ipv4", "-I FORWARD -s 10.7.0.1/32 -j ACCEPT"),
    (
        "ipv4",
        "--table filter --append OTHERS -d 10.7.0.2/32 -j DROP",
    ),
    ("ipv4", "-t nat -A POSTROUTING -s 10.7.0.0/24 -j MASQUERADE"),
    ("ipv6", "-I FORWARD -s fd00:7::1/128 -j ACCEPT"),
    ("ipv4", "-A FORWARD -d 10.7.0.3/32 -j ACCEPT"),
    ("ipv6", "-A FORWARD -d fd00:7::3/128 -j DROP"),
];

/// The `<action>`s of `IPT_OURS[range]`.
pub fn ipt_ours(range: std::ops::Range<usize>) -> String {
    IPT_OURS[range]
        .iter()
        .map(|(layer, args)| action(layer, &args.split(' ').collect::<Vec<_>>()))
        .collect()
}

impl Env {
    /// Prime iptables and add [`IPT_OTHERS`] by hand; returns [`Env::ipt_save`] after.
    pub fn add_ipt_others(&self) -> String {
        self.prime_iptables();
        for argv in IPT_OTHERS {
            self.by_hand(&argv.split(' ').collect::<Vec<_>>());
        }
        let before = self.ipt_save();
        for twin in IPT_TWINS {
            assert_eq!(count_lines(&before, twin), 1, "{before}");
        }
        before
    }
}

/// `after` has each of [`IPT_TWINS`] exactly once and equals `before`.
pub fn assert_ipt_as_before(before: &str, after: &str, what: &str) {
    for twin in IPT_TWINS {
        assert_eq!(
            count_lines(after, twin),
            1,
            "{what}: someone else's `{twin}` is gone or ours is left:\n{after}"
        );
    }
    assert_eq!(after, before, "{what}: iptables-save differs");
}
