//! The overlay filesystem: N read-only layer directories under an optional
//! writable upper directory, served over FUSE. Knows nothing of images.

pub mod error;

pub use error::{Error, Result};
