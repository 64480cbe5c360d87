//! `lamina save`: save images into one archive.

use crate::context::Context;

/// Arguments of `lamina save`.
#[derive(clap::Args)]
pub struct Args {
    /// Image references.
    #[arg(required = true)]
    pub references: Vec<String>,
    /// Output file.
    #[arg(short, long)]
    pub output: std::path::PathBuf,
}

/// Runs `lamina save`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina save` is not implemented yet")
}
