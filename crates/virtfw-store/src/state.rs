//! The state directory: where removal plans and operation journals live.
//!
//! Layout (all owned by the user running virtfw, directory 0700, files 0600):
//!
//! ```text
//! DIR/lock                 flock target serialising every virtfw that changes state
//! DIR/plans/NAME.plan      one stored removal plan (JSON envelope, see plan.rs)
//! DIR/journal/OPID/        one in-flight operation (see journal.rs)
//! DIR/networks/NAME.xml    a running virtual network: libvirt's status file (network.rs)
//! ```
//!
//! A plan describes how to take rules out of the kernel, so whoever can write it can make
//! virtfw run arbitrary firewall commands as root: the directory is refused when it is owned by
//! someone else or writable by group or others.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};

/// Default location of the state directory.
pub(crate) const DEFAULT_STATE_DIR: &str = "/var/lib/virtfw";

/// A checked state directory.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Open `root`, creating it (0700) and its subdirectories when missing, and refuse it when
    /// it is not a directory we own that only we can write.
    pub(crate) fn open(root: &Path) -> Result<Self> {
        match fs::symlink_metadata(root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs::create_dir_all(parent).map_err(|e| {
                        StoreError::io(format!("cannot create {}", parent.display()), e)
                    })?;
                }
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(root)
                    .or_else(|e| {
                        if e.kind() == std::io::ErrorKind::AlreadyExists {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e| StoreError::io(format!("cannot create {}", root.display()), e))?;
            }
            Err(e) => return Err(StoreError::io(format!("cannot stat {}", root.display()), e)),
            Ok(_) => {}
        }
        let dir = StateDir {
            root: root.to_path_buf(),
        };
        dir.check_safe(root)?;
        for sub in ["plans", "journal", "networks"] {
            let p = root.join(sub);
            match fs::DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::io(format!("cannot create {}", p.display()), e)),
            }
            dir.check_safe(&p)?;
        }
        Ok(dir)
    }

    fn check_safe(&self, path: &Path) -> Result<()> {
        let unsafe_dir = |reason: String| StoreError::UnsafeStateDir {
            path: path.to_path_buf(),
            reason,
        };
        let meta = fs::symlink_metadata(path)
            .map_err(|e| StoreError::io(format!("cannot stat {}", path.display()), e))?;
        if !meta.is_dir() {
            return Err(unsafe_dir(
                "not a directory (symbolic links are refused)".into(),
            ));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid {
            return Err(unsafe_dir(format!(
                "owned by uid {}, not by the user running virtfw (uid {euid})",
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(unsafe_dir(format!(
                "mode {:o} lets group or others write to it (chmod go-w)",
                meta.mode() & 0o7777
            )));
        }
        Ok(())
    }

    pub(crate) fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }
    pub(crate) fn plans_dir(&self) -> PathBuf {
        self.root.join("plans")
    }
    pub(crate) fn journal_dir(&self) -> PathBuf {
        self.root.join("journal")
    }
    pub(crate) fn plan_path(&self, name: &str) -> PathBuf {
        self.plans_dir().join(format!("{name}.plan"))
    }
    pub(crate) fn networks_dir(&self) -> PathBuf {
        self.root.join("networks")
    }
    /// The status file of network `name` (libvirt's `<networkstatus>`).
    pub(crate) fn network_status_path(&self, name: &str) -> PathBuf {
        self.networks_dir().join(format!("{name}.xml"))
    }
}

/// Plan names become file names: keep them to a safe alphabet.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Usage(format!(
            "invalid plan name '{name}': use letters, digits and . _ - + @ (not starting with '.')"
        )))
    }
}

/// Write `data` to `path` so that a reader sees the old file or the new one, never a part:
/// write a temporary file (0600) in the same directory, fsync it, rename it over `path`,
/// fsync the directory so the rename itself is durable.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let ctx = |what: &str| format!("cannot {what} {}", tmp.display());
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| StoreError::io(ctx("create"), e))?;
    file.write_all(data)
        .map_err(|e| StoreError::io(ctx("write"), e))?;
    file.sync_all()
        .map_err(|e| StoreError::io(ctx("fsync"), e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        StoreError::io(format!("cannot rename into {}", path.display()), e)
    })?;
    sync_dir(dir)
}

/// Delete a file durably; a file already gone is fine.
pub(crate) fn remove_durably(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(
            format!("cannot delete {}", path.display()),
            e,
        )),
    }
}

/// The entries of a state subdirectory as (file name, path), in no particular order; an
/// entry that cannot be read is skipped (whoever lists decides what the names mean).
pub(crate) fn dir_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = fs::read_dir(dir)
        .map_err(|e| StoreError::io(format!("cannot read {}", dir.display()), e))?;
    Ok(entries
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect())
}

/// fsync a directory, making renames and removals in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("cannot fsync {}", dir.display()), e))
}

/// The kernel's boot id: plans from another boot describe rules that no longer exist.
pub(crate) fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The identity of a network namespace: `/run/netns/NAME` (or the path given) for a named one,
/// our own otherwise, as `DEV:INODE:COOKIE` — the nsfs file's device and inode, and the
/// kernel's netns cookie (`SO_NETNS_COOKIE`, Linux 5.14). A namespace deleted and re-created
/// under the same name is another namespace, so a plan for the old one is recognised as stale.
/// The inode alone does not tell: the kernel hands a freed namespace's inode number to the
/// next one made (seen within seconds), while a cookie is never reused until reboot. Where
/// the kernel has no cookie the identity is `DEV:INODE`.
pub(crate) fn netns_identity(netns: Option<&str>) -> std::io::Result<String> {
    let file = match netns {
        Some(n) => File::from(virtfw::executor::open_netns(n).map_err(|e| match e {
            virtfw::ExecError::Netns { source, .. } => source,
            other => std::io::Error::other(other),
        })?),
        None => File::open("/proc/self/ns/net")?,
    };
    let meta = file.metadata()?;
    let inode = format!("{}:{}", meta.dev(), meta.ino());
    // Our own namespace needs no setns: measured in this thread.
    let cookie = match netns {
        Some(_) => std::thread::scope(|s| {
            s.spawn(|| {
                use std::os::fd::AsRawFd;
                // SAFETY: setns on an open nsfs descriptor; it moves only this short-lived
                // thread, which ends right after.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return None;
                }
                own_netns_cookie()
            })
            .join()
            .ok()
            .flatten()
        }),
        None => own_netns_cookie(),
    };
    Ok(match cookie {
        Some(c) => format!("{inode}:{c}"),
        None => inode,
    })
}

/// `SO_NETNS_COOKIE` (asm-generic/socket.h; not in the libc crate yet).
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_NETNS_COOKIE: libc::c_int = 71;
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_NETNS_COOKIE: libc::c_int = 0x0050;

/// The netns cookie of the calling thread's network namespace, read from a socket made there.
fn own_netns_cookie() -> Option<u64> {
    // SAFETY: plain socket/getsockopt/close on a descriptor owned here; getsockopt writes at
    // most `len` bytes into `cookie`.
    unsafe {
        let sock = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return None;
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        libc::close(sock);
        (rc == 0 && len as usize == std::mem::size_of::<u64>()).then_some(cookie)
    }
}

/// Whether a recorded namespace identity names the namespace measured now. An identity
/// recorded without a cookie (an older virtfw, a kernel without cookies) is compared by
/// device and inode only.
pub(crate) fn same_netns_identity(recorded: &str, now: &str) -> bool {
    let (rec, cur): (Vec<&str>, Vec<&str>) =
        (recorded.split(':').collect(), now.split(':').collect());
    let common = rec.len().min(cur.len());
    common >= 2 && rec[..common] == cur[..common]
}

/// Seconds since the epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_compare_by_cookie_when_both_have_one() {
        assert!(same_netns_identity("4:5:6", "4:5:6"));
        assert!(!same_netns_identity("4:5:6", "4:5:7"), "a re-used inode");
        assert!(!same_netns_identity("4:5:6", "4:6:6"));
        assert!(
            same_netns_identity("4:5", "4:5:7"),
            "recorded without a cookie"
        );
        assert!(!same_netns_identity("4:6", "4:5:7"));
        assert!(
            !same_netns_identity("", "4:5:6"),
            "no identity matches nothing"
        );
    }

    #[test]
    fn a_recreated_namespace_has_another_identity() {
        let own = netns_identity(None).unwrap();
        assert_eq!(own.split(':').count(), 3, "{own}");
        assert_eq!(netns_identity(Some("/proc/self/ns/net")).unwrap(), own);
        let ns = virtfw::netns::Netns::new("vfstate-id").unwrap();
        let first = netns_identity(Some(ns.name())).unwrap();
        assert_ne!(first, own);
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "del", ns.name()]);
        assert!(netns_identity(Some(ns.name())).is_err());
        ip(&["netns", "add", ns.name()]);
        let second = netns_identity(Some(ns.name())).unwrap();
        assert!(!same_netns_identity(&first, &second), "{first} / {second}");
    }
}
