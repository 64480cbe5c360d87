//! Garbage collection: removes what nothing reaches.
//!
//! Roots are the DB rows: every image (manifest row, named or dangling or
//! kept by a container) reaches its manifest, config and layer blobs, the
//! index it was resolved through, and the layer dirs of its chain ids;
//! `layer_refs` rows (the snapshotter's) keep their layer dirs and ancestors.
//! Everything else under `blobs/` and `layers/` goes, as do ingests idle for
//! longer than a day, temp layer dirs of dead unpacks, container dirs
//! without a record, and per-layer/per-blob lock files.
//!
//! Safety: gc holds `locks/gc.lock` exclusively, so it runs only while no
//! ingest, unpack, registration or container creation holds a
//! [`crate::Store::lease`]; those wait for it. Work that spans several calls
//! (a pull: blobs first, register last) must hold one lease throughout.
//! DB rows are deleted before the directories they name, and a layer dir is
//! renamed to a temp name before it is deleted, so `layers/<hex>` is never
//! half deleted.

use crate::error::IoContext;
use crate::lock::{FileLock, LockMode};
use crate::{Digest, Result, Store};
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

/// Ingests untouched for this long are abandoned.
pub const STALE_INGEST: Duration = Duration::from_secs(24 * 3600);

/// What gc removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Blobs removed.
    pub blobs_removed: Vec<Digest>,
    /// Bytes of blobs removed.
    pub bytes_freed: u64,
    /// Layer dirs removed (chain ids).
    pub layers_removed: Vec<Digest>,
    /// Stale ingests removed.
    pub ingests_removed: usize,
    /// Leftover temp layer dirs removed.
    pub temp_dirs_removed: usize,
    /// Container dirs without a record removed.
    pub container_dirs_removed: usize,
}

/// What the roots reach, as digest strings: gc keeps exactly these, fsck
/// calls everything else garbage.
pub(crate) struct Reachable {
    /// Manifest, config, layer and index blobs of every image row.
    pub(crate) blobs: HashSet<String>,
    /// Chain ids of every image's layers and of `layer_refs` (with ancestors).
    pub(crate) chains: HashSet<String>,
}

impl Store {
    /// Reads the roots from the DB (see the module doc).
    pub(crate) fn reachable(&self) -> Result<Reachable> {
        let (blobs, chains) = self.db.read(|c| {
            let mut blobs = HashSet::new();
            let mut chains = HashSet::new();
            for sql in [
                "SELECT digest FROM manifests",
                "SELECT config_digest FROM manifests",
                "SELECT digest FROM manifest_layers",
                "SELECT index_digest FROM images WHERE index_digest IS NOT NULL",
            ] {
                let mut st = c.prepare(sql)?;
                for d in st.query_map([], |r| r.get::<_, String>(0))? {
                    blobs.insert(d?);
                }
            }
            for sql in [
                "SELECT chain_id FROM manifest_layers",
                // External refs, with every ancestor the store knows of.
                "WITH RECURSIVE up(c) AS (SELECT chain_id FROM layer_refs
                 UNION SELECT l.parent FROM layers l JOIN up ON l.chain_id = up.c
                 WHERE l.parent IS NOT NULL)
             SELECT c FROM up",
            ] {
                let mut st = c.prepare(sql)?;
                for d in st.query_map([], |r| r.get::<_, String>(0))? {
                    chains.insert(d?);
                }
            }
            Ok((blobs, chains))
        })?;
        Ok(Reachable { blobs, chains })
    }

    /// Runs gc with the default ingest age limit ([`STALE_INGEST`]).
    pub fn gc(&self) -> Result<GcReport> {
        self.gc_with(STALE_INGEST)
    }

    /// Runs gc, removing ingests idle for longer than `stale_ingest`.
    pub fn gc_with(&self, stale_ingest: Duration) -> Result<GcReport> {
        let path = self.lock_path("gc.lock");
        let _gc = match FileLock::try_lock(&path, LockMode::Exclusive)? {
            Some(lock) => lock,
            None => {
                tracing::warn!("gc is waiting for running pulls, imports and commits to finish");
                FileLock::lock(&path, LockMode::Exclusive)?
            }
        };
        let mut report = GcReport::default();

        let Reachable { blobs, chains } = self.reachable()?;

        // Layers: rows first, then dirs.
        let dead_rows: Vec<String> = self.db.read(|c| {
            let mut st = c.prepare("SELECT chain_id FROM layers")?;
            let all: Vec<String> = st
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(all.into_iter().filter(|c| !chains.contains(c)).collect())
        })?;
        self.db.write(|tx| {
            for c in &dead_rows {
                tx.execute("DELETE FROM layers WHERE chain_id = ?1", [c])?;
            }
            Ok(())
        })?;
        report.temp_dirs_removed = self.remove_stale_layer_tmp()?;
        let layers_dir = self.root.join("layers");
        for entry in std::fs::read_dir(&layers_dir).at(&layers_dir)? {
            let entry = entry.at(&layers_dir)?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(chain) = Digest::from_hex(&name) else {
                continue;
            };
            if !chains.contains(chain.as_str()) {
                // Rename first: a `layers/<hex>` dir is always complete, even if
                // gc is killed halfway through deleting it (the temp name is
                // then cleaned up like a dead unpack's).
                let token = format!("gc{:016x}", rand::random::<u64>());
                // Held so that another process's recovery leaves the dir to us.
                let lock = FileLock::lock(
                    &self.lock_path(&format!("unpack-{token}.lock")),
                    LockMode::Exclusive,
                )?;
                let doomed = layers_dir.join(format!("{name}.tmp-{token}"));
                std::fs::rename(entry.path(), &doomed).at(entry.path())?;
                crate::remove_tree(&doomed)?;
                lock.release_and_remove();
                report.layers_removed.push(chain);
            }
        }

        // Blobs.
        for d in self.content.list()? {
            if !blobs.contains(d.as_str()) {
                report.bytes_freed += self.content.remove(&d)?;
                report.blobs_removed.push(d);
            }
        }
        if !report.blobs_removed.is_empty() {
            self.db.write(|tx| {
                for d in &report.blobs_removed {
                    tx.execute("DELETE FROM layer_blobs WHERE digest = ?1", [d.as_str()])?;
                }
                Ok(())
            })?;
        }

        // Ingests idle for too long.
        let now = SystemTime::now();
        for ingest in self.content.ingests()? {
            let age = now.duration_since(ingest.updated).unwrap_or_default();
            if age > stale_ingest && self.content.remove_ingest_if_idle(&ingest.dir)? {
                report.ingests_removed += 1;
            }
        }

        // Container dirs without a record.
        let ids: HashSet<String> = self.containers()?.into_iter().map(|c| c.id).collect();
        let cdir = self.root.join("containers");
        for entry in std::fs::read_dir(&cdir).at(&cdir)? {
            let entry = entry.at(&cdir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !ids.contains(&name) {
                crate::remove_tree(&entry.path())?;
                report.container_dirs_removed += 1;
            }
        }

        // Lock files of finished work (nobody holds them without a lease).
        let locks = self.root.join("locks");
        for entry in std::fs::read_dir(&locks).at(&locks)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("layer-") || name.starts_with("blob-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        report.blobs_removed.sort();
        report.layers_removed.sort();
        Ok(report)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::testutil::{store, tar, two_layer_image};
    use std::io::Write;
    use std::time::Duration;

    #[test]
    fn gc_keeps_what_is_reachable_and_removes_the_rest() {
        let (_d, s) = store();
        let m = two_layer_image(&s, false, "a");
        let img = s.register_image(Some("a"), &m).unwrap();
        let c = s.create_container("a", None).unwrap();
        s.remove_image("a", false).unwrap();
        let stray = s.content().put(b"stray", None).unwrap();
        let stray_layer = s
            .unpack_layer(None, None, &tar(&[("x", b"y")])[..], "stray")
            .unwrap();
        let mut partial = s.content().ingest("partial", None).unwrap();
        partial.write_all(b"abc").unwrap();
        drop(partial);

        let r = s.gc().unwrap();
        assert_eq!(r.blobs_removed, vec![stray.clone()]);
        assert_eq!(r.layers_removed, vec![stray_layer.chain_id.clone()]);
        assert_eq!(r.ingests_removed, 0, "a fresh ingest stays resumable");
        // Everything of the container's image is still there.
        assert!(s.fsck().unwrap().is_ok());
        for l in &img.layers {
            assert!(s.content().info(&l.digest).unwrap().is_some());
            assert!(s.has_layer(&l.chain_id).unwrap());
        }
        assert!(s.content().info(&img.config_digest).unwrap().is_some());

        s.remove_container(&c.id).unwrap();
        let r = s.gc_with(Duration::ZERO).unwrap();
        assert_eq!(r.blobs_removed.len(), 4, "manifest, config, 2 layers");
        assert_eq!(r.layers_removed.len(), 2);
        assert_eq!(r.ingests_removed, 1);
        assert!(s.content().list().unwrap().is_empty());
        assert!(s.layers().unwrap().is_empty());
        let f = s.fsck().unwrap();
        assert!(f.is_ok() && f.garbage.is_empty(), "{f:?}");
    }

    /// Two stacked layers (bottom, top) that no image uses, kept by a
    /// `layer_refs` row ("snapshots") on the top one: a root through a ref.
    pub(crate) fn referenced_chain(s: &crate::Store) -> (crate::LayerInfo, crate::LayerInfo) {
        let bottom = s
            .unpack_layer(None, None, &tar(&[("a", b"1")])[..], "a")
            .unwrap();
        let top = s
            .unpack_layer(Some(&bottom.chain_id), None, &tar(&[("b", b"2")])[..], "b")
            .unwrap();
        s.add_layer_ref("snapshots", &top.chain_id).unwrap();
        (bottom, top)
    }

    #[test]
    fn layer_refs_are_roots() {
        let (_d, s) = store();
        let (bottom, top) = referenced_chain(&s);
        let r = s.gc().unwrap();
        assert!(r.layers_removed.is_empty(), "{r:?}");
        assert!(s.has_layer(&bottom.chain_id).unwrap() && s.has_layer(&top.chain_id).unwrap());
        assert_eq!(
            s.layer_refs("snapshots").unwrap(),
            vec![top.chain_id.clone()]
        );
        s.remove_layer_ref("snapshots", &top.chain_id).unwrap();
        assert_eq!(s.gc().unwrap().layers_removed.len(), 2);
    }

    #[test]
    fn gc_waits_for_a_lease() {
        let (_d, s) = store();
        let s = std::sync::Arc::new(s);
        let lease = s.lease().unwrap();
        let blob = s.content().put(b"not yet referenced", None).unwrap();
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.gc().unwrap());
        std::thread::sleep(Duration::from_millis(200));
        assert!(!t.is_finished(), "gc must wait while a lease is held");
        assert!(s.content().info(&blob).unwrap().is_some());
        drop(lease);
        let r = t.join().unwrap();
        assert_eq!(r.blobs_removed, vec![blob]);
    }
}
