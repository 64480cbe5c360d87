//! FUSE overlays mounted ahead by `lamina serve` for containerd's snapshots
//! over several layers (`--driver fuse`), handed out as binds.
//!
//! containerd mounts a snapshot's mounts more than once per container: `ctr
//! run` (and CRI) mounts the rootfs for a moment to read `/etc/passwd` and
//! `/etc/group`, then the shim mounts it for runc. A `fuse3.lamina-overlayfs`
//! spec starts a FUSE server for each of those mounts (`mount.fuse3`, a
//! shell, `lamina-overlayfs` and its server) and unmounts it through
//! `fusermount3`. Instead, the snapshotter mounts the overlay once, at
//! `snapshots/<id>/merged`, when the snapshot is prepared, and hands out a
//! bind of that dir: every mount containerd makes of it is a plain bind.
//!
//! Invariants:
//! - The server is `lamina-overlayfs` in its own session (it detaches), so
//!   restarting or stopping `lamina serve` leaves it, and the containers on
//!   it, running; the next Mounts call finds the mount live and reuses it.
//! - Mounts checks the mount on every call and mounts again when it is not
//!   there (after a reboot) or its server is gone (`ENOTCONN`).
//! - `merged` is detached (`MNT_DETACH`) before its snapshot dir is deleted
//!   or its upper moves: a delete never walks into the overlay. Binds
//!   containerd still holds keep working until they are unmounted, then the
//!   server exits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// `FUSE_SUPER_MAGIC`: `statfs` of a FUSE mount's root.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// The merged dir of a snapshot dir.
pub fn merged_dir(snapshot_dir: &Path) -> PathBuf {
    snapshot_dir.join("merged")
}

/// Whether `dir` is the root of a live FUSE mount. A mount whose server is
/// gone answers `ENOTCONN`: it is detached here, and `false` returned.
pub fn is_live_fuse_mount(dir: &Path) -> bool {
    match rustix::fs::statfs(dir) {
        Ok(st) => {
            #[allow(clippy::unnecessary_cast)] // f_type's width differs by arch
            let magic = st.f_type as i64;
            magic == FUSE_SUPER_MAGIC && is_mount_point(dir)
        }
        Err(rustix::io::Errno::NOTCONN) => {
            tracing::warn!("{}: the FUSE server is gone; mounting again", dir.display());
            detach(dir);
            false
        }
        Err(_) => false,
    }
}

/// A dir is a mount point when it sits on another device than its parent.
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.parent().unwrap_or(dir);
    match (std::fs::metadata(dir), std::fs::metadata(parent)) {
        (Ok(d), Ok(p)) => d.dev() != p.dev(),
        _ => false,
    }
}

/// Detaches whatever is mounted at `dir` (lazily: users keep their binds).
/// Nothing mounted there is fine.
pub fn detach(dir: &Path) {
    match rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) => tracing::debug!("{} detached", dir.display()),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
        Err(e) => tracing::warn!("cannot detach {}: {e}", dir.display()),
    }
}

/// Detaches `snapshot_dir/merged` if it is mounted: call before deleting
/// the snapshot dir or moving its upper.
pub fn release(snapshot_dir: &Path) {
    detach(&merged_dir(snapshot_dir));
}

/// Escapes the separators `lamina-overlayfs` splits its options on.
fn escape(p: &Path) -> String {
    p.display()
        .to_string()
        .replace(',', "\\,")
        .replace(':', "\\:")
}

/// Starts FUSE servers, one mount at a time per snapshot.
pub struct Mounter {
    /// The `lamina-overlayfs` binary.
    program: PathBuf,
    /// One lock per merged dir, so that two calls for one snapshot never
    /// both mount it.
    locks: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
}

impl Default for Mounter {
    fn default() -> Self {
        Self::new()
    }
}

impl Mounter {
    /// Uses the `lamina-overlayfs` next to the running binary, else the one
    /// on `PATH`.
    pub fn new() -> Self {
        let program = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("lamina-overlayfs")))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("lamina-overlayfs"));
        Mounter {
            program,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Makes sure `merged` is a live overlay of `lowers` (nearest first)
    /// under `upper` (upper dir, work dir), or read-only without one,
    /// mounting it if not.
    pub fn ensure(
        &self,
        merged: &Path,
        lowers: &[PathBuf],
        upper: Option<(&Path, &Path)>,
    ) -> std::io::Result<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            // Forget dirs nobody is mounting any more.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(merged.to_owned()).or_default().clone()
        };
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        if is_live_fuse_mount(merged) {
            return Ok(());
        }
        std::fs::create_dir_all(merged)?;
        let lowerdir = lowers.iter().map(|l| escape(l)).collect::<Vec<_>>();
        let mut options = format!("lowerdir={}", lowerdir.join(":"));
        if let Some((upper, work)) = upper {
            options += &format!(",upperdir={},workdir={}", escape(upper), escape(work));
        }
        let start = Instant::now();
        // The server itself, not its launcher (one exec less): it detaches
        // into its own session and reports readiness on stdout.
        let mut cmd = std::process::Command::new(&self.program);
        cmd.arg("-o")
            .arg(&options)
            .arg("lamina")
            .arg(merged)
            .env(lamina_fuse::daemon::SERVER_ENV, "1");
        let mut server = lamina_fuse::daemon::spawn_and_wait(cmd).map_err(|e| {
            let what = if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "cannot run {}: {e} (install lamina-overlayfs next to lamina)",
                    self.program.display()
                )
            } else {
                format!(
                    "{} failed to mount {}: {e}",
                    self.program.display(),
                    merged.display()
                )
            };
            std::io::Error::new(e.kind(), what)
        })?;
        // Reaped when it exits (at unmount), so no zombie stays behind.
        let reaper = std::thread::Builder::new()
            .name("fuse-server-reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = server.wait();
            });
        if let Err(e) = reaper {
            tracing::warn!("cannot start a thread to reap the FUSE server: {e}");
        }
        tracing::debug!(
            merged = %merged.display(),
            elapsed_us = start.elapsed().as_micros() as u64,
            "FUSE overlay mounted ahead"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_separators_are_escaped() {
        assert_eq!(escape(Path::new("/a,b:c")), "/a\\,b\\:c");
    }

    #[test]
    fn a_plain_dir_is_not_a_fuse_mount() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!is_live_fuse_mount(tmp.path()));
        assert!(!is_live_fuse_mount(&tmp.path().join("missing")));
        // Detaching what is not mounted is a no-op.
        release(tmp.path());
    }
}
