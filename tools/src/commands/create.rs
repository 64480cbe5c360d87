//! `lamina create`: create a container.

use crate::context::Context;

/// Arguments of `lamina create`.
#[derive(clap::Args)]
pub struct Args {
    /// Image reference.
    pub image: String,
    /// Container name.
    #[arg(long)]
    pub name: Option<String>,
}

/// Runs `lamina create`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina create` is not implemented yet")
}
