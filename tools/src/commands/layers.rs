//! `lamina layers`: list an image's layers.

use crate::context::Context;

/// Arguments of `lamina layers`.
#[derive(clap::Args)]
pub struct Args {
    /// Image reference or id.
    pub reference: String,
    /// Output format: `table` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
}

/// Runs `lamina layers`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina layers` is not implemented yet")
}
