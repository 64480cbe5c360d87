//! `lamina commit`: a container's upper dir -> a new image on top of its image.
//!
//! The layer is written by [`super::layer_writer`] straight into a content
//! ingest (compressed and hashed in one pass, reading only the upper dir),
//! then the new config (diff id appended, a history entry), a new OCI
//! manifest, and the name. While it is written, the same uncompressed tar is
//! unpacked into a layer dir by the store's unpacker (on another thread), so
//! the result can be mounted, used for containers and committed again, like
//! any pulled image. Either side failing fails the commit; the unpacker
//! never sees a cut-off stream as a complete layer.

use super::layer_writer::{
    Compression, LayerDigests, LayerOptions, READER_STOPPED, stream, write_layer_tee,
};
use crate::error::IoContext;
use crate::images::{MAX_METADATA_BLOB, media_types};
use crate::{Digest, Error, ImageRecord, Result, Store};
use serde_json::{Value, json};

/// Options of [`commit`].
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// History comment (`-m`).
    pub message: Option<String>,
    /// Author (`--author`), also the config's `author`.
    pub author: Option<String>,
    /// Layer compression.
    pub compression: Compression,
    /// Write files with holes as sparse entries.
    pub sparse: bool,
}

/// What [`commit`] made.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The new image.
    pub image: ImageRecord,
    /// The new layer's digests.
    pub layer: LayerDigests,
}

/// The OCI equivalent of a docker layer media type (manifests we write are OCI).
fn oci_layer_type(mt: &str) -> String {
    match mt {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => media_types::OCI_LAYER_GZIP.into(),
        "application/vnd.docker.image.rootfs.diff.tar" => media_types::OCI_LAYER_TAR.into(),
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip".into()
        }
        other => other.into(),
    }
}

/// Commits the container `container` as a new image named `name` (or unnamed).
pub fn commit(
    store: &Store,
    container: &str,
    name: Option<&str>,
    opts: &CommitOptions,
) -> Result<Committed> {
    let c = store.container(container)?;
    let base = store.container_image(&c)?;
    let _lease = store.lease()?;
    let upper = c.upper_dir();
    let key = format!("commit-{}-{}", c.id, crate::time::now_nanos());
    let mut ingest = store.content().ingest(&key, None)?;
    let lopts = LayerOptions {
        compression: opts.compression,
        sparse: opts.sparse,
    };
    // The tar goes to the compressor (-> blob) and, at the same time, to the
    // store's unpacker (-> layer dir), so the layer is read from the upper once.
    let unpack_name = format!("committed layer of container {}", c.id);
    let (mut tee, tee_reader) = stream();
    let (written, unpacked) = std::thread::scope(|scope| {
        let unpacker =
            scope.spawn(|| store.unpack_layer(base.top_chain_id(), None, tee_reader, &unpack_name));
        let written =
            write_layer_tee(&upper, &mut ingest, Some(&mut tee), &lopts).and_then(|(d, _)| {
                tee.finish().at(&upper)?;
                Ok(d)
            });
        let unpacked = unpacker.join().unwrap_or_else(|_| {
            Err(Error::Archive {
                path: upper.clone(),
                reason: "the unpacking thread panicked".into(),
            })
        });
        (written, unpacked)
    });
    let (layer, info) = match (written, unpacked) {
        (Ok(layer), Ok(info)) => (layer, info),
        (w, u) => {
            let _ = ingest.abort();
            // When both failed, one caused the other: the writer's error is
            // only "reader stopped" when the unpacker failed first.
            return Err(match (w, u) {
                (Err(we), Err(ue)) if we.to_string().contains(READER_STOPPED) => ue,
                (Err(we), _) => we,
                (_, Err(ue)) => ue,
                _ => unreachable!("both succeeded above"),
            });
        }
    };
    let blob = ingest.commit()?;
    if blob.as_str() != layer.digest || info.diff_id.as_str() != layer.diff_id {
        return Err(Error::Archive {
            path: upper.clone(),
            reason: format!(
                "the stored layer hashes to {blob} (unpacked: {}), the writer saw {} ({})",
                info.diff_id, layer.digest, layer.diff_id
            ),
        });
    }
    store.record_layer_blob(&blob, &info.diff_id, layer.media_type)?;
    let diff_id = Digest::parse(&layer.diff_id)?;

    // Config: keep every field of the base, append the diff id and a history entry.
    let cfg_bytes = store
        .content()
        .read_limited(&base.config_digest, MAX_METADATA_BLOB)?;
    let mut cfg: Value = serde_json::from_slice(&cfg_bytes).map_err(|e| Error::InvalidImage {
        digest: base.config_digest.clone(),
        reason: format!("not JSON: {e}"),
    })?;
    let created = crate::time::now_rfc3339();
    let obj = cfg.as_object_mut().ok_or_else(|| Error::InvalidImage {
        digest: base.config_digest.clone(),
        reason: "config is not a JSON object".into(),
    })?;
    obj.insert("created".into(), json!(created));
    if let Some(a) = &opts.author {
        obj.insert("author".into(), json!(a));
    }
    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    match rootfs.get_mut("diff_ids").and_then(|d| d.as_array_mut()) {
        Some(ids) => ids.push(json!(diff_id.as_str())),
        None => rootfs["diff_ids"] = json!([diff_id.as_str()]),
    }
    let mut h = json!({"created": created, "created_by": "lamina commit"});
    if let Some(a) = &opts.author {
        h["author"] = json!(a);
    }
    if let Some(m) = &opts.message {
        h["comment"] = json!(m);
    }
    match obj.get_mut("history").and_then(|x| x.as_array_mut()) {
        Some(hist) => hist.push(h),
        None => {
            obj.insert("history".into(), json!([h]));
        }
    }
    let (cfg_digest, cfg_size) = store.put_json(&cfg)?;

    // Manifest: the base's layers (media types in OCI spelling) plus the new one.
    let (base_manifest, _) = store.manifest(&base.manifest_digest)?;
    let mut layers: Vec<Value> = base_manifest
        .layers
        .iter()
        .map(|l| json!({"mediaType": oci_layer_type(&l.media_type), "digest": l.digest.as_str(), "size": l.size}))
        .collect();
    layers
        .push(json!({"mediaType": layer.media_type, "digest": blob.as_str(), "size": layer.size}));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": {"mediaType": media_types::OCI_CONFIG, "digest": cfg_digest.as_str(), "size": cfg_size},
        "layers": layers,
    });
    let (m_digest, _) = store.put_json(&manifest)?;

    let image = store.register_image(name, &m_digest)?;
    Ok(Committed { image, layer })
}

/// Makes an image named `name` from whole layer dirs in overlayfs format,
/// `dirs` bottom-most first (the containerd snapshotter's committed
/// snapshots, whose original layer blobs lamina may not have). Every dir is
/// written as a layer blob by [`super::layer_writer`] with `opts`; the config
/// has the host platform, the diff ids and one history entry per layer
/// (`created_by`); the manifest is OCI. Registering unpacks the new layers
/// into layer dirs as for any loaded image, so the result can be saved,
/// pushed, run and removed like any other.
pub fn commit_dirs(
    store: &Store,
    dirs: &[std::path::PathBuf],
    name: &str,
    created_by: &str,
    opts: &CommitOptions,
) -> Result<ImageRecord> {
    let _lease = store.lease()?;
    let lopts = LayerOptions {
        compression: opts.compression,
        sparse: opts.sparse,
    };
    let created = crate::time::now_rfc3339();
    let (mut layers, mut diff_ids, mut history) = (Vec::new(), Vec::new(), Vec::new());
    for dir in dirs {
        let key = format!("commit-dirs-{}", crate::time::now_nanos());
        let mut ingest = store.content().ingest(&key, None)?;
        let layer = match super::layer_writer::write_layer(dir, &mut ingest, &lopts) {
            Ok((layer, _)) => layer,
            Err(e) => {
                let _ = ingest.abort();
                return Err(e);
            }
        };
        let blob = ingest.commit()?;
        if blob.as_str() != layer.digest {
            return Err(Error::Archive {
                path: dir.clone(),
                reason: format!(
                    "the stored layer hashes to {blob}, the writer saw {}",
                    layer.digest
                ),
            });
        }
        let diff_id = Digest::parse(&layer.diff_id)?;
        store.record_layer_blob(&blob, &diff_id, layer.media_type)?;
        layers.push(
            json!({"mediaType": layer.media_type, "digest": blob.as_str(), "size": layer.size}),
        );
        diff_ids.push(json!(diff_id.as_str()));
        let mut h = json!({"created": created, "created_by": created_by});
        if let Some(a) = &opts.author {
            h["author"] = json!(a);
        }
        if let Some(m) = &opts.message {
            h["comment"] = json!(m);
        }
        history.push(h);
    }
    let (os, architecture) = crate::import::host_platform();
    let mut cfg = json!({
        "created": created,
        "architecture": architecture,
        "os": os,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    if let Some(a) = &opts.author {
        cfg["author"] = json!(a);
    }
    let (cfg_digest, cfg_size) = store.put_json(&cfg)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": {"mediaType": media_types::OCI_CONFIG, "digest": cfg_digest.as_str(), "size": cfg_size},
        "layers": layers,
    });
    let (m_digest, _) = store.put_json(&manifest)?;
    store.register_image(Some(name), &m_digest)
}
