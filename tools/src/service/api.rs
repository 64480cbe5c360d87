//! The local HTTP/1.1 + JSON API on a Unix socket; the reference is
//! `docs/api.md`.
//!
//! Handlers call the store library the CLI calls, in blocking tasks; the
//! store's own locks make concurrent clients (and concurrent CLI runs) safe.
//! Two operations run the `lamina` binary itself on the same root instead:
//! `pull`, whose progress lines become the NDJSON event stream, and
//! `mount`, whose FUSE server must outlive the request (and the daemon).
//!
//! Every failure is a JSON `{"error": "..."}` with a 4xx status for what the
//! client got wrong (bad JSON, unknown image, path outside the mount roots)
//! and 5xx for what failed here; handlers never panic on input, and a
//! rejected request changes nothing.

use std::convert::Infallible;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode};
use lamina_store::{Error as StoreError, Store};
use serde::Deserialize;

use super::snapshots::Snapshots;
use crate::commands::images::image_json;
use crate::commands::inspect::inspect_json;

/// Largest JSON request body accepted.
const MAX_BODY: usize = 1 << 20;

/// What every request handler can reach.
pub struct State {
    /// lamina's image store.
    pub store: Arc<Store>,
    /// containerd snapshot records (read-only here).
    pub snapshots: Arc<Snapshots>,
    /// Directories under which mounts are allowed.
    pub mount_roots: Vec<PathBuf>,
}

impl State {
    /// The API's state.
    pub fn new(store: Arc<Store>, snapshots: Arc<Snapshots>, mount_roots: Vec<PathBuf>) -> Self {
        State {
            store,
            snapshots,
            mount_roots,
        }
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

/// An API failure: HTTP status and message.
#[derive(Debug)]
struct Fail(StatusCode, String);

impl Fail {
    fn bad(msg: impl Into<String>) -> Self {
        Fail(StatusCode::BAD_REQUEST, msg.into())
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::BlobNotFound(_)
            | StoreError::ImageNotFound(_)
            | StoreError::ContainerNotFound(_)
            | StoreError::LayerNotFound(_) => StatusCode::NOT_FOUND,
            StoreError::InvalidReference { .. }
            | StoreError::InvalidDigest(_)
            | StoreError::Ambiguous(_) => StatusCode::BAD_REQUEST,
            StoreError::ContainerNameInUse(_) | StoreError::ImageHasNames { .. } => {
                StatusCode::CONFLICT
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Fail(status, e.to_string())
    }
}

impl From<anyhow::Error> for Fail {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<StoreError>() {
            Ok(se) => se.into(),
            Err(e) => Fail(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        }
    }
}

type Reply = Result<Response<Body>, Fail>;

/// Accepts connections until the listener fails.
pub async fn serve(listener: tokio::net::UnixListener, state: Arc<State>) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move {
                    let resp = match route(state, req).await {
                        Ok(r) => r,
                        Err(Fail(status, msg)) => error(status, &msg),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("API connection: {e}");
            }
        });
    }
}

async fn route(state: Arc<State>, req: Request<hyper::body::Incoming>) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = Query::parse(req.uri().query());
    match (method.clone(), path.as_str()) {
        (Method::GET, "/v1/ping") => Ok(json(
            StatusCode::OK,
            &serde_json::json!({"ok": true, "version": env!("CARGO_PKG_VERSION")}),
        )),
        (Method::GET, "/v1/images") => {
            blocking(move || {
                let images = state.store.images()?;
                Ok(json(
                    StatusCode::OK,
                    &images.iter().map(image_json).collect::<Vec<_>>(),
                ))
            })
            .await
        }
        (Method::GET, "/v1/images/inspect") => {
            let r = query.one("ref")?;
            blocking(move || Ok(json(StatusCode::OK, &inspect_json(&state.store, &r)?))).await
        }
        (Method::DELETE, "/v1/images") => {
            let r = query.one("ref")?;
            let force = query.flag("force");
            blocking(move || {
                let removed = state.store.remove_image(&r, force)?;
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({"untagged": removed.untagged, "deleted": removed.deleted}),
                ))
            })
            .await
        }
        (Method::POST, "/v1/images/pull") => {
            let body: PullBody = read_json(req).await?;
            pull(state, body)
        }
        (Method::GET, "/v1/images/save") => {
            let refs = query.all("ref");
            if refs.is_empty() {
                return Err(Fail::bad(
                    "name at least one image: ?ref=NAME[&ref=NAME...]",
                ));
            }
            let store = state.store.clone();
            let items = blocking(move || {
                lamina_store::archive::save::resolve(&store, &refs).map_err(Fail::from)
            })
            .await?;
            let store = state.store.clone();
            Ok(stream(move |w| {
                lamina_store::archive::save::save(&store, &items, w, Path::new("-")).map(drop)
            }))
        }
        (Method::GET, "/v1/export") => {
            let target = query.one("target")?;
            let store = state.store.clone();
            let layers = blocking(move || export_layers(&store, &target)).await?;
            Ok(stream(move |w| {
                lamina_store::archive::export::export_layers(&layers, w).map(drop)
            }))
        }
        (Method::GET, "/v1/containers") => {
            blocking(move || Ok(json(StatusCode::OK, &state.store.containers()?))).await
        }
        (Method::POST, "/v1/containers") => {
            let body: CreateBody = read_json(req).await?;
            blocking(move || {
                let c = state
                    .store
                    .create_container(&body.image, body.name.as_deref())?;
                Ok(json(StatusCode::CREATED, &c))
            })
            .await
        }
        (Method::DELETE, "/v1/containers") => {
            let id = query.one("id")?;
            blocking(move || {
                let c = state.store.container(&id)?;
                if let Some(m) = crate::commands::mount::records(&ctx(&state))
                    .into_iter()
                    .find(|m| {
                        m.container.as_deref() == Some(c.id.as_str())
                            && crate::commands::mount::is_mounted(&m.dir)
                    })
                {
                    return Err(Fail(
                        StatusCode::CONFLICT,
                        format!(
                            "container {id} is mounted at {}: unmount it first (DELETE /v1/mounts)",
                            m.dir.display()
                        ),
                    ));
                }
                let c = state.store.remove_container(&c.id)?;
                Ok(json(StatusCode::OK, &c))
            })
            .await
        }
        (Method::POST, "/v1/containers/commit") => {
            let body: CommitBody = read_json(req).await?;
            blocking(move || {
                let opts = lamina_store::archive::commit::CommitOptions {
                    message: body.message,
                    author: body.author,
                    compression: lamina_store::archive::Compression::Gzip,
                    sparse: true,
                };
                let done = lamina_store::archive::commit::commit(
                    &state.store,
                    &body.container,
                    body.reference.as_deref(),
                    &opts,
                )?;
                Ok(json(StatusCode::CREATED, &image_json(&done.image)))
            })
            .await
        }
        (Method::POST, "/v1/mounts") => {
            let body: MountBody = read_json(req).await?;
            mount(state, body).await
        }
        (Method::DELETE, "/v1/mounts") => {
            let dir = PathBuf::from(query.one("dir")?);
            let dir = allowed_dir(&state.mount_roots, &dir)?;
            let out = run_lamina(&state, &["umount".as_ref(), dir.as_os_str()]).await?;
            if !out.status.success() {
                return Err(Fail(StatusCode::BAD_REQUEST, child_error(&out)));
            }
            Ok(json(StatusCode::OK, &serde_json::json!({"unmounted": dir})))
        }
        (Method::GET, "/v1/snapshots") => {
            blocking(move || {
                Ok(json(
                    StatusCode::OK,
                    &state
                        .snapshots
                        .list()
                        .map_err(|e| Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
                ))
            })
            .await
        }
        (_, p) if KNOWN.contains(&p) => Err(Fail(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {p} (see docs/api.md)"),
        )),
        (_, p) => Err(Fail(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {method} {p} (see docs/api.md)"),
        )),
    }
}

const KNOWN: &[&str] = &[
    "/v1/ping",
    "/v1/images",
    "/v1/images/inspect",
    "/v1/images/pull",
    "/v1/images/save",
    "/v1/export",
    "/v1/containers",
    "/v1/containers/commit",
    "/v1/mounts",
    "/v1/snapshots",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PullBody {
    #[serde(rename = "ref")]
    reference: String,
    platform: Option<String>,
    #[serde(default)]
    insecure: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    image: String,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitBody {
    container: String,
    #[serde(rename = "ref")]
    reference: Option<String>,
    message: Option<String>,
    author: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MountBody {
    target: String,
    dir: PathBuf,
    driver: Option<String>,
}

fn ctx(state: &State) -> crate::context::Context {
    crate::context::Context::new(Some(state.store.root().to_owned()))
}

/// The layer dirs of a container (its upper on top) or else of an image.
fn export_layers(store: &Store, target: &str) -> Result<Vec<PathBuf>, Fail> {
    lamina_store::archive::export::target_layer_dirs(store, target).map_err(|e| match e {
        StoreError::ImageNotFound(_) => Fail(
            StatusCode::NOT_FOUND,
            format!("{target:?} is neither a container nor an image"),
        ),
        e => e.into(),
    })
}

/// Streams `lamina pull` as NDJSON: one event per progress line, then
/// `{"event":"done","image":{...}}` or `{"event":"error","message":...}`.
fn pull(state: Arc<State>, body: PullBody) -> Reply {
    if body.reference.trim().is_empty() {
        return Err(Fail::bad("\"ref\" must name an image"));
    }
    let mut args: Vec<String> = vec!["pull".into(), body.reference.clone()];
    if let Some(p) = &body.platform {
        args.extend(["--platform".into(), p.clone()]);
    }
    if body.insecure {
        args.push("--insecure".into());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(64);
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt as _;
        let send = |v: serde_json::Value| {
            let tx = tx.clone();
            async move {
                let mut line = serde_json::to_vec(&v).unwrap_or_default();
                line.push(b'\n');
                tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_ok()
            }
        };
        let child = tokio::process::Command::new(lamina_exe())
            .arg("--root")
            .arg(state.store.root())
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                send(serde_json::json!({"event": "error", "message": format!("cannot run lamina pull: {e}")})).await;
                return;
            }
        };
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let err_task = tokio::spawn(async move {
            let mut s = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut s).await;
            s
        });
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // The client left: dropping the child kills the pull.
            if !send(progress_event(&line)).await {
                return;
            }
        }
        let status = child.wait().await;
        let stderr = err_task.await.unwrap_or_default();
        let last = match status {
            Ok(s) if s.success() => {
                let store = state.store.clone();
                let reference = body.reference.clone();
                match tokio::task::spawn_blocking(move || store.image(&reference)).await {
                    Ok(Ok(img)) => serde_json::json!({"event": "done", "image": image_json(&img)}),
                    _ => serde_json::json!({"event": "done"}),
                }
            }
            _ => serde_json::json!({
                "event": "error",
                "message": stderr.trim().trim_start_matches("lamina: "),
            }),
        };
        send(last).await;
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut resp = Response::new(BodyExt::boxed(body));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "application/x-ndjson".parse().expect("valid header"),
    );
    Ok(resp)
}

/// One `lamina pull` progress line as an event: `layer <digest> <rest...>`
/// becomes `{"event":"layer","digest":..,"status":"<rest>"}`, anything else
/// `{"event":"<first word>","detail":"<rest>"}`.
fn progress_event(line: &str) -> serde_json::Value {
    let mut words = line.splitn(3, ' ');
    let first = words.next().unwrap_or_default();
    match (first, words.next(), words.next()) {
        ("layer", Some(digest), rest) => {
            serde_json::json!({"event": "layer", "digest": digest, "status": rest.unwrap_or_default()})
        }
        (event, a, b) => {
            let detail = [a, b].into_iter().flatten().collect::<Vec<_>>().join(" ");
            serde_json::json!({"event": event, "detail": detail})
        }
    }
}

async fn mount(state: Arc<State>, body: MountBody) -> Reply {
    let dir = allowed_dir(&state.mount_roots, &body.dir)?;
    let driver = body.driver.unwrap_or_else(|| "fuse".into());
    if driver != "fuse" && driver != "kernel" {
        return Err(Fail::bad(format!(
            "unknown driver {driver:?}: use \"fuse\" or \"kernel\""
        )));
    }
    // Resolve the target first so an unknown one is a 404, not a failed mount.
    let store = state.store.clone();
    let target = body.target.clone();
    blocking(move || match store.container(&target) {
        Ok(_) => Ok(()),
        Err(StoreError::ContainerNotFound(_)) => {
            store.image(&target).map(drop).map_err(|e| match e {
                StoreError::ImageNotFound(_) => Fail(
                    StatusCode::NOT_FOUND,
                    format!("{target:?} is neither a container nor an image"),
                ),
                e => e.into(),
            })
        }
        Err(e) => Err(e.into()),
    })
    .await?;
    let out = run_lamina(
        &state,
        &[
            "mount".as_ref(),
            body.target.as_ref(),
            dir.as_os_str(),
            "--driver".as_ref(),
            driver.as_ref(),
        ],
    )
    .await?;
    if !out.status.success() {
        return Err(Fail(StatusCode::CONFLICT, child_error(&out)));
    }
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({"dir": dir, "target": body.target, "driver": driver}),
    ))
}

/// `dir` made absolute and checked to lie under one of `roots` once symlinks
/// in its existing part are resolved; `..` is refused outright.
fn allowed_dir(roots: &[PathBuf], dir: &Path) -> Result<PathBuf, Fail> {
    let forbidden = |why: &str| {
        Fail(
            StatusCode::FORBIDDEN,
            format!(
                "{}: {why}; mounts are allowed under {} (lamina serve --mount-root)",
                dir.display(),
                roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    };
    if !dir.is_absolute() {
        return Err(Fail::bad(format!(
            "{}: the mount point must be an absolute path",
            dir.display()
        )));
    }
    if dir.components().any(|c| c == Component::ParentDir) {
        return Err(forbidden("\"..\" is not allowed in mount points"));
    }
    // The deepest existing ancestor, with symlinks resolved, plus the rest.
    let mut existing = dir.to_path_buf();
    let mut rest = vec![];
    while !existing.exists() {
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_owned();
            }
            _ => break,
        }
    }
    let mut resolved = existing
        .canonicalize()
        .map_err(|e| Fail::bad(format!("{}: {e}", existing.display())))?;
    for name in rest.into_iter().rev() {
        resolved.push(name);
    }
    let under = roots.iter().any(|root| {
        let root = root.canonicalize().unwrap_or_else(|_| root.clone());
        resolved.starts_with(&root) && resolved != root
    });
    if !under {
        return Err(forbidden("outside the allowed mount roots"));
    }
    Ok(resolved)
}

fn lamina_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("lamina"))
}

async fn run_lamina(
    state: &State,
    args: &[&std::ffi::OsStr],
) -> Result<std::process::Output, Fail> {
    tokio::process::Command::new(lamina_exe())
        .arg("--root")
        .arg(state.store.root())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| {
            Fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot run lamina: {e}"),
            )
        })
}

fn child_error(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .trim()
        .trim_start_matches("lamina: ")
        .to_owned()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Fail> + Send + 'static,
) -> Result<T, Fail> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        Fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("handler failed: {e}"),
        )
    })?
}

async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<hyper::body::Incoming>,
) -> Result<T, Fail> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| {
            Fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the request body: {e}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| Fail::bad(format!("malformed JSON body: {e}")))
}

/// Streams what `write` writes as the response body (`application/x-tar`).
/// An error after the first bytes aborts the connection, so a client never
/// mistakes a truncated archive for a complete one.
fn stream(
    write: impl FnOnce(ChannelWriter) -> lamina_store::Result<()> + Send + 'static,
) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    let err_tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = write(ChannelWriter {
            tx,
            buf: Vec::new(),
        }) {
            tracing::warn!("streaming failed: {e}");
            let _ = err_tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut resp = Response::new(BodyExt::boxed(body));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "application/x-tar".parse().expect("valid header"),
    );
    resp
}

/// A `Write` that feeds a response body in 256 KiB chunks.
pub struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 << 10;

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(Frame::data(chunk)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = std::io::Write::flush(self);
    }
}

/// Query parameters, percent-decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Query(
            q.unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn one(&self, key: &str) -> Result<String, Fail> {
        match self.all(key).as_slice() {
            [v] if !v.is_empty() => Ok(v.clone()),
            [] | [_] => Err(Fail::bad(format!("query parameter {key:?} is required"))),
            _ => Err(Fail::bad(format!(
                "query parameter {key:?} given more than once"
            ))),
        }
    }

    fn flag(&self, key: &str) -> bool {
        self.all(key)
            .iter()
            .any(|v| matches!(v.as_str(), "1" | "true" | ""))
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "application/json".parse().expect("valid header"),
    );
    resp
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({"error": message}))
}

fn full(bytes: Vec<u8>) -> Body {
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = Query::parse(Some("ref=docker.io%2Flib%2Fa%3Alatest&ref=b&x=%zz&force"));
        assert_eq!(q.all("ref"), vec!["docker.io/lib/a:latest", "b"]);
        assert_eq!(q.one("x").unwrap(), "%zz");
        assert!(q.flag("force"));
        assert!(q.one("ref").is_err());
        assert_eq!(decode("a%2"), "a%2");
    }

    #[test]
    fn mount_dirs_stay_under_the_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("mounts");
        std::fs::create_dir(&root).unwrap();
        let roots = vec![root.clone()];
        assert!(allowed_dir(&roots, &root.join("a/b")).is_ok());
        assert_eq!(
            allowed_dir(&roots, &root).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            allowed_dir(&roots, &root.join("../x")).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            allowed_dir(&roots, Path::new("/etc")).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            allowed_dir(&roots, Path::new("rel")).unwrap_err().0,
            StatusCode::BAD_REQUEST
        );
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        assert_eq!(
            allowed_dir(&roots, &root.join("link/x")).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn progress_lines_become_events() {
        assert_eq!(
            progress_event("layer sha256:ab 123 download"),
            serde_json::json!({"event": "layer", "digest": "sha256:ab", "status": "123 download"})
        );
        assert_eq!(
            progress_event("resolved x sha256:cd"),
            serde_json::json!({"event": "resolved", "detail": "x sha256:cd"})
        );
    }
}
