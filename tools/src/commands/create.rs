//! `lamina create`: create a container (an image plus its own empty upper dir).

use crate::context::Context;
use anyhow::Context as _;
use lamina_store::Store;

/// Arguments of `lamina create`.
#[derive(clap::Args)]
pub struct Args {
    /// Image reference.
    pub image: String,
    /// Container name.
    #[arg(long)]
    pub name: Option<String>,
}

/// Runs `lamina create`: prints the new container's id.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = Store::open(&ctx.root)
        .with_context(|| format!("opening the store at {}", ctx.root.display()))?;
    let c = store
        .create_container(&args.image, args.name.as_deref())
        .with_context(|| {
            format!(
                "creating a container from {} (see `lamina images`)",
                args.image
            )
        })?;
    println!("{}", c.id);
    Ok(())
}
