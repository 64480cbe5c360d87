//! `lamina push`: push an image to a registry (see `transfer::push`).

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
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = lamina_store::Store::open(&ctx.root)?;
    let pushed = crate::transfer::push::push(
        &store,
        &args.reference,
        args.destination.as_deref(),
        args.insecure,
    )?;
    println!("pushed {} {}", pushed.destination, pushed.digest);
    Ok(())
}
