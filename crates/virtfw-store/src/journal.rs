//! The write-ahead journal of one state-changing operation (`apply`, `remove`, or a network's
//! `start`, `stop` or `reload`).
//!
//! A journal is a directory `DIR/journal/OPID/`:
//!
//! ```text
//! op.json     what the operation is: kind, plan name, backend, namespace (and its identity),
//!             boot id, and the document it works from (the transaction for apply, the removal
//!             plan for remove). Written to a temporary directory and renamed into place, so a
//!             journal either exists whole or not at all.
//! log         JSON lines, appended: `start` (argv, group) BEFORE a command is spawned,
//!             `done` (exit status) after it exited, and marks (rollback started, plan stored).
//! N.in        standard input of command N, when it has one (nft batches).
//! N.out       standard output of command N: the child writes it itself (no pipe), so the echoed
//!             `# handle` lines land here even when virtfw is killed while the child runs.
//! N.err       standard error of command N.
//! result      (network operations) the status file the operation stores, written before it
//!             is stored: its presence is the commit point (see `has_result`).
//! ```
//!
//! An operation made of steps that are undone by different rules (a network start: global
//! setup, bridge, rules) writes a `phase:NAME` mark before each step; [`phase_records`] gives
//! the records of one step. `apply` and `remove` have a single unnamed phase.
//!
//! The journal is deleted when the operation has finished (the plan stored, or deleted). A
//! journal found later belongs to a virtfw that was killed; `recover` reads it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use virtfw::Firewall;

use crate::error::{Result, StoreError};
use crate::state::{self, StateDir};

/// Version of the journal format.
pub(crate) const JOURNAL_VERSION: u32 = 1;

/// Which operation a journal belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OpKind {
    Apply,
    Remove,
    NetworkStart,
    NetworkStop,
    NetworkReload,
}

impl OpKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OpKind::Apply => "apply",
            OpKind::Remove => "remove",
            OpKind::NetworkStart => "network start",
            OpKind::NetworkStop => "network stop",
            OpKind::NetworkReload => "network reload",
        }
    }
}

/// The head of a journal (`op.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OpHeader {
    pub version: u32,
    pub op_id: String,
    pub kind: OpKind,
    pub name: String,
    pub backend: String,
    pub netns: Option<String>,
    pub netns_id: String,
    pub boot_id: String,
    pub created: u64,
    /// apply: the transaction XML; remove: the removal plan XML; network start and reload: the
    /// network's firewall transaction (empty for a network without rules); network stop: empty.
    pub document: String,
    /// Network operations: the network's status file as it was before (stop, reload) or the
    /// definition-only status (start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// One line of `log`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "rec", rename_all = "snake_case")]
pub(crate) enum Record {
    /// Command `seq` is about to be spawned (written and flushed before the spawn).
    Start {
        seq: u64,
        group: Option<usize>,
        argv: Vec<String>,
        stdin: bool,
    },
    /// Command `seq` exited with `status` (128+N for a signal).
    Done { seq: u64, status: i32 },
    /// Command `seq` could not be spawned at all: it never ran.
    NotRun { seq: u64, error: String },
    /// Command `seq` ran and was killed (it outlived `--child-timeout`): like a missing `done`
    /// record, its outcome is unknown (nft: read from its `N.out`; iptables: `--check`).
    Killed { seq: u64, error: String },
    /// A phase boundary, for the reader and for recovery (`rollback`, `undo`, `recover`,
    /// `plan_stored`).
    Mark { mark: String },
}

/// An open journal being appended to.
#[derive(Debug)]
pub(crate) struct Journal {
    dir: PathBuf,
    log: Mutex<File>,
    next_seq: AtomicU64,
}

/// A new operation id: unique per process and time.
pub(crate) fn new_op_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos}-{}", std::process::id())
}

impl Journal {
    /// Create the journal of a new operation, durably, before anything of it happens.
    pub(crate) fn begin(state: &StateDir, header: &OpHeader) -> Result<Journal> {
        let jdir = state.journal_dir();
        let tmp = jdir.join(format!(".tmp-{}", header.op_id));
        let dir = jdir.join(&header.op_id);
        let io =
            |what: &str, p: &Path, e| StoreError::io(format!("cannot {what} {}", p.display()), e);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(|e| io("create", &tmp, e))?;
        let op = tmp.join("op.json");
        let mut data = serde_json::to_vec_pretty(header)
            .map_err(|e| StoreError::Failed(format!("cannot encode journal: {e}")))?;
        data.push(b'\n');
        state::write_atomic(&op, &data)?;
        File::create(tmp.join("log")).map_err(|e| io("create", &tmp, e))?;
        state::sync_dir(&tmp)?;
        fs::rename(&tmp, &dir).map_err(|e| io("rename into", &dir, e))?;
        state::sync_dir(&jdir)?;
        Journal::open(&dir)
    }

    /// Re-open an existing journal to append to it (recovery journals its own commands in the
    /// journal it is finishing, so a crash during recovery is recovered the same way).
    pub(crate) fn open(dir: &Path) -> Result<Journal> {
        let path = dir.join("log");
        let log = OpenOptions::new()
            .append(true)
            .mode(0o600)
            .create(true)
            .open(&path)
            .map_err(|e| StoreError::io(format!("cannot open {}", path.display()), e))?;
        let next = read_records(dir)
            .iter()
            .filter_map(|r| match r {
                Record::Start { seq, .. } => Some(seq + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        Ok(Journal {
            dir: dir.to_path_buf(),
            log: Mutex::new(log),
            next_seq: AtomicU64::new(next),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reserve the number of the next command.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::SeqCst)
    }

    /// Reserve room in the log for `rec` and `extra` more bytes (the records that follow it),
    /// so that they can be written even when the filesystem fills up meanwhile.
    pub(crate) fn reserve(&self, rec: &Record, extra: u64) -> Result<()> {
        let len = encode(rec)?.len() as u64;
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let io = |e| {
            StoreError::io(
                format!("cannot reserve room in journal {}", self.dir.display()),
                e,
            )
        };
        let now = log.metadata().map_err(io)?.len();
        reserve(&log, now + len + extra).map_err(io)
    }

    /// Append one record. `durable` records (command starts) are fdatasync'ed before we go on.
    pub(crate) fn append(&self, rec: &Record, durable: bool) -> Result<()> {
        let line = encode(rec)?;
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let io = |what: &str, e| {
            StoreError::io(format!("cannot {what} journal {}", self.dir.display()), e)
        };
        let before = log.metadata().map_err(|e| io("stat", e))?.len();
        // One write() per record: a record is in the file whole or (killed mid-call) not at all
        // for all practical sizes; the reader also tolerates a torn last line. A write that
        // fails part-way (a full disk) is cut off again, so the next record starts a line.
        if let Err(e) = (&*log).write_all(&line) {
            let _ = log.set_len(before);
            return Err(io("write", e));
        }
        if durable {
            log.sync_data().map_err(|e| {
                StoreError::io(format!("cannot fsync journal {}", self.dir.display()), e)
            })?;
        }
        Ok(())
    }

    /// Path of a per-command file (`N.in`, `N.out`, `N.err`).
    pub(crate) fn cmd_file(&self, seq: u64, ext: &str) -> PathBuf {
        cmd_file(&self.dir, seq, ext)
    }

    /// Store the operation's result (the status file it is about to write) in the journal,
    /// atomically: from here on recovery completes the operation instead of undoing it.
    pub(crate) fn commit(&self, result: &[u8]) -> Result<()> {
        state::write_atomic(&self.dir.join(RESULT_FILE), result)
    }
}

/// Reserve the first `len` bytes of `file` without changing its size. A filesystem that
/// cannot (`EOPNOTSUPP`) is used without a reservation; any other failure (`ENOSPC`) is an
/// error: the space is not there.
pub(crate) fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    // SAFETY: plain system call on a descriptor we own.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            0,
            len.min(i64::MAX as u64) as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(()),
        _ => Err(e),
    }
}

/// A record as one line of `log`.
fn encode(rec: &Record) -> Result<Vec<u8>> {
    let mut line = serde_json::to_vec(rec)
        .map_err(|e| StoreError::Failed(format!("cannot encode journal record: {e}")))?;
    line.push(b'\n');
    Ok(line)
}

const RESULT_FILE: &str = "result";
const PHASE_PREFIX: &str = "phase:";

/// The mark that starts phase `name`.
pub(crate) fn phase_mark(name: &str) -> String {
    format!("{PHASE_PREFIX}{name}")
}

/// The committed result of an operation, if it got that far.
pub(crate) fn read_result(dir: &Path) -> Option<String> {
    fs::read_to_string(dir.join(RESULT_FILE)).ok()
}

/// The records of phase `name`: every segment that a `phase:NAME` mark starts (the records
/// before the first phase mark are phase ""), in order, without the phase marks. A phase can
/// be re-entered (undo after a failure, recovery), so its undo commands are read with it.
pub(crate) fn phase_records(records: &[Record], name: &str) -> Vec<Record> {
    let mut current = "";
    let mut out = Vec::new();
    for rec in records {
        if let Record::Mark { mark } = rec {
            if let Some(p) = mark.strip_prefix(PHASE_PREFIX) {
                current = p;
                continue;
            }
        }
        if current == name {
            out.push(rec.clone());
        }
    }
    out
}

pub(crate) fn cmd_file(dir: &Path, seq: u64, ext: &str) -> PathBuf {
    dir.join(format!("{seq}.{ext}"))
}

/// Delete a journal directory and make that durable.
pub(crate) fn remove_journal(dir: &Path) -> Result<()> {
    let Some(retired) = retire_journal(dir)? else {
        return Ok(());
    };
    if let Err(e) = fs::remove_dir_all(&retired) {
        // The journal is gone for recovery already; what is left is removed later.
        tracing::warn!(path = %retired.display(), error = %e, "could not delete a finished journal's files");
    }
    Ok(())
}

/// Take a finished journal out of recovery's sight in one atomic, durable step: renamed to a
/// `.tmp-` name, which `pending` ignores and `clean_temporaries` removes. Deleting its files
/// comes after, so a process killed half-way through the deletion never leaves a journal
/// without its `op.json` that recovery could not settle. `None`: it was gone already.
fn retire_journal(dir: &Path) -> Result<Option<PathBuf>> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let retired = parent.join(format!(".tmp-done-{name}"));
    match fs::rename(dir, &retired) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::io(
                format!("cannot delete journal {}", dir.display()),
                e,
            ))
        }
    }
    state::sync_dir(parent)?;
    Ok(Some(retired))
}

/// Read the header of a journal.
pub(crate) fn read_header(dir: &Path) -> Result<OpHeader> {
    let path = dir.join("op.json");
    let text = fs::read_to_string(&path).map_err(|e| StoreError::State {
        path: path.clone(),
        message: format!("unreadable journal header: {e}"),
    })?;
    let header: OpHeader = serde_json::from_str(&text).map_err(|e| StoreError::State {
        path: path.clone(),
        message: format!("corrupt journal header: {e}"),
    })?;
    if header.version != JOURNAL_VERSION {
        return Err(StoreError::State {
            path,
            message: format!("journal format version {} is not supported", header.version),
        });
    }
    Ok(header)
}

/// Read every complete record; a torn last line (killed mid-write) is skipped.
pub(crate) fn read_records(dir: &Path) -> Vec<Record> {
    let text = fs::read_to_string(dir.join("log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Journals waiting for recovery, oldest first. Half-created journals (`.tmp-*`, killed before
/// the rename) never started anything and are deleted here.
pub(crate) fn pending(state: &StateDir) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = state::dir_entries(&state.journal_dir())?
        .into_iter()
        .filter(|(name, path)| !name.starts_with(".tmp-") && path.is_dir())
        .map(|(_, path)| path)
        .collect();
    out.sort();
    Ok(out)
}

/// The id of the journal in `dir` (its directory name, the operation id when it is whole).
pub(crate) fn journal_id(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The pending journal called `id` (as [`journal_id`] names it).
pub(crate) fn find_pending(state: &StateDir, id: &str) -> Result<PathBuf> {
    pending(state)?
        .into_iter()
        .find(|dir| journal_id(dir) == id)
        .ok_or_else(|| StoreError::NoSuchJournal {
            id: id.to_string(),
            dir: state.journal_dir(),
        })
}

/// Delete leftovers of journals that were never completed (only under the exclusive lock).
pub(crate) fn clean_temporaries(state: &StateDir) {
    if let Ok(entries) = fs::read_dir(state.journal_dir()) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The document an operation worked from, parsed; an error names the journal.
pub(crate) fn journal_firewall(dir: &Path, text: &str) -> Result<Firewall> {
    let source = dir.join("op.json").display().to_string();
    Firewall::from_xml(text, &source).map_err(|e| StoreError::State {
        path: dir.to_path_buf(),
        message: format!("corrupt journal: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(m: &str) -> Record {
        Record::Mark { mark: m.into() }
    }
    fn done(seq: u64) -> Record {
        Record::Done { seq, status: 0 }
    }

    /// A finished journal leaves nothing `recover` would have to settle, even when the
    /// deletion of its files is cut short (simulated: the renamed directory is left).
    #[test]
    fn a_removed_journal_is_never_a_pending_one() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(&tmp.path().join("state")).unwrap();
        let jdir = state.journal_dir();
        let live = jdir.join("1-1");
        fs::create_dir_all(&live).unwrap();
        fs::write(live.join("op.json"), "{}").unwrap();
        fs::write(live.join("log"), "").unwrap();
        assert_eq!(pending(&state).unwrap(), vec![live.clone()]);
        remove_journal(&live).unwrap();
        assert!(!live.exists());
        assert!(pending(&state).unwrap().is_empty());
        assert_eq!(
            fs::read_dir(&jdir).unwrap().count(),
            0,
            "nothing left behind"
        );
        // Killed after the journal was retired, before (or while) its files were deleted:
        // what is left is out of recovery's sight, and cleaned later.
        let cut = jdir.join("2-2");
        fs::create_dir_all(&cut).unwrap();
        fs::write(cut.join("op.json"), "{}").unwrap();
        fs::write(cut.join("3.out"), "x").unwrap();
        let retired = retire_journal(&cut).unwrap().expect("it existed");
        assert!(!cut.exists() && retired.join("3.out").exists());
        assert!(
            pending(&state).unwrap().is_empty(),
            "a retired journal is not pending"
        );
        clean_temporaries(&state);
        assert!(!retired.exists());
        // Removing a journal that is already gone is fine.
        remove_journal(&live).unwrap();
    }

    #[test]
    fn phases_are_read_apart_and_reentered_phases_joined() {
        let records = vec![
            done(0),
            mark(&phase_mark("bridge")),
            done(1),
            mark(&phase_mark("rules")),
            done(2),
            mark("rollback 0 0"),
            mark(&phase_mark("bridge")),
            mark("recover"),
            done(3),
            mark(&phase_mark("rules")),
            done(4),
        ];
        assert_eq!(phase_records(&records, ""), vec![done(0)]);
        assert_eq!(
            phase_records(&records, "bridge"),
            vec![done(1), mark("recover"), done(3)]
        );
        assert_eq!(
            phase_records(&records, "rules"),
            vec![done(2), mark("rollback 0 0"), done(4)]
        );
        assert!(phase_records(&records, "global_setup").is_empty());
    }
}
