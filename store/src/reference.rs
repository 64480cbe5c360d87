//! Image name normalisation, as docker does it: `alpine` →
//! `docker.io/library/alpine:latest`, `user/app` → `docker.io/user/app:latest`,
//! `localhost:5000/app` → `localhost:5000/app:latest`, `index.docker.io` →
//! `docker.io`. The store keeps names only in this normalised form.
//!
//! This is the small subset the store needs to name images; the registry
//! client has the full reference parser.

use crate::{Digest, Error, Result};

/// The default registry.
pub const DEFAULT_DOMAIN: &str = "docker.io";

/// Normalises an image reference to `domain/path:tag`, `domain/path@digest`
/// or `domain/path:tag@digest`.
pub fn normalize(reference: &str) -> Result<String> {
    let bad = |reason: &str| Error::InvalidReference {
        reference: reference.to_string(),
        reason: reason.to_string(),
    };
    if reference.is_empty() {
        return Err(bad("empty"));
    }
    if reference.len() > 4096 {
        return Err(bad("too long"));
    }
    let (name_tag, digest) = match reference.split_once('@') {
        Some((n, d)) => (
            n,
            Some(Digest::parse(d).map_err(|_| bad("the digest must be sha256:<64 hex>"))?),
        ),
        None => (reference, None),
    };
    let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest.to_string())
        }
        _ => (DEFAULT_DOMAIN, name.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        DEFAULT_DOMAIN
    } else {
        domain
    };
    if !valid_domain(domain) {
        return Err(bad("invalid registry host"));
    }
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    if !path.split('/').all(valid_component) {
        return Err(bad(
            "repository names are lowercase letters, digits and separators (. _ -) between them",
        ));
    }
    if let Some(t) = tag
        && !valid_tag(t)
    {
        return Err(bad(
            "a tag is 1-128 of [A-Za-z0-9_.-], not starting with . or -",
        ));
    }
    let mut out = format!("{domain}/{path}");
    match (tag, &digest) {
        (Some(t), _) => {
            out.push(':');
            out.push_str(t);
        }
        (None, None) => out.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(d) = digest {
        out.push('@');
        out.push_str(d.as_str());
    }
    Ok(out)
}

/// Splits a normalised name into repository and tag (or digest) for display:
/// `docker.io/library/alpine:3` → (`docker.io/library/alpine`, `3`).
pub fn split_repo_tag(name: &str) -> (&str, &str) {
    if let Some((repo, digest)) = name.split_once('@') {
        let repo = match repo.rfind(':') {
            Some(i) if !repo[i..].contains('/') => &repo[..i],
            _ => repo,
        };
        return (repo, digest);
    }
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    }
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    !host.is_empty()
        && host.split('.').all(|l| {
            // A DNS label: alphanumerics and inner hyphens.
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, the distribution spec's path component.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && matches!(b[i], b'a'..=b'z' | b'0'..=b'9') {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        let sep = i;
        while i < b.len() && b[i] == b'-' {
            i += 1;
        }
        if i == sep {
            match (b[i], b.get(i + 1)) {
                (b'_', Some(b'_')) => i += 2,
                (b'.' | b'_', _) => i += 1,
                _ => return false,
            }
        }
    }
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn docker_examples() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        for (input, want) in [
            ("alpine", "docker.io/library/alpine:latest".to_string()),
            ("alpine:3.19", "docker.io/library/alpine:3.19".into()),
            ("user/app", "docker.io/user/app:latest".into()),
            ("docker.io/alpine", "docker.io/library/alpine:latest".into()),
            (
                "index.docker.io/library/alpine:1",
                "docker.io/library/alpine:1".into(),
            ),
            ("localhost/app", "localhost/app:latest".into()),
            ("localhost:5000/a/b:v1", "localhost:5000/a/b:v1".into()),
            ("quay.io/x/y", "quay.io/x/y:latest".into()),
            (
                &format!("alpine@{d}"),
                format!("docker.io/library/alpine@{d}"),
            ),
            (
                &format!("alpine:3@{d}"),
                format!("docker.io/library/alpine:3@{d}"),
            ),
        ] {
            assert_eq!(normalize(input).unwrap(), want, "{input}");
        }
        for bad in [
            "",
            "Alpine",
            "a//b",
            "a:",
            "a:-x",
            "a@sha256:xyz",
            "-a",
            "a/",
            "host:/x",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn split() {
        assert_eq!(
            split_repo_tag("localhost:5000/a:v1"),
            ("localhost:5000/a", "v1")
        );
        assert_eq!(split_repo_tag("localhost:5000/a"), ("localhost:5000/a", ""));
    }

    fn component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,4}((\\.|_|__|-{1,2})[a-z0-9]{1,4}){0,2}"
    }

    proptest! {
        /// Normalising is idempotent, always names a registry and a tag or digest,
        /// and keeps the repository path and tag.
        #[test]
        fn normalize_is_idempotent(
            domain in prop::option::of(prop::sample::select(vec!["docker.io", "localhost:5000", "quay.io", "localhost", "r.example.com:443"])),
            path in prop::collection::vec(component(), 1..4),
            tag in prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        ) {
            let mut path = path;
            if domain.is_none() {
                // Without a registry, a first component with a dot names a host (as in docker).
                path[0] = path[0].replace('.', "-");
                prop_assume!(path[0] != "localhost");
            }
            let mut r = String::new();
            if let Some(d) = domain { r.push_str(d); r.push('/'); }
            r.push_str(&path.join("/"));
            if let Some(t) = &tag { r.push(':'); r.push_str(t); }
            let n = normalize(&r).unwrap();
            prop_assert_eq!(normalize(&n).unwrap(), n.clone());
            let (repo, t) = split_repo_tag(&n);
            prop_assert_eq!(t, tag.as_deref().unwrap_or("latest"));
            prop_assert!(repo.ends_with(&path.join("/")));
            let first = repo.split('/').next().unwrap();
            prop_assert!(first.contains('.') || first.contains(':') || first == "localhost");
        }

        /// Uppercase in the repository path is always refused (docker does the same).
        #[test]
        fn uppercase_path_refused(path in "[a-z]{0,4}[A-Z][a-z]{0,4}") {
            let r = format!("docker.io/x/{path}");
            prop_assert!(normalize(&r).is_err());
        }
    }
}
