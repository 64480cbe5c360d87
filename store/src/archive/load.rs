//! `lamina load`: docker-archives (old `<id>/layer.tar` and new
//! `blobs/sha256` layouts) and OCI archives (`oci-layout` + `index.json`).
//!
//! The archive is read once, as a stream:
//! - every blob-like file goes into the content store through an ingest and
//!   is verified there (`blobs/sha256/<hex>` against its name, `<hex>.json`
//!   configs too; other files get their digest computed);
//! - metadata files (`index.json`, `manifest.json`, `repositories`, ...)
//!   are kept in memory, at most [`MAX_METADATA_BLOB`] each;
//! - entry paths that are absolute or climb out with `..` are refused, and an
//!   entry bigger than the archive file is refused before reading it.
//!
//! Only after the whole archive is read and every image is checked
//! (manifest, config and each layer present and well-formed) are images
//! registered; if registering one fails, names registered by this load are
//! rolled back. Blobs already verified stay in content (gc removes them if
//! nothing refers to them).
//!
//! docker-archive images get an OCI manifest built here (layer media type
//! tar, tar+gzip or tar+zstd as the stored file is), so they are stored like
//! pulled images.

use crate::error::IoContext;
use crate::images::{MAX_METADATA_BLOB, media_types};
use crate::{Digest, Error, Result, Store};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::{Component, Path};

/// An image that [`load`] registered.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    /// The names given to it (may be empty).
    pub names: Vec<String>,
    /// Its id (config digest).
    pub id: Digest,
    /// Its manifest digest.
    pub manifest: Digest,
}

/// A file of the archive stored in content.
#[derive(Debug, Clone)]
struct Stored {
    digest: Digest,
    size: u64,
    head: [u8; 4],
}

/// Reads the archive `path` into the store.
pub fn load_file(store: &Store, path: &Path) -> Result<Vec<LoadedImage>> {
    let f = std::fs::File::open(path).at(path)?;
    let len = f.metadata().at(path)?.len();
    load(store, BufReader::with_capacity(1 << 20, f), Some(len), path)
}

fn bad(archive: &Path, reason: impl Into<String>) -> Error {
    Error::Archive {
        path: archive.to_path_buf(),
        reason: reason.into(),
    }
}

/// Normalises an entry path: relative, no `..` escaping, no `.` parts.
fn clean_path(archive: &Path, raw: &[u8]) -> Result<String> {
    let s = std::str::from_utf8(raw)
        .map_err(|_| bad(archive, format!("entry name {raw:?} is not UTF-8")))?;
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(s).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().unwrap_or_default()),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(bad(
                        archive,
                        format!("entry {s:?} points outside the archive; refusing it"),
                    ));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad(
                    archive,
                    format!("entry {s:?} has an absolute path; refusing it"),
                ));
            }
        }
    }
    Ok(parts.join("/"))
}

/// Resolves a link target relative to the entry that holds it.
fn resolve_link(archive: &Path, entry: &str, target: &[u8]) -> Result<String> {
    let t = std::str::from_utf8(target)
        .map_err(|_| bad(archive, format!("link target of {entry:?} is not UTF-8")))?;
    if t.starts_with('/') {
        return Err(bad(
            archive,
            format!("entry {entry:?} links to the absolute path {t:?}; refusing it"),
        ));
    }
    let parent = entry.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    let joined = if parent.is_empty() {
        t.to_string()
    } else {
        format!("{parent}/{t}")
    };
    clean_path(archive, joined.as_bytes())
}

fn is_metadata_name(p: &str) -> bool {
    matches!(
        p,
        "index.json" | "manifest.json" | "repositories" | "oci-layout"
    ) || p.ends_with("/json")
        || p.ends_with("/VERSION")
}

fn hex_name(s: &str) -> Option<&str> {
    (s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(s)
}

/// Captures the first bytes read through it (to sniff compression).
struct Sniff<R> {
    inner: R,
    head: [u8; 4],
    seen: usize,
}

impl<R: Read> Read for Sniff<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let take = (4 - self.seen).min(n);
        self.head[self.seen..self.seen + take].copy_from_slice(&buf[..take]);
        self.seen += take;
        Ok(n)
    }
}

/// Reads an archive stream into the store and registers its images.
/// `archive_len` (when known) bounds entry sizes.
pub fn load<R: Read>(
    store: &Store,
    reader: R,
    archive_len: Option<u64>,
    archive: &Path,
) -> Result<Vec<LoadedImage>> {
    let _lease = store.lease()?;
    let mut ar = tar::Archive::new(reader);
    let mut stored: HashMap<String, Stored> = HashMap::new();
    let mut meta: HashMap<String, Vec<u8>> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let token = format!("load-{}-{}", std::process::id(), crate::time::now_nanos());
    let read_err = |source: std::io::Error| {
        bad(
            archive,
            format!("cannot read the archive as a tar: {source}"),
        )
    };
    for (i, entry) in ar.entries().map_err(read_err)?.enumerate() {
        let mut entry = entry.map_err(read_err)?;
        let path = clean_path(archive, &entry.path_bytes())?;
        let size = entry.size();
        if let Some(total) = archive_len
            && size > total
        {
            return Err(bad(
                archive,
                format!(
                    "entry {path:?} claims {size} bytes, more than the whole archive ({total}); the archive is corrupt"
                ),
            ));
        }
        let ty = entry.header().entry_type();
        if ty.is_symlink() || ty.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| bad(archive, format!("link {path:?} has no target")))?;
            let resolved = if ty.is_hard_link() {
                clean_path(archive, &target)?
            } else {
                resolve_link(archive, &path, &target)?
            };
            links.insert(path, resolved);
            continue;
        }
        if !ty.is_file() {
            continue;
        }
        let base = path.rsplit('/').next().unwrap_or("");
        let blob_hex = path.strip_prefix("blobs/sha256/").and_then(hex_name);
        let config_hex = if path.contains('/') {
            None
        } else {
            base.strip_suffix(".json").and_then(hex_name)
        };
        if blob_hex.is_none() && config_hex.is_none() && is_metadata_name(&path) {
            if size > MAX_METADATA_BLOB {
                return Err(bad(
                    archive,
                    format!(
                        "metadata file {path:?} is {size} bytes; refusing more than {MAX_METADATA_BLOB}"
                    ),
                ));
            }
            let mut v = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut v).map_err(read_err)?;
            meta.insert(path, v);
            continue;
        }
        let expected = match blob_hex.or(config_hex) {
            Some(hex) => Some((Digest::from_hex(hex)?, size)),
            None => None,
        };
        let mut sniff = Sniff {
            inner: &mut entry,
            head: [0; 4],
            seen: 0,
        };
        let key = format!("{token}-{i}");
        let (digest, got) = match store
            .content()
            .put_reader(&key, &mut sniff, expected.clone())
        {
            Ok(r) => r,
            Err(e @ (Error::DigestMismatch { .. } | Error::SizeMismatch { .. })) => {
                return Err(bad(
                    archive,
                    format!("entry {path:?} does not match its digest: {e}"),
                ));
            }
            Err(e) => return Err(e),
        };
        let head = if sniff.seen >= 4 || expected.is_none() {
            sniff.head
        } else {
            read_head(store, &digest)?
        };
        stored.insert(
            path,
            Stored {
                digest,
                size: got,
                head,
            },
        );
    }
    let lookup = |p: &str| -> Option<Stored> {
        let mut p = p.to_string();
        for _ in 0..16 {
            if let Some(s) = stored.get(&p) {
                return Some(s.clone());
            }
            p = links.get(&p)?.clone();
        }
        None
    };
    let plans = if meta.contains_key("index.json") {
        plan_oci(store, archive, &meta, &lookup)?
    } else if meta.contains_key("manifest.json") {
        plan_docker(store, archive, &meta, &lookup)?
    } else {
        return Err(bad(
            archive,
            "has neither index.json (OCI) nor manifest.json (docker-archive); is it an image archive?",
        ));
    };
    if plans.is_empty() {
        return Err(bad(archive, "lists no images"));
    }
    for p in &plans {
        check_image(store, archive, &p.manifest)?;
    }
    register(store, &plans)
}

fn read_head(store: &Store, d: &Digest) -> Result<[u8; 4]> {
    let mut f = store.content().open(d)?;
    let mut head = [0u8; 4];
    let _ = f.read(&mut head);
    Ok(head)
}

/// One image to register.
struct Plan {
    names: Vec<String>,
    manifest: Digest,
    index: Option<Digest>,
}

fn parse_json(archive: &Path, name: &str, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes)
        .map_err(|e| bad(archive, format!("{name} is not valid JSON: {e}")))
}

fn plan_oci(
    store: &Store,
    archive: &Path,
    meta: &HashMap<String, Vec<u8>>,
    lookup: &dyn Fn(&str) -> Option<Stored>,
) -> Result<Vec<Plan>> {
    let index = parse_json(archive, "index.json", &meta["index.json"])?;
    // RepoTags from a docker manifest.json alongside (docker >= 25), by config digest.
    let mut tags_by_config: HashMap<String, Vec<String>> = HashMap::new();
    if let Some(m) = meta.get("manifest.json")
        && let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(m)
    {
        for it in items {
            let cfg = it["Config"]
                .as_str()
                .unwrap_or("")
                .rsplit('/')
                .next()
                .unwrap_or("")
                .trim_end_matches(".json")
                .to_string();
            tags_by_config.insert(cfg, repo_tags(&it));
        }
    }
    let mut plans: Vec<Plan> = Vec::new();
    let descs = index["manifests"]
        .as_array()
        .ok_or_else(|| bad(archive, "index.json has no \"manifests\" list"))?;
    for desc in descs {
        let digest = desc_digest(archive, desc, "index.json")?;
        require_blob(archive, lookup, &digest, "index.json")?;
        let mt = desc["mediaType"].as_str().unwrap_or("");
        let ann = &desc["annotations"];
        let mut names = Vec::new();
        if let Some(n) = ann["io.containerd.image.name"].as_str() {
            names.push(n.to_string());
        } else if let Some(r) = ann["org.opencontainers.image.ref.name"].as_str() {
            // A full reference (podman, lamina) is a name; a bare tag is not.
            if r.contains('/') || r.contains(':') {
                names.push(r.to_string());
            }
        }
        let (manifest, index_digest) =
            if mt == media_types::OCI_INDEX || mt == media_types::DOCKER_MANIFEST_LIST {
                (
                    pick_platform(store, archive, lookup, &digest)?,
                    Some(digest),
                )
            } else {
                (digest, None)
            };
        if names.is_empty()
            && let Ok((m, _)) = store.manifest(&manifest)
            && let Some(t) = tags_by_config.get(m.config.digest.hex())
        {
            names.extend(t.iter().cloned());
        }
        match plans.iter_mut().find(|p| p.manifest == manifest) {
            Some(p) => p.names.extend(names),
            None => plans.push(Plan {
                names,
                manifest,
                index: index_digest,
            }),
        }
    }
    Ok(plans)
}

/// The `RepoTags` of a docker `manifest.json` item.
fn repo_tags(item: &Value) -> Vec<String> {
    item["RepoTags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn desc_digest(archive: &Path, desc: &Value, file: &str) -> Result<Digest> {
    let s = desc["digest"]
        .as_str()
        .ok_or_else(|| bad(archive, format!("a descriptor in {file} has no digest")))?;
    Digest::parse(s).map_err(|_| {
        bad(
            archive,
            format!("{file} names the unsupported or malformed digest {s:?}"),
        )
    })
}

fn require_blob(
    archive: &Path,
    lookup: &dyn Fn(&str) -> Option<Stored>,
    d: &Digest,
    from: &str,
) -> Result<()> {
    if lookup(&format!("blobs/sha256/{}", d.hex())).is_none() {
        return Err(bad(
            archive,
            format!("blob {d} referenced by {from} is missing from the archive"),
        ));
    }
    Ok(())
}

/// The manifest for this machine's platform in an index (else the first).
fn pick_platform(
    store: &Store,
    archive: &Path,
    lookup: &dyn Fn(&str) -> Option<Stored>,
    index: &Digest,
) -> Result<Digest> {
    let bytes = store.content().read_limited(index, MAX_METADATA_BLOB)?;
    let v = parse_json(archive, &format!("index {index}"), &bytes)?;
    let list = v["manifests"]
        .as_array()
        .ok_or_else(|| bad(archive, format!("index {index} has no manifests")))?;
    let (os, arch) = crate::import::host_platform();
    let mut present = Vec::new();
    for m in list {
        let d = desc_digest(archive, m, &format!("index {index}"))?;
        if lookup(&format!("blobs/sha256/{}", d.hex())).is_some() {
            let ok = m["platform"]["architecture"].as_str() == Some(arch)
                && m["platform"]["os"].as_str() == Some(os);
            present.push((ok, d));
        }
    }
    present.sort_by_key(|(ok, _)| !ok);
    present.into_iter().next().map(|(_, d)| d).ok_or_else(|| {
        bad(
            archive,
            format!("index {index} lists no manifest that the archive contains"),
        )
    })
}

fn plan_docker(
    store: &Store,
    archive: &Path,
    meta: &HashMap<String, Vec<u8>>,
    lookup: &dyn Fn(&str) -> Option<Stored>,
) -> Result<Vec<Plan>> {
    let m = parse_json(archive, "manifest.json", &meta["manifest.json"])?;
    let items = m
        .as_array()
        .ok_or_else(|| bad(archive, "manifest.json is not a list"))?;
    let mut plans = Vec::new();
    for (n, it) in items.iter().enumerate() {
        let what = format!("manifest.json entry {}", n + 1);
        let cfg_path = it["Config"]
            .as_str()
            .ok_or_else(|| bad(archive, format!("{what} has no Config")))?;
        let cfg_path = clean_path(archive, cfg_path.as_bytes())?;
        let named = |kind: &str, path: &str| {
            lookup(path).ok_or_else(|| {
                bad(
                    archive,
                    format!("{kind} {path:?} named by {what} is missing from the archive"),
                )
            })
        };
        let cfg = named("config", &cfg_path)?;
        let mut layers = Vec::new();
        for l in it["Layers"]
            .as_array()
            .ok_or_else(|| bad(archive, format!("{what} has no Layers list")))?
        {
            let lp = l
                .as_str()
                .ok_or_else(|| bad(archive, format!("{what} has a non-string layer")))?;
            let lp = clean_path(archive, lp.as_bytes())?;
            let s = named("layer", &lp)?;
            layers.push(json!({"mediaType": crate::import::layer_media_type(&s.head), "digest": s.digest.as_str(), "size": s.size}));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_MANIFEST,
            "config": {"mediaType": media_types::OCI_CONFIG, "digest": cfg.digest.as_str(), "size": cfg.size},
            "layers": layers,
        });
        let (digest, _) = store.put_json(&manifest)?;
        plans.push(Plan {
            names: repo_tags(it),
            manifest: digest,
            index: None,
        });
    }
    Ok(plans)
}

/// Checks that the manifest, config and layer blobs are present and consistent.
fn check_image(store: &Store, archive: &Path, manifest: &Digest) -> Result<()> {
    let (m, _) = store
        .manifest(manifest)
        .map_err(|e| bad(archive, format!("manifest {manifest}: {e}")))?;
    let (c, _) = store.config(&m.config.digest).map_err(|e| match e {
        Error::BlobNotFound(d) => bad(
            archive,
            format!("config {d} of manifest {manifest} is missing from the archive"),
        ),
        e => bad(archive, format!("config of manifest {manifest}: {e}")),
    })?;
    if c.rootfs.diff_ids.len() != m.layers.len() {
        return Err(bad(
            archive,
            format!(
                "manifest {manifest} has {} layers but its config lists {} diff ids",
                m.layers.len(),
                c.rootfs.diff_ids.len()
            ),
        ));
    }
    for (l, diff) in m.layers.iter().zip(&c.rootfs.diff_ids) {
        match store.content().info(&l.digest)? {
            None => {
                return Err(bad(
                    archive,
                    format!(
                        "layer blob {} of manifest {manifest} is missing from the archive",
                        l.digest
                    ),
                ));
            }
            Some(size) if size != l.size => {
                return Err(bad(
                    archive,
                    format!(
                        "layer blob {} is {size} bytes but the manifest says {}",
                        l.digest, l.size
                    ),
                ));
            }
            Some(_) => {}
        }
        // An uncompressed layer's digest is its diff id; catch a lying config early.
        let uncompressed = l.media_type == media_types::OCI_LAYER_TAR
            || l.media_type == "application/vnd.docker.image.rootfs.diff.tar";
        if uncompressed && l.digest != *diff {
            return Err(bad(
                archive,
                format!(
                    "uncompressed layer {} does not match its diff id {diff}",
                    l.digest
                ),
            ));
        }
    }
    Ok(())
}

/// Registers every planned image; on failure removes the names this load set
/// (restoring names that pointed elsewhere before).
fn register(store: &Store, plans: &[Plan]) -> Result<Vec<LoadedImage>> {
    let mut done: Vec<(String, Option<Digest>)> = Vec::new();
    let mut out = Vec::new();
    let result = (|| -> Result<()> {
        for p in plans {
            let mut names = Vec::new();
            if p.names.is_empty() {
                let rec = store.register_image_from_index(None, p.index.as_ref(), &p.manifest)?;
                out.push(LoadedImage {
                    names,
                    id: rec.id,
                    manifest: p.manifest.clone(),
                });
                continue;
            }
            let mut id = None;
            for n in &p.names {
                let norm = crate::reference::normalize(n)?;
                let before = store
                    .image(&norm)
                    .ok()
                    .filter(|i| i.names.contains(&norm))
                    .map(|i| i.manifest_digest);
                done.push((norm.clone(), before));
                let rec =
                    store.register_image_from_index(Some(&norm), p.index.as_ref(), &p.manifest)?;
                id = Some(rec.id);
                names.push(norm);
            }
            out.push(LoadedImage {
                names,
                id: id.expect("at least one name"),
                manifest: p.manifest.clone(),
            });
        }
        Ok(())
    })();
    if let Err(e) = result {
        for (name, before) in done.into_iter().rev() {
            let restored = match before {
                Some(m) => store.register_image(Some(&name), &m).map(|_| ()),
                None => store.remove_image(&name, false).map(|_| ()),
            };
            if let Err(re) = restored {
                tracing::warn!("rolling back name {name} after a failed load: {re}");
            }
        }
        return Err(e);
    }
    Ok(out)
}
