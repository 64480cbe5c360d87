//! `lamina images`: list images.

use crate::context::Context;

/// Arguments of `lamina images`.
#[derive(clap::Args)]
pub struct Args {
    /// Output format: `table` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
}

/// Runs `lamina images`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina images` is not implemented yet")
}
