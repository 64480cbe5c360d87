//! OCI distribution client: references, auth, manifests and indexes, verified
//! blob streams and push. Knows nothing of the store.

pub mod error;

pub use error::{Error, Result};
