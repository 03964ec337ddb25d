//! Watching an apply: the [`ApplyObserver`] hooks, and [`IgnoredCounter`], the observer that
//! counts what an apply ignored.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::model::Command;

/// Hooks into an apply, for journalling and progress reporting. Every method has a no-op default.
pub trait ApplyObserver: Sync {
    /// A command is about to run (full argv, program first). `group` is the group index.
    fn will_run(&self, _group: usize, _argv: &[String]) {}
    /// An inverse was recorded on `group`'s rollback list by auto-rollback.
    fn inverse_recorded(&self, _group: usize, _inverse: &Command) {}
    /// Group `failed` failed; groups `first..=failed` are about to be rolled back.
    fn rolling_back(&self, _first: usize, _failed: usize) {}
    /// A command of `group` that ignores errors did not take effect and the failure was
    /// ignored (not called for `nft list`). `missing` is true when the object it deletes was
    /// already gone: a removal's stale handle or rule. Both paths report here; the batch path
    /// may call it from several threads. See [`IgnoredCounter`].
    fn ignored_failure(&self, _group: usize, _cmd: &Command, _missing: bool) {}
}

/// The observer of an apply that was given none.
pub(crate) struct NoObserver;
impl ApplyObserver for NoObserver {}

/// An [`ApplyObserver`] that counts the failures an apply ignored, e.g. for `virtfw remove` to
/// say how many objects of a removal plan were already gone.
#[derive(Debug, Default)]
pub struct IgnoredCounter {
    missing: AtomicUsize,
    failed: AtomicUsize,
}

impl IgnoredCounter {
    /// Commands whose object was already gone.
    pub fn missing(&self) -> usize {
        self.missing.load(Ordering::Relaxed)
    }
    /// Commands that failed for another reason (the failure was ignored).
    pub fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }
}

impl ApplyObserver for IgnoredCounter {
    fn ignored_failure(&self, _group: usize, _cmd: &Command, missing: bool) {
        let counter = if missing { &self.missing } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The caller's observer, with every ignored failure also counted for [`crate::Applied`].
pub(crate) struct Counting<'a> {
    pub(crate) inner: &'a dyn ApplyObserver,
    pub(crate) counter: IgnoredCounter,
}

impl ApplyObserver for Counting<'_> {
    fn will_run(&self, group: usize, argv: &[String]) {
        self.inner.will_run(group, argv);
    }
    fn inverse_recorded(&self, group: usize, inverse: &Command) {
        self.inner.inverse_recorded(group, inverse);
    }
    fn rolling_back(&self, first: usize, failed: usize) {
        self.inner.rolling_back(first, failed);
    }
    fn ignored_failure(&self, group: usize, cmd: &Command, missing: bool) {
        self.counter.ignored_failure(group, cmd, missing);
        self.inner.ignored_failure(group, cmd, missing);
    }
}
