//! The error of a layer unpack. Every variant names the layer, and the entry
//! when one is concerned, so a user can tell which blob to blame.

use std::path::PathBuf;

/// Why a layer could not be unpacked. The destination is then incomplete and
/// must be deleted by the caller; nothing outside it was touched.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The destination or a lower layer directory could not be opened.
    #[error("cannot open layer directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or decompressing the layer stream failed (truncated or
    /// corrupt gzip/zstd, or the source failed).
    #[error(
        "layer {layer}: reading the stream failed: {source}; the blob is truncated or corrupt, fetch it again"
    )]
    Read {
        /// The layer, as the caller named it.
        layer: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The layer stream is empty.
    #[error("layer {layer}: the stream is empty, not a tar archive")]
    Empty {
        /// The layer, as the caller named it.
        layer: String,
    },
    /// The decompressed stream is not a valid tar archive.
    #[error(
        "layer {layer}: not a valid tar archive ({after}): {source}; the blob is corrupt or not a layer"
    )]
    Tar {
        /// The layer, as the caller named it.
        layer: String,
        /// Where in the archive: "at the start" or "after entry X".
        after: String,
        /// The parser's complaint.
        #[source]
        source: std::io::Error,
    },
    /// An entry was refused because it is unsafe or meaningless (hostile or
    /// broken layer). Nothing was written for it.
    #[error(
        "layer {layer}: entry {entry:?} rejected: {reason}; the layer is malformed or hostile and cannot be used"
    )]
    Rejected {
        /// The layer, as the caller named it.
        layer: String,
        /// The entry's name as found in the tar.
        entry: String,
        /// Why.
        reason: String,
    },
    /// Creating an entry on disk failed.
    #[error("layer {layer}: entry {entry:?}: {op} failed: {source}")]
    Entry {
        /// The layer, as the caller named it.
        layer: String,
        /// The entry's name as found in the tar.
        entry: String,
        /// The operation that failed ("create file", "set xattr", ...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The layer needs its parent layers (a hardlink into them, a directory
    /// it does not list) and they could not be had.
    #[error(
        "layer {layer}: its parent layers are not available: {reason}; pull or load the image again"
    )]
    LowerLayers {
        /// The layer, as the caller named it.
        layer: String,
        /// Why.
        reason: String,
    },
    /// The uncompressed stream does not hash to the expected diff id.
    #[error(
        "layer {layer}: diff id mismatch: expected {expected}, got {actual}; the blob does not match the image config"
    )]
    DiffIdMismatch {
        /// The layer, as the caller named it.
        layer: String,
        /// The diff id the image config announces.
        expected: String,
        /// The diff id of the stream that was unpacked.
        actual: String,
    },
}
