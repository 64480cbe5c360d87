//! OCI distribution client: references, auth, manifests and indexes, verified
//! blob streams and push. Knows nothing of the store: pulling hands out
//! [`BlobReader`]s whose bytes are checked against size and digest as they
//! arrive; pushing reads blobs from plain files.
//!
//! ```no_run
//! # async fn f() -> lamina_registry::Result<()> {
//! use lamina_registry::{Client, ClientOptions, Platform, Reference};
//! let client = Client::new(ClientOptions::default())?;
//! let r = Reference::parse("localhost:5000/app:1")?;
//! let image = client.resolve(&r, &Platform::host()).await?;
//! for layer in &image.manifest.layers {
//!     let mut blob = client.blob(&r, &layer.digest, Some(layer.size), 0).await?;
//!     while let Some(bytes) = blob.next_chunk().await? { let _ = bytes; }
//! }
//! # Ok(()) }
//! ```

pub mod auth;
pub mod client;
pub mod credentials;
pub mod digest;
pub mod error;
pub mod manifest;
pub mod platform;
pub mod pull;
pub mod push;
pub mod reference;

/// Blob chunks are handed out as `bytes::Bytes`.
pub use bytes::Bytes;
pub use client::{Client, ClientOptions};
pub use credentials::{CredentialSources, Credentials};
pub use digest::{Digest, Verifier};
pub use error::{Error, Result};
pub use manifest::{Descriptor, Kind, Manifest};
pub use platform::Platform;
pub use pull::{BlobReader, Resolved};
pub use push::BlobPush;
pub use reference::Reference;
