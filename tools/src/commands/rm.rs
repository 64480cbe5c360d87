//! `lamina rm`: remove containers.

use crate::context::Context;

/// Arguments of `lamina rm`.
#[derive(clap::Args)]
pub struct Args {
    /// Container ids or names.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Runs `lamina rm`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina rm` is not implemented yet")
}
