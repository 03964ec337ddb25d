//! Stopping an operation between commands: the [`Cancel`] token.
//!
//! The library installs no signal handler (a library must not take over a process's signals).
//! The caller sets the token — the CLI from its SIGINT and SIGTERM handlers, a daemon from
//! wherever it decides to stop — and the store's journalling executor reads it before it
//! starts each command of an operation's forward part (not of `network stop` or `recover`,
//! which are all undo). Set, the command is not started and
//! fails with [`virtfw::ExecError::Interrupted`]; the operation is then undone exactly as after
//! a failure (the engine's rollback, the store's undo), and its undo commands are not refused:
//! a second signal does not abort an undo. The operation reports
//! [`crate::StoreError::Interrupted`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A request to stop, shared by every clone: holds the number of the signal that asked
/// (0: not asked). Set it from a signal handler with
/// `signal_hook::flag::register_usize(SIGINT, cancel.flag(), SIGINT as usize)` (each signal
/// stores its number: the last one is reported), or with [`Cancel::cancel`] from another
/// thread.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicUsize>);

impl Cancel {
    /// A token nobody has set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask the operations using this token to stop, because of `signal` (a positive signal
    /// number; the CLI exits 128 + it). The first request wins.
    pub fn cancel(&self, signal: i32) {
        let signal = usize::try_from(signal).unwrap_or(0).max(1);
        let _ = self
            .0
            .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The signal that asked to stop, if one did.
    pub fn signal(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            n => Some(i32::try_from(n).unwrap_or(i32::MAX)),
        }
    }

    /// The shared cell itself, for an async-signal-safe handler that stores the signal
    /// number into it (signal-hook's `flag::register_usize`).
    pub fn flag(&self) -> Arc<AtomicUsize> {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_request_and_the_first_signal_wins() {
        let cancel = Cancel::new();
        let clone = cancel.clone();
        assert_eq!(cancel.signal(), None);
        clone.cancel(15);
        clone.cancel(2);
        assert_eq!(cancel.signal(), Some(15));
        // What a signal handler stores is read the same way.
        let raw = Cancel::new();
        raw.flag().store(2, Ordering::SeqCst);
        assert_eq!(raw.signal(), Some(2));
    }
}
