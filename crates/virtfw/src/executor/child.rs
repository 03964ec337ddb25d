//! Starting a firewall program as a child: the namespace it runs in, the descriptors it keeps,
//! and how a failed spawn or a finished child is reported.
//!
//! Every executor that spawns programs (the engine's [`ProcessExecutor`](super::ProcessExecutor),
//! the in-process [`LibnftExecutor`](super::LibnftExecutor)'s fallback, the `virtfw` command's
//! journalling one) goes through these, so a namespace is named, entered and refused the same
//! way everywhere, and the one `unsafe` `pre_exec` lives here.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

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

    #[test]
    fn signals_read_as_128_plus_the_number() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 128 + 9);
    }
}
