//! The store: a state directory and the operations on it — apply, remove, list, show,
//! verify, recover — each a method of [`Store`].
//!
//! Every operation that changes the kernel holds the state directory's exclusive lock and is a
//! journalled [`Operation`]: each command is written to the journal before it runs and
//! inherits the lock, so that a process killed at any point leaves a journal from which
//! [`Store::recover`] finishes or undoes exactly what it did (docs/cli.md, "Crash safety").

use std::path::{Path, PathBuf};
use std::time::Duration;

use virtfw::{ApplyOptions, Backend, DryRun, Executor, Firewall, ProcessExecutor};

use crate::cancel::Cancel;
use crate::error::{self, Result, StoreError};
use crate::exec::{open_netns, Children};
use crate::journal::{self, OpHeader, OpKind, JOURNAL_VERSION};
use crate::lock::{LockKind, StateLock};
use crate::operation::Operation;
use crate::plan::{self, Plan, PLAN_VERSION};
use crate::recover;
use crate::report::*;
use crate::state::{self, StateDir};
use crate::verify;

/// Where virtfw keeps its state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = state::DEFAULT_STATE_DIR;

/// How a [`Store`] runs its operations. Built with [`StoreOptions::new`] and its setters; the
/// store reads no environment variable (the caller decides, e.g. the CLI from its flags).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreOptions {
    /// The network namespace commands run in (a name under /run/netns or a path); `None`: the
    /// caller's own. Remembered by every plan applied.
    pub netns: Option<String>,
    /// One process per command, exactly like libvirt (no batching).
    pub per_command: bool,
    /// How long to wait for another process holding the state lock.
    pub lock_timeout: Duration,
    /// How long a firewall program may run before it is killed and its command fails.
    pub child_timeout: Duration,
    /// Set, it stops the store's operations between commands, undone as after a failure
    /// ([`StoreError::Interrupted`]); not `network stop` (which could not be run again) nor
    /// `recover` (all undo). The CLI sets it from SIGINT and SIGTERM.
    pub cancel: Cancel,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            netns: None,
            per_command: false,
            lock_timeout: Duration::from_secs(120),
            child_timeout: virtfw::executor::DEFAULT_CHILD_TIMEOUT,
            cancel: Cancel::new(),
        }
    }
}

impl StoreOptions {
    /// The defaults: the caller's namespace, batched, a 120 s lock wait, the engine's child
    /// timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run in the namespace `netns` (a name under /run/netns, or a path).
    pub fn netns(mut self, netns: Option<String>) -> Self {
        self.netns = netns;
        self
    }

    /// One process per command (libvirt's way) instead of batches.
    pub fn per_command(mut self, per_command: bool) -> Self {
        self.per_command = per_command;
        self
    }

    /// Wait this long for the state lock.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Kill a firewall program after this long.
    pub fn child_timeout(mut self, timeout: Duration) -> Self {
        self.child_timeout = timeout;
        self
    }

    /// Stop operations between commands once `cancel` is set (see [`Cancel`]).
    pub fn cancel(mut self, cancel: Cancel) -> Self {
        self.cancel = cancel;
        self
    }
}

/// A state directory and the crash-safe operations on it.
///
/// Opening a store checks nothing yet: each operation checks its input first and the state
/// directory (its ownership and mode, the lock, pending journals) only then, so bad input is
/// reported as bad input whatever the state directory is like. Run [`Store::recover`] at
/// start-up: writers refuse to run over a journal left by a killed process.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    opts: StoreOptions,
}

impl Store {
    /// The same store run in the namespace `netns` (`None`: the caller's): for a caller that
    /// serves several namespaces from one state directory (each plan remembers its own).
    pub fn in_netns(&self, netns: Option<String>) -> Store {
        Store {
            dir: self.dir.clone(),
            opts: self.opts.clone().netns(netns),
        }
    }

    /// A store in `dir` (created 0700 on first use) run with `opts`.
    pub fn open(dir: impl Into<PathBuf>, opts: StoreOptions) -> Store {
        Store {
            dir: dir.into(),
            opts,
        }
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options it runs with.
    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    pub(crate) fn netns(&self) -> &Option<String> {
        &self.opts.netns
    }

    pub(crate) fn per_command(&self) -> bool {
        self.opts.per_command
    }

    /// What the children of an operation holding `lock` get: the lock, and their time bound.
    pub(crate) fn children(&self, lock: &StateLock) -> Children {
        Children {
            lock_fd: lock.raw_fd(),
            timeout: self.opts.child_timeout,
        }
    }

    /// The token that stops this store's operations.
    pub(crate) fn cancel(&self) -> Cancel {
        self.opts.cancel.clone()
    }

    /// How long a firewall program may run.
    pub(crate) fn child_timeout(&self) -> Duration {
        self.opts.child_timeout
    }

    pub(crate) fn state(&self) -> Result<StateDir> {
        StateDir::open(&self.dir)
    }

    /// Open the state dir and take its lock; a writer also refuses to run over a pending journal.
    pub(crate) fn lock(&self, kind: LockKind) -> Result<(StateDir, StateLock)> {
        let state = self.state()?;
        let lock = StateLock::acquire(&state, kind, self.opts.lock_timeout, &self.opts.cancel)?;
        if kind == LockKind::Exclusive {
            if let Some(dir) = journal::pending(&state)?.into_iter().next() {
                let id = journal::journal_id(&dir);
                return Err(StoreError::PendingJournal { path: dir, id });
            }
        }
        Ok((state, lock))
    }

    fn engine_options<'a>(
        &self,
        observer: Option<&'a dyn virtfw::ApplyObserver>,
    ) -> ApplyOptions<'a> {
        ApplyOptions::new()
            .per_command(self.opts.per_command)
            .maybe_observer(observer)
    }

    /// The commands applying `fw` as `name` would run (libvirt's transcript); nothing runs and
    /// nothing is stored. Refuses what [`Store::apply`] refuses before it runs anything.
    pub fn apply_dry_run(&self, fw: &mut Firewall, name: &str) -> Result<DryRunReport> {
        check_transaction(fw, name)?;
        self.dry_run(fw)
    }

    /// Ask the kernel whether it would accept every command of `fw`, committing nothing
    /// (`nft -c -f`, `iptables-restore --test`; see [`virtfw::check`]): no lock, no journal,
    /// no plan, because nothing changes. Refuses what [`Store::apply`] refuses first.
    pub fn apply_check(&self, fw: &Firewall, name: &str) -> Result<KernelCheckReport> {
        check_transaction(fw, name)?;
        let exec = match self.netns() {
            Some(n) => {
                open_netns(n)?;
                ProcessExecutor::in_netns(n).map_err(|e| StoreError::Netns {
                    name: n.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?
            }
            None => ProcessExecutor::new(),
        }
        .with_timeout(self.child_timeout());
        let report = virtfw::check::kernel_check(fw, &exec).map_err(StoreError::Input)?;
        Ok(KernelCheckReport::new(name, report))
    }

    fn dry_run(&self, fw: &mut Firewall) -> Result<DryRunReport> {
        let recorder = DryRun::new();
        fw.apply_with(&recorder, self.engine_options(None))
            .map_err(StoreError::from_apply)?;
        Ok(DryRunReport {
            dry_run: true,
            commands: recorder.commands(),
            transcript: recorder.transcript(),
        })
    }

    /// Apply the transaction `fw` and store its removal plan as `name`: all or nothing.
    ///
    /// A group the firewall refuses is rolled back by the engine, and every group applied
    /// before it too (libvirt would leave those): on error nothing of `fw` is left. Every
    /// command is journalled before it runs, so a process killed half-way leaves a journal
    /// from which [`Store::recover`] undoes exactly what ran; the plan stored on success
    /// removes exactly what was created ([`Store::remove`]).
    pub fn apply(&self, fw: &mut Firewall, name: &str) -> Result<ApplyReport> {
        check_transaction(fw, name)?;
        let netns = self.netns().clone();
        let netns_id = match &netns {
            Some(n) => {
                open_netns(n)?;
                state::netns_identity(Some(n)).map_err(|source| StoreError::Netns {
                    name: n.clone(),
                    source,
                })?
            }
            None => state::netns_identity(None)
                .map_err(|e| StoreError::io("cannot stat own netns", e))?,
        };
        let name = name.to_string();
        let (state, lock) = self.lock(LockKind::Exclusive)?;
        if state.plan_path(&name).exists() {
            return Err(StoreError::PlanExists { name });
        }
        let header = OpHeader {
            version: JOURNAL_VERSION,
            op_id: journal::new_op_id(),
            kind: OpKind::Apply,
            name: name.clone(),
            backend: fw.backend().to_string(),
            netns: netns.clone(),
            netns_id: netns_id.clone(),
            boot_id: state::boot_id(),
            created: state::now(),
            document: fw.to_xml(),
            status: None,
        };
        let op = Operation::begin(
            &state,
            &header,
            netns.as_deref(),
            self.children(&lock),
            self.cancel(),
        )?;
        let result = fw.apply_with(op.exec(), op.options(self.per_command()));
        // Asked to stop: a command was refused, or the last one had run when the signal came
        // (still before the plan is stored: the apply is undone all the same).
        let interrupted = op
            .exec()
            .interrupted()
            .or_else(|| result.as_ref().ok().and_then(|_| op.exec().cancelled()));
        let applied = match (result, interrupted) {
            (Ok(applied), None) => applied,
            (Err(err), None) => {
                return Err(self.undo_failed_apply(op, &header, &name, Undo::Failed(err)))
            }
            (_, Some(signal)) => {
                return Err(self.undo_failed_apply(op, &header, &name, Undo::Interrupted(signal)))
            }
        };
        let mut removal = applied.removal;
        removal.set_name(Some(&name));
        let plan = Plan {
            version: PLAN_VERSION,
            name: name.clone(),
            backend: fw.backend().to_string(),
            netns,
            netns_id,
            boot_id: header.boot_id.clone(),
            created: header.created,
            op_id: header.op_id.clone(),
            groups: fw.groups().len(),
            commands: fw.command_count(),
            removal: removal.to_xml(),
        };
        // Not stored (a full state directory): the rules stay until `recover` undoes them, which
        // it does for an apply whose plan is missing.
        plan.store(&state).map_err(|e| StoreError::KeptJournal {
            context: format!("applied {name} but could not store its removal plan"),
            reason: e.to_string(),
            journal: op.dir().to_path_buf(),
        })?;
        op.finish()?;
        Ok(ApplyReport {
            applied: name,
            backend: plan.backend,
            groups: plan.groups,
            commands: plan.commands,
            removal_commands: removal.command_count(),
            netns: plan.netns,
        })
    }

    /// After the engine refused the apply (and rolled back the failed group and those it
    /// inherits from), or a signal interrupted it: undo the groups libvirt's rule leaves
    /// applied too — an apply is all or nothing here — by the computation `recover` makes,
    /// and settle the journal; the error to report.
    fn undo_failed_apply(
        &self,
        op: Operation,
        header: &OpHeader,
        name: &str,
        why: Undo,
    ) -> StoreError {
        let tx = match Firewall::from_xml(&header.document, "journal") {
            Ok(tx) => tx,
            Err(e) => return StoreError::Input(e),
        };
        let context = match &why {
            Undo::Failed(err) => format!("apply of {name} failed ({err})"),
            Undo::Interrupted(_) => format!("apply of {name} was interrupted"),
        };
        let kept = |reason: String| StoreError::KeptJournal {
            context: context.clone(),
            reason,
            journal: op.dir().to_path_buf(),
        };
        // An undo that stops (a full state directory, a program that hangs) leaves the
        // journal for `recover`, which finishes it by the same rules.
        if let Err(e) = op.undo_apply(&tx, "", "undo") {
            return kept(format!("undoing it stopped: {e}"));
        }
        if matches!(&why, Undo::Failed(err) if error::handles_unknown(err)) {
            return kept(
                "an object it created has a handle nobody knows, so it was not undone".into(),
            );
        }
        if let Err(e) = op.finish() {
            return e;
        }
        match why {
            Undo::Failed(err) => StoreError::from_apply(err),
            Undo::Interrupted(signal) => StoreError::Interrupted {
                signal,
                operation: format!("apply of {name}"),
                outcome: UNDONE,
            },
        }
    }

    /// The commands removing the stored plan `name` would run; nothing runs.
    pub fn remove_dry_run(&self, name: &str) -> Result<DryRunReport> {
        let state = self.state()?;
        let plan = Plan::load_named(&state, name)?;
        let mut fw = plan.removal_firewall(&state.plan_path(name))?;
        self.dry_run(&mut fw)
    }

    /// Run the stored removal plan `name`, then forget it.
    ///
    /// Deletes of objects already gone are counted, not failures (libvirt's removal ignores
    /// errors). A removal that stops part-way (a program that cannot run) keeps the plan, so
    /// running it again deletes what is left. A stale plan (another boot or namespace) is
    /// refused: its handles may name someone else's objects now; [`Store::forget`] drops it.
    pub fn remove(&self, name: &str) -> Result<RemoveReport> {
        let (state, lock) = self.lock(LockKind::Exclusive)?;
        let plan = Plan::load_named(&state, name)?;
        if let Some(reason) = plan.stale_reason() {
            return Err(StoreError::StalePlan {
                name: name.to_string(),
                reason,
            });
        }
        let mut fw = plan.removal_firewall(&state.plan_path(name))?;
        let header = OpHeader {
            version: JOURNAL_VERSION,
            op_id: journal::new_op_id(),
            kind: OpKind::Remove,
            name: name.to_string(),
            backend: plan.backend.clone(),
            netns: plan.netns.clone(),
            netns_id: plan.netns_id.clone(),
            boot_id: plan.boot_id.clone(),
            created: state::now(),
            document: plan.removal.clone(),
            status: None,
        };
        let op = Operation::begin(
            &state,
            &header,
            plan.netns.as_deref(),
            self.children(&lock),
            self.cancel(),
        )?;
        if let Err(err) = fw.apply_with(op.exec(), op.options(self.per_command())) {
            // Removal groups ignore errors, so only refusals before anything ran and executor
            // failures (a program that cannot be started, a journal that cannot be written, a
            // command not started because a signal asked to stop) get here: keep the plan
            // (running `remove` again deletes what is left), drop the journal.
            let interrupted = op.exec().interrupted();
            op.finish()?;
            return Err(match interrupted {
                Some(signal) => StoreError::Interrupted {
                    signal,
                    operation: format!("removal of {name}"),
                    outcome: REMOVAL_KEPT,
                },
                None => StoreError::from_remove(err),
            });
        }
        // A signal that came after the last delete had run is too late to stop the removal:
        // it is complete, and reported as such.
        // Exact on both paths: the engine reports every delete it gave up on, per command or
        // from its batch's retries, with whether the object was already gone.
        let (missing, failed) = op.exec().ignored();
        Plan::delete(&state, name)?;
        op.finish()?;
        Ok(RemoveReport {
            removed: name.to_string(),
            commands: fw.command_count(),
            missing,
            failed,
        })
    }

    /// Drop the plan `name` without running it, whether it can be read or not (a corrupt
    /// plan is exactly what one wants to forget); the report says what it was, if readable.
    pub fn forget(&self, name: &str) -> Result<ForgetReport> {
        let (state, _lock) = self.lock(LockKind::Exclusive)?;
        state::check_name(name)?;
        let path = state.plan_path(name);
        if std::fs::symlink_metadata(&path).is_err() {
            return Err(StoreError::NoSuchPlan {
                name: name.to_string(),
                dir: state.plans_dir(),
            });
        }
        let was = Plan::load(&path);
        Plan::delete(&state, name)?;
        let plan = match was {
            Ok(p) => ForgottenPlan::Readable {
                backend: p.backend,
                commands: p.commands,
                netns: p.netns,
            },
            Err(e) => ForgottenPlan::Unreadable {
                error: e.to_string(),
            },
        };
        Ok(ForgetReport {
            forgotten: name.to_string(),
            plan,
        })
    }

    /// The stored plans, with whether each is stale, and the pending journals' count.
    pub fn list(&self) -> Result<ListReport> {
        let (state, _lock) = self.lock(LockKind::Shared)?;
        let mut plans = Vec::new();
        for (name, loaded) in plan::all_plans(&state)? {
            plans.push(match loaded {
                Ok(p) => PlanRow::Stored(PlanSummary {
                    stale: p.stale_reason(),
                    age_seconds: state::now().saturating_sub(p.created),
                    name,
                    backend: p.backend,
                    groups: p.groups,
                    commands: p.commands,
                    netns: p.netns,
                    created: p.created,
                }),
                Err(e) => PlanRow::Corrupt {
                    name,
                    error: e.to_string(),
                },
            });
        }
        let pending_journals = journal::pending(&state)?.len();
        Ok(ListReport {
            plans,
            pending_journals,
        })
    }

    /// The stored plan `name`.
    pub fn show(&self, name: &str) -> Result<ShowReport> {
        let state = self.state()?;
        let plan = Plan::load_named(&state, name)?;
        Ok(ShowReport {
            name: name.to_string(),
            stale: plan.stale_reason(),
            backend: plan.backend,
            netns: plan.netns,
            created: plan.created,
            removal: plan.removal,
        })
    }

    /// Check that every object the plans `names` (all plans when empty) would remove still
    /// exists in the live ruleset. Drift is the report's outcome ([`VerifyReport::drift`]); a
    /// plan that cannot be read or checked is its [`VerifyReport::problem`].
    pub fn verify(&self, names: &[String]) -> Result<VerifyReport> {
        let (state, _lock) = self.lock(LockKind::Shared)?;
        let plans: Vec<(String, Result<Plan>)> = if names.is_empty() {
            plan::all_plans(&state)?
        } else {
            names
                .iter()
                .map(|n| (n.clone(), Plan::load_named(&state, n)))
                .collect()
        };
        let mut out = VerifyReport {
            plans: Vec::new(),
            missing: 0,
            problem: None,
        };
        for (name, loaded) in plans {
            let p = match loaded {
                Ok(p) => p,
                Err(e) => {
                    out.plans.push(PlanVerification::Unreadable {
                        name,
                        error: e.to_string(),
                    });
                    out.problem.get_or_insert(e);
                    continue;
                }
            };
            if let Some(stale) = p.stale_reason() {
                out.plans.push(PlanVerification::Stale { name, stale });
                continue;
            }
            let fw = p.removal_firewall(&state.plan_path(&name))?;
            let exec: Box<dyn Executor> = match &p.netns {
                Some(n) => Box::new(
                    ProcessExecutor::in_netns(n)
                        .map_err(|e| StoreError::Netns {
                            name: n.clone(),
                            source: std::io::Error::other(e.to_string()),
                        })?
                        .with_timeout(self.child_timeout()),
                ),
                None => Box::new(ProcessExecutor::new().with_timeout(self.child_timeout())),
            };
            let report = verify::verify_plan(&fw, exec.as_ref());
            out.missing += report.missing.len();
            if let Some(e) = &report.error {
                // Could not look (nft missing from PATH, say): not drift, a problem (exit 4).
                out.problem.get_or_insert(StoreError::State {
                    path: state.plan_path(&name),
                    message: e.clone(),
                });
            }
            out.plans.push(PlanVerification::Checked { name, report });
        }
        Ok(out)
    }

    /// Settle every pending journal that can be read: finish or undo what a killed process
    /// left half done. Each one that cannot be settled is kept and listed
    /// ([`RecoverReport::error`]); the others are settled all the same.
    ///
    /// Call it at start-up, before any other operation: writers refuse to run over a pending
    /// journal. It waits for the lock like any writer, and because every firewall command a
    /// store starts inherits the lock, holding it means no command of a dead process still
    /// runs.
    pub fn recover(&self) -> Result<RecoverReport> {
        let state = self.state()?;
        let lock = StateLock::acquire(
            &state,
            LockKind::Exclusive,
            self.opts.lock_timeout,
            &self.opts.cancel,
        )?;
        let outcome = recover::recover_all(&state, self.children(&lock))?;
        Ok(RecoverReport {
            recovered: outcome.settled,
            unsettled: outcome.unsettled,
        })
    }

    /// Discard the journal `id` without running anything: whatever that operation changed in
    /// the kernel stays as it is (for a journal [`Store::recover`] cannot settle).
    pub fn recover_drop(&self, id: &str) -> Result<DropReport> {
        let state = self.state()?;
        let _lock = StateLock::acquire(
            &state,
            LockKind::Exclusive,
            self.opts.lock_timeout,
            &self.opts.cancel,
        )?;
        let dir = journal::find_pending(&state, id)?;
        let what = journal::read_header(&dir);
        journal::remove_journal(&dir)?;
        let journal = match what {
            Ok(h) => DroppedJournal::Readable {
                kind: h.kind.as_str(),
                name: h.name,
                backend: h.backend,
                netns: h.netns,
                created: h.created,
            },
            Err(e) => DroppedJournal::Unreadable {
                error: e.to_string(),
            },
        };
        Ok(DropReport {
            dropped: id.to_string(),
            journal,
        })
    }
}

/// Why an apply is undone.
enum Undo {
    /// The engine failed it with this error.
    Failed(virtfw::Error),
    /// This signal asked to stop it (through the store's [`Cancel`]).
    Interrupted(i32),
}

/// What an interrupted apply or network start leaves.
pub(crate) const UNDONE: &str = "stopped between commands; everything it changed was undone";

/// What an interrupted removal leaves.
pub(crate) const REMOVAL_KEPT: &str = "stopped between commands; what it deleted stays deleted \
     and the plan is kept (run `virtfw remove` again to delete the rest)";

/// What apply refuses before it runs anything: a bad name, an empty transaction, backend
/// `none`.
fn check_transaction(fw: &Firewall, name: &str) -> Result<()> {
    state::check_name(name)?;
    if fw.is_empty() {
        return Err(StoreError::Usage(format!(
            "{name}: the transaction has no commands"
        )));
    }
    if fw.backend() == Backend::None {
        return Err(StoreError::Usage(format!(
            "{name}: backend 'none' cannot apply anything"
        )));
    }
    Ok(())
}
