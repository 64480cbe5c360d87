//! `lamina diff`: show a container's changes.

use crate::commands::images::open_store;
use crate::context::Context;
use std::io::Write;

/// Arguments of `lamina diff`.
#[derive(clap::Args)]
pub struct Args {
    /// Container id or name.
    pub container: String,
}

/// Runs `lamina diff`: A/C/D lines like `docker diff`, from the upper layer alone.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = open_store(ctx)?;
    let c = store.container(&args.container)?;
    let lowers = store.container_layer_dirs(&c)?;
    let changes = lamina_store::archive::diff::diff(&c.upper_dir(), &lowers)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for ch in changes {
        writeln!(out, "{ch}")?;
    }
    out.flush()?;
    Ok(())
}
