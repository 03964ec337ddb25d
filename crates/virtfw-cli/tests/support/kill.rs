//! Killing an applying process at a fixed or a random point: shared by the crash test of the
//! CLI (crash.rs) and the one of the library API (store_crash.rs).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{Rng, Stall};

/// The programs the crash tests wrap (`common::wrappers`).
pub const WRAPPED: &[&str] = &[
    "nft",
    "iptables",
    "ip6tables",
    "iptables-restore",
    "ip6tables-restore",
];

/// Runs per backend: `VIRTFW_CRASH_RUNS` (default 8; use 50+ by hand).
pub fn runs() -> usize {
    std::env::var("VIRTFW_CRASH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

/// Invocations on the per-command path a fixed kill may stall at: every transaction of these
/// tests runs at least this many commands, all creates.
const PER_COMMAND_STALLS: u64 = 5;

/// Spawn `cmd` (run with the wrappers first on PATH) and SIGKILL it. `fixed`: once a wrapper
/// has run its command and stalls — the batch path may run the whole transaction as its first
/// invocation, so there; the per-command path after one of its first creates — (`listings`:
/// invocations before the first create that change nothing: the engine lists a table before
/// its first `add table`/`add chain` in it, one per nft table touched). Otherwise at a random
/// moment of 0–450 ms (an apply of 7 commands takes ~0.2-0.4 s with the wrappers: anywhere in
/// it, sometimes after it finished). Returns how it was killed, for messages.
pub fn spawn_and_kill(
    dir: &Path,
    cmd: &mut Command,
    fixed: bool,
    per_command: bool,
    listings: u64,
    rng: &mut Rng,
) -> String {
    let stall = Stall::new(dir);
    if fixed {
        let at = listings
            + if per_command {
                1 + rng.below(PER_COMMAND_STALLS)
            } else {
                1
            };
        stall.arm(cmd, at, None);
        let mut child = cmd.spawn().unwrap();
        let stalled = stall.wait(&mut child);
        stall.kill(&mut child, stalled);
        format!("killed after invocation {at}")
    } else {
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(450)));
        let _ = child.kill();
        let _ = child.wait();
        "random".to_string()
    }
}
