//! `lamina ps`: list containers.

use crate::context::Context;

/// Arguments of `lamina ps`.
#[derive(clap::Args)]
pub struct Args {
    /// Output format: `table` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
}

/// Runs `lamina ps`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina ps` is not implemented yet")
}
