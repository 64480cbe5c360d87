//! `lamina pull`: pull an image from a registry.

use crate::context::Context;

/// Arguments of `lamina pull`.
#[derive(clap::Args)]
pub struct Args {
    /// Image reference, e.g. `alpine` or `localhost:5000/app:1`.
    pub reference: String,
    /// Platform to choose from a multi-arch index, as os/arch[/variant].
    #[arg(long)]
    pub platform: Option<String>,
    /// Allow plain HTTP and unverified TLS for a non-loopback registry.
    #[arg(long)]
    pub insecure: bool,
}

/// Runs `lamina pull`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina pull` is not implemented yet")
}
