//! The engine API made for its users: `apply` returns what it did, a firewall applied twice
//! keeps one undo, options are built and read no environment, applies serialise per
//! namespace only, and every command names its group to the executor.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use virtfw::executor::{FakeResponse, Invocation, Output};
use virtfw::{
    ApplyOptions, Backend, ExecError, Executor, FakeExecutor, Firewall, IgnoredReport, Layer,
    TransactionFlags,
};

fn iptables_firewall() -> Firewall {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, ["-N", "DEMO"]);
    fw.add_cmd(Layer::Ipv4, ["-A", "DEMO", "-j", "ACCEPT"]);
    fw.add_rollback_cmd(Layer::Ipv4, ["-X", "DEMO"]);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv6, ["-I", "FORWARD", "-j", "DROP"]);
    // A query callback that adds one create: it must be added once per apply, not once more
    // on every apply.
    fw.add_cmd_full(
        Layer::Ipv4,
        false,
        Some(Box::new(|ctx: &mut virtfw::QueryContext| {
            ctx.add_cmd(Layer::Ipv4, ["-A", "INPUT", "-j", "DEMO"]);
            Ok(())
        })),
        ["-S", "INPUT"],
    );
    fw
}

/// Each group's (actions, rollbacks), as argument lists.
type Shape = Vec<(Vec<Vec<String>>, Vec<Vec<String>>)>;

fn shape(fw: &Firewall) -> Shape {
    fw.groups()
        .iter()
        .map(|g| {
            (
                g.actions().iter().map(|c| c.args().to_vec()).collect(),
                g.rollbacks().iter().map(|c| c.args().to_vec()).collect(),
            )
        })
        .collect()
}

#[test]
fn apply_returns_the_removal_plan_and_applying_twice_keeps_one_undo() {
    for per_command in [true, false] {
        let options = ApplyOptions::new().per_command(per_command);
        let mut fw = iptables_firewall();
        let first = fw
            .apply_with(&FakeExecutor::new().with_batching(), options)
            .unwrap();
        assert_eq!(
            first.removal.to_xml(),
            fw.new_from_rollback().unwrap().to_xml()
        );
        assert_eq!(first.ignored, IgnoredReport::default());
        let after_first = shape(&fw);
        // The hand-written rollback, then the inverses of the three creates (one added).
        assert_eq!(after_first[0].1.len(), 2, "{after_first:?}");
        assert_eq!(after_first[1].0.len(), 3, "{after_first:?}");
        assert_eq!(after_first[1].1.len(), 2, "{after_first:?}");

        let second = fw
            .apply_with(&FakeExecutor::new().with_batching(), options)
            .unwrap();
        assert_eq!(shape(&fw), after_first, "per_command={per_command}");
        assert_eq!(second.removal.to_xml(), first.removal.to_xml());
    }
}

#[test]
fn the_report_counts_what_a_removal_found_gone() {
    let mut removal = Firewall::new(Backend::Nftables);
    removal.start_transaction(TransactionFlags::IGNORE_ERRORS);
    removal.add_cmd(Layer::Ipv4, "delete rule ip t c handle 7".split(' '));
    removal.add_cmd(Layer::Ipv4, "delete chain ip t handle 3".split(' '));
    let fake = FakeExecutor::new()
        .on(
            FakeExecutor::args_contain(&["rule"]),
            FakeResponse::fail(
                1,
                "Error: Could not process rule: No such file or directory",
            ),
        )
        .on(
            FakeExecutor::args_contain(&["chain"]),
            FakeResponse::fail(1, "Error: Could not process rule: Device or resource busy"),
        );
    let applied = removal
        .apply_with(&fake, ApplyOptions::new().per_command(true))
        .unwrap();
    assert_eq!(
        (applied.ignored.missing, applied.ignored.failed),
        (1, 1),
        "{:?}",
        applied.ignored
    );
    assert!(applied.removal.is_empty());
}

#[test]
fn default_options_read_no_environment() {
    // The variable the `virtfw` command honours; the library must not.
    std::env::set_var(virtfw::batch::NO_BATCH_ENV, "1");
    assert!(!ApplyOptions::default().per_command);
    assert!(!ApplyOptions::new().per_command);
    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, ["add", "table", "ip", "a"]);
    fw.add_cmd(Layer::Ipv4, ["add", "table", "ip", "b"]);
    let fake = FakeExecutor::new().with_batching();
    fw.apply(&fake).unwrap();
    let batches = fake
        .invocations()
        .iter()
        .filter(|(_, stdin)| stdin.is_some())
        .count();
    assert_eq!(batches, 1, "{:?}", fake.invocations());
}

/// Records the group each command was run for.
#[derive(Default)]
struct GroupRecorder {
    fake: FakeExecutor,
    seen: Mutex<Vec<(String, Option<usize>)>>,
}

impl Executor for GroupRecorder {
    fn run(&self, invocation: Invocation<'_>) -> Result<Output, ExecError> {
        self.run_in_group(invocation, None)
    }
    fn run_in_group(
        &self,
        invocation: Invocation<'_>,
        group: Option<usize>,
    ) -> Result<Output, ExecError> {
        let line = invocation.argv.join(" ");
        self.seen.lock().unwrap().push((line, group));
        self.fake.run(invocation)
    }
    fn supports_batch(&self) -> bool {
        self.fake.supports_batch()
    }
}

#[test]
fn every_command_names_its_group_on_both_paths_and_in_rollbacks() {
    for per_command in [true, false] {
        let mut fw = Firewall::new(Backend::Nftables);
        fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
        fw.add_cmd(Layer::Ipv4, ["add", "table", "ip", "g0"]);
        fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
        fw.add_cmd(Layer::Ipv4, ["add", "table", "ip", "g1"]);
        fw.add_rollback_cmd(Layer::Ipv4, ["delete", "table", "ip", "g1"]);
        fw.start_transaction(TransactionFlags::empty());
        fw.add_cmd(Layer::Ipv4, ["add", "rule", "ip", "g1", "c", "bad"]);
        fw.start_rollback(virtfw::RollbackFlags::INHERIT_PREVIOUS);
        fw.add_cmd(Layer::Ipv4, ["flush", "table", "ip", "g1"]);
        let exec = GroupRecorder {
            fake: FakeExecutor::new().with_batching().on(
                FakeExecutor::args_contain(&["bad"]),
                FakeResponse::fail(1, "Error: syntax error"),
            ),
            ..GroupRecorder::default()
        };
        let err = fw
            .apply_with(&exec, ApplyOptions::new().per_command(per_command))
            .unwrap_err();
        assert_eq!(err.kind(), virtfw::ErrorKind::CommandFailed);
        let seen = exec.seen.lock().unwrap().clone();
        assert!(
            seen.iter().all(|(_, g)| g.is_some()),
            "per_command={per_command}: {seen:?}"
        );
        let group_of = |needle: &str| -> BTreeSet<usize> {
            seen.iter()
                .filter(|(line, _)| line.contains(needle))
                .filter_map(|(_, g)| *g)
                .collect()
        };
        assert_eq!(group_of("bad"), BTreeSet::from([2]), "{seen:?}");
        // The rollback of group 2 inherits group 1's: each command runs for its own group.
        assert_eq!(
            group_of("flush table ip g1"),
            BTreeSet::from([2]),
            "{seen:?}"
        );
        assert_eq!(
            group_of("delete table ip g1"),
            BTreeSet::from([1]),
            "{seen:?}"
        );
    }
}

/// An executor of one "namespace" that, inside its first command, waits for the other
/// namespace's apply to be inside its first command too.
struct Rendezvous {
    key: &'static str,
    arrived: mpsc::Sender<()>,
    other: Mutex<mpsc::Receiver<()>>,
    met: AtomicUsize,
}

impl Executor for Rendezvous {
    fn run(&self, _invocation: Invocation<'_>) -> Result<Output, ExecError> {
        if self.met.fetch_add(1, Ordering::SeqCst) == 0 {
            let _ = self.arrived.send(());
            // A safety net, not a timing assertion: with one process-wide lock the other
            // apply could never start, and this would wait forever.
            let other = self.other.lock().unwrap();
            if other.recv_timeout(Duration::from_secs(60)).is_err() {
                return Err(ExecError::Other(format!(
                    "{}: the other namespace's apply never ran alongside",
                    self.key
                )));
            }
        }
        Ok(Output::ok(""))
    }
    fn lock_key(&self) -> String {
        self.key.to_string()
    }
}

#[test]
fn applies_in_two_namespaces_run_at_the_same_time() {
    let (to_b, from_a) = mpsc::channel();
    let (to_a, from_b) = mpsc::channel();
    let a = Rendezvous {
        key: "test-ns-a",
        arrived: to_b,
        other: Mutex::new(from_b),
        met: AtomicUsize::new(0),
    };
    let b = Rendezvous {
        key: "test-ns-b",
        arrived: to_a,
        other: Mutex::new(from_a),
        met: AtomicUsize::new(0),
    };
    let build = || {
        let mut fw = Firewall::new(Backend::Iptables);
        fw.start_transaction(TransactionFlags::empty());
        fw.add_cmd(Layer::Ipv4, ["-N", "X"]);
        fw
    };
    let options = ApplyOptions::new().per_command(true);
    std::thread::scope(|s| {
        let ta = s.spawn(|| build().apply_with(&a, options).map(drop));
        let tb = s.spawn(|| build().apply_with(&b, options).map(drop));
        ta.join().unwrap().unwrap();
        tb.join().unwrap().unwrap();
    });
}

/// Counts how many commands run at once.
struct Overlap {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Executor for Overlap {
    fn run(&self, _invocation: Invocation<'_>) -> Result<Output, ExecError> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        std::thread::yield_now();
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(Output::ok(""))
    }
    fn lock_key(&self) -> String {
        "test-one-namespace".into()
    }
}

#[test]
fn applies_in_one_namespace_still_run_one_at_a_time() {
    let exec = Overlap {
        now: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
    };
    let build = || {
        let mut fw = Firewall::new(Backend::Iptables);
        fw.start_transaction(TransactionFlags::empty());
        for i in 0..50 {
            fw.add_cmd(Layer::Ipv4, ["-N".to_string(), format!("C{i}")]);
        }
        fw
    };
    let options = ApplyOptions::new().per_command(true);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| build().apply_with(&exec, options).map(drop)))
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
    });
    assert_eq!(exec.most.load(Ordering::SeqCst), 1);
}
