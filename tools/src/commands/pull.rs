//! `lamina pull`: pull an image from a registry (see `transfer::pull`).

use crate::context::Context;
use std::sync::Arc;

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
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = Arc::new(lamina_store::Store::open(&ctx.root)?);
    let pulled = crate::transfer::pull::pull(
        store,
        &args.reference,
        args.platform.as_deref(),
        args.insecure,
    )?;
    let name = pulled.image.names.first().cloned().unwrap_or_default();
    println!(
        "pulled {name} {} fetched {}",
        pulled.image.manifest_digest, pulled.fetched
    );
    Ok(())
}
