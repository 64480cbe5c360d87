//! The overlay filesystem: N read-only layer directories under an optional
//! writable upper directory, served over FUSE. Knows nothing of images: it
//! takes directories, like fuse-overlayfs.
//!
//! Layers are in overlayfs format (whiteouts are char devices 0/0 or `.wh.NAME`
//! markers; opaque dirs carry `trusted.overlay.opaque=y` (or `user.`) or a
//! `.wh..wh..opq` entry), so the same dirs mount with kernel overlayfs too.
//! What lamina writes into the upper dir is in the same format: char 0/0
//! whiteouts and the `trusted.overlay.opaque` xattr.
//!
//! Differences from kernel overlayfs: no limit on the number of layers (a
//! directory's merged index is built once, on first use, so a lookup costs the
//! same at any depth); directories that exist in lower layers can be renamed
//! (they are copied up whole first, never EXDEV); inode numbers are allocated
//! by the mount and stay stable for a file's life within the mount.
//!
//! Requests travel over /dev/fuse, or, where the kernel offers it
//! (`/sys/module/fuse/parameters/enable_uring` = Y, Linux 6.14+), over
//! FUSE-over-io_uring: one queue per possible CPU, each served by a thread
//! pinned to that CPU, so a request is answered on the CPU that made it
//! without a cross-CPU wakeup ([`Uring`]; lamina's vendored fuser,
//! vendor/fuser/LAMINA-PATCHES.md). FORGET, INTERRUPT and the requests before
//! the queues are registered still use /dev/fuse.
//!
//! ```no_run
//! # fn main() -> lamina_fuse::Result<()> {
//! use lamina_fuse::{OverlayConfig, mount};
//! let cfg = OverlayConfig::new(vec!["/layers/top".into(), "/layers/base".into()],
//!                              Some(("/c/upper".into(), "/c/work".into())));
//! let m = mount(cfg, "/mnt/x".as_ref(), "lamina")?; // returns once mounted
//! m.run()?; // serves until unmounted
//! # Ok(()) }
//! ```

pub mod daemon;
pub mod error;
mod fs;
mod fuse;
pub mod layer;
mod reaper;
mod sys;

pub use error::{Error, Result};
pub use fs::{OverlayConfig, OverlayFs};

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whether a mount serves FUSE requests over io_uring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Uring {
    /// Use io_uring when the kernel offers it, /dev/fuse otherwise.
    #[default]
    Auto,
    /// Require io_uring: mounting fails if the kernel does not offer it.
    On,
    /// Only /dev/fuse.
    Off,
}

/// How long an io_uring queue thread polls at most for its next request
/// after answering one ([`OverlayConfig::uring_poll`]). A caller's requests
/// alternate between the CPUs' queues (each reply moves it to the other,
/// idle CPU), so a thread sees every other request of a burst: 100 us spans
/// that gap here, 50 us does not (see `docs/overlay.md`).
pub const DEFAULT_URING_POLL: std::time::Duration = std::time::Duration::from_micros(100);

/// Where the kernel's switch for FUSE-over-io_uring lives.
pub const ENABLE_URING_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

impl std::str::FromStr for Uring {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Uring::Auto),
            "on" | "1" | "yes" | "true" => Ok(Uring::On),
            "off" | "0" | "no" | "false" => Ok(Uring::Off),
            _ => Err(format!("uring={s}: use auto, on or off")),
        }
    }
}

/// A live mount: the kernel has accepted it and its server threads run;
/// [`Mounted::run`] waits until it is unmounted.
pub struct Mounted {
    background: fuser::BackgroundSession,
    mountpoint: PathBuf,
}

/// Mounts the overlay at `mountpoint` and starts serving it. Returns once
/// the kernel has completed the FUSE handshake, so the mount is visible and
/// served. With [`Uring::On`] it also waits until the io_uring queues are
/// registered (so every request after this uses them); with [`Uring::Auto`]
/// the queues take over a few milliseconds later. `fsname` shows as the
/// mount source.
pub fn mount(config: OverlayConfig, mountpoint: &Path, fsname: &str) -> Result<Mounted> {
    prepare_process();
    let read_only = config.upper.is_none();
    let threads = config.threads.max(1);
    let uring = config.uring;
    let uring_poll = config.uring_poll;
    let fs = Arc::new(OverlayFs::new(config)?);
    let mut opts = vec![
        fuser::MountOption::FSName(fsname.to_string()),
        fuser::MountOption::Subtype("lamina".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::Dev,
        fuser::MountOption::Suid,
    ];
    if read_only {
        opts.push(fuser::MountOption::RO);
    }
    let mut cfg = fuser::Config::default();
    cfg.mount_options = opts;
    cfg.acl = fuser::SessionACL::All;
    cfg.n_threads = Some(threads);
    cfg.clone_fd = true;
    cfg.io_uring_poll = uring_poll;
    cfg.io_uring = match uring {
        Uring::Auto => fuser::UringMode::IfOffered,
        Uring::On => fuser::UringMode::Required,
        Uring::Off => fuser::UringMode::Off,
    };
    let mut session =
        fuser::Session::new(fuse::Fuse { fs }, mountpoint, &cfg).map_err(|source| {
            Error::Mount {
                path: mountpoint.to_path_buf(),
                source,
            }
        })?;
    if uring == Uring::On && !session.io_uring() {
        // Dropping the fresh session unmounts it again.
        drop(session);
        return Err(Error::Config(format!(
            "uring=on, but the kernel does not offer FUSE over io_uring for {}: \
             enable it with `echo Y > {ENABLE_URING_PARAM}` (as root; Linux 6.14+ built \
             with CONFIG_FUSE_IO_URING), or mount with uring=auto or uring=off",
            mountpoint.display()
        )));
    }
    let registered = session.io_uring_ready();
    let serve_err = |source| Error::Serve {
        path: mountpoint.to_path_buf(),
        source,
    };
    let background = session.spawn().map_err(serve_err)?;
    if let Some(rx) = registered {
        // The session registers the queues once its /dev/fuse readers run,
        // which serve whatever comes first. `uring=on` waits for the queues
        // (and fails without them); `auto` returns at once, as registering
        // takes 3-5 ms and the mount is already usable.
        let path = mountpoint.to_path_buf();
        let outcome = move |res: std::io::Result<()>| match res {
            Ok(()) => tracing::debug!("{}: serving over FUSE io_uring", path.display()),
            Err(e) => tracing::warn!("{}: {e}; serving through /dev/fuse instead", path.display()),
        };
        let wait = move || {
            rx.recv_timeout(std::time::Duration::from_secs(30))
                .unwrap_or_else(|_| {
                    Err(std::io::Error::other(
                        "the FUSE io_uring queues were not registered within 30 s",
                    ))
                })
        };
        if uring == Uring::On {
            // Dropping the background session unmounts the fresh mount.
            wait().map_err(serve_err)?;
            outcome(Ok(()));
        } else {
            std::thread::spawn(move || outcome(wait()));
        }
    }
    Ok(Mounted {
        background,
        mountpoint: mountpoint.to_path_buf(),
    })
}

impl Mounted {
    /// Serves requests until the filesystem is unmounted.
    ///
    /// The server never unmounts anything itself when the session ends: the
    /// session ends because the mount is already gone (unmounted by its
    /// user), and fuser's unmount-on-drop would then `umount(2)` the mount
    /// point *path* (its "still mounted?" poll reads POLLERR, which means the
    /// connection is gone, as "mounted"). If the same mount point had been
    /// mounted again meanwhile (containerd, podman and `lamina umount; lamina
    /// mount` remount the same dir back to back), that unmounted the *new*
    /// mount from under its user, who then saw the empty dir beneath (ENOENT
    /// for every path). So the mount handle is kept until the process exits;
    /// if the server fails while still mounted, closing the device aborts
    /// the connection (ENOTCONN), never a silent fall-through to the dir.
    pub fn run(self) -> Result<()> {
        let path = self.mountpoint;
        let serve_err = |source| Error::Serve {
            path: path.clone(),
            source,
        };
        let background = self.background;
        // Never dropped: dropping it would unmount by path (see above).
        let background: &'static mut fuser::BackgroundSession = Box::leak(Box::new(background));
        let guard = std::mem::replace(&mut background.guard, std::thread::spawn(|| Ok(())));
        match guard.join() {
            Ok(res) => res.map_err(serve_err),
            Err(_) => Err(serve_err(std::io::Error::other(
                "the FUSE session thread panicked",
            ))),
        }
    }
}

/// Process-wide settings the driver relies on: a zero umask (modes arrive
/// already masked by the kernel) and room for one O_PATH fd per known inode.
///
/// The fd table is grown here, once, to [`FD_TABLE_SLOTS`]: the kernel grows
/// it by doubling as fds are opened, and in a process with more than one
/// thread every growth waits for an RCU grace period (`expand_fdtable` calls
/// `synchronize_rcu`), which is 10-20 ms on an idle VM. The server opens an
/// fd per inode it resolves, so without this a fresh mount stalls a request
/// at 64, 128, 256, ... inodes: python's first start through a new mount
/// took 20 ms longer, mostly in these stalls.
fn prepare_process() {
    rustix::process::umask(rustix::fs::Mode::empty());
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let want = 1 << 20;
    if setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: Some(want),
        },
    )
    .is_err()
    {
        let cur = getrlimit(Resource::Nofile);
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: cur.maximum,
                maximum: cur.maximum,
            },
        );
    }
    grow_fd_table();
}

/// Slots the fd table is grown to at mount: 64 Ki fds take 512 KiB of kernel
/// memory per server process; a tree with more resolved inodes pays one
/// grace period per doubling beyond it.
const FD_TABLE_SLOTS: i32 = 1 << 16;

/// Grows this process's fd table to cover [`FD_TABLE_SLOTS`] (or the fd
/// limit, if lower) by duplicating an fd onto the highest slot wanted
/// and closing it again; the table never shrinks.
fn grow_fd_table() {
    use rustix::process::{Resource, getrlimit};
    let limit = getrlimit(Resource::Nofile)
        .current
        .map_or(FD_TABLE_SLOTS, |n| n.min(FD_TABLE_SLOTS as u64) as i32);
    let Ok(any) = rustix::fs::open(
        "/",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) else {
        return;
    };
    // F_DUPFD picks the lowest free fd >= the minimum, so the table must
    // grow to hold it; dropping the duplicate frees the slot again.
    if let Ok(high) = rustix::io::fcntl_dupfd_cloexec(&any, limit - 1) {
        drop(high);
    }
}
