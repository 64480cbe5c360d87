//! The glue between the registry client and the store: `lamina pull` and
//! `lamina push`. Neither library knows the other; this module streams
//! verified registry bytes into store ingests and unpacks, and reads store
//! blobs for upload.
//!
//! Environment knobs (all optional): `LAMINA_REGISTRY_TIMEOUT` (seconds of
//! silence before a request fails, default 60, also the token endpoint's
//! limit), `LAMINA_REGISTRY_RETRIES` (default 4), `LAMINA_PUSH_CHUNK_SIZE`
//! (bytes; larger blobs are uploaded in chunks, default 64 MiB),
//! `LAMINA_PULL_CONCURRENCY` (parallel layer downloads, default 4).
//! Credentials: see `lamina_registry::credentials` (lamina's auth file at
//! `$LAMINA_AUTH_FILE` or `~/.config/lamina/auth.json`, then docker's).

pub mod progress;
pub mod pull;
pub mod push;
pub mod tee;

use lamina_registry::{Client, ClientOptions};
use std::time::Duration;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// A registry client configured from the command line and environment.
pub fn client(insecure: bool) -> anyhow::Result<Client> {
    let mut opts = ClientOptions {
        insecure,
        ..ClientOptions::default()
    };
    if let Some(t) = env_u64("LAMINA_REGISTRY_TIMEOUT") {
        opts.read_timeout = Duration::from_secs(t);
        opts.token_timeout = Duration::from_secs(t);
        opts.connect_timeout = Duration::from_secs(t);
    }
    if let Some(r) = env_u64("LAMINA_REGISTRY_RETRIES") {
        opts.retries = r as u32;
    }
    if let Some(c) = env_u64("LAMINA_PUSH_CHUNK_SIZE") {
        opts.chunk_size = c;
    }
    Ok(Client::new(opts)?)
}

/// A tokio runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Converts a registry digest into a store digest.
pub fn store_digest(d: &lamina_registry::Digest) -> lamina_store::Digest {
    lamina_store::Digest::parse(d.as_str()).expect("registry digests are valid sha256 digests")
}
