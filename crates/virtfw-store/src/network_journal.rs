//! Network operations as journalled operations: what `recover` does with a `network start`,
//! `stop` or `reload` that was killed, and the undo a failed start shares with it.
//!
//! The lifecycle announces its steps (`virtfw_network::lifecycle::Step`); each becomes a phase
//! of the journal, because each is undone by its own rule:
//!
//! | phase          | undone by                                                             |
//! |----------------|-----------------------------------------------------------------------|
//! | `global_setup` | never: libvirt's shared chains stay (other networks use them)          |
//! | `bridge`       | `ip link del` of a bridge whose `ip link add` we started and that did not fail, behind `ip link show` |
//! | `rules`        | `undo::undo_apply` of the network's firewall, exactly as for `apply`   |
//! | `remove_rules` | finished with `undo::undo_remove` of the stored plan, as for `remove`  |
//! | `delete_bridge`| finished: the bridge is deleted if it still exists and was ours        |
//!
//! Off the per-command path the lifecycle overlaps `global_setup` with `bridge` (start) and
//! `remove_rules` with `delete_bridge` (stop), marking both phases before either runs, so their
//! records interleave in the segment of the second mark. Nothing here depends on where a
//! record is: `global_setup` is never undone, the bridge undo picks out `ip link add` records
//! by their argv, the removal is finished from the plan minus completed argvs (an `ip link
//! del` is not one of them), and `delete_bridge` is finished by a guarded delete that reads no
//! records. So each step's undo or finish is independent of the other's progress (docs/cli.md,
//! "Steps that run at the same time").
//!
//! Commit point of `start` and `reload`: the new status file is written into the journal
//! (`result`) before it is stored. Recovery with a result stores it (the operation had done all
//! its kernel work: `network stop` restores); without one:
//!
//! * **start** — the rules and a bridge it created are undone; no status file is left;
//! * **stop** — the status file is deleted (if the kill came before), the removal and the
//!   bridge deletion are finished;
//! * **reload** — the old plan's removal is finished, whatever the new add created is undone,
//!   and the status is stored without a removal plan, exactly as after a reload whose add failed
//!   (`network reload NAME` adds the rules again).

use std::cell::RefCell;
use std::path::Path;

use virtfw::Firewall;
use virtfw_network::lifecycle::Step;
use virtfw_network::status::StatusIdentity;
use virtfw_network::NetworkStatus;

use crate::error::{Result, StoreError};
use crate::exec::Children;
use crate::journal::{self, OpHeader, OpKind, JOURNAL_VERSION};
use crate::operation::{Operation, UndoStats};
use crate::state::{self, StateDir};
use crate::undo;

const GLOBAL_SETUP: &str = "global_setup";
const BRIDGE: &str = "bridge";
const RULES: &str = "rules";
const REMOVE_RULES: &str = "remove_rules";
const DELETE_BRIDGE: &str = "delete_bridge";

fn phase_of(step: Step) -> &'static str {
    match step {
        Step::GlobalSetup => GLOBAL_SETUP,
        Step::Bridge => BRIDGE,
        Step::Rules => RULES,
        Step::RemoveRules => REMOVE_RULES,
        Step::DeleteBridge => DELETE_BRIDGE,
    }
}

/// Writes a phase mark for each lifecycle step; the lifecycle's callback cannot fail, so the
/// first error is kept and reported by [`Phases::check`].
///
/// Each step also tells the executor whether its commands undo (never refused for a signal)
/// or are the operation's forward part: the engine's rollback of one step (a global setup
/// whose failure the network tolerates) must not let the next step run past a signal.
pub(crate) struct Phases<'a> {
    op: &'a Operation,
    error: RefCell<Option<StoreError>>,
    undo: fn(Step) -> bool,
}

impl<'a> Phases<'a> {
    pub(crate) fn new(op: &'a Operation) -> Self {
        Phases {
            op,
            error: RefCell::new(None),
            undo: |_| false,
        }
    }

    /// The steps for which `undo` is true undo what the operation did (a failed start's
    /// bridge deletion; every step of a stop).
    pub(crate) fn undo_steps(mut self, undo: fn(Step) -> bool) -> Self {
        self.undo = undo;
        self
    }

    pub(crate) fn step(&self, step: Step) {
        self.op.exec().undoing((self.undo)(step));
        if let Err(e) = self.op.phase(phase_of(step)) {
            self.error.borrow_mut().get_or_insert(e);
        }
    }

    /// The first journal error, if marking a phase failed.
    pub(crate) fn check(self) -> Result<()> {
        match self.error.into_inner() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The head of a network operation's journal.
pub(crate) fn header(
    kind: OpKind,
    name: &str,
    backend: &str,
    netns: Option<&str>,
    document: String,
    status: String,
) -> Result<OpHeader> {
    let netns_id = state::netns_identity(netns).map_err(|source| match netns {
        Some(n) => StoreError::Netns {
            name: n.to_string(),
            source,
        },
        None => StoreError::io("cannot stat own netns", source),
    })?;
    Ok(OpHeader {
        version: JOURNAL_VERSION,
        op_id: journal::new_op_id(),
        kind,
        name: name.to_string(),
        backend: backend.to_string(),
        netns: netns.map(str::to_string),
        netns_id,
        boot_id: state::boot_id(),
        created: state::now(),
        document,
        status: Some(status),
    })
}

/// The identity an operation's journal recorded (where and when it ran), to stamp the status
/// it stores: the status then goes stale exactly when the journal would.
pub(crate) fn identity(header: &OpHeader) -> StatusIdentity {
    StatusIdentity {
        boot_id: header.boot_id.clone(),
        netns_id: header.netns_id.clone(),
    }
}

/// Undo a network start that did not complete: the rules it applied (what the engine's
/// rollback left), then the bridge it created. The live path after a failed start (`mark`
/// `undo`) and recovery (`recover`) run this same function.
pub(crate) fn undo_start(op: &Operation, tx: Option<&Firewall>, mark: &str) -> Result<UndoStats> {
    let mut stats = UndoStats::default();
    if let Some(tx) = tx {
        stats += op.undo_apply(tx, RULES, mark)?;
    }
    stats += op.undo_phase(BRIDGE, mark, |records| Ok(undo::undo_bridge(records)))?;
    Ok(stats)
}

/// The network's firewall as the journal recorded it (none for a network without rules).
fn journal_tx(dir: &Path, header: &OpHeader) -> Result<Option<Firewall>> {
    if header.document.is_empty() {
        return Ok(None);
    }
    journal::journal_firewall(dir, &header.document).map(Some)
}

fn journal_status(dir: &Path, header: &OpHeader) -> Result<NetworkStatus> {
    let corrupt = |message: String| StoreError::State {
        path: dir.to_path_buf(),
        message: format!("corrupt journal: {message}"),
    };
    let text = header
        .status
        .as_deref()
        .ok_or_else(|| corrupt("a network operation without its status".into()))?;
    NetworkStatus::from_xml(text, &dir.join("op.json").display().to_string())
        .map_err(|e| corrupt(e.to_string()))
}

/// The stored removal plan of `status` (none for a network without rules).
pub(crate) fn removal_of(status: &NetworkStatus) -> Option<Firewall> {
    status
        .def
        .forward
        .has_rules()
        .then(|| status.removal_plan())
}

/// A stop whose namespace is gone: the network went with it.
pub(crate) fn drop_stale_stop(state: &StateDir, header: &OpHeader) -> Result<()> {
    state::remove_durably(&state.network_status_path(&header.name))
}

/// Store the committed status unless it already is.
fn install(path: &Path, xml: &str) -> Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|t| t == xml) {
        return Ok(());
    }
    state::write_atomic(path, xml.as_bytes())
}

/// Settle one network journal (see the module docs). Returns what was done.
pub(crate) fn recover(
    state: &StateDir,
    children: Children,
    dir: &Path,
    header: &OpHeader,
) -> Result<(String, UndoStats)> {
    let path = state.network_status_path(&header.name);
    if let Some(result) = journal::read_result(dir) {
        install(&path, &result)?;
        return Ok((
            format!("{} had completed; status stored", header.kind.as_str()),
            UndoStats::default(),
        ));
    }
    let op = Operation::resume(dir, header.netns.as_deref(), children)?;
    match header.kind {
        OpKind::NetworkStart => {
            let stats = undo_start(&op, journal_tx(dir, header)?.as_ref(), "recover")?;
            Ok(("rolled back the interrupted start".into(), stats))
        }
        OpKind::NetworkStop => {
            let status = journal_status(dir, header)?;
            state::remove_durably(&path)?;
            let mut stats = UndoStats::default();
            if let Some(plan) = removal_of(&status) {
                stats += op.undo_remove(&plan, REMOVE_RULES, "recover")?;
            }
            if status.created_bridge {
                op.reenter(DELETE_BRIDGE, "recover")?;
                stats += op.run_undo(&[undo::delete_bridge(&status.def.bridge)])?;
            }
            Ok(("finished the interrupted stop".into(), stats))
        }
        OpKind::NetworkReload => {
            let old = journal_status(dir, header)?;
            let mut stats = UndoStats::default();
            if let Some(plan) = removal_of(&old) {
                stats += op.undo_remove(&plan, REMOVE_RULES, "recover")?;
            }
            if let Some(tx) = journal_tx(dir, header)? {
                stats += op.undo_apply(&tx, RULES, "recover")?;
            }
            // Where and when the reload ran (a libvirt file reloaded in --netns becomes ours).
            let status = NetworkStatus {
                removal: None,
                netns: header.netns.clone(),
                ..old
            };
            let xml = status.to_xml_stamped(&identity(header));
            op.commit(xml.as_bytes())?;
            install(&path, &xml)?;
            Ok((
                format!(
                    "interrupted reload: old rules removed, new ones undone; status kept without a removal plan (run `virtfw network reload {}`)",
                    header.name
                ),
                stats,
            ))
        }
        OpKind::Apply | OpKind::Remove => Err(StoreError::Failed(format!(
            "{}: not a network operation",
            dir.display()
        ))),
    }
}
