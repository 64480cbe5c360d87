//! `lamina export`: export a flattened tree.

use crate::context::Context;

/// Arguments of `lamina export`.
#[derive(clap::Args)]
pub struct Args {
    /// Image reference, or container id or name.
    pub target: String,
    /// Output file.
    #[arg(short, long)]
    pub output: std::path::PathBuf,
}

/// Runs `lamina export`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina export` is not implemented yet")
}
