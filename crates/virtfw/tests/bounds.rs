//! A command killed at its timeout has an unknown outcome: the engine fails it, on both apply
//! paths, and never re-runs a timed-out batch command by command (which could apply twice).

use std::sync::Mutex;
use std::time::Duration;

use virtfw::executor::{Invocation, Output};
use virtfw::{
    ApplyOptions, Backend, Error, ExecError, Executor, FakeExecutor, Firewall, Layer,
    RollbackFlags, TransactionFlags,
};

/// A fake whose commands containing `hang` "time out", recording every argv it was given.
struct Hanging {
    fake: FakeExecutor,
    hang: &'static str,
    seen: Mutex<Vec<Vec<String>>>,
}

impl Hanging {
    fn new(fake: FakeExecutor, hang: &'static str) -> Self {
        Hanging {
            fake,
            hang,
            seen: Mutex::new(Vec::new()),
        }
    }
    fn seen(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.join(" "))
            .collect()
    }
}

impl Executor for Hanging {
    fn run(&self, inv: Invocation<'_>) -> Result<Output, ExecError> {
        self.seen.lock().unwrap().push(inv.argv.to_vec());
        let input = inv.stdin.map(String::from_utf8_lossy).unwrap_or_default();
        if inv.argv.iter().any(|a| a.contains(self.hang)) || input.contains(self.hang) {
            return Err(ExecError::Timeout {
                program: inv.argv[0].clone(),
                after: Duration::from_secs(2),
            });
        }
        self.fake.run(inv)
    }
    fn supports_batch(&self) -> bool {
        self.fake.supports_batch()
    }
}

fn transaction(backend: Backend) -> Firewall {
    let mut fw = Firewall::new(backend);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    match backend {
        Backend::Nftables => {
            fw.add_cmd(Layer::Ipv4, ["add", "table", "ip", "t"]);
            fw.add_cmd(Layer::Ipv4, ["add", "chain", "ip", "t", "c"]);
            fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
            fw.add_cmd(
                Layer::Ipv4,
                [
                    "add",
                    "rule",
                    "ip",
                    "t",
                    "c",
                    "ip",
                    "saddr",
                    "10.66.66.66",
                    "accept",
                ],
            );
            fw.start_rollback(RollbackFlags::INHERIT_PREVIOUS);
        }
        _ => {
            fw.add_cmd(
                Layer::Ipv4,
                ["-A", "FORWARD", "-s", "10.1.1.1", "-j", "ACCEPT"],
            );
            fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
            fw.add_cmd(
                Layer::Ipv4,
                ["-A", "FORWARD", "-s", "10.66.66.66", "-j", "ACCEPT"],
            );
            fw.start_rollback(RollbackFlags::INHERIT_PREVIOUS);
        }
    }
    fw
}

fn is_timeout(err: &Error) -> bool {
    matches!(
        err,
        Error::Exec {
            source: ExecError::Timeout { .. },
            ..
        }
    )
}

#[test]
fn a_timed_out_batch_fails_and_is_not_rerun_command_by_command() {
    for backend in [Backend::Nftables, Backend::Iptables] {
        let exec = Hanging::new(FakeExecutor::new().with_batching(), "10.66.66.66");
        let mut fw = transaction(backend);
        let err = fw.apply_with(&exec, ApplyOptions::default()).unwrap_err();
        assert!(is_timeout(&err), "{backend}: {err}");
        let seen = exec.seen();
        let hung = seen
            .iter()
            .filter(|a| a.contains("-f -") || a.contains("-restore"))
            .count();
        assert_eq!(hung, 1, "{backend}: one batch, no retry: {seen:#?}");
        // No create ran on its own after the batch timed out (checks may look).
        assert!(
            !seen
                .iter()
                .any(|a| a.contains(" -A ") || a.contains(" -ae add ")),
            "{backend}: {seen:#?}"
        );
    }
}

#[test]
fn a_timed_out_command_fails_its_group_and_rolls_back() {
    for backend in [Backend::Nftables, Backend::Iptables] {
        let exec = Hanging::new(FakeExecutor::new(), "10.66.66.66");
        let mut fw = transaction(backend);
        let err = fw
            .apply_with(&exec, ApplyOptions::new().per_command(true))
            .unwrap_err();
        assert!(is_timeout(&err), "{backend}: {err}");
        assert!(
            err.to_string().contains("did not finish within 2s"),
            "{err}"
        );
        let seen = exec.seen();
        // The inherited rollback of group 0 ran after the timed-out create.
        let last = seen.last().unwrap();
        assert!(
            last.contains("delete") || last.contains("--delete"),
            "{backend}: {seen:#?}"
        );
    }
}
