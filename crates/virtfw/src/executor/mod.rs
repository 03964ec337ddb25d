//! The seam between the engine and the outside world.
//!
//! The engine only ever asks an [`Executor`] to run an argv (optionally with standard input) and
//! looks at the exit status and output. [`ProcessExecutor`] spawns the real programs, optionally
//! inside a named network namespace; [`FakeExecutor`] is a scripted stand-in for tests, public so
//! that users of the library can test their own firewall code without root.

mod child;
mod dry_run;
mod fake;
pub mod libnft;
mod process;

pub use child::{
    enter_netns_and_inherit, exit_code, netns_path, open_netns, spawn_child, spawn_error,
    wait_child, DEFAULT_CHILD_TIMEOUT,
};
pub use dry_run::{DryRun, Recorded};
pub use fake::{FakeExecutor, FakeResponse};
pub use fake::{FakeModel, NftChain, NftModel, NftRule, NftTable, XtChain, XtModel};
pub use libnft::LibnftExecutor;
pub use process::{find_program, require_program, ProcessExecutor};

use crate::error::ExecError;

/// What to run: the full argv (program first, bare name resolved on `PATH`) and optional input.
#[derive(Debug, Clone, Copy)]
pub struct Invocation<'a> {
    /// The program (a bare name is looked up on `PATH`) and its arguments.
    pub argv: &'a [String],
    /// Standard input, if any (batches: `nft -f -`, `iptables-restore`).
    pub stdin: Option<&'a [u8]>,
}

/// What a finished program left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Exit status; a death by signal is reported as 128 + signal number, as shells do.
    pub status: i32,
    /// Everything the program wrote to standard output.
    pub stdout: String,
    /// Everything the program wrote to standard error.
    pub stderr: String,
}

impl Output {
    /// A successful run with this standard output.
    pub fn ok(stdout: impl Into<String>) -> Self {
        Output {
            status: 0,
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    /// True for exit status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// Runs firewall programs on behalf of the engine.
pub trait Executor: Send + Sync {
    /// Run one program to completion and return its status and output.
    fn run(&self, invocation: Invocation<'_>) -> Result<Output, ExecError>;

    /// Check that a program can be run at all, so that a transaction needing a missing tool is
    /// refused before anything is applied. The default accepts everything.
    fn check_program(&self, _program: &str) -> Result<(), ExecError> {
        Ok(())
    }

    /// Whether the engine may hand this executor whole batches (`nft -f -`,
    /// `iptables-restore`) instead of one command at a time. An executor that records or
    /// prints commands for people to read (dry runs, transcripts) answers false to see
    /// libvirt's per-command sequence. The default is true.
    fn supports_batch(&self) -> bool {
        true
    }

    /// Run one program on behalf of group `group` of the firewall being applied (`None`: no
    /// group, e.g. a caller's own listing). The engine runs every command through this one,
    /// batches, listings and rollbacks included, so an executor that records commands (the
    /// `virtfw` command's journal) learns each command's group from the call itself, even when
    /// several applies run at once. The default ignores the group and calls [`Executor::run`].
    fn run_in_group(
        &self,
        invocation: Invocation<'_>,
        group: Option<usize>,
    ) -> Result<Output, ExecError> {
        let _ = group;
        self.run(invocation)
    }

    /// Which ruleset this executor acts on, as a key: applies through executors with the same
    /// key are serialised (libvirt serialises all applies of a process), others may run at
    /// the same time. The default is the network namespace of the calling thread (its
    /// `/proc/thread-self/ns/net` identity); an executor that runs its programs in another
    /// namespace answers that one's.
    fn lock_key(&self) -> String {
        netns_key(std::path::Path::new("/proc/thread-self/ns/net"))
    }
}

/// The lock key of the network namespace at `path` (`net:DEV:INODE`); an empty key when it
/// cannot be read (every such executor then shares one lock).
pub fn netns_key(path: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| format!("net:{}:{}", m.dev(), m.ino()))
        .unwrap_or_default()
}

impl<E: Executor + ?Sized> Executor for &E {
    fn run(&self, invocation: Invocation<'_>) -> Result<Output, ExecError> {
        (**self).run(invocation)
    }
    fn check_program(&self, program: &str) -> Result<(), ExecError> {
        (**self).check_program(program)
    }
    fn supports_batch(&self) -> bool {
        (**self).supports_batch()
    }
    fn run_in_group(
        &self,
        invocation: Invocation<'_>,
        group: Option<usize>,
    ) -> Result<Output, ExecError> {
        (**self).run_in_group(invocation, group)
    }
    fn lock_key(&self) -> String {
        (**self).lock_key()
    }
}

impl<E: Executor + ?Sized> Executor for std::sync::Arc<E> {
    fn run(&self, invocation: Invocation<'_>) -> Result<Output, ExecError> {
        (**self).run(invocation)
    }
    fn check_program(&self, program: &str) -> Result<(), ExecError> {
        (**self).check_program(program)
    }
    fn supports_batch(&self) -> bool {
        (**self).supports_batch()
    }
    fn run_in_group(
        &self,
        invocation: Invocation<'_>,
        group: Option<usize>,
    ) -> Result<Output, ExecError> {
        (**self).run_in_group(invocation, group)
    }
    fn lock_key(&self) -> String {
        (**self).lock_key()
    }
}
