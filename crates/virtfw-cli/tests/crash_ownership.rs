//! kill -9 at fixed points of `apply`, `remove` and `recover` itself, with someone else's
//! objects in the tables and chains the transaction touches; after `virtfw recover` (run again
//! when it was killed) everything not ours is exactly as before and ours is gone.
//!
//! The kill lands right after a known command (the wrapper technique of `crash.rs`, see
//! `common::Stall`): the command took effect, virtfw never saw it finish.
//!
//! * iptables: someone else's rules in FORWARD, in a custom chain and in IPv6 FORWARD are
//!   identical to three of ours (a `--check` cannot tell them apart); kills after a restore
//!   batch committed, after the first per-command insert (`--no-batch`), during a removal
//!   (batch and per command) and during recovery. Compared: `iptables-save`.
//! * nftables: a hand-made table holding a set with elements, a base chain and a rule; the
//!   transaction idempotently `add`s that table and chain, then its own chain and rules. A
//!   second hand-made table gets the handle the hand-made chain has, which is what pairing
//!   echoed handles with creates by position would delete. Compared: `nft -s list ruleset`.
//!
//! Kill points are named by the command they follow (`common::matching_wrappers`), so they
//! stay put when a listing is added before a command. A few per backend by default, and two
//! runs killed at a random moment; `VIRTFW_CRASH_RUNS=N` makes that N runs and adds the
//! numbered kill points 1..N/4 of apply (nft) and recover.

mod common;
use common::*;

use std::process::Stdio;
use std::time::Duration;

/// Extra kill points from `VIRTFW_CRASH_RUNS` (see the module docs).
fn more_points() -> u64 {
    std::env::var("VIRTFW_CRASH_RUNS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(|n| n / 4)
        .unwrap_or(0)
}

const WRAPPED: &[&str] = &[
    "nft",
    "iptables",
    "ip6tables",
    "iptables-restore",
    "ip6tables-restore",
];

// ---- iptables ------------------------------------------------------------------------------

/// Our transaction (it succeeds when not killed): `common::IPT_OURS` over two auto-rollback
/// groups, the second inheriting the first's rollback.
fn ipt_tx() -> String {
    format!(
        "<firewall name='ipt' backend='iptables'>\
         <group autoRollback='yes'>{}</group>\
         <group autoRollback='yes'><rollback inheritPrevious='yes'/>{}</group>\
         </firewall>",
        ipt_ours(0..4),
        ipt_ours(4..IPT_OURS.len())
    )
}

/// A namespace holding someone else's objects, our transaction, and the wrappers.
struct Setup {
    env: Env,
    path: String,
    file: std::path::PathBuf,
    /// Our plan's name.
    plan: &'static str,
    /// iptables: `iptables-save` (twins checked one by one); nftables: `nft -s list ruleset`.
    iptables: bool,
    before: String,
}

impl Setup {
    fn new(env: Env, plan: &'static str, tx: &str, iptables: bool, before: String) -> Setup {
        let path = wrappers(env.dir.path(), WRAPPED);
        let file = env.write("tx.xml", tx);
        Setup {
            env,
            path,
            file,
            plan,
            iptables,
            before,
        }
    }

    /// A `virtfw` command. These tests pick the path themselves (`--no-batch` or not), so the
    /// suite-wide `VIRTFW_NO_BATCH` must not turn a batch case into a per-command one.
    fn virtfw(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = self.env.cmd(args);
        cmd.env("PATH", &self.path).env_remove("VIRTFW_NO_BATCH");
        cmd
    }

    /// Run `args` and kill it right after its first command whose arguments contain `point`.
    fn kill(&self, args: &[&str], point: &str) {
        let path = matching_wrappers(self.env.dir.path(), WRAPPED);
        let mut cmd = self.env.cmd(args);
        cmd.env("PATH", &path)
            .env(STALL_MATCH, point)
            .env_remove("VIRTFW_NO_BATCH");
        kill_after(self.env.dir.path(), cmd, 1, None);
    }

    /// Run `args` and kill it after its `at`-th invocation of `only` (any wrapped program when
    /// `None`); `false` when it ran fewer (it then completed).
    fn try_kill(&self, args: &[&str], at: u64, only: Option<&str>) -> bool {
        try_kill_after(self.env.dir.path(), self.virtfw(args), at, only)
    }

    /// After recovery: exactly the state before (every twin once), no journal, no plan.
    fn assert_as_before(&self, what: &str) {
        if self.iptables {
            assert_ipt_as_before(&self.before, &self.env.ipt_save(), what);
        } else {
            assert_eq!(
                self.env.nft_state(),
                self.before,
                "{what}: the ruleset differs"
            );
        }
        assert_eq!(self.env.journals(), 0, "{what}: journal left behind");
        assert!(!plan_exists(&self.env, self.plan), "{what}: a plan is left");
    }
}

fn ipt_setup(prefix: &str) -> Setup {
    let env = Env::new(prefix);
    let before = env.add_ipt_others();
    Setup::new(env, "ipt", &ipt_tx(), true, before)
}

impl Setup {
    /// The argv of `virtfw [--no-batch] VERB ARG`.
    fn args<'a>(&'a self, per_command: bool, verb: &'a str, arg: &'a str) -> Vec<&'a str> {
        let mut args = vec![verb, arg];
        if per_command {
            args.insert(0, "--no-batch");
        }
        args
    }
}

/// Kill `apply` right after its command containing `point`, then recover; `ours` when
/// something of ours existed by then (the recovery must then have run undo commands).
fn apply_killed(s: Setup, per_command: bool, point: &str, ours: bool) {
    s.kill(&s.args(per_command, "apply", path_of(&s.file)), point);
    let undone = s.env.recover();
    assert!(!ours || undone > 0, "`{point}`: recover undid nothing");
    s.assert_as_before(&format!(
        "apply (per_command {per_command}) killed after `{point}`"
    ));
}

/// Apply completely, kill `remove` right after its command containing `point`, recover.
fn remove_killed(s: Setup, per_command: bool, point: &str) {
    let o = s.env.run(&["apply", path_of(&s.file)]);
    assert_eq!(o.status.code(), Some(0), "apply: {}", text(&o));
    s.kill(&s.args(per_command, "remove", s.plan), point);
    s.env.recover();
    s.assert_as_before(&format!(
        "remove (per_command {per_command}) killed after `{point}`"
    ));
}

#[test]
fn ipt_apply_killed_after_a_restore_committed() {
    // The first restore to finish (IPv4 and IPv6 run side by side).
    apply_killed(ipt_setup("vfw-cripta"), false, "-w --noflush", true);
}

#[test]
fn ipt_apply_killed_after_the_first_per_command_insert() {
    apply_killed(
        ipt_setup("vfw-cripta"),
        true,
        "-I FORWARD -s 10.7.0.1/32",
        true,
    );
}

#[test]
fn ipt_remove_killed_after_the_removal_restore() {
    // The first restore of the removal to finish.
    remove_killed(ipt_setup("vfw-criptr"), false, "-w --noflush");
}

#[test]
fn ipt_remove_killed_after_the_first_per_command_delete() {
    remove_killed(ipt_setup("vfw-criptr"), true, "--delete");
}

#[test]
fn ipt_remove_per_command_killed_after_deleting_our_twin() {
    remove_killed(
        ipt_setup("vfw-criptr"),
        true,
        "--delete FORWARD -s 10.7.0.1/32",
    );
}

#[test]
fn ipt_remove_per_command_killed_after_deleting_our_twin_in_a_custom_chain() {
    remove_killed(
        ipt_setup("vfw-criptr"),
        true,
        "--delete OTHERS -d 10.7.0.2/32",
    );
}

/// Kill `apply` after its restore batch, then kill `recover` after its `at`-th command,
/// then recover again; `false` when recover ran fewer commands (it then completed).
fn ipt_recover_killed(at: u64) -> bool {
    let s = ipt_setup("vfw-cripts");
    let args = ["apply", path_of(&s.file)];
    kill_after(
        s.env.dir.path(),
        s.virtfw(&args),
        1,
        Some("iptables-restore"),
    );
    if !s.try_kill(&["recover"], at, None) {
        return false;
    }
    s.env.recover();
    s.assert_as_before(&format!("recover killed after its command #{at}"));
    true
}

/// Kill `apply` (`per_command`: after its first insert, else after its restore batch), then
/// kill `recover` right after the command containing `undo` (the delete of one of our
/// rules), then recover again.
fn ipt_recover_killed_after(per_command: bool, undo: &str) {
    let s = ipt_setup("vfw-criptu");
    let mut args = vec!["apply", path_of(&s.file)];
    if per_command {
        args.insert(0, "--no-batch");
        kill_after(s.env.dir.path(), s.virtfw(&args), 3, Some("iptables"));
    } else {
        kill_after(
            s.env.dir.path(),
            s.virtfw(&args),
            1,
            Some("iptables-restore"),
        );
    }
    s.kill(&["recover"], undo);
    s.env.recover();
    s.assert_as_before(&format!(
        "apply (per_command {per_command}) killed, then recover killed after `{undo}`"
    ));
}

#[test]
fn ipt_recover_killed_after_deleting_a_rule_of_ours() {
    ipt_recover_killed_after(false, "--delete FORWARD -d 10.7.0.3/32");
}

#[test]
fn ipt_recover_killed_after_deleting_our_twin_in_a_custom_chain() {
    ipt_recover_killed_after(false, "--delete OTHERS -d 10.7.0.2/32");
}

#[test]
fn ipt_recover_killed_after_deleting_our_twin_in_forward() {
    ipt_recover_killed_after(false, "--delete FORWARD -s 10.7.0.1/32");
}

#[test]
fn ipt_recover_of_a_per_command_apply_killed_after_deleting_our_twin() {
    ipt_recover_killed_after(true, "--delete FORWARD -s 10.7.0.1/32");
}

#[test]
fn ipt_recover_killed_at_more_points() {
    for at in 1..=more_points() {
        if !ipt_recover_killed(at) {
            break;
        }
    }
}

/// Kill `apply` (even runs `--no-batch`) at a random moment, then
/// recover; when the plan was stored, kill `remove` likewise, recover, and remove what is
/// left. `setup` makes a fresh namespace for each run. Two runs, or `VIRTFW_CRASH_RUNS`.
fn random_kills(setup: &dyn Fn() -> Setup) {
    let runs = std::env::var("VIRTFW_CRASH_RUNS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(2);
    let mut rng = Rng::new();
    // Run `args` and kill it after a random time under `max` ms; then recover.
    let mut kill_randomly = |s: &Setup, args: &[&str], max: u64| {
        let delay = rng.below(max);
        let mut child = s
            .virtfw(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        s.env.recover();
        delay
    };
    for run in 0..runs {
        let s = setup();
        let per_command = run % 2 == 0;
        let delay = kill_randomly(&s, &s.args(per_command, "apply", path_of(&s.file)), 400);
        let mut what = format!("apply killed after {delay} ms");
        if plan_exists(&s.env, s.plan) {
            let delay = kill_randomly(&s, &s.args(per_command, "remove", s.plan), 300);
            what = format!("remove killed after {delay} ms");
            if plan_exists(&s.env, s.plan) {
                let o = s.env.run(&["remove", s.plan]);
                assert_eq!(o.status.code(), Some(0), "{}", text(&o));
            }
        }
        s.assert_as_before(&format!("run {run} (per_command {per_command}, {what})"));
    }
}

#[test]
fn ipt_random_kills() {
    random_kills(&|| ipt_setup("vfw-criptx"));
}

// ---- nftables ------------------------------------------------------------------------------

/// The hand-made objects: table `other` (table handle 1), then table `handmade` with a set
/// (elements), a base chain `hc` (chain handle 1: chains are numbered first) and a rule; so
/// `other`'s handle equals `hc`'s (checked in `nft_setup`).
const NFT_HANDMADE: &str = "\
table ip other {
\tchain oc {
\t\tip daddr 10.0.0.3 drop
\t}
}
table ip handmade {
\tset s {
\t\ttype ipv4_addr
\t\telements = { 10.0.0.1, 10.0.0.2 }
\t}
\tchain hc {
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr @s accept
\t}
}
";

/// Our transaction: idempotent adds of the hand-made table and chain, then our own chain
/// and rules (one of them in the hand-made chain), over two auto-rollback groups.
fn nft_tx() -> String {
    let a = |args: &[&str]| action("ipv4", args);
    format!(
        "<firewall name='nftown' backend='nftables'>\
         <group autoRollback='yes'>{}{}{}{}</group>\
         <group autoRollback='yes'><rollback inheritPrevious='yes'/>{}{}</group>\
         </firewall>",
        a(&["add", "table", "ip", "handmade"]),
        a(&[
            "add",
            "chain",
            "ip",
            "handmade",
            "hc",
            "{ type filter hook forward priority 0; policy accept; }"
        ]),
        a(&["add", "chain", "ip", "handmade", "ours"]),
        a(&["add", "rule", "ip", "handmade", "ours", "ip", "daddr", "10.0.0.9", "accept"]),
        a(&["add", "rule", "ip", "handmade", "hc", "ip", "daddr", "10.0.0.8", "jump", "ours"]),
        a(&["add", "rule", "ip", "handmade", "ours", "counter", "drop"]),
    )
}

/// `# handle N` of the line of `listing` (an `nft -a` listing) that starts with `start`.
fn handle_of(listing: &str, start: &str) -> u64 {
    let line = listing
        .lines()
        .find(|l| l.trim_start().starts_with(start))
        .unwrap_or_else(|| panic!("no `{start}` in {listing}"));
    line.rsplit("# handle ")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn nft_setup(prefix: &str) -> Setup {
    let env = Env::new(prefix);
    let hand = env.write("hand.nft", NFT_HANDMADE);
    env.by_hand(&["nft", "-f", path_of(&hand)]);
    let listing = env.ns.run(&["nft", "-a", "list", "ruleset"]).unwrap();
    assert_eq!(
        handle_of(&listing, "table ip other"),
        handle_of(&listing, "chain hc"),
        "the handles are not arranged to collide:\n{listing}"
    );
    let before = env.nft_state();
    Setup::new(env, "nftown", &nft_tx(), false, before)
}

#[test]
fn nft_apply_killed_after_its_batch() {
    apply_killed(nft_setup("vfw-crnfta"), false, "-ae -f -", true);
}

#[test]
fn nft_apply_per_command_killed_after_the_existing_table_add() {
    apply_killed(
        nft_setup("vfw-crnfta"),
        true,
        "add table ip handmade",
        false,
    );
}

#[test]
fn nft_apply_per_command_killed_after_the_existing_chain_add() {
    apply_killed(nft_setup("vfw-crnfta"), true, "chain ip handmade hc", false);
}

#[test]
fn nft_apply_per_command_killed_after_our_chain() {
    apply_killed(
        nft_setup("vfw-crnfta"),
        true,
        "chain ip handmade ours",
        true,
    );
}

#[test]
fn nft_apply_per_command_killed_after_our_rule_in_the_hand_made_chain() {
    apply_killed(nft_setup("vfw-crnfta"), true, "rule ip handmade hc", true);
}

#[test]
fn nft_apply_killed_at_more_points() {
    for per_command in [true, false] {
        for at in 1..=more_points() {
            let s = nft_setup("vfw-crnftm");
            let mut args = vec!["apply", path_of(&s.file)];
            if per_command {
                args.insert(0, "--no-batch");
            }
            if !s.try_kill(&args, at, Some("nft")) {
                break;
            }
            s.env.recover();
            s.assert_as_before(&format!(
                "apply (per_command {per_command}) killed at nft #{at}"
            ));
        }
    }
}

#[test]
fn nft_remove_killed_after_its_batch() {
    remove_killed(nft_setup("vfw-crnftr"), false, "-f -");
}

#[test]
fn nft_remove_per_command_killed_after_deleting_our_rule_in_the_hand_made_chain() {
    remove_killed(nft_setup("vfw-crnftr"), true, "delete rule ip handmade hc");
}

#[test]
fn nft_remove_per_command_killed_after_deleting_our_chain() {
    remove_killed(nft_setup("vfw-crnftr"), true, "delete chain ip handmade");
}

/// Kill a per-command apply after its last rule, then `recover` at `point`, then recover.
fn nft_recover_killed(point: &str) {
    let s = nft_setup("vfw-crnfts");
    let args = ["--no-batch", "apply", path_of(&s.file)];
    s.kill(&args, "counter drop");
    s.kill(&["recover"], point);
    s.env.recover();
    s.assert_as_before(&format!("recover killed at `{point}`"));
}

#[test]
fn nft_recover_killed_after_deleting_our_rule_in_the_hand_made_chain() {
    nft_recover_killed("delete rule ip handmade hc");
}

#[test]
fn nft_recover_killed_after_deleting_our_chain() {
    nft_recover_killed("delete chain ip handmade");
}

#[test]
fn nft_recover_killed_at_more_points() {
    for at in 1..=more_points() {
        let s = nft_setup("vfw-crnftn");
        let args = ["--no-batch", "apply", path_of(&s.file)];
        s.kill(&args, "counter drop");
        if !s.try_kill(&["recover"], at, Some("nft")) {
            break;
        }
        s.env.recover();
        s.assert_as_before(&format!("recover killed at nft #{at}"));
    }
}

#[test]
fn nft_random_kills() {
    random_kills(&|| nft_setup("vfw-crnftx"));
}
