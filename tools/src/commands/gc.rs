//! `lamina gc`: remove what nothing references.

use crate::context::Context;

/// Arguments of `lamina gc`.
#[derive(clap::Args)]
pub struct Args {

}

/// Runs `lamina gc`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina gc` is not implemented yet")
}
