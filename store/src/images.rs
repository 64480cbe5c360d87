//! Images: a manifest (OCI or Docker schema 2) plus its config, both kept in
//! content as received, their layers unpacked, and zero or more names.
//!
//! - An image *is* its manifest row; its id is the config digest (docker's
//!   image id; 12-hex short forms are accepted wherever an image is named).
//! - Names are normalised references (`docker.io/library/alpine:latest`), each
//!   pointing at exactly one manifest; tagging an existing name moves it. An
//!   image whose last name moved away stays as a dangling image (like docker's
//!   `<none>`); [`Store::remove_image`] deletes it.
//! - `rmi` removes names; the image row goes when it has no name and no
//!   container. If containers still use it, it is marked and goes with the
//!   last of them. Blobs and layer dirs are freed later by gc.

use crate::reference;
use crate::{Digest, Error, LayerInfo, Result, Store};
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};

/// Media types the store knows.
pub mod media_types {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI uncompressed layer.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI zstd layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
}

/// Largest manifest or config the store reads into memory.
pub const MAX_METADATA_BLOB: u64 = 16 << 20;

/// A content descriptor as found in manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    #[serde(default)]
    pub media_type: String,
    /// Digest of the content.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
}

/// The parts of an image manifest the store uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// 2.
    #[serde(default)]
    pub schema_version: u32,
    /// OCI or Docker manifest media type (absent in some OCI manifests).
    #[serde(default)]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// Layers, bottom-most first.
    pub layers: Vec<Descriptor>,
}

/// The parts of an image config the store uses.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ImageConfig {
    /// RFC 3339 creation time.
    #[serde(default)]
    pub created: Option<String>,
    /// Author.
    #[serde(default)]
    pub author: Option<String>,
    /// OS.
    #[serde(default)]
    pub os: Option<String>,
    /// CPU architecture.
    #[serde(default)]
    pub architecture: Option<String>,
    /// The layers' diff ids.
    pub rootfs: RootFs,
    /// Build history, oldest first.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RootFs {
    /// `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Diff ids, bottom-most first.
    pub diff_ids: Vec<Digest>,
}

/// One `history` entry of an image config.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct HistoryEntry {
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Who.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// A comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True when the step made no layer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageLayer {
    /// Digest of the (compressed) layer blob.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Size of the blob.
    pub size: u64,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Chain id: names the layer dir.
    pub chain_id: Digest,
    /// Bytes of the uncompressed tar (0 if the layer is missing).
    pub unpacked_size: u64,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRecord {
    /// The image id: the config digest.
    pub id: Digest,
    /// Its names (normalised references), sorted.
    pub names: Vec<String>,
    /// Digest of the manifest.
    pub manifest_digest: Digest,
    /// Manifest media type.
    pub manifest_media_type: String,
    /// Digest of the config.
    pub config_digest: Digest,
    /// Creation time from the config (RFC 3339).
    pub created: Option<String>,
    /// OS from the config.
    pub os: Option<String>,
    /// Architecture from the config.
    pub architecture: Option<String>,
    /// Layers, bottom-most first.
    pub layers: Vec<ImageLayer>,
    /// Sum of the unpacked layer sizes.
    pub size: u64,
    /// Index digests the names were resolved through, if any.
    pub index_digests: Vec<Digest>,
    /// When it was added to the store (seconds since the epoch).
    pub added_at: i64,
}

impl ImageRecord {
    /// The chain id of the top layer (what a container is based on).
    pub fn top_chain_id(&self) -> Option<&Digest> {
        self.layers.last().map(|l| &l.chain_id)
    }
}

/// What [`Store::remove_image`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RemovedImage {
    /// Names removed.
    pub untagged: Vec<String>,
    /// The image id, if the image itself was deleted.
    pub deleted: Option<Digest>,
}

impl Store {
    /// Reads and parses a manifest from content. An index is refused with a
    /// message saying so (pick a platform's manifest first).
    pub fn manifest(&self, digest: &Digest) -> Result<(Manifest, Vec<u8>)> {
        let bytes = self.content.read_limited(digest, MAX_METADATA_BLOB)?;
        let invalid = |reason: String| Error::InvalidImage {
            digest: digest.clone(),
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let mt = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
        if mt == media_types::OCI_INDEX
            || mt == media_types::DOCKER_MANIFEST_LIST
            || v.get("manifests").is_some()
        {
            return Err(invalid(
                "is an image index; choose one platform's manifest from it".into(),
            ));
        }
        if !(mt.is_empty() || mt == media_types::OCI_MANIFEST || mt == media_types::DOCKER_MANIFEST)
        {
            return Err(invalid(format!("unsupported manifest media type {mt:?}")));
        }
        let m: Manifest = serde_json::from_value(v)
            .map_err(|e| invalid(format!("not an image manifest: {e}")))?;
        if m.schema_version != 2 {
            return Err(invalid(format!(
                "schema version {} is not supported (only 2)",
                m.schema_version
            )));
        }
        Ok((m, bytes))
    }

    /// Reads and parses an image config from content.
    pub fn config(&self, digest: &Digest) -> Result<(ImageConfig, Vec<u8>)> {
        let bytes = self.content.read_limited(digest, MAX_METADATA_BLOB)?;
        let c = serde_json::from_slice(&bytes).map_err(|e| Error::InvalidImage {
            digest: digest.clone(),
            reason: format!("not an image config: {e}"),
        })?;
        Ok((c, bytes))
    }

    /// Registers the image whose manifest is `manifest_digest` (manifest and
    /// config already in content), unpacking any missing layer from its blob,
    /// and names it `name` (normalised here) if given.
    pub fn register_image(
        &self,
        name: Option<&str>,
        manifest_digest: &Digest,
    ) -> Result<ImageRecord> {
        self.register_image_from_index(name, None, manifest_digest)
    }

    /// Like [`Store::register_image`], remembering that `name` was resolved
    /// through the index `index_digest` (kept alive by gc with the name).
    pub fn register_image_from_index(
        &self,
        name: Option<&str>,
        index_digest: Option<&Digest>,
        manifest_digest: &Digest,
    ) -> Result<ImageRecord> {
        let _lease = self.lease()?;
        let name = name.map(reference::normalize).transpose()?;
        let (manifest, manifest_bytes) = self.manifest(manifest_digest)?;
        let (config, config_bytes) = self.config(&manifest.config.digest)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::InvalidImage {
                digest: manifest_digest.clone(),
                reason: format!(
                    "{} layers but its config lists {} diff ids",
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            });
        }
        let mut parent: Option<Digest> = None;
        let mut layers = Vec::new();
        for (i, (desc, diff)) in manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .enumerate()
        {
            let chain = crate::chain_id(parent.as_ref(), diff);
            let info = match self.layer(&chain)? {
                Some(info) => info,
                None => self.unpack_layer_blob(
                    parent.as_ref(),
                    &desc.digest,
                    &desc.media_type,
                    Some(diff),
                    &format!("{} (layer {} of {manifest_digest})", desc.digest, i + 1),
                )?,
            };
            layers.push((desc.clone(), info));
            parent = Some(chain);
        }
        let mt = manifest
            .media_type
            .clone()
            .unwrap_or_else(|| media_types::OCI_MANIFEST.to_string());
        self.db.write(|tx| {
            tx.execute(
                "INSERT OR IGNORE INTO configs(digest, size, created, os, architecture) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    manifest.config.digest.as_str(),
                    config_bytes.len() as i64,
                    config.created,
                    config.os,
                    config.architecture
                ],
            )?;
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO manifests(digest, media_type, size, config_digest, added_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    manifest_digest.as_str(),
                    mt,
                    manifest_bytes.len() as i64,
                    manifest.config.digest.as_str(),
                    crate::db::now()
                ],
            )?;
            tx.execute(
                "UPDATE manifests SET rmi_pending = 0 WHERE digest = ?1",
                [manifest_digest.as_str()],
            )?;
            if inserted == 1 {
                for (i, (desc, info)) in layers.iter().enumerate() {
                    tx.execute(
                        "INSERT INTO manifest_layers(manifest, idx, digest, media_type, size, diff_id, chain_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        rusqlite::params![
                            manifest_digest.as_str(),
                            i as i64,
                            desc.digest.as_str(),
                            desc.media_type,
                            desc.size as i64,
                            info.diff_id.as_str(),
                            info.chain_id.as_str()
                        ],
                    )?;
                }
            }
            if let Some(n) = &name {
                tx.execute(
                    "INSERT OR REPLACE INTO images(name, manifest, index_digest, added_at) VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![
                        n,
                        manifest_digest.as_str(),
                        index_digest.map(|d| d.as_str()),
                        crate::db::now()
                    ],
                )?;
            }
            Ok(())
        })?;
        self.image_by_manifest(manifest_digest)?
            .ok_or_else(|| Error::ImageNotFound(manifest_digest.to_string()))
    }

    /// Finds an image by name (normalised as docker does), full manifest or
    /// config digest, `name@digest`, or id prefix (at least 4 hex digits).
    pub fn image(&self, name_or_id: &str) -> Result<ImageRecord> {
        let not_found = || Error::ImageNotFound(name_or_id.to_string());
        let manifest = self.resolve_image(name_or_id)?.ok_or_else(not_found)?;
        self.image_by_manifest(&manifest)?.ok_or_else(not_found)
    }

    fn resolve_image(&self, input: &str) -> Result<Option<Digest>> {
        // Full digest: manifest or config (image id).
        if let Ok(d) = Digest::parse(input) {
            return self.db.read(|c| {
                c.query_row(
                    "SELECT digest FROM manifests WHERE digest = ?1 OR config_digest = ?1 ORDER BY added_at LIMIT 1",
                    [d.as_str()],
                    |r| r.get::<_, String>(0),
                )
                .optional()
            })?
            .map(|s| Digest::parse(&s))
            .transpose();
        }
        // Exact stored name, then the normalised form.
        if let Some(d) = self.manifest_of_name(input)? {
            return Ok(Some(d));
        }
        if let Ok(n) = reference::normalize(input) {
            if let Some(d) = self.manifest_of_name(&n)? {
                return Ok(Some(d));
            }
            if let Some((_, digest)) = n.split_once('@') {
                let d = Digest::parse(digest)?;
                let present: Option<String> = self.db.read(|c| {
                    c.query_row(
                        "SELECT digest FROM manifests WHERE digest = ?1",
                        [d.as_str()],
                        |r| r.get(0),
                    )
                    .optional()
                })?;
                if present.is_some() {
                    return Ok(Some(d));
                }
            }
        }
        // Short id.
        let hex = input.strip_prefix("sha256:").unwrap_or(input);
        if (4..64).contains(&hex.len())
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            let pattern = format!("sha256:{hex}%");
            let rows: Vec<(String, String)> = self.db.read(|c| {
                let mut st = c.prepare(
                    "SELECT digest, config_digest FROM manifests WHERE config_digest LIKE ?1 ORDER BY added_at",
                )?;
                st.query_map([pattern], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
            })?;
            // Several manifests may share a config (one image id): not ambiguous.
            let mut ids: Vec<&String> = rows.iter().map(|(_, c)| c).collect();
            ids.sort();
            ids.dedup();
            if ids.len() > 1 {
                return Err(Error::Ambiguous(input.to_string()));
            }
            if let Some((m, _)) = rows.first() {
                return Ok(Some(Digest::parse(m)?));
            }
        }
        Ok(None)
    }

    fn manifest_of_name(&self, name: &str) -> Result<Option<Digest>> {
        let m: Option<String> = self.db.read(|c| {
            c.query_row("SELECT manifest FROM images WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
        })?;
        m.as_deref().map(Digest::parse).transpose()
    }

    /// The image with this manifest, if registered.
    pub fn image_by_manifest(&self, manifest: &Digest) -> Result<Option<ImageRecord>> {
        type Row = (
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            i64,
        );
        let row: Option<Row> = self.db.read(|c| {
            c.query_row(
                "SELECT m.media_type, m.config_digest, c.created, c.os, c.architecture, m.added_at
                 FROM manifests m LEFT JOIN configs c ON c.digest = m.config_digest WHERE m.digest = ?1",
                [manifest.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .optional()
        })?;
        let Some((media_type, config, created, os, architecture, added_at)) = row else {
            return Ok(None);
        };
        let (names, index_digests): (Vec<String>, Vec<Option<String>>) = self
            .db
            .read(|c| {
                let mut st = c.prepare(
                    "SELECT name, index_digest FROM images WHERE manifest = ?1 ORDER BY name",
                )?;
                st.query_map([manifest.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<Vec<(String, Option<String>)>>>()
            })?
            .into_iter()
            .unzip();
        type LayerRow = (String, String, i64, String, String, Option<i64>);
        let layer_rows: Vec<LayerRow> = self.db.read(|c| {
            let mut st = c.prepare(
                "SELECT ml.digest, ml.media_type, ml.size, ml.diff_id, ml.chain_id, l.size
                 FROM manifest_layers ml LEFT JOIN layers l ON l.chain_id = ml.chain_id
                 WHERE ml.manifest = ?1 ORDER BY ml.idx",
            )?;
            st.query_map([manifest.as_str()], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect()
        })?;
        let mut layers = Vec::with_capacity(layer_rows.len());
        for (digest, media_type, size, diff, chain, unpacked) in layer_rows {
            layers.push(ImageLayer {
                digest: Digest::parse(&digest)?,
                media_type,
                size: size as u64,
                diff_id: Digest::parse(&diff)?,
                chain_id: Digest::parse(&chain)?,
                unpacked_size: unpacked.unwrap_or(0) as u64,
            });
        }
        let mut index_digests: Vec<Digest> = index_digests
            .into_iter()
            .flatten()
            .map(|s| Digest::parse(&s))
            .collect::<Result<_>>()?;
        index_digests.sort();
        index_digests.dedup();
        let config_digest = Digest::parse(&config)?;
        Ok(Some(ImageRecord {
            id: config_digest.clone(),
            names,
            manifest_digest: manifest.clone(),
            manifest_media_type: media_type,
            config_digest,
            created,
            os,
            architecture,
            size: layers.iter().map(|l| l.unpacked_size).sum(),
            layers,
            index_digests,
            added_at,
        }))
    }

    /// Every image, newest first.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let digests: Vec<String> = self.db.read(|c| {
            let mut st =
                c.prepare("SELECT digest FROM manifests ORDER BY added_at DESC, digest")?;
            st.query_map([], |r| r.get(0))?.collect()
        })?;
        let mut out = Vec::with_capacity(digests.len());
        for d in digests {
            if let Some(rec) = self.image_by_manifest(&Digest::parse(&d)?)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Gives the image `source` (any form [`Store::image`] accepts) the name
    /// `target` (normalised here; moved if it named another image).
    pub fn tag(&self, source: &str, target: &str) -> Result<ImageRecord> {
        let image = self.image(source)?;
        let target = reference::normalize(target)?;
        self.db.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO images(name, manifest, index_digest, added_at) VALUES (?1, ?2, NULL, ?3)",
                rusqlite::params![target, image.manifest_digest.as_str(), crate::db::now()],
            )
        })?;
        self.image_by_manifest(&image.manifest_digest)?
            .ok_or_else(|| Error::ImageNotFound(source.to_string()))
    }

    /// `rmi`: given a name, removes that name; given an id or digest, removes
    /// all its names (refused without `force` if it has several). The image
    /// itself goes once it has no name, at once if no container uses it,
    /// else with its last container.
    pub fn remove_image(&self, name_or_id: &str, force: bool) -> Result<RemovedImage> {
        let image = self.image(name_or_id)?;
        let by_name = image
            .names
            .iter()
            .find(|n| {
                n.as_str() == name_or_id
                    || reference::normalize(name_or_id).ok().as_ref() == Some(n)
            })
            .cloned();
        let to_remove = match by_name {
            Some(n) => vec![n],
            None => {
                if image.names.len() > 1 && !force {
                    return Err(Error::ImageHasNames {
                        id: image.id.short().to_string(),
                        names: image.names.join(", "),
                    });
                }
                image.names.clone()
            }
        };
        let manifest = image.manifest_digest.clone();
        let deleted = self.db.write(|tx| {
            for n in &to_remove {
                tx.execute("DELETE FROM images WHERE name = ?1", [n])?;
            }
            let names: i64 = tx.query_row(
                "SELECT count(*) FROM images WHERE manifest = ?1",
                [manifest.as_str()],
                |r| r.get(0),
            )?;
            if names > 0 {
                return Ok(false);
            }
            let containers: i64 = tx.query_row(
                "SELECT count(*) FROM containers WHERE manifest = ?1",
                [manifest.as_str()],
                |r| r.get(0),
            )?;
            if containers > 0 {
                tx.execute(
                    "UPDATE manifests SET rmi_pending = 1 WHERE digest = ?1",
                    [manifest.as_str()],
                )?;
                return Ok(false);
            }
            delete_manifest(tx, &manifest)?;
            Ok(true)
        })?;
        Ok(RemovedImage {
            untagged: to_remove,
            deleted: deleted.then(|| image.id.clone()),
        })
    }

    /// The layer dirs of an image, bottom-most first. Fails with
    /// [`Error::LayerNotFound`] if one is missing (run `lamina fsck`).
    pub fn image_layer_dirs(&self, image: &ImageRecord) -> Result<Vec<std::path::PathBuf>> {
        image
            .layers
            .iter()
            .map(|l| {
                let dir = self.layer_dir(&l.chain_id);
                if dir.is_dir() {
                    Ok(dir)
                } else {
                    Err(Error::LayerNotFound(l.chain_id.clone()))
                }
            })
            .collect()
    }

    /// The unpacked layers of an image, bottom-most first.
    pub fn image_layers(&self, image: &ImageRecord) -> Result<Vec<LayerInfo>> {
        image
            .layers
            .iter()
            .map(|l| {
                self.layer(&l.chain_id)?
                    .ok_or_else(|| Error::LayerNotFound(l.chain_id.clone()))
            })
            .collect()
    }

    /// Serialises `value` into a content blob (import, commit, load); returns its digest and size.
    pub(crate) fn put_json(&self, value: &serde_json::Value) -> Result<(Digest, u64)> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::io("<json>", e.into()))?;
        let d = self.content.put(&bytes, None)?;
        Ok((d, bytes.len() as u64))
    }
}

/// Deletes an image row (and, by cascade, its layer rows) plus its config
/// row when no other manifest uses it.
pub(crate) fn delete_manifest(
    tx: &rusqlite::Transaction<'_>,
    manifest: &Digest,
) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM manifests WHERE digest = ?1",
        [manifest.as_str()],
    )?;
    tx.execute(
        "DELETE FROM configs WHERE digest NOT IN (SELECT config_digest FROM manifests)",
        [],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::testutil::{store, two_layer_image};
    use crate::{Error, chain_id};

    #[test]
    fn register_oci_and_docker_manifests() {
        let (_d, s) = store();
        for (docker, name) in [(false, "oci"), (true, "docker")] {
            let m = two_layer_image(&s, docker, name);
            let img = s.register_image(Some(name), &m).unwrap();
            assert_eq!(img.names, vec![format!("docker.io/library/{name}:latest")]);
            assert_eq!(img.manifest_digest, m);
            assert_eq!(img.layers.len(), 2);
            let c0 = chain_id(None, &img.layers[0].diff_id);
            assert_eq!(img.layers[0].chain_id, c0);
            assert_eq!(
                img.layers[1].chain_id,
                chain_id(Some(&c0), &img.layers[1].diff_id)
            );
            let dirs = s.image_layer_dirs(&img).unwrap();
            assert_eq!(std::fs::read(dirs[0].join("etc/a")).unwrap(), b"one");
            assert_eq!(
                std::fs::read(dirs[1].join("etc/b")).unwrap(),
                name.as_bytes()
            );
            assert!(
                !dirs[1].join("etc/a").exists(),
                "a layer dir holds that layer alone"
            );
            assert_eq!(s.image(name).unwrap(), img);
            assert_eq!(s.image(img.id.short()).unwrap().id, img.id);
            assert_eq!(s.image(img.id.as_str()).unwrap().id, img.id);
            assert_eq!(s.image(m.as_str()).unwrap().id, img.id);
            assert_eq!(s.image(&format!("{name}@{m}")).unwrap().id, img.id);
            // Idempotent.
            assert_eq!(s.register_image(Some(name), &m).unwrap(), img);
        }
        assert_eq!(s.images().unwrap().len(), 2);
        // The bottom layer is shared: 3 layer dirs for 4 image layers.
        assert_eq!(s.layers().unwrap().len(), 3);
    }

    #[test]
    fn an_index_is_refused() {
        let (_d, s) = store();
        let idx = s
            .content()
            .put(
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
                None,
            )
            .unwrap();
        let err = s.register_image(Some("x"), &idx).unwrap_err();
        assert!(err.to_string().contains("index"), "{err}");
    }

    #[test]
    fn tag_and_rmi() {
        let (_d, s) = store();
        let m = two_layer_image(&s, false, "a");
        let img = s.register_image(Some("a"), &m).unwrap();
        s.tag("a", "localhost:5000/b:v1").unwrap();
        let both = s.image(img.id.short()).unwrap();
        assert_eq!(
            both.names,
            vec!["docker.io/library/a:latest", "localhost:5000/b:v1"]
        );
        // By id with two names: refused without force.
        assert!(matches!(
            s.remove_image(img.id.short(), false),
            Err(Error::ImageHasNames { .. })
        ));
        let r = s.remove_image("a", false).unwrap();
        assert_eq!(r.untagged, vec!["docker.io/library/a:latest"]);
        assert_eq!(r.deleted, None);
        let r = s.remove_image("localhost:5000/b:v1", false).unwrap();
        assert_eq!(r.deleted, Some(img.id.clone()));
        assert!(matches!(s.image("a"), Err(Error::ImageNotFound(_))));
        assert!(s.images().unwrap().is_empty());
    }

    #[test]
    fn retag_leaves_a_dangling_image() {
        let (_d, s) = store();
        let m1 = two_layer_image(&s, false, "one");
        let m2 = two_layer_image(&s, false, "two");
        let i1 = s.register_image(Some("app"), &m1).unwrap();
        s.register_image(Some("app"), &m2).unwrap();
        let dangling = s.image(i1.id.as_str()).unwrap();
        assert!(dangling.names.is_empty());
        assert_eq!(
            s.remove_image(i1.id.short(), false).unwrap().deleted,
            Some(i1.id)
        );
    }
}
