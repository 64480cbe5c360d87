//! Unpacked read-only layers, one directory per chain id, in overlayfs format.
//!
//! ```text
//! layers/<chainid hex>/            complete layer; has a `layers` DB row
//! layers/<chainid hex|new>.tmp-<token>/   unpack in progress (lock locks/unpack-<token>.lock)
//! ```
//!
//! Chain ids follow the OCI image spec: `ChainID(L0) = DiffID(L0)`,
//! `ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(Ln))`.
//!
//! Invariants:
//! - A `layers/<hex>` dir is complete: it is produced under a temp name,
//!   synced with one `syncfs(2)` (never an fsync per file) and renamed. Its DB
//!   row is written after the rename; a dir without a row is an orphan that
//!   the next unpack of that chain replaces and that gc removes.
//! - At most one process produces a given chain id: the unpacker holds
//!   `locks/layer-<hex>.lock`; a concurrent caller waits on it and then reuses
//!   the result. When the diff id is not known in advance (import), the lock
//!   is `locks/blob-<hex>.lock` on the compressed blob, whose diff id is
//!   remembered in `layer_blobs` after the first unpack.
//! - A failed unpack removes its temp dir; one left by a killed process is
//!   removed by [`crate::Store::open`] (or gc) once its unpack lock is free.

pub mod unpack;

use crate::error::IoContext;
use crate::lock::{FileLock, LockMode};
use crate::{Digest, Error, Result, Store};
use rusqlite::OptionalExtension;
use sha2::{Digest as _, Sha256};
use std::io::Read;
use std::path::PathBuf;

/// An unpacked layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LayerInfo {
    /// Its chain id (names its directory).
    pub chain_id: Digest,
    /// sha256 of its uncompressed tar.
    pub diff_id: Digest,
    /// Chain id of the layer below, if any.
    pub parent: Option<Digest>,
    /// Bytes of its uncompressed tar.
    pub size: u64,
}

/// The OCI chain id of a layer with diff id `diff_id` on top of the chain `parent`.
pub fn chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    match parent {
        None => diff_id.clone(),
        Some(p) => {
            let mut h = Sha256::new();
            h.update(p.as_str().as_bytes());
            h.update(b" ");
            h.update(diff_id.as_str().as_bytes());
            Digest::from_hasher(h)
        }
    }
}

/// The chain ids of a stack of diff ids, bottom-most first.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let c = chain_id(out.last(), d);
        out.push(c);
    }
    out
}

/// The parent layers' dirs of an unpack, nearest first.
enum Lowers<'a> {
    /// Present now.
    Known(&'a [PathBuf]),
    /// Waited for when first needed.
    Pending(Box<dyn FnOnce() -> std::result::Result<Vec<PathBuf>, String> + Send + 'a>),
}

/// A temp layer dir that is removed on drop unless persisted.
struct TmpLayer {
    path: PathBuf,
    lock: Option<FileLock>,
}

impl Drop for TmpLayer {
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take() {
            if let Err(e) = crate::remove_tree(&self.path) {
                tracing::warn!("cannot remove temp layer dir: {e}");
            }
            lock.release_and_remove();
        }
    }
}

impl Store {
    /// Where the layer `chain_id` lives (whether or not it is present).
    pub fn layer_dir(&self, chain_id: &Digest) -> PathBuf {
        self.root.join("layers").join(chain_id.hex())
    }

    /// Whether the layer is unpacked (DB row and directory).
    pub fn has_layer(&self, chain_id: &Digest) -> Result<bool> {
        Ok(self.layer(chain_id)?.is_some())
    }

    /// The layer's record if it is unpacked.
    pub fn layer(&self, chain_id: &Digest) -> Result<Option<LayerInfo>> {
        let row = self.db.read(|c| {
            c.query_row(
                "SELECT diff_id, parent, size FROM layers WHERE chain_id = ?1",
                [chain_id.as_str()],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
            .optional()
        })?;
        let Some((diff, parent, size)) = row else {
            return Ok(None);
        };
        if !self.layer_dir(chain_id).is_dir() {
            return Ok(None);
        }
        Ok(Some(LayerInfo {
            chain_id: chain_id.clone(),
            diff_id: Digest::parse(&diff)?,
            parent: parent.as_deref().map(Digest::parse).transpose()?,
            size: size as u64,
        }))
    }

    /// Every unpacked layer recorded in the DB.
    pub fn layers(&self) -> Result<Vec<LayerInfo>> {
        let rows = self.db.read(|c| {
            let mut st = c.prepare("SELECT chain_id, diff_id, parent, size FROM layers")?;
            st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter()
            .map(|(c, d, p, s)| {
                Ok(LayerInfo {
                    chain_id: Digest::parse(&c)?,
                    diff_id: Digest::parse(&d)?,
                    parent: p.as_deref().map(Digest::parse).transpose()?,
                    size: s as u64,
                })
            })
            .collect()
    }

    /// The directories of a chain, nearest (`chain_id` itself) first.
    pub fn layer_chain_dirs(&self, chain_id: &Digest) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut next = Some(chain_id.clone());
        while let Some(c) = next {
            let info = self
                .layer(&c)?
                .ok_or_else(|| Error::LayerNotFound(c.clone()))?;
            out.push(self.layer_dir(&c));
            next = info.parent;
        }
        Ok(out)
    }

    /// Unpacks a layer tar stream (gzip, zstd or plain) on top of the chain
    /// `parent` and returns the new layer.
    ///
    /// With `expected_diff_id`, an already unpacked layer is returned without
    /// reading `reader`, a concurrent unpack of the same chain is waited for
    /// and reused, and a stream whose diff id differs is refused. Without it
    /// the whole stream is unpacked first (the result is still deduplicated).
    /// On error nothing is left on disk.
    pub fn unpack_layer(
        &self,
        parent: Option<&Digest>,
        expected_diff_id: Option<&Digest>,
        reader: impl Read,
        name_for_errors: &str,
    ) -> Result<LayerInfo> {
        let _lease = self.lease()?;
        let lowers = match parent {
            Some(p) => self.layer_chain_dirs(p)?,
            None => Vec::new(),
        };
        if let Some(diff) = expected_diff_id {
            let chain = chain_id(parent, diff);
            let lock = match self.present_or_lock(&chain)? {
                Ok(info) => return Ok(info),
                Err(lock) => lock,
            };
            let (tmp, stats_diff, size) =
                self.unpack_tmp(chain.hex(), reader, Lowers::Known(&lowers), name_for_errors)?;
            check_diff_id(diff, stats_diff, name_for_errors)?;
            let info = self.persist(tmp, &chain, parent, diff, size, name_for_errors)?;
            drop(lock);
            Ok(info)
        } else {
            let (tmp, diff, size) =
                self.unpack_tmp("new", reader, Lowers::Known(&lowers), name_for_errors)?;
            let chain = chain_id(parent, &diff);
            let _lock = self.lock_layer(&chain)?;
            if let Some(info) = self.layer(&chain)? {
                tracing::info!("layer {chain} already present; dropping the new copy");
                return Ok(info);
            }
            self.persist(tmp, &chain, parent, &diff, size, name_for_errors)
        }
    }

    /// Like [`Store::unpack_layer`] with an expected diff id, but the parent
    /// chain need not exist yet: it may still be being unpacked (by another
    /// thread of this pull). `wait_parent` blocks until the parent chain is in
    /// the store (or returns why it never will be); it is called when this
    /// layer needs its lower layers while unpacking (a hardlink to a file it
    /// does not have: the tar is then waited on at that entry), once the
    /// whole tar is applied (directories its tar does not list take their
    /// metadata from the lower layers then), and before the layer is synced
    /// and renamed into place: a layer is never recorded before its parents.
    /// The result is exactly that of [`Store::unpack_layer`].
    /// It may be called several times. With `parent` `None` this is
    /// `unpack_layer(None, Some(diff_id), ..)`.
    pub fn unpack_layer_on_pending_parent(
        &self,
        parent: Option<&Digest>,
        diff_id: &Digest,
        reader: impl Read,
        name_for_errors: &str,
        wait_parent: impl Fn() -> std::result::Result<(), String> + Sync,
    ) -> Result<LayerInfo> {
        let Some(parent_chain) = parent else {
            return self.unpack_layer(None, Some(diff_id), reader, name_for_errors);
        };
        let _lease = self.lease()?;
        let chain = chain_id(parent, diff_id);
        let lock = match self.present_or_lock(&chain)? {
            Ok(info) => return Ok(info),
            Err(lock) => lock,
        };
        let parent_dirs = || -> std::result::Result<Vec<PathBuf>, String> {
            wait_parent()?;
            self.layer_chain_dirs(parent_chain)
                .map_err(|e| format!("parent layer {parent_chain}: {e}"))
        };
        let (tmp, stats_diff, size) = self.unpack_tmp(
            chain.hex(),
            reader,
            Lowers::Pending(Box::new(parent_dirs)),
            name_for_errors,
        )?;
        check_diff_id(diff_id, stats_diff, name_for_errors)?;
        // The parents first: a layer row always has its chain below it.
        if let Err(reason) = parent_dirs() {
            return Err(Error::Unpack {
                layer: name_for_errors.to_string(),
                error: unpack::UnpackError::LowerLayers {
                    layer: name_for_errors.to_string(),
                    reason,
                },
            });
        }
        let info = self.persist(tmp, &chain, parent, diff_id, size, name_for_errors)?;
        drop(lock);
        Ok(info)
    }

    /// The lock under which one process unpacks `chain` while others wait.
    fn lock_layer(&self, chain: &Digest) -> Result<FileLock> {
        FileLock::lock(
            &self.lock_path(&format!("layer-{}.lock", chain.hex())),
            LockMode::Exclusive,
        )
    }

    /// The layer `chain` if it is present, else its unpack lock. Checked again
    /// under the lock: another process may have finished it meanwhile.
    fn present_or_lock(&self, chain: &Digest) -> Result<Result<LayerInfo, FileLock>> {
        if let Some(info) = self.layer(chain)? {
            return Ok(Ok(info));
        }
        let lock = self.lock_layer(chain)?;
        match self.layer(chain)? {
            Some(info) => {
                tracing::info!("layer {chain} was unpacked by another process; reusing it");
                Ok(Ok(info))
            }
            None => Ok(Err(lock)),
        }
    }

    /// Unpacks the layer blob `blob` (already in content) on top of `parent`,
    /// remembering blob → diff id so that a later unpack of the same blob,
    /// by this or another process, is a lookup.
    pub fn unpack_layer_blob(
        &self,
        parent: Option<&Digest>,
        blob: &Digest,
        media_type: &str,
        expected_diff_id: Option<&Digest>,
        name_for_errors: &str,
    ) -> Result<LayerInfo> {
        let _lease = self.lease()?;
        let _blob_lock;
        let known = match expected_diff_id {
            Some(d) => Some(d.clone()),
            None => {
                _blob_lock = FileLock::lock(
                    &self.lock_path(&format!("blob-{}.lock", blob.hex())),
                    LockMode::Exclusive,
                )?;
                self.blob_diff_id(blob)?
            }
        };
        if let Some(diff) = &known
            && let Some(info) = self.layer(&chain_id(parent, diff))?
        {
            self.record_layer_blob(blob, diff, media_type)?;
            return Ok(info);
        }
        let file = self.content.open(blob)?;
        let info = self.unpack_layer(parent, known.as_ref(), file, name_for_errors)?;
        self.record_layer_blob(blob, &info.diff_id, media_type)?;
        Ok(info)
    }

    /// The diff id learnt for a compressed layer blob, if any.
    pub fn blob_diff_id(&self, blob: &Digest) -> Result<Option<Digest>> {
        let d: Option<String> = self.db.read(|c| {
            c.query_row(
                "SELECT diff_id FROM layer_blobs WHERE digest = ?1",
                [blob.as_str()],
                |r| r.get(0),
            )
            .optional()
        })?;
        d.as_deref().map(Digest::parse).transpose()
    }

    pub(crate) fn record_layer_blob(
        &self,
        blob: &Digest,
        diff: &Digest,
        media_type: &str,
    ) -> Result<()> {
        self.db.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO layer_blobs(digest, diff_id, media_type) VALUES (?1, ?2, ?3)",
                [blob.as_str(), diff.as_str(), media_type],
            )
        })?;
        Ok(())
    }

    fn unpack_tmp(
        &self,
        prefix: &str,
        reader: impl Read,
        lowers: Lowers<'_>,
        name: &str,
    ) -> Result<(TmpLayer, Digest, u64)> {
        let token = format!("{:016x}", rand::random::<u64>());
        // Lock first, then create: recovery never sees an unlocked live temp dir.
        let lock = FileLock::lock(
            &self.lock_path(&format!("unpack-{token}.lock")),
            LockMode::Exclusive,
        )?;
        let path = self
            .root
            .join("layers")
            .join(format!("{prefix}.tmp-{token}"));
        std::fs::create_dir(&path).at(&path)?;
        let tmp = TmpLayer {
            path,
            lock: Some(lock),
        };
        let stats = match lowers {
            Lowers::Known(dirs) => unpack::unpack(reader, &tmp.path, dirs, name),
            Lowers::Pending(load) => {
                unpack::unpack_with_pending_lowers(reader, &tmp.path, load, name)
            }
        }
        .map_err(|error| Error::Unpack {
            layer: name.to_string(),
            error,
        })?;
        tracing::debug!(layer = name, entries = stats.entries, "layer tar applied");
        let diff = Digest::parse(&stats.diff_id)?;
        Ok((tmp, diff, stats.size))
    }

    fn persist(
        &self,
        mut tmp: TmpLayer,
        chain: &Digest,
        parent: Option<&Digest>,
        diff: &Digest,
        size: u64,
        name: &str,
    ) -> Result<LayerInfo> {
        // One syncfs for the whole layer instead of an fsync per file.
        let started = std::time::Instant::now();
        let dir = std::fs::File::open(&tmp.path).at(&tmp.path)?;
        rustix::fs::syncfs(&dir).at(&tmp.path)?;
        drop(dir);
        tracing::debug!(layer = name, "layer synced in {:?}", started.elapsed());
        let target = self.layer_dir(chain);
        if target.exists() {
            // Complete (every producer renames into place) but without a row: a
            // crash between rename and insert, or a dir made by the snapshotter.
            // It may be in use, so keep it and drop ours (TmpLayer's drop).
            tracing::info!(
                "layer dir {} exists without a record; adopting it",
                target.display()
            );
        } else {
            std::fs::rename(&tmp.path, &target).at(&target)?;
            crate::content::fsync_dir(&self.root.join("layers"))?;
            if let Some(lock) = tmp.lock.take() {
                lock.release_and_remove();
            }
        }
        drop(tmp);
        self.db.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO layers(chain_id, diff_id, parent, size, added_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    chain.as_str(),
                    diff.as_str(),
                    parent.map(|p| p.as_str()),
                    size as i64,
                    crate::db::now()
                ],
            )
        })?;
        tracing::info!("unpacked layer {chain} ({name}, {size} bytes)");
        Ok(LayerInfo {
            chain_id: chain.clone(),
            diff_id: diff.clone(),
            parent: parent.cloned(),
            size,
        })
    }

    /// Records that `owner` (e.g. `"snapshots"`) uses the layer dir of
    /// `chain_id`: gc keeps it (and its DB row) until the ref is removed.
    /// Add the ref before making or relying on the dir, under a lease.
    pub fn add_layer_ref(&self, owner: &str, chain_id: &Digest) -> Result<()> {
        self.db.write(|tx| {
            tx.execute(
                "INSERT OR IGNORE INTO layer_refs(owner, chain_id, added_at) VALUES (?1, ?2, ?3)",
                rusqlite::params![owner, chain_id.as_str(), crate::db::now()],
            )
        })?;
        Ok(())
    }

    /// Drops a ref added by [`Store::add_layer_ref`] (gc may then remove the dir).
    pub fn remove_layer_ref(&self, owner: &str, chain_id: &Digest) -> Result<()> {
        self.db.write(|tx| {
            tx.execute(
                "DELETE FROM layer_refs WHERE owner = ?1 AND chain_id = ?2",
                [owner, chain_id.as_str()],
            )
        })?;
        Ok(())
    }

    /// The chain ids `owner` holds refs on.
    pub fn layer_refs(&self, owner: &str) -> Result<Vec<Digest>> {
        let rows: Vec<String> = self.db.read(|c| {
            let mut st =
                c.prepare("SELECT chain_id FROM layer_refs WHERE owner = ?1 ORDER BY chain_id")?;
            st.query_map([owner], |r| r.get(0))?.collect()
        })?;
        rows.iter().map(|r| Digest::parse(r)).collect()
    }

    /// Whether any image (manifest, dangling or used by a container) uses the
    /// layer `chain_id`.
    pub fn layer_used_by_images(&self, chain_id: &Digest) -> Result<bool> {
        let n: i64 = self.db.read(|c| {
            c.query_row(
                "SELECT count(*) FROM manifest_layers WHERE chain_id = ?1",
                [chain_id.as_str()],
                |r| r.get(0),
            )
        })?;
        Ok(n > 0)
    }

    /// Removes `layers/*.tmp-*` dirs whose unpack is no longer running.
    pub(crate) fn remove_stale_layer_tmp(&self) -> Result<usize> {
        let layers = self.root.join("layers");
        let mut removed = 0;
        for entry in std::fs::read_dir(&layers).at(&layers)? {
            let entry = entry.at(&layers)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((_, token)) = name.split_once(".tmp-") else {
                continue;
            };
            let lock_path = self.lock_path(&format!("unpack-{token}.lock"));
            if let Some(lock) = FileLock::try_lock(&lock_path, LockMode::Exclusive)? {
                tracing::info!("removing leftover temp layer {}", entry.path().display());
                crate::remove_tree(&entry.path())?;
                lock.release_and_remove();
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Fails with [`Error::DigestMismatch`] when an unpacked layer's diff id is
/// not the one its image promised.
fn check_diff_id(expected: &Digest, actual: Digest, layer: &str) -> Result<()> {
    if actual == *expected {
        return Ok(());
    }
    Err(Error::DigestMismatch {
        what: format!("diff id of layer {layer}"),
        expected: expected.clone(),
        actual,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_id_follows_the_oci_spec() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        assert_eq!(chain_id(None, &a), a);
        let expected = Digest::of(format!("{a} {b}").as_bytes());
        assert_eq!(chain_id(Some(&a), &b), expected);
        assert_eq!(chain_ids(&[a.clone(), b.clone()]), vec![a, expected]);
    }
}

#[cfg(test)]
mod store_tests {
    use crate::testutil::{gzip, store, tar};
    use crate::{Digest, Error};

    #[test]
    fn unpack_dedups_and_verifies() {
        let (d, s) = store();
        let t = tar(&[("a/b", b"hello")]);
        let diff = Digest::of(&t);
        let l = s
            .unpack_layer(None, Some(&diff), &gzip(&t)[..], "l")
            .unwrap();
        assert_eq!(l.chain_id, diff);
        assert_eq!(
            std::fs::read(s.layer_dir(&diff).join("a/b")).unwrap(),
            b"hello"
        );
        // Present: the reader is not even read.
        let again = s
            .unpack_layer(None, Some(&diff), std::io::empty(), "l")
            .unwrap();
        assert_eq!(again, l);
        // Wrong diff id: refused, nothing left.
        let other = Digest::of(b"other");
        let err = s
            .unpack_layer(None, Some(&other), &t[..], "bad")
            .unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(!s.has_layer(&other).unwrap());
        // Not a tar: refused, nothing left.
        assert!(s.unpack_layer(None, None, &b"garbage"[..], "junk").is_err());
        let names: Vec<_> = std::fs::read_dir(d.path().join("layers"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![diff.hex().to_string()]);
    }

    #[test]
    fn parallel_unpacks_of_one_layer_share_the_work() {
        let (_d, s) = store();
        let s = std::sync::Arc::new(s);
        let t = tar(&[("f", &vec![3u8; 1 << 20][..])]);
        let blob = s.content().put(&gzip(&t), None).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                let blob = blob.clone();
                std::thread::spawn(move || {
                    s.unpack_layer_blob(
                        None,
                        &blob,
                        crate::images::media_types::OCI_LAYER_GZIP,
                        None,
                        "p",
                    )
                    .unwrap()
                })
            })
            .collect();
        let infos: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(infos.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(s.layers().unwrap().len(), 1);
        assert_eq!(s.blob_diff_id(&blob).unwrap(), Some(Digest::of(&t)));
    }

    /// A tar of one hardlink `name -> target`.
    fn link_tar(name: &str, target: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Link);
        b.append_link(&mut h, name, target).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn a_layer_unpacks_while_its_parent_is_still_pending() {
        use std::os::unix::fs::MetadataExt;
        use std::sync::{Arc, Condvar, Mutex};
        let (d, s) = store();
        let s = Arc::new(s);
        let bottom = tar(&[("usr/bin/a", b"lower file")]);
        let bottom_diff = Digest::of(&bottom);
        let top = link_tar("usr/bin/b", "usr/bin/a");
        let top_diff = Digest::of(&top);
        let top_chain = super::chain_id(Some(&bottom_diff), &top_diff);
        // The bottom layer's completion, as a pull would signal it.
        let done = Arc::new((Mutex::new(None::<Result<(), String>>), Condvar::new()));
        let waits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let child = {
            let (s, done, waits) = (s.clone(), done.clone(), waits.clone());
            let (bottom_diff, top_diff) = (bottom_diff.clone(), top_diff.clone());
            std::thread::spawn(move || {
                s.unpack_layer_on_pending_parent(
                    Some(&bottom_diff),
                    &top_diff,
                    &top[..],
                    "top",
                    || {
                        waits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let (m, c) = &*done;
                        let mut g = m.lock().unwrap();
                        while g.is_none() {
                            g = c.wait(g).unwrap();
                        }
                        g.clone().unwrap()
                    },
                )
            })
        };
        // The child needs the parent (hardlink target) and must be waiting.
        while waits.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(!child.is_finished(), "{:?}", child.join().unwrap());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!s.layer_dir(&top_chain).exists());
        assert!(!s.has_layer(&top_chain).unwrap());
        s.unpack_layer(None, Some(&bottom_diff), &bottom[..], "bottom")
            .unwrap();
        *done.0.lock().unwrap() = Some(Ok(()));
        done.1.notify_all();
        let info = child.join().unwrap().unwrap();
        assert_eq!(info.chain_id, top_chain);
        assert_eq!(info.parent, Some(bottom_diff.clone()));
        let lower = s.layer_dir(&bottom_diff).join("usr/bin/a");
        let linked = s.layer_dir(&top_chain).join("usr/bin/b");
        assert_eq!(std::fs::read(&linked).unwrap(), b"lower file");
        assert_eq!(
            std::fs::metadata(&linked).unwrap().ino(),
            std::fs::metadata(&lower).unwrap().ino()
        );
        assert_eq!(
            s.layer_chain_dirs(&top_chain).unwrap(),
            vec![s.layer_dir(&top_chain), s.layer_dir(&bottom_diff)]
        );

        // A parent that never comes: the child fails and leaves nothing.
        let other = tar(&[("f", b"x")]);
        let other_diff = Digest::of(&other);
        let missing = Digest::of(b"missing parent");
        let err = s
            .unpack_layer_on_pending_parent(
                Some(&missing),
                &other_diff,
                &other[..],
                "orphan",
                || Err("the parent's download failed".into()),
            )
            .unwrap_err();
        assert!(err.to_string().contains("download failed"), "{err}");
        let chain = super::chain_id(Some(&missing), &other_diff);
        assert!(!s.has_layer(&chain).unwrap());
        let mut names: Vec<_> = std::fs::read_dir(d.path().join("layers"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut want = vec![bottom_diff.hex().to_string(), top_chain.hex().to_string()];
        want.sort();
        assert_eq!(names, want);
        // A hardlink to nothing is still refused once the parent is known.
        let bad = link_tar("x", "nowhere");
        let err = s
            .unpack_layer_on_pending_parent(
                Some(&bottom_diff),
                &Digest::of(&bad),
                &bad[..],
                "bad",
                || Ok(()),
            )
            .unwrap_err();
        assert!(err.to_string().contains("neither in this layer"), "{err}");
    }

    /// A tar of `(name, kind, mode, uid, mtime)`; kind `d` dir, `f` file,
    /// `b` 3 MiB file.
    fn meta_tar(entries: &[(&str, char, u32, u64, u64)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for &(name, kind, mode, uid, mtime) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(mode);
            h.set_uid(uid);
            h.set_gid(uid);
            h.set_mtime(mtime);
            let big = vec![1u8; 3 << 20];
            let data: &[u8] = match kind {
                'd' => b"",
                'b' => &big,
                _ => b"data",
            };
            h.set_entry_type(if kind == 'd' {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            });
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Releases the second part of a stream once `gate` says so, or after
    /// a while: an unpack that waits for its parent in the middle of the
    /// tar opens the gate itself (see the test below).
    struct Gated {
        first: std::io::Cursor<Vec<u8>>,
        second: std::io::Cursor<Vec<u8>>,
        gate: std::sync::mpsc::Receiver<()>,
        opened: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl std::io::Read for Gated {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.first.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            if !self.opened.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = self
                    .gate
                    .recv_timeout(std::time::Duration::from_millis(500));
                self.opened.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            self.second.read(buf)
        }
    }

    #[test]
    fn implicit_directories_do_not_wait_for_a_pending_parent() {
        use std::io::Read as _;
        use std::os::unix::fs::MetadataExt;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let (_d, s) = store();
        let bottom = meta_tar(&[
            ("etc/", 'd', 0o755, 0, 1_500_000_000),
            ("etc/dpkg/", 'd', 0o700, 7, 1_600_000_000),
            ("x/", 'd', 0o755, 0, 1_500_000_000),
            ("y/", 'd', 0o755, 0, 1_500_000_000),
        ]);
        let bottom_diff = Digest::of(&bottom);
        s.unpack_layer(None, Some(&bottom_diff), &bottom[..], "bottom")
            .unwrap();
        // `etc/`, `etc/dpkg/` and `etc/dpkg/origins/` are implicit; `x/` is
        // implicit, then listed; `y/` is implicit, then replaced by a file.
        let first = meta_tar(&[
            ("etc/dpkg/origins/default", 'f', 0o644, 0, 1_700_000_000),
            ("x/f", 'f', 0o644, 0, 1_700_000_000),
            ("y/f", 'f', 0o644, 0, 1_700_000_000),
            // More than the unpacker's first chunk: the entries above are
            // applied while the stream is still held at the gate.
            ("big", 'b', 0o644, 0, 1_700_000_000),
        ]);
        let end = meta_tar(&[
            ("x/", 'd', 0o711, 3, 1_650_000_000),
            ("y", 'f', 0o600, 0, 1_700_000_000),
        ]);
        // `first` without its end-of-archive blocks, then `end`.
        let mut top = first[..first.len() - 1024].to_vec();
        top.extend_from_slice(&end);
        let top_diff = Digest::of(&top);
        let split = first.len() - 1024;
        let (tx, rx) = std::sync::mpsc::channel();
        let opened = Arc::new(AtomicBool::new(false));
        let reader = Gated {
            first: std::io::Cursor::new(top[..split].to_vec()),
            second: std::io::Cursor::new(top[split..].to_vec()),
            gate: rx,
            opened: opened.clone(),
        };
        let waited_mid_stream = AtomicBool::new(false);
        let tx = std::sync::Mutex::new(tx);
        let info = s
            .unpack_layer_on_pending_parent(Some(&bottom_diff), &top_diff, reader, "top", || {
                if !opened.load(Ordering::SeqCst) {
                    waited_mid_stream.store(true, Ordering::SeqCst);
                    let _ = tx.lock().unwrap().send(());
                }
                Ok(())
            })
            .unwrap();
        assert!(
            !waited_mid_stream.load(Ordering::SeqCst),
            "the unpack waited for its parent at an implicit directory"
        );
        let dir = s.layer_dir(&info.chain_id);
        let md = |p: &str| std::fs::symlink_metadata(dir.join(p)).unwrap();
        // Inherited from the lower layer.
        let dpkg = md("etc/dpkg");
        assert_eq!(
            (dpkg.mode() & 0o7777, dpkg.uid(), dpkg.gid(), dpkg.mtime()),
            (0o700, 7, 7, 1_600_000_000)
        );
        assert_eq!(md("etc").mtime(), 1_500_000_000);
        // Not in the lower layer: root 0755 as created.
        assert!(md("etc/dpkg/origins").is_dir());
        assert_eq!(md("etc/dpkg/origins").uid(), 0);
        // Listed later: the listing wins.
        let x = md("x");
        assert_eq!(
            (x.mode() & 0o7777, x.uid(), x.mtime()),
            (0o711, 3, 1_650_000_000)
        );
        // Replaced by a file: stays the file.
        assert!(md("y").is_file());
        let mut data = String::new();
        std::fs::File::open(dir.join("y"))
            .unwrap()
            .read_to_string(&mut data)
            .unwrap();
        assert_eq!(data, "data");
    }

    #[test]
    fn open_removes_dead_temp_dirs_only() {
        let (d, s) = store();
        let dead = d.path().join("layers/new.tmp-dead");
        std::fs::create_dir_all(dead.join("x")).unwrap();
        let live = d.path().join("layers/new.tmp-live");
        std::fs::create_dir(&live).unwrap();
        let _held = crate::lock::FileLock::lock(
            &d.path().join("locks/unpack-live.lock"),
            crate::lock::LockMode::Exclusive,
        )
        .unwrap();
        drop(s);
        let _s = crate::Store::open(d.path()).unwrap();
        assert!(!dead.exists());
        assert!(live.exists(), "a temp dir whose unpack still runs is kept");
    }
}
