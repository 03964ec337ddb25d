//! The network operations of a [`Store`] (`network_start`, `_stop`, `_reload`, …): libvirt
//! virtual networks (docs/networks.md).
//!
//! A running network is remembered as libvirt remembers it: a `<networkstatus>` file with the
//! definition and the `fwRemoval` plan, here `STATE_DIR/networks/NAME.xml`. A libvirt status
//! file copied there can be stopped by virtfw, and ours read by libvirt. Every change holds the
//! state directory's exclusive lock and is a journalled operation like `apply`/`remove`
//! (`operation`, recovery in `network_journal`): every command is journalled before it runs
//! and inherits the lock.
//!
//! Identity: a status file virtfw writes is stamped with the boot id and the identity of the
//! namespace its rules were made in (`<virtfw bootId=… netnsId=…/>`). When either no longer
//! matches, the file is stale: its handles may name someone else's objects now, so it is never
//! run, only shown as stale and dropped with `network stop --forget`. A file without an identity
//! (written by libvirt) is used only in the namespace the store's `netns` option (`--netns`) names, or virtfw's own.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use virtfw::{Backend, ExecError, Firewall, ProcessExecutor};
use virtfw_network::lifecycle::Step;
use virtfw_network::status::StatusIdentity;
use virtfw_network::{backend, lifecycle, NetworkDef, NetworkError, NetworkStatus};

use crate::error::{Result, StoreError};
use crate::exec::open_netns;
use crate::journal::OpKind;
use crate::lock::{LockKind, StateLock};
use crate::network_journal::{self, Phases};
use crate::operation::Operation;
use crate::plan::staleness;
use crate::report::*;
use crate::state::{self, StateDir};
use crate::store::Store;

/// Sort a network error into the CLI's exit codes: bad definitions are input errors (2), a
/// refused command is 1, a missing backend program 2.
fn cli_error(err: NetworkError) -> StoreError {
    match err {
        NetworkError::Firewall(e) => StoreError::from_apply(e),
        e => cli_error_common(e),
    }
}

/// The same for `network stop`: a removal is never rolled back, so its failure must not say so
/// (the status, and with it the removal plan, is kept for another try).
fn stop_error(err: NetworkError) -> StoreError {
    match err {
        NetworkError::Firewall(e) => StoreError::from_remove(e),
        e => cli_error_common(e),
    }
}

fn cli_error_common(err: NetworkError) -> StoreError {
    match err {
        NetworkError::Backend(m) => StoreError::Usage(m),
        e if e.is_input_error() => StoreError::Usage(e.to_string()),
        e => StoreError::Failed(e.to_string()),
    }
}

/// A backend named on a command line (`nftables`, `iptables`); anything else is bad usage.
pub fn parse_backend(s: &str) -> Result<Backend> {
    s.parse::<Backend>()
        .map_err(|e| StoreError::Usage(e.to_string()))
}

/// The configured backend: `flag` (a `--backend`), else the `firewall_backend` setting of
/// libvirt's `network.conf` at `conf` (a missing file sets nothing), else none. The caller
/// picks the file ([`default_network_conf`] is libvirt's).
pub fn configured_backend(flag: Option<&str>, conf: &Path) -> Result<Option<Backend>> {
    if let Some(b) = flag {
        return parse_backend(b).map(Some);
    }
    backend::read_network_conf(conf).map_err(cli_error)
}

/// libvirt's `network.conf`: /etc/libvirt/network.conf.
pub fn default_network_conf() -> PathBuf {
    backend::default_network_conf()
}

fn read_status(path: &Path) -> Result<(String, NetworkStatus, Option<StatusIdentity>)> {
    let text = fs::read_to_string(path)
        .map_err(|e| StoreError::io(format!("cannot read {}", path.display()), e))?;
    let (status, identity) = NetworkStatus::from_xml_stamped(&text, &path.display().to_string())
        .map_err(|e| StoreError::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok((text, status, identity))
}

/// A running network: its status file's path, text and content, and where it runs.
struct Running {
    path: PathBuf,
    text: String,
    status: NetworkStatus,
    /// The identity the file was stamped with; `None` for libvirt's files.
    identity: Option<StatusIdentity>,
    /// The namespace its commands run in: the recorded one, else `--netns`, else our own.
    netns: Option<String>,
}

impl Running {
    /// Why the status no longer describes live rules, if it does not (never for a file without
    /// an identity: nothing tells; libvirt's live under /run, which a reboot clears).
    fn stale_reason(&self) -> Option<String> {
        let id = self.identity.as_ref()?;
        staleness(&id.boot_id, self.netns.as_deref(), &id.netns_id)
    }

    /// Refuse a stale network: nothing of its plan may run.
    fn check_live(&self, name: &str) -> Result<()> {
        match self.stale_reason() {
            Some(reason) => Err(stale_error(&self.path, name, &reason)),
            None => Ok(()),
        }
    }
}

fn stale_error(path: &Path, name: &str, reason: &str) -> StoreError {
    StoreError::State {
        path: path.to_path_buf(),
        message: format!(
            "network '{name}' is stale ({reason}); its rules went with the old boot or namespace \
             and its handles may name someone else's rules now, so nothing was run. Use \
             `virtfw network stop --forget {name}` to drop it"
        ),
    }
}

/// Whether two namespace arguments name the same namespace file.
fn same_netns(a: &str, b: &str) -> bool {
    virtfw::executor::netns_path(a) == virtfw::executor::netns_path(b)
}

/// Where the commands of a network run: the namespace its status recorded (virtfw's files), or
/// `--netns` for a file without an identity (libvirt's: it says nothing, so the caller decides).
/// `Err` says why a `--netns` given contradicts the record: virtfw does not guess which one
/// was meant.
fn resolve_netns(
    ctx: &Store,
    name: &str,
    status: &NetworkStatus,
    identity: Option<&StatusIdentity>,
) -> Result<Option<String>, String> {
    let recorded = match (&status.netns, identity) {
        (Some(ns), _) => Some(ns.as_str()),
        // Stamped in virtfw's own namespace.
        (None, Some(_)) => None,
        // libvirt's file: whatever the caller says.
        (None, None) => return Ok(ctx.netns().clone()),
    };
    match (&ctx.netns(), recorded) {
        (Some(asked), Some(rec)) if !same_netns(asked, rec) => Err(format!(
            "network '{name}' runs in namespace '{rec}', not in --netns '{asked}'"
        )),
        (Some(asked), None) => Err(format!(
            "network '{name}' runs in virtfw's own namespace, not in --netns '{asked}' (run without --netns)"
        )),
        _ => Ok(recorded.map(str::to_string)),
    }
}

/// The status file of the running network `name`; none is a state problem.
fn status_path(state: &StateDir, name: &str) -> Result<PathBuf> {
    state::check_name(name)?;
    let path = state.network_status_path(name);
    if !path.exists() {
        return Err(StoreError::State {
            path,
            message: format!("no running network named '{name}'"),
        });
    }
    Ok(path)
}

fn load(ctx: &Store, state: &StateDir, name: &str) -> Result<Running> {
    let path = status_path(state, name)?;
    let (text, status, identity) = read_status(&path)?;
    let netns = resolve_netns(ctx, name, &status, identity.as_ref()).map_err(StoreError::Usage)?;
    Ok(Running {
        path,
        text,
        status,
        identity,
        netns,
    })
}

/// A read-only executor for checking a network's rules, in its namespace.
fn executor(netns: Option<&str>, timeout: Duration) -> Result<ProcessExecutor> {
    executor_unbounded(netns).map(|e| e.with_timeout(timeout))
}

fn executor_unbounded(netns: Option<&str>) -> Result<ProcessExecutor> {
    match netns {
        Some(ns) => ProcessExecutor::in_netns(ns).map_err(|e| match e {
            ExecError::Netns { netns, source } => StoreError::Netns {
                name: netns,
                source,
            },
            other => StoreError::Failed(other.to_string()),
        }),
        None => Ok(ProcessExecutor::new()),
    }
}

/// Read a libvirt network definition (`<network>`); an error names the file.
pub fn read_network_def(file: &Path) -> Result<NetworkDef> {
    let text = fs::read_to_string(file).map_err(|source| StoreError::ReadInput {
        path: file.display().to_string(),
        source,
    })?;
    NetworkDef::from_xml(&text, &file.display().to_string()).map_err(cli_error)
}

/// Store the status of a journalled operation: first in the journal (the commit point, from
/// which `recover` completes the operation), then as the status file; then the journal goes.
fn store_status(
    op: Operation,
    path: &Path,
    status: &NetworkStatus,
    identity: &StatusIdentity,
) -> Result<()> {
    let xml = status.to_xml_stamped(identity);
    op.commit(xml.as_bytes())?;
    state::write_atomic(path, xml.as_bytes())?;
    op.finish()
}

/// `network start`: journalled like `apply` (docs/cli.md, "Network operations").
pub(crate) fn start(
    ctx: &Store,
    def: NetworkDef,
    configured: Option<Backend>,
) -> Result<NetworkStartReport> {
    // Everything about the input is checked before the lock is even taken.
    state::check_name(&def.name)?;
    let backend = backend::select(configured).map_err(cli_error)?;
    let tx = if def.forward.has_rules() {
        Some(lifecycle::network_firewall(&def, backend).map_err(cli_error)?)
    } else {
        None
    };
    if let Some(ns) = &ctx.netns() {
        open_netns(ns)?;
    }
    let (state, lock) = ctx.lock(LockKind::Exclusive)?;
    let path = state.network_status_path(&def.name);
    if path.exists() {
        // A stale one is refused too (its name is taken until it is forgotten), saying so.
        let stale = read_status(&path)
            .ok()
            .and_then(|(text, status, identity)| {
                let netns = resolve_netns(ctx, &def.name, &status, identity.as_ref()).ok()?;
                Running {
                    path: path.clone(),
                    text,
                    status,
                    identity,
                    netns,
                }
                .stale_reason()
            });
        return Err(match stale {
            Some(reason) => stale_error(&path, &def.name, &reason),
            None => StoreError::State {
                path,
                message: format!("network '{}' is already running; stop it first", def.name),
            },
        });
    }
    let header = network_journal::header(
        OpKind::NetworkStart,
        &def.name,
        backend.as_str(),
        ctx.netns().as_deref(),
        tx.as_ref().map(Firewall::to_xml).unwrap_or_default(),
        def.xml.clone(),
    )?;
    let op = Operation::begin(
        &state,
        &header,
        ctx.netns().as_deref(),
        ctx.children(&lock),
        ctx.cancel(),
    )?;
    let name = def.name.clone();
    let phases = Phases::new(&op).undo_steps(|step| step == Step::DeleteBridge);
    let started = lifecycle::start_in_steps(
        def,
        backend,
        op.exec(),
        op.options(ctx.per_command()),
        &|s| phases.step(s),
    );
    phases.check()?;
    // Asked to stop: a command was refused, or every one had run (the status is not stored
    // yet: the start is undone all the same), as `apply`.
    let interrupted = op
        .exec()
        .interrupted()
        .or_else(|| started.as_ref().ok().and_then(|_| op.exec().cancelled()));
    // All or nothing, as `apply`: also what libvirt's rollback leaves (earlier groups), and
    // the bridge, by the computation `recover` would make.
    let undo = |op: Operation| {
        network_journal::undo_start(&op, tx.as_ref(), "undo")?;
        op.finish()
    };
    let mut status = match (started, interrupted) {
        (Ok(status), None) => status,
        (Err(e), None) => {
            undo(op)?;
            return Err(cli_error(e));
        }
        (_, Some(signal)) => {
            undo(op)?;
            return Err(StoreError::Interrupted {
                signal,
                operation: format!("network start of {name}"),
                outcome: crate::store::UNDONE,
            });
        }
    };
    status.netns = ctx.netns().clone();
    store_status(op, &path, &status, &network_journal::identity(&header))?;
    Ok(NetworkStartReport {
        network: name,
        started: true,
        backend: backend.as_str().to_string(),
        rules: status.removal.as_ref().map_or(0, |r| r.command_count()),
        bridge: status.def.bridge,
        created_bridge: status.created_bridge,
        status_file: path,
    })
}

/// `network stop`: journalled like `remove`.
pub(crate) fn stop(ctx: &Store, name: &str) -> Result<NetworkStopReport> {
    let (state, lock) = ctx.lock(LockKind::Exclusive)?;
    let running = load(ctx, &state, name)?;
    running.check_live(name)?;
    let Running {
        path,
        text,
        status,
        netns,
        ..
    } = running;
    if let Some(ns) = &netns {
        open_netns(ns)?;
    }
    let header = network_journal::header(
        OpKind::NetworkStop,
        name,
        status.backend().as_str(),
        netns.as_deref(),
        String::new(),
        text,
    )?;
    let op = Operation::begin(
        &state,
        &header,
        netns.as_deref(),
        ctx.children(&lock),
        ctx.cancel(),
    )?;
    // libvirt deletes the status first: a stop that fails half way must not be retried with
    // a plan whose handles may since have been reused. (A killed stop is finished by
    // `recover` from the journal, which holds the status.)
    state::remove_durably(&path)?;
    // So a stop is not stopped by a signal: with its status gone it could not be run again,
    // and what it had not deleted would stay behind. It is the undo of a start.
    op.exec().undoing(true);
    let phases = Phases::new(&op).undo_steps(|_| true);
    let stopped =
        lifecycle::stop_in_steps(&status, op.exec(), op.options(ctx.per_command()), &|s| {
            phases.step(s)
        });
    phases.check()?;
    let (missing, failed) = op.exec().ignored();
    op.finish()?;
    stopped.map_err(stop_error)?;
    Ok(NetworkStopReport {
        network: name.to_string(),
        stopped: true,
        backend: status.backend().as_str().to_string(),
        deleted_bridge: status.created_bridge,
        missing,
        failed,
    })
}

/// `network stop --forget NAME`: drop the status file, run nothing (like `remove --forget`).
/// The file is not even parsed, so a corrupt one can be dropped too.
pub(crate) fn forget(ctx: &Store, name: &str) -> Result<NetworkForgetReport> {
    let (state, _lock) = ctx.lock(LockKind::Exclusive)?;
    let path = status_path(&state, name)?;
    state::remove_durably(&path)?;
    Ok(NetworkForgetReport {
        network: name.to_string(),
        forgotten: true,
    })
}

fn running(state: &StateDir) -> Result<Vec<String>> {
    let mut names: Vec<String> = state::dir_entries(&state.networks_dir())?
        .into_iter()
        .filter_map(|(file, _)| {
            let name = file.strip_suffix(".xml")?;
            state::check_name(name).is_ok().then(|| name.to_string())
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Reload one network, journalled: remove with the old plan, add again, store the status.
fn reload_one(
    ctx: &Store,
    state: &StateDir,
    lock: &StateLock,
    name: &str,
    running: Running,
    configured: Option<Backend>,
) -> Result<(Backend, Option<NetworkError>)> {
    let Running {
        path,
        text,
        mut status,
        netns,
        ..
    } = running;
    let backend = match configured {
        Some(b) => backend::select(Some(b)).map_err(cli_error)?,
        None => status.backend(),
    };
    // A libvirt file reloaded in --netns is stored as ours, recording where it runs.
    status.netns = netns.clone();
    if let Some(ns) = &netns {
        open_netns(ns)?;
    }
    // Built here too (the lifecycle builds it again) so the journal knows what the add makes;
    // a late definition error is reported by the lifecycle after the removal, as before.
    let tx = status
        .def
        .forward
        .has_rules()
        .then(|| lifecycle::network_firewall(&status.def, backend).ok())
        .flatten();
    let header = network_journal::header(
        OpKind::NetworkReload,
        name,
        backend.as_str(),
        netns.as_deref(),
        tx.as_ref().map(Firewall::to_xml).unwrap_or_default(),
        text,
    )?;
    let op = Operation::begin(
        state,
        &header,
        netns.as_deref(),
        ctx.children(lock),
        ctx.cancel(),
    )?;
    let phases = Phases::new(&op);
    let reloaded = lifecycle::reload_in_steps(
        status,
        backend,
        op.exec(),
        op.options(ctx.per_command()),
        &|s| phases.step(s),
    );
    phases.check()?;
    let reloaded = match reloaded {
        Ok(r) => r,
        Err(e) => {
            // Refused before anything ran (e.g. a missing program, a signal): the status stays.
            let interrupted = op.exec().interrupted();
            op.finish()?;
            return Err(match interrupted {
                Some(signal) => reload_interrupted(name, signal),
                None => cli_error(e),
            });
        }
    };
    let interrupted = op.exec().interrupted();
    if reloaded.error.is_some() {
        if let Some(tx) = &tx {
            op.undo_apply(tx, "rules", "undo")?;
        }
    }
    // Stored either way: without a new plan a later stop uses the legacy deletions.
    store_status(
        op,
        &path,
        &reloaded.status,
        &network_journal::identity(&header),
    )?;
    if let Some(signal) = interrupted {
        return Err(reload_interrupted(name, signal));
    }
    Ok((backend, reloaded.error))
}

/// An interrupted reload: undone as a failed one.
fn reload_interrupted(name: &str, signal: i32) -> StoreError {
    StoreError::Interrupted {
        signal,
        operation: format!("network reload of {name}"),
        outcome: "stopped between commands, as a failed reload: the rules it added again were \
                  undone and its status stored",
    }
}

/// `network reload [NAME…]`: each network is its own journalled operation.
pub(crate) fn reload(
    ctx: &Store,
    names: &[String],
    configured: Option<Backend>,
) -> Result<NetworkReloadReport> {
    let (state, lock) = ctx.lock(LockKind::Exclusive)?;
    // Every network is loaded and checked before any is touched: a stale one or one in
    // another namespace refuses the whole reload.
    let loaded: Vec<(String, Running)> = if names.is_empty() {
        // All of them; with --netns, those that run in that namespace.
        let mut all = Vec::new();
        for name in running(&state)? {
            match load(ctx, &state, &name) {
                Err(StoreError::Usage(_)) if ctx.netns().is_some() => continue,
                r => all.push((name, r?)),
            }
        }
        all
    } else {
        names
            .iter()
            .map(|n| load(ctx, &state, n).map(|r| (n.clone(), r)))
            .collect::<Result<_>>()?
    };
    for (name, running) in &loaded {
        running.check_live(name)?;
    }
    let mut report = NetworkReloadReport {
        reloaded: Vec::new(),
        failed: None,
    };
    for (name, running) in loaded {
        let (backend, error) = reload_one(ctx, &state, &lock, &name, running, configured)?;
        report.reloaded.push(NetworkReloaded {
            network: name,
            backend: backend.as_str().to_string(),
            error: error.as_ref().map(|e| e.to_string()),
        });
        if let Some(e) = error {
            report.failed.get_or_insert(cli_error(e));
        }
    }
    Ok(report)
}

/// What a look at a network's rules found: their check, or why they were not looked at.
enum Looked {
    Checked(Result<lifecycle::RuleCheck, String>),
    /// The status is stale (the reason): its handles may name someone else's rules.
    Stale(String),
}

impl Looked {
    fn all_present(&self) -> bool {
        matches!(self, Looked::Checked(Ok(c)) if c.all_present())
    }
}

fn look(running: &Running, timeout: Duration) -> Looked {
    match running.stale_reason() {
        Some(reason) => Looked::Stale(reason),
        None => Looked::Checked(check_one(
            &running.status,
            running.netns.as_deref(),
            timeout,
        )),
    }
}

fn describe(running: &Running, looked: &Looked) -> NetworkInfo {
    let status = &running.status;
    let (present, total, missing, stale, health) = match looked {
        Looked::Checked(Ok(c)) => (
            Some(c.total - c.missing.len()),
            Some(c.total),
            c.missing.clone(),
            None,
            if c.all_present() {
                NetworkHealth::AllPresent
            } else {
                NetworkHealth::Drift
            },
        ),
        Looked::Checked(Err(e)) => (
            None,
            None,
            vec![e.clone()],
            None,
            NetworkHealth::Unchecked(e.clone()),
        ),
        Looked::Stale(reason) => (
            None,
            None,
            Vec::new(),
            Some(reason.clone()),
            NetworkHealth::Stale,
        ),
    };
    NetworkInfo {
        network: status.def.name.clone(),
        bridge: status.def.bridge.clone(),
        forward: status.def.forward.as_str().to_string(),
        backend: status.backend().as_str().to_string(),
        stored_plan: status.removal.is_some(),
        netns: running.netns.clone(),
        created_bridge: status.created_bridge,
        stamped: running.identity.is_some(),
        stale,
        rules_present: present,
        rules_total: total,
        missing,
        all_present: looked.all_present(),
        health,
    }
}

fn check_one(
    status: &NetworkStatus,
    netns: Option<&str>,
    timeout: Duration,
) -> Result<lifecycle::RuleCheck, String> {
    let exec = executor(netns, timeout).map_err(|e| e.to_string())?;
    lifecycle::check(status, &exec).map_err(|e| e.to_string())
}

pub(crate) fn list(ctx: &Store) -> Result<NetworkListReport> {
    let (state, _lock) = ctx.lock(LockKind::Shared)?;
    let mut networks = Vec::new();
    for name in running(&state)? {
        // With --netns: the networks that run there (libvirt's files are taken to).
        let running = match load(ctx, &state, &name) {
            Err(StoreError::Usage(_)) if ctx.netns().is_some() => continue,
            r => r?,
        };
        networks.push(describe(&running, &look(&running, ctx.child_timeout())));
    }
    Ok(NetworkListReport { networks })
}

pub(crate) fn status(ctx: &Store, name: &str) -> Result<NetworkStatusReport> {
    let (state, _lock) = ctx.lock(LockKind::Shared)?;
    let running = load(ctx, &state, name)?;
    Ok(NetworkStatusReport(describe(
        &running,
        &look(&running, ctx.child_timeout()),
    )))
}

/// The commands libvirt would run for the network `def` on `backend` (with the one-time
/// global chain setup a fresh host runs first, if `with_global`), in libvirt's transcript
/// format; nothing runs.
pub fn network_plan(
    def: &NetworkDef,
    backend: Backend,
    with_global: bool,
) -> Result<NetworkPlanReport> {
    let transcript = lifecycle::plan(def, backend, with_global).map_err(cli_error)?;
    Ok(NetworkPlanReport {
        network: def.name.clone(),
        backend: backend.as_str().to_string(),
        transcript,
    })
}

/// The network operations, journalled like [`Store::apply`] and [`Store::remove`].
impl Store {
    /// Start the libvirt network `def`: create its bridge if missing, apply its firewall
    /// (with `configured`, else nftables when `nft` is installed, else iptables), store its
    /// status. Journalled like [`Store::apply`], and all or nothing like it.
    pub fn network_start(
        &self,
        def: NetworkDef,
        configured: Option<Backend>,
    ) -> Result<NetworkStartReport> {
        start(self, def, configured)
    }

    /// Stop the running network `name`: remove its rules with the stored plan (and the bridge,
    /// if the store made it). Journalled like [`Store::remove`].
    pub fn network_stop(&self, name: &str) -> Result<NetworkStopReport> {
        stop(self, name)
    }

    /// Drop the status of the network `name` without running anything (for a stale network
    /// whose rules went with an old boot or namespace). The file is not even parsed.
    pub fn network_forget(&self, name: &str) -> Result<NetworkForgetReport> {
        forget(self, name)
    }

    /// Reload the networks `names` (all running ones when empty): remove with the stored plan
    /// and add the rules again, with `configured` or the backend each runs with. Each network
    /// is its own journalled operation; all are checked before any is touched.
    pub fn network_reload(
        &self,
        names: &[String],
        configured: Option<Backend>,
    ) -> Result<NetworkReloadReport> {
        reload(self, names, configured)
    }

    /// The running networks, and whether all their rules are present.
    pub fn network_list(&self) -> Result<NetworkListReport> {
        list(self)
    }

    /// One running network, and whether all its rules are present
    /// ([`NetworkInfo::health`]).
    pub fn network_status(&self, name: &str) -> Result<NetworkStatusReport> {
        status(self, name)
    }
}
