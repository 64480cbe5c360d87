//! The local HTTP/1.1 + JSON API on a Unix socket (reference: `docs/api.md`).

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Method, Request, Response, StatusCode};

use super::snapshots::Snapshots;

/// What every request handler can reach.
pub struct State {
    /// The store root.
    pub root: PathBuf,
    /// containerd snapshot records (read-only here).
    pub snapshots: Arc<Snapshots>,
    /// Directories under which mounts are allowed.
    pub mount_roots: Vec<PathBuf>,
}

impl State {
    /// The API's state.
    pub fn new(root: PathBuf, snapshots: Arc<Snapshots>, mount_roots: Vec<PathBuf>) -> Self {
        State {
            root,
            snapshots,
            mount_roots,
        }
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

/// Accepts connections until the listener fails.
pub async fn serve(listener: tokio::net::UnixListener, state: Arc<State>) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req).await) }
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

async fn handle(state: Arc<State>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/v1/ping") => json(StatusCode::OK, &serde_json::json!({"ok": true})),
        (&Method::GET, "/v1/snapshots") => {
            let s = state.snapshots.clone();
            match tokio::task::spawn_blocking(move || s.list()).await {
                Ok(Ok(list)) => json(StatusCode::OK, &list),
                Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            &format!("no such endpoint: {} {path}", req.method()),
        ),
    }
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
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
