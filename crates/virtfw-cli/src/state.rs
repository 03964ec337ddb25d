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

use crate::error::{CliError, CliResult};

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
    pub(crate) fn open(root: &Path) -> CliResult<Self> {
        match fs::symlink_metadata(root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs::create_dir_all(parent).map_err(|e| {
                        CliError::io(format!("cannot create {}", parent.display()), e)
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
                    .map_err(|e| CliError::io(format!("cannot create {}", root.display()), e))?;
            }
            Err(e) => return Err(CliError::io(format!("cannot stat {}", root.display()), e)),
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
                Err(e) => return Err(CliError::io(format!("cannot create {}", p.display()), e)),
            }
            dir.check_safe(&p)?;
        }
        Ok(dir)
    }

    fn check_safe(&self, path: &Path) -> CliResult<()> {
        let unsafe_dir = |reason: String| CliError::UnsafeStateDir {
            path: path.to_path_buf(),
            reason,
        };
        let meta = fs::symlink_metadata(path)
            .map_err(|e| CliError::io(format!("cannot stat {}", path.display()), e))?;
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
pub(crate) fn check_name(name: &str) -> CliResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "invalid plan name '{name}': use letters, digits and . _ - + @ (not starting with '.')"
        )))
    }
}

/// Write `data` to `path` so that a reader sees the old file or the new one, never a part:
/// write a temporary file (0600) in the same directory, fsync it, rename it over `path`,
/// fsync the directory so the rename itself is durable.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> CliResult<()> {
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
        .map_err(|e| CliError::io(ctx("create"), e))?;
    file.write_all(data)
        .map_err(|e| CliError::io(ctx("write"), e))?;
    file.sync_all().map_err(|e| CliError::io(ctx("fsync"), e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        CliError::io(format!("cannot rename into {}", path.display()), e)
    })?;
    sync_dir(dir)
}

/// Delete a file durably; a file already gone is fine.
pub(crate) fn remove_durably(path: &Path) -> CliResult<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CliError::io(format!("cannot delete {}", path.display()), e)),
    }
}

/// The entries of a state subdirectory as (file name, path), in no particular order; an
/// entry that cannot be read is skipped (whoever lists decides what the names mean).
pub(crate) fn dir_entries(dir: &Path) -> CliResult<Vec<(String, PathBuf)>> {
    let entries =
        fs::read_dir(dir).map_err(|e| CliError::io(format!("cannot read {}", dir.display()), e))?;
    Ok(entries
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect())
}

/// fsync a directory, making renames and removals in it durable.
pub(crate) fn sync_dir(dir: &Path) -> CliResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CliError::io(format!("cannot fsync {}", dir.display()), e))
}

/// The kernel's boot id: plans from another boot describe rules that no longer exist.
pub(crate) fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The identity (device and inode of the nsfs file) of a network namespace: `/run/netns/NAME`
/// for a named one, our own otherwise. A namespace deleted and re-created under the same name
/// gets a new inode, so a plan for the old one is recognised as stale.
pub(crate) fn netns_identity(netns: Option<&str>) -> std::io::Result<String> {
    let path = match netns {
        Some(n) => virtfw::executor::netns_path(n),
        None => PathBuf::from("/proc/self/ns/net"),
    };
    let meta = fs::metadata(path)?;
    Ok(format!("{}:{}", meta.dev(), meta.ino()))
}

/// Seconds since the epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
