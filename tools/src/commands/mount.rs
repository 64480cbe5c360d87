//! `lamina mount`: mount an image (read-only) or a container (read-write),
//! and the hidden `mount-serve` that serves a FUSE mount in the background.
//!
//! `mount` returns once the mount is ready: with the FUSE driver it starts
//! `lamina mount-serve` as a detached child and waits for its readiness line
//! (see `lamina_fuse::daemon`). Each mount leaves a record in
//! `<root>/mounts/<hex of the mount point>.json` (driver, server pid,
//! container id) that `umount`, `ps` and `rm` read.
//!
//! Once ready, the FUSE server writes what it logs (`LAMINA_LOG`, default
//! `warn`) to `<root>/mounts/<hex of the mount point>.log`, never to the pipes
//! of the `mount` that started it (which has exited by then).

use crate::context::Context;
use anyhow::Context as _;
use lamina_store::{Error as StoreError, Store};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Arguments of `lamina mount`.
#[derive(clap::Args)]
pub struct Args {
    /// Image reference, or container id or name.
    pub target: String,
    /// Mount point (created if missing).
    pub dir: PathBuf,
    /// Overlay driver: `fuse` (default) or `kernel`.
    #[arg(long, default_value = "fuse")]
    pub driver: String,
    /// FUSE-over-io_uring (FUSE driver): `auto` (when the kernel offers it),
    /// `on` (fail if /sys/module/fuse/parameters/enable_uring is not Y), `off`.
    #[arg(long, default_value = "auto")]
    pub uring: String,
}

/// What `mount` records about a live mount.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct MountRecord {
    /// Absolute mount point.
    pub dir: PathBuf,
    /// `fuse` or `kernel`.
    pub driver: String,
    /// The serving process (FUSE driver).
    pub pid: Option<u32>,
    /// The container mounted read-write, if any.
    pub container: Option<String>,
    /// What was asked for.
    pub target: String,
}

fn records_dir(ctx: &Context) -> PathBuf {
    ctx.root.join("mounts")
}

fn record_path(ctx: &Context, dir: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let hex: String = dir
        .as_os_str()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    records_dir(ctx).join(format!("{hex}.json"))
}

/// Where the FUSE server of the mount at `dir` logs once it is ready.
pub fn log_path(ctx: &Context, dir: &Path) -> PathBuf {
    record_path(ctx, dir).with_extension("log")
}

/// Mount records of this store (stale ones included).
pub fn records(ctx: &Context) -> Vec<MountRecord> {
    let Ok(rd) = std::fs::read_dir(records_dir(ctx)) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}

/// The record of a mount point, if any.
pub fn record(ctx: &Context, dir: &Path) -> Option<MountRecord> {
    serde_json::from_slice(&std::fs::read(record_path(ctx, dir)).ok()?).ok()
}

/// Removes a mount record.
pub fn remove_record(ctx: &Context, dir: &Path) {
    let _ = std::fs::remove_file(record_path(ctx, dir));
}

fn write_record(ctx: &Context, rec: &MountRecord) -> anyhow::Result<()> {
    std::fs::create_dir_all(records_dir(ctx))?;
    let path = record_path(ctx, &rec.dir);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(rec)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// Absolute form of a mount point without following its last component
/// (which may be a dead FUSE mount that cannot be stat'ed).
pub fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    let abs = std::path::absolute(dir)?;
    match (abs.parent(), abs.file_name()) {
        (Some(p), Some(n)) => Ok(p
            .canonicalize()
            .with_context(|| format!("resolving {}", p.display()))?
            .join(n)),
        _ => Ok(abs),
    }
}

/// Whether `dir` (absolute) is a mount point, from /proc/self/mountinfo.
pub fn is_mounted(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).map(unescape).as_deref() == Some(&*want))
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `lamina mount`.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = Store::open(&ctx.root)
        .with_context(|| format!("opening the store at {}", ctx.root.display()))?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating mount point {}", args.dir.display()))?;
    let dir = absolute(&args.dir)?;
    if is_mounted(&dir) {
        anyhow::bail!(
            "{} is already a mount point: run `lamina umount {}` first",
            dir.display(),
            dir.display()
        );
    }
    // The lease keeps gc out between finding the layers and referencing them.
    let lease = store.lease().context("taking a store lease")?;
    let owner = layer_ref_owner(&dir);
    // A container (read-write) or else an image (read-only).
    let (mut lowers, upper, container) = match store.container(&args.target) {
        Ok(c) => {
            let dirs = store
                .container_layer_dirs(&c)
                .with_context(|| format!("finding the layers of container {}", c.short_id()))?;
            (dirs, Some((c.upper_dir(), c.work_dir())), Some(c.id))
        }
        Err(StoreError::ContainerNotFound(_)) => {
            let img = store.image(&args.target).with_context(|| {
                format!(
                    "{} is neither a container nor an image (see `lamina ps`, `lamina images`)",
                    args.target
                )
            })?;
            // An image mount keeps its layers from `rmi` + `gc` until umount
            // (a container keeps its image anyway).
            if let Some(top) = img.top_chain_id() {
                store.add_layer_ref(&owner, top).with_context(|| {
                    format!("protecting the layers of {} while mounted", args.target)
                })?;
            }
            (store.image_layer_dirs(&img)?, None, None)
        }
        Err(e) => return Err(e).with_context(|| format!("looking up container {}", args.target)),
    };
    lowers.reverse(); // top-most first, as overlayfs wants them
    if lowers.is_empty() {
        // An image without layers: mount an empty read-only dir.
        let empty = ctx.root.join("mounts").join("empty");
        std::fs::create_dir_all(&empty)?;
        lowers.push(empty);
    }
    drop(lease);
    let res = mount_and_record(ctx, &args, &dir, &lowers, upper.as_ref(), container);
    if res.is_err() {
        release_layer_refs(&store, &dir);
    }
    res
}

/// The owner name of the layer ref an image mount at `dir` holds.
pub fn layer_ref_owner(dir: &Path) -> String {
    format!("mount:{}", dir.display())
}

/// Drops the layer refs of a mount at `dir` (after it is unmounted).
pub fn release_layer_refs(store: &Store, dir: &Path) {
    let owner = layer_ref_owner(dir);
    for chain in store.layer_refs(&owner).unwrap_or_default() {
        if let Err(e) = store.remove_layer_ref(&owner, &chain) {
            eprintln!(
                "lamina: warning: could not drop the mount's reference to layer {}: {e} (gc keeps it until `lamina umount` is run again)",
                chain.short()
            );
        }
    }
}

fn mount_and_record(
    ctx: &Context,
    args: &Args,
    dir: &Path,
    lowers: &[PathBuf],
    upper: Option<&(PathBuf, PathBuf)>,
    container: Option<String>,
) -> anyhow::Result<()> {
    let dir = dir.to_path_buf();
    if let Some(cid) = &container
        && let Some(m) = records(ctx)
            .iter()
            .find(|m| m.container.as_deref() == Some(cid) && is_mounted(&m.dir))
    {
        anyhow::bail!(
            "container {} is already mounted at {}: two mounts over one upper dir would corrupt it",
            &cid[..12],
            m.dir.display()
        );
    }
    args.uring
        .parse::<lamina_fuse::Uring>()
        .map_err(anyhow::Error::msg)?;
    let pid = match args.driver.as_str() {
        "fuse" => Some(mount_fuse(
            ctx,
            &dir,
            lowers,
            upper,
            &args.target,
            &args.uring,
        )?),
        "kernel" => {
            mount_kernel(&dir, lowers, upper)?;
            None
        }
        other => anyhow::bail!("unknown --driver {other:?}: use `fuse` or `kernel`"),
    };
    write_record(
        ctx,
        &MountRecord {
            dir: dir.clone(),
            driver: args.driver.clone(),
            pid,
            container,
            target: args.target.clone(),
        },
    )?;
    println!("{}", dir.display());
    Ok(())
}

fn mount_fuse(
    ctx: &Context,
    dir: &Path,
    lowers: &[PathBuf],
    upper: Option<&(PathBuf, PathBuf)>,
    target: &str,
    uring: &str,
) -> anyhow::Result<u32> {
    let exe = std::env::current_exe().context("finding the lamina executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--root").arg(&ctx.root).arg("mount-serve").arg(dir);
    for l in lowers {
        cmd.arg("--lower").arg(l);
    }
    if let Some((u, w)) = upper {
        cmd.arg("--upper").arg(u).arg("--work").arg(w);
    }
    cmd.arg("--fsname").arg(format!("lamina:{target}"));
    cmd.arg("--uring").arg(uring);
    // A fresh log per mount.
    std::fs::create_dir_all(records_dir(ctx))?;
    let log = log_path(ctx, dir);
    let _ = std::fs::remove_file(&log);
    cmd.arg("--log").arg(&log);
    let child = lamina_fuse::daemon::spawn_and_wait(cmd).with_context(|| {
        format!(
            "mounting {target} at {} with the FUSE driver",
            dir.display()
        )
    })?;
    Ok(child.id())
}

/// Kernel overlayfs over the same dirs. The kernel stacks at most 500 lower
/// layers and takes its options in one page; both limits are reported.
fn mount_kernel(
    dir: &Path,
    lowers: &[PathBuf],
    upper: Option<&(PathBuf, PathBuf)>,
) -> anyhow::Result<()> {
    const MAX_LOWERS: usize = 500;
    if lowers.len() > MAX_LOWERS {
        anyhow::bail!(
            "kernel overlayfs stacks at most {MAX_LOWERS} lower layers and this has {}: use --driver fuse",
            lowers.len()
        );
    }
    if lowers.len() == 1 && upper.is_none() {
        // Overlayfs wants two lower layers without an upper: a read-only bind mount is the same view.
        let st = std::process::Command::new("mount")
            .arg("--bind")
            .arg("-o")
            .arg("ro")
            .arg(&lowers[0])
            .arg(dir)
            .status()?;
        anyhow::ensure!(
            st.success(),
            "bind-mounting {} at {} failed",
            lowers[0].display(),
            dir.display()
        );
        return Ok(());
    }
    let lower: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    // What docker passes: no redirects, metacopy or index, so that an upper
    // dir always says everything about a change and stays expressible as an
    // OCI layer (`lamina commit` refuses uppers with redirects or metacopy).
    let mut opts = format!(
        "redirect_dir=off,metacopy=off,index=off,lowerdir={}",
        lower.join(":")
    );
    if let Some((u, w)) = upper {
        std::fs::create_dir_all(w)?;
        opts.push_str(&format!(
            ",upperdir={},workdir={}",
            u.display(),
            w.display()
        ));
    }
    if opts.len() >= 4096 {
        anyhow::bail!(
            "kernel overlayfs takes its options in one 4096-byte page and these {} layers need {} bytes: use --driver fuse",
            lowers.len(),
            opts.len()
        );
    }
    let out = std::process::Command::new("mount")
        .args(["-t", "overlay", "lamina", "-o", &opts])
        .arg(dir)
        .output()
        .context("running mount(8)")?;
    if !out.status.success() {
        anyhow::bail!(
            "kernel overlayfs mount at {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Arguments of the hidden `mount-serve` helper that `mount` starts.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Mount point.
    pub dir: PathBuf,
    /// Lower layer dirs, top-most first.
    #[arg(long = "lower", required = true)]
    pub lowers: Vec<PathBuf>,
    /// Upper dir (read-write mount).
    #[arg(long, requires = "work")]
    pub upper: Option<PathBuf>,
    /// Work dir next to the upper dir.
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Mount source shown in the mount table.
    #[arg(long, default_value = "lamina")]
    pub fsname: String,
    /// Log file for stderr once the mount is ready (default: /dev/null).
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// FUSE-over-io_uring: auto, on or off.
    #[arg(long, default_value = "auto")]
    pub uring: lamina_fuse::Uring,
}

/// Serves a mount in the foreground until it is unmounted.
pub fn serve(_ctx: &Context, args: ServeArgs) -> anyhow::Result<()> {
    lamina_fuse::daemon::detach();
    let upper = args.upper.zip(args.work);
    let mut cfg = lamina_fuse::OverlayConfig::new(args.lowers, upper);
    cfg.uring = args.uring;
    let mounted = lamina_fuse::mount(cfg, &args.dir, &args.fsname)?;
    lamina_fuse::daemon::notify_ready();
    // The launcher exits now: nothing may go to its pipes any more.
    if let Err(e) = lamina_fuse::daemon::redirect_output(args.log.as_deref()) {
        tracing::warn!("cannot open the log file: {e}; logging to /dev/null");
    }
    tracing::info!(
        "serving {} (pid {})",
        args.dir.display(),
        std::process::id()
    );
    let res = mounted.run();
    match &res {
        Ok(()) => tracing::info!("{} unmounted; server exiting", args.dir.display()),
        Err(e) => tracing::error!("serving {} failed: {e}", args.dir.display()),
    }
    res?;
    Ok(())
}
