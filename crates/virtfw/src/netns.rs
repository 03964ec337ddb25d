//! Throwaway network namespaces, for tests, demos and benchmarks.
//!
//! virtfw never touches the firewall of the namespace it runs in unless asked to; its own tests
//! and demo work in a namespace made here (`ip netns add`) and deleted again when the value is
//! dropped, so a failing test cannot leave rules on the host.

use std::process::Command as Process;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::ExecError;
use crate::executor::ProcessExecutor;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace under `/run/netns`, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

fn ip(args: &[&str]) -> Result<(), ExecError> {
    let out = Process::new("ip")
        .args(args)
        .output()
        .map_err(|source| ExecError::Spawn {
            program: "ip".into(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ExecError::Other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim_end()
        )))
    }
}

impl Netns {
    /// Create a fresh namespace named `<prefix>-<pid>-<n>` with its loopback up.
    pub fn new(prefix: &str) -> Result<Self, ExecError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `--netns`, `ip -n`, `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An executor that runs every command inside this namespace.
    pub fn executor(&self) -> Result<ProcessExecutor, ExecError> {
        ProcessExecutor::in_netns(&self.name)
    }

    /// Run a program inside the namespace and return its standard output; a failure is an
    /// error carrying the program's standard error. Convenient for listing rulesets in tests.
    pub fn run(&self, argv: &[&str]) -> Result<String, ExecError> {
        let exec = self.executor()?;
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let out = crate::Executor::run(
            &exec,
            crate::executor::Invocation {
                argv: &argv,
                stdin: None,
            },
        )?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(ExecError::Other(format!(
                "{} exited with {}: {}",
                argv.join(" "),
                out.status,
                out.stderr.trim_end()
            )))
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
