//! Starting a firewall program as a child: the namespace it runs in, the descriptors it keeps,
//! and how a failed spawn or a finished child is reported.
//!
//! Every executor that spawns programs (the engine's [`ProcessExecutor`](super::ProcessExecutor),
//! the in-process [`LibnftExecutor`](super::LibnftExecutor)'s fallback, the `virtfw` command's
//! journalling one) goes through these, so a namespace is named, entered and refused the same
//! way everywhere, and the one `unsafe` `pre_exec` lives here.
//!
//! # Bounded waiting
//!
//! A firewall program that hangs (an `nft` stuck on a netlink socket, say) must not hang the
//! caller with it, nor — since children inherit the `virtfw` command's state lock — every
//! later `virtfw`. So every child is started by [`spawn_child`] in a process group of its own
//! and waited for by [`wait_child`] with a timeout ([`DEFAULT_CHILD_TIMEOUT`] unless the
//! executor is told otherwise). On expiry the whole group (the program and anything it started
//! without leaving the group, such as a wrapper script's children) is killed with `SIGKILL`,
//! the child is reaped, and [`ExecError::Timeout`] says so. The wait itself is a `poll` on a
//! pidfd (`pidfd_open`, Linux 5.3+): it returns the moment the child exits, and since the
//! child is reaped only after the signal was sent, no signal can reach a reused pid.
//!
//! Its own process group also means a terminal's Ctrl-C reaches only the caller: a child keeps
//! running to its end, as it does when the caller is killed (which crash recovery relies on).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::error::ExecError;

/// Where the network namespace `name` lives: `/run/netns/NAME` as made by `ip netns add`, or
/// `name` itself when it contains a slash (a path such as `/proc/PID/ns/net`).
///
/// This only places the name; [`open_netns`] refuses names that cannot be a namespace.
pub fn netns_path(name: &str) -> PathBuf {
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        Path::new("/run/netns").join(name)
    }
}

/// The longest file name the kernel accepts (`NAME_MAX`), and the longest path (`PATH_MAX`).
const NAME_MAX: usize = 255;
const PATH_MAX: usize = 4096;

/// `ioctl(2)` on an nsfs file: which kind of namespace it is (linux/nsfs.h, `_IO(0xb7, 0x3)`).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
}

/// Refuse what cannot name a namespace before any file is opened: `/run/netns/` + `''`, `.`
/// or `..` is a directory, a relative path with a slash would be read from wherever virtfw
/// happens to run, and an over-long name would fail later with a less useful error.
fn check_netns_name(name: &str) -> std::io::Result<()> {
    if name.is_empty() {
        return Err(invalid("an empty namespace name".into()));
    }
    if name.contains('\0') {
        return Err(invalid("a namespace name cannot contain a NUL byte".into()));
    }
    if name == "." || name == ".." {
        return Err(invalid(format!(
            "'{name}' is a directory, not a namespace name"
        )));
    }
    if name.contains('/') {
        if !name.starts_with('/') {
            return Err(invalid(
                "a namespace given by path must be an absolute path (a name under /run/netns has no '/')".into(),
            ));
        }
        if name.len() >= PATH_MAX {
            return Err(invalid(format!(
                "the path is {} bytes long, longer than a path can be ({})",
                name.len(),
                PATH_MAX - 1
            )));
        }
        if let Some(part) = name.split('/').find(|p| p.len() > NAME_MAX) {
            return Err(invalid(format!(
                "the path component '{}…' is {} bytes long, longer than a file name can be ({NAME_MAX})",
                &part[..part.char_indices().nth(16).map_or(part.len(), |(i, _)| i)],
                part.len()
            )));
        }
    } else if name.len() > NAME_MAX {
        return Err(invalid(format!(
            "the name is {} bytes long, longer than a file name can be ({NAME_MAX})",
            name.len()
        )));
    }
    Ok(())
}

/// Refuse an opened file that is not a network namespace: anything outside nsfs (such as
/// `/etc/passwd`), or a namespace of another kind (`/proc/self/ns/mnt`). `setns` would refuse
/// those too, but only in the child, after the operation had begun.
fn check_is_netns(file: &File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fstatfs fills the zeroed struct it is given; fd is open for the call.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd, &mut fs) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // f_type's integer type differs between targets; NSFS_MAGIC fits all of them.
    #[allow(clippy::unnecessary_cast)]
    let is_nsfs = fs.f_type as i64 == libc::NSFS_MAGIC as i64;
    if !is_nsfs {
        return Err(invalid(format!(
            "not a network namespace (a file on a file system of type {:#x}, not nsfs)",
            fs.f_type
        )));
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only returns a value.
    let kind = unsafe { libc::ioctl(fd, NS_GET_NSTYPE as _) };
    if kind < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if kind != libc::CLONE_NEWNET {
        return Err(invalid(format!(
            "a namespace of another kind (type {kind:#x}), not a network namespace"
        )));
    }
    Ok(())
}

/// Open the network namespace `name` (see [`netns_path`]), to be entered later with `setns`.
///
/// Opening it up front makes a missing namespace fail before anything runs. A name that cannot
/// be one (empty, `.`, `..`, a relative path, too long) and a file that is not a network
/// namespace are refused with [`std::io::ErrorKind::InvalidInput`]; the error is always
/// [`ExecError::Netns`].
pub fn open_netns(name: &str) -> Result<OwnedFd, ExecError> {
    let err = |source| ExecError::Netns {
        netns: name.to_string(),
        source,
    };
    check_netns_name(name).map_err(err)?;
    // Non-blocking and no controlling terminal: a FIFO or a tty given by mistake is refused
    // below instead of hanging or being adopted.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(netns_path(name))
        .map_err(err)?;
    check_is_netns(&file).map_err(err)?;
    Ok(OwnedFd::from(file))
}

/// Make the child of `cmd` enter the network namespace `netns` and inherit the descriptors
/// `inherit` (which are normally close-on-exec), both between fork and exec.
///
/// Entering in the child keeps the calling process and its other threads where they are, and
/// costs no `ip netns exec` wrapper process. With nothing to do, `cmd` is left untouched.
/// The descriptors must stay open until the child has been spawned.
pub fn enter_netns_and_inherit(cmd: &mut Command, netns: Option<RawFd>, inherit: &[RawFd]) {
    if netns.is_none() && inherit.is_empty() {
        return;
    }
    let inherit = inherit.to_vec();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (setns, fcntl) on descriptors opened beforehand.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = netns {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for &fd in &inherit {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                }
            }
            Ok(())
        });
    }
}

/// The error for a failed spawn of `program`: [`ExecError::NotFound`] when there is no such
/// program (so a missing tool reads as bad input), [`ExecError::Spawn`] otherwise.
pub fn spawn_error(program: &str, source: std::io::Error) -> ExecError {
    if source.kind() == std::io::ErrorKind::NotFound {
        ExecError::NotFound {
            program: program.to_string(),
        }
    } else {
        ExecError::Spawn {
            program: program.to_string(),
            source,
        }
    }
}

/// How long a firewall program may run before it is killed, unless the executor is given
/// another bound (`with_timeout`). Generous: a batch of tens of thousands of rules takes
/// seconds; a minute means the program is stuck.
pub const DEFAULT_CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// Spawn `cmd` (running `program`) in a process group of its own, so that [`wait_child`] can
/// kill everything it started; a failure is reported by [`spawn_error`].
pub fn spawn_child(cmd: &mut Command, program: &str) -> Result<Child, ExecError> {
    cmd.process_group(0);
    cmd.spawn().map_err(|source| spawn_error(program, source))
}

/// Wait for `child` (started by [`spawn_child`]) to exit, for at most `timeout`.
///
/// On expiry the child's process group is killed (`SIGKILL`), the child reaped, and
/// [`ExecError::Timeout`] returned: whatever the program did before is unknown to the caller.
/// A `timeout` too large to add to the clock waits forever.
pub fn wait_child(
    child: &mut Child,
    program: &str,
    timeout: Duration,
) -> Result<ExitStatus, ExecError> {
    let wait_error = |source| ExecError::Spawn {
        program: program.to_string(),
        source,
    };
    let Some(deadline) = Instant::now().checked_add(timeout) else {
        return child.wait().map_err(wait_error);
    };
    let exited = match pidfd_open(child.id()) {
        Ok(pidfd) => exits_before(&pidfd, deadline).map_err(wait_error)?,
        // No pidfds (a kernel before 5.3): look at the child every few milliseconds. Only we
        // reap it, so it cannot vanish between a look and the kill.
        Err(_) => loop {
            if child.try_wait().map_err(wait_error)?.is_some() {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(5));
        },
    };
    if !exited {
        kill_group(child);
        child.wait().map_err(wait_error)?;
        return Err(ExecError::Timeout {
            program: program.to_string(),
            after: timeout,
        });
    }
    child.wait().map_err(wait_error)
}

/// A pidfd for our own (not yet reaped) child `pid`.
fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain system call; on success it returns a new descriptor that we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether the process of `pidfd` exits before `deadline` (a pidfd polls readable on exit).
fn exits_before(pidfd: &OwnedFd, deadline: Instant) -> std::io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Round up, so that a wait never ends a little early and turns into a spin.
        let ms = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            n if n > 0 => return Ok(true),
            0 if Instant::now() >= deadline => return Ok(false),
            0 => continue,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// SIGKILL the process group of `child`, and the child itself should it have left the group.
/// The child is not reaped yet, so its pid (the group's id) cannot have been reused.
fn kill_group(child: &mut Child) {
    // SAFETY: plain kill(2) of the group our unreaped child leads.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
    }
    let _ = child.kill();
}

/// A finished child's exit status; a death by signal is 128 + the signal number, as shells say.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_of_namespaces() {
        assert_eq!(netns_path("blue"), PathBuf::from("/run/netns/blue"));
        assert_eq!(
            netns_path("/proc/1/ns/net"),
            PathBuf::from("/proc/1/ns/net")
        );
    }

    #[test]
    fn a_missing_namespace_is_a_netns_error() {
        match open_netns("virtfw-no-such-namespace") {
            Err(ExecError::Netns { netns, source }) => {
                assert_eq!(netns, "virtfw-no-such-namespace");
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected a Netns error, got {other:?}"),
        }
    }

    /// The `InvalidInput` refusal of `name`, with its message.
    fn refusal(name: &str) -> String {
        match open_netns(name) {
            Err(ExecError::Netns { netns, source }) => {
                assert_eq!(netns, name);
                assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput, "{source}");
                source.to_string()
            }
            other => panic!("{name:?}: expected a Netns error, got {other:?}"),
        }
    }

    #[test]
    fn names_that_cannot_be_a_namespace_are_refused() {
        assert!(refusal("").contains("empty"));
        assert!(refusal(".").contains("directory"));
        assert!(refusal("..").contains("directory"));
        assert!(refusal("a/b").contains("absolute path"));
        assert!(refusal("./x").contains("absolute path"));
        assert!(refusal(&"n".repeat(256)).contains("longer than a file name"));
        assert!(refusal(&format!("/run/netns/{}", "n".repeat(256))).contains("longer"));
        assert!(refusal(&format!("/{}", "a/".repeat(2100))).contains("longer than a path"));
        assert!(refusal("a\0b").contains("NUL"));
    }

    #[test]
    fn files_that_are_not_network_namespaces_are_refused() {
        assert!(refusal("/etc/passwd").contains("not a network namespace"));
        assert!(refusal("/proc/self").contains("not nsfs"));
        assert!(refusal("/proc/self/ns/mnt").contains("another kind"));
        // Our own network namespace is one.
        assert!(open_netns("/proc/self/ns/net").is_ok());
    }

    #[test]
    fn spawn_errors_tell_missing_programs_apart() {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(matches!(
            spawn_error("nft", missing),
            ExecError::NotFound { program } if program == "nft"
        ));
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(matches!(
            spawn_error("nft", denied),
            ExecError::Spawn { program, .. } if program == "nft"
        ));
    }

    fn sleeper(seconds: &str) -> (Command, &'static str) {
        let mut cmd = Command::new("sleep");
        cmd.arg(seconds);
        (cmd, "sleep")
    }

    #[test]
    fn a_child_that_outlives_its_timeout_is_killed_and_reaped() {
        let (mut cmd, program) = sleeper("600");
        let mut child = spawn_child(&mut cmd, program).unwrap();
        let pid = child.id();
        match wait_child(&mut child, program, Duration::from_millis(200)) {
            Err(ExecError::Timeout { program, after }) => {
                assert_eq!(program, "sleep");
                assert_eq!(after, Duration::from_millis(200));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        // Reaped: the child is gone, killed by SIGKILL.
        let status = child.try_wait().unwrap().expect("reaped");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "pid {pid}");
    }

    #[test]
    fn the_whole_process_group_is_killed() {
        // A shell that starts a sleeper and waits for it, as a wrapper script would.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("sleep 600 & echo $! > {}; wait", pidfile.display()));
        let mut child = spawn_child(&mut cmd, "sh").unwrap();
        let err = wait_child(&mut child, "sh", Duration::from_millis(500)).unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err:?}");
        let grandchild = std::fs::read_to_string(&pidfile).unwrap();
        let status = format!("/proc/{}/status", grandchild.trim());
        // The grandchild was killed too. SIGKILL is delivered asynchronously and the orphan is
        // reaped by init: give it time (a safety net, not a measurement).
        let alive = || {
            std::fs::read_to_string(&status)
                .map(|s| !s.contains("State:\tZ"))
                .unwrap_or(false)
        };
        let give_up = Instant::now() + Duration::from_secs(20);
        while alive() && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(), "the wrapper's child survived: {status}");
    }

    #[test]
    fn a_child_that_finishes_in_time_gives_its_status() {
        let (mut cmd, program) = sleeper("0");
        let mut child = spawn_child(&mut cmd, program).unwrap();
        let status = wait_child(&mut child, program, DEFAULT_CHILD_TIMEOUT).unwrap();
        assert_eq!(exit_code(status), 0);
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("exit 3");
        let mut child = spawn_child(&mut cmd, "sh").unwrap();
        let status = wait_child(&mut child, "sh", Duration::MAX).unwrap();
        assert_eq!(exit_code(status), 3);
    }

    #[test]
    fn signals_read_as_128_plus_the_number() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 128 + 9);
    }
}
