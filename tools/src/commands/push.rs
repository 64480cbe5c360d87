//! `lamina push`: push an image to a registry.

use crate::context::Context;

/// Arguments of `lamina push`.
#[derive(clap::Args)]
pub struct Args {
    /// Local image reference.
    pub reference: String,
    /// Destination reference (default: the same name).
    pub destination: Option<String>,
    /// Allow plain HTTP and unverified TLS for a non-loopback registry.
    #[arg(long)]
    pub insecure: bool,
}

/// Runs `lamina push`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina push` is not implemented yet")
}
