//! `lamina commit`: turn a container's changes into a new image.

use crate::context::Context;

/// Arguments of `lamina commit`.
#[derive(clap::Args)]
pub struct Args {
    /// Container id or name.
    pub container: String,
    /// New image reference.
    pub reference: String,
    /// Commit message.
    #[arg(short, long)]
    pub message: Option<String>,
    /// Author.
    #[arg(long)]
    pub author: Option<String>,
    /// Layer compression: `gzip` (default) or `zstd`.
    #[arg(long, default_value = "gzip")]
    pub compression: String,
}

/// Runs `lamina commit`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina commit` is not implemented yet")
}
