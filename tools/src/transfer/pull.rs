//! `lamina pull`: registry → store.
//!
//! 1. Resolve the reference (index → the platform's manifest) and fetch the
//!    config (small, verified in memory) for the diff ids.
//! 2. Plan: a layer whose dir and blob are both in the store is skipped; a
//!    blob already present is not downloaded; a layer dir already present is
//!    not unpacked.
//! 3. Download the layers concurrently, each straight into the store ingest
//!    keyed by the blob digest (so a killed pull resumes from what reached
//!    the disk, with `Range`). The size is checked by the registry client as
//!    the bytes arrive; the sha256 is computed once, by the ingest as it
//!    writes them (the part found on disk at resume included), compared
//!    with the digest at the end of the stream, before the unpacker sees
//!    its last bytes, and again by the ingest commit.
//! 4. Meanwhile every layer to unpack has its own thread, all at once: a
//!    fresh download is teed into its unpacker while it downloads (see
//!    [`super::tee`]: the unpacker gets the blob's last bytes only after the
//!    registry client verified the digest of the whole stream, so a corrupt
//!    blob never becomes a layer dir); a resumed or spilled one is unpacked
//!    from the committed (re-verified) blob. A layer above the bottom one
//!    unpacks with [`Store::unpack_layer_on_pending_parent`]: it waits for
//!    the layer below only where it needs it (at a hardlink into it; the
//!    metadata of directories it does not list is copied after its last
//!    entry) and before it is renamed into place, so layer dirs still
//!    appear bottom-up and only complete.
//! 5. Store config, manifest (and index) as blobs, then register the image
//!    under its name. A failure before this step leaves only resumable
//!    ingests (and verified blobs/layers nothing references, which gc
//!    removes).

use super::progress::Progress;
use super::tee::{TeeWriter, tee};
use super::{client, runtime, store_digest};
use anyhow::{Context as _, anyhow, bail};
use futures::StreamExt as _;
use lamina_registry::{Bytes, Client, Digest, Error as RegistryError, Platform, Reference};
use lamina_store::{ImageRecord, Store};
use std::io::Write as _;
use std::sync::{Arc, Condvar, Mutex};

/// How much of a layer may queue in memory for an unpacker that has not
/// started yet; past it the layer is unpacked from its blob after the
/// download.
const TEE_BUDGET: u64 = 256 << 20;
/// Largest config accepted.
pub(crate) const MAX_CONFIG: u64 = 16 << 20;

/// What `pull` did.
pub struct Pulled {
    /// The image record.
    pub image: ImageRecord,
    /// Layer blob bytes fetched from the registry in this run.
    pub fetched: u64,
}

/// Completion of one layer's download, shared with the unpacker.
#[derive(Default)]
struct Done {
    result: Mutex<Option<Result<(), String>>>,
    cond: Condvar,
}

impl Done {
    fn set(&self, r: Result<(), String>) {
        let mut g = self.result.lock().unwrap();
        if g.is_none() {
            *g = Some(r);
        }
        drop(g);
        self.cond.notify_all();
    }
    fn wait(&self) -> Result<(), String> {
        let mut g = self.result.lock().unwrap();
        while g.is_none() {
            g = self.cond.wait(g).unwrap();
        }
        g.clone().unwrap()
    }
}

struct Layer {
    idx: usize,
    digest: Digest,
    media_type: String,
    size: u64,
    diff_id: lamina_store::Digest,
    unpack: bool,
    download: bool,
    tee: Option<TeeWriter>,
    done: Arc<Done>,
    /// Set when the layer is in the store (at once if it already was).
    unpacked: Arc<Done>,
}

/// Pulls `reference` into `store`.
pub fn pull(
    store: Arc<Store>,
    reference: &str,
    platform: Option<&str>,
    insecure: bool,
) -> anyhow::Result<Pulled> {
    let r = Reference::parse(reference)?;
    let platform = match platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let client = client(insecure)?;
    let rt = runtime()?;
    let _lease = store.lease()?;
    let resolved = rt.block_on(client.resolve(&r, &platform))?;
    let manifest = &resolved.manifest;
    let config = manifest
        .config
        .clone()
        .expect("image manifests have a config");
    let config_bytes =
        rt.block_on(client.blob_bytes(&r, &config.digest, config.size, MAX_CONFIG))?;
    let diff_ids =
        diff_ids(&config_bytes).with_context(|| format!("config {} of {r}", config.digest))?;
    if diff_ids.len() != manifest.layers.len() {
        bail!(
            "{r}: the manifest has {} layers but its config lists {} diff ids; the image is broken",
            manifest.layers.len(),
            diff_ids.len()
        );
    }
    let progress = Arc::new(Progress::new(manifest.layers.len()));
    progress.line(&format!("resolved {r} {}", manifest.digest));

    // Plan.
    let mut layers: Vec<Layer> = Vec::new();
    let mut parent: Option<lamina_store::Digest> = None;
    for (idx, (desc, diff)) in manifest.layers.iter().zip(&diff_ids).enumerate() {
        if !is_layer_media_type(&desc.media_type) {
            bail!(
                "{r}: layer {} has media type {:?}, which is not a container image layer",
                desc.digest,
                desc.media_type
            );
        }
        let chain = lamina_store::chain_id(parent.as_ref(), diff);
        let sd = store_digest(&desc.digest);
        let have_layer = store.has_layer(&chain)?;
        let have_blob = store.content().info(&sd)? == Some(desc.size);
        let first = layers.iter().find(|l| l.digest == desc.digest);
        let (download, done) = match first {
            Some(f) => (false, f.done.clone()),
            None => (!have_blob, Arc::new(Done::default())),
        };
        if !download && first.is_none() {
            done.set(Ok(()));
        }
        let unpack = !have_layer;
        let unpacked = Arc::new(Done::default());
        if !unpack {
            unpacked.set(Ok(()));
        }
        layers.push(Layer {
            idx,
            digest: desc.digest.clone(),
            media_type: desc.media_type.clone(),
            size: desc.size,
            diff_id: diff.clone(),
            unpack,
            download,
            tee: (unpack && download).then(|| tee(TEE_BUDGET)),
            done,
            unpacked,
        });
        parent = Some(chain);
    }
    for l in &layers {
        if !l.download {
            progress.start(l.idx, l.digest.as_str(), l.size, l.size, "present");
        }
    }

    // Unpackers: one thread per layer to unpack, all at once.
    let mut unpackers = Vec::new();
    let mut parent: Option<lamina_store::Digest> = None;
    let mut below: Option<Arc<Done>> = None;
    for l in &layers {
        let chain = lamina_store::chain_id(parent.as_ref(), &l.diff_id);
        if l.unpack {
            let job = UnpackJob {
                store: store.clone(),
                label: format!("{} (layer {} of {r})", l.digest, l.idx + 1),
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
                diff_id: l.diff_id.clone(),
                parent: parent.clone(),
                below: below.clone(),
                tee: l.tee.clone(),
                done: l.done.clone(),
            };
            let (progress, idx, digest, unpacked) = (
                progress.clone(),
                l.idx,
                l.digest.clone(),
                l.unpacked.clone(),
            );
            unpackers.push(
                std::thread::Builder::new()
                    .name(format!("lamina-unpack-{}", l.idx))
                    .spawn(move || -> anyhow::Result<()> {
                        let result = job.run();
                        match &result {
                            Ok(()) => {
                                progress.event(idx, digest.as_str(), "unpacked");
                                unpacked.set(Ok(()));
                            }
                            Err(e) => unpacked.set(Err(format!("{e:#}"))),
                        }
                        result
                    })?,
            );
        }
        below = Some(l.unpacked.clone());
        parent = Some(chain);
    }

    // Downloads, concurrently.
    let concurrency = super::env_u64("LAMINA_PULL_CONCURRENCY")
        .unwrap_or(4)
        .max(1) as usize;
    let fetched = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let download_result: anyhow::Result<()> = rt.block_on(async {
        let jobs = layers.iter().filter(|l| l.download).map(|l| {
            let (client, store, r, progress, fetched) = (
                client.clone(),
                store.clone(),
                r.clone(),
                progress.clone(),
                fetched.clone(),
            );
            let (digest, size, idx, tee, done) = (
                l.digest.clone(),
                l.size,
                l.idx,
                l.tee.clone(),
                l.done.clone(),
            );
            async move {
                let res = download(
                    &client,
                    &store,
                    &r,
                    &digest,
                    size,
                    idx,
                    tee.as_ref(),
                    &progress,
                    &fetched,
                )
                .await;
                if let Err(e) = &res {
                    if let Some(t) = &tee {
                        t.finish(Err(format!("{e:#}")));
                    }
                    done.set(Err(format!("{e:#}")));
                } else {
                    done.set(Ok(()));
                }
                res
            }
        });
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(jobs)
            .buffer_unordered(concurrency)
            .collect()
            .await;
        results.into_iter().collect()
    });
    // The first failure in layer order: a layer above a failed one fails
    // only because its parent never came.
    let mut unpack_result = Ok(());
    for t in unpackers {
        let r = t.join().map_err(|_| anyhow!("an unpack thread panicked"))?;
        if unpack_result.is_ok() {
            unpack_result = r;
        }
    }
    download_result?;
    unpack_result?;

    let content = store.content();
    content.put(&config_bytes, Some(&store_digest(&config.digest)))?;
    let manifest_digest = content.put(&manifest.bytes, Some(&store_digest(&manifest.digest)))?;
    let index_digest = match &resolved.index {
        Some(ix) => Some(content.put(&ix.bytes, Some(&store_digest(&ix.digest)))?),
        None => None,
    };
    let name = match (r.tag(), r.digest()) {
        (Some(t), _) => format!("{}:{t}", r.name()),
        (None, Some(d)) => format!("{}@{d}", r.name()),
        (None, None) => format!("{}:latest", r.name()),
    };
    let image =
        store.register_image_from_index(Some(&name), index_digest.as_ref(), &manifest_digest)?;
    Ok(Pulled {
        image,
        fetched: fetched.load(std::sync::atomic::Ordering::SeqCst),
    })
}

/// One layer's unpack, on its own thread.
struct UnpackJob {
    store: Arc<Store>,
    label: String,
    digest: Digest,
    media_type: String,
    diff_id: lamina_store::Digest,
    /// Chain id of the layer below.
    parent: Option<lamina_store::Digest>,
    /// Completion of the layer below (`None` for the bottom layer).
    below: Option<Arc<Done>>,
    tee: Option<TeeWriter>,
    /// Completion of this layer's download.
    done: Arc<Done>,
}

impl UnpackJob {
    fn run(self) -> anyhow::Result<()> {
        let UnpackJob {
            store,
            label,
            digest,
            media_type,
            diff_id,
            parent,
            below,
            tee,
            done,
        } = self;
        let wait_parent = || match &below {
            Some(b) => b.wait().map_err(|e| format!("the layer below failed: {e}")),
            None => Ok(()),
        };
        if let Some(reader) = tee.as_ref().and_then(|t| t.reader()) {
            let r = store.unpack_layer_on_pending_parent(
                parent.as_ref(),
                &diff_id,
                reader,
                &label,
                wait_parent,
            );
            if let Err(e) = r {
                // A download failure explains a broken stream better.
                done.wait().map_err(|d| anyhow!(d))?;
                return Err(anyhow::Error::new(e).context(format!("unpacking {label}")));
            }
            return Ok(());
        }
        done.wait().map_err(|d| anyhow!(d))?;
        let sd = store_digest(&digest);
        match &below {
            // The bottom layer: remembers blob -> diff id too.
            None => {
                store
                    .unpack_layer_blob(None, &sd, &media_type, Some(&diff_id), &label)
                    .with_context(|| format!("unpacking {label}"))?;
            }
            Some(_) => {
                let file = store.content().open(&sd)?;
                store
                    .unpack_layer_on_pending_parent(
                        parent.as_ref(),
                        &diff_id,
                        file,
                        &label,
                        wait_parent,
                    )
                    .with_context(|| format!("unpacking {label}"))?;
            }
        }
        Ok(())
    }
}

/// Fetches one layer of an image into `store` the way [`pull`] fetches each
/// of its layers: the same ingest (resumable, digest verified before the
/// unpacker sees the blob's last bytes), the same unpack under the store's
/// per-chain lock, so the same `layers/<chain>` dir, shared with `lamina
/// pull` and never unpacked twice. `layer` is the blob in repository `r`,
/// `diff_id` its uncompressed digest, `parent` the chain id below it (which
/// must be in the store). Nothing is downloaded when the layer is already
/// there, and only the unpack when its blob is. Prints nothing. Used by the
/// snapshotter's remote fast path; returns the layer and the blob bytes
/// fetched from the registry.
pub async fn fetch_layer(
    store: Arc<Store>,
    client: &Client,
    r: &Reference,
    layer: &lamina_registry::Descriptor,
    diff_id: &lamina_store::Digest,
    parent: Option<&lamina_store::Digest>,
) -> anyhow::Result<(lamina_store::LayerInfo, u64)> {
    if !is_layer_media_type(&layer.media_type) {
        bail!(
            "{r}: layer {} has media type {:?}, which is not a container image layer",
            layer.digest,
            layer.media_type
        );
    }
    let chain = lamina_store::chain_id(parent, diff_id);
    let present = {
        let (store, chain) = (store.clone(), chain.clone());
        tokio::task::spawn_blocking(move || store.layer(&chain)).await??
    };
    if let Some(info) = present {
        return Ok((info, 0));
    }
    let sd = store_digest(&layer.digest);
    let have_blob = store.content().info(&sd)? == Some(layer.size);
    let done = Arc::new(Done::default());
    if have_blob {
        done.set(Ok(()));
    }
    let tee_w = (!have_blob).then(|| tee(TEE_BUDGET));
    // The parent is complete already: nothing to wait for below.
    let below = parent.map(|_| {
        let d = Arc::new(Done::default());
        d.set(Ok(()));
        d
    });
    let job = UnpackJob {
        store: store.clone(),
        label: format!("{} (of {r})", layer.digest),
        digest: layer.digest.clone(),
        media_type: layer.media_type.clone(),
        diff_id: diff_id.clone(),
        parent: parent.cloned(),
        below,
        tee: tee_w.clone(),
        done: done.clone(),
    };
    let unpacker = tokio::task::spawn_blocking(move || job.run());
    let fetched = std::sync::atomic::AtomicU64::new(0);
    let download_result = if have_blob {
        Ok(())
    } else {
        let res = download(
            client,
            &store,
            r,
            &layer.digest,
            layer.size,
            0,
            tee_w.as_ref(),
            &Progress::quiet(1),
            &fetched,
        )
        .await;
        match &res {
            Err(e) => {
                if let Some(t) = &tee_w {
                    t.finish(Err(format!("{e:#}")));
                }
                done.set(Err(format!("{e:#}")));
            }
            Ok(()) => done.set(Ok(())),
        }
        res
    };
    let unpack_result = unpacker.await.context("the unpack task panicked")?;
    download_result?;
    unpack_result?;
    let info = {
        let (store, c) = (store.clone(), chain.clone());
        tokio::task::spawn_blocking(move || store.layer(&c)).await??
    }
    .ok_or_else(|| anyhow!("layer {chain} is not in the store after its unpack"))?;
    Ok((info, fetched.load(std::sync::atomic::Ordering::SeqCst)))
}

/// Downloads the blob `layer` of repository `r` into the store's content (no
/// unpack) the way [`pull`] does: resumable ingest, digest verified before
/// the commit; nothing when it is there already. Prints nothing. The
/// snapshotter's fast path prefetches an image's next layers with it.
/// Returns the bytes fetched.
pub async fn fetch_blob(
    store: Arc<Store>,
    client: &Client,
    r: &Reference,
    layer: &lamina_registry::Descriptor,
) -> anyhow::Result<u64> {
    let fetched = std::sync::atomic::AtomicU64::new(0);
    if store.content().info(&store_digest(&layer.digest))? != Some(layer.size) {
        download(
            client,
            &store,
            r,
            &layer.digest,
            layer.size,
            0,
            None,
            &Progress::quiet(1),
            &fetched,
        )
        .await?;
    }
    Ok(fetched.load(std::sync::atomic::Ordering::SeqCst))
}

enum Msg {
    Chunk(Bytes),
    /// End of the stream: `Ok(blob url)` exactly `size` bytes arrived
    /// (their digest is the sink's to check), `Err((message, data_is_bad))`.
    End(Result<String, (String, bool)>),
}

#[allow(clippy::too_many_arguments)]
async fn download(
    client: &Client,
    store: &Arc<Store>,
    r: &Reference,
    digest: &Digest,
    size: u64,
    idx: usize,
    tee: Option<&TeeWriter>,
    progress: &Progress,
    fetched: &std::sync::atomic::AtomicU64,
) -> anyhow::Result<()> {
    let sd = store_digest(digest);
    let ingest = {
        let (store, sd) = (store.clone(), sd.clone());
        tokio::task::spawn_blocking(move || {
            store
                .content()
                .ingest(sd.as_str(), Some((sd.clone(), size)))
        })
        .await??
    };
    let offset = ingest.offset();
    if offset >= size {
        if let Some(t) = tee {
            t.abandon();
        }
        progress.start(idx, digest.as_str(), size, size, "present");
        tokio::task::spawn_blocking(move || ingest.commit()).await??;
        return Ok(());
    }
    match tee {
        Some(t) if offset == 0 => t.begin(),
        Some(t) => t.abandon(),
        None => {}
    }
    let state = if offset == 0 {
        "download".to_string()
    } else {
        format!("resume {offset}")
    };
    progress.start(idx, digest.as_str(), size, offset, &state);

    // The sink owns the ingest on a blocking thread: file writes and the tee.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(64);
    let sink_tee = tee.cloned();
    let expected = sd.clone();
    let sink = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut ingest = ingest;
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                Msg::Chunk(b) => {
                    ingest
                        .write_all(&b)
                        .context("writing to the store's ingest")?;
                    if let Some(t) = &sink_tee {
                        t.push(b);
                    }
                }
                Msg::End(Ok(url)) => {
                    // The reader checked the size; the digest is checked here,
                    // once, by the ingest that hashed every byte it wrote (the
                    // registry client does not hash them again). Only then
                    // may the unpacker see the end of the stream (a teed
                    // download starts at offset 0), and it may finish while
                    // the ingest syncs and commits.
                    let actual = ingest.digest();
                    if actual != expected {
                        let e = RegistryError::DigestMismatch {
                            url,
                            expected: expected.to_string(),
                            actual: actual.to_string(),
                        }
                        .to_string();
                        if let Some(t) = &sink_tee {
                            t.finish(Err(e.clone()));
                        }
                        ingest.abort()?;
                        bail!(e);
                    }
                    if let Some(t) = &sink_tee {
                        t.finish(Ok(()));
                    }
                    ingest.flush().context("writing to the store's ingest")?;
                    let started = std::time::Instant::now();
                    let key = ingest.key().to_string();
                    ingest.commit()?;
                    tracing::debug!(blob = key, "blob committed in {:?}", started.elapsed());
                    return Ok(());
                }
                Msg::End(Err((e, bad))) => {
                    if let Some(t) = &sink_tee {
                        t.finish(Err(e.clone()));
                    }
                    if bad {
                        ingest.abort()?;
                    }
                    bail!(e);
                }
            }
        }
        // The sender went away: keep the partial data for resume.
        bail!("download interrupted")
    });

    let mut reader = match client.blob(r, digest, Some(size), offset).await {
        Ok(mut rd) => {
            // The ingest hashes every byte (the part on disk at resume too).
            rd.verified_by_caller();
            rd
        }
        Err(e) => {
            let _ = tx.send(Msg::End(Err((e.to_string(), false)))).await;
            drop(tx);
            let _ = sink.await;
            return Err(e.into());
        }
    };
    let result = loop {
        match reader.next_chunk().await {
            Ok(Some(chunk)) => {
                let n = chunk.len() as u64;
                fetched.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                progress.advance(idx, n);
                if tx.send(Msg::Chunk(chunk)).await.is_err() {
                    break Ok(());
                }
            }
            Ok(None) => {
                let _ = tx.send(Msg::End(Ok(reader.url().to_string()))).await;
                break Ok(());
            }
            Err(e) => {
                let bad = matches!(
                    e,
                    RegistryError::DigestMismatch { .. } | RegistryError::SizeMismatch { .. }
                );
                let _ = tx.send(Msg::End(Err((e.to_string(), bad)))).await;
                break Err(e);
            }
        }
    };
    drop(tx);
    let sunk = sink.await?;
    result?;
    sunk?;
    progress.event(
        idx,
        digest.as_str(),
        &format!("done {}", reader.offset() - offset),
    );
    Ok(())
}

/// The `rootfs.diff_ids` of an image config.
pub(crate) fn diff_ids(config: &[u8]) -> anyhow::Result<Vec<lamina_store::Digest>> {
    let v: serde_json::Value =
        serde_json::from_slice(config).context("the image config is not JSON")?;
    let ids = v
        .pointer("/rootfs/diff_ids")
        .and_then(|d| d.as_array())
        .ok_or_else(|| anyhow!("the image config has no rootfs.diff_ids"))?;
    ids.iter()
        .map(|d| {
            let s = d
                .as_str()
                .ok_or_else(|| anyhow!("a diff id is not a string"))?;
            Ok(lamina_store::Digest::parse(s)?)
        })
        .collect()
}

fn is_layer_media_type(mt: &str) -> bool {
    mt.starts_with("application/vnd.oci.image.layer.")
        || mt.starts_with("application/vnd.docker.image.rootfs.")
}
