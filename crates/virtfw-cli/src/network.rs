//! `virtfw network …`: libvirt virtual networks (docs/networks.md). The arguments, and the
//! calls of the store's network operations.

use std::path::{Path, PathBuf};

use virtfw_network::NetworkDef;
use virtfw_store::{
    configured_backend, default_network_conf, network_plan, parse_backend, read_network_def,
    ErrorKind, NetworkHealth, Result, StoreError, EXIT_OK,
};

use crate::commands::{outcome, Ctx};

/// Environment variable naming libvirt's `network.conf` (default /etc/libvirt/network.conf).
const NETWORK_CONF_ENV: &str = "VIRTFW_NETWORK_CONF";

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
pub(crate) fn run(ctx: &Ctx, args: &NetworkArgs) -> Result<i32> {
    match &args.command {
        NetworkCommand::Start { file, backend } => {
            let def = read_network_def(file)?;
            let configured = configured(backend.as_deref())?;
            ctx.emit(&ctx.store.network_start(def, configured)?);
        }
        NetworkCommand::Stop { name, forget: true } => {
            ctx.emit(&ctx.store.network_forget(name)?);
        }
        NetworkCommand::Stop { name, .. } => ctx.emit(&ctx.store.network_stop(name)?),
        NetworkCommand::Reload { names, backend } => {
            let mut report = ctx
                .store
                .network_reload(names, configured(backend.as_deref())?)?;
            ctx.emit(&report);
            if let Some(e) = report.failed.take() {
                return Err(e);
            }
        }
        NetworkCommand::List => ctx.emit(&ctx.store.network_list()?),
        NetworkCommand::Status { name } => {
            let report = ctx.store.network_status(name)?;
            ctx.emit(&report);
            return match &report.0.health {
                NetworkHealth::AllPresent => Ok(EXIT_OK),
                NetworkHealth::Drift => Ok(outcome(ErrorKind::Drift)),
                // A state problem: the status describes no live rules.
                NetworkHealth::Stale => Ok(outcome(ErrorKind::State)),
                NetworkHealth::Unchecked(e) => Err(StoreError::Failed(e.clone())),
                other => Err(StoreError::Failed(format!("{other:?}"))),
            };
        }
        NetworkCommand::Plan {
            file,
            backend,
            with_global,
        } => {
            let def: NetworkDef = read_network_def(file)?;
            let backend = parse_backend(backend)?;
            ctx.emit(&network_plan(&def, backend, *with_global)?);
        }
    }
    Ok(EXIT_OK)
}

/// The backend `--backend` names, else libvirt's `network.conf` setting (the file named by
/// `VIRTFW_NETWORK_CONF`, default /etc/libvirt/network.conf), else none.
fn configured(flag: Option<&str>) -> Result<Option<virtfw::Backend>> {
    let conf = std::env::var_os(NETWORK_CONF_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(default_network_conf);
    configured_backend(flag, Path::new(&conf))
}
