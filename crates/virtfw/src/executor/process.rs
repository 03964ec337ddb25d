//! The real executor: spawns programs as argv vectors (never through a shell).

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::child::{enter_netns_and_inherit, exit_code, open_netns, spawn_error};
use super::{Executor, Invocation, Output};
use crate::error::ExecError;

/// Spawns `nft`, `iptables`, … found on `PATH`, optionally inside a network namespace.
///
/// The namespace is entered in the child between fork and exec (`setns`), so the calling process
/// and its other threads stay where they are, and no `ip netns exec` wrapper process is paid for.
#[derive(Debug, Default)]
pub struct ProcessExecutor {
    netns: Option<(String, OwnedFd)>,
    inherit_fds: Vec<RawFd>,
}

impl ProcessExecutor {
    /// Run programs in the caller's own network namespace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run every program inside the named namespace (`/run/netns/NAME`, as made by
    /// `ip netns add`). Fails at once, before anything runs, when it does not exist.
    pub fn in_netns(name: &str) -> Result<Self, ExecError> {
        Ok(ProcessExecutor {
            netns: Some((name.to_string(), open_netns(name)?)),
            inherit_fds: Vec::new(),
        })
    }

    /// The namespace commands run in, if any.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_ref().map(|(n, _)| n.as_str())
    }

    /// Let children inherit this descriptor (normally close-on-exec).
    ///
    /// The `virtfw` command passes its state-directory lock this way: a child that outlives a
    /// killed parent keeps the lock held, so `recover` cannot start before that child has
    /// finished changing the ruleset.
    pub fn inherit_fd(mut self, fd: RawFd) -> Self {
        self.inherit_fds.push(fd);
        self
    }
}

/// Find `program` on `PATH` (a name with a slash is taken as a path), as `exec` would.
///
/// Public so that other executors (the CLI's journalling one) refuse a missing tool the same way.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_exec(p))
}

/// [`find_program`] as an executor's `check_program`: [`ExecError::NotFound`] when it is missing.
pub fn require_program(program: &str) -> Result<(), ExecError> {
    find_program(program)
        .map(|_| ())
        .ok_or_else(|| ExecError::NotFound {
            program: program.to_string(),
        })
}

impl Executor for ProcessExecutor {
    fn run(&self, inv: Invocation<'_>) -> Result<Output, ExecError> {
        let (program, args) = inv
            .argv
            .split_first()
            .ok_or_else(|| ExecError::Other("empty argv".into()))?;
        let mut cmd = Command::new(OsStr::new(program));
        cmd.args(args)
            .stdin(if inv.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let netns_fd = self.netns.as_ref().map(|(_, fd)| fd.as_raw_fd());
        enter_netns_and_inherit(&mut cmd, netns_fd, &self.inherit_fds);
        let mut child = cmd.spawn().map_err(|source| spawn_error(program, source))?;
        if let Some(input) = inv.stdin {
            let mut stdin = child.stdin.take().expect("stdin was piped");
            // Write from a thread so a child that fills its stdout pipe before reading all of
            // its input cannot deadlock against us.
            let input = input.to_vec();
            let writer = std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
            let out = child.wait_with_output();
            let _ = writer.join();
            return finish(program, out);
        }
        finish(program, child.wait_with_output())
    }

    fn check_program(&self, program: &str) -> Result<(), ExecError> {
        require_program(program)
    }
}

fn finish(program: &str, out: std::io::Result<std::process::Output>) -> Result<Output, ExecError> {
    let out = out.map_err(|source| ExecError::Spawn {
        program: program.to_string(),
        source,
    })?;
    Ok(Output {
        status: exit_code(out.status),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
