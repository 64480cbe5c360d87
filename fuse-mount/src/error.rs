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
    /// The layer configuration is unusable.
    #[error("invalid overlay configuration: {0}")]
    Config(String),
    /// The kernel refused the FUSE mount.
    #[error(
        "cannot mount FUSE overlay at {path}: {source} (is /dev/fuse present and are you root?)"
    )]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Serving the mount failed.
    #[error("serving the FUSE overlay at {path} failed: {source}")]
    Serve {
        /// The mount point.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}
