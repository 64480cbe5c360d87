//! `lamina serve`: serve the local API and the containerd snapshotter.

use crate::context::Context;

/// Arguments of `lamina serve`.
#[derive(clap::Args)]
pub struct Args {
    /// Directory for the sockets (default: /run/lamina).
    #[arg(long)]
    pub socket_dir: Option<std::path::PathBuf>,
}

/// Runs `lamina serve`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina serve` is not implemented yet")
}
