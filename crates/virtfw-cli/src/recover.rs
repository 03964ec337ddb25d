//! Finishing what a killed virtfw left half done.
//!
//! Runs only under the exclusive state lock. Because every firewall command virtfw starts
//! inherits that lock, holding it means no command of a dead virtfw still runs: its journal
//! and output files are final. Each pending journal is then settled:
//!
//! * from another boot, or for a namespace that is gone or was re-created: its rules are gone
//!   with the kernel state; the journal (and, for a remove, the plan) is dropped and reported;
//! * apply whose plan was stored (the plan carries the same operation id): it had completed;
//!   only the journal is deleted;
//! * any other apply: everything it created is removed (`undo::undo_apply`);
//! * remove: the plan's remaining commands run (`undo::undo_remove`), then the plan is deleted.
//!
//! Recovery journals its own commands in the same journal, so a recovery that is itself
//! killed is finished by the next one without running any command twice.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use tracing::{info, warn};
use virtfw::executor::Invocation;
use virtfw::{Executor, Firewall};

use crate::error::{CliError, CliResult};
use crate::exec::JournalExecutor;
use crate::journal::{self, Journal, OpKind};
use crate::plan::{self, Plan};
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

/// Run undo commands in order: a `--check` first where there is one, then the delete.
/// Failures are counted, never fatal: the aim is to remove whatever is still there.
pub(crate) fn run_undo(exec: &JournalExecutor, cmds: &[UndoCmd]) -> UndoStats {
    let mut stats = UndoStats::default();
    let ok = |argv: &[String]| {
        exec.run(Invocation { argv, stdin: None })
            .map(|o| o.success())
            .unwrap_or(false)
    };
    for cmd in cmds {
        if let Some(check) = &cmd.check {
            if !ok(check) {
                stats.missing += 1;
                continue;
            }
        }
        stats.run += 1;
        if !ok(&cmd.argv) {
            stats.missing += 1;
        }
    }
    stats
}

/// What recovery did with one journal.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Settled {
    pub op_id: String,
    pub kind: &'static str,
    pub name: String,
    pub action: String,
    pub commands: usize,
    pub missing: usize,
}

/// Settle every pending journal.
pub(crate) fn recover_all(state: &StateDir, lock_fd: i32) -> CliResult<Vec<Settled>> {
    journal::clean_temporaries(state);
    let mut out = Vec::new();
    for dir in journal::pending(state)? {
        out.push(recover_one(state, lock_fd, &dir)?);
    }
    Ok(out)
}

fn recover_one(state: &StateDir, lock_fd: i32, dir: &Path) -> CliResult<Settled> {
    let header = journal::read_header(dir)?;
    let records = journal::read_records(dir);
    let kind = match header.kind {
        OpKind::Apply => "apply",
        OpKind::Remove => "remove",
    };
    let mut settled = Settled {
        op_id: header.op_id.clone(),
        kind,
        name: header.name.clone(),
        action: String::new(),
        commands: 0,
        missing: 0,
    };
    let doc_name = dir.join("op.json").display().to_string();
    let plan_path = state.plan_path(&header.name);
    let stored = Plan::load(&plan_path).ok();

    if let Some(reason) =
        plan::staleness(&header.boot_id, header.netns.as_deref(), &header.netns_id)
    {
        warn!(journal = %dir.display(), %reason, "dropping journal: its rules are gone");
        if header.kind == OpKind::Remove && stored.is_some() {
            Plan::delete(state, &header.name)?;
        }
        journal::remove_journal(dir)?;
        settled.action = format!("dropped: {reason}");
        return Ok(settled);
    }

    let cmds = match header.kind {
        OpKind::Apply => {
            if stored.as_ref().is_some_and(|p| p.op_id == header.op_id) {
                journal::remove_journal(dir)?;
                settled.action = "apply had completed; plan kept".into();
                return Ok(settled);
            }
            let tx =
                Firewall::from_xml(&header.document, &doc_name).map_err(|e| CliError::State {
                    path: dir.to_path_buf(),
                    message: format!("corrupt journal: {e}"),
                })?;
            settled.action = "rolled back the interrupted apply".into();
            undo::undo_apply(&tx, dir, &records)
        }
        OpKind::Remove => {
            if stored.is_none() {
                journal::remove_journal(dir)?;
                settled.action = "removal had completed".into();
                return Ok(settled);
            }
            let plan =
                Firewall::from_xml(&header.document, &doc_name).map_err(|e| CliError::State {
                    path: dir.to_path_buf(),
                    message: format!("corrupt journal: {e}"),
                })?;
            settled.action = "finished the interrupted removal".into();
            undo::undo_remove(&plan, &records)
        }
    };
    let journal = Arc::new(Journal::open(dir)?);
    let exec = JournalExecutor::new(header.netns.as_deref(), Some(lock_fd), journal)?;
    exec.mark("recover")?;
    let stats = run_undo(&exec, &cmds);
    info!(journal = %dir.display(), run = stats.run, missing = stats.missing, "recovered");
    settled.commands = stats.run;
    settled.missing = stats.missing;
    if header.kind == OpKind::Remove {
        Plan::delete(state, &header.name)?;
    }
    journal::remove_journal(dir)?;
    Ok(settled)
}
