//! `lamina mount`: mount an image or a container.

use crate::context::Context;

/// Arguments of `lamina mount`.
#[derive(clap::Args)]
pub struct Args {
    /// Image reference, or container id or name.
    pub target: String,
    /// Mount point.
    pub dir: std::path::PathBuf,
    /// Overlay driver: `fuse` (default) or `kernel`.
    #[arg(long, default_value = "fuse")]
    pub driver: String,
}

/// Runs `lamina mount`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina mount` is not implemented yet")
}

/// Arguments of the hidden `mount-serve` helper that `mount` starts.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Mount point.
    pub dir: std::path::PathBuf,
}

/// Serves a mount in the foreground until it is unmounted.
pub fn serve(_ctx: &Context, _args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("`lamina mount-serve` is not implemented yet")
}
