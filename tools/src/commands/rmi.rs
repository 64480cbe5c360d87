//! `lamina rmi`: remove image names.

use crate::context::Context;

/// Arguments of `lamina rmi`.
#[derive(clap::Args)]
pub struct Args {
    /// Image references.
    #[arg(required = true)]
    pub references: Vec<String>,
}

/// Runs `lamina rmi`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina rmi` is not implemented yet")
}
