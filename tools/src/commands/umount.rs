//! `lamina umount`: unmount a lamina mount.

use crate::context::Context;

/// Arguments of `lamina umount`.
#[derive(clap::Args)]
pub struct Args {
    /// Mount point.
    pub dir: std::path::PathBuf,
}

/// Runs `lamina umount`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina umount` is not implemented yet")
}
