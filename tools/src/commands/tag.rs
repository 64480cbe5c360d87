//! `lamina tag`: give an image another name.

use crate::context::Context;

/// Arguments of `lamina tag`.
#[derive(clap::Args)]
pub struct Args {
    /// Existing image reference.
    pub source: String,
    /// New name.
    pub target: String,
}

/// Runs `lamina tag`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina tag` is not implemented yet")
}
