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
