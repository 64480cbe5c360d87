//! `lamina import`: make a one-layer image from a tar.

use crate::context::Context;

/// Arguments of `lamina import`.
#[derive(clap::Args)]
pub struct Args {
    /// Tar file (plain, gzip or zstd).
    pub file: std::path::PathBuf,
    /// Image reference for the result.
    pub reference: String,
}

/// Runs `lamina import`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina import` is not implemented yet")
}
