//! Consistency check: every blob hashes to its name, every image's manifest,
//! config and layer blobs are present (layer blobs may be missing only when
//! the layer dir is there), every recorded layer dir and container dir exists.
//! Garbage (blobs and layer dirs that gc's roots do not reach, temp dirs,
//! partial ingests) is listed separately: it is not a problem, `gc` removes it
//! (ingests once they are stale).

use crate::error::IoContext;
use crate::{Digest, Result, Store};
use std::collections::HashSet;

/// What fsck found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FsckReport {
    /// Blobs rehashed.
    pub blobs_checked: usize,
    /// Layer records checked.
    pub layers_checked: usize,
    /// Images checked.
    pub images_checked: usize,
    /// Containers checked.
    pub containers_checked: usize,
    /// Inconsistencies, one sentence each.
    pub problems: Vec<String>,
    /// Things nothing references (gc removes them).
    pub garbage: Vec<String>,
}

impl FsckReport {
    /// True when no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Store {
    /// Checks the store (read-only; holds a lease so gc does not interfere).
    pub fn fsck(&self) -> Result<FsckReport> {
        let _lease = self.lease()?;
        let mut r = FsckReport::default();
        let present: HashSet<Digest> = self.content.list()?.into_iter().collect();
        for d in &present {
            r.blobs_checked += 1;
            if let Some(actual) = self.content.verify(d)? {
                r.problems.push(format!(
                    "blob {d} is corrupt: its content hashes to {actual}"
                ));
            }
        }
        // Read the layer records and stat their dirs once; `unpacked` is what
        // `Store::layer` would say for each chain.
        let layers = self.layers()?;
        let unpacked: HashSet<&Digest> = layers
            .iter()
            .filter(|l| self.layer_dir(&l.chain_id).is_dir())
            .map(|l| &l.chain_id)
            .collect();
        for image in self.images()? {
            r.images_checked += 1;
            let label = image
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.short().to_string());
            for (what, d) in [
                ("manifest", &image.manifest_digest),
                ("config", &image.config_digest),
            ] {
                if !present.contains(d) {
                    r.problems
                        .push(format!("image {label}: {what} blob {d} is missing"));
                }
            }
            for d in &image.index_digests {
                if !present.contains(d) {
                    r.problems
                        .push(format!("image {label}: index blob {d} is missing"));
                }
            }
            for l in &image.layers {
                if !unpacked.contains(&l.chain_id) {
                    r.problems.push(format!(
                        "image {label}: layer {} (chain {}) is not unpacked at {}",
                        l.digest,
                        l.chain_id,
                        self.layer_dir(&l.chain_id).display()
                    ));
                    if !present.contains(&l.digest) {
                        r.problems.push(format!(
                            "image {label}: layer blob {} is missing too",
                            l.digest
                        ));
                    }
                }
            }
        }
        for l in &layers {
            r.layers_checked += 1;
            if !unpacked.contains(&l.chain_id) {
                r.problems.push(format!(
                    "layer {} is recorded but its dir {} is missing",
                    l.chain_id,
                    self.layer_dir(&l.chain_id).display()
                ));
            }
            if let Some(p) = &l.parent
                && !unpacked.contains(p)
            {
                r.problems
                    .push(format!("layer {}: parent layer {p} is missing", l.chain_id));
            }
        }
        for c in self.containers()? {
            r.containers_checked += 1;
            for d in [c.upper_dir(), c.work_dir()] {
                if !d.is_dir() {
                    r.problems.push(format!(
                        "container {}: {} is missing",
                        c.short_id(),
                        d.display()
                    ));
                }
            }
        }
        // Garbage is what gc would remove: everything its roots do not reach.
        let reach = self.reachable()?;
        for d in &present {
            if !reach.blobs.contains(d.as_str()) {
                r.garbage.push(format!("unreferenced blob {d}"));
            }
        }
        let layers_dir = self.root.join("layers");
        for entry in std::fs::read_dir(&layers_dir).at(&layers_dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            match Digest::from_hex(&name) {
                Ok(c) if reach.chains.contains(c.as_str()) => {}
                Ok(c) => r.garbage.push(format!("unreferenced layer dir {c}")),
                Err(_) => r.garbage.push(format!("temp layer dir {name}")),
            }
        }
        for i in self.content.ingests()? {
            r.garbage
                .push(format!("partial ingest {:?} ({} bytes)", i.key, i.offset));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use crate::gc::tests::referenced_chain;
    use crate::testutil::{store, tar};

    /// fsck's garbage is exactly what gc would remove: a layer kept by a
    /// `layer_refs` row (and its parent) is not garbage.
    #[test]
    fn garbage_matches_gc_roots() {
        let (_d, s) = store();
        referenced_chain(&s);
        let stray = s
            .unpack_layer(None, None, &tar(&[("c", b"3")])[..], "c")
            .unwrap();
        let r = s.fsck().unwrap();
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(
            r.garbage,
            [format!("unreferenced layer dir {}", stray.chain_id)],
            "{r:?}"
        );
        assert_eq!(s.gc().unwrap().layers_removed, [stray.chain_id]);
    }
}
