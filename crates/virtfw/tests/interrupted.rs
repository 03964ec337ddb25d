//! A command the executor refuses because the apply was interrupted
//! (`ExecError::Interrupted`, the store's signal handling) fails the apply at that command on
//! both paths: a batch is not re-run command by command after it, and the rollback that
//! follows runs (an executor in undo mode from `rolling_back` on runs it).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use virtfw::executor::{Invocation, Output};
use virtfw::{
    ApplyObserver, ApplyOptions, Backend, Error, ErrorKind, ExecError, Executor, FakeExecutor,
    Firewall, Layer, RollbackFlags, TransactionFlags,
};

/// Runs `allowed` commands, then refuses every one as interrupted until the engine reports
/// its rollback (as the store's executor does once its token is set).
struct Stopping {
    fake: FakeExecutor,
    allowed: AtomicUsize,
    undoing: AtomicBool,
    ran: Mutex<Vec<String>>,
    refused: Mutex<Vec<String>>,
}

impl Stopping {
    fn new(fake: FakeExecutor, allowed: usize) -> Self {
        Stopping {
            fake,
            allowed: AtomicUsize::new(allowed),
            undoing: AtomicBool::new(false),
            ran: Mutex::new(Vec::new()),
            refused: Mutex::new(Vec::new()),
        }
    }
    fn ran(&self) -> Vec<String> {
        self.ran.lock().unwrap().clone()
    }
}

impl Executor for Stopping {
    fn run(&self, inv: Invocation<'_>) -> Result<Output, ExecError> {
        if !self.undoing.load(Ordering::SeqCst)
            && self
                .allowed
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
        {
            self.refused.lock().unwrap().push(inv.argv.join(" "));
            return Err(ExecError::Interrupted { signal: 2 });
        }
        let input = inv.stdin.map(String::from_utf8_lossy).unwrap_or_default();
        self.ran
            .lock()
            .unwrap()
            .push(format!("{} {}", inv.argv.join(" "), input.trim_end()));
        self.fake.run(inv)
    }
    fn supports_batch(&self) -> bool {
        self.fake.supports_batch()
    }
}

impl ApplyObserver for Stopping {
    fn rolling_back(&self, _first: usize, _failed: usize) {
        self.undoing.store(true, Ordering::SeqCst);
    }
}

fn transaction() -> Firewall {
    let mut fw = Firewall::new(Backend::Iptables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(
        Layer::Ipv4,
        ["-A", "FORWARD", "-s", "10.1.1.1", "-j", "ACCEPT"],
    );
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(
        Layer::Ipv4,
        ["-A", "FORWARD", "-s", "10.2.2.2", "-j", "ACCEPT"],
    );
    fw.start_rollback(RollbackFlags::INHERIT_PREVIOUS);
    fw
}

fn is_interrupted(err: &Error) -> bool {
    err.kind() == ErrorKind::Interrupted
        && matches!(
            err,
            Error::Exec {
                source: ExecError::Interrupted { signal: 2 },
                ..
            }
        )
}

#[test]
fn an_interrupted_batch_fails_and_is_not_rerun_command_by_command() {
    let exec = Stopping::new(FakeExecutor::new().with_batching(), 0);
    let mut fw = transaction();
    let err = fw
        .apply_with(&exec, ApplyOptions::new().observer(&exec))
        .unwrap_err();
    assert!(is_interrupted(&err), "{err}");
    // The batch was refused, and not tried again command by command; nothing was created.
    // (Checks may look.)
    let refused = exec.refused.lock().unwrap().clone();
    assert_eq!(
        refused.iter().filter(|a| !a.contains("--check")).count(),
        1,
        "{refused:#?}"
    );
    assert!(refused[0].contains("iptables-restore"), "{refused:#?}");
    let ran = exec.ran();
    assert!(
        !ran.iter()
            .any(|a| a.contains(" -A ") || a.contains("-restore")),
        "{ran:#?}"
    );
}

#[test]
fn an_interrupted_command_fails_its_group_and_the_rollback_runs() {
    let exec = Stopping::new(FakeExecutor::new(), 1);
    let mut fw = transaction();
    let err = fw
        .apply_with(&exec, ApplyOptions::new().per_command(true).observer(&exec))
        .unwrap_err();
    assert!(is_interrupted(&err), "{err}");
    assert!(err.to_string().contains("10.2.2.2"), "{err}");
    let ran = exec.ran();
    // The first create ran, the second was refused, and the rollback (group 1 inherits
    // group 0's) deleted the first.
    assert!(ran[0].contains("-A FORWARD -s 10.1.1.1"), "{ran:#?}");
    assert!(
        !ran.iter().any(|a| a.contains("-A FORWARD -s 10.2.2.2")),
        "{ran:#?}"
    );
    assert!(
        ran.iter()
            .any(|a| a.contains("-D FORWARD -s 10.1.1.1")
                || a.contains("--delete FORWARD -s 10.1.1.1")),
        "{ran:#?}"
    );
}
