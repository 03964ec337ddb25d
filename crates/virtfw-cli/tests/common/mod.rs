//! Helpers shared by the CLI integration tests: run the built binary against a throwaway
//! namespace and a temporary state directory, and take comparable snapshots of the ruleset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
