//! A real registry for tests: Debian's `docker-registry` (the distribution
//! registry) on a free loopback port with a temporary storage dir, in three
//! auth modes (anonymous, htpasswd basic auth, token auth with a test token
//! issuer run here); a recording proxy that can throttle or corrupt blob
//! responses; a scripted fault server for hostile answers; and helpers that
//! build images with umoci and place them with skopeo.
//!
//! Token auth: the harness makes a self-signed RSA certificate with `openssl`,
//! gives it to the registry as `rootcertbundle`, and its issuer signs RS256
//! JWTs (with `openssl dgst -sign`) carrying the certificate in the `x5c`
//! header. The issuer grants what a request asks for when the Basic
//! credentials match (or anonymously, for pulls, if allowed) and counts the
//! token requests it served.

use anyhow::{Context as _, Result, bail, ensure};
use base64::Engine as _;
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

pub use crate::overlay::have;

/// Skips the calling test loudly unless all `tools` are installed.
#[macro_export]
macro_rules! require_tools {
    ($($tool:expr),+) => {
        for t in [$($tool),+] {
            if !$crate::registry::have(t) {
                eprintln!("SKIPPED: {} needs `{t}` on PATH (install it; CI has it)", module_path!());
                return;
            }
        }
    };
}

/// The runtime the harness servers run on (separate from any test's).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("harness runtime")
    })
}

/// This machine's first non-loopback IPv4 address (the source address of a
/// route to a public address; nothing is sent), if any.
pub fn non_loopback_ip() -> Option<String> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("8.8.8.8:9")
        .or_else(|_| s.connect("10.255.255.255:9"))
        .ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How the registry authenticates.
#[derive(Clone, Debug)]
pub enum Auth {
    /// No auth.
    Anonymous,
    /// htpasswd (bcrypt) basic auth with one user.
    Htpasswd {
        /// User.
        user: String,
        /// Password.
        password: String,
    },
    /// Token auth with the harness's issuer and one user.
    Token {
        /// User.
        user: String,
        /// Password.
        password: String,
        /// Whether the issuer grants pull tokens without credentials.
        anonymous_pull: bool,
    },
}

impl Auth {
    /// htpasswd basic auth for one user.
    pub fn htpasswd(user: &str, password: &str) -> Auth {
        Auth::Htpasswd {
            user: user.into(),
            password: password.into(),
        }
    }

    /// Token auth for one user; `anonymous_pull` lets the issuer grant pull
    /// tokens without credentials.
    pub fn token(user: &str, password: &str, anonymous_pull: bool) -> Auth {
        Auth::Token {
            user: user.into(),
            password: password.into(),
            anonymous_pull,
        }
    }
}

/// A registry with one test image placed in it: the common opening of the
/// registry tests. Drop order: the registry stops before the dir goes.
pub struct Placed {
    /// The registry.
    pub reg: Registry,
    /// The test's scratch dir, holding the image's OCI layout; stores and
    /// credential files of the test go here too.
    pub dir: tempfile::TempDir,
    /// The OCI layout the image was built in, tagged `v1`.
    pub layout: PathBuf,
    /// `HOST/REPO:TAG`: the image's name in the registry.
    pub name: String,
}

/// A running `docker-registry`. Killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// Temp dir with config and storage.
    pub dir: tempfile::TempDir,
    /// The token issuer (token auth only).
    pub issuer: Option<TokenIssuer>,
    /// The auth mode.
    pub auth: Auth,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Starts a registry; `None` (after printing why) when `docker-registry`
    /// is not installed.
    pub fn start(auth: Auth) -> Option<Registry> {
        if !have("docker-registry") {
            eprintln!(
                "SKIPPED: docker-registry is not installed (apt-get install docker-registry)"
            );
            return None;
        }
        Some(Self::try_start(auth, "127.0.0.1").expect("starting docker-registry"))
    }

    /// Starts an anonymous registry listening on `ip` (e.g. this machine's
    /// non-loopback address, to test what lamina does with plain HTTP there).
    pub fn start_on(ip: &str) -> Option<Registry> {
        if !have("docker-registry") {
            eprintln!(
                "SKIPPED: docker-registry is not installed (apt-get install docker-registry)"
            );
            return None;
        }
        Some(Self::try_start(Auth::Anonymous, ip).expect("starting docker-registry"))
    }

    fn try_start(auth: Auth, ip: &str) -> Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("lamina-registry-")
            .tempdir()?;
        let mut issuer = None;
        let auth_yaml = match &auth {
            Auth::Anonymous => String::new(),
            Auth::Htpasswd { user, password } => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .context("htpasswd")?;
                ensure!(out.status.success(), "htpasswd failed");
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout)?;
                format!(
                    "auth:\n  htpasswd:\n    realm: lamina-test\n    path: {}\n",
                    file.display()
                )
            }
            Auth::Token {
                user,
                password,
                anonymous_pull,
            } => {
                let iss = TokenIssuer::start(dir.path(), user, password, *anonymous_pull)?;
                let yaml = format!(
                    "auth:\n  token:\n    realm: http://{}/token\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    iss.addr,
                    TokenIssuer::SERVICE,
                    TokenIssuer::ISSUER,
                    iss.cert.display()
                );
                issuer = Some(iss);
                yaml
            }
        };
        for _attempt in 0..5 {
            let port = free_port();
            let host = format!("{ip}:{port}");
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n  secret: lamina-test-secret\n{auth_yaml}",
                    dir.path().join("data").display()
                ),
            )?;
            let log = std::fs::File::create(dir.path().join("registry.log"))?;
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("spawning docker-registry")?;
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Some(status) = child.try_wait()? {
                    let log = std::fs::read_to_string(dir.path().join("registry.log"))
                        .unwrap_or_default();
                    if log.contains("address already in use") {
                        break;
                    }
                    bail!("docker-registry exited with {status}: {log}");
                }
                if let Ok(resp) = http_get(&host, "/v2/")
                    && (resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.1 401"))
                {
                    return Ok(Registry {
                        child,
                        host,
                        dir,
                        issuer,
                        auth,
                    });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    bail!("docker-registry did not answer on {host}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        bail!("no free port for docker-registry after 5 attempts")
    }

    /// [`Registry::start`], then [`Registry::place`]; `None` (after printing
    /// why) when `docker-registry` is not installed.
    pub fn with_image(
        auth: Auth,
        repo_ref: &str,
        build: impl FnOnce(&Path) -> PathBuf,
    ) -> Option<Placed> {
        Some(Self::start(auth)?.place(repo_ref, build))
    }

    /// Makes a scratch dir, builds an image there with `build` (which returns
    /// its OCI layout, tag `v1`) and copies it to `REPO:TAG` (`repo_ref`) here
    /// with skopeo.
    pub fn place(self, repo_ref: &str, build: impl FnOnce(&Path) -> PathBuf) -> Placed {
        let dir = tempfile::tempdir().expect("scratch dir");
        let layout = build(dir.path());
        self.put_oci(&layout, "v1", repo_ref)
            .expect("placing the test image with skopeo");
        let name = format!("{}/{repo_ref}", self.host);
        Placed {
            reg: self,
            dir,
            layout,
            name,
        }
    }

    /// `--src-creds`/`--dest-creds` value for skopeo, if the registry has a user.
    pub fn creds(&self) -> Option<String> {
        match &self.auth {
            Auth::Anonymous => None,
            Auth::Htpasswd { user, password } | Auth::Token { user, password, .. } => {
                Some(format!("{user}:{password}"))
            }
        }
    }

    /// Copies `oci:LAYOUT:TAG` to `docker://HOST/REPO` with skopeo.
    pub fn put_oci(&self, layout: &Path, tag: &str, repo_ref: &str) -> Result<()> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "-q", "--dest-tls-verify=false"]);
        if let Some(c) = self.creds() {
            cmd.arg(format!("--dest-creds={c}"));
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()));
        cmd.arg(format!("docker://{}/{repo_ref}", self.host));
        run(&mut cmd)
    }

    /// Copies `docker://HOST/REPO` to `oci:LAYOUT:TAG` with skopeo.
    pub fn get_oci(&self, repo_ref: &str, layout: &Path, tag: &str) -> Result<()> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "-q", "--src-tls-verify=false"]);
        if let Some(c) = self.creds() {
            cmd.arg(format!("--src-creds={c}"));
        }
        cmd.arg(format!("docker://{}/{repo_ref}", self.host));
        cmd.arg(format!("oci:{}:{tag}", layout.display()));
        run(&mut cmd)
    }
}

/// Runs a command, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A raw HTTP/1.1 GET (status line and headers only matter).
pub fn http_get(host: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// What one layer of a test image holds: path → content. A path ending in
/// `/` is a directory; content starting with `->` makes a symlink.
pub type LayerSpec<'a> = &'a [(&'a str, &'a [u8])];

/// Builds `oci:LAYOUT:TAG` with umoci: one layer per spec (each repack adds
/// the changes as a new layer). Returns the layout path.
pub fn build_image(layout: &Path, tag: &str, layers: &[LayerSpec<'_>]) -> Result<()> {
    build_image_with(layout, tag, layers.len(), |i, root| {
        for (path, content) in layers[i].iter() {
            let p = root.join(path.trim_end_matches('/'));
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if path.ends_with('/') {
                std::fs::create_dir_all(&p)?;
            } else if let Some(target) = content.strip_prefix(b"->") {
                std::os::unix::fs::symlink(std::str::from_utf8(target)?, &p)?;
            } else {
                std::fs::write(&p, content)?;
            }
        }
        Ok(())
    })
}

/// Builds `oci:LAYOUT:TAG` with umoci (making the layout if it is missing):
/// `layers` layers, the `i`th being what `change(i, rootfs)` does to the
/// unpacked rootfs of the image so far (writes, removals: a removal becomes a
/// whiteout).
pub fn build_image_with(
    layout: &Path,
    tag: &str,
    layers: usize,
    mut change: impl FnMut(usize, &Path) -> Result<()>,
) -> Result<()> {
    if !layout.join("index.json").exists() {
        run(Command::new("umoci").args(["init", "--layout"]).arg(layout))?;
    }
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    for i in 0..layers {
        let bundle = tempfile::Builder::new()
            .prefix("lamina-bundle-")
            .tempdir()?;
        let b = bundle.path().join("b");
        run(Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&b))?;
        change(i, &b.join("rootfs"))?;
        run(Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&b))?;
    }
    Ok(())
}

/// `DIR/oci` with one image, tag `v1`: one layer holding `big.bin` = `data`
/// (for tests that cut, throttle or kill a blob download).
pub fn big_file_image(dir: &Path, data: &[u8]) -> PathBuf {
    let layout = dir.join("oci");
    build_image(&layout, "v1", &[&[("big.bin", data)]]).expect("building the image with umoci");
    layout
}

/// `DIR/oci` with two one-layer images, tags `amd` and `arm`, whose file
/// `arch` holds `amd64\n` and `arm64\n` (the parts of a multi-platform index).
pub fn arch_images(dir: &Path) -> PathBuf {
    let layout = dir.join("oci");
    for (tag, arch) in [("amd", b"amd64\n"), ("arm", b"arm64\n")] {
        build_image(&layout, tag, &[&[("arch", arch)]]).expect("building the image with umoci");
    }
    layout
}

/// `umoci unpack` of `oci:LAYOUT:TAG` into `dest`; returns `dest/rootfs`.
pub fn umoci_unpack(layout: &Path, tag: &str, dest: &Path) -> Result<PathBuf> {
    run(Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:{tag}", layout.display())])
        .arg(dest))?;
    Ok(dest.join("rootfs"))
}

/// A comparable listing of a tree: relative path → kind, mode, content
/// digest or link target (mtimes and ownership left out).
pub fn tree_listing(root: &Path) -> Result<BTreeMap<String, String>> {
    use sha2::Digest as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let p = e.path();
            let rel = p.strip_prefix(root)?.to_string_lossy().into_owned();
            let md = std::fs::symlink_metadata(&p)?;
            let mode = md.permissions().mode() & 0o7777;
            let ft = md.file_type();
            let desc = if ft.is_symlink() {
                format!("link {}", std::fs::read_link(&p)?.display())
            } else if ft.is_dir() {
                walk(root, &p, out)?;
                format!("dir {mode:o}")
            } else if ft.is_file() {
                let data = std::fs::read(&p)?;
                format!("file {mode:o} {}", hex::encode(sha2::Sha256::digest(&data)))
            } else {
                format!("other {mode:o}")
            };
            out.insert(rel, desc);
        }
        Ok(())
    }
    walk(root, root, &mut out)?;
    Ok(out)
}

/// The union of layer dirs (bottom first) as a listing, later layers
/// overriding earlier ones — valid for images without whiteouts.
pub fn merged_listing(layer_dirs: &[PathBuf]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for d in layer_dirs {
        out.extend(tree_listing(d)?);
    }
    Ok(out)
}

// ---------------------------------------------------------------- HTTP bits

/// A parsed HTTP request head.
#[derive(Clone, Debug)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// First header with this (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn read_head(s: &mut tokio::net::TcpStream) -> Option<(Request, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let rest = buf[end + 4..].to_vec();
            let mut lines = head.split("\r\n");
            let mut first = lines.next()?.split(' ');
            let method = first.next()?.to_string();
            let path = first.next()?.to_string();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            return Some((
                Request {
                    method,
                    path,
                    headers,
                },
                rest,
            ));
        }
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// A canned HTTP response.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Never answer (hold the connection open).
    pub hang: bool,
}

impl Response {
    /// A response with a status and body.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: vec![],
            body: body.into(),
            hang: false,
        }
    }
    /// Adds a header.
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
    /// A response that never comes.
    pub fn hang() -> Self {
        Response {
            status: 0,
            headers: vec![],
            body: vec![],
            hang: true,
        }
    }
}

async fn write_response(s: &mut tokio::net::TcpStream, r: &Response) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.status,
        r.body.len()
    );
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(&r.body).await?;
    s.shutdown().await
}

/// A scripted HTTP server: every request is answered by the handler.
pub struct FaultServer {
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// Requests seen.
    pub requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultServer {
    /// Starts a server answering with `handler(request, own host)`.
    pub fn start(
        handler: impl Fn(&Request, &str) -> Response + Send + Sync + 'static,
    ) -> FaultServer {
        let listener = runtime()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        let (h, reqs) = (host.clone(), requests.clone());
        let task = runtime().spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (handler, reqs, h) = (handler.clone(), reqs.clone(), h.clone());
                tokio::spawn(async move {
                    let Some((req, _)) = read_head(&mut s).await else {
                        return;
                    };
                    reqs.lock().unwrap().push(req.clone());
                    let resp = handler(&req, &h);
                    if resp.hang {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    let _ = write_response(&mut s, &resp).await;
                });
            }
        });
        FaultServer {
            host,
            requests,
            task,
        }
    }
}

// ------------------------------------------------------------- token issuer

/// The test token issuer (see the module docs).
pub struct TokenIssuer {
    /// `127.0.0.1:PORT` of the realm.
    pub addr: SocketAddr,
    /// The certificate the registry trusts.
    pub cert: PathBuf,
    /// Token requests served (with a token).
    pub issued: Arc<AtomicUsize>,
    /// Token requests refused.
    pub refused: Arc<AtomicUsize>,
    /// Scopes asked for, in order.
    pub scopes: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

impl TokenIssuer {
    /// The `service` the registry is configured with.
    pub const SERVICE: &'static str = "lamina-test-registry";
    /// The `issuer` the registry is configured with.
    pub const ISSUER: &'static str = "lamina-test-issuer";

    fn start(dir: &Path, user: &str, password: &str, anonymous_pull: bool) -> Result<TokenIssuer> {
        let key = dir.join("issuer.key");
        let cert = dir.join("issuer.crt");
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=lamina-test-issuer",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert))?;
        let pem = std::fs::read_to_string(&cert)?;
        let der_b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let listener = runtime().block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let issued = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let scopes = Arc::new(Mutex::new(Vec::new()));
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let (iss, refs, scs) = (issued.clone(), refused.clone(), scopes.clone());
        let task = runtime().spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let (key, der_b64, expected) = (key.clone(), der_b64.clone(), expected.clone());
                let (iss, refs, scs) = (iss.clone(), refs.clone(), scs.clone());
                tokio::spawn(async move {
                    let Some((req, _)) = read_head(&mut s).await else { return };
                    let query = req.path.split_once('?').map(|(_, q)| q.to_string()).unwrap_or_default();
                    let requested: Vec<String> = query
                        .split('&')
                        .filter_map(|kv| kv.strip_prefix("scope="))
                        .map(percent_decode)
                        .collect();
                    scs.lock().unwrap().extend(requested.iter().cloned());
                    let authed = req.header("authorization") == Some(expected.as_str());
                    let has_creds = req.header("authorization").is_some();
                    let pull_only = requested.iter().all(|s| s.ends_with(":pull"));
                    if !(authed || (!has_creds && anonymous_pull && pull_only)) {
                        refs.fetch_add(1, Ordering::SeqCst);
                        let r = Response::new(401, r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#)
                            .header("Content-Type", "application/json");
                        let _ = write_response(&mut s, &r).await;
                        return;
                    }
                    let access: Vec<serde_json::Value> = requested
                        .iter()
                        .filter_map(|sc| {
                            let mut parts = sc.splitn(3, ':');
                            let (t, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                            Some(serde_json::json!({"type": t, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                        })
                        .collect();
                    let token = tokio::task::spawn_blocking(move || sign_jwt(&key, &der_b64, access)).await.unwrap();
                    match token {
                        Ok(t) => {
                            iss.fetch_add(1, Ordering::SeqCst);
                            let body = serde_json::json!({"token": t, "access_token": t, "expires_in": 300}).to_string();
                            let _ = write_response(&mut s, &Response::new(200, body).header("Content-Type", "application/json")).await;
                        }
                        Err(e) => {
                            let _ = write_response(&mut s, &Response::new(500, e.to_string())).await;
                        }
                    }
                });
            }
        });
        Ok(TokenIssuer {
            addr,
            cert,
            issued,
            refused,
            scopes,
            task,
        })
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn sign_jwt(key: &Path, der_b64: &str, access: Vec<serde_json::Value>) -> Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [der_b64]});
    let claims = serde_json::json!({
        "iss": TokenIssuer::ISSUER,
        "sub": "lamina-test",
        "aud": TokenIssuer::SERVICE,
        "exp": now + 300,
        "nbf": now - 30,
        "iat": now - 30,
        "jti": format!("{now}-{}", rand::random::<u64>()),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "openssl dgst -sign: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(format!("{input}.{}", b64url(&out.stdout)))
}

// -------------------------------------------------------------------- proxy

/// What the proxy does to blob GET responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Pass through.
    Pass,
    /// At most this many body bytes per second per blob response.
    Throttle(u64),
    /// Flip byte 4 (the gzip header's MTIME, which decoders ignore) of every
    /// blob body larger than 100 kB (a layer, not a config): the layer still
    /// decompresses to the right tar and diff id, only the blob digest fails.
    Corrupt,
    /// Close the connection after this many body bytes of every blob GET
    /// without a `Range` header (a dropped connection).
    Cut(u64),
}

/// One request the proxy forwarded.
#[derive(Clone, Debug)]
pub struct ProxyLog {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// Response bytes sent to the client, headers included.
    pub bytes: Arc<AtomicU64>,
}

/// An HTTP proxy in front of a registry (the client talks to it as if it
/// were the registry): one upstream connection per request, logging every
/// request and the bytes sent back, optionally throttling or corrupting blob
/// bodies.
pub struct Proxy {
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// Requests forwarded.
    pub log: Arc<Mutex<Vec<ProxyLog>>>,
    mode: Arc<Mutex<ProxyMode>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Starts a proxy to `upstream` (`host:port`).
    pub fn start(upstream: &str, mode: ProxyMode) -> Proxy {
        let listener = runtime()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(Mutex::new(mode));
        let (up, lg, md) = (upstream.to_string(), log.clone(), mode.clone());
        let task = runtime().spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (up, lg, md) = (up.clone(), lg.clone(), md.clone());
                tokio::spawn(async move {
                    let _ = proxy_conn(client, &up, lg, md).await;
                });
            }
        });
        Proxy {
            host,
            log,
            mode,
            task,
        }
    }

    /// Changes the mode for new requests.
    pub fn set_mode(&self, mode: ProxyMode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Blob GETs forwarded so far: (path, range, bytes sent).
    pub fn blob_gets(&self) -> Vec<(String, Option<String>, u64)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.method == "GET" && l.path.contains("/blobs/"))
            .map(|l| {
                (
                    l.path.clone(),
                    l.range.clone(),
                    l.bytes.load(Ordering::SeqCst),
                )
            })
            .collect()
    }
}

async fn proxy_conn(
    mut client: tokio::net::TcpStream,
    upstream: &str,
    log: Arc<Mutex<Vec<ProxyLog>>>,
    mode: Arc<Mutex<ProxyMode>>,
) -> std::io::Result<()> {
    let Some((req, mut body_start)) = read_head(&mut client).await else {
        return Ok(());
    };
    let bytes = Arc::new(AtomicU64::new(0));
    log.lock().unwrap().push(ProxyLog {
        method: req.method.clone(),
        path: req.path.clone(),
        range: req.header("range").map(str::to_string),
        bytes: bytes.clone(),
    });
    let mode = *mode.lock().unwrap();
    let is_blob = req.method == "GET" && req.path.contains("/blobs/sha256:");
    let mut up = tokio::net::TcpStream::connect(upstream).await?;
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
    for (k, v) in &req.headers {
        if k != "connection" && k != "host" {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str(&format!("Host: {upstream}\r\nConnection: close\r\n\r\n"));
    up.write_all(head.as_bytes()).await?;
    let body_len: u64 = req
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if body_len > 0 {
        body_start.truncate(body_len as usize);
        up.write_all(&body_start).await?;
        let mut remaining = body_len - body_start.len() as u64;
        let mut buf = vec![0u8; 64 << 10];
        while remaining > 0 {
            let n = client
                .read(&mut buf[..remaining.min(64 << 10) as usize])
                .await?;
            if n == 0 {
                break;
            }
            up.write_all(&buf[..n]).await?;
            remaining -= n as u64;
        }
    }
    let mut buf = vec![0u8; 16 << 10];
    let mut head_done = false;
    let mut head_buf = Vec::new();
    let mut body_pos = 0u64;
    let mut body_total = 0u64;
    let started = Instant::now();
    loop {
        let n = up.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let mut chunk = buf[..n].to_vec();
        if !head_done {
            head_buf.extend_from_slice(&chunk);
            let Some(end) = head_buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            head_done = true;
            let head_text = String::from_utf8_lossy(&head_buf[..end]).to_ascii_lowercase();
            body_total = head_text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            chunk = std::mem::take(&mut head_buf);
            client.write_all(&chunk[..end + 4]).await?;
            bytes.fetch_add((end + 4) as u64, Ordering::SeqCst);
            chunk.drain(..end + 4);
        }
        if is_blob && mode == ProxyMode::Corrupt && body_total > 100_000 {
            let at = 4;
            if at >= body_pos && at < body_pos + chunk.len() as u64 {
                chunk[(at - body_pos) as usize] ^= 0x5a;
            }
        }
        if let (true, ProxyMode::Cut(limit), None) = (is_blob, mode, req.header("range"))
            && body_pos + chunk.len() as u64 > limit
        {
            let keep = limit.saturating_sub(body_pos) as usize;
            client.write_all(&chunk[..keep]).await?;
            bytes.fetch_add(keep as u64, Ordering::SeqCst);
            return Ok(());
        }
        body_pos += chunk.len() as u64;
        if let (true, ProxyMode::Throttle(rate)) = (is_blob, mode) {
            let due = Duration::from_secs_f64(body_pos as f64 / rate as f64);
            let elapsed = started.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
        }
        client.write_all(&chunk).await?;
        bytes.fetch_add(chunk.len() as u64, Ordering::SeqCst);
    }
    client.shutdown().await
}

/// Incompressible bytes of a given size (for large layers).
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::Rng::fill(&mut rand::rng(), &mut v[..]);
    v
}
