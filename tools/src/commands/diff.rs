//! `lamina diff`: show a container's changes.

use crate::context::Context;

/// Arguments of `lamina diff`.
#[derive(clap::Args)]
pub struct Args {
    /// Container id or name.
    pub container: String,
}

/// Runs `lamina diff`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina diff` is not implemented yet")
}
