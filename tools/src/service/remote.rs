//! The remote-snapshotter fast path: lamina fetches a layer itself when
//! containerd's puller says where it comes from, as stargz-snapshotter does.
//!
//! containerd's CRI image puller (and any client using
//! `snapshotters.AppendInfoHandlerWrapper`) labels the Prepare of a layer
//! extraction with, besides `containerd.io/snapshot.ref` (the chain id the
//! committed snapshot will have):
//!
//! | label | value |
//! |---|---|
//! | `containerd.io/snapshot/cri.image-ref` | the image reference, `host/repo:tag` |
//! | `containerd.io/snapshot/cri.manifest-digest` | the platform's image manifest |
//! | `containerd.io/snapshot/cri.layer-digest` | the compressed layer blob |
//! | `containerd.io/snapshot/cri.image-layers` | this and the following layer digests, comma-separated (lamina reads the manifest instead) |
//!
//! When the target layer is not in the store yet, [`Fetcher::fetch`] reads
//! the manifest (by digest) and the config from the registry of the image
//! reference, takes the layer's diff id from the config, and checks that the
//! parent's chain id plus that diff id is the `snapshot.ref` value before
//! anything is downloaded. The blob then goes through `lamina pull`'s own
//! ingest and unpack ([`crate::transfer::pull::fetch_layer`]): verified
//! digest, resumable, crash-safe, the same `layers/<chain>` dir `lamina pull`
//! uses, never unpacked twice (the store's per-chain lock; here also one fetch
//! per target at a time). Meanwhile the blobs of the image's next layers
//! (those whose layer is not in the store) are downloaded in the background
//! ([`crate::transfer::pull::fetch_blob`], at most [`PREFETCH`] at once):
//! containerd prepares layers one after another, and this keeps the
//! downloads parallel as `lamina pull`'s are; when containerd asks for such a
//! layer only its unpack is left (a Prepare that comes while its blob is
//! still downloading waits on the store's ingest lock, never downloads it
//! twice). A failed prefetch is only logged: the layer's own Prepare fetches
//! it again or falls back. The snapshotter then registers the committed
//! snapshot and answers AlreadyExists, so containerd neither fetches nor
//! applies the layer.
//!
//! Any failure (labels missing or malformed, registry unreachable, auth
//! refused, blob or manifest missing, digest or chain id mismatch, unpack
//! error) is the caller's to log; it then prepares as usual and containerd
//! takes the slow path. Credentials and plain-HTTP rules are `lamina
//! pull`'s (loopback registries over plain HTTP, credentials from lamina's
//! or docker's auth file).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail, ensure};
use lamina_registry::{Client, Descriptor, Kind, Reference};
use lamina_store::{LayerInfo, Store};

use super::snapshots::LABEL_TARGET;
use crate::transfer;

/// The image reference the layer belongs to.
pub const LABEL_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// The digest of the image manifest (the platform's, not an index).
pub const LABEL_MANIFEST: &str = "containerd.io/snapshot/cri.manifest-digest";
/// The digest of the compressed layer blob.
pub const LABEL_LAYER: &str = "containerd.io/snapshot/cri.layer-digest";

/// How many images' manifests and diff ids are remembered: CRI prepares an
/// image's layers one after another.
const CACHED_IMAGES: usize = 16;

/// Blob prefetches running at once (across images).
pub const PREFETCH: usize = 4;

/// What a labelled Prepare asks lamina to fetch.
#[derive(Debug, Clone)]
pub struct Request {
    /// The image reference (`cri.image-ref`).
    pub image: Reference,
    /// The image manifest (`cri.manifest-digest`).
    pub manifest: lamina_registry::Digest,
    /// The layer blob (`cri.layer-digest`).
    pub layer: lamina_registry::Digest,
    /// The chain id the layer must have (`containerd.io/snapshot.ref`).
    pub target: lamina_store::Digest,
}

impl Request {
    /// The request in a Prepare's labels: `None` when they do not ask for a
    /// remote layer (any of the four labels absent), an error when they do
    /// but a value is malformed.
    pub fn from_labels(labels: &HashMap<String, String>) -> Option<anyhow::Result<Request>> {
        let get = |k: &str| labels.get(k).map(String::as_str);
        let (target, image, manifest, layer) = (
            get(LABEL_TARGET)?,
            get(LABEL_IMAGE_REF)?,
            get(LABEL_MANIFEST)?,
            get(LABEL_LAYER)?,
        );
        Some((|| {
            Ok(Request {
                image: Reference::parse(image)
                    .with_context(|| format!("label {LABEL_IMAGE_REF}={image:?}"))?,
                manifest: lamina_registry::Digest::parse(manifest)
                    .with_context(|| format!("label {LABEL_MANIFEST}={manifest:?}"))?,
                layer: lamina_registry::Digest::parse(layer)
                    .with_context(|| format!("label {LABEL_LAYER}={layer:?}"))?,
                target: lamina_store::Digest::parse(target)
                    .with_context(|| format!("label {LABEL_TARGET}={target:?}"))?,
            })
        })())
    }
}

/// An image's layers as the fast path needs them.
struct ImageLayers {
    layers: Vec<Descriptor>,
    diff_ids: Vec<lamina_store::Digest>,
}

/// Fetches labelled layers into lamina's store.
pub struct Fetcher {
    store: Arc<Store>,
    /// `lamina pull`'s client, kept for the daemon's life (connections and
    /// tokens). It notices credentials written later (`lamina login`, an
    /// edited auth file) by itself, at the latest when the registry refuses.
    client: Client,
    /// Recently used images, by `registry/repo@manifest`, newest last.
    images: Mutex<VecDeque<(String, Arc<ImageLayers>)>>,
    /// One fetch per target chain id at a time; a second Prepare of the same
    /// layer waits and then finds it in the store.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Blobs being prefetched (by digest), and the limit on how many at once.
    prefetching: Arc<Mutex<HashSet<String>>>,
    prefetch_slots: Arc<tokio::sync::Semaphore>,
}

impl Fetcher {
    /// A fetcher into `store`, with `lamina pull`'s registry client settings
    /// (environment knobs, credentials, plain HTTP on loopback only).
    pub fn new(store: Arc<Store>) -> anyhow::Result<Self> {
        Ok(Fetcher {
            store,
            client: transfer::client(false)?,
            images: Mutex::new(VecDeque::new()),
            inflight: Mutex::new(HashMap::new()),
            prefetching: Arc::new(Mutex::new(HashSet::new())),
            prefetch_slots: Arc::new(tokio::sync::Semaphore::new(PREFETCH)),
        })
    }

    /// Makes `layers/<target>` exist for `req` on top of the chain `parent`
    /// (`None`: the bottom layer), fetching and unpacking the blob unless it
    /// is there already. Fails, before downloading anything, when the layer
    /// is not in the manifest or its chain id would not be the target.
    pub async fn fetch(
        &self,
        req: &Request,
        parent: Option<&lamina_store::Digest>,
    ) -> anyhow::Result<LayerInfo> {
        let slot = self
            .inflight
            .lock()
            .unwrap()
            .entry(req.target.to_string())
            .or_default()
            .clone();
        let result = {
            let _one = slot.lock().await;
            self.fetch_locked(req, parent).await
        };
        drop(slot);
        let mut inflight = self.inflight.lock().unwrap();
        if inflight
            .get(req.target.as_str())
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            inflight.remove(req.target.as_str());
        }
        result
    }

    /// The registry client (a cheap handle).
    fn client(&self) -> Client {
        self.client.clone()
    }

    async fn fetch_locked(
        &self,
        req: &Request,
        parent: Option<&lamina_store::Digest>,
    ) -> anyhow::Result<LayerInfo> {
        let image = self.image(req).await?;
        let Some(idx) = image.layers.iter().position(|l| l.digest == req.layer) else {
            bail!(
                "layer {} is not in manifest {} of {}",
                req.layer,
                req.manifest,
                req.image
            );
        };
        let diff_id = &image.diff_ids[idx];
        let chain = lamina_store::chain_id(parent, diff_id);
        ensure!(
            chain == req.target,
            "layer {} (diff id {diff_id}) on top of {} has chain id {chain}, not the {} {}",
            req.layer,
            parent.map_or("nothing".to_owned(), |p| p.to_string()),
            LABEL_TARGET,
            req.target
        );
        self.prefetch_above(req, &image, idx, &chain);
        let (info, fetched) = transfer::pull::fetch_layer(
            self.store.clone(),
            &self.client(),
            &req.image,
            &image.layers[idx],
            diff_id,
            parent,
        )
        .await?;
        ensure!(
            info.chain_id == req.target,
            "the store made layer {} for {}, not {}",
            info.chain_id,
            req.layer,
            req.target
        );
        tracing::info!(
            layer = %req.layer,
            chain = %info.chain_id,
            image = %req.image,
            fetched,
            "layer fetched by lamina (remote fast path)"
        );
        Ok(info)
    }

    /// Starts background downloads of the blobs of the layers above
    /// `idx` (whose chain, going up from `chain`, is not in the store).
    fn prefetch_above(
        &self,
        req: &Request,
        image: &ImageLayers,
        idx: usize,
        chain: &lamina_store::Digest,
    ) {
        let mut chain = chain.clone();
        for (desc, diff) in image.layers.iter().zip(&image.diff_ids).skip(idx + 1) {
            chain = lamina_store::chain_id(Some(&chain), diff);
            let present = self.store.layer_dir(&chain).is_dir()
                || matches!(
                    self.store.content().info(&transfer::store_digest(&desc.digest)),
                    Ok(Some(size)) if size == desc.size
                );
            if present
                || !self
                    .prefetching
                    .lock()
                    .unwrap()
                    .insert(desc.digest.to_string())
            {
                continue;
            }
            let (store, client, r, desc) = (
                self.store.clone(),
                self.client(),
                req.image.clone(),
                desc.clone(),
            );
            let (slots, prefetching) = (self.prefetch_slots.clone(), self.prefetching.clone());
            tokio::spawn(async move {
                let result = match slots.acquire().await {
                    Ok(_slot) => transfer::pull::fetch_blob(store, &client, &r, &desc).await,
                    Err(e) => Err(e.into()),
                };
                match result {
                    Ok(fetched) => tracing::info!(
                        blob = %desc.digest,
                        image = %r,
                        fetched,
                        "layer blob prefetched (remote fast path)"
                    ),
                    Err(e) => tracing::warn!(
                        blob = %desc.digest,
                        image = %r,
                        "prefetching a layer blob failed (its own Prepare tries again): {e:#}"
                    ),
                }
                prefetching.lock().unwrap().remove(desc.digest.as_str());
            });
        }
    }

    /// The manifest's layers and the config's diff ids, from the cache or
    /// the registry (both verified against their digests).
    async fn image(&self, req: &Request) -> anyhow::Result<Arc<ImageLayers>> {
        let key = format!("{}@{}", req.image.name(), req.manifest);
        if let Some((_, img)) = self.images.lock().unwrap().iter().find(|(k, _)| *k == key) {
            return Ok(img.clone());
        }
        let at = req.image.with_digest(req.manifest.clone());
        let manifest = self
            .client()
            .manifest(&at)
            .await
            .with_context(|| format!("fetching manifest {} of {}", req.manifest, req.image))?;
        ensure!(
            manifest.kind == Kind::Image,
            "{} names an index, not an image manifest",
            req.manifest
        );
        let config = manifest
            .config
            .clone()
            .context("the image manifest has no config")?;
        let bytes = self
            .client()
            .blob_bytes(&at, &config.digest, config.size, transfer::pull::MAX_CONFIG)
            .await
            .with_context(|| format!("fetching config {} of {}", config.digest, req.image))?;
        let diff_ids = transfer::pull::diff_ids(&bytes)
            .with_context(|| format!("config {} of {}", config.digest, req.image))?;
        ensure!(
            diff_ids.len() == manifest.layers.len(),
            "{}: the manifest has {} layers but its config lists {} diff ids",
            req.image,
            manifest.layers.len(),
            diff_ids.len()
        );
        let img = Arc::new(ImageLayers {
            layers: manifest.layers,
            diff_ids,
        });
        let mut cache = self.images.lock().unwrap();
        cache.push_back((key, img.clone()));
        while cache.len() > CACHED_IMAGES {
            cache.pop_front();
        }
        Ok(img)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn requests_need_all_four_labels_and_valid_values() {
        let full = [
            (LABEL_TARGET, D1),
            (LABEL_IMAGE_REF, "127.0.0.1:5000/bench/python:latest"),
            (LABEL_MANIFEST, D2),
            (LABEL_LAYER, D3),
        ];
        let req = Request::from_labels(&labels(&full)).unwrap().unwrap();
        assert_eq!(req.image.registry(), "127.0.0.1:5000");
        assert_eq!(req.image.repository(), "bench/python");
        assert_eq!(
            (
                req.target.as_str(),
                req.manifest.as_str(),
                req.layer.as_str()
            ),
            (D1, D2, D3)
        );
        for missing in 0..full.len() {
            let mut l = labels(&full);
            l.remove(full[missing].0);
            assert!(
                Request::from_labels(&l).is_none(),
                "without {}",
                full[missing].0
            );
        }
        for (bad, value) in [
            (LABEL_TARGET, "sha256:abc"),
            (LABEL_IMAGE_REF, "Not A Ref!"),
            (LABEL_MANIFEST, "md5:00"),
            (LABEL_LAYER, ""),
        ] {
            let mut l = labels(&full);
            l.insert(bad.to_owned(), value.to_owned());
            let e = Request::from_labels(&l).unwrap().unwrap_err();
            assert!(format!("{e:#}").contains(bad), "{e:#}");
        }
    }
}
