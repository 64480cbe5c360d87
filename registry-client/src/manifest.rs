//! Manifests and indexes: OCI and Docker schema2, parsed just enough to walk
//! them. The bytes are kept exactly as received so digests hold.
//!
//! The kind of a document is decided from its own `mediaType` field and the
//! HTTP `Content-Type`; when both are present they must agree (a registry
//! whose media types lie is refused), and the shape must fit the kind (an
//! image manifest has a config and layers, an index has manifests). Docker
//! schema1 is refused with a message saying so.

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::platform::Platform;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema1 (refused).
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Docker schema1, signed (refused).
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The `Accept` header lamina sends for manifests.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json;q=0.9";

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Platform (index entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Alternate URLs (foreign layers); lamina fetches from the registry only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What a manifest document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An image manifest (OCI or Docker schema2).
    Image,
    /// An index / manifest list.
    Index,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    #[serde(rename = "fsLayers")]
    fs_layers: Option<serde_json::Value>,
}

/// A manifest or index as fetched: exact bytes, digest, media type and the
/// parsed descriptors.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The bytes exactly as received.
    pub bytes: Vec<u8>,
    /// sha256 of `bytes`.
    pub digest: Digest,
    /// Media type (from the document, else from Content-Type).
    pub media_type: String,
    /// Image or index.
    pub kind: Kind,
    /// The config (image manifests).
    pub config: Option<Descriptor>,
    /// The layers, bottom-most first (image manifests).
    pub layers: Vec<Descriptor>,
    /// The entries (indexes).
    pub manifests: Vec<Descriptor>,
}

impl Manifest {
    /// Parses manifest bytes; `content_type` is the HTTP header if any, `url`
    /// names the source in errors.
    pub fn parse(bytes: Vec<u8>, content_type: Option<&str>, url: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidManifest {
            url: url.to_string(),
            reason,
        };
        let content_type = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
            .filter(|c| {
                !c.is_empty()
                    && c != "application/json"
                    && c != "application/octet-stream"
                    && c != "text/plain"
            });
        let raw: Raw = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("not a JSON manifest: {e}")))?;
        for mt in [raw.media_type.as_deref(), content_type.as_deref()]
            .into_iter()
            .flatten()
        {
            if mt == DOCKER_SCHEMA1 || mt == DOCKER_SCHEMA1_SIGNED {
                return Err(schema1(url, mt));
            }
        }
        if raw.schema_version == Some(1) || raw.fs_layers.is_some() {
            return Err(schema1(
                url,
                raw.media_type.as_deref().unwrap_or("schemaVersion 1"),
            ));
        }
        if raw.schema_version != Some(2) {
            return Err(invalid(format!(
                "schemaVersion {:?}, expected 2",
                raw.schema_version
            )));
        }
        if let (Some(doc), Some(ct)) = (&raw.media_type, &content_type)
            && doc != ct
        {
            return Err(invalid(format!(
                "the registry says Content-Type {ct} but the document says mediaType {doc}"
            )));
        }
        let media_type = raw.media_type.clone().or(content_type).unwrap_or_else(|| {
            if raw.manifests.is_some() {
                OCI_INDEX
            } else {
                OCI_MANIFEST
            }
            .to_string()
        });
        let kind = match media_type.as_str() {
            OCI_MANIFEST | DOCKER_MANIFEST => Kind::Image,
            OCI_INDEX | DOCKER_LIST => Kind::Index,
            other => {
                return Err(Error::UnsupportedManifest {
                    url: url.to_string(),
                    media_type: other.to_string(),
                    reason: "not an OCI or Docker schema2 manifest or index".to_string(),
                });
            }
        };
        let digest = Digest::of(&bytes);
        match kind {
            Kind::Image => {
                if raw.manifests.is_some() {
                    return Err(invalid(format!(
                        "media type {media_type} but the document has `manifests`, like an index"
                    )));
                }
                let config = raw
                    .config
                    .ok_or_else(|| invalid(format!("{media_type} without a config")))?;
                let layers = raw
                    .layers
                    .ok_or_else(|| invalid(format!("{media_type} without layers")))?;
                Ok(Manifest {
                    bytes,
                    digest,
                    media_type,
                    kind,
                    config: Some(config),
                    layers,
                    manifests: vec![],
                })
            }
            Kind::Index => {
                if raw.config.is_some() || raw.layers.is_some() {
                    return Err(invalid(format!(
                        "media type {media_type} but the document has config/layers, like an image manifest"
                    )));
                }
                let manifests = raw
                    .manifests
                    .ok_or_else(|| invalid(format!("{media_type} without manifests")))?;
                Ok(Manifest {
                    bytes,
                    digest,
                    media_type,
                    kind,
                    config: None,
                    layers: vec![],
                    manifests,
                })
            }
        }
    }

    /// Picks the entry of an index for `wanted`; the error lists what is there.
    /// Entries without a platform, and attestation manifests
    /// (`unknown/unknown`), are never chosen.
    pub fn select(&self, wanted: &Platform, reference: &str) -> Result<&Descriptor> {
        self.manifests
            .iter()
            .filter(|d| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST))
            .find(|d| d.platform.as_ref().is_some_and(|p| wanted.matches(p)))
            .ok_or_else(|| Error::NoMatchingPlatform {
                reference: reference.to_string(),
                wanted: wanted.to_string(),
                available: self
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .filter(|p| p.os != "unknown")
                    .map(|p| p.to_string())
                    .collect(),
            })
    }
}

fn schema1(url: &str, media_type: &str) -> Error {
    Error::UnsupportedManifest {
        url: url.to_string(),
        media_type: media_type.to_string(),
        reason: "Docker schema1 manifests are deprecated and not supported; push the image again with a current docker/podman/skopeo (schema2 or OCI)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    #[test]
    fn image_and_index() {
        let img = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{}","size":3}},"layers":[{{"mediaType":"x","digest":"{}","size":5}}]}}"#,
            d(1),
            d(2)
        );
        let m = Manifest::parse(img.clone().into_bytes(), Some(DOCKER_MANIFEST), "u").unwrap();
        assert_eq!(m.kind, Kind::Image);
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.digest, Digest::of(img.as_bytes()));
        // Lying content type.
        let err = Manifest::parse(img.into_bytes(), Some(OCI_INDEX), "u").unwrap_err();
        assert!(err.to_string().contains("Content-Type"), "{err}");

        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}}]}}"#,
            d(3),
            d(4)
        );
        let m = Manifest::parse(idx.into_bytes(), Some(OCI_INDEX), "u").unwrap();
        assert_eq!(m.kind, Kind::Index);
        assert_eq!(
            m.select(&Platform::parse("linux/arm/v7").unwrap(), "r")
                .unwrap()
                .digest
                .to_string(),
            d(4)
        );
        let err = m
            .select(&Platform::parse("linux/s390x").unwrap(), "r")
            .unwrap_err()
            .to_string();
        assert!(err.contains("linux/amd64, linux/arm/v7"), "{err}");
    }

    #[test]
    fn schema1_refused() {
        let s1 = r#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        let err =
            Manifest::parse(s1.as_bytes().to_vec(), Some(DOCKER_SCHEMA1_SIGNED), "u").unwrap_err();
        assert!(err.to_string().contains("schema1"), "{err}");
        let err = Manifest::parse(s1.as_bytes().to_vec(), None, "u").unwrap_err();
        assert!(err.to_string().contains("schema1"), "{err}");
    }
}
