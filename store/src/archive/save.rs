//! `lamina save`: images -> one tar that is both a docker-archive and an OCI
//! image layout.
//!
//! ```text
//! blobs/sha256/<hex>   every layer, config and manifest blob, once, stored as they are
//! oci-layout           {"imageLayoutVersion":"1.0.0"}
//! index.json           one descriptor per (image, name): io.containerd.image.name = full name,
//!                      org.opencontainers.image.ref.name = tag
//! manifest.json        docker-archive: [{Config, RepoTags, Layers}], paths into blobs/
//! repositories         docker's legacy {repo: {tag: top layer}}
//! ```
//! Layer blobs keep their compression (docker load and skopeo read tar and
//! tar+gzip; zstd layers are only readable by OCI-aware tools). Blobs are
//! copied file to file; nothing is recompressed or rehashed, so the
//! manifests' digests hold.

use super::tar::{Header, Kind, TarWriter};
use crate::error::IoContext;
use crate::images::MAX_METADATA_BLOB;
use crate::reference;
use crate::{Digest, Error, ImageRecord, Result, Store};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;

/// One image to save and the names to save it under.
#[derive(Debug, Clone)]
pub struct SaveItem {
    /// The image.
    pub image: ImageRecord,
    /// Names (normalised references) to record; empty saves it unnamed.
    pub names: Vec<String>,
}

/// Resolves what the user named into images: a name saves under that name,
/// an id saves under all the image's names.
pub fn resolve(store: &Store, refs: &[String]) -> Result<Vec<SaveItem>> {
    let mut items: Vec<SaveItem> = Vec::new();
    for r in refs {
        let image = store.image(r)?;
        let names = match reference::normalize(r) {
            Ok(n) if image.names.contains(&n) => vec![n],
            _ => image.names.clone(),
        };
        match items
            .iter_mut()
            .find(|i| i.image.manifest_digest == image.manifest_digest)
        {
            Some(item) => {
                for n in names {
                    if !item.names.contains(&n) {
                        item.names.push(n);
                    }
                }
            }
            None => items.push(SaveItem { image, names }),
        }
    }
    Ok(items)
}

/// docker's short form of a name: `docker.io/library/alpine:latest` -> `alpine:latest`.
pub fn familiar(name: &str) -> String {
    let n = name.strip_prefix("docker.io/").unwrap_or(name);
    n.strip_prefix("library/")
        .filter(|r| !r.contains('/'))
        .unwrap_or(n)
        .to_string()
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Writes the archive of `items` to `out` (a `File` gets file-to-file copies).
pub fn save<W: Write>(store: &Store, items: &[SaveItem], out: W, out_path: &Path) -> Result<W> {
    let out_err = |source| Error::Io {
        path: out_path.to_path_buf(),
        source,
    };
    let _lease = store.lease()?;
    let mut tw = TarWriter::new(out);
    let mut written: HashSet<Digest> = HashSet::new();
    tw.append(&dir_header("blobs")).map_err(out_err)?;
    tw.append(&dir_header("blobs/sha256")).map_err(out_err)?;
    let mut index = Vec::new();
    let mut docker_manifest = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for item in items {
        let img = &item.image;
        let mut blobs: Vec<(&Digest, &str)> =
            img.layers.iter().map(|l| (&l.digest, "layer")).collect();
        blobs.push((&img.config_digest, "config"));
        blobs.push((&img.manifest_digest, "manifest"));
        for (d, what) in blobs {
            if !written.insert(d.clone()) {
                continue;
            }
            let mut f = store.content().open(d).map_err(|e| match e {
                Error::BlobNotFound(_) => Error::Archive {
                    path: out_path.to_path_buf(),
                    reason: format!(
                        "the {what} blob {d} of image {} is not in the store; pull or load the image again",
                        img.id.short()
                    ),
                },
                e => e,
            })?;
            let path = store.content().blob_path(d);
            let size = f.metadata().at(&path)?.len();
            tw.append(&Header::simple(blob_name(d), Kind::File { size }))
                .map_err(out_err)?;
            tw.copy_data(&mut f, size).at(&path)?;
        }
        let manifest_size = store.content().info(&img.manifest_digest)?.unwrap_or(0);
        let descriptor = |annotations: Value| {
            let mut d = json!({
                "mediaType": img.manifest_media_type,
                "digest": img.manifest_digest.as_str(),
                "size": manifest_size,
            });
            if !annotations.is_null() {
                d["annotations"] = annotations;
            }
            if let (Some(os), Some(arch)) = (&img.os, &img.architecture) {
                d["platform"] = json!({"os": os, "architecture": arch});
            }
            d
        };
        let mut repo_tags = Vec::new();
        if item.names.is_empty() {
            index.push(descriptor(Value::Null));
        }
        for name in &item.names {
            let mut ann = json!({ "io.containerd.image.name": name });
            let (repo, tag) = reference::split_repo_tag(name);
            if !name.contains('@') {
                ann["org.opencontainers.image.ref.name"] = json!(tag);
                let fam = familiar(name);
                repo_tags.push(fam.clone());
                if let Some(top) = img.layers.last() {
                    repositories
                        .entry(familiar(repo))
                        .or_default()
                        .insert(tag.to_string(), top.digest.hex().to_string());
                }
            }
            index.push(descriptor(ann));
        }
        docker_manifest.push(json!({
            "Config": blob_name(&img.config_digest),
            "RepoTags": if repo_tags.is_empty() { Value::Null } else { json!(repo_tags) },
            "Layers": img.layers.iter().map(|l| blob_name(&l.digest)).collect::<Vec<_>>(),
        }));
        // Configs and manifests are metadata-sized; refuse to save a corrupt store entry.
        store
            .content()
            .read_limited(&img.config_digest, MAX_METADATA_BLOB)?;
    }
    let files: [(&str, Value); 4] = [
        (
            "index.json",
            json!({
                "schemaVersion": 2,
                "mediaType": crate::images::media_types::OCI_INDEX,
                "manifests": index,
            }),
        ),
        ("manifest.json", Value::Array(docker_manifest)),
        ("oci-layout", json!({"imageLayoutVersion": "1.0.0"})),
        (
            "repositories",
            serde_json::to_value(&repositories).unwrap_or(Value::Null),
        ),
    ];
    for (name, value) in files {
        let bytes = serde_json::to_vec(&value).map_err(|e| out_err(e.into()))?;
        tw.append(&Header::simple(
            name,
            Kind::File {
                size: bytes.len() as u64,
            },
        ))
        .map_err(out_err)?;
        tw.write_data(&bytes).map_err(out_err)?;
    }
    tw.finish().map_err(out_err)
}

fn dir_header(name: &str) -> Header {
    let mut h = Header::simple(name, Kind::Dir);
    h.mode = 0o755;
    h
}

/// Saves `refs` into the file `path` (written in place; removed on error).
pub fn save_to_file(store: &Store, refs: &[String], path: &Path) -> Result<Vec<SaveItem>> {
    let items = resolve(store, refs)?;
    let f = std::fs::File::create(path).at(path)?;
    match save(store, &items, f, path).and_then(|f| f.sync_all().at(path)) {
        Ok(()) => Ok(items),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}
