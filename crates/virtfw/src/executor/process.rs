//! The real executor: spawns programs as argv vectors (never through a shell).

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use super::child::{
    enter_netns_and_inherit, exit_code, open_netns, spawn_child, wait_child, DEFAULT_CHILD_TIMEOUT,
};
use super::{Executor, Invocation, Output};
use crate::error::ExecError;

/// Spawns `nft`, `iptables`, … found on `PATH`, optionally inside a network namespace.
///
/// The namespace is entered in the child between fork and exec (`setns`), so the calling process
/// and its other threads stay where they are, and no `ip netns exec` wrapper process is paid for.
///
/// Every program is killed when it runs longer than the timeout ([`DEFAULT_CHILD_TIMEOUT`],
/// see [`with_timeout`](Self::with_timeout)); the command then fails with
/// [`ExecError::Timeout`].
#[derive(Debug)]
pub struct ProcessExecutor {
    netns: Option<(String, OwnedFd)>,
    inherit_fds: Vec<RawFd>,
    timeout: Duration,
}

impl Default for ProcessExecutor {
    fn default() -> Self {
        ProcessExecutor {
            netns: None,
            inherit_fds: Vec::new(),
            timeout: DEFAULT_CHILD_TIMEOUT,
        }
    }
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
            ..Self::default()
        })
    }

    /// Kill a program that runs longer than `timeout` (its whole process group, `SIGKILL`) and
    /// fail its command with [`ExecError::Timeout`]. `Duration::MAX` waits forever.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a program may run before it is killed.
    pub fn timeout(&self) -> Duration {
        self.timeout
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
        let mut child = spawn_child(&mut cmd, program)?;
        // Feed and drain the pipes from threads, so that a child that fills its stdout before
        // reading all of its input cannot deadlock against us, and the wait can time out.
        let writer = inv.stdin.map(|input| {
            let mut stdin = child.stdin.take().expect("stdin was piped");
            let input = input.to_vec();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            })
        });
        let stdout = drain(child.stdout.take().expect("stdout was piped"));
        let stderr = drain(child.stderr.take().expect("stderr was piped"));
        // On a timeout the threads are left to finish on their own: the pipes close when the
        // killed group is gone, and a descendant that left the group must not hang us.
        let status = wait_child(&mut child, program, self.timeout)?;
        if let Some(writer) = writer {
            let _ = writer.join();
        }
        Ok(Output {
            status: exit_code(status),
            stdout: String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned(),
            stderr: String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned(),
        })
    }

    fn check_program(&self, program: &str) -> Result<(), ExecError> {
        require_program(program)
    }

    /// The namespace the programs run in: the one entered, or the caller's.
    fn lock_key(&self) -> String {
        match &self.netns {
            Some((_, fd)) => super::netns_key(std::path::Path::new(&format!(
                "/proc/self/fd/{}",
                fd.as_raw_fd()
            ))),
            None => super::netns_key(std::path::Path::new("/proc/thread-self/ns/net")),
        }
    }
}

/// Read a pipe to its end in a thread.
fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn a_program_that_hangs_is_killed_at_the_timeout() {
        let exec = ProcessExecutor::new().with_timeout(Duration::from_millis(300));
        let argv = argv(&["sh", "-c", "echo started; sleep 600"]);
        match exec.run(Invocation {
            argv: &argv,
            stdin: Some(b"input nobody reads\n"),
        }) {
            Err(ExecError::Timeout { program, after }) => {
                assert_eq!(program, "sh");
                assert_eq!(after, Duration::from_millis(300));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn output_and_status_within_the_timeout() {
        let exec = ProcessExecutor::new();
        assert_eq!(exec.timeout(), DEFAULT_CHILD_TIMEOUT);
        let argv = argv(&["sh", "-c", "cat; echo oops >&2; exit 5"]);
        let out = exec
            .run(Invocation {
                argv: &argv,
                stdin: Some(b"echoed\n"),
            })
            .unwrap();
        assert_eq!(out.status, 5);
        assert_eq!(out.stdout, "echoed\n");
        assert_eq!(out.stderr, "oops\n");
    }
}
