//! `virtfw`: apply firewall transactions, keep their exact removal plans on disk, and remove
//! them later — safely across restarts, crashes and concurrent invocations. See docs/cli.md.

//!
//! The command is a thin front end over `virtfw_store`: parse (clap, `cli`), call the store,
//! print its report (`commands`, `network`), and map errors to exit statuses in one place
//! ([`exit_code`], from the store's one table).

mod cli;
mod commands;
mod demo;
mod network;

use std::time::Duration;

use clap::Parser;

use cli::{Cli, CliCommand};
use commands::Ctx;
use virtfw_store::{Cancel, ErrorKind, ErrorReport, Result, Store, StoreError, StoreOptions};

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIRTFW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn dispatch(ctx: &Ctx, command: &CliCommand) -> Result<i32> {
    match command {
        CliCommand::Apply(a) => commands::apply(ctx, a),
        CliCommand::Remove(r) => commands::remove(ctx, &r.name, r.dry_run, r.forget),
        CliCommand::List => commands::list(ctx),
        CliCommand::Show { name } => commands::show(ctx, name),
        CliCommand::Verify { names } => commands::verify(ctx, names),
        CliCommand::Recover(r) => match &r.drop {
            Some(id) => commands::recover_drop(ctx, id),
            None => commands::recover(ctx),
        },
        CliCommand::Demo => demo::run(ctx),
        CliCommand::Network(args) => network::run(ctx, args),
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                ErrorKind::Usage.exit_code()
            } else {
                virtfw_store::EXIT_OK
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    init_logging(cli.verbose, cli.quiet);
    let child_timeout = match child_timeout(cli.child_timeout) {
        Ok(timeout) => timeout,
        Err(e) => std::process::exit(report(cli.json, &e)),
    };
    let options = StoreOptions::new()
        .netns(cli.netns.clone())
        .per_command(cli.no_batch || virtfw::batch::disabled_by_env())
        .lock_timeout(Duration::from_secs(cli.lock_timeout))
        .child_timeout(child_timeout)
        .cancel(cancel_on_signals());
    let ctx = Ctx {
        store: Store::open(cli.state_dir.clone(), options),
        json: cli.json,
    };
    let code = match dispatch(&ctx, &cli.command) {
        Ok(code) => code,
        Err(err) => report(ctx.json, &err),
    };
    std::process::exit(code);
}

/// SIGINT and SIGTERM stop an operation between commands, undone as after a failure, and the
/// command exits 128 + the signal once the undo is done (`StoreError::Interrupted`). The
/// handler only stores the signal: a second one during the undo does not abort it (SIGKILL
/// does; `virtfw recover` finishes that). A wait for the state lock ends at once; a command
/// that changes nothing (`list`, `verify`), `recover`, `network stop`, and a removal whose
/// last delete had run end as usual (docs/cli.md, "Signals").
fn cancel_on_signals() -> Cancel {
    let cancel = Cancel::new();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register_usize(signal, cancel.flag(), signal as usize) {
            tracing::warn!(signal, error = %e, "cannot handle the signal; it kills virtfw as usual");
        }
    }
    cancel
}

/// The bound of every firewall child: `--child-timeout`, else `VIRTFW_CHILD_TIMEOUT`, else
/// the library's default.
fn child_timeout(flag: Option<u64>) -> Result<Duration> {
    let seconds = match flag {
        Some(s) => s,
        None => match std::env::var(CHILD_TIMEOUT_ENV) {
            Err(_) => return Ok(virtfw::executor::DEFAULT_CHILD_TIMEOUT),
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&s| s > 0)
                .ok_or_else(|| {
                    StoreError::Usage(format!(
                    "{CHILD_TIMEOUT_ENV}='{text}': expected a whole number of seconds, at least 1"
                ))
                })?,
        },
    };
    Ok(Duration::from_secs(seconds))
}

/// Environment variable for `--child-timeout`.
const CHILD_TIMEOUT_ENV: &str = "VIRTFW_CHILD_TIMEOUT";

/// THE mapping of errors to exit statuses: the error's kind, numbered by the store's one table
/// (`virtfw_store::EXIT_STATUSES`, from which `--help` is made too).
pub(crate) fn exit_code(err: &StoreError) -> i32 {
    err.exit_code()
}

/// Say what failed (stderr; with `--json` also as a JSON document on stdout) and give the
/// exit status.
fn report(json: bool, err: &StoreError) -> i32 {
    let report = ErrorReport::from(err);
    eprintln!("{report}");
    if json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    }
    report.exit_code
}
