//! `lamina serve`: serve the local API and the containerd snapshotter.

use std::path::PathBuf;

use crate::context::Context;
use crate::service;

/// Arguments of `lamina serve`.
#[derive(clap::Args)]
pub struct Args {
    /// Directory for the sockets.
    #[arg(long, default_value = "/run/lamina")]
    pub socket_dir: PathBuf,
    /// containerd snapshotter socket (default: SOCKET_DIR/snapshotter.sock).
    #[arg(long)]
    pub snapshotter_socket: Option<PathBuf>,
    /// HTTP API socket (default: SOCKET_DIR/api.sock).
    #[arg(long)]
    pub api_socket: Option<PathBuf>,
    /// Overlay that containerd mounts: lamina's FUSE driver or kernel overlayfs.
    #[arg(long, value_enum, default_value = "fuse")]
    pub driver: service::snapshotter::Driver,
    /// A directory under which API clients may mount (repeatable; default:
    /// /run/lamina/mounts and /mnt/lamina).
    #[arg(long = "mount-root")]
    pub mount_roots: Vec<PathBuf>,
    /// Never fetch layers for containerd: without this, a Prepare carrying
    /// containerd's remote-snapshotter labels (cri.image-ref,
    /// cri.manifest-digest, cri.layer-digest) has lamina pull that layer
    /// itself and answer AlreadyExists, instead of containerd writing it.
    #[arg(long)]
    pub no_fetch_layers: bool,
}

/// Runs `lamina serve`.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let mount_roots = if args.mount_roots.is_empty() {
        // Not ROOT/mounts: `lamina mount` keeps its records there.
        vec![
            PathBuf::from("/run/lamina/mounts"),
            PathBuf::from("/mnt/lamina"),
        ]
    } else {
        args.mount_roots
    };
    let config = service::Config {
        root: ctx.root.clone(),
        snapshotter_socket: args
            .snapshotter_socket
            .unwrap_or_else(|| args.socket_dir.join("snapshotter.sock")),
        api_socket: args
            .api_socket
            .unwrap_or_else(|| args.socket_dir.join("api.sock")),
        driver: args.driver,
        mount_roots,
        fetch_layers: !args.no_fetch_layers,
    };
    tokio::runtime::Runtime::new()?.block_on(service::serve(config))
}
