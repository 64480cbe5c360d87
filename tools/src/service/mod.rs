//! `lamina serve`: the daemon that makes lamina the storage backend of other
//! runtimes.
//!
//! Two Unix sockets, both mode 0660 and owned by the user running the daemon
//! (root in production):
//! - the snapshotter socket speaks containerd's snapshots gRPC API
//!   ([`snapshotter`]), for `[proxy_plugins.lamina] type = "snapshot"`;
//! - the API socket speaks HTTP/1.1 + JSON ([`api`], documented in
//!   `docs/api.md`) for every other program.
//!
//! State lives in the store root only (snapshot records in `snapshots.db`, see
//! [`snapshots`]); the daemon holds nothing that a restart would lose, and the
//! mounts it hands out are owned by the kernel or by their own FUSE processes
//! (also the overlays it mounts ahead for containers, see [`merged`]).

pub mod api;
pub mod filters;
pub mod layers;
pub mod merged;
pub mod remote;
pub mod snapshots;
pub mod snapshotter;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

/// What `lamina serve` serves, and where.
pub struct Config {
    /// The store root.
    pub root: PathBuf,
    /// containerd snapshotter socket.
    pub snapshotter_socket: PathBuf,
    /// HTTP API socket.
    pub api_socket: PathBuf,
    /// Mounts handed to containerd.
    pub driver: snapshotter::Driver,
    /// Directories under which the API may mount.
    pub mount_roots: Vec<PathBuf>,
    /// The remote fast path: fetch layers named by containerd's
    /// remote-snapshotter labels (see [`remote`]).
    pub fetch_layers: bool,
}

/// Serves both sockets until SIGINT or SIGTERM; removes the sockets on the way out.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let store = Arc::new(
        lamina_store::Store::open(&config.root)
            .with_context(|| format!("cannot open the store at {}", config.root.display()))?,
    );
    let snapshots = Arc::new(
        snapshots::Snapshots::open(
            &config.root,
            Box::new(layers::StoreLayers::new(store.clone())),
        )
        .with_context(|| {
            format!(
                "cannot open snapshot records under {}",
                config.root.display()
            )
        })?,
    );
    let snap_listener = bind(&config.snapshotter_socket)?;
    let api_listener = bind(&config.api_socket)?;
    let mut snapshotter =
        snapshotter::Snapshotter::new(snapshots.clone(), store.clone(), config.driver);
    if config.fetch_layers {
        snapshotter = snapshotter.with_remote(
            remote::Fetcher::new(store.clone())
                .context("cannot make the registry client of the layer fast path")?,
        );
    }
    let snapshotter = Arc::new(snapshotter);
    let grpc = containerd_snapshots::tonic::transport::Server::builder()
        .add_service(containerd_snapshots::server(Arc::new(
            snapshotter::Service(snapshotter),
        )))
        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(
            snap_listener,
        ));
    let api_state = Arc::new(api::State::new(
        store,
        snapshots,
        config.mount_roots.clone(),
    ));
    let http = api::serve(api_listener, api_state);
    eprintln!(
        "lamina serve: snapshotter on {}, API on {}",
        config.snapshotter_socket.display(),
        config.api_socket.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = grpc => r.context("snapshotter gRPC server failed"),
        r = http => r.context("API server failed"),
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
    };
    for sock in [&config.snapshotter_socket, &config.api_socket] {
        let _ = std::fs::remove_file(sock);
    }
    result
}

/// Binds a Unix socket with mode 0660, replacing a stale socket file but
/// refusing to steal one a live daemon answers on.
fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "{} exists and is not a socket: move it away",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "{} is in use by a running daemon: stop it first or pick another socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale {}", path.display()))?;
    }
    // Created 0660 from the start: no window where others could connect.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o117));
    let listener = tokio::net::UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = listener.with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    Ok(listener)
}
