//! `lamina gc`: remove blobs, layer dirs and stale ingests that nothing
//! references. Waits for running pulls/imports (they hold the store lease).

use crate::commands::images::{human_size, open_store};
use crate::context::Context;

/// Arguments of `lamina gc`.
#[derive(clap::Args)]
pub struct Args {
    /// Output format: `text` or `json`.
    #[arg(long, default_value = "text")]
    pub format: String,
}

/// Runs `lamina gc`.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = open_store(ctx)?;
    let r = store.gc()?;
    match args.format.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&r)?),
        "text" | "table" => {
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
        }
        other => anyhow::bail!("unknown --format {other:?}: use `text` or `json`"),
    }
    Ok(())
}
