//! `lamina fsck`: check the store's consistency.

use crate::context::Context;

/// Arguments of `lamina fsck`.
#[derive(clap::Args)]
pub struct Args {

}

/// Runs `lamina fsck`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina fsck` is not implemented yet")
}
