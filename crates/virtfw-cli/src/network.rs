//! `virtfw network …`: libvirt virtual networks. PLACEHOLDER — owned by the networks engineer,
//! who replaces this file; it only keeps the subcommand wired and says it is not there yet.

use crate::commands::Ctx;
use crate::error::{CliError, CliResult};

/// Arguments of `virtfw network` (to be replaced by the real subcommands).
#[derive(Debug, clap::Args)]
pub(crate) struct NetworkArgs {
    /// Subcommand and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Run `virtfw network …`.
pub(crate) fn run(_ctx: &Ctx, _args: &NetworkArgs) -> CliResult<i32> {
    Err(CliError::Usage(
        "`virtfw network` is not available yet in this build".into(),
    ))
}
