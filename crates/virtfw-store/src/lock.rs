//! The inter-process lock that serialises every virtfw changing state.
//!
//! It is an `flock` on `DIR/lock`. flock locks belong to the open file description, not to the
//! process, and the descriptor is passed on to every firewall command we start: if virtfw is
//! killed while an `nft` child still runs, the child keeps the lock held until it exits. So
//! whoever takes the lock next (`recover`, another apply) knows that no command of the dead
//! virtfw can still change the ruleset or its journal files.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use fs4::fs_std::FileExt;
use tracing::info;

use crate::cancel::Cancel;
use crate::error::{Result, StoreError};
use crate::state::StateDir;

/// Shared (readers) or exclusive (writers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockKind {
    Shared,
    Exclusive,
}

/// A held lock; released when dropped (and when every inheriting child has exited).
#[derive(Debug)]
pub(crate) struct StateLock {
    file: File,
}

impl StateLock {
    /// Take the lock, polling until `timeout`. A message says who we are waiting for. A
    /// `cancel` set while waiting ends the wait (nothing has run yet).
    pub(crate) fn acquire(
        state: &StateDir,
        kind: LockKind,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<Self> {
        let path = state.lock_path();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| StoreError::io(format!("cannot open lock {}", path.display()), e))?;
        let start = Instant::now();
        let mut told = false;
        loop {
            let got = match kind {
                LockKind::Shared => FileExt::try_lock_shared(&file),
                LockKind::Exclusive => FileExt::try_lock_exclusive(&file),
            }
            .map_err(|e| StoreError::io(format!("cannot lock {}", path.display()), e))?;
            if got {
                return Ok(StateLock { file });
            }
            if let Some(signal) = cancel.signal() {
                return Err(StoreError::Interrupted {
                    signal,
                    operation: format!("waiting for the lock {}", path.display()),
                    outcome: "nothing was run",
                });
            }
            if start.elapsed() >= timeout {
                return Err(StoreError::LockTimeout {
                    path,
                    seconds: timeout.as_secs(),
                });
            }
            if !told && start.elapsed() >= Duration::from_millis(500) {
                info!(lock = %path.display(), "waiting for another virtfw (or a firewall command it started) to finish");
                told = true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The descriptor children inherit to keep the lock alive.
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
