//! The store's error type.

use crate::Digest;
use std::path::PathBuf;

/// Result with the store's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store.
///
/// "Not found" is always one of [`Error::BlobNotFound`], [`Error::ImageNotFound`],
/// [`Error::ContainerNotFound`] or [`Error::LayerNotFound`]; callers match on them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a path in (or given to) the store.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The metadata database failed.
    #[error("store database {path}: {source}")]
    Db {
        /// Path of `lamina.db`.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer lamina.
    #[error(
        "store database {path} has schema version {found}, this lamina knows up to {known}; upgrade lamina"
    )]
    SchemaTooNew {
        /// Path of `lamina.db`.
        path: PathBuf,
        /// Version found in the file.
        found: i64,
        /// Newest version this build knows.
        known: i64,
    },
    /// A string that is not a `sha256:<64 hex>` digest.
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    /// A reference that cannot be normalised.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// What the user gave.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Data did not hash to what was expected.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was being verified (ingest key, layer name).
        what: String,
        /// Expected digest.
        expected: Digest,
        /// Digest of the data actually received.
        actual: Digest,
    },
    /// Data did not have the expected size.
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// What was being verified.
        what: String,
        /// Expected size.
        expected: u64,
        /// Size received (so far).
        actual: u64,
    },
    /// A blob is not in the store.
    #[error("blob {0} is not in the store (pull or load the image again)")]
    BlobNotFound(Digest),
    /// A blob is bigger than the caller allows to read into memory.
    #[error("blob {digest} is {size} bytes, more than the {max} allowed for a manifest or config")]
    BlobTooLarge {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Another process holds the ingest for this key.
    #[error("ingest {key:?} is in use by another process")]
    IngestBusy {
        /// The ingest key.
        key: String,
    },
    /// A manifest or config that cannot be used.
    #[error("{digest}: {reason}")]
    InvalidImage {
        /// The manifest or config blob.
        digest: Digest,
        /// What is wrong.
        reason: String,
    },
    /// No image has this name or id.
    #[error("image {0:?} not found (see `lamina images`)")]
    ImageNotFound(String),
    /// A short id matches several images or containers.
    #[error("{0:?} is ambiguous: give more digits of the id")]
    Ambiguous(String),
    /// Removing by id an image that still has several names.
    #[error("image {id} has several names ({names}); remove them by name or use --force")]
    ImageHasNames {
        /// Image id.
        id: String,
        /// Its names, comma-separated.
        names: String,
    },
    /// No container has this id or name.
    #[error("container {0:?} not found (see `lamina ps`)")]
    ContainerNotFound(String),
    /// A container name is taken.
    #[error("container name {0:?} is already in use; choose another or remove that container")]
    ContainerNameInUse(String),
    /// Unpacking a layer failed (the layer's temp dir has been removed).
    /// The unpacker's message already names the layer and the entry.
    #[error("{error}")]
    Unpack {
        /// The layer, as the caller named it.
        layer: String,
        /// What the unpacker found (not chained as `source`: the message
        /// above already carries it).
        error: crate::layers::unpack::UnpackError,
    },
    /// A layer (chain id) is not unpacked in the store.
    #[error("layer {0} is not in the store")]
    LayerNotFound(Digest),
    /// An archive (docker-archive, OCI archive, layer) is malformed or unsafe.
    #[error("archive {path}: {reason}")]
    Archive {
        /// The archive (or the dir being archived).
        path: PathBuf,
        /// What is wrong and, where it helps, what to do.
        reason: String,
    },
}

impl Error {
    /// Builds an [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Adds a path to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    /// Maps the error to [`Error::Io`] on `path`.
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

impl<T> IoContext<T> for rustix::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e.into()))
    }
}
