//! Writing to a registry: blob existence checks, cross-repository mounts,
//! monolithic and chunked uploads, manifest and index PUT.
//!
//! A blob already in the target repository is skipped (HEAD); one in another
//! repository of the same registry is mounted (`POST ?mount=&from=`), which
//! copies nothing; anything else is uploaded in one `PUT` when it is at most
//! [`ClientOptions::chunk_size`](crate::ClientOptions) bytes, else as a
//! series of `PATCH` chunks closed by a `PUT ?digest=`. The registry verifies
//! the digest on the final PUT. Push manifests before the index that lists
//! them, and blobs before the manifest.

use crate::auth::repository_scope;
use crate::client::{Client, Scope, check};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::Reference;
use bytes::Bytes;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;

/// What [`Client::push_blob`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobPush {
    /// The repository already had it.
    Exists,
    /// Mounted from another repository of the registry.
    Mounted,
    /// Uploaded in one request.
    Uploaded,
    /// Uploaded in this many chunks.
    Chunked(u32),
}

impl Client {
    fn push_scope(&self, r: &Reference, from: Option<&str>) -> Scope {
        let mut scopes = vec![repository_scope(r.repository(), true)];
        if let Some(f) = from {
            scopes.push(repository_scope(f, false));
        }
        Scope {
            registry: r.registry().to_string(),
            scopes,
        }
    }

    /// Size of a blob if the repository has it (HEAD).
    pub async fn blob_exists(&self, r: &Reference, digest: &Digest) -> Result<Option<u64>> {
        let base = self.base(r.registry()).await?;
        let url = format!("{base}/v2/{}/blobs/{digest}", r.repository());
        let resp = self
            .send(&self.push_scope(r, None), Method::HEAD, &url, |q| q)
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check(resp, r.registry(), &format!("blob {digest}")).await?;
        Ok(resp.content_length())
    }

    /// Pushes a blob read from `file` (`size` bytes from offset 0), after a
    /// HEAD check and, when `mount_from` names another repository of the same
    /// registry, a mount attempt.
    pub async fn push_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        file: std::fs::File,
        mount_from: Option<&str>,
    ) -> Result<BlobPush> {
        if self.blob_exists(r, digest).await?.is_some() {
            return Ok(BlobPush::Exists);
        }
        let base = self.base(r.registry()).await?;
        let from = mount_from.filter(|f| *f != r.repository());
        let scope = self.push_scope(r, from);
        let mut url = format!("{base}/v2/{}/blobs/uploads/", r.repository());
        if let Some(f) = from {
            url = format!("{url}?mount={digest}&from={f}");
        }
        let resp = self
            .send(&scope, Method::POST, &url, |q| q.header(CONTENT_LENGTH, 0))
            .await?;
        if resp.status() == StatusCode::CREATED && from.is_some() {
            return Ok(BlobPush::Mounted);
        }
        let resp = check(resp, r.registry(), "upload session").await?;
        let mut location = location(&base, &resp, &url)?;
        let file = Arc::new(file);
        let chunk_size = self.options().chunk_size.max(1);
        if size <= chunk_size {
            let body = read_at(&file, 0, size as usize).await?;
            let put = with_digest(&location, digest);
            let resp = self
                .send(&scope, Method::PUT, &put, |q| {
                    q.header(CONTENT_TYPE, "application/octet-stream")
                        .body(body.clone())
                })
                .await?;
            check(resp, r.registry(), "upload").await?;
            return Ok(BlobPush::Uploaded);
        }
        let mut offset = 0u64;
        let mut chunks = 0u32;
        while offset < size {
            let len = chunk_size.min(size - offset);
            let body = read_at(&file, offset, len as usize).await?;
            let range = format!("{}-{}", offset, offset + len - 1);
            let resp = self
                .send(&scope, Method::PATCH, &location, |q| {
                    q.header(CONTENT_TYPE, "application/octet-stream")
                        .header("Content-Range", range.clone())
                        .header(CONTENT_LENGTH, len)
                        .body(body.clone())
                })
                .await?;
            let resp = check(resp, r.registry(), "upload chunk").await?;
            location = location_or(&base, &resp, &location);
            offset += len;
            chunks += 1;
        }
        let put = with_digest(&location, digest);
        let resp = self
            .send(&scope, Method::PUT, &put, |q| q.header(CONTENT_LENGTH, 0))
            .await?;
        check(resp, r.registry(), "upload").await?;
        Ok(BlobPush::Chunked(chunks))
    }

    /// PUTs a manifest or index under the reference's tag (or digest);
    /// returns the digest the registry reports (checked against ours).
    pub async fn push_manifest(
        &self,
        r: &Reference,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> Result<Digest> {
        let base = self.base(r.registry()).await?;
        let ours = Digest::of(&bytes);
        let target = r
            .tag()
            .map(str::to_string)
            .unwrap_or_else(|| ours.to_string());
        let url = format!("{base}/v2/{}/manifests/{target}", r.repository());
        let body = Bytes::from(bytes);
        let resp = self
            .send(&self.push_scope(r, None), Method::PUT, &url, |q| {
                q.header(CONTENT_TYPE, media_type).body(body.clone())
            })
            .await?;
        let resp = check(resp, r.registry(), "manifest").await?;
        if let Some(theirs) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            && theirs != ours.as_str()
        {
            return Err(Error::DigestMismatch {
                url,
                expected: ours.to_string(),
                actual: theirs.to_string(),
            });
        }
        Ok(ours)
    }
}

async fn read_at(file: &Arc<std::fs::File>, offset: u64, len: usize) -> Result<Bytes> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok::<_, std::io::Error>(Bytes::from(buf))
    })
    .await
    .expect("blocking read task")
    .map_err(|e| Error::Io {
        what: format!("reading the blob to push at offset {offset}"),
        source: e,
    })
}

fn location(base: &str, resp: &reqwest::Response, url: &str) -> Result<String> {
    let loc = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::Http {
            url: url.to_string(),
            status: resp.status().as_u16(),
            message: "upload session without a Location header".into(),
        })?;
    Ok(absolute(base, loc))
}

fn location_or(base: &str, resp: &reqwest::Response, previous: &str) -> String {
    resp.headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| absolute(base, l))
        .unwrap_or_else(|| previous.to_string())
}

fn absolute(base: &str, loc: &str) -> String {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        loc.to_string()
    } else {
        format!("{base}{loc}")
    }
}

fn with_digest(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}
