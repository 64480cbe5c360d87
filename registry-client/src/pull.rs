//! Reading from a registry: manifests (resolved to one platform) and
//! verified blob streams.
//!
//! A [`BlobReader`] hands out a blob's bytes as they arrive and guarantees
//! that the stream ends successfully only if exactly `size` bytes arrived and
//! (when it saw them all) they hash to the digest. A reader can start at an
//! offset (`Range`) to resume a partial download; seed it with the hash of
//! the bytes already held ([`BlobReader::resume`]) to keep end-to-end
//! verification, or leave the digest to a caller that hashes the bytes
//! itself ([`BlobReader::verified_by_caller`]). A connection that breaks mid-blob is re-opened with `Range`
//! from where it stopped, so a flaky network never refetches bytes.

use crate::auth::repository_scope;
use crate::client::{Client, Scope, check, read_limited, retry_delay, transport};
use crate::digest::{Digest, Verifier};
use crate::error::{Error, Result};
use crate::manifest::{ACCEPT, Kind, Manifest};
use crate::platform::Platform;
use crate::reference::Reference;
use bytes::Bytes;
use reqwest::header::{ACCEPT as ACCEPT_H, CONTENT_TYPE, RANGE};
use reqwest::{Method, StatusCode};

/// An image resolved to one platform.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The index or manifest list the tag pointed at, if it was one.
    pub index: Option<Manifest>,
    /// The image manifest for the chosen platform.
    pub manifest: Manifest,
}

impl Client {
    fn pull_scope(&self, r: &Reference) -> Scope {
        Scope {
            registry: r.registry().to_string(),
            scopes: vec![repository_scope(r.repository(), false)],
        }
    }

    /// Fetches a manifest or index by tag or digest; verifies its digest
    /// when the reference carries one (and against `Docker-Content-Digest`).
    pub async fn manifest(&self, r: &Reference) -> Result<Manifest> {
        self.manifest_at(r, &r.manifest_reference()).await
    }

    async fn manifest_at(&self, r: &Reference, reference: &str) -> Result<Manifest> {
        let base = self.base(r.registry()).await?;
        let url = format!("{base}/v2/{}/manifests/{reference}", r.repository());
        let resp = self
            .send(&self.pull_scope(r), Method::GET, &url, |req| {
                req.header(ACCEPT_H, ACCEPT)
            })
            .await?;
        let resp = check(resp, r.registry(), &format!("manifest {}", r)).await?;
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok());
        let limit = self.options().max_manifest_size;
        let bytes = read_limited(resp, limit, &url).await?;
        let m = Manifest::parse(bytes, content_type.as_deref(), &url)?;
        let expected = Digest::parse(reference).ok().or(header_digest);
        if let Some(expected) = expected
            && expected != m.digest
        {
            return Err(Error::DigestMismatch {
                url,
                expected: expected.to_string(),
                actual: m.digest.to_string(),
            });
        }
        Ok(m)
    }

    /// Resolves a reference to an image manifest: follows an index to the
    /// entry for `platform` (the error lists the platforms available).
    pub async fn resolve(&self, r: &Reference, platform: &Platform) -> Result<Resolved> {
        let top = self.manifest(r).await?;
        match top.kind {
            Kind::Image => Ok(Resolved {
                index: None,
                manifest: top,
            }),
            Kind::Index => {
                let entry = top.select(platform, &r.to_string())?.clone();
                let m = self.manifest_at(r, entry.digest.as_str()).await?;
                if m.kind != Kind::Image {
                    return Err(Error::InvalidManifest {
                        url: format!("{r}@{}", entry.digest),
                        reason: "an index entry for a platform points at another index".into(),
                    });
                }
                if m.media_type != entry.media_type {
                    return Err(Error::InvalidManifest {
                        url: format!("{r}@{}", entry.digest),
                        reason: format!(
                            "the index says {} but the manifest is {}",
                            entry.media_type, m.media_type
                        ),
                    });
                }
                Ok(Resolved {
                    index: Some(top),
                    manifest: m,
                })
            }
        }
    }

    /// A whole small blob (a config), verified, at most `limit` bytes.
    pub async fn blob_bytes(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        limit: u64,
    ) -> Result<Vec<u8>> {
        if size > limit {
            return Err(Error::ManifestTooLarge {
                url: format!("{r}@{digest}"),
                status: 0,
                limit,
            });
        }
        let mut reader = self.blob(r, digest, Some(size), 0).await?;
        let mut out = Vec::with_capacity(size as usize);
        while let Some(chunk) = reader.next_chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Opens a blob download from `offset` (0 for a fresh download). With
    /// `offset > 0` the digest can only be checked if the reader is told the
    /// hash of the first `offset` bytes ([`BlobReader::resume`]); otherwise
    /// only the size is checked here and the caller must verify the whole.
    pub async fn blob(
        &self,
        r: &Reference,
        digest: &Digest,
        size: Option<u64>,
        offset: u64,
    ) -> Result<BlobReader> {
        let base = self.base(r.registry()).await?;
        let url = format!("{base}/v2/{}/blobs/{digest}", r.repository());
        Ok(BlobReader {
            client: self.clone(),
            scope: self.pull_scope(r),
            registry: r.registry().to_string(),
            url,
            digest: digest.clone(),
            size,
            offset,
            verifier: if offset == 0 {
                Some(Verifier::new())
            } else {
                None
            },
            response: None,
            failures: 0,
            done: false,
            pending: None,
        })
    }
}

/// A blob download in progress; see the module docs for its guarantees.
pub struct BlobReader {
    client: Client,
    scope: Scope,
    registry: String,
    url: String,
    digest: Digest,
    size: Option<u64>,
    offset: u64,
    verifier: Option<Verifier>,
    response: Option<reqwest::Response>,
    failures: u32,
    done: bool,
    pending: Option<Bytes>,
}

impl BlobReader {
    /// Seeds the verifier with the bytes already held (the first `offset`
    /// bytes), so the digest is checked end to end on a resumed download.
    pub fn resume(&mut self, prefix: Verifier) {
        assert_eq!(
            prefix.len(),
            self.offset,
            "prefix hash must cover exactly the resume offset"
        );
        self.verifier = Some(prefix);
    }

    /// Leaves the digest check to the caller, who hashes every byte it is
    /// handed anyway (a store ingest does): the stream then ends
    /// successfully once exactly `size` bytes arrived, whatever they hash
    /// to, and the caller must compare its own digest with
    /// [`BlobReader::digest`] before trusting them. Saves hashing every
    /// byte twice.
    pub fn verified_by_caller(&mut self) {
        self.verifier = None;
    }

    /// The digest the blob must have.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Bytes of the blob delivered so far, counting the resume offset.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The blob URL (for messages).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The next bytes, or `None` at the verified end. An error is final.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        if let Some(chunk) = self.pending.take() {
            return self.accept(chunk).map(Some);
        }
        loop {
            if self.response.is_none() {
                self.open().await?;
                if self.done {
                    return Ok(None);
                }
                if let Some(chunk) = self.pending.take() {
                    return self.accept(chunk).map(Some);
                }
            }
            let resp = self.response.as_mut().expect("opened");
            match resp.chunk().await {
                Ok(Some(chunk)) => return self.accept(chunk).map(Some),
                Ok(None) => {
                    self.response = None;
                    if let Some(size) = self.size
                        && self.offset < size
                    {
                        // Truncated: resume from here.
                        self.failed(format!(
                            "connection closed after {} of {size} bytes",
                            self.offset
                        ))
                        .await?;
                        continue;
                    }
                    self.done = true;
                    if let Some(v) = &self.verifier {
                        let actual = v.digest();
                        if actual != self.digest {
                            return Err(Error::DigestMismatch {
                                url: self.url.clone(),
                                expected: self.digest.to_string(),
                                actual: actual.to_string(),
                            });
                        }
                    }
                    return Ok(None);
                }
                Err(e) => {
                    self.response = None;
                    if e.is_timeout() {
                        return Err(transport(
                            &self.url,
                            e,
                            self.client.options().read_timeout,
                            "",
                        ));
                    }
                    self.failed(format!("connection broke at byte {}: {e}", self.offset))
                        .await?;
                }
            }
        }
    }

    fn accept(&mut self, chunk: Bytes) -> Result<Bytes> {
        let end = self.offset + chunk.len() as u64;
        if let Some(size) = self.size
            && end > size
        {
            return Err(Error::SizeMismatch {
                url: self.url.clone(),
                expected: size,
                actual: end,
            });
        }
        if let Some(v) = &mut self.verifier {
            v.update(&chunk);
        }
        self.offset = end;
        Ok(chunk)
    }

    async fn failed(&mut self, reason: String) -> Result<()> {
        let opts = self.client.options();
        if self.failures >= opts.retries {
            return Err(Error::Transport {
                url: self.url.clone(),
                reason,
            });
        }
        let delay = retry_delay(opts.backoff, self.failures, None);
        tracing::debug!(url = %self.url, %reason, ?delay, "resuming blob download");
        self.failures += 1;
        tokio::time::sleep(delay).await;
        Ok(())
    }

    async fn open(&mut self) -> Result<()> {
        let offset = self.offset;
        if self.size == Some(offset) && offset > 0 {
            // Everything already held; an empty stream to verify.
            self.response = None;
            self.done = true;
            if let Some(v) = &self.verifier
                && v.digest() != self.digest
            {
                return Err(Error::DigestMismatch {
                    url: self.url.clone(),
                    expected: self.digest.to_string(),
                    actual: v.digest().to_string(),
                });
            }
            return Ok(());
        }
        let resp = self
            .client
            .send(&self.scope, Method::GET, &self.url, |req| {
                if offset > 0 {
                    req.header(RANGE, format!("bytes={offset}-"))
                } else {
                    req
                }
            })
            .await?;
        let what = format!("blob {}", self.digest);
        let resp = check(resp, &self.registry, &what).await?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let start = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(offset) {
                    return Err(Error::Http {
                        url: self.url.clone(),
                        status: 206,
                        message: format!(
                            "asked for bytes from {offset}, the registry answered Content-Range starting at {start:?}"
                        ),
                    });
                }
            }
            StatusCode::OK if offset > 0 => {
                // The server ignored Range: skip what we already have.
                tracing::debug!(url = %self.url, "Range ignored; skipping {offset} bytes");
                let mut resp = resp;
                let mut skipped = 0u64;
                while skipped < offset {
                    let Some(chunk) = resp
                        .chunk()
                        .await
                        .map_err(|e| transport(&self.url, e, std::time::Duration::ZERO, ""))?
                    else {
                        return Err(Error::SizeMismatch {
                            url: self.url.clone(),
                            expected: offset,
                            actual: skipped,
                        });
                    };
                    let take = (offset - skipped).min(chunk.len() as u64);
                    skipped += take;
                    if (take as usize) < chunk.len() {
                        self.pending = Some(chunk.slice(take as usize..));
                    }
                }
                self.response = Some(resp);
                return Ok(());
            }
            _ => {}
        }
        if let (Some(size), Some(len)) = (self.size, resp.content_length())
            && offset + len != size
        {
            return Err(Error::SizeMismatch {
                url: self.url.clone(),
                expected: size,
                actual: offset + len,
            });
        }
        self.response = Some(resp);
        Ok(())
    }
}
