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
pub fn wrappers(dir: &Path, programs: &[&str]) -> String {
    let bin = dir.join("slowbin");
    std::fs::create_dir_all(&bin).unwrap();
    for &program in programs {
        let script = format!(
            "#!/bin/bash\nsleep 0.0$((RANDOM % 4))$((RANDOM % 10))\nexec {} \"$@\"\n",
            real(program)
        );
        let p = bin.join(program);
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
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
