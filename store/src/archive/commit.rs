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

impl CommitOptions {
    /// The layer writer's options.
    fn layer_options(&self) -> LayerOptions {
        LayerOptions {
            compression: self.compression,
            sparse: self.sparse,
        }
    }

    /// A config history entry for a layer made now (`created`) by `created_by`.
    fn history(&self, created: &str, created_by: &str) -> Value {
        let mut h = json!({"created": created, "created_by": created_by});
        if let Some(a) = &self.author {
            h["author"] = json!(a);
        }
        if let Some(m) = &self.message {
            h["comment"] = json!(m);
        }
        h
    }
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

/// A manifest's descriptor of a layer blob we wrote.
fn layer_descriptor(layer: &LayerDigests, blob: &Digest) -> Value {
    json!({"mediaType": layer.media_type, "digest": blob.as_str(), "size": layer.size})
}

/// Stores `cfg`, then an OCI manifest of it and `layers`, and registers that
/// manifest as an image named `name` (or unnamed).
fn register_oci(
    store: &Store,
    name: Option<&str>,
    cfg: &Value,
    layers: Vec<Value>,
) -> Result<ImageRecord> {
    let (cfg_digest, cfg_size) = store.put_json(cfg)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": {"mediaType": media_types::OCI_CONFIG, "digest": cfg_digest.as_str(), "size": cfg_size},
        "layers": layers,
    });
    let (m_digest, _) = store.put_json(&manifest)?;
    store.register_image(name, &m_digest)
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
    let lopts = opts.layer_options();
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
    let h = opts.history(&created, "lamina commit");
    match obj.get_mut("history").and_then(|x| x.as_array_mut()) {
        Some(hist) => hist.push(h),
        None => {
            obj.insert("history".into(), json!([h]));
        }
    }

    // Manifest: the base's layers (media types in OCI spelling) plus the new one.
    let (base_manifest, _) = store.manifest(&base.manifest_digest)?;
    let mut layers: Vec<Value> = base_manifest
        .layers
        .iter()
        .map(|l| json!({"mediaType": oci_layer_type(&l.media_type), "digest": l.digest.as_str(), "size": l.size}))
        .collect();
    layers.push(layer_descriptor(&layer, &blob));
    let image = register_oci(store, name, &cfg, layers)?;
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
    let lopts = opts.layer_options();
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
        layers.push(layer_descriptor(&layer, &blob));
        diff_ids.push(json!(diff_id.as_str()));
        history.push(opts.history(&created, created_by));
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
    register_oci(store, Some(name), &cfg, layers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::store;

    /// `commit_dirs` writes each dir as a layer of an OCI image: descriptors
    /// of stored blobs, the diff ids and one history entry per layer (with
    /// author and comment) in the config, and layer dirs with the dirs' files.
    #[test]
    fn commit_dirs_makes_an_oci_image_of_the_dirs() {
        let (_d, s) = store();
        let src = tempfile::tempdir().unwrap();
        let dirs: Vec<std::path::PathBuf> = ["one", "two"]
            .iter()
            .map(|n| {
                let dir = src.path().join(n);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(n), n.as_bytes()).unwrap();
                dir
            })
            .collect();
        let opts = CommitOptions {
            author: Some("an author".into()),
            message: Some("a comment".into()),
            ..CommitOptions::default()
        };
        let img = commit_dirs(&s, &dirs, "lamina.local/dirs:1", "by the test", &opts).unwrap();
        assert_eq!(img.manifest_media_type, media_types::OCI_MANIFEST);
        assert_eq!(img.names, ["lamina.local/dirs:1"]);
        let (m, _) = s.manifest(&img.manifest_digest).unwrap();
        assert_eq!(m.layers.len(), 2);
        for (l, il) in m.layers.iter().zip(&img.layers) {
            assert_eq!(s.content().info(&l.digest).unwrap(), Some(l.size));
            assert_eq!(l.media_type, Compression::Gzip.media_type());
            assert_eq!(il.digest, l.digest);
        }
        let cfg: Value = serde_json::from_slice(
            &s.content()
                .read_limited(&img.config_digest, MAX_METADATA_BLOB)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["author"], "an author");
        let diff_ids: Vec<&str> = img.layers.iter().map(|l| l.diff_id.as_str()).collect();
        assert_eq!(cfg["rootfs"]["diff_ids"], json!(diff_ids));
        let history = cfg["history"].as_array().unwrap();
        assert_eq!(history.len(), 2);
        for h in history {
            assert_eq!(h["created"], cfg["created"]);
            assert_eq!(h["created_by"], "by the test");
            assert_eq!(h["author"], "an author");
            assert_eq!(h["comment"], "a comment");
        }
        let layer_dirs = s.image_layer_dirs(&img).unwrap();
        assert_eq!(std::fs::read(layer_dirs[0].join("one")).unwrap(), b"one");
        assert_eq!(std::fs::read(layer_dirs[1].join("two")).unwrap(), b"two");
    }
}
