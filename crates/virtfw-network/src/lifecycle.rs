//! Starting, stopping, reloading and checking a network, in the order libvirt does it.
//!
//! Everything runs through one [`Executor`], so with an executor bound to a network namespace
//! the bridge and the rules are made in that namespace. Nothing here keeps state: the caller
//! stores the returned [`NetworkStatus`] (the CLI writes it as libvirt's status file).

use std::collections::BTreeMap;

use tracing::{debug, warn};
use virtfw::executor::Invocation;
use virtfw::rollback;
use virtfw::{ApplyOptions, Backend, DryRun, Executor, Firewall, Layer};

use crate::def::NetworkDef;
use crate::error::{NetworkError, Result};
use crate::status::{NetworkStatus, REMOVAL_NAME};
use crate::{global, iptables, nftables};

/// The network's firewall for `backend`, not yet applied. Fails on values only checked when
/// rules are built (libvirt's late checks).
pub fn network_firewall(def: &NetworkDef, backend: Backend) -> Result<Firewall> {
    match backend {
        Backend::Nftables => nftables::network_firewall(def),
        Backend::Iptables => iptables::network_firewall(def),
        _ => Err(NetworkError::Backend(
            "No firewall backend is available".into(),
        )),
    }
}

fn run(exec: &dyn Executor, argv: &[&str]) -> Result<virtfw::executor::Output, String> {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    exec.run(Invocation {
        argv: &argv,
        stdin: None,
    })
    .map_err(|e| e.to_string())
}

fn ip_cmd(exec: &dyn Executor, bridge: &str, argv: &[&str]) -> Result<()> {
    let out = run(exec, argv).map_err(|message| NetworkError::Bridge {
        bridge: bridge.to_string(),
        message,
    })?;
    if out.success() {
        Ok(())
    } else {
        Err(NetworkError::Bridge {
            bridge: bridge.to_string(),
            message: format!("{} failed: {}", argv.join(" "), out.stderr.trim_end()),
        })
    }
}

/// Does a link of this name exist (in the executor's namespace)?
pub fn link_exists(exec: &dyn Executor, name: &str) -> bool {
    run(exec, &["ip", "link", "show", "dev", name]).is_ok_and(|o| o.success())
}

/// Create the bridge, give it the network's addresses and bring it up. Returns false when the
/// bridge already existed (then it is left as it is: someone else owns it).
///
/// Three `ip` processes whatever the number of addresses: `ip link show` (the CLI's crash
/// recovery relies on it: a bridge whose `ip link add` was interrupted is ours only because the
/// show found none before), `ip link add` alone (so that a failure is never ambiguous about
/// whether this start made the bridge: `ip -batch` does not always say which line failed, and
/// the journal recognises the add by its argv), then one `ip -batch -` for the addresses and
/// the link up.
fn ensure_bridge(def: &NetworkDef, exec: &dyn Executor) -> Result<bool> {
    let br = def.bridge.as_str();
    if link_exists(exec, br) {
        return Ok(false);
    }
    let added = run(exec, &["ip", "link", "add", br, "type", "bridge"]).map_err(|message| {
        NetworkError::Bridge {
            bridge: br.to_string(),
            message,
        }
    })?;
    if !added.success() {
        if added.stderr.contains("File exists") {
            return Ok(false);
        }
        return Err(NetworkError::Bridge {
            bridge: br.to_string(),
            message: format!(
                "ip link add {br} type bridge failed: {}",
                added.stderr.trim_end()
            ),
        });
    }
    let mut script = String::new();
    for ip in &def.ips {
        script.push_str(&format!("addr add {} dev {br}", ip.address));
        if ip.is_ipv6() {
            // The host owns this address by definition; waiting for duplicate address
            // detection would only delay the network.
            script.push_str(" nodad");
        }
        script.push('\n');
    }
    script.push_str(&format!("link set dev {br} up\n"));
    let argv: Vec<String> = ["ip", "-batch", "-"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let configured = exec
        .run(Invocation {
            argv: &argv,
            stdin: Some(script.as_bytes()),
        })
        .map_err(|e| e.to_string())
        .and_then(|out| {
            if out.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip -batch - failed on\n{script}: {}",
                    out.stderr.trim_end()
                ))
            }
        });
    if let Err(message) = configured {
        delete_bridge(def, exec);
        return Err(NetworkError::Bridge {
            bridge: br.to_string(),
            message,
        });
    }
    Ok(true)
}

fn delete_bridge(def: &NetworkDef, exec: &dyn Executor) {
    if let Err(e) = ip_cmd(
        exec,
        &def.bridge,
        &["ip", "link", "del", "dev", &def.bridge],
    ) {
        warn!(error = %e, "could not delete bridge");
    }
}

/// Apply `fw` and name its removal plan `fwRemoval` (absent when there is nothing to undo).
fn apply_network(
    mut fw: Firewall,
    exec: &dyn Executor,
    options: ApplyOptions<'_>,
) -> Result<Option<Firewall>> {
    fw.apply_with(exec, options)?;
    let mut removal = fw.new_from_rollback().map_err(virtfw::Error::from)?;
    if removal.is_empty() {
        return Ok(None);
    }
    removal.set_name(Some(REMOVAL_NAME));
    Ok(Some(removal))
}

/// A step of a network's lifecycle, announced just before its commands run. A caller that
/// journals the commands (the CLI, for crash recovery) needs to know which command belongs to
/// which step, because each step is undone by its own rule: the global setup never (other
/// networks share it), the bridge only if this start created it, the rules by their handles.
///
/// Off the per-command path two pairs of steps run at the same time, because they are
/// independent in the kernel (the global chains do not need the bridge; deleting a bridge does
/// not touch the firewall): at start [`Step::GlobalSetup`] with [`Step::Bridge`], at stop
/// [`Step::RemoveRules`] with [`Step::DeleteBridge`]. Both steps of a pair are announced, in
/// that order for start and in the order `DeleteBridge`, `RemoveRules` for stop, before either
/// runs; their commands then interleave under the last one announced. Each step's undo must
/// therefore recognise its own commands by what they are, not by where they are (see the
/// CLI's `network_journal`). With `per_command` every step runs alone, in libvirt's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The one-time global chains or tables.
    GlobalSetup,
    /// Creating the bridge when it is missing (its existence is checked first).
    Bridge,
    /// Applying the network's firewall (auto-rollback).
    Rules,
    /// Removing the network's rules with its stored plan (or the legacy deletions).
    RemoveRules,
    /// Deleting the bridge this network created (at stop, or after a failed start).
    DeleteBridge,
}

/// Start a network: check everything that can be checked, run the global setup, create the
/// bridge if missing, apply the network's firewall. The returned status has no `netns`; the
/// caller that chose the executor records it. On failure nothing of this network is left
/// (auto-rollback removes its rules, a bridge made here is deleted); chains of the global
/// setup stay, as they do in libvirt, since other networks share them.
pub fn start(
    def: NetworkDef,
    backend: Backend,
    exec: &dyn Executor,
    options: ApplyOptions<'_>,
) -> Result<NetworkStatus> {
    start_in_steps(def, backend, exec, options, &|_| {})
}

/// [`start`], calling `step` before each [`Step`].
pub fn start_in_steps(
    def: NetworkDef,
    backend: Backend,
    exec: &dyn Executor,
    options: ApplyOptions<'_>,
    step: &dyn Fn(Step),
) -> Result<NetworkStatus> {
    if !def.forward.has_rules() {
        step(Step::Bridge);
        let created_bridge = ensure_bridge(&def, exec)?;
        return Ok(NetworkStatus {
            def,
            removal: None,
            created_bridge,
            netns: None,
        });
    }
    // Built first: a bad value fails here, before the host is touched.
    let fw = network_firewall(&def, backend)?;
    let created_bridge = if concurrent_steps(exec, options) {
        // The global chains do not need the bridge (only the network's rules name it).
        step(Step::GlobalSetup);
        step(Step::Bridge);
        let (setup, bridge) = std::thread::scope(|scope| {
            let bridge = scope.spawn(|| ensure_bridge(&def, exec));
            let setup = global::setup(backend, exec, options);
            (
                setup,
                bridge
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p)),
            )
        });
        if let Err(e) = setup.require(&def) {
            if bridge.as_ref().is_ok_and(|&created| created) {
                step(Step::DeleteBridge);
                delete_bridge(&def, exec);
            }
            return Err(e);
        }
        bridge?
    } else {
        step(Step::GlobalSetup);
        global::setup(backend, exec, options).require(&def)?;
        step(Step::Bridge);
        ensure_bridge(&def, exec)?
    };
    step(Step::Rules);
    match apply_network(fw, exec, options) {
        Ok(removal) => Ok(NetworkStatus {
            def,
            removal,
            created_bridge,
            netns: None,
        }),
        Err(e) => {
            if created_bridge {
                step(Step::DeleteBridge);
                delete_bridge(&def, exec);
            }
            Err(e)
        }
    }
}

/// Remove the network's rules with its stored plan (or libvirt's legacy deletions), errors of
/// individual deletes ignored as in libvirt.
pub fn remove_rules(
    status: &NetworkStatus,
    exec: &dyn Executor,
    options: ApplyOptions<'_>,
) -> Result<()> {
    if !status.def.forward.has_rules() {
        return Ok(());
    }
    status.removal_plan().apply_with(exec, options)?;
    Ok(())
}

/// Stop a network: remove its rules, then delete the bridge if it was made at start.
pub fn stop(status: &NetworkStatus, exec: &dyn Executor, options: ApplyOptions<'_>) -> Result<()> {
    stop_in_steps(status, exec, options, &|_| {})
}

/// [`stop`], calling `step` before each [`Step`].
pub fn stop_in_steps(
    status: &NetworkStatus,
    exec: &dyn Executor,
    options: ApplyOptions<'_>,
    step: &dyn Fn(Step),
) -> Result<()> {
    if status.created_bridge && concurrent_steps(exec, options) {
        // Deleting the bridge (the kernel waits for RCU grace periods while unregistering it)
        // overlaps the rule removal (whose processes wait for the kernel at exit). A failed
        // removal does not keep the bridge, as in libvirt, which ignores removal errors there.
        step(Step::DeleteBridge);
        step(Step::RemoveRules);
        let (removed, deleted) = std::thread::scope(|scope| {
            let bridge = status.def.bridge.as_str();
            let deleted = scope.spawn(move || delete_stopped_bridge(bridge, exec));
            let removed = remove_rules(status, exec, options);
            (
                removed,
                deleted
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p)),
            )
        });
        removed?;
        return deleted;
    }
    step(Step::RemoveRules);
    remove_rules(status, exec, options)?;
    step(Step::DeleteBridge);
    if status.created_bridge {
        delete_stopped_bridge(&status.def.bridge, exec)?;
    }
    Ok(())
}

/// Whether independent steps may run at the same time: not on the per-command path (libvirt's
/// order, for identical logs) nor with an executor that asks for it.
fn concurrent_steps(exec: &dyn Executor, options: ApplyOptions<'_>) -> bool {
    !options.per_command && exec.supports_batch()
}

/// Delete the bridge a start created. One process: a bridge that is already gone is what stop
/// wants anyway.
fn delete_stopped_bridge(br: &str, exec: &dyn Executor) -> Result<()> {
    let out =
        run(exec, &["ip", "link", "del", "dev", br]).map_err(|message| NetworkError::Bridge {
            bridge: br.to_string(),
            message,
        })?;
    if !out.success() && !out.stderr.contains("Cannot find device") {
        return Err(NetworkError::Bridge {
            bridge: br.to_string(),
            message: format!("ip link del dev {br} failed: {}", out.stderr.trim_end()),
        });
    }
    Ok(())
}

/// The outcome of a reload: the new status (its removal plan is absent when adding failed, so
/// a later stop falls back to the legacy deletions, as in libvirt) and the error, if any.
#[derive(Debug)]
pub struct Reloaded {
    /// The status to store.
    pub status: NetworkStatus,
    /// Why adding the rules again failed, if it did.
    pub error: Option<NetworkError>,
}

/// Remove the rules with the stored plan and add them again with `backend` (after someone
/// flushed the ruleset, or to switch backends: the old plan carries its own backend).
pub fn reload(
    status: NetworkStatus,
    backend: Backend,
    exec: &dyn Executor,
    options: ApplyOptions<'_>,
) -> Result<Reloaded> {
    reload_in_steps(status, backend, exec, options, &|_| {})
}

/// [`reload`], calling `step` before each [`Step`].
pub fn reload_in_steps(
    status: NetworkStatus,
    backend: Backend,
    exec: &dyn Executor,
    options: ApplyOptions<'_>,
    step: &dyn Fn(Step),
) -> Result<Reloaded> {
    step(Step::RemoveRules);
    remove_rules(&status, exec, options)?;
    let NetworkStatus {
        def,
        created_bridge,
        netns,
        ..
    } = status;
    if !def.forward.has_rules() {
        return Ok(Reloaded {
            status: NetworkStatus {
                def,
                removal: None,
                created_bridge,
                netns,
            },
            error: None,
        });
    }
    let added = network_firewall(&def, backend).and_then(|fw| {
        step(Step::GlobalSetup);
        global::setup(backend, exec, options).require(&def)?;
        step(Step::Rules);
        apply_network(fw, exec, options)
    });
    let (removal, error) = match added {
        Ok(removal) => (removal, None),
        Err(e) => (None, Some(e)),
    };
    Ok(Reloaded {
        status: NetworkStatus {
            def,
            removal,
            created_bridge,
            netns,
        },
        error,
    })
}

/// How many of a network's rules are in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCheck {
    /// Rules the removal plan would delete.
    pub total: usize,
    /// The plan's delete commands whose rule was not found (one line each).
    pub missing: Vec<String>,
}

impl RuleCheck {
    /// Whether every rule of the plan is in the kernel.
    pub fn all_present(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Check that every rule the removal plan would delete is present: for nftables by handle in
/// `nft -a list table F libvirt_network`, for iptables with `-C` and the rule the delete names.
pub fn check(status: &NetworkStatus, exec: &dyn Executor) -> Result<RuleCheck> {
    let plan = status.removal_plan();
    let mut missing = Vec::new();
    let mut total = 0;
    if !status.def.forward.has_rules() {
        return Ok(RuleCheck { total, missing });
    }
    let mut listings: BTreeMap<
        (String, String),
        BTreeMap<String, std::collections::BTreeSet<u64>>,
    > = BTreeMap::new();
    for group in plan.groups() {
        for cmd in group.actions() {
            let args = cmd.args();
            total += 1;
            let present = match plan.backend() {
                Backend::Nftables => match args {
                    [d, r, fam, table, chain, h, n]
                        if d == "delete" && r == "rule" && h == "handle" =>
                    {
                        let key = (fam.clone(), table.clone());
                        if !listings.contains_key(&key) {
                            let out = run(exec, &["nft", "-a", "list", "table", fam, table])
                                .map_err(|e| {
                                    NetworkError::Firewall(virtfw::Error::Exec {
                                        cmdline: format!("nft -a list table {fam} {table}"),
                                        source: virtfw::ExecError::Other(e),
                                    })
                                })?;
                            let handles = if out.success() {
                                virtfw::nft::parse_listing(&out.stdout).rules
                            } else if virtfw::nft::listing_says_absent(&out.stderr) {
                                BTreeMap::new()
                            } else {
                                // Could not look: not "missing", an error.
                                return Err(NetworkError::Firewall(virtfw::Error::CommandFailed {
                                    cmdline: format!("nft -a list table {fam} {table}"),
                                    status: out.status,
                                    stderr: out.stderr.trim_end().to_string(),
                                }));
                            };
                            listings.insert(key.clone(), handles);
                        }
                        n.parse::<u64>().is_ok_and(|n| {
                            listings[&key].get(chain).is_some_and(|s| s.contains(&n))
                        })
                    }
                    _ => {
                        // Not a rule delete (never in a network plan); count it as present
                        // rather than guess.
                        debug!(cmd = ?args, "not a rule delete, not checked");
                        true
                    }
                },
                _ => match rollback::iptables_check(args) {
                    Some(check) => {
                        let (program, lead) = cmd.layer().program(Backend::Iptables);
                        let mut argv: Vec<String> = vec![program.to_string()];
                        argv.extend(lead.iter().map(|s| s.to_string()));
                        argv.extend(check);
                        exec.run(Invocation {
                            argv: &argv,
                            stdin: None,
                        })
                        .is_ok_and(|o| o.success())
                    }
                    None => {
                        // Not a rule command (never in a network plan): running it would
                        // change the ruleset, so count it as present rather than guess.
                        debug!(cmd = ?args, "not a rule command, not checked");
                        true
                    }
                },
            };
            if !present {
                missing.push(virtfw::transcript::command_line(
                    &std::iter::once(cmd.layer().program(plan.backend()).0.to_string())
                        .chain(args.iter().cloned())
                        .collect::<Vec<_>>(),
                ));
            }
        }
    }
    Ok(RuleCheck { total, missing })
}

/// What libvirt would run to start this network on a fresh host (global setup included when
/// `with_global`), in libvirt's transcript format. Nothing is executed: the engine's
/// [`DryRun`] recorder answers as a fresh host (nft creates get counting handles), so
/// production code never runs on the test fake.
pub fn plan(def: &NetworkDef, backend: Backend, with_global: bool) -> Result<String> {
    let options = ApplyOptions::new().per_command(true);
    let fake = DryRun::new();
    if !def.forward.has_rules() {
        return Ok(String::new());
    }
    let mut fw = network_firewall(def, backend)?;
    if with_global {
        for layer in [Layer::Ipv4, Layer::Ipv6] {
            global::setup_firewall(backend, layer).apply_with(&fake, options)?;
        }
    }
    fw.apply_with(&fake, options)?;
    Ok(fake.transcript())
}
