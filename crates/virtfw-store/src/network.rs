//! `virtfw network …`: libvirt virtual networks (docs/networks.md).
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
//! (written by libvirt) is used only in the namespace `--netns` names, or virtfw's own.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;
use virtfw::{Backend, ExecError, Firewall, ProcessExecutor};
use virtfw_network::status::StatusIdentity;
use virtfw_network::{backend, lifecycle, NetworkDef, NetworkError, NetworkStatus};

use crate::commands::Ctx;
use crate::error::{CliError, CliResult, EXIT_DRIFT, EXIT_OK, EXIT_STATE};
use crate::exec::open_netns;
use crate::journal::OpKind;
use crate::lock::{LockKind, StateLock};
use crate::network_journal::{self, Phases};
use crate::operation::Operation;
use crate::plan::staleness;
use crate::state::{self, StateDir};

/// Arguments of `virtfw network`.
#[derive(Debug, clap::Args)]
pub(crate) struct NetworkArgs {
    #[command(subcommand)]
    pub command: NetworkCommand,
}

/// The `network` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum NetworkCommand {
    /// Create the bridge if missing, apply the network's firewall, store its status.
    Start {
        /// libvirt network definition (`<network>`).
        file: PathBuf,
        /// Firewall backend (default: firewall_backend of /etc/libvirt/network.conf, else
        /// nftables when `nft` is installed, else iptables).
        #[arg(long, value_parser = ["nftables", "iptables"])]
        backend: Option<String>,
    },
    /// Remove the network's rules with the stored plan (and the bridge, if virtfw made it).
    Stop {
        /// Network name.
        name: String,
        /// Drop the status file without running anything (for a stale network whose rules
        /// went with an old boot or namespace).
        #[arg(long)]
        forget: bool,
    },
    /// Remove with the stored plan and add the rules again (all running networks by default).
    Reload {
        /// Network names.
        names: Vec<String>,
        /// Re-create the rules with this backend (default: the configured one, else the
        /// backend the network runs with).
        #[arg(long, value_parser = ["nftables", "iptables"])]
        backend: Option<String>,
    },
    /// Running networks: name, bridge, backend, whether all their rules are present.
    List,
    /// One network, and whether all its rules are present (exit 3 when some are missing).
    Status {
        /// Network name.
        name: String,
    },
    /// The commands libvirt would run for this definition, in libvirt's transcript format.
    Plan {
        /// libvirt network definition (`<network>`).
        file: PathBuf,
        #[arg(long, value_parser = ["nftables", "iptables"])]
        backend: String,
        /// Include the one-time global chain setup a fresh host would run first.
        #[arg(long)]
        with_global: bool,
    },
}

/// Run `virtfw network …`.
pub(crate) fn run(ctx: &Ctx, args: &NetworkArgs) -> CliResult<i32> {
    match &args.command {
        NetworkCommand::Start { file, backend } => start(ctx, file, backend.as_deref()),
        NetworkCommand::Stop { name, forget } => stop(ctx, name, *forget),
        NetworkCommand::Reload { names, backend } => reload(ctx, names, backend.as_deref()),
        NetworkCommand::List => list(ctx),
        NetworkCommand::Status { name } => status(ctx, name),
        NetworkCommand::Plan {
            file,
            backend,
            with_global,
        } => plan(ctx, file, backend, *with_global),
    }
}

/// Sort a network error into the CLI's exit codes: bad definitions are input errors (2), a
/// refused command is 1, a missing backend program 2.
fn cli_error(err: NetworkError) -> CliError {
    match err {
        NetworkError::Firewall(e) => CliError::from_apply(e),
        e => cli_error_common(e),
    }
}

/// The same for `network stop`: a removal is never rolled back, so its failure must not say so
/// (the status, and with it the removal plan, is kept for another try).
fn stop_error(err: NetworkError) -> CliError {
    match err {
        NetworkError::Firewall(e) => CliError::from_remove(e),
        e => cli_error_common(e),
    }
}

fn cli_error_common(err: NetworkError) -> CliError {
    match err {
        NetworkError::Backend(m) => CliError::Usage(m),
        e if e.is_input_error() => CliError::Usage(e.to_string()),
        e => CliError::Failed(e.to_string()),
    }
}

fn parse_backend(s: &str) -> CliResult<Backend> {
    s.parse::<Backend>()
        .map_err(|e| CliError::Usage(e.to_string()))
}

/// The configured backend: `--backend`, else libvirt's `network.conf` setting (file named by
/// `VIRTFW_NETWORK_CONF`, default /etc/libvirt/network.conf), else none.
fn configured_backend(flag: Option<&str>) -> CliResult<Option<Backend>> {
    if let Some(b) = flag {
        return parse_backend(b).map(Some);
    }
    let conf = std::env::var_os("VIRTFW_NETWORK_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(backend::default_network_conf);
    backend::read_network_conf(&conf).map_err(cli_error)
}

fn read_status(path: &Path) -> CliResult<(String, NetworkStatus, Option<StatusIdentity>)> {
    let text = fs::read_to_string(path)
        .map_err(|e| CliError::io(format!("cannot read {}", path.display()), e))?;
    let (status, identity) = NetworkStatus::from_xml_stamped(&text, &path.display().to_string())
        .map_err(|e| CliError::State {
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
    fn check_live(&self, name: &str) -> CliResult<()> {
        match self.stale_reason() {
            Some(reason) => Err(stale_error(&self.path, name, &reason)),
            None => Ok(()),
        }
    }
}

fn stale_error(path: &Path, name: &str, reason: &str) -> CliError {
    CliError::State {
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
    ctx: &Ctx,
    name: &str,
    status: &NetworkStatus,
    identity: Option<&StatusIdentity>,
) -> Result<Option<String>, String> {
    let recorded = match (&status.netns, identity) {
        (Some(ns), _) => Some(ns.as_str()),
        // Stamped in virtfw's own namespace.
        (None, Some(_)) => None,
        // libvirt's file: whatever the caller says.
        (None, None) => return Ok(ctx.netns.clone()),
    };
    match (&ctx.netns, recorded) {
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
fn status_path(state: &StateDir, name: &str) -> CliResult<PathBuf> {
    state::check_name(name)?;
    let path = state.network_status_path(name);
    if !path.exists() {
        return Err(CliError::State {
            path,
            message: format!("no running network named '{name}'"),
        });
    }
    Ok(path)
}

fn load(ctx: &Ctx, state: &StateDir, name: &str) -> CliResult<Running> {
    let path = status_path(state, name)?;
    let (text, status, identity) = read_status(&path)?;
    let netns = resolve_netns(ctx, name, &status, identity.as_ref()).map_err(CliError::Usage)?;
    Ok(Running {
        path,
        text,
        status,
        identity,
        netns,
    })
}

/// A read-only executor for checking a network's rules, in its namespace.
fn executor(netns: Option<&str>) -> CliResult<ProcessExecutor> {
    executor_unbounded(netns).map(|e| e.with_timeout(crate::exec::child_timeout()))
}

fn executor_unbounded(netns: Option<&str>) -> CliResult<ProcessExecutor> {
    match netns {
        Some(ns) => ProcessExecutor::in_netns(ns).map_err(|e| match e {
            ExecError::Netns { netns, source } => CliError::Netns {
                name: netns,
                source,
            },
            other => CliError::Failed(other.to_string()),
        }),
        None => Ok(ProcessExecutor::new()),
    }
}

fn read_def(file: &Path) -> CliResult<NetworkDef> {
    let text = fs::read_to_string(file).map_err(|source| CliError::ReadInput {
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
) -> CliResult<()> {
    let xml = status.to_xml_stamped(identity);
    op.commit(xml.as_bytes())?;
    state::write_atomic(path, xml.as_bytes())?;
    op.finish()
}

/// `network start`: journalled like `apply` (docs/cli.md, "Network operations").
fn start(ctx: &Ctx, file: &Path, backend_flag: Option<&str>) -> CliResult<i32> {
    // Everything about the input is checked before the lock is even taken.
    let def = read_def(file)?;
    state::check_name(&def.name)?;
    let backend = backend::select(configured_backend(backend_flag)?).map_err(cli_error)?;
    let tx = if def.forward.has_rules() {
        Some(lifecycle::network_firewall(&def, backend).map_err(cli_error)?)
    } else {
        None
    };
    if let Some(ns) = &ctx.netns {
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
            None => CliError::State {
                path,
                message: format!("network '{}' is already running; stop it first", def.name),
            },
        });
    }
    let header = network_journal::header(
        OpKind::NetworkStart,
        &def.name,
        backend.as_str(),
        ctx.netns.as_deref(),
        tx.as_ref().map(Firewall::to_xml).unwrap_or_default(),
        def.xml.clone(),
    )?;
    let op = Operation::begin(&state, &header, ctx.netns.as_deref(), lock.raw_fd())?;
    let name = def.name.clone();
    let phases = Phases::new(&op);
    let started =
        lifecycle::start_in_steps(def, backend, op.exec(), op.options(ctx.per_command), &|s| {
            phases.step(s)
        });
    phases.check()?;
    let mut status = match started {
        Ok(status) => status,
        Err(e) => {
            // All or nothing, as `apply`: also what libvirt's rollback leaves (earlier groups),
            // and the bridge, by the computation `recover` would make.
            network_journal::undo_start(&op, tx.as_ref(), "undo")?;
            op.finish()?;
            return Err(cli_error(e));
        }
    };
    status.netns = ctx.netns.clone();
    store_status(op, &path, &status, &network_journal::identity(&header))?;
    let rules = status.removal.as_ref().map_or(0, |r| r.command_count());
    ctx.emit(
        json!({"network": name, "started": true, "backend": backend.as_str(),
               "bridge": status.def.bridge, "created_bridge": status.created_bridge,
               "rules": rules, "status_file": path}),
        &format!(
            "network {name} started ({backend}, bridge {}{}, {rules} rules)",
            status.def.bridge,
            if status.created_bridge {
                " created"
            } else {
                ""
            }
        ),
    );
    Ok(EXIT_OK)
}

/// `network stop`: journalled like `remove`.
fn stop(ctx: &Ctx, name: &str, forget: bool) -> CliResult<i32> {
    let (state, lock) = ctx.lock(LockKind::Exclusive)?;
    if forget {
        return forget_network(ctx, &state, name);
    }
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
    let op = Operation::begin(&state, &header, netns.as_deref(), lock.raw_fd())?;
    // libvirt deletes the status first: a stop that fails half way must not be retried with
    // a plan whose handles may since have been reused. (A killed stop is finished by
    // `recover` from the journal, which holds the status.)
    state::remove_durably(&path)?;
    let phases = Phases::new(&op);
    let stopped = lifecycle::stop_in_steps(&status, op.exec(), op.options(ctx.per_command), &|s| {
        phases.step(s)
    });
    phases.check()?;
    let (missing, failed) = op.exec().ignored();
    op.finish()?;
    stopped.map_err(stop_error)?;
    ctx.emit(
        json!({"network": name, "stopped": true, "backend": status.backend().as_str(),
               "deleted_bridge": status.created_bridge, "missing": missing,
               "failed": failed}),
        &format!("network {name} stopped ({missing} rule(s) were already gone)"),
    );
    Ok(EXIT_OK)
}

/// `network stop --forget NAME`: drop the status file, run nothing (like `remove --forget`).
/// The file is not even parsed, so a corrupt one can be dropped too.
fn forget_network(ctx: &Ctx, state: &StateDir, name: &str) -> CliResult<i32> {
    let path = status_path(state, name)?;
    state::remove_durably(&path)?;
    ctx.emit(
        json!({"network": name, "forgotten": true}),
        &format!("forgot network {name} (nothing was run)"),
    );
    Ok(EXIT_OK)
}

fn running(state: &StateDir) -> CliResult<Vec<String>> {
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
    ctx: &Ctx,
    state: &StateDir,
    lock: &StateLock,
    name: &str,
    running: Running,
    configured: Option<Backend>,
) -> CliResult<(Backend, Option<NetworkError>)> {
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
    let op = Operation::begin(state, &header, netns.as_deref(), lock.raw_fd())?;
    let phases = Phases::new(&op);
    let reloaded = lifecycle::reload_in_steps(
        status,
        backend,
        op.exec(),
        op.options(ctx.per_command),
        &|s| phases.step(s),
    );
    phases.check()?;
    let reloaded = match reloaded {
        Ok(r) => r,
        Err(e) => {
            // Refused before anything ran (e.g. a missing program): the status stays.
            op.finish()?;
            return Err(cli_error(e));
        }
    };
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
    Ok((backend, reloaded.error))
}

/// `network reload [NAME…]`: each network is its own journalled operation.
fn reload(ctx: &Ctx, names: &[String], backend_flag: Option<&str>) -> CliResult<i32> {
    let configured = configured_backend(backend_flag)?;
    let (state, lock) = ctx.lock(LockKind::Exclusive)?;
    // Every network is loaded and checked before any is touched: a stale one or one in
    // another namespace refuses the whole reload.
    let loaded: Vec<(String, Running)> = if names.is_empty() {
        // All of them; with --netns, those that run in that namespace.
        let mut all = Vec::new();
        for name in running(&state)? {
            match load(ctx, &state, &name) {
                Err(CliError::Usage(_)) if ctx.netns.is_some() => continue,
                r => all.push((name, r?)),
            }
        }
        all
    } else {
        names
            .iter()
            .map(|n| load(ctx, &state, n).map(|r| (n.clone(), r)))
            .collect::<CliResult<_>>()?
    };
    for (name, running) in &loaded {
        running.check_live(name)?;
    }
    let mut results = Vec::new();
    let mut failed = None;
    for (name, running) in loaded {
        let name = &name;
        let (backend, error) = reload_one(ctx, &state, &lock, name, running, configured)?;
        results.push(json!({"network": name, "backend": backend.as_str(),
                            "error": error.as_ref().map(|e| e.to_string())}));
        if let Some(e) = error {
            failed.get_or_insert(cli_error(e));
        }
    }
    let text: String = results
        .iter()
        .map(|r| {
            format!(
                "network {} reloaded ({}){}\n",
                r["network"].as_str().unwrap_or(""),
                r["backend"].as_str().unwrap_or(""),
                r["error"]
                    .as_str()
                    .map(|e| format!(": FAILED: {e}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    ctx.emit(json!({"reloaded": results}), &text);
    match failed {
        Some(e) => Err(e),
        None => Ok(EXIT_OK),
    }
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

fn look(running: &Running) -> Looked {
    match running.stale_reason() {
        Some(reason) => Looked::Stale(reason),
        None => Looked::Checked(check_one(&running.status, running.netns.as_deref())),
    }
}

fn describe(running: &Running, looked: &Looked) -> serde_json::Value {
    let status = &running.status;
    let (present, total, missing, stale) = match looked {
        Looked::Checked(Ok(c)) => (
            json!(c.total - c.missing.len()),
            json!(c.total),
            json!(c.missing),
            json!(null),
        ),
        Looked::Checked(Err(e)) => (json!(null), json!(null), json!([e]), json!(null)),
        Looked::Stale(reason) => (json!(null), json!(null), json!([]), json!(reason)),
    };
    json!({
        "network": status.def.name,
        "bridge": status.def.bridge,
        "forward": status.def.forward.as_str(),
        "backend": status.backend().as_str(),
        "stored_plan": status.removal.is_some(),
        "netns": running.netns,
        "created_bridge": status.created_bridge,
        "stamped": running.identity.is_some(),
        "stale": stale,
        "rules_present": present,
        "rules_total": total,
        "missing": missing,
        "all_present": looked.all_present(),
    })
}

fn check_one(status: &NetworkStatus, netns: Option<&str>) -> Result<lifecycle::RuleCheck, String> {
    let exec = executor(netns).map_err(|e| e.to_string())?;
    lifecycle::check(status, &exec).map_err(|e| e.to_string())
}

fn line(v: &serde_json::Value) -> String {
    format!(
        "{:<16} {:<10} {:<8} {:<9} {}",
        v["network"].as_str().unwrap_or(""),
        v["bridge"].as_str().unwrap_or(""),
        v["forward"].as_str().unwrap_or(""),
        v["backend"].as_str().unwrap_or(""),
        match (v["rules_present"].as_u64(), v["rules_total"].as_u64()) {
            _ if v["stale"].is_string() => format!(
                "STALE ({}): not checked; `virtfw network stop --forget {}` drops it",
                v["stale"].as_str().unwrap_or(""),
                v["network"].as_str().unwrap_or("")
            ),
            (Some(p), Some(t)) if p == t => format!("all {t} rules present"),
            (Some(p), Some(t)) => format!("{p}/{t} rules present (DRIFT)"),
            _ => format!("cannot check: {}", v["missing"][0].as_str().unwrap_or("")),
        }
    )
}

fn list(ctx: &Ctx) -> CliResult<i32> {
    let (state, _lock) = ctx.lock(LockKind::Shared)?;
    let mut rows = Vec::new();
    for name in running(&state)? {
        // With --netns: the networks that run there (libvirt's files are taken to).
        let running = match load(ctx, &state, &name) {
            Err(CliError::Usage(_)) if ctx.netns.is_some() => continue,
            r => r?,
        };
        rows.push(describe(&running, &look(&running)));
    }
    let mut text = format!(
        "{:<16} {:<10} {:<8} {:<9} {}\n",
        "NAME", "BRIDGE", "FORWARD", "BACKEND", "RULES"
    );
    for r in &rows {
        text.push_str(&line(r));
        text.push('\n');
    }
    ctx.emit(json!({"networks": rows}), &text);
    Ok(EXIT_OK)
}

fn status(ctx: &Ctx, name: &str) -> CliResult<i32> {
    let (state, _lock) = ctx.lock(LockKind::Shared)?;
    let running = load(ctx, &state, name)?;
    let looked = look(&running);
    let v = describe(&running, &looked);
    let mut text = line(&v);
    if let Looked::Checked(Ok(c)) = &looked {
        for m in &c.missing {
            text.push_str(&format!("\n  missing: {m}"));
        }
    }
    ctx.emit(v, &text);
    match looked {
        // A state problem: the status describes no live rules.
        Looked::Stale(_) => Ok(EXIT_STATE),
        Looked::Checked(Ok(c)) if c.all_present() => Ok(EXIT_OK),
        Looked::Checked(Ok(_)) => Ok(EXIT_DRIFT),
        Looked::Checked(Err(e)) => Err(CliError::Failed(e)),
    }
}

fn plan(ctx: &Ctx, file: &Path, backend: &str, with_global: bool) -> CliResult<i32> {
    let def = read_def(file)?;
    let backend = parse_backend(backend)?;
    let transcript = lifecycle::plan(&def, backend, with_global).map_err(cli_error)?;
    ctx.emit(
        json!({"network": def.name, "backend": backend.as_str(), "transcript": transcript}),
        &transcript,
    );
    Ok(EXIT_OK)
}
