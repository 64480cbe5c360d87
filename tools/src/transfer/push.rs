//! `lamina push`: store → registry.
//!
//! Pushes the image's config and layer blobs (each after a HEAD check; a
//! blob is mounted from another repository of the same registry when the
//! image has a name there), then the manifest under the destination tag.
//! When the image was pulled through an index whose every manifest is in the
//! store with all its blobs, those manifests and then the index are pushed
//! too, so a multi-platform image stays one.

use super::progress::Progress;
use super::{client, runtime};
use anyhow::{Context as _, bail};
use lamina_registry::{BlobPush, Client, Digest, Manifest, Reference};
use lamina_store::Store;

/// What `push` did.
pub struct Pushed {
    /// Where to.
    pub destination: Reference,
    /// Digest of what the tag now points at (manifest or index).
    pub digest: Digest,
}

/// Pushes the store image `source` to `destination` (default: its own name).
pub fn push(
    store: &Store,
    source: &str,
    destination: Option<&str>,
    insecure: bool,
) -> anyhow::Result<Pushed> {
    let image = store
        .image(source)
        .with_context(|| format!("looking up {source} in the store"))?;
    let dest_text = match destination {
        Some(d) => d.to_string(),
        None => match Reference::parse(source) {
            Ok(r)
                if image
                    .names
                    .iter()
                    .any(|n| Reference::parse(n).ok().as_ref() == Some(&r)) =>
            {
                r.to_string()
            }
            _ => image.names.first().cloned().context(
                "the image has no name; give a destination: lamina push IMAGE REGISTRY/REPO:TAG",
            )?,
        },
    };
    let dest = Reference::parse(&dest_text)?;
    let mount_from: Option<String> = image
        .names
        .iter()
        .filter_map(|n| Reference::parse(n).ok())
        .find(|n| n.registry() == dest.registry() && n.repository() != dest.repository())
        .map(|n| n.repository().to_string());
    let client = client(insecure)?;
    let rt = runtime()?;
    let progress = Progress::new(0);

    // Prefer pushing the whole index when we hold all of it.
    for index_digest in &image.index_digests {
        let Ok(bytes) = store.content().read_limited(index_digest, 16 << 20) else {
            continue;
        };
        let Ok(index) = Manifest::parse(bytes, None, index_digest.as_str()) else {
            continue;
        };
        let mut complete = true;
        let mut manifests = Vec::new();
        for entry in &index.manifests {
            let sd = super::store_digest(&entry.digest);
            match store
                .content()
                .read_limited(&sd, 16 << 20)
                .ok()
                .and_then(|b| {
                    Manifest::parse(b, Some(&entry.media_type), entry.digest.as_str()).ok()
                }) {
                Some(m) if blobs_present(store, &m) => manifests.push(m),
                _ => complete = false,
            }
        }
        if !complete {
            continue;
        }
        for m in &manifests {
            rt.block_on(push_image(
                &client,
                store,
                &dest,
                m,
                mount_from.as_deref(),
                &progress,
            ))?;
            rt.block_on(client.push_manifest(
                &dest.with_digest(m.digest.clone()),
                &m.media_type,
                m.bytes.clone(),
            ))?;
        }
        let digest =
            rt.block_on(client.push_manifest(&dest, &index.media_type, index.bytes.clone()))?;
        return Ok(Pushed {
            destination: dest,
            digest,
        });
    }

    let bytes = store
        .content()
        .read_limited(&image.manifest_digest, 16 << 20)?;
    let manifest = Manifest::parse(
        bytes,
        Some(&image.manifest_media_type),
        image.manifest_digest.as_str(),
    )?;
    if !blobs_present(store, &manifest) {
        bail!(
            "{source}: some layer blobs are not in the store (only the unpacked layers are); pull the image again to fetch them"
        );
    }
    rt.block_on(push_image(
        &client,
        store,
        &dest,
        &manifest,
        mount_from.as_deref(),
        &progress,
    ))?;
    let digest =
        rt.block_on(client.push_manifest(&dest, &manifest.media_type, manifest.bytes.clone()))?;
    Ok(Pushed {
        destination: dest,
        digest,
    })
}

fn blobs_present(store: &Store, m: &Manifest) -> bool {
    m.config.iter().chain(&m.layers).all(|d| {
        store
            .content()
            .info(&super::store_digest(&d.digest))
            .ok()
            .flatten()
            == Some(d.size)
    })
}

async fn push_image(
    client: &Client,
    store: &Store,
    dest: &Reference,
    m: &Manifest,
    mount_from: Option<&str>,
    progress: &Progress,
) -> anyhow::Result<()> {
    for d in m.config.iter().chain(&m.layers) {
        let file = store.content().open(&super::store_digest(&d.digest))?;
        let how = client
            .push_blob(dest, &d.digest, d.size, file, mount_from)
            .await?;
        let what = match how {
            BlobPush::Exists => "exists".to_string(),
            BlobPush::Mounted => format!("mounted from {}", mount_from.unwrap_or("")),
            BlobPush::Uploaded => "uploaded".to_string(),
            BlobPush::Chunked(n) => format!("uploaded in {n} chunks"),
        };
        progress.line(&format!("blob {} {} {what}", d.digest, d.size));
    }
    Ok(())
}
