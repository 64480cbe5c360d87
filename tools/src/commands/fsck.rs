//! `lamina fsck`: verify blob digests and that every recorded layer and
//! container dir exists. Exits non-zero when a problem is found.

use crate::commands::images::open_store;
use crate::context::Context;

/// Arguments of `lamina fsck`.
#[derive(clap::Args)]
pub struct Args {
    /// Output format: `text` or `json`.
    #[arg(long, default_value = "text")]
    pub format: String,
}

/// Runs `lamina fsck`.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = open_store(ctx)?;
    let r = store.fsck()?;
    match args.format.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&r)?),
        "text" | "table" => {
            for p in &r.problems {
                println!("problem: {p}");
            }
            for g in &r.garbage {
                println!("garbage: {g}");
            }
            println!(
                "checked {} blobs, {} layers, {} images, {} containers: {} problems, {} garbage (run `lamina gc`)",
                r.blobs_checked,
                r.layers_checked,
                r.images_checked,
                r.containers_checked,
                r.problems.len(),
                r.garbage.len()
            );
        }
        other => anyhow::bail!("unknown --format {other:?}: use `text` or `json`"),
    }
    if !r.is_ok() {
        anyhow::bail!("the store has {} problems (see above)", r.problems.len());
    }
    Ok(())
}
