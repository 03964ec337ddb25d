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
//! * remove: the plan's remaining commands run (`undo::undo_remove`), then the plan is deleted;
//! * network start, stop, reload: see `network_journal`.
//!
//! Recovery journals its own commands in the same journal, so a recovery that is itself
//! killed is finished by the next one without running any command twice.
//!
//! A journal that cannot be read (corrupt or missing `op.json`, an empty directory, a newer
//! format) or whose undo stops (an executor or journal error: a full state directory, a
//! program killed at its timeout) is reported and kept, never deleted, and recovery goes on
//! with the next: one bad journal must not keep the others from being settled. `recover
//! --drop ID` discards one on purpose.

use std::path::Path;

use serde::Serialize;
use tracing::{info, warn};

use crate::error::Result;
use crate::exec::Children;
use crate::journal::{self, OpHeader, OpKind};
use crate::network_journal;
use crate::operation::{Operation, UndoStats};
use crate::plan::{self, Plan};
use crate::state::StateDir;

/// What recovery did with one journal.
#[derive(Debug, Clone, Serialize)]
pub struct Settled {
    /// The journal's (the operation's) id.
    pub op_id: String,
    /// The operation: `apply`, `remove`, `network-start`, ….
    pub kind: &'static str,
    /// The plan's or network's name.
    pub name: String,
    /// What was done, in words ("undone", "finished", "dropped: …").
    pub action: String,
    /// Commands recovery ran.
    pub commands: usize,
    /// Objects its commands found already absent.
    pub missing: usize,
}

/// A journal recovery could not settle: it is kept.
#[derive(Debug, Clone, Serialize)]
pub struct Unsettled {
    /// The journal's id (what [`crate::Store::recover_drop`] takes).
    pub op_id: String,
    /// Its directory.
    pub path: String,
    /// Why it could not be settled.
    pub error: String,
}

/// What `recover` did: the journals it settled and those it kept.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    pub settled: Vec<Settled>,
    pub unsettled: Vec<Unsettled>,
}

/// Settle every pending journal. One that cannot be read, or whose undo stops, is reported
/// and kept, and the others are settled all the same: each journal is a separate operation.
pub(crate) fn recover_all(state: &StateDir, children: Children) -> Result<Recovery> {
    journal::clean_temporaries(state);
    let mut out = Recovery::default();
    for dir in journal::pending(state)? {
        match recover_one(state, children, &dir) {
            Ok(settled) => out.settled.push(settled),
            Err(e) => {
                warn!(journal = %dir.display(), error = %e, "journal not settled; kept");
                out.unsettled.push(Unsettled {
                    op_id: journal::journal_id(&dir),
                    path: dir.display().to_string(),
                    error: e.to_string(),
                });
            }
        }
    }
    Ok(out)
}

fn recover_one(state: &StateDir, children: Children, dir: &Path) -> Result<Settled> {
    let header = journal::read_header(dir)?;
    let mut settled = Settled {
        op_id: header.op_id.clone(),
        kind: header.kind.as_str(),
        name: header.name.clone(),
        action: String::new(),
        commands: 0,
        missing: 0,
    };
    if let Some(reason) =
        plan::staleness(&header.boot_id, header.netns.as_deref(), &header.netns_id)
    {
        warn!(journal = %dir.display(), %reason, "dropping journal: its rules are gone");
        match header.kind {
            OpKind::Remove => Plan::delete(state, &header.name)?,
            OpKind::NetworkStop => network_journal::drop_stale_stop(state, &header)?,
            OpKind::Apply | OpKind::NetworkStart | OpKind::NetworkReload => {}
        }
        journal::remove_journal(dir)?;
        settled.action = format!("dropped: {reason}");
        return Ok(settled);
    }
    let (action, stats) = match header.kind {
        OpKind::Apply | OpKind::Remove => recover_plan_op(state, children, dir, &header)?,
        _ => network_journal::recover(state, children, dir, &header)?,
    };
    info!(journal = %dir.display(), run = stats.run, missing = stats.missing, "recovered");
    settled.action = action;
    settled.commands = stats.run;
    settled.missing = stats.missing;
    journal::remove_journal(dir)?;
    Ok(settled)
}

/// `apply`: completed when its plan is stored under the same operation id, else undone.
/// `remove`: completed when the plan is gone, else finished, then the plan deleted.
fn recover_plan_op(
    state: &StateDir,
    children: Children,
    dir: &Path,
    header: &OpHeader,
) -> Result<(String, UndoStats)> {
    let stored = Plan::load(&state.plan_path(&header.name)).ok();
    let apply = header.kind == OpKind::Apply;
    if apply && stored.as_ref().is_some_and(|p| p.op_id == header.op_id) {
        return Ok((
            "apply had completed; plan kept".into(),
            UndoStats::default(),
        ));
    }
    if !apply && stored.is_none() {
        return Ok(("removal had completed".into(), UndoStats::default()));
    }
    let fw = journal::journal_firewall(dir, &header.document)?;
    let op = Operation::resume(dir, header.netns.as_deref(), children)?;
    if apply {
        let stats = op.undo_apply(&fw, "", "recover")?;
        Ok(("rolled back the interrupted apply".into(), stats))
    } else {
        let stats = op.undo_remove(&fw, "", "recover")?;
        Plan::delete(state, &header.name)?;
        Ok(("finished the interrupted removal".into(), stats))
    }
}
