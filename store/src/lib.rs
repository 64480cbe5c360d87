//! lamina's image store: content-addressed blobs, SQLite metadata, unpacked
//! layers shared between images, and containers (writable layers).
//!
//! See `docs/architecture.md` for the on-disk tree and the crash invariants.

pub mod error;
pub mod layers;
pub mod sys;

pub use error::{Error, Result};
