//! `lamina load`: load images from an archive.

use crate::context::Context;

/// Arguments of `lamina load`.
#[derive(clap::Args)]
pub struct Args {
    /// Input file.
    #[arg(short, long)]
    pub input: std::path::PathBuf,
}

/// Runs `lamina load`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina load` is not implemented yet")
}
