//! Engine behaviour against the scripted executor: every scenario of libvirt's
//! `virfirewalltest.c` (spec §6.1) with its exact command sequence, plus the behaviours the spec
//! asks a port to test on top (auto-rollback, handle parsing, the `nft list` exception, removal
//! ordering, `INHERIT_PREVIOUS` gaps, XML round trips, bad input).
//!
//! Every scenario that applies runs on both paths ([`on_both_paths`]): the plain fake (the
//! per-command path, whose exact transcript is libvirt's and is checked) and the batching fake
//! (the batch path), which must reach the same outcome: result and error text, the rollback
//! commands run, the rollback lists and the removal plan. One exception: the fake cannot
//! script the echo of a batch, so a create that echoes no handle is tested per command only.

use std::sync::{Arc, Mutex};

use virtfw::executor::{FakeExecutor, FakeResponse};
use virtfw::transcript::command_line;
use virtfw::{
    ApplyOptions, Backend, Error, ExecError, Firewall, Layer, QueryContext, RollbackFlags,
    TransactionFlags,
};

/// `iptables -w` followed by the words of `rest` (a word never contains a space here).
fn ipt(rest: &str) -> Vec<String> {
    ["iptables", "-w"]
        .into_iter()
        .map(String::from)
        .chain(rest.split_whitespace().map(String::from))
        .collect()
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn args(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// libvirt's "X fails": status 127 for any command with `-A` and later `192.168.122.255`.
fn fake_255_fails() -> FakeExecutor {
    FakeExecutor::new().on(
        FakeExecutor::args_contain(&["-A", "192.168.122.255"]),
        FakeResponse::fail(127, "iptables: the scripted failure"),
    )
}

const A1: &str = "-A INPUT --source 192.168.122.1 --jump ACCEPT";
const A255: &str = "-A INPUT --source 192.168.122.255 --jump REJECT";
const ANOT1: &str = "-A INPUT --source !192.168.122.1 --jump REJECT";
const D1: &str = "-D INPUT --source 192.168.122.1 --jump ACCEPT";
const D255: &str = "-D INPUT --source 192.168.122.255 --jump REJECT";
const DNOT1: &str = "-D INPUT --source !192.168.122.1 --jump REJECT";
const OUT1: &str = "-A OUTPUT --source 192.168.122.1 --jump ACCEPT";
const OUTDROP: &str = "-A OUTPUT --jump DROP";

fn expect(fake: &FakeExecutor, lines: &[&str]) {
    let want: Vec<Vec<String>> = lines.iter().map(|l| ipt(l)).collect();
    assert_eq!(fake.commands(), want, "transcript:\n{}", fake.transcript());
}

// ---------------------------------------------------------------------------------------------
// Both apply paths
// ---------------------------------------------------------------------------------------------

/// One apply and what it left: the firewall (rollback lists filled in), the fake that ran it,
/// and the result.
struct Run {
    fw: Firewall,
    fake: FakeExecutor,
    result: Result<(), Error>,
}

impl Run {
    /// How many invocations were batches (commands on standard input).
    fn batches(&self) -> usize {
        self.fake
            .invocations()
            .iter()
            .filter(|(_, stdin)| stdin.is_some())
            .count()
    }
}

/// What a caller observes of an apply whatever path ran it. The exact invocations differ (the
/// batch path runs batches, and re-runs a failed batch command by command), so they are
/// compared per test on the per-command path only; this is what must be equal on both.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// Ok, or the error text (it names the failing command line and its stderr).
    result: Result<(), String>,
    /// The invocations after the failing command: the rollback, one command at a time.
    after_failure: Vec<Vec<String>>,
    /// Every group's rollback list (the inverses recorded, in order).
    rollbacks: Vec<Vec<(Layer, Vec<String>, bool)>>,
    /// The removal plan, as stored.
    removal: Option<String>,
}

/// The command line an error blames, if it blames one.
fn blamed(err: &Error) -> Option<&str> {
    match err {
        Error::CommandFailed { cmdline, .. }
        | Error::Exec { cmdline, .. }
        | Error::EchoIncomplete { cmdline, .. }
        | Error::Query { cmdline, .. } => Some(cmdline),
        _ => None,
    }
}

fn outcome(run: &Run) -> Outcome {
    let invocations = run.fake.invocations();
    let after_failure = match &run.result {
        Ok(()) => Vec::new(),
        Err(err) => {
            // After the last batch and the last run of the blamed command, whichever is later.
            let cut = invocations
                .iter()
                .rposition(|(argv, stdin)| {
                    stdin.is_some() || blamed(err) == Some(command_line(argv).as_str())
                })
                .map_or(0, |i| i + 1);
            invocations[cut..].iter().map(|(a, _)| a.clone()).collect()
        }
    };
    Outcome {
        result: run.result.as_ref().map(|_| ()).map_err(|e| e.to_string()),
        after_failure,
        rollbacks: run
            .fw
            .groups()
            .iter()
            .map(|g| plain(g.rollbacks()))
            .collect(),
        removal: run.fw.new_from_rollback().ok().map(|r| r.to_xml()),
    }
}

/// Apply `build()` with `fake()` (the per-command path: the fake declines batches) and with
/// `fake().with_batching()` (the batch path), assert that both have the same [`Outcome`], and
/// return both runs (per-command first) for the test's own exact checks.
fn on_both_paths(build: impl Fn() -> Firewall, fake: impl Fn() -> FakeExecutor) -> (Run, Run) {
    let run = |fake: FakeExecutor, per_command: bool| {
        let mut fw = build();
        let options = ApplyOptions {
            observer: None,
            per_command,
        };
        let result = fw.apply_with(&fake, options);
        Run { fw, fake, result }
    };
    let plain_run = run(fake(), true);
    let batch_run = run(fake().with_batching(), false);
    assert_eq!(
        outcome(&plain_run),
        outcome(&batch_run),
        "per-command path (left) and batch path (right) differ; batch transcript:\n{}",
        batch_run.fake.transcript()
    );
    (plain_run, batch_run)
}

// ---------------------------------------------------------------------------------------------
// spec §6.1, one test per scenario
// ---------------------------------------------------------------------------------------------

#[test]
fn single_group() {
    let build = || {
        let mut fw = Firewall::new(Backend::Iptables);
        fw.start_transaction(TransactionFlags::empty());
        fw.add_cmd(Layer::Ipv4, args(A1));
        fw.add_cmd(Layer::Ipv4, args(ANOT1));
        fw
    };
    let (run, batch) = on_both_paths(build, FakeExecutor::new);
    run.result.unwrap();
    assert_eq!(batch.batches(), 1, "{}", batch.fake.transcript());
    let fake = run.fake;
    expect(&fake, &[A1, ANOT1]);
    let lines: Vec<String> = fake.commands().iter().map(|c| command_line(c)).collect();
    assert_eq!(
        lines,
        [
            "iptables -w -A INPUT --source 192.168.122.1 --jump ACCEPT",
            "iptables -w -A INPUT --source '!192.168.122.1' --jump REJECT",
        ]
    );
}

#[test]
fn remove_rule() {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(A1));
    let partial = fw.add_cmd(Layer::Ipv4, ["-A", "INPUT"]).unwrap();
    fw.cmd_add_arg(partial, ["--source"]);
    assert_eq!(fw.cmd_arg_count(partial), 3);
    assert!(fw.remove_cmd(partial));
    assert!(!fw.remove_cmd(partial), "a removed command is gone");
    assert_eq!(fw.cmd_arg_count(partial), 0);
    let third = fw.add_cmd(Layer::Ipv4, ["-A", "INPUT"]).unwrap();
    fw.cmd_add_arg(third, ["--source"]);
    fw.cmd_add_arg(third, [format!("!{}", "192.168.122.1")]);
    fw.cmd_add_arg(third, ["--jump", "REJECT"]);
    let (run, _) = on_both_paths(|| fw.clone_plain(), FakeExecutor::new);
    run.result.unwrap();
    expect(&run.fake, &[A1, ANOT1]);
}

#[test]
fn many_groups() {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(A1));
    fw.add_cmd(Layer::Ipv4, args(ANOT1));
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(OUT1));
    fw.add_cmd(Layer::Ipv4, args(OUTDROP));
    let (run, _) = on_both_paths(|| fw.clone_plain(), FakeExecutor::new);
    run.result.unwrap();
    expect(&run.fake, &[A1, ANOT1, OUT1, OUTDROP]);
}

#[test]
fn ignore_fail_group() {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::IGNORE_ERRORS);
    fw.add_cmd(Layer::Ipv4, args(A1));
    fw.add_cmd(Layer::Ipv4, args(A255));
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(OUT1));
    fw.add_cmd(Layer::Ipv4, args(OUTDROP));
    let (run, _) = on_both_paths(|| fw.clone_plain(), fake_255_fails);
    run.result.unwrap();
    expect(&run.fake, &[A1, A255, OUT1, OUTDROP]);
}

#[test]
fn ignore_fail_rule() {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(A1));
    fw.add_cmd_full(Layer::Ipv4, true, None, args(A255));
    fw.add_cmd(Layer::Ipv4, args(OUT1));
    fw.add_cmd(Layer::Ipv4, args(OUTDROP));
    let (run, _) = on_both_paths(|| fw.clone_plain(), fake_255_fails);
    run.result.unwrap();
    expect(&run.fake, &[A1, A255, OUT1, OUTDROP]);
}

#[test]
fn no_rollback() {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(A1));
    fw.add_cmd(Layer::Ipv4, args(A255));
    fw.add_cmd(Layer::Ipv4, args(ANOT1));
    let (run, batch) = on_both_paths(|| fw.clone_plain(), fake_255_fails);
    assert!(batch.batches() > 0, "the batch path tried a batch first");
    let err = run.result.unwrap_err();
    expect(&run.fake, &[A1, A255]);
    match &err {
        Error::CommandFailed {
            cmdline,
            status,
            stderr,
        } => {
            assert_eq!(
                cmdline,
                "iptables -w -A INPUT --source 192.168.122.255 --jump REJECT"
            );
            assert_eq!(*status, 127);
            assert_eq!(stderr, "iptables: the scripted failure");
        }
        other => panic!("unexpected error {other:?}"),
    }
    // The message names the command line and its stderr.
    let msg = err.to_string();
    assert!(msg.contains("--source 192.168.122.255") && msg.contains("scripted failure"));
}

#[test]
fn single_rollback() {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(A1));
    fw.add_cmd(Layer::Ipv4, args(A255));
    fw.add_cmd(Layer::Ipv4, args(ANOT1));
    fw.start_rollback(RollbackFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(D1));
    fw.add_cmd(Layer::Ipv4, args(D255));
    fw.add_cmd(Layer::Ipv4, args(DNOT1));
    let (run, _) = on_both_paths(|| fw.clone_plain(), fake_255_fails);
    assert!(matches!(
        run.result,
        Err(Error::CommandFailed { status: 127, .. })
    ));
    expect(&run.fake, &[A1, A255, D1, D255, DNOT1]);
}

#[test]
fn many_rollback() {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(A1));
    fw.start_rollback(RollbackFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(D1));
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(A255));
    fw.add_cmd(Layer::Ipv4, args(ANOT1));
    fw.start_rollback(RollbackFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(D255));
    fw.add_cmd(Layer::Ipv4, args(DNOT1));
    let (run, _) = on_both_paths(|| fw.clone_plain(), fake_255_fails);
    assert!(run.result.is_err());
    expect(&run.fake, &[A1, A255, D255, DNOT1]);
}

#[test]
fn chained_rollback() {
    let a127 = "-A INPUT --source 192.168.122.127 --jump REJECT";
    let d127 = "-D INPUT --source 192.168.122.127 --jump REJECT";
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(A1));
    fw.start_rollback(RollbackFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(D1));
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(a127));
    fw.add_cmd(Layer::Ipv4, args(ANOT1));
    fw.start_rollback(RollbackFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(d127));
    fw.add_cmd(Layer::Ipv4, args(DNOT1));
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(A255));
    fw.add_cmd(Layer::Ipv4, args(ANOT1));
    fw.start_rollback(RollbackFlags::INHERIT_PREVIOUS);
    fw.add_cmd(Layer::Ipv4, args(D255));
    fw.add_cmd(Layer::Ipv4, args(DNOT1));
    let (run, _) = on_both_paths(|| fw.clone_plain(), fake_255_fails);
    assert!(run.result.is_err());
    expect(
        &run.fake,
        &[A1, a127, ANOT1, A255, d127, DNOT1, D255, DNOT1],
    );
}

const FILTER_LISTING: &str = "Chain INPUT (policy ACCEPT)\n\
target     prot opt source               destination\n\
\n\
Chain FORWARD (policy ACCEPT)\n\
target     prot opt source               destination\n\
\n\
Chain OUTPUT (policy ACCEPT)\n\
target     prot opt source               destination\n";

const NAT_LISTING: &str = "Chain PREROUTING (policy ACCEPT)\n\
target     prot opt source               destination\n\
\n\
Chain INPUT (policy ACCEPT)\n\
target     prot opt source               destination\n\
\n\
Chain OUTPUT (policy ACCEPT)\n\
target     prot opt source               destination\n\
\n\
Chain POSTROUTING (policy ACCEPT)\n\
target     prot opt source               destination\n";

/// The query callback of the scenario: checks the lines it receives and adds one rule.
fn listing_callback(
    expected: &'static str,
    seen: Arc<Mutex<Vec<Vec<String>>>>,
) -> virtfw::QueryCallback {
    Box::new(move |ctx: &mut QueryContext| {
        let want: Vec<String> = expected.split('\n').map(String::from).collect();
        if ctx.lines() != want.as_slice() {
            return Err(format!("unexpected lines {:?}", ctx.lines()));
        }
        assert_eq!(ctx.layer(), Layer::Ipv4);
        seen.lock().unwrap().push(ctx.lines().to_vec());
        ctx.add_cmd(
            Layer::Ipv4,
            [
                "-A",
                "INPUT",
                "--source",
                "!192.168.122.129",
                "--jump",
                "REJECT",
            ],
        );
        Ok(())
    })
}

#[test]
fn query_transaction() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let a127 = "-A INPUT --source 192.168.122.127 --jump REJECT";
    let a130 = "-A INPUT --source 192.168.122.130 --jump REJECT";
    let a128 = "-A INPUT --source 192.168.122.128 --jump REJECT";
    let anot129 = "-A INPUT --source !192.168.122.129 --jump REJECT";
    let build = || {
        let mut fw = Firewall::new(Backend::Iptables);
        fw.start_transaction(TransactionFlags::empty());
        fw.add_cmd(Layer::Ipv4, args(A1));
        fw.start_transaction(TransactionFlags::empty());
        fw.add_cmd(Layer::Ipv4, args(a127));
        fw.add_cmd_full(
            Layer::Ipv4,
            false,
            Some(listing_callback(FILTER_LISTING, seen.clone())),
            ["-L"],
        );
        fw.add_cmd_full(
            Layer::Ipv4,
            false,
            Some(listing_callback(NAT_LISTING, seen.clone())),
            ["-t", "nat", "-L"],
        );
        fw.add_cmd(Layer::Ipv4, args(a130));
        fw.start_transaction(TransactionFlags::empty());
        fw.add_cmd(Layer::Ipv4, args(a128));
        fw.add_cmd(Layer::Ipv4, args(ANOT1));
        fw
    };
    let fake = || {
        FakeExecutor::new()
            .on(
                FakeExecutor::args_contain(&["-t", "nat", "-L"]),
                FakeResponse::stdout(NAT_LISTING),
            )
            .on(
                FakeExecutor::args_contain(&["-L"]),
                FakeResponse::stdout(FILTER_LISTING),
            )
    };
    let (run, _) = on_both_paths(build, fake);
    run.result.unwrap();
    let (fw, fake) = (run.fw, run.fake);
    expect(
        &fake,
        &[
            A1,
            a127,
            "-L",
            "-t nat -L",
            a130,
            anot129,
            anot129,
            a128,
            ANOT1,
        ],
    );
    // Each path's callbacks saw the same two listings.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[..2], seen[2..]);
    assert_eq!(
        seen[0].last().map(String::as_str),
        Some(""),
        "trailing empty line kept"
    );
    assert_eq!(seen[1].len(), NAT_LISTING.split('\n').count());
    // The additions stay in the group they were added to.
    assert_eq!(fw.groups()[1].actions().len(), 6);
}

#[test]
fn query_callback_error_aborts_and_rolls_back() {
    let build = || {
        let mut fw = Firewall::new(Backend::Iptables);
        fw.start_transaction(TransactionFlags::empty());
        fw.add_cmd(Layer::Ipv4, args(A1));
        fw.add_cmd_full(
            Layer::Ipv4,
            false,
            Some(Box::new(|_: &mut QueryContext| {
                Err("listing looks wrong".into())
            })),
            ["-S"],
        );
        fw.add_cmd(Layer::Ipv4, args(OUT1));
        fw.start_rollback(RollbackFlags::empty());
        fw.add_cmd(Layer::Ipv4, args(D1));
        fw
    };
    let (run, _) = on_both_paths(build, FakeExecutor::new);
    let fake = run.fake;
    let err = run.result.unwrap_err();
    match &err {
        Error::Query { cmdline, message } => {
            assert_eq!(cmdline, "iptables -w -S");
            assert_eq!(message, "listing looks wrong");
        }
        other => panic!("unexpected error {other:?}"),
    }
    expect(&fake, &[A1, "-S", D1]);
}

// ---------------------------------------------------------------------------------------------
// Auto-rollback
// ---------------------------------------------------------------------------------------------

fn plain(cmds: &[virtfw::Command]) -> Vec<(Layer, Vec<String>, bool)> {
    cmds.iter()
        .map(|c| (c.layer(), c.args().to_vec(), c.ignore_errors()))
        .collect()
}

#[test]
fn auto_rollback_nftables() {
    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, args("add table ip vt"));
    fw.add_cmd(
        Layer::Ipv4,
        [
            "add",
            "chain",
            "ip",
            "vt",
            "input",
            "{ type filter hook input priority 0; policy accept; }",
        ],
    );
    fw.add_cmd(
        Layer::Ipv4,
        args("insert rule ip vt input iif lo counter accept"),
    );
    fw.add_cmd(Layer::Ipv6, args("create table ip6 vt6"));
    fw.add_cmd(Layer::Ipv6, args("add chain ip6 vt6 fwd"));
    fw.add_cmd(Layer::Ipv6, args("-n add rule ip6 vt6 fwd counter"));
    // Not creates of rules, chains or tables: no -ae, no inverse.
    fw.add_cmd(Layer::Ipv4, args("add set ip vt s { type ipv4_addr; }"));
    fw.add_cmd(Layer::Ipv4, args("list table ip vt"));
    fw.add_cmd(Layer::Ipv4, args("flush chain ip vt input"));
    fw.add_cmd(Layer::Tc, args("filter add dev lo prio 2 protocol ip u32"));
    let (run, _) = on_both_paths(|| fw.clone_plain(), FakeExecutor::new);
    run.result.unwrap();
    let (fw, fake) = (run.fw, run.fake);
    let ran: Vec<String> = fake.commands().iter().map(|c| c.join(" ")).collect();
    assert_eq!(
        ran,
        [
            // Before the first table/chain create in a table: what it held (nothing), and
            // the absent objects are made with `create` (decision: never adopt).
            "nft -a list table ip vt",
            "nft -ae create table ip vt",
            "nft -ae create chain ip vt input { type filter hook input priority 0; policy accept; }",
            "nft -ae insert rule ip vt input iif lo counter accept",
            "nft -a list table ip6 vt6",
            "nft -ae create table ip6 vt6",
            "nft -ae create chain ip6 vt6 fwd",
            "nft -ae -n add rule ip6 vt6 fwd counter",
            "nft add set ip vt s { type ipv4_addr; }",
            "nft list table ip vt",
            "nft flush chain ip vt input",
            "tc filter add dev lo prio 2 protocol ip u32",
        ]
    );
    let rollbacks = plain(fw.groups()[0].rollbacks());
    assert_eq!(
        rollbacks,
        [
            (Layer::Ipv4, words("delete table ip handle 1"), true),
            (Layer::Ipv4, words("delete chain ip vt handle 2"), true),
            (Layer::Ipv4, words("delete rule ip vt input handle 3"), true),
            (Layer::Ipv6, words("delete table ip6 handle 4"), true),
            (Layer::Ipv6, words("delete chain ip6 vt6 handle 5"), true),
            (Layer::Ipv6, words("delete rule ip6 vt6 fwd handle 6"), true),
        ]
    );
}

#[test]
fn auto_rollback_nftables_libvirt_handle_5309() {
    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(
        Layer::Ipv4,
        args("insert rule ip libvirt_network guest_nat ip saddr 192.168.122.0/24 ip daddr 224.0.0.0/24 counter return"),
    );
    fw.add_cmd(
        Layer::Ipv6,
        args("add chain ip6 libvirt_network guest_input"),
    );
    fw.add_cmd(Layer::Ipv4, args("add table ip libvirt_network"));
    let (run, batch) = on_both_paths(
        || fw.clone_plain(),
        || FakeExecutor::new().with_fixed_handle(5309),
    );
    run.result.unwrap();
    assert_eq!(batch.batches(), 1, "{}", batch.fake.transcript());
    let fw = run.fw;
    let rollbacks: Vec<Vec<String>> = fw.groups()[0]
        .rollbacks()
        .iter()
        .map(|c| c.args().to_vec())
        .collect();
    assert_eq!(
        rollbacks,
        [
            words("delete rule ip libvirt_network guest_nat handle 5309"),
            words("delete chain ip6 libvirt_network handle 5309"),
            words("delete table ip handle 5309"),
        ]
    );
}

#[test]
fn auto_rollback_iptables_family() {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, args("--new-chain VFW"));
    fw.add_cmd(
        Layer::Ipv4,
        args("--table filter --insert VFW --source 10.0.0.1 --jump ACCEPT"),
    );
    fw.add_cmd(Layer::Ipv4, args("-I INPUT 1 --jump VFW"));
    fw.add_cmd(
        Layer::Ipv4,
        args("-t nat --append POSTROUTING -s 10.0.0.0/8 -j MASQUERADE"),
    );
    fw.add_cmd(Layer::Ipv6, args("-A INPUT -s 2001:db8::1 -j DROP"));
    fw.add_cmd(
        Layer::Ethernet,
        args("--insert FORWARD --source 52:54:00:00:00:01 --jump ACCEPT"),
    );
    fw.add_cmd(Layer::Ipv4, args("-P FORWARD DROP"));
    let (run, _) = on_both_paths(|| fw.clone_plain(), FakeExecutor::new);
    run.result.unwrap();
    let (fw, fake) = (run.fw, run.fake);
    let ran: Vec<String> = fake.commands().iter().map(|c| c.join(" ")).collect();
    assert_eq!(
        ran,
        [
            "iptables -w --new-chain VFW",
            "iptables -w --table filter --insert VFW --source 10.0.0.1 --jump ACCEPT",
            "iptables -w -I INPUT 1 --jump VFW",
            "iptables -w -t nat --append POSTROUTING -s 10.0.0.0/8 -j MASQUERADE",
            "ip6tables -w -A INPUT -s 2001:db8::1 -j DROP",
            "ebtables --concurrent --insert FORWARD --source 52:54:00:00:00:01 --jump ACCEPT",
            "iptables -w -P FORWARD DROP",
        ]
    );
    // Inverses: the create option becomes --delete; -w/--concurrent are not stored; the
    // position of a positional insert is dropped; -N and -P get no inverse.
    assert_eq!(
        plain(fw.groups()[0].rollbacks()),
        [
            (
                Layer::Ipv4,
                words("--table filter --delete VFW --source 10.0.0.1 --jump ACCEPT"),
                true
            ),
            (Layer::Ipv4, words("--delete INPUT --jump VFW"), true),
            (
                Layer::Ipv4,
                words("-t nat --delete POSTROUTING -s 10.0.0.0/8 -j MASQUERADE"),
                true
            ),
            (
                Layer::Ipv6,
                words("--delete INPUT -s 2001:db8::1 -j DROP"),
                true
            ),
            (
                Layer::Ethernet,
                words("--delete FORWARD --source 52:54:00:00:00:01 --jump ACCEPT"),
                true
            ),
        ]
    );
}

#[test]
fn without_auto_rollback_nothing_is_recorded() {
    for backend in [Backend::Iptables, Backend::Nftables] {
        let mut fw = Firewall::new(backend);
        fw.start_transaction(TransactionFlags::empty());
        fw.add_cmd(Layer::Ipv4, args("add rule ip t c -A accept"));
        let (run, _) = on_both_paths(|| fw.clone_plain(), FakeExecutor::new);
        run.result.unwrap();
        let (fw, fake) = (run.fw, run.fake);
        assert!(fw.groups()[0].rollbacks().is_empty(), "{backend}");
        assert!(!fake.commands()[0].contains(&"-ae".to_string()));
    }
}

#[test]
fn auto_rollback_during_failure_runs_inverses_in_creation_order() {
    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, args("add table ip vt"));
    fw.add_cmd(Layer::Ipv4, args("add chain ip vt c"));
    fw.add_cmd(Layer::Ipv4, args("add rule ip vt c jump missing"));
    fw.add_cmd(Layer::Ipv4, args("add rule ip vt c accept"));
    let fake = || {
        FakeExecutor::new().on(
            FakeExecutor::args_contain(&["jump", "missing"]),
            FakeResponse::fail(
                1,
                "Error: Could not process rule: No such file or directory",
            ),
        )
    };
    let (run, batch) = on_both_paths(|| fw.clone_plain(), fake);
    assert!(batch.batches() > 0, "the batch path tried a batch first");
    let fake = run.fake;
    let err = run.result.unwrap_err();
    assert!(err.to_string().contains("No such file or directory"));
    let ran: Vec<String> = fake.commands().iter().map(|c| c.join(" ")).collect();
    assert_eq!(
        ran,
        [
            "nft -a list table ip vt",
            "nft -ae create table ip vt",
            "nft -ae create chain ip vt c",
            "nft -ae add rule ip vt c jump missing",
            "nft delete table ip handle 1",
            "nft delete chain ip vt handle 2",
        ]
    );
}

/// Per-command path only: the batching fake answers every create in a batch with a handle
/// and cannot be scripted otherwise (the echo map has its own unit tests in `src/nft.rs`).
/// A create of a new object whose echo carries no handle for it is an error (libvirt: "no
/// valid handle") and rolls back what was recorded before it.
#[test]
fn handle_parsing_failure_is_an_error_and_rolls_back() {
    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, args("add table ip vt"));
    fw.add_cmd(Layer::Ipv4, args("add chain ip vt c"));
    fw.add_cmd(Layer::Ipv4, args("add rule ip vt c accept"));
    let fake = FakeExecutor::new().on(
        FakeExecutor::args_contain(&["-ae", "chain"]),
        FakeResponse::stdout("create chain ip vt c # handle \n"),
    );
    let err = fw.apply(&fake).unwrap_err();
    match &err {
        Error::EchoIncomplete { cmdline, stdout } => {
            assert_eq!(cmdline, "nft -ae create chain ip vt c");
            assert_eq!(stdout, "create chain ip vt c # handle \n");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("unknown handle"));
    let ran: Vec<String> = fake.commands().iter().map(|c| c.join(" ")).collect();
    assert_eq!(
        ran,
        [
            "nft -a list table ip vt",
            "nft -ae create table ip vt",
            "nft -ae create chain ip vt c",
            "nft delete table ip handle 1",
        ]
    );
    // Output without the marker at all fails the same way.
    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, args("add table ip vt"));
    let fake = FakeExecutor::new().on(
        FakeExecutor::args_contain(&["-ae"]),
        FakeResponse::stdout(""),
    );
    assert!(matches!(fw.apply(&fake), Err(Error::EchoIncomplete { .. })));
}

#[test]
fn failing_nft_list_is_not_an_error() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let build = || {
        let seen = seen.clone();
        let mut fw = Firewall::new(Backend::Nftables);
        fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
        fw.add_cmd_full(
            Layer::Ipv4,
            false,
            Some(Box::new(move |ctx: &mut QueryContext| {
                seen.lock().unwrap().push(ctx.lines().to_vec());
                Ok(())
            })),
            args("list table ip libvirt_network"),
        );
        fw.add_cmd(Layer::Ipv4, args("add table ip libvirt_network"));
        fw
    };
    let fake = || {
        FakeExecutor::new().on(
            FakeExecutor::args_contain(&["list"]),
            FakeResponse::fail(1, "Error: No such file or directory"),
        )
    };
    let (run, _) = on_both_paths(build, fake);
    run.result.unwrap();
    // Empty output is no lines at all (glib's g_strsplit, which libvirt uses), on both paths.
    assert_eq!(*seen.lock().unwrap(), [Vec::<String>::new(), Vec::new()]);
    assert_eq!(
        run.fw.groups()[0].rollbacks().len(),
        1,
        "only the table create"
    );

    // The exception looks at the first stored argument only: `-a list …` failing is an error,
    // and so is a failing iptables listing.
    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args("-a list table ip libvirt_network"));
    let (run, _) = on_both_paths(|| fw.clone_plain(), fake);
    assert!(matches!(run.result, Err(Error::CommandFailed { .. })));
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args("list"));
    let (run, _) = on_both_paths(
        || fw.clone_plain(),
        || FakeExecutor::new().on(|_: &[String]| true, FakeResponse::fail(2, "bad")),
    );
    assert!(matches!(run.result, Err(Error::CommandFailed { .. })));
}

#[test]
fn ignored_failures_create_no_inverse() {
    let fails = || {
        FakeExecutor::new().on(
            FakeExecutor::args_contain(&["192.0.2.99"]),
            FakeResponse::fail(1, "refused"),
        )
    };
    // nftables, group-level ignore.
    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK | TransactionFlags::IGNORE_ERRORS);
    fw.add_cmd(
        Layer::Ipv4,
        args("add rule ip t c ip saddr 192.0.2.99 accept"),
    );
    fw.add_cmd(
        Layer::Ipv4,
        args("add rule ip t c ip saddr 192.0.2.1 accept"),
    );
    let (run, _) = on_both_paths(|| fw.clone_plain(), fails);
    run.result.unwrap();
    assert_eq!(
        plain(run.fw.groups()[0].rollbacks()),
        [(Layer::Ipv4, words("delete rule ip t c handle 1"), true)]
    );
    // iptables, command-level ignore.
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd_full(
        Layer::Ipv4,
        true,
        None,
        args("-A INPUT -s 192.0.2.99 -j DROP"),
    );
    fw.add_cmd(Layer::Ipv6, args("-A INPUT -s 2001:db8::1 -j DROP"));
    let (run, _) = on_both_paths(|| fw.clone_plain(), fails);
    run.result.unwrap();
    let fake = run.fake;
    assert_eq!(
        plain(run.fw.groups()[0].rollbacks()),
        [(
            Layer::Ipv6,
            words("--delete INPUT -s 2001:db8::1 -j DROP"),
            true
        )]
    );
    assert_eq!(fake.commands().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Removal firewall
// ---------------------------------------------------------------------------------------------

#[test]
fn removal_firewall_reverses_groups_and_commands() {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.set_name(Some("original"));
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args("-N VFW"));
    fw.add_rollback_cmd(Layer::Ipv4, args("-X VFW"));
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, args("-A VFW -s 10.0.0.1 -j ACCEPT"));
    fw.add_cmd(Layer::Ipv6, args("-I INPUT -s 2001:db8::1 -j DROP"));
    fw.add_cmd(Layer::Ethernet, args("-A FORWARD -j ACCEPT"));
    // A group with nothing to undo is skipped.
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args("-P FORWARD ACCEPT"));
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, args("-t nat -A POSTROUTING -j MASQUERADE"));
    let (run, _) = on_both_paths(|| fw.clone_plain(), FakeExecutor::new);
    run.result.unwrap();
    let fw = run.fw;

    let removal = fw.new_from_rollback().unwrap();
    assert_eq!(removal.backend(), Backend::Iptables);
    assert_eq!(removal.name(), None, "the name is not copied");
    assert_eq!(removal.groups().len(), 3);
    for g in removal.groups() {
        assert_eq!(g.flags(), TransactionFlags::IGNORE_ERRORS);
        assert!(g.rollbacks().is_empty());
        assert!(g
            .actions()
            .iter()
            .all(|c| c.ignore_errors() && !c.is_query()));
    }
    let groups: Vec<Vec<(Layer, Vec<String>, bool)>> = removal
        .groups()
        .iter()
        .map(|g| plain(g.actions()))
        .collect();
    assert_eq!(
        groups,
        [
            vec![(
                Layer::Ipv4,
                words("-t nat --delete POSTROUTING -j MASQUERADE"),
                true
            )],
            vec![
                (Layer::Ethernet, words("--delete FORWARD -j ACCEPT"), true),
                (
                    Layer::Ipv6,
                    words("--delete INPUT -s 2001:db8::1 -j DROP"),
                    true
                ),
                (
                    Layer::Ipv4,
                    words("--delete VFW -s 10.0.0.1 -j ACCEPT"),
                    true
                ),
            ],
            vec![(Layer::Ipv4, words("-X VFW"), true)],
        ]
    );

    // Applying it never fails on individual errors and runs everything, in order (the batch
    // path falls back to exactly that when its batch fails).
    let (run, _) = on_both_paths(
        || removal.clone_plain(),
        || FakeExecutor::new().on(|_: &[String]| true, FakeResponse::fail(1, "gone")),
    );
    run.result.unwrap();
    let ran: Vec<String> = run.fake.commands().iter().map(|c| c.join(" ")).collect();
    assert_eq!(
        ran,
        [
            "iptables -w -t nat --delete POSTROUTING -j MASQUERADE",
            "ebtables --concurrent --delete FORWARD -j ACCEPT",
            "ip6tables -w --delete INPUT -s 2001:db8::1 -j DROP",
            "iptables -w --delete VFW -s 10.0.0.1 -j ACCEPT",
            "iptables -w -X VFW",
        ]
    );
}

#[test]
fn removal_of_nothing_is_empty() {
    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args("add table ip t"));
    let (run, _) = on_both_paths(|| fw.clone_plain(), FakeExecutor::new);
    run.result.unwrap();
    let removal = run.fw.new_from_rollback().unwrap();
    assert!(removal.groups().is_empty() && removal.is_empty());
    assert_eq!(removal.to_xml(), "<firewall backend='nftables'/>\n");
}

// ---------------------------------------------------------------------------------------------
// INHERIT_PREVIOUS and its gaps
// ---------------------------------------------------------------------------------------------

/// Four groups `g0..g3`, each adding `-A INPUT -s 10.0.0.<g>` and rolling back with `-D`; the
/// group `fail` also runs the scripted failing command.
fn four_groups(flags: [RollbackFlags; 4], fail: usize) -> (Firewall, Vec<String>) {
    let mut fw = Firewall::new(Backend::Iptables);
    for (g, f) in flags.iter().enumerate() {
        fw.start_transaction(TransactionFlags::empty());
        fw.add_cmd(
            Layer::Ipv4,
            args(&format!("-A INPUT -s 10.0.0.{g} -j ACCEPT")),
        );
        if g == fail {
            fw.add_cmd(Layer::Ipv4, args(A255));
        }
        fw.start_rollback(*f);
        fw.add_cmd(
            Layer::Ipv4,
            args(&format!("-D INPUT -s 10.0.0.{g} -j ACCEPT")),
        );
    }
    let applied = (0..=fail)
        .map(|g| format!("-A INPUT -s 10.0.0.{g} -j ACCEPT"))
        .chain([A255.to_string()])
        .collect();
    (fw, applied)
}

fn rolled_back(fake: &FakeExecutor, applied: usize) -> Vec<usize> {
    fake.commands()[applied..]
        .iter()
        .map(|c| {
            assert_eq!(c[2], "-D", "{c:?}");
            c[5].strip_prefix("10.0.0.").unwrap().parse().unwrap()
        })
        .collect()
}

#[test]
fn inherit_previous_gap() {
    let inherit = RollbackFlags::INHERIT_PREVIOUS;
    let none = RollbackFlags::empty();
    // (flags of g0..g3, failing group, groups rolled back in order)
    let cases: [([RollbackFlags; 4], usize, Vec<usize>); 6] = [
        // g3 has no flag but g2 does: the scan does not stop at g3, so g1..g3 roll back; g0's
        // flag is never read.
        ([inherit, none, inherit, none], 3, vec![1, 2, 3]),
        // A gap at g2 does not stop the scan either: g1 decides, everything rolls back.
        ([none, inherit, none, inherit], 3, vec![0, 1, 2, 3]),
        ([none, inherit, none, none], 3, vec![0, 1, 2, 3]),
        // Nothing flagged from g1 on: only the failing group.
        ([inherit, none, none, none], 3, vec![3]),
        ([inherit, none, none, none], 0, vec![0]),
        // Flags above the failing group are not looked at.
        ([none, none, none, inherit], 2, vec![2]),
    ];
    for (flags, fail, want) in cases {
        let (fw, applied) = four_groups(flags, fail);
        let (run, _) = on_both_paths(|| fw.clone_plain(), fake_255_fails);
        assert!(run.result.is_err());
        let (fw, fake) = (run.fw, run.fake);
        assert_eq!(
            fw.rollback_start(fail),
            want[0],
            "rollback_start for {flags:?}"
        );
        let ran: Vec<String> = fake.commands()[..applied.len()]
            .iter()
            .map(|c| c[2..].join(" "))
            .collect();
        assert_eq!(ran, applied);
        assert_eq!(
            rolled_back(&fake, applied.len()),
            want,
            "flags {flags:?}, fail {fail}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// XML
// ---------------------------------------------------------------------------------------------

/// libvirt's removal plan for the iptables `nat-default` network, as spec §4.3 shows it
/// (shortened to two deletes in the second group), written by hand.
const LIBVIRT_IPTABLES_PLAN: &str = "\
<firewall name='fwRemoval' backend='iptables'>
  <group ignoreErrors='yes'>
    <action layer='ipv4'>
      <args>
        <item>--table</item>
        <item>mangle</item>
        <item>--delete</item>
        <item>LIBVIRT_PRT</item>
        <item>--out-interface</item>
        <item>virbr0</item>
        <item>--protocol</item>
        <item>udp</item>
        <item>--destination-port</item>
        <item>68</item>
        <item>--jump</item>
        <item>CHECKSUM</item>
        <item>--checksum-fill</item>
      </args>
    </action>
  </group>
  <group ignoreErrors='yes'>
    <action layer='ipv4'>
      <args>
        <item>--table</item>
        <item>nat</item>
        <item>--delete</item>
        <item>LIBVIRT_PRT</item>
        <item>--source</item>
        <item>192.168.122.0/24</item>
        <item>--destination</item>
        <item>224.0.0.0/24</item>
        <item>--jump</item>
        <item>RETURN</item>
      </args>
    </action>
    <action layer='ipv4'>
      <args>
        <item>--table</item>
        <item>filter</item>
        <item>--delete</item>
        <item>LIBVIRT_INP</item>
        <item>--in-interface</item>
        <item>virbr0</item>
        <item>--protocol</item>
        <item>tcp</item>
        <item>--destination-port</item>
        <item>67</item>
        <item>--jump</item>
        <item>ACCEPT</item>
      </args>
    </action>
  </group>
</firewall>
";

#[test]
fn libvirt_plan_written_by_hand_round_trips_byte_for_byte() {
    let fw = Firewall::from_xml(LIBVIRT_IPTABLES_PLAN, "status.xml").unwrap();
    assert_eq!(fw.name(), Some("fwRemoval"));
    assert_eq!(fw.backend(), Backend::Iptables);
    assert_eq!(fw.groups().len(), 2);
    assert_eq!(fw.groups()[1].actions().len(), 2);
    let first = &fw.groups()[0].actions()[0];
    assert_eq!(first.layer(), Layer::Ipv4);
    assert!(
        first.ignore_errors(),
        "group ignoreErrors folds into the command"
    );
    assert_eq!(
        first.args()[..4],
        ["--table", "mangle", "--delete", "LIBVIRT_PRT"]
    );
    assert_eq!(fw.to_xml(), LIBVIRT_IPTABLES_PLAN);

    // Applying it runs the deletes with -w and never fails.
    let mut fw = fw;
    let fake = FakeExecutor::new().on(|_: &[String]| true, FakeResponse::fail(1, "no rule"));
    fw.apply(&fake).unwrap();
    assert_eq!(fake.commands().len(), 3);
    assert_eq!(
        command_line(&fake.commands()[0]),
        "iptables -w --table mangle --delete LIBVIRT_PRT --out-interface virbr0 --protocol udp --destination-port 68 --jump CHECKSUM --checksum-fill"
    );
}

#[test]
fn nft_removal_plan_matches_libvirt_format_inside_networkstatus() {
    // Build what libvirt builds for nat-default (the first three of its inserts suffice), with
    // handles 1, 2, 3, and compare with the text of spec §4.3 written by hand.
    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(
        Layer::Ipv4,
        args("insert rule ip libvirt_network guest_output iif virbr0 counter reject"),
    );
    fw.add_cmd(
        Layer::Ipv4,
        args("insert rule ip libvirt_network guest_input oif virbr0 counter reject"),
    );
    fw.add_cmd(
        Layer::Ipv4,
        args(
            "insert rule ip libvirt_network guest_nat ip saddr 192.168.122.0/24 counter masquerade",
        ),
    );
    fw.apply(&FakeExecutor::new()).unwrap();
    let mut removal = fw.new_from_rollback().unwrap();
    removal.set_name(Some("fwRemoval"));
    let action = |chain: &str, handle: u32| {
        format!(
            "    <action layer='ipv4'>\n      <args>\n        <item>delete</item>\n        <item>rule</item>\n        <item>ip</item>\n        <item>libvirt_network</item>\n        <item>{chain}</item>\n        <item>handle</item>\n        <item>{handle}</item>\n      </args>\n    </action>\n"
        )
    };
    let expected = format!(
        "<firewall name='fwRemoval' backend='nftables'>\n  <group ignoreErrors='yes'>\n{}{}{}  </group>\n</firewall>\n",
        action("guest_nat", 3),
        action("guest_input", 2),
        action("guest_output", 1)
    );
    assert_eq!(removal.to_xml(), expected);

    // Embedded at indentation 2 in a status file, and read back from there.
    let indented = removal.to_xml_indented(2);
    assert!(indented.starts_with("  <firewall name='fwRemoval' backend='nftables'>\n    <group ignoreErrors='yes'>\n      <action layer='ipv4'>\n        <args>\n          <item>delete</item>\n"));
    let status = format!(
        "<networkstatus>\n  <class_id bitmap='0-2'/>\n  <floor sum='0'/>\n  <network><name>default</name></network>\n{indented}</networkstatus>"
    );
    let doc = roxmltree::Document::parse(&status).unwrap();
    let node = doc
        .root_element()
        .children()
        .find(|n| n.has_tag_name("firewall"))
        .unwrap();
    let back = virtfw::xml::parse_firewall_element(node, "default.xml").unwrap();
    assert_eq!(back.to_xml(), expected);
}

#[test]
fn xml_attribute_rules_and_escaping() {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd_full(
        Layer::Ethernet,
        true,
        None,
        ["-A", "FORWARD", "--comment", "it's <a> & \"b\""],
    );
    fw.add_cmd(Layer::Ipv6, ["-A", "INPUT", "--source", "!2001:db8::1"]);
    fw.start_transaction(TransactionFlags::IGNORE_ERRORS);
    fw.add_cmd_full(Layer::Tc, true, None, ["qdisc", "show"]);
    let text = fw.to_xml();
    assert_eq!(
        text,
        "<firewall backend='iptables'>
  <group>
    <action layer='ethernet' ignoreErrors='yes'>
      <args>
        <item>-A</item>
        <item>FORWARD</item>
        <item>--comment</item>
        <item>it&apos;s &lt;a&gt; &amp; &quot;b&quot;</item>
      </args>
    </action>
    <action layer='ipv6'>
      <args>
        <item>-A</item>
        <item>INPUT</item>
        <item>--source</item>
        <item>!2001:db8::1</item>
      </args>
    </action>
  </group>
  <group ignoreErrors='yes'>
    <action layer='tc'>
      <args>
        <item>qdisc</item>
        <item>show</item>
      </args>
    </action>
  </group>
</firewall>
"
    );
    let back = Firewall::from_xml(&text, "t.xml").unwrap();
    assert_eq!(back.groups()[0].actions()[0].args()[3], "it's <a> & \"b\"");
    assert!(back.groups()[0].actions()[0].ignore_errors());
    assert!(!back.groups()[0].actions()[1].ignore_errors());
    assert!(back.groups()[1].actions()[0].ignore_errors());
    assert_eq!(back.to_xml(), text);
}

#[test]
fn xml_parse_skips_what_libvirt_skips() {
    let text = "<firewall backend='nftables'>
  <group ignoreErrors='no'>
    <action layer='ipv4'/>
    <action layer='ipv6' ignoreErrors='no'>
      <args><item>list</item><item>ruleset</item></args>
    </action>
  </group>
  <group ignoreErrors='yes'/>
</firewall>";
    let fw = Firewall::from_xml(text, "t.xml").unwrap();
    assert_eq!(fw.groups().len(), 1, "groups without actions are dropped");
    assert_eq!(
        fw.groups()[0].actions().len(),
        1,
        "actions without args are dropped"
    );
    assert_eq!(fw.groups()[0].flags(), TransactionFlags::empty());
}

#[test]
fn xml_rollback_only_group_is_kept() {
    // A group with a <rollback> but no <action> is not skipped like an empty one: its rollback
    // must run, and its index counts for inheritPrevious.
    let fw = Firewall::from_xml(
        "<firewall backend='iptables'>\n  <group>\n    <action layer='ipv4'><args><item>-A</item><item>X</item></args></action>\n  </group>\n  <group/>\n  <group>\n    <rollback inheritPrevious='yes'>\n      <action layer='ipv4'><args><item>-D</item><item>X</item></args></action>\n    </rollback>\n  </group>\n  <group><rollback/></group>\n</firewall>",
        "t.xml",
    )
    .unwrap();
    assert_eq!(fw.groups().len(), 3, "only the empty group is skipped");
    let kept = &fw.groups()[1];
    assert!(kept.actions().is_empty());
    assert_eq!(kept.rollbacks().len(), 1);
    assert_eq!(kept.rollbacks()[0].args(), ["-D", "X"]);
    assert_eq!(kept.rollback_flags(), RollbackFlags::INHERIT_PREVIOUS);
    assert_eq!(fw.rollback_start(1), 0, "the inheritance reaches group 0");
    assert!(fw.groups()[2].actions().is_empty() && fw.groups()[2].rollbacks().is_empty());
}

#[test]
fn xml_round_trips_a_rollback_only_group() {
    // Reachable through the API: a transaction whose only content is its rollback.
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, args("-A FWD -j ACCEPT"));
    fw.start_transaction(TransactionFlags::empty());
    fw.start_rollback(RollbackFlags::INHERIT_PREVIOUS);
    fw.add_cmd(Layer::Ipv4, args("-D FWD -j DROP"));
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args("-A FWD -j DROP"));
    let text = fw.to_xml();
    assert!(text.contains("<rollback inheritPrevious='yes'>"), "{text}");
    let back = Firewall::from_xml(&text, "t.xml").unwrap();
    assert_eq!(back.groups().len(), 3);
    assert!(back.groups()[1].actions().is_empty());
    assert_eq!(
        back.groups()[1].rollbacks()[0].args(),
        ["-D", "FWD", "-j", "DROP"]
    );
    // libvirt's scan goes down through every group: group 1's flag reaches group 0 from 2 too.
    assert_eq!(back.rollback_start(2), 0);
    assert_eq!(back.rollback_start(1), 0);
    assert_eq!(back.to_xml(), text);
}

#[test]
fn xml_second_rollback_is_an_error() {
    let (line, _, msg) = xml_error(
        "<firewall backend='iptables'>\n  <group>\n    <action layer='ipv4'><args><item>-A</item></args></action>\n    <rollback/>\n    <rollback>\n      <action layer='ipv4'><args><item>-D</item></args></action>\n    </rollback>\n  </group>\n</firewall>",
    );
    assert_eq!(line, 5, "the second <rollback>");
    assert!(msg.contains("more than one <rollback>"), "{msg}");
    // Also in a group without actions.
    let (line, _, msg) = xml_error(
        "<firewall backend='iptables'>\n  <group>\n    <rollback/>\n    <rollback/>\n  </group>\n</firewall>",
    );
    assert_eq!(line, 4);
    assert!(msg.contains("more than one <rollback>"), "{msg}");
}

#[test]
fn clone_plain_copies_everything_but_callbacks() {
    let mut fw = Firewall::new(Backend::Nftables);
    fw.set_name(Some("fwRemoval"));
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd_full(
        Layer::Ipv4,
        false,
        Some(Box::new(|_: &mut QueryContext| Ok(()))),
        args("list table ip t"),
    );
    fw.add_cmd_full(Layer::Ipv6, true, None, args("add table ip6 t"));
    fw.start_rollback(RollbackFlags::INHERIT_PREVIOUS);
    fw.add_cmd(Layer::Ipv6, args("delete table ip6 t"));
    let copy = fw.clone_plain();
    assert_eq!(copy.to_xml(), fw.to_xml());
    assert_eq!(copy.name(), Some("fwRemoval"));
    assert_eq!(
        copy.groups()[0].rollback_flags(),
        RollbackFlags::INHERIT_PREVIOUS
    );
    assert_eq!(
        plain(copy.groups()[0].actions()),
        plain(fw.groups()[0].actions())
    );
    assert_eq!(
        plain(copy.groups()[0].rollbacks()),
        plain(fw.groups()[0].rollbacks())
    );
    assert!(fw.groups()[0].actions()[0].is_query());
    assert!(
        !copy.groups()[0].actions()[0].is_query(),
        "callbacks are not copied"
    );
    // A builder error is copied too, so the copy refuses to apply as the original does.
    let mut broken = Firewall::new(Backend::Iptables);
    broken.add_cmd(Layer::Ipv4, args(A1));
    let mut copy = broken.clone_plain();
    assert_eq!(copy.build_error(), broken.build_error());
    assert!(matches!(
        copy.apply(&FakeExecutor::new()),
        Err(Error::Build(_))
    ));
}

#[test]
fn xml_extension_round_trips_a_whole_transaction() {
    let text = "<firewall name='demo' backend='nftables'>
  <group autoRollback='yes'>
    <action layer='ipv4'>
      <args>
        <item>add</item>
        <item>table</item>
        <item>ip</item>
        <item>demo</item>
      </args>
    </action>
  </group>
  <group ignoreErrors='yes' autoRollback='yes'>
    <action layer='ipv6'>
      <args>
        <item>add</item>
        <item>table</item>
        <item>ip6</item>
        <item>demo</item>
      </args>
    </action>
    <rollback inheritPrevious='yes'>
      <action layer='tc'>
        <args>
          <item>qdisc</item>
          <item>del</item>
          <item>dev</item>
          <item>lo</item>
          <item>root</item>
        </args>
      </action>
    </rollback>
  </group>
</firewall>
";
    let fw = Firewall::from_xml(text, "demo.xml").unwrap();
    assert_eq!(fw.name(), Some("demo"));
    assert_eq!(fw.groups()[0].flags(), TransactionFlags::AUTO_ROLLBACK);
    assert_eq!(
        fw.groups()[1].flags(),
        TransactionFlags::AUTO_ROLLBACK | TransactionFlags::IGNORE_ERRORS
    );
    assert_eq!(
        fw.groups()[1].rollback_flags(),
        RollbackFlags::INHERIT_PREVIOUS
    );
    assert_eq!(
        plain(fw.groups()[1].rollbacks()),
        [(Layer::Tc, words("qdisc del dev lo root"), true)]
    );
    assert_eq!(fw.to_xml(), text);

    // And it applies like the same transaction built in code.
    let (run, _) = on_both_paths(|| fw.clone_plain(), FakeExecutor::new);
    run.result.unwrap();
    let removal = run.fw.new_from_rollback().unwrap();
    let groups: Vec<Vec<(Layer, Vec<String>, bool)>> = removal
        .groups()
        .iter()
        .map(|g| plain(g.actions()))
        .collect();
    assert_eq!(
        groups,
        [
            vec![
                (Layer::Ipv6, words("delete table ip6 handle 2"), true),
                (Layer::Tc, words("qdisc del dev lo root"), true),
            ],
            vec![(Layer::Ipv4, words("delete table ip handle 1"), true)],
        ]
    );
    // The removal plan carries no extension attributes: it is plain libvirt XML.
    let plan = removal.to_xml();
    assert!(!plan.contains("autoRollback") && !plan.contains("rollback"));
}

fn xml_error(text: &str) -> (u32, u32, String) {
    match Firewall::from_xml(text, "bad.xml") {
        Err(Error::Xml {
            source_name,
            line,
            column,
            message,
        }) => {
            assert_eq!(source_name, "bad.xml");
            (line, column, message)
        }
        other => panic!("expected an XML error, got {other:?}"),
    }
}

#[test]
fn bad_xml_names_file_and_line() {
    let (line, _, _) = xml_error("<firewall backend='iptables'>\n  <group>\n    <action layer='ipv4'>\n  </group>\n</firewall>\n");
    assert_eq!(line, 4, "mismatched closing tag");

    let (line, col, msg) = xml_error("<firewall backend='iptables'>\n  <group>\n    <action layer='ipv5'>\n      <args><item>-L</item></args>\n    </action>\n  </group>\n</firewall>");
    assert_eq!((line, col), (3, 5));
    assert!(msg.contains("unknown firewall layer 'ipv5'"), "{msg}");

    let (line, _, msg) = xml_error("\n<firewall backend='pf'/>");
    assert_eq!(line, 2);
    assert!(msg.contains("unknown firewall backend 'pf'"), "{msg}");

    let (line, _, msg) = xml_error("<firewall/>");
    assert_eq!(line, 1);
    assert!(msg.contains("missing its 'backend'"), "{msg}");

    let (line, _, msg) = xml_error("<firewall backend='nftables'>\n  <group>\n    <action>\n      <args><item>x</item></args>\n    </action>\n  </group>\n</firewall>");
    assert_eq!(line, 3);
    assert!(msg.contains("'layer'"), "{msg}");

    let (line, _, msg) = xml_error("<firewall backend='nftables'>\n  <group>\n    <action layer='ipv4'>\n      <args>\n      </args>\n    </action>\n  </group>\n</firewall>");
    assert_eq!(line, 4);
    assert!(msg.contains("0 arguments"), "{msg}");

    let (line, _, msg) = xml_error("<firewall backend='nftables'>\n  <group ignoreErrors='maybe'>\n    <action layer='ipv4'><args><item>x</item></args></action>\n  </group>\n</firewall>");
    assert_eq!(line, 2);
    assert!(msg.contains("'maybe'"), "{msg}");

    let (line, _, msg) = xml_error("<networkstatus/>");
    assert_eq!(line, 1);
    assert!(msg.contains("<firewall>"), "{msg}");

    let (line, _, _) = xml_error("<firewall backend='nftables'>\n\n  <group>\n    <action layer='ipv4'><args><item>&bogus;</item></args></action>\n");
    assert_eq!(line, 4, "unknown entity");

    // The Display form starts with file:line:column.
    let err = Firewall::from_xml("<firewall backend='x'/>", "plan.xml").unwrap_err();
    assert!(err.to_string().starts_with("plan.xml:1:1: "), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_command_is_refused_before_anything_runs() {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(A1));
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, Vec::<String>::new());
    let fake = FakeExecutor::new();
    let err = fw.apply(&fake).unwrap_err();
    assert!(
        matches!(err, Error::EmptyCommand { group: 1, index: 0 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("empty firewall command"));
    assert!(fake.commands().is_empty());
}

#[test]
fn unknown_layer_and_backend_names() {
    let err = "ipv5".parse::<Layer>().unwrap_err();
    assert!(matches!(&err, Error::UnknownLayer(l) if l == "ipv5"));
    assert_eq!(
        err.to_string(),
        "unknown firewall layer 'ipv5' (expected ethernet, ipv4, ipv6 or tc)"
    );
    let err = "pf".parse::<Backend>().unwrap_err();
    assert!(matches!(&err, Error::UnknownBackend(b) if b == "pf"));
    for l in ["ethernet", "ipv4", "ipv6", "tc"] {
        assert_eq!(l.parse::<Layer>().unwrap().as_str(), l);
    }
    for b in ["none", "iptables", "nftables"] {
        assert_eq!(b.parse::<Backend>().unwrap().as_str(), b);
    }
}

#[test]
fn backend_none_fails_every_command_clearly() {
    let mut fw = Firewall::new(Backend::None);
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(A1));
    let fake = FakeExecutor::new();
    let err = fw.apply(&fake).unwrap_err();
    assert!(matches!(err, Error::BackendNotImplemented { .. }));
    assert!(err.to_string().contains("not implemented"));
    assert!(fake.commands().is_empty());
}

#[test]
fn builder_misuse_is_reported_by_apply() {
    let mut fw = Firewall::new(Backend::Iptables);
    assert!(fw.add_cmd(Layer::Ipv4, args(A1)).is_none());
    fw.start_transaction(TransactionFlags::empty()); // ignored: the error is sticky
    fw.add_cmd(Layer::Ipv4, args(A1));
    assert!(fw.groups().is_empty());
    let fake = FakeExecutor::new();
    let err = fw.apply(&fake).unwrap_err();
    assert!(matches!(
        err,
        Error::Build(virtfw::BuildError::CommandWithoutTransaction)
    ));
    assert!(fake.commands().is_empty());
    assert!(matches!(
        fw.new_from_rollback(),
        Err(virtfw::BuildError::OriginalInError(_))
    ));

    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_rollback(RollbackFlags::empty());
    assert_eq!(
        fw.build_error(),
        Some(&virtfw::BuildError::RollbackWithoutTransaction)
    );
}

#[test]
fn transaction_flags_and_rollback_mode() {
    let mut fw = Firewall::new(Backend::Nftables);
    assert_eq!(fw.transaction_flags(), TransactionFlags::empty());
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    assert_eq!(fw.transaction_flags(), TransactionFlags::AUTO_ROLLBACK);
    fw.start_rollback(RollbackFlags::INHERIT_PREVIOUS);
    // In rollback mode commands go to the rollback list, ignore errors and lose callbacks.
    fw.add_cmd_full(
        Layer::Ipv4,
        false,
        Some(Box::new(|_: &mut QueryContext| Ok(()))),
        args("delete table ip t"),
    );
    let g = &fw.groups()[0];
    assert!(g.actions().is_empty());
    assert_eq!(g.rollbacks().len(), 1);
    assert!(g.rollbacks()[0].ignore_errors() && !g.rollbacks()[0].is_query());
    fw.start_transaction(TransactionFlags::IGNORE_ERRORS);
    assert_eq!(fw.transaction_flags(), TransactionFlags::IGNORE_ERRORS);
    fw.add_cmd(Layer::Ipv4, args("add table ip t"));
    assert!(
        fw.groups()[1].actions()[0].ignore_errors(),
        "group flag folded in"
    );
}

#[test]
fn missing_program_is_refused_before_anything_runs() {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, args(A1));
    fw.add_cmd(Layer::Ethernet, args("-A FORWARD -j ACCEPT"));
    let fake = FakeExecutor::new().without_program("ebtables");
    let err = fw.apply(&fake).unwrap_err();
    match &err {
        Error::Exec {
            source: ExecError::NotFound { program },
            ..
        } => assert_eq!(program, "ebtables"),
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("ebtables not found"), "{err}");
    assert!(fake.commands().is_empty(), "nothing ran");

    // The real executor checks PATH the same way.
    let real = virtfw::ProcessExecutor::new();
    let err = virtfw::Executor::check_program(&real, "virtfw-no-such-program").unwrap_err();
    assert!(matches!(err, ExecError::NotFound { .. }));
    assert!(virtfw::Executor::check_program(&real, "sh").is_ok());
}

#[test]
fn program_vanishing_mid_apply_fails_cleanly_and_rolls_back() {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, args(A1));
    fw.add_cmd(Layer::Ipv6, args("-A INPUT -s 2001:db8::1 -j DROP"));
    let fake = || {
        FakeExecutor::new().on(
            |argv: &[String]| argv[0] == "ip6tables" || argv[0] == "ip6tables-restore",
            FakeResponse::Missing,
        )
    };
    let (run, _) = on_both_paths(|| fw.clone_plain(), fake);
    let fake = run.fake;
    let err = run.result.unwrap_err();
    assert!(matches!(
        &err,
        Error::Exec {
            source: ExecError::NotFound { .. },
            ..
        }
    ));
    assert!(err.to_string().contains("ip6tables"), "{err}");
    let ran: Vec<String> = fake.commands().iter().map(|c| c.join(" ")).collect();
    assert_eq!(
        ran,
        [
            "iptables -w -A INPUT --source 192.168.122.1 --jump ACCEPT",
            "ip6tables -w -A INPUT -s 2001:db8::1 -j DROP",
            "iptables -w --delete INPUT --source 192.168.122.1 --jump ACCEPT",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// The README's examples are real
// ---------------------------------------------------------------------------------------------

#[test]
fn readme_xml_examples_parse_and_apply() {
    let readme = include_str!("../../../README.md");
    let blocks: Vec<&str> = readme
        .split("```xml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert_eq!(
        blocks.len(),
        2,
        "the README shows a removal plan and a transaction"
    );

    let plan = Firewall::from_xml(blocks[0], "README plan").unwrap();
    assert_eq!(
        plan.to_xml(),
        blocks[0],
        "the plan example is in libvirt's exact format"
    );

    let fw = Firewall::from_xml(blocks[1], "README transaction").unwrap();
    let (run, _) = on_both_paths(|| fw.clone_plain(), FakeExecutor::new);
    run.result.unwrap();
    let removal = run.fw.new_from_rollback().unwrap();
    let ran: Vec<String> = removal
        .groups()
        .iter()
        .flat_map(|g| g.actions())
        .map(|c| c.args().join(" "))
        .collect();
    assert_eq!(
        ran,
        [
            "--delete INPUT --jump DEMO",
            "--delete DEMO --source 192.0.2.0/24 --jump ACCEPT",
            "--delete-chain DEMO",
            "--flush DEMO",
        ]
    );
}
