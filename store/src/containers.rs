//! Containers: an image plus a writable layer.
//!
//! ```text
//! containers/<id>/upper   the writable layer (overlayfs upperdir)
//! containers/<id>/work    overlayfs workdir (same file system as upper)
//! ```
//!
//! Invariants:
//! - The directories are made before the DB row is inserted and removed after
//!   the row is deleted; a dir without a row (crash in between) is removed by gc.
//! - A container keeps its image (manifest row, hence blobs and layer dirs)
//!   alive even after `rmi` removed the image's names.
//! - Ids are 64 random hex digits; any unique prefix or the name finds one.
//!   Names are unique.

use crate::error::IoContext;
use crate::images::delete_manifest;
use crate::{Digest, Error, ImageRecord, Result, Store};
use rusqlite::OptionalExtension;
use serde::Serialize;
use std::path::PathBuf;

/// A container record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    /// 64 hex digits.
    pub id: String,
    /// Optional unique name.
    pub name: Option<String>,
    /// The image name it was created from (normalised), if it was named.
    pub image_name: Option<String>,
    /// The image's manifest digest.
    pub manifest_digest: Digest,
    /// The image id (config digest).
    pub image_id: Digest,
    /// Creation time, seconds since the epoch.
    pub created: i64,
    /// `containers/<id>`.
    pub dir: PathBuf,
}

impl Container {
    /// The writable layer (overlayfs upperdir).
    pub fn upper_dir(&self) -> PathBuf {
        self.dir.join("upper")
    }

    /// The overlayfs workdir.
    pub fn work_dir(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// The 12-hex-digit short id.
    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }
}

fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

impl Store {
    /// Creates a container from an image (any form [`Store::image`] accepts)
    /// with empty `upper` and `work` dirs.
    pub fn create_container(&self, image: &str, name: Option<&str>) -> Result<Container> {
        let _lease = self.lease()?;
        let record = self.image(image)?;
        self.image_layer_dirs(&record)?;
        if let Some(n) = name
            && !valid_name(n)
        {
            return Err(Error::InvalidReference {
                reference: n.to_string(),
                reason: "container names are [a-zA-Z0-9][a-zA-Z0-9_.-]*".into(),
            });
        }
        let id = format!(
            "{:016x}{:016x}{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>(),
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let dir = self.root.join("containers").join(&id);
        for sub in ["upper", "work"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).at(&d)?;
        }
        let image_name = self.image_name_used(&record, image);
        let created = crate::db::now();
        let res = self.db.write(|tx| {
            if let Some(n) = name {
                let taken: Option<String> = tx
                    .query_row("SELECT id FROM containers WHERE name = ?1", [n], |r| r.get(0))
                    .optional()?;
                if taken.is_some() {
                    return Ok(false);
                }
            }
            tx.execute(
                "INSERT INTO containers(id, name, manifest, image_name, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![id, name, record.manifest_digest.as_str(), image_name, created],
            )?;
            Ok(true)
        });
        match res {
            Ok(true) => {}
            Ok(false) => {
                let _ = crate::remove_tree(&dir);
                return Err(Error::ContainerNameInUse(
                    name.unwrap_or_default().to_string(),
                ));
            }
            Err(e) => {
                let _ = crate::remove_tree(&dir);
                return Err(e);
            }
        }
        Ok(Container {
            id,
            name: name.map(str::to_string),
            image_name,
            manifest_digest: record.manifest_digest,
            image_id: record.id,
            created,
            dir,
        })
    }

    fn image_name_used(&self, record: &ImageRecord, input: &str) -> Option<String> {
        let normalized = crate::reference::normalize(input).ok();
        record
            .names
            .iter()
            .find(|n| n.as_str() == input || Some(*n) == normalized.as_ref())
            .cloned()
            .or_else(|| record.names.first().cloned())
    }

    /// Finds a container by id, unique id prefix or name.
    pub fn container(&self, id_or_name: &str) -> Result<Container> {
        let all = self.containers()?;
        if let Some(c) = all
            .iter()
            .find(|c| c.id == id_or_name || c.name.as_deref() == Some(id_or_name))
        {
            return Ok(c.clone());
        }
        let matches: Vec<&Container> = all
            .iter()
            .filter(|c| c.id.starts_with(id_or_name))
            .collect();
        match matches.as_slice() {
            [c] if !id_or_name.is_empty() => Ok((*c).clone()),
            [] | [_] => Err(Error::ContainerNotFound(id_or_name.to_string())),
            _ => Err(Error::Ambiguous(id_or_name.to_string())),
        }
    }

    /// Every container, oldest first.
    pub fn containers(&self) -> Result<Vec<Container>> {
        type Row = (String, Option<String>, Option<String>, String, String, i64);
        let rows: Vec<Row> = self.db.read(|c| {
            let mut st = c.prepare(
                "SELECT c.id, c.name, c.image_name, c.manifest, m.config_digest, c.created_at
                 FROM containers c JOIN manifests m ON m.digest = c.manifest ORDER BY c.created_at, c.id",
            )?;
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?
                .collect()
        })?;
        rows.into_iter()
            .map(|(id, name, image_name, manifest, config, created)| {
                Ok(Container {
                    dir: self.root.join("containers").join(&id),
                    id,
                    name,
                    image_name,
                    manifest_digest: Digest::parse(&manifest)?,
                    image_id: Digest::parse(&config)?,
                    created,
                })
            })
            .collect()
    }

    /// The image a container is based on.
    pub fn container_image(&self, container: &Container) -> Result<ImageRecord> {
        self.image_by_manifest(&container.manifest_digest)?
            .ok_or_else(|| Error::ImageNotFound(container.manifest_digest.to_string()))
    }

    /// Read-only layer dirs under a container, bottom-most first.
    pub fn container_layer_dirs(&self, container: &Container) -> Result<Vec<PathBuf>> {
        self.image_layer_dirs(&self.container_image(container)?)
    }

    /// Removes a container: its record, then its dirs (the caller unmounts
    /// first). Its image goes too if `rmi` already removed the image's names.
    pub fn remove_container(&self, id_or_name: &str) -> Result<Container> {
        let c = self.container(id_or_name)?;
        let manifest = c.manifest_digest.clone();
        self.db.write(|tx| {
            tx.execute("DELETE FROM containers WHERE id = ?1", [&c.id])?;
            let pending: Option<i64> = tx
                .query_row(
                    "SELECT rmi_pending FROM manifests WHERE digest = ?1
                     AND NOT EXISTS (SELECT 1 FROM images WHERE manifest = ?1)
                     AND NOT EXISTS (SELECT 1 FROM containers WHERE manifest = ?1)",
                    [manifest.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            if pending == Some(1) {
                delete_manifest(tx, &manifest)?;
            }
            Ok(())
        })?;
        crate::remove_tree(&c.dir)?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use crate::Error;
    use crate::testutil::{store, two_layer_image};

    #[test]
    fn create_find_remove() {
        let (_d, s) = store();
        let m = two_layer_image(&s, false, "a");
        let img = s.register_image(Some("a"), &m).unwrap();
        let c = s.create_container("a", Some("web")).unwrap();
        assert_eq!(c.id.len(), 64);
        assert!(c.upper_dir().is_dir() && c.work_dir().is_dir());
        assert_eq!(c.image_name.as_deref(), Some("docker.io/library/a:latest"));
        assert_eq!(c.image_id, img.id);
        assert_eq!(s.container("web").unwrap(), c);
        assert_eq!(s.container(&c.id[..8]).unwrap(), c);
        assert_eq!(
            s.container_layer_dirs(&c).unwrap(),
            s.image_layer_dirs(&img).unwrap()
        );
        assert!(matches!(
            s.create_container("a", Some("web")),
            Err(Error::ContainerNameInUse(_))
        ));
        let c2 = s.create_container(img.id.short(), None).unwrap();
        assert_eq!(s.containers().unwrap().len(), 2);
        // rmi keeps the image while containers use it.
        let r = s.remove_image("a", false).unwrap();
        assert_eq!(r.deleted, None);
        assert!(s.image(img.id.as_str()).is_ok());
        s.remove_container("web").unwrap();
        assert!(!c.dir.exists());
        assert!(s.image(img.id.as_str()).is_ok(), "c2 still uses it");
        s.remove_container(&c2.id).unwrap();
        assert!(matches!(
            s.image(img.id.as_str()),
            Err(Error::ImageNotFound(_))
        ));
        assert!(matches!(
            s.container("web"),
            Err(Error::ContainerNotFound(_))
        ));
    }
}
