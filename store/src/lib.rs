//! lamina's image store: content-addressed blobs, SQLite metadata, unpacked
//! layers shared between images, and containers (writable layers).
//!
//! ```text
//! <root>/
//!   lamina.db (+ -wal, -shm)   metadata; schema and migrations in the `db` module
//!   blobs/sha256/<hex>         verified immutable blobs           (content)
//!   ingest/<sha256(key)>/      resumable partial blobs            (content)
//!   layers/<chainid hex>/      one unpacked layer, overlayfs format (layers)
//!   layers/<x>.tmp-<token>/    an unpack in progress (or a crash leftover)
//!   containers/<id>/upper      a container's writable layer, + work/ (containers)
//!   locks/                     flock files (see the lock module)
//! ```
//!
//! Crash and concurrency invariants (details in each module):
//! - Blobs and layer dirs become visible complete, by rename; a DB row naming
//!   a layer dir or container dir is written after the dir is complete and
//!   removed before the dir is. Whatever a crash leaves (ingests, `*.tmp-*`
//!   dirs, dirs without a row) is either resumed, removed by [`Store::open`],
//!   or removed by [`Store::gc`].
//! - Several processes share one store: SQLite WAL + `BEGIN IMMEDIATE`
//!   transactions for metadata, flock locks for work on files (one unpack per
//!   layer, one writer per ingest) and a store-wide gc lock that every writer
//!   holds shared ([`Store::lease`]) and `gc` holds exclusive.
//!
//! See `docs/architecture.md` for the overview.

pub mod archive;
pub mod containers;
pub mod content;
mod db;
pub mod digest;
pub mod error;
pub mod fsck;
pub mod gc;
pub mod images;
pub mod import;
pub mod layers;
pub mod lock;
pub mod reference;
pub mod sys;
pub mod time;

pub use containers::Container;
pub use content::{ContentStore, Ingest};
pub use digest::Digest;
pub use error::{Error, Result};
pub use fsck::FsckReport;
pub use gc::GcReport;
pub use images::{ImageLayer, ImageRecord};
pub use layers::{LayerInfo, chain_id};

use error::IoContext;
use lock::{FileLock, LockMode};
use std::path::{Path, PathBuf};

/// An open store. `Send + Sync`: share it between threads with an `Arc`.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    db: db::Db,
    content: ContentStore,
}

/// Keeps gc away while held: gc waits until every lease is dropped.
///
/// Hold one across "write blobs / unpack layers, then reference them from
/// the DB" (a pull, a load, a commit); the store's own writing functions
/// take one internally for their own duration.
#[derive(Debug)]
pub struct Lease {
    _lock: FileLock,
}

impl Store {
    /// Opens (creating) the store at `root`: makes the tree, opens the DB in
    /// WAL mode, applies migrations and removes what a crashed process left
    /// behind (temp layer dirs nobody is writing). Partial ingests are kept
    /// for resume.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        let root = root.as_ref().to_path_buf();
        for dir in ["blobs/sha256", "ingest", "layers", "containers", "locks"] {
            let d = root.join(dir);
            std::fs::create_dir_all(&d).at(&d)?;
        }
        let db = db::Db::open(&root.join("lamina.db"))?;
        let store = Store {
            content: ContentStore::new(&root),
            db,
            root,
        };
        store.remove_stale_layer_tmp()?;
        Ok(store)
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The blob store.
    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    /// Takes a shared hold on the store-wide gc lock (waits while gc runs).
    pub fn lease(&self) -> Result<Lease> {
        Ok(Lease {
            _lock: FileLock::lock(&self.lock_path("gc.lock"), LockMode::Shared)?,
        })
    }

    /// The current schema version of the metadata DB.
    pub fn schema_version(&self) -> Result<i64> {
        self.db.version()
    }

    pub(crate) fn lock_path(&self, name: &str) -> PathBuf {
        self.root.join("locks").join(name)
    }
}

/// Removes a directory tree even where read-only dirs (mode 0555 in a layer)
/// would stop a non-root caller.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() != std::io::ErrorKind::PermissionDenied => {
            return Err(Error::io(path, e));
        }
        Err(_) => {}
    }
    // Make every directory writable, then retry.
    fn open_up(dir: &Path) {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(path);
    std::fs::remove_dir_all(path).at(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Store>();
    }

    #[test]
    fn open_creates_tree_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for d in ["blobs/sha256", "ingest", "layers", "containers", "locks"] {
            assert!(dir.path().join(d).is_dir(), "{d}");
        }
        assert!(dir.path().join("lamina.db").is_file());
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), db::MIGRATIONS.len() as i64);
    }
}

/// Fixtures for the unit tests: small tar layers built in memory.
#[cfg(test)]
pub(crate) mod testutil {
    /// A tar with the given (path, content) regular files.
    pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// gzip of `data`.
    pub fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A fresh store in a temp dir.
    pub fn store() -> (tempfile::TempDir, crate::Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::Store::open(dir.path()).unwrap();
        (dir, s)
    }

    /// Stores a two-layer image (`docker` = Docker schema2 media types) and returns its manifest digest.
    pub fn two_layer_image(s: &crate::Store, docker: bool, tag: &str) -> crate::Digest {
        use crate::Digest;
        let l1 = tar(&[("etc/a", b"one")]);
        let l2 = tar(&[("etc/b", tag.as_bytes())]);
        let (g1, g2) = (gzip(&l1), gzip(&l2));
        let d1 = s.content().put(&g1, None).unwrap();
        let d2 = s.content().put(&g2, None).unwrap();
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
            "rootfs": {"type": "layers", "diff_ids": [Digest::of(&l1), Digest::of(&l2)]},
            "history": [{"created_by": "one"}, {"created_by": "two", "comment": tag}],
        });
        let config = serde_json::to_vec(&config).unwrap();
        let dc = s.content().put(&config, None).unwrap();
        let (mt, cmt, lmt) = if docker {
            (
                crate::images::media_types::DOCKER_MANIFEST,
                crate::images::media_types::DOCKER_CONFIG,
                crate::images::media_types::DOCKER_LAYER_GZIP,
            )
        } else {
            (
                crate::images::media_types::OCI_MANIFEST,
                crate::images::media_types::OCI_CONFIG,
                crate::images::media_types::OCI_LAYER_GZIP,
            )
        };
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": mt,
            "config": {"mediaType": cmt, "digest": dc, "size": config.len()},
            "layers": [
                {"mediaType": lmt, "digest": d1, "size": g1.len()},
                {"mediaType": lmt, "digest": d2, "size": g2.len()},
            ],
        });
        s.content()
            .put(&serde_json::to_vec(&manifest).unwrap(), None)
            .unwrap()
    }
}
