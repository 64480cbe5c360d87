//! `lamina inspect`: show an image's manifest, config and layers.

use crate::context::Context;

/// Arguments of `lamina inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// Image reference or id.
    pub reference: String,
}

/// Runs `lamina inspect`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina inspect` is not implemented yet")
}
