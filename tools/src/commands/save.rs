//! `lamina save`: save images into one archive.

use crate::context::Context;
use anyhow::Context as _;
use lamina_store::Store;

/// Arguments of `lamina save`.
#[derive(clap::Args)]
pub struct Args {
    /// Image references or ids.
    #[arg(required = true)]
    pub references: Vec<String>,
    /// Output file: one tar that is both a docker-archive and an OCI layout.
    #[arg(short, long)]
    pub output: std::path::PathBuf,
}

/// Runs `lamina save`.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = Store::open(&ctx.root)
        .with_context(|| format!("opening the store at {}", ctx.root.display()))?;
    lamina_store::archive::save::save_to_file(&store, &args.references, &args.output)
        .with_context(|| format!("saving to {}", args.output.display()))?;
    Ok(())
}
