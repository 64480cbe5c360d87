//! Content digests (`sha256:<64 hex>`) and incremental verification.

use crate::error::{Error, Result};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// A validated `sha256:<64 lowercase hex>` digest.
///
/// Only sha256 is accepted: it is what every registry serves and what the
/// store keys blobs by; other algorithms are refused when parsed, so nothing
/// unverifiable enters the pipeline.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses and validates a digest string.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidDigest {
            digest: s.to_string(),
            reason: reason.to_string(),
        };
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| bad("missing algorithm prefix"))?;
        if alg != "sha256" {
            return Err(bad("only sha256 digests are supported"));
        }
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("expected 64 lowercase hex digits"));
        }
        Ok(Digest(s.to_string()))
    }

    /// The sha256 digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(data))))
    }

    /// The full `sha256:...` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Incremental sha256 over a stream; [`Verifier::finish`] compares with the
/// expected digest.
#[derive(Clone)]
pub struct Verifier {
    hasher: Sha256,
    len: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            hasher: Sha256::new(),
            len: 0,
        }
    }
}

impl Verifier {
    /// A verifier that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.len += data.len() as u64;
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything fed.
    pub fn digest(&self) -> Digest {
        Digest(format!(
            "sha256:{}",
            hex::encode(self.hasher.clone().finalize())
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_compute() {
        let d = Digest::of(b"");
        assert_eq!(
            d.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(Digest::parse("sha512:e3b0").is_err());
        assert!(Digest::parse(&d.as_str().to_uppercase()).is_err());
        let mut v = Verifier::new();
        v.update(b"ab");
        v.update(b"c");
        assert_eq!(v.digest(), Digest::of(b"abc"));
        assert_eq!(v.len(), 3);
    }
}
