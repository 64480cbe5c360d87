//! The `WWW-Authenticate` challenge and bearer tokens.
//!
//! Flow (distribution-spec / docker token auth): `GET /v2/` answers 401 with a
//! challenge; for `Bearer`, lamina asks the challenge's `realm` for a token
//! with `service` and the repository `scope` it needs (with Basic credentials
//! if it has some, anonymously otherwise) and sends it as `Authorization:
//! Bearer`. Tokens are cached per registry and scope until they expire, so a
//! pull fetches one token however many blobs it downloads. For `Basic`, the
//! credentials are sent with every request.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A parsed `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// `bearer` or `basic` (lowercased).
    pub scheme: String,
    /// The parameters (`realm`, `service`, `scope`, `error`...), keys lowercased.
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// Parses `Scheme k="v", k2=v2`. Returns `None` for an empty header.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, rest) = match header.split_once(char::is_whitespace) {
            Some((s, r)) => (s, r),
            None => (header, ""),
        };
        if scheme.is_empty() {
            return None;
        }
        let mut params = BTreeMap::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
                chars.next();
            }
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' || c == ',' {
                    break;
                }
                key.push(c);
                chars.next();
            }
            if key.is_empty() {
                break;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'=') {
                chars.next();
                if chars.peek() == Some(&'"') {
                    chars.next();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => value.extend(chars.next()),
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                } else {
                    while let Some(&c) = chars.peek() {
                        if c == ',' {
                            break;
                        }
                        value.push(c);
                        chars.next();
                    }
                }
            }
            params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
        Some(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }

    /// True for a bearer-token challenge with a realm.
    pub fn is_bearer(&self) -> bool {
        self.scheme == "bearer" && self.params.contains_key("realm")
    }
}

/// A cached bearer token.
#[derive(Clone)]
pub(crate) struct Token {
    pub(crate) value: String,
    pub(crate) expires: Instant,
}

impl Token {
    pub(crate) fn new(value: String, expires_in: Option<u64>) -> Self {
        // Docker's default lifetime is 60 s; keep a margin.
        let life = expires_in.unwrap_or(60).max(10);
        Token {
            value,
            expires: Instant::now() + Duration::from_secs(life.saturating_sub(5)),
        }
    }

    pub(crate) fn fresh(&self) -> bool {
        Instant::now() < self.expires
    }
}

/// The scope string for a repository and actions, e.g.
/// `repository:library/alpine:pull`.
pub fn repository_scope(repository: &str, push: bool) -> String {
    format!(
        "repository:{repository}:{}",
        if push { "pull,push" } else { "pull" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        )
        .unwrap();
        assert!(c.is_bearer());
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:library/alpine:pull");
        let c = Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");
        let c = Challenge::parse(r#"Bearer realm="a\"b", error=insufficient_scope"#).unwrap();
        assert_eq!(c.params["realm"], "a\"b");
        assert_eq!(c.params["error"], "insufficient_scope");
        assert!(Challenge::parse("").is_none());
    }
}
