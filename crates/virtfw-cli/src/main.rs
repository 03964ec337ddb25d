//! `virtfw`: apply firewall transactions, keep their exact removal plans on disk, and remove
//! them later — safely across restarts, crashes and concurrent invocations. See docs/cli.md.

mod cli;
mod commands;
mod demo;
mod error;
mod exec;
mod journal;
mod lock;
mod network;
mod network_journal;
mod operation;
mod plan;
mod recover;
mod state;
mod undo;
mod verify;

use std::time::Duration;

use clap::Parser;

use cli::{Cli, CliCommand};
use commands::Ctx;
use error::{CliError, CliResult, EXIT_USAGE};

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

fn dispatch(ctx: &Ctx, command: &CliCommand) -> CliResult<i32> {
    match command {
        CliCommand::Apply(a) => commands::apply(ctx, &a.file, a.name.as_deref(), a.dry_run),
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
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    init_logging(cli.verbose, cli.quiet);
    match child_timeout(cli.child_timeout) {
        Ok(timeout) => exec::set_child_timeout(timeout),
        Err(e) => std::process::exit(report_plain(cli.json, &e)),
    }
    let ctx = Ctx {
        state_dir: cli.state_dir.clone(),
        netns: cli.netns.clone(),
        json: cli.json,
        per_command: cli.no_batch || virtfw::batch::disabled_by_env(),
        lock_timeout: Duration::from_secs(cli.lock_timeout),
    };
    let code = match dispatch(&ctx, &cli.command) {
        Ok(code) => code,
        Err(err) => report(&ctx, &err),
    };
    std::process::exit(code);
}

/// The bound of every firewall child: `--child-timeout`, else `VIRTFW_CHILD_TIMEOUT`, else
/// the library's default.
fn child_timeout(flag: Option<u64>) -> CliResult<Duration> {
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
                    CliError::Usage(format!(
                    "{CHILD_TIMEOUT_ENV}='{text}': expected a whole number of seconds, at least 1"
                ))
                })?,
        },
    };
    Ok(Duration::from_secs(seconds))
}

/// Environment variable for `--child-timeout`.
const CHILD_TIMEOUT_ENV: &str = "VIRTFW_CHILD_TIMEOUT";

fn report(ctx: &Ctx, err: &CliError) -> i32 {
    report_plain(ctx.json, err)
}

fn report_plain(json: bool, err: &CliError) -> i32 {
    let code = err.exit_code();
    eprintln!("virtfw: error: {err}");
    if json {
        println!(
            "{}",
            serde_json::json!({"error": err.to_string(), "exit_code": code})
        );
    }
    code
}
