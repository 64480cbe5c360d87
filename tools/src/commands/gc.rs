//! `lamina gc`: remove blobs, layer dirs and stale ingests that nothing
//! references. Waits for running pulls/imports (they hold the store lease).

use crate::commands::images::{ReportFormat, human_size, open_store};
use crate::context::Context;

/// Arguments of `lamina gc`.
#[derive(clap::Args)]
pub struct Args {
    /// How to print the report.
    #[command(flatten)]
    pub output: ReportFormat,
}

/// Runs `lamina gc`.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = open_store(ctx)?;
    let r = store.gc()?;
    args.output.print(&r, |r| {
        for d in &r.blobs_removed {
            println!("removed blob {d}");
        }
        for c in &r.layers_removed {
            println!("removed layer {c}");
        }
        println!(
            "{} blobs ({}), {} layers, {} stale ingests, {} temp dirs, {} container dirs removed",
            r.blobs_removed.len(),
            human_size(r.bytes_freed),
            r.layers_removed.len(),
            r.ingests_removed,
            r.temp_dirs_removed,
            r.container_dirs_removed
        );
    })
}
