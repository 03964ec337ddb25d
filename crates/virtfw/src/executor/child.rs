//! Starting a firewall program as a child: the namespace it runs in, the descriptors it keeps,
//! and how a failed spawn or a finished child is reported.
//!
//! Every executor that spawns programs (the engine's [`ProcessExecutor`](super::ProcessExecutor),
//! the in-process [`LibnftExecutor`](super::LibnftExecutor)'s fallback, the `virtfw` command's
//! journalling one) goes through these, so a namespace is named, entered and refused the same
//! way everywhere, and the one `unsafe` `pre_exec` lives here.

use std::fs::File;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use crate::error::ExecError;

/// Where the network namespace `name` lives: `/run/netns/NAME` as made by `ip netns add`, or
/// `name` itself when it contains a slash (a path such as `/proc/PID/ns/net`).
pub fn netns_path(name: &str) -> PathBuf {
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        Path::new("/run/netns").join(name)
    }
}

/// Open the network namespace `name` (see [`netns_path`]), to be entered later with `setns`.
///
/// Opening it up front makes a missing namespace fail before anything runs; the error is always
/// [`ExecError::Netns`].
pub fn open_netns(name: &str) -> Result<OwnedFd, ExecError> {
    File::open(netns_path(name))
        .map(OwnedFd::from)
        .map_err(|source| ExecError::Netns {
            netns: name.to_string(),
            source,
        })
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

    #[test]
    fn signals_read_as_128_plus_the_number() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 128 + 9);
    }
}
