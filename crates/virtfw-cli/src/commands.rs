//! The commands: read the input, call the store, print its report. Nothing here decides what
//! happens to the firewall or the state directory (that is `virtfw_store`); only what is
//! read from files and what is printed.

use std::fmt::Display;
use std::io::Read;
use std::path::Path;

use serde::Serialize;
use virtfw::Firewall;
use virtfw_store::{ErrorKind, Result, Store, StoreError, EXIT_OK};

/// What every command gets from the global options.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub store: Store,
    pub json: bool,
}

impl Ctx {
    /// Print a report: its JSON document with `--json`, its text otherwise.
    pub(crate) fn emit<R: Serialize + Display>(&self, report: &R) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(report).unwrap_or_default()
            );
        } else {
            let text = report.to_string();
            if !text.is_empty() {
                print!("{text}");
                if !text.ends_with('\n') {
                    println!();
                }
            }
        }
    }
}

/// The exit status of an outcome that is not an error of the operation (drift, a corrupt
/// plan in a listing): the same table as the errors'.
pub(crate) fn outcome(kind: ErrorKind) -> i32 {
    kind.exit_code()
}

fn read_input(file: &Path) -> Result<(String, String)> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|source| StoreError::ReadInput {
                path: "-".into(),
                source,
            })?;
        return Ok((text, "-".into()));
    }
    let text = std::fs::read_to_string(file).map_err(|source| StoreError::ReadInput {
        path: file.display().to_string(),
        source,
    })?;
    Ok((text, file.display().to_string()))
}

/// `virtfw apply FILE [--name NAME] [--dry-run | --check]`
pub(crate) fn apply(ctx: &Ctx, args: &crate::cli::ApplyArgs) -> Result<i32> {
    let (file, name) = (args.file.as_path(), args.name.as_deref());
    let (text, source) = read_input(file)?;
    let mut fw = Firewall::from_xml(&text, &source).map_err(StoreError::Input)?;
    let name = match name.or(fw.name()) {
        Some(n) => n.to_string(),
        None if source == "-" => {
            return Err(StoreError::Usage(
                "a transaction read from stdin needs --name or a name attribute".into(),
            ))
        }
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    if args.check {
        let report = ctx.store.apply_check(&fw, &name)?;
        ctx.emit(&report);
        return Ok(if report.clean {
            EXIT_OK
        } else {
            outcome(ErrorKind::Refused)
        });
    }
    if args.dry_run {
        ctx.emit(&ctx.store.apply_dry_run(&mut fw, &name)?);
    } else {
        ctx.emit(&ctx.store.apply(&mut fw, &name)?);
    }
    Ok(EXIT_OK)
}

/// `virtfw remove NAME [--dry-run] [--forget]`
pub(crate) fn remove(ctx: &Ctx, name: &str, dry: bool, forget: bool) -> Result<i32> {
    if dry {
        ctx.emit(&ctx.store.remove_dry_run(name)?);
    } else if forget {
        ctx.emit(&ctx.store.forget(name)?);
    } else {
        ctx.emit(&ctx.store.remove(name)?);
    }
    Ok(EXIT_OK)
}

/// `virtfw list`: a corrupt plan is listed, said on stderr, and makes the exit status 4.
pub(crate) fn list(ctx: &Ctx) -> Result<i32> {
    let report = ctx.store.list()?;
    let mut corrupt = 0;
    for (_, error) in report.corrupt() {
        eprintln!("virtfw: {error}");
        corrupt += 1;
    }
    ctx.emit(&report);
    Ok(if corrupt > 0 {
        outcome(ErrorKind::State)
    } else {
        EXIT_OK
    })
}

/// `virtfw show NAME`
pub(crate) fn show(ctx: &Ctx, name: &str) -> Result<i32> {
    ctx.emit(&ctx.store.show(name)?);
    Ok(EXIT_OK)
}

/// `virtfw verify [NAME…]`: the report first, then a plan that could not be checked (exit 4),
/// else drift (exit 3).
pub(crate) fn verify(ctx: &Ctx, names: &[String]) -> Result<i32> {
    let mut report = ctx.store.verify(names)?;
    ctx.emit(&report);
    if let Some(e) = report.problem.take() {
        return Err(e);
    }
    Ok(if report.drift() {
        outcome(ErrorKind::Drift)
    } else {
        EXIT_OK
    })
}

/// `virtfw recover`: settle every pending journal that can be read; report each one that
/// cannot (or whose undo stopped), keep it, and exit 4 if any is left.
pub(crate) fn recover(ctx: &Ctx) -> Result<i32> {
    let report = ctx.store.recover()?;
    for u in &report.unsettled {
        eprintln!("virtfw: journal {}: {}", u.op_id, u.error);
    }
    ctx.emit(&report);
    if let Some(err) = report.error() {
        eprintln!("virtfw: error: {err}");
        return Ok(crate::exit_code(&err));
    }
    Ok(EXIT_OK)
}

/// `virtfw recover --drop ID`: discard one journal deliberately, without running anything.
pub(crate) fn recover_drop(ctx: &Ctx, id: &str) -> Result<i32> {
    ctx.emit(&ctx.store.recover_drop(id)?);
    Ok(EXIT_OK)
}
