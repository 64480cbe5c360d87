//! `lamina inspect`: show an image's manifest, config and layers as JSON.

use crate::commands::images::{layer_json, open_store};
use crate::context::Context;

/// Arguments of `lamina inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// Image reference or id.
    pub reference: String,
}

/// Runs `lamina inspect`.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = open_store(ctx)?;
    let img = store.image(&args.reference)?;
    let (_, manifest) = store.manifest(&img.manifest_digest)?;
    let (_, config) = store.config(&img.config_digest)?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)?;
    let config: serde_json::Value = serde_json::from_slice(&config)?;
    let layers: Vec<serde_json::Value> = img.layers.iter().map(|l| layer_json(&store, l)).collect();
    let out = serde_json::json!({
        "id": img.id,
        "names": img.names,
        "repo_digests": img
            .names
            .iter()
            .map(|n| format!("{}@{}", lamina_store::reference::split_repo_tag(n).0, img.manifest_digest))
            .collect::<std::collections::BTreeSet<_>>(),
        "manifest_digest": img.manifest_digest,
        "manifest_media_type": img.manifest_media_type,
        "config_digest": img.config_digest,
        "index_digests": img.index_digests,
        "created": img.created,
        "os": img.os,
        "architecture": img.architecture,
        "size": img.size,
        "manifest": manifest,
        "config": config,
        "layers": layers,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
