//! `lamina history`: show an image's history.

use crate::context::Context;

/// Arguments of `lamina history`.
#[derive(clap::Args)]
pub struct Args {
    /// Image reference or id.
    pub reference: String,
    /// Output format: `table` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
}

/// Runs `lamina history`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina history` is not implemented yet")
}
