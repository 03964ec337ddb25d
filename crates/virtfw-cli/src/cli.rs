//! Command-line definitions (clap). Only parsing lives here; the commands are in `commands`.
// The doc comments below are clap's help texts, shown verbatim by `--help`: `<firewall>` in
// them is libvirt's XML element for the reader, not an HTML tag for rustdoc.
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::network;

/// Install host firewall rules as transactions and remove them exactly later.
#[derive(Debug, Parser)]
#[command(name = "virtfw", version, after_help = virtfw_store::exit_status_help())]
pub(crate) struct Cli {
    /// Where removal plans and journals are kept (created 0700).
    #[arg(long, global = true, value_name = "DIR", default_value = virtfw_store::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Run every firewall command inside /run/netns/NAME, or the namespace file at an absolute
    /// path (remembered by the plan).
    #[arg(long, global = true, value_name = "NAME", value_parser = parse_netns)]
    pub netns: Option<String>,

    /// Machine-readable output (one JSON document on stdout) for every command.
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Run one process per command, exactly like libvirt (no batching).
    #[arg(long, global = true)]
    pub no_batch: bool,

    /// Seconds to wait for another virtfw holding the state lock.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 120)]
    pub lock_timeout: u64,

    /// Seconds a firewall program may run before it is killed and its command fails
    /// [env: VIRTFW_CHILD_TIMEOUT] [default: 60].
    #[arg(long, global = true, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub child_timeout: Option<u64>,

    #[command(subcommand)]
    pub command: CliCommand,
}

/// `--netns`, checked before any command runs, so that a value that cannot be a network
/// namespace (`''`, `.`, `..`, `a/b`, an over-long name, `/etc/passwd`) is a usage error naming
/// the argument, whichever command it is given to. A namespace that does not exist (yet) is
/// left to the command that needs it.
fn parse_netns(value: &str) -> Result<String, String> {
    match virtfw::executor::open_netns(value) {
        Ok(_) => Ok(value.to_string()),
        Err(virtfw::ExecError::Netns { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(value.to_string())
        }
        Err(virtfw::ExecError::Netns { source, .. }) => Err(source.to_string()),
        Err(other) => Err(other.to_string()),
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum CliCommand {
    /// Apply a transaction file; store its removal plan as NAME.
    Apply(ApplyArgs),
    /// Run the stored removal plan NAME, then forget it.
    Remove(RemoveArgs),
    /// Stored plans: name, backend, groups, commands, netns, age, staleness.
    List,
    /// The stored removal plan NAME, in libvirt's <firewall> XML.
    Show {
        /// Plan name.
        name: String,
    },
    /// Check that every object the plans would remove still exists (all plans by default).
    Verify {
        /// Plan names.
        names: Vec<String>,
    },
    /// Finish what a killed virtfw left half done.
    Recover(RecoverArgs),
    /// Show the whole job in a throwaway namespace: apply, list, verify, remove, on both backends.
    Demo,
    /// libvirt virtual networks.
    Network(network::NetworkArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// Transaction XML (libvirt's <firewall>, with autoRollback and <rollback>); `-` for stdin.
    pub file: PathBuf,
    /// Plan name (default: the file's `name` attribute, else the file stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Print the commands that would run (libvirt transcript format); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Ask the kernel whether it accepts every command, without committing anything
    /// (`nft -c`, `iptables-restore --test`); exit 1 when it refuses one.
    #[arg(long, conflicts_with = "dry_run")]
    pub check: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RemoveArgs {
    /// Plan name.
    pub name: String,
    /// Print the commands that would run; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Drop the plan without running it (for a stale plan whose rules are already gone).
    #[arg(long, conflicts_with = "dry_run")]
    pub forget: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RecoverArgs {
    /// Discard the journal ID (as named by the refusal or by `recover`) without running
    /// anything: whatever that operation changed in the kernel stays as it is.
    #[arg(long, value_name = "ID")]
    pub drop: Option<String>,
}
