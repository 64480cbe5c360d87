//! Platforms (`os/arch[/variant]`) and choosing one from an index.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// An OCI platform, as in an index entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// Architecture in GOARCH spelling, e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// Variant, e.g. `v8` for arm64, `v7` for arm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// OS version (Windows); carried, not matched.
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(Error::InvalidPlatform {
                platform: s.to_string(),
            });
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: normalise_arch(parts[1]).to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
            os_version: None,
        })
    }

    /// The platform lamina runs on.
    pub fn host() -> Self {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: arch.to_string(),
            variant: variant.map(str::to_string),
            os_version: None,
        }
    }

    /// Whether an index entry's platform satisfies this wanted platform.
    /// A wanted variant must match (arm64's implied `v8` counts as absent);
    /// no wanted variant accepts any.
    pub fn matches(&self, candidate: &Platform) -> bool {
        let norm = |p: &Platform| -> Option<String> {
            match (p.architecture.as_str(), p.variant.as_deref()) {
                ("arm64", Some("v8")) => None,
                (_, v) => v.map(str::to_string),
            }
        };
        self.os == candidate.os
            && normalise_arch(&self.architecture) == normalise_arch(&candidate.architecture)
            && (self.variant.is_none() || norm(self) == norm(candidate))
    }
}

fn normalise_arch(a: &str) -> &str {
    match a {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let want = Platform::parse("linux/arm64").unwrap();
        assert!(want.matches(&Platform::parse("linux/arm64/v8").unwrap()));
        assert!(!want.matches(&Platform::parse("linux/amd64").unwrap()));
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        assert!(v7.matches(&Platform::parse("linux/arm/v7").unwrap()));
        assert!(!v7.matches(&Platform::parse("linux/arm/v6").unwrap()));
        assert!(
            Platform::parse("linux/amd64")
                .unwrap()
                .matches(&Platform::parse("linux/x86_64").unwrap())
        );
        assert_eq!(
            Platform::parse("linux/arm/v7").unwrap().to_string(),
            "linux/arm/v7"
        );
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Platform::host().os, "linux");
    }
}
