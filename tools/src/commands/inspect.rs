//! `lamina inspect`: show an image's manifest, config and layers as JSON.

use crate::commands::images::{image_json, layer_json, open_store};
use crate::context::Context;
use lamina_store::Store;

/// Arguments of `lamina inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// Image reference or id.
    pub reference: String,
}

/// Runs `lamina inspect`.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = open_store(ctx)?;
    let out = inspect_json(&store, &args.reference)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// The inspect form of the image `reference` (name, id, id prefix,
/// `name@digest`), shared by `lamina inspect` and `GET /v1/images/inspect`:
/// the `images` row plus `repo_digests`, `index_digests`, the stored
/// `manifest` and `config` JSON, and per layer its [`layer_json`] form.
/// Errors are the store's (an unknown image is `ImageNotFound`), or a stored
/// manifest/config that is not JSON.
pub(crate) fn inspect_json(store: &Store, reference: &str) -> anyhow::Result<serde_json::Value> {
    let img = store.image(reference)?;
    let (_, manifest) = store.manifest(&img.manifest_digest)?;
    let (_, config) = store.config(&img.config_digest)?;
    let mut out = image_json(&img);
    out["repo_digests"] = serde_json::json!(
        img.names
            .iter()
            .map(|n| format!(
                "{}@{}",
                lamina_store::reference::split_repo_tag(n).0,
                img.manifest_digest
            ))
            .collect::<std::collections::BTreeSet<_>>()
    );
    out["index_digests"] = serde_json::json!(img.index_digests);
    out["manifest"] = serde_json::from_slice(&manifest)?;
    out["config"] = serde_json::from_slice(&config)?;
    out["layers"] = img
        .layers
        .iter()
        .map(|l| layer_json(store, l))
        .collect::<Vec<_>>()
        .into();
    Ok(out)
}
