//! The overlay driver's error type.

use std::path::PathBuf;

/// Result with the overlay driver's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors setting up or serving an overlay mount.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}
