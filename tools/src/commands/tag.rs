//! `lamina tag`: give an image another name.

use crate::commands::images::open_store;
use crate::context::Context;

/// Arguments of `lamina tag`.
#[derive(clap::Args)]
pub struct Args {
    /// Existing image reference or id.
    pub source: String,
    /// New name (normalised like docker: `app` -> `docker.io/library/app:latest`).
    pub target: String,
}

/// Runs `lamina tag`.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = open_store(ctx)?;
    store.tag(&args.source, &args.target)?;
    Ok(())
}
