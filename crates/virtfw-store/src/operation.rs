//! One journalled operation: the journal and the executor that writes into it, shared by every
//! state-changing command (`apply`, `remove`, `network start|stop|reload`) and by `recover`.
//!
//! The rules that make a killed operation recoverable live here once:
//!
//! * the journal exists (durably) before the first command runs ([`Operation::begin`]);
//! * every command goes through the [`JournalExecutor`] (start record fdatasync'ed before the
//!   spawn, output written by the child into the journal, state lock inherited);
//! * an operation made of steps marks each one ([`Operation::phase`]), so that recovery undoes
//!   each step by its own rule;
//! * a failed or interrupted apply is undone by the same computation on the live path and in
//!   `recover` ([`Operation::undo_apply`]), so the two cannot disagree; an interrupted removal
//!   is finished by [`Operation::undo_remove`];
//! * the journal is deleted only once the operation's result is stored ([`Operation::finish`]).

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use virtfw::executor::Invocation;
use virtfw::transcript::command_line;
use virtfw::{ApplyOptions, Executor, Firewall};

use crate::cancel::Cancel;
use crate::error::{Result, StoreError};
use crate::exec::{Children, JournalExecutor};
use crate::journal::{self, Journal, OpHeader, OpKind, Record};
use crate::state::StateDir;
use crate::undo::{self, UndoCmd};

/// Counts of an undo run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct UndoStats {
    /// Commands run.
    pub run: usize,
    /// Objects found already absent (`--check` failed) or whose delete failed.
    pub missing: usize,
}

impl std::ops::AddAssign for UndoStats {
    fn add_assign(&mut self, other: UndoStats) {
        self.run += other.run;
        self.missing += other.missing;
    }
}

/// An operation in progress (or being recovered), with its journal.
pub(crate) struct Operation {
    journal: Arc<Journal>,
    exec: JournalExecutor,
}

impl Operation {
    /// Start a new operation: its journal is durable before this returns. Commands run in
    /// `netns` and inherit the state lock `children`; its forward part stops between commands
    /// once `cancel` is set.
    pub(crate) fn begin(
        state: &StateDir,
        header: &OpHeader,
        netns: Option<&str>,
        children: Children,
        cancel: Cancel,
    ) -> Result<Operation> {
        let journal = Arc::new(Journal::begin(state, header)?);
        let op = Operation::with(journal, netns, children, cancel)?;
        if header.kind == OpKind::Remove {
            op.witness(&header.document);
        }
        Ok(op)
    }

    /// Before a removal deletes anything: list each iptables chain its plan deletes from, in
    /// the journal. Recovery settles a delete this removal is killed during by counting rules
    /// against these listings (`undo::settle_interrupted`); `--check` cannot, when someone
    /// else has an identical rule. Best effort: without a witness recovery falls back to
    /// `--check`.
    fn witness(&self, plan: &str) {
        let Ok(plan) = Firewall::from_xml(plan, "journal") else {
            return;
        };
        for argv in undo::witnesses(&plan) {
            let _ = self.probe(&argv);
        }
    }

    /// Continue the operation of an existing journal (recovery appends to it, so a recovery
    /// that is killed is finished by the next one under the same rules). Recovery is all
    /// undo: no signal stops it.
    pub(crate) fn resume(dir: &Path, netns: Option<&str>, children: Children) -> Result<Operation> {
        let journal = Arc::new(Journal::open(dir)?);
        Operation::with(journal, netns, children, Cancel::new())
    }

    fn with(
        journal: Arc<Journal>,
        netns: Option<&str>,
        children: Children,
        cancel: Cancel,
    ) -> Result<Operation> {
        let exec = JournalExecutor::new(
            netns,
            Some(children.lock_fd),
            children.timeout,
            journal.clone(),
            cancel,
        )?;
        Ok(Operation { journal, exec })
    }

    pub(crate) fn exec(&self) -> &JournalExecutor {
        &self.exec
    }

    pub(crate) fn dir(&self) -> &Path {
        self.journal.dir()
    }

    /// Apply options whose observer journals groups and rollbacks and counts ignored failures.
    pub(crate) fn options(&self, per_command: bool) -> ApplyOptions<'_> {
        ApplyOptions::new()
            .per_command(per_command)
            .observer(&self.exec)
    }

    /// Mark the start of a step (see `journal::phase_records`).
    pub(crate) fn phase(&self, name: &str) -> Result<()> {
        self.exec.mark(&journal::phase_mark(name))
    }

    fn mark(&self, mark: &str) -> Result<()> {
        self.exec.mark(mark)
    }

    /// The records of phase `name` written so far.
    fn records(&self, name: &str) -> Vec<Record> {
        journal::phase_records(&journal::read_records(self.dir()), name)
    }

    /// Go back to phase `phase` to undo or finish it: mark it, then `mark`, and return its
    /// records (the mark makes every command that completes from here on count as done).
    /// From here on the operation is undoing: its commands are not refused for a signal.
    pub(crate) fn reenter(&self, phase: &str, mark: &str) -> Result<Vec<Record>> {
        self.exec.undoing(true);
        self.phase(phase)?;
        self.mark(mark)?;
        Ok(self.records(phase))
    }

    /// Run undo commands in order: a `--check` first where there is one, then the delete.
    /// A command that ran and failed is counted (already gone, or its delete failed: the aim
    /// is to remove whatever is still there). A command that could not run or be journalled,
    /// or whose outcome is unknown (killed at its timeout), stops the undo with
    /// [`StoreError::UndoStopped`]: that is never "already absent", and the caller keeps the
    /// journal for `recover`.
    pub(crate) fn run_undo(&self, cmds: &[UndoCmd]) -> Result<UndoStats> {
        let mut stats = UndoStats::default();
        let ok = |argv: &[String]| {
            self.exec
                .run(Invocation { argv, stdin: None })
                .map(|o| o.success())
                .map_err(|source| StoreError::UndoStopped {
                    cmdline: command_line(argv),
                    source,
                })
        };
        for cmd in cmds {
            if let Some(check) = &cmd.check {
                if !ok(check)? {
                    stats.missing += 1;
                    continue;
                }
            }
            stats.run += 1;
            if !ok(&cmd.argv)? {
                stats.missing += 1;
            }
        }
        Ok(stats)
    }

    /// Undo or finish phase `phase`: `undo` computes the commands from the phase's records,
    /// which then run in that phase after `mark` ([`Operation::reenter`]). With nothing to run
    /// nothing is written, so an undo with nothing to do succeeds on a full state filesystem.
    pub(crate) fn undo_phase(
        &self,
        phase: &str,
        mark: &str,
        undo: impl FnOnce(&[Record]) -> Result<Vec<UndoCmd>>,
    ) -> Result<UndoStats> {
        let cmds = undo(&self.records(phase))?;
        if cmds.is_empty() {
            return Ok(UndoStats::default());
        }
        self.reenter(phase, mark)?;
        self.run_undo(&cmds)
    }

    /// Run a check or listing (journalled like every command): its output if it succeeded.
    fn probe(&self, argv: &[String]) -> Option<String> {
        self.exec
            .run(Invocation { argv, stdin: None })
            .ok()
            .filter(|o| o.success())
            .map(|o| o.stdout)
    }

    /// Undo everything of `tx` that phase `phase` left in the kernel, journalled in that phase
    /// after `mark` (`undo` after the engine failed to apply `tx` and ran libvirt's rollback,
    /// which may leave earlier groups applied; `recover` in recovery).
    pub(crate) fn undo_apply(&self, tx: &Firewall, phase: &str, mark: &str) -> Result<UndoStats> {
        let records = self.reenter(phase, mark)?;
        let probe = |argv: &[String]| self.probe(argv);
        let cmds = undo::undo_apply(tx, self.dir(), &records, &probe).map_err(|e| {
            crate::StoreError::State {
                path: self.dir().to_path_buf(),
                message: e.to_string(),
            }
        })?;
        self.run_undo(&cmds)
    }

    /// Finish the removal by `plan` that phase `phase` began, after `mark`: its commands not
    /// yet completed (iptables deletes behind a `--check`).
    pub(crate) fn undo_remove(
        &self,
        plan: &Firewall,
        phase: &str,
        mark: &str,
    ) -> Result<UndoStats> {
        let records = self.reenter(phase, mark)?;
        let probe = |argv: &[String]| self.probe(argv);
        self.run_undo(&undo::undo_remove(plan, self.dir(), &records, &probe))
    }

    /// Store the result in the journal: the commit point of a network operation.
    pub(crate) fn commit(&self, result: &[u8]) -> Result<()> {
        self.journal.commit(result)
    }

    /// The operation is over (its result stored): delete the journal durably.
    pub(crate) fn finish(self) -> Result<()> {
        let dir = self.journal.dir().to_path_buf();
        drop(self);
        journal::remove_journal(&dir)
    }
}
