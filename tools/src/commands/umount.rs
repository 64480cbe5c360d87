//! `lamina umount`: unmount a lamina mount; also cleans up after a serving
//! process that died (the kernel mount is detached, the upper dir is left as
//! it is on disk). The server's log stays in `<root>/mounts/` until the next
//! mount at the same dir.

use super::mount::{absolute, is_mounted, log_path, record, release_layer_refs, remove_record};
use crate::context::Context;
use rustix::mount::{UnmountFlags, unmount};
use std::time::{Duration, Instant};

/// Arguments of `lamina umount`.
#[derive(clap::Args)]
pub struct Args {
    /// Mount point.
    pub dir: std::path::PathBuf,
}

fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.windows(11).any(|w| w == b"mount-serve"))
        .unwrap_or(false)
}

/// Runs `lamina umount`.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let dir = absolute(&args.dir)?;
    let rec = record(ctx, &dir);
    if !is_mounted(&dir) {
        if rec.is_some() {
            release(ctx, &dir);
            remove_record(ctx, &dir);
            return Ok(());
        }
        anyhow::bail!("{} is not mounted", dir.display());
    }
    let Some(rec) = rec else {
        anyhow::bail!(
            "{} was not mounted by lamina with this store ({}): use umount(8) for other mounts",
            dir.display(),
            ctx.root.display()
        );
    };
    let server = rec.pid.filter(|&p| alive(p));
    let log = log_path(ctx, &dir);
    if rec.pid.is_some() && server.is_none() {
        eprintln!(
            "lamina: the server of {} had died; detaching the mount (its log: {})",
            dir.display(),
            log.display()
        );
    }
    match unmount(&dir, UnmountFlags::empty()) {
        Ok(()) => {}
        Err(e) if server.is_none() => {
            // The server is gone (or this is not our FUSE mount): detach lazily.
            unmount(&dir, UnmountFlags::DETACH).map_err(|e2| {
                anyhow::anyhow!(
                    "unmounting {} failed: {e}; lazy unmount failed too: {e2}",
                    dir.display()
                )
            })?;
        }
        Err(rustix::io::Errno::BUSY) => anyhow::bail!(
            "{} is busy: close the files and leave the directories open in it, then retry",
            dir.display()
        ),
        Err(e) => anyhow::bail!("unmounting {} failed: {e}", dir.display()),
    }
    // Let the server finish (it exits once the kernel ends the session).
    if let Some(pid) = server {
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    release(ctx, &dir);
    remove_record(ctx, &dir);
    Ok(())
}

/// Lets gc have the layers an image mount at `dir` kept.
fn release(ctx: &Context, dir: &std::path::Path) {
    match lamina_store::Store::open(&ctx.root) {
        Ok(store) => release_layer_refs(&store, dir),
        Err(e) => eprintln!(
            "lamina: warning: could not open the store at {} to release the mount's layers: {e}",
            ctx.root.display()
        ),
    }
}
