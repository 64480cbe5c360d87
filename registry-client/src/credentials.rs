//! Where credentials come from, and where `lamina login` puts them.
//!
//! Lookup order for a registry: credentials given explicitly to the client;
//! lamina's own auth file; docker's `config.json` — `credHelpers[registry]`,
//! then `auths[registry]`, then `credsStore` (a `docker-credential-<name>`
//! helper is used only when its binary is on `PATH`).
//!
//! lamina's auth file is `$LAMINA_AUTH_FILE` if set, else
//! `$XDG_CONFIG_HOME/lamina/auth.json`, else `~/.config/lamina/auth.json`. It
//! uses docker's `config.json` format (`{"auths":{"host":{"auth":
//! base64(user:password)}}}`), so docker/podman/skopeo can read it with
//! `--authfile`. It is written atomically with mode 0600 in a 0700 directory.
//!
//! Docker Hub is stored under `https://index.docker.io/v1/` as docker does;
//! keys are matched after stripping a scheme and a path.
//!
//! A lookup reads the files every time; a [`crate::Client`] caches it per
//! registry and uses [`CredentialSources::stamp`] (one `stat` per file) to
//! notice that a file was written since (see the client's module docs for
//! when it reads again).

use crate::error::{Error, Result};
use crate::reference::DOCKER_HUB;
use base64::Engine as _;
use serde_json::{Map, Value};
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A user name and password (or token). `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials {{ username: {:?}, password: <redacted> }}",
            self.username
        )
    }
}

impl Credentials {
    /// The `Authorization: Basic` header value.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// The key docker uses in `auths` for a registry.
pub fn auth_key(registry: &str) -> String {
    if registry == DOCKER_HUB {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    }
}

/// The registry a config key designates (`https://host/path` → `host`).
fn normalise_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB.to_string(),
        h => h.to_string(),
    }
}

/// lamina's auth file path (see the module docs).
pub fn lamina_auth_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LAMINA_AUTH_FILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(d).join("lamina/auth.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/lamina/auth.json"))
}

/// Docker's config file: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
pub fn docker_config_file() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// The credential sources a client consults.
#[derive(Clone, Debug, Default)]
pub struct CredentialSources {
    /// Explicit credentials per registry (e.g. `lamina login` verifying them).
    pub explicit: Vec<(String, Credentials)>,
    /// lamina's auth file, if any.
    pub lamina_file: Option<PathBuf>,
    /// docker's config.json, if any.
    pub docker_config: Option<PathBuf>,
}

impl CredentialSources {
    /// The default files (lamina's auth file and docker's config.json).
    pub fn from_env() -> Self {
        CredentialSources {
            explicit: vec![],
            lamina_file: lamina_auth_file(),
            docker_config: docker_config_file(),
        }
    }

    /// No credentials at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// What the credential files look like now, without reading them:
    /// device, inode, size and mtime of each (or its absence). Two equal
    /// stamps mean the files were very likely not written in between; a
    /// file replaced by a rename (as `lamina login` and docker write them)
    /// always changes it. Credential helpers have no stamp.
    pub fn stamp(&self) -> SourcesStamp {
        use std::os::unix::fs::MetadataExt as _;
        let file = |p: &Option<PathBuf>| {
            p.as_ref()
                .and_then(|p| std::fs::metadata(p).ok())
                .map(|m| FileStamp {
                    dev: m.dev(),
                    ino: m.ino(),
                    size: m.size(),
                    mtime: (m.mtime(), m.mtime_nsec()),
                })
        };
        SourcesStamp([file(&self.lamina_file), file(&self.docker_config)])
    }

    /// Credentials for `registry` (as in a reference: `docker.io`,
    /// `localhost:5000`), or `None` for anonymous access.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credentials>> {
        if let Some((_, c)) = self.explicit.iter().find(|(r, _)| r == registry) {
            return Ok(Some(c.clone()));
        }
        if let Some(path) = &self.lamina_file
            && let Some(cfg) = read_config(path)?
            && let Some(c) = from_auths(&cfg, registry, path)?
        {
            return Ok(Some(c));
        }
        if let Some(path) = &self.docker_config
            && let Some(cfg) = read_config(path)?
        {
            let helper = cfg
                .get("credHelpers")
                .and_then(Value::as_object)
                .and_then(|h| h.iter().find(|(k, _)| normalise_key(k) == registry))
                .and_then(|(_, v)| v.as_str());
            if let Some(h) = helper
                && let Some(c) = run_helper(h, registry)?
            {
                return Ok(Some(c));
            }
            if let Some(c) = from_auths(&cfg, registry, path)? {
                return Ok(Some(c));
            }
            if let Some(store) = cfg.get("credsStore").and_then(Value::as_str)
                && let Some(c) = run_helper(store, registry)?
            {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }
}

/// The state of a [`CredentialSources`]' files; see [`CredentialSources::stamp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourcesStamp([Option<FileStamp>; 2]);

#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

fn read_config(path: &Path) -> Result<Option<Map<String, Value>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::CredentialsFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(Map::new()));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        // serde's message may quote the input; say only where.
        Ok(_) => Err(Error::CredentialsFile {
            path: path.to_path_buf(),
            reason: "not a JSON object".into(),
        }),
        Err(e) => Err(Error::CredentialsFile {
            path: path.to_path_buf(),
            reason: format!("invalid JSON at line {} column {}", e.line(), e.column()),
        }),
    }
}

fn from_auths(
    cfg: &Map<String, Value>,
    registry: &str,
    path: &Path,
) -> Result<Option<Credentials>> {
    let Some(auths) = cfg.get("auths").and_then(Value::as_object) else {
        return Ok(None);
    };
    let Some((_, entry)) = auths.iter().find(|(k, _)| normalise_key(k) == registry) else {
        return Ok(None);
    };
    let bad = || Error::CredentialsFile {
        path: path.to_path_buf(),
        reason: format!(
            "entry for {registry} has an `auth` field that is not base64(user:password)"
        ),
    };
    if let Some(auth) = entry
        .get("auth")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
    {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let (u, p) = raw.split_once(':').ok_or_else(bad)?;
        return Ok(Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        }));
    }
    match (
        entry.get("username").and_then(Value::as_str),
        entry.get("password").and_then(Value::as_str),
    ) {
        (Some(u), Some(p)) => Ok(Some(Credentials {
            username: u.into(),
            password: p.into(),
        })),
        _ => Ok(None),
    }
}

fn find_in_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn run_helper(helper: &str, registry: &str) -> Result<Option<Credentials>> {
    let err = |reason: String| Error::CredentialHelper {
        helper: helper.into(),
        registry: registry.into(),
        reason,
    };
    let Some(bin) = find_in_path(&format!("docker-credential-{helper}")) else {
        tracing::debug!(helper, "credential helper not installed; ignored");
        return Ok(None);
    };
    let server = if registry == DOCKER_HUB {
        auth_key(registry)
    } else {
        registry.to_string()
    };
    let mut child = Command::new(&bin)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run {}: {e}", bin.display())))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(server.as_bytes())
        .map_err(|e| err(format!("writing to it: {e}")))?;
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout);
        if msg.contains("credentials not found") {
            return Ok(None);
        }
        // Helpers print a one-line reason; it carries no secret.
        return Err(err(format!("{}: {}", out.status, msg.trim())));
    }
    let v: Value =
        serde_json::from_slice(&out.stdout).map_err(|_| err("output is not JSON".into()))?;
    match (
        v.get("Username").and_then(Value::as_str),
        v.get("Secret").and_then(Value::as_str),
    ) {
        (Some(u), Some(s)) => Ok(Some(Credentials {
            username: u.into(),
            password: s.into(),
        })),
        _ => Err(err("output lacks Username/Secret".into())),
    }
}

/// Stores credentials for `registry` in the docker-format auth file at
/// `path`, keeping its other entries; the file ends with mode 0600.
pub fn store(path: &Path, registry: &str, creds: &Credentials) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let io = |e: std::io::Error| Error::CredentialsFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut cfg = read_config(path)?.unwrap_or_default();
    let auths = cfg
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(auths) = auths else {
        return Err(Error::CredentialsFile {
            path: path.to_path_buf(),
            reason: "`auths` is not an object".into(),
        });
    };
    auths.retain(|k, _| normalise_key(k) != registry);
    let raw = format!("{}:{}", creds.username, creds.password);
    auths.insert(
        auth_key(registry),
        serde_json::json!({ "auth": base64::engine::general_purpose::STANDARD.encode(raw) }),
    );
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("auth"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    let body = serde_json::to_vec_pretty(&Value::Object(cfg)).expect("JSON value serialises");
    f.write_all(&body)
        .and_then(|_| f.write_all(b"\n"))
        .and_then(|_| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn store_and_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/auth.json");
        let c = Credentials {
            username: "u".into(),
            password: "p:w".into(),
        };
        store(&file, "localhost:5000", &c).unwrap();
        store(
            &file,
            DOCKER_HUB,
            &Credentials {
                username: "hub".into(),
                password: "x".into(),
            },
        )
        .unwrap();
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("https://index.docker.io/v1/"), "{text}");
        let src = CredentialSources {
            lamina_file: Some(file.clone()),
            ..Default::default()
        };
        assert_eq!(src.lookup("localhost:5000").unwrap(), Some(c));
        assert_eq!(src.lookup(DOCKER_HUB).unwrap().unwrap().username, "hub");
        assert_eq!(src.lookup("other:1").unwrap(), None);
        assert!(!format!("{:?}", src.lookup("localhost:5000").unwrap()).contains("p:w"));
    }

    #[test]
    fn docker_config_auths_and_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.json");
        std::fs::write(
            &cfg,
            r#"{"auths":{"https://reg.example.com/v1/":{"auth":"YTpi"}},"credHelpers":{"gone.example.com":"does-not-exist-lamina"}}"#,
        )
        .unwrap();
        let src = CredentialSources {
            docker_config: Some(cfg),
            ..Default::default()
        };
        let c = src.lookup("reg.example.com").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("a", "b"));
        // A helper that is not installed is ignored.
        assert_eq!(src.lookup("gone.example.com").unwrap(), None);
    }

    #[test]
    fn bad_file_error_has_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.json");
        std::fs::write(
            &cfg,
            r#"{"auths":{"r":{"auth":"c2VjcmV0LXdpdGhvdXQtY29sb24="}}}"#,
        )
        .unwrap();
        let src = CredentialSources {
            docker_config: Some(cfg),
            ..Default::default()
        };
        let e = src.lookup("r").unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
    }
}
