//! The commands: read, decide, do — each a function over a [`Ctx`].

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use virtfw::{ApplyOptions, Backend, Executor, FakeExecutor, Firewall, ProcessExecutor};

use crate::error::{CliError, CliResult, EXIT_DRIFT, EXIT_OK, EXIT_STATE};
use crate::exec::open_netns;
use crate::journal::{self, OpHeader, OpKind, JOURNAL_VERSION};
use crate::lock::{LockKind, StateLock};
use crate::operation::Operation;
use crate::plan::{self, Plan, PLAN_VERSION};
use crate::recover;
use crate::state::{self, StateDir};
use crate::verify;

/// What every command gets from the global options.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub state_dir: PathBuf,
    pub netns: Option<String>,
    pub json: bool,
    pub per_command: bool,
    pub lock_timeout: Duration,
}

impl Ctx {
    /// Print a result: the JSON document with `--json`, the text otherwise.
    pub(crate) fn emit(&self, value: serde_json::Value, text: &str) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
        } else if !text.is_empty() {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
        }
    }

    pub(crate) fn state(&self) -> CliResult<StateDir> {
        StateDir::open(&self.state_dir)
    }

    /// Open the state dir and take its lock; a writer also refuses to run over a pending journal.
    pub(crate) fn lock(&self, kind: LockKind) -> CliResult<(StateDir, StateLock)> {
        let state = self.state()?;
        let lock = StateLock::acquire(&state, kind, self.lock_timeout)?;
        if kind == LockKind::Exclusive {
            if let Some(dir) = journal::pending(&state)?.into_iter().next() {
                return Err(CliError::PendingJournal { path: dir });
            }
        }
        Ok((state, lock))
    }

    fn options<'a>(&self, observer: Option<&'a dyn virtfw::ApplyObserver>) -> ApplyOptions<'a> {
        ApplyOptions {
            observer,
            per_command: self.per_command,
        }
    }
}

fn read_input(file: &Path) -> CliResult<(String, String)> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|source| CliError::ReadInput {
                path: "-".into(),
                source,
            })?;
        return Ok((text, "-".into()));
    }
    let text = std::fs::read_to_string(file).map_err(|source| CliError::ReadInput {
        path: file.display().to_string(),
        source,
    })?;
    Ok((text, file.display().to_string()))
}

fn dry_run(ctx: &Ctx, fw: &mut Firewall) -> CliResult<i32> {
    let fake = FakeExecutor::new();
    fw.apply_with(&fake, ctx.options(None))
        .map_err(CliError::from_apply)?;
    let transcript = fake.transcript();
    ctx.emit(
        json!({"dry_run": true, "commands": fake.commands(), "transcript": transcript}),
        &transcript,
    );
    Ok(EXIT_OK)
}

/// `virtfw apply FILE [--name NAME] [--dry-run]`
pub(crate) fn apply(ctx: &Ctx, file: &Path, name: Option<&str>, dry: bool) -> CliResult<i32> {
    let (text, source) = read_input(file)?;
    let mut fw = Firewall::from_xml(&text, &source).map_err(CliError::Input)?;
    let name = match name.or(fw.name()) {
        Some(n) => n.to_string(),
        None if source == "-" => {
            return Err(CliError::Usage(
                "a transaction read from stdin needs --name or a name attribute".into(),
            ))
        }
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    state::check_name(&name)?;
    if fw.is_empty() {
        return Err(CliError::Usage(format!(
            "{source}: the transaction has no commands"
        )));
    }
    if fw.backend() == Backend::None {
        return Err(CliError::Usage(format!(
            "{source}: backend 'none' cannot apply anything"
        )));
    }
    if dry {
        return dry_run(ctx, &mut fw);
    }
    let netns_id = match &ctx.netns {
        Some(n) => {
            open_netns(n)?;
            state::netns_identity(Some(n)).map_err(|source| CliError::Netns {
                name: n.clone(),
                source,
            })?
        }
        None => {
            state::netns_identity(None).map_err(|e| CliError::io("cannot stat own netns", e))?
        }
    };
    let (state, lock) = ctx.lock(LockKind::Exclusive)?;
    if state.plan_path(&name).exists() {
        return Err(CliError::PlanExists { name });
    }
    let header = OpHeader {
        version: JOURNAL_VERSION,
        op_id: journal::new_op_id(),
        kind: OpKind::Apply,
        name: name.clone(),
        backend: fw.backend().to_string(),
        netns: ctx.netns.clone(),
        netns_id: netns_id.clone(),
        boot_id: state::boot_id(),
        created: state::now(),
        document: fw.to_xml(),
        status: None,
    };
    let op = Operation::begin(&state, &header, ctx.netns.as_deref(), lock.raw_fd())?;
    if let Err(err) = fw.apply_with(op.exec(), op.options(ctx.per_command)) {
        // The engine rolled back the failed group (and those it inherits from). Groups that
        // libvirt's rule leaves applied are undone too: an apply is all or nothing here.
        let tx = Firewall::from_xml(&header.document, "journal").map_err(CliError::Input)?;
        op.undo_apply(&tx, "", "undo")?;
        op.finish()?;
        return Err(CliError::from_apply(err));
    }
    let mut removal = fw
        .new_from_rollback()
        .map_err(|e| CliError::Failed(e.to_string()))?;
    removal.set_name(Some(&name));
    let plan = Plan {
        version: PLAN_VERSION,
        name: name.clone(),
        backend: fw.backend().to_string(),
        netns: ctx.netns.clone(),
        netns_id,
        boot_id: header.boot_id.clone(),
        created: header.created,
        op_id: header.op_id.clone(),
        groups: fw.groups().len(),
        commands: fw.command_count(),
        removal: removal.to_xml(),
    };
    plan.store(&state)?;
    op.finish()?;
    let undo_cmds = removal.command_count();
    ctx.emit(
        json!({"applied": name, "backend": plan.backend, "groups": plan.groups,
               "commands": plan.commands, "removal_commands": undo_cmds, "netns": plan.netns}),
        &format!(
            "applied {name}: {} group(s), {} command(s); removal plan stored ({undo_cmds} command(s))",
            plan.groups, plan.commands
        ),
    );
    Ok(EXIT_OK)
}

/// `virtfw remove NAME [--dry-run] [--forget]`
pub(crate) fn remove(ctx: &Ctx, name: &str, dry: bool, forget: bool) -> CliResult<i32> {
    if dry {
        let state = ctx.state()?;
        let plan = Plan::load_named(&state, name)?;
        let mut fw = plan.removal_firewall(&state.plan_path(name))?;
        return dry_run(ctx, &mut fw);
    }
    let (state, lock) = ctx.lock(LockKind::Exclusive)?;
    let plan = Plan::load_named(&state, name)?;
    if forget {
        Plan::delete(&state, name)?;
        ctx.emit(
            json!({"forgotten": name}),
            &format!("forgot plan {name} (nothing was run)"),
        );
        return Ok(EXIT_OK);
    }
    if let Some(reason) = plan.stale_reason() {
        return Err(CliError::StalePlan {
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
    let op = Operation::begin(&state, &header, plan.netns.as_deref(), lock.raw_fd())?;
    if let Err(err) = fw.apply_with(op.exec(), op.options(ctx.per_command)) {
        // Removal groups ignore errors, so only refusals before anything ran and executor
        // failures (a program that cannot be started, a journal that cannot be written) get
        // here: keep the plan (running `remove` again deletes what is left), drop the journal.
        op.finish()?;
        return Err(CliError::from_remove(err));
    }
    // Exact on both paths: the engine reports every delete it gave up on, per command or
    // from its batch's retries, with whether the object was already gone.
    let (missing, failed) = op.exec().ignored();
    let commands = fw.command_count();
    Plan::delete(&state, name)?;
    op.finish()?;
    ctx.emit(
        json!({"removed": name, "commands": commands, "missing": missing, "failed": failed}),
        &format!(
            "removed {name}: {commands} command(s), {missing} object(s) were already gone{}",
            if failed > 0 {
                format!(", {failed} delete(s) failed for another reason (ignored)")
            } else {
                String::new()
            }
        ),
    );
    Ok(EXIT_OK)
}

fn age(created: u64) -> String {
    let s = state::now().saturating_sub(created);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// `virtfw list`
pub(crate) fn list(ctx: &Ctx) -> CliResult<i32> {
    let (state, _lock) = ctx.lock(LockKind::Shared)?;
    let mut rows = Vec::new();
    let mut text = format!(
        "{:<24} {:<9} {:>6} {:>8} {:<20} {:>6}  {}\n",
        "NAME", "BACKEND", "GROUPS", "COMMANDS", "NETNS", "AGE", "STATUS"
    );
    let mut corrupt = 0;
    for (name, loaded) in plan::all_plans(&state)? {
        match loaded {
            Ok(p) => {
                let status = p
                    .stale_reason()
                    .map_or("ok".to_string(), |r| format!("stale: {r}"));
                text.push_str(&format!(
                    "{:<24} {:<9} {:>6} {:>8} {:<20} {:>6}  {}\n",
                    name,
                    p.backend,
                    p.groups,
                    p.commands,
                    p.netns.as_deref().unwrap_or("-"),
                    age(p.created),
                    status
                ));
                rows.push(
                    json!({"name": name, "backend": p.backend, "groups": p.groups,
                    "commands": p.commands, "netns": p.netns, "created": p.created,
                    "age_seconds": state::now().saturating_sub(p.created),
                    "stale": p.stale_reason()}),
                );
            }
            Err(e) => {
                corrupt += 1;
                eprintln!("virtfw: {e}");
                text.push_str(&format!("{name:<24} CORRUPT ({e})\n"));
                rows.push(json!({"name": name, "error": e.to_string()}));
            }
        }
    }
    let pending = journal::pending(&state)?.len();
    if pending > 0 {
        text.push_str(&format!(
            "{pending} interrupted operation(s) pending: run `virtfw recover`\n"
        ));
    }
    ctx.emit(json!({"plans": rows, "pending_journals": pending}), &text);
    Ok(if corrupt > 0 { EXIT_STATE } else { EXIT_OK })
}

/// `virtfw show NAME`
pub(crate) fn show(ctx: &Ctx, name: &str) -> CliResult<i32> {
    let state = ctx.state()?;
    let plan = Plan::load_named(&state, name)?;
    ctx.emit(
        json!({"name": name, "backend": plan.backend, "netns": plan.netns,
               "created": plan.created, "stale": plan.stale_reason(), "removal": plan.removal}),
        &plan.removal,
    );
    Ok(EXIT_OK)
}

/// `virtfw verify [NAME…]`
pub(crate) fn verify(ctx: &Ctx, names: &[String]) -> CliResult<i32> {
    let (state, _lock) = ctx.lock(LockKind::Shared)?;
    let plans: Vec<(String, CliResult<Plan>)> = if names.is_empty() {
        plan::all_plans(&state)?
    } else {
        names
            .iter()
            .map(|n| (n.clone(), Plan::load_named(&state, n)))
            .collect()
    };
    let mut out = Vec::new();
    let mut text = String::new();
    let mut missing = 0;
    let mut state_err = None;
    for (name, loaded) in plans {
        let p = match loaded {
            Ok(p) => p,
            Err(e) => {
                text.push_str(&format!("{name}: ERROR {e}\n"));
                out.push(json!({"name": name, "error": e.to_string()}));
                state_err.get_or_insert(e);
                continue;
            }
        };
        if let Some(reason) = p.stale_reason() {
            text.push_str(&format!("{name}: STALE ({reason}); not checked\n"));
            out.push(json!({"name": name, "stale": reason}));
            continue;
        }
        let fw = p.removal_firewall(&state.plan_path(&name))?;
        let exec: Box<dyn Executor> = match &p.netns {
            Some(n) => Box::new(ProcessExecutor::in_netns(n).map_err(|e| CliError::Netns {
                name: n.clone(),
                source: std::io::Error::other(e.to_string()),
            })?),
            None => Box::new(ProcessExecutor::new()),
        };
        let report = verify::verify_plan(&fw, exec.as_ref());
        missing += report.missing.len();
        if let Some(e) = &report.error {
            // Could not look (nft missing from PATH, say): not drift, a problem (exit 4).
            text.push_str(&format!("{name}: ERROR {e}\n"));
            state_err.get_or_insert(CliError::State {
                path: state.plan_path(&name),
                message: e.clone(),
            });
        } else if report.missing.is_empty() {
            text.push_str(&format!(
                "{name}: ok ({} object(s) present{})\n",
                report.checked,
                if report.unchecked > 0 {
                    format!(", {} command(s) not checkable", report.unchecked)
                } else {
                    String::new()
                }
            ));
        } else {
            text.push_str(&format!(
                "{name}: DRIFT, {} of {} object(s) missing\n",
                report.missing.len(),
                report.checked
            ));
            for m in &report.missing {
                text.push_str(&format!("  missing: {} ({})\n", m.command, m.reason));
            }
        }
        out.push(json!({"name": name, "report": report}));
    }
    ctx.emit(json!({"plans": out, "missing": missing}), &text);
    if let Some(e) = state_err {
        return Err(e);
    }
    Ok(if missing > 0 { EXIT_DRIFT } else { EXIT_OK })
}

/// `virtfw recover`
pub(crate) fn recover(ctx: &Ctx) -> CliResult<i32> {
    let state = ctx.state()?;
    let lock = StateLock::acquire(&state, LockKind::Exclusive, ctx.lock_timeout)?;
    let settled = recover::recover_all(&state, lock.raw_fd())?;
    let mut text = String::new();
    if settled.is_empty() {
        text.push_str("nothing to recover\n");
    }
    for s in &settled {
        text.push_str(&format!(
            "{} {} ({}): {}; {} command(s) run, {} object(s) already absent\n",
            s.kind, s.name, s.op_id, s.action, s.commands, s.missing
        ));
    }
    ctx.emit(json!({"recovered": settled}), &text);
    Ok(EXIT_OK)
}
