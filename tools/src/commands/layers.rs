//! `lamina layers`: an image's layers, bottom-most first, with blob digest,
//! diff id, chain id and the layer directory.

use crate::commands::images::{human_size, layer_json, open_store, print_table};
use crate::context::Context;

/// Arguments of `lamina layers`.
#[derive(clap::Args)]
pub struct Args {
    /// Image reference or id.
    pub reference: String,
    /// Output format: `table` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
}

/// Runs `lamina layers`.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = open_store(ctx)?;
    let img = store.image(&args.reference)?;
    match args.format.as_str() {
        "json" => {
            let out: Vec<serde_json::Value> = img
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let mut j = layer_json(&store, l);
                    j["index"] = i.into();
                    j["present"] = store.has_layer(&l.chain_id).unwrap_or(false).into();
                    j
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        "table" => {
            let mut rows = vec![[
                "#".to_string(),
                "BLOB".into(),
                "DIFF ID".into(),
                "CHAIN ID".into(),
                "COMPRESSED".into(),
                "SIZE".into(),
                "DIR".into(),
            ]];
            for (i, l) in img.layers.iter().enumerate() {
                rows.push([
                    i.to_string(),
                    l.digest.short().to_string(),
                    l.diff_id.short().to_string(),
                    l.chain_id.short().to_string(),
                    human_size(l.size),
                    human_size(l.unpacked_size),
                    store.layer_dir(&l.chain_id).display().to_string(),
                ]);
            }
            print_table(&rows);
        }
        other => anyhow::bail!("unknown --format {other:?}: use `table` or `json`"),
    }
    Ok(())
}
