//! Archives: container upper dir -> OCI layer (commit), A/C/D changes (diff),
//! docker-archive + OCI layout tars (save/load) and flattened trees (export).
//!
//! Everything here reads layer dirs in overlayfs format (see [`crate::layers`]):
//! a whiteout is a 0/0 char device (or a `.wh.NAME` marker file), an opaque
//! dir carries `trusted.overlay.opaque=y` (or a `.wh..wh..opq` marker file).
//! Tars are written by [`tar::TarWriter`] only, so output is deterministic.

pub mod commit;
pub mod diff;
pub mod export;
pub mod fsentry;
pub mod hash;
pub mod layer_writer;
pub mod load;
pub mod save;
pub mod tar;

pub use layer_writer::{Compression, LayerDigests, LayerOptions, write_layer};

#[cfg(test)]
pub(crate) mod testutil {
    use std::io::Read;

    /// (name, type, data or link target, PAX records) of a tar entry.
    pub(crate) type Entry = (String, ::tar::EntryType, Vec<u8>, Vec<(String, Vec<u8>)>);

    /// Every entry of a tar, read back with the `tar` crate.
    pub(crate) fn entries(data: &[u8]) -> Vec<Entry> {
        let mut a = ::tar::Archive::new(data);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = String::from_utf8(e.path_bytes().to_vec()).unwrap();
                let ty = e.header().entry_type();
                let pax = match e.pax_extensions().unwrap() {
                    Some(p) => p
                        .map(|x| x.unwrap())
                        .map(|x| (x.key().unwrap().to_string(), x.value_bytes().to_vec()))
                        .collect(),
                    None => Vec::new(),
                };
                let mut d = Vec::new();
                if ty == ::tar::EntryType::Link || ty == ::tar::EntryType::Symlink {
                    d = e.link_name_bytes().unwrap().to_vec();
                } else {
                    e.read_to_end(&mut d).unwrap();
                }
                (name, ty, d, pax)
            })
            .collect()
    }
}
