//! Deleting what the overlay moved into the work dir, off the request path.
//!
//! Removing a directory from the upper layer means unlinking the whiteouts it
//! holds and then the directory, whose freed blocks the fs may discard
//! synchronously (with ext4's `discard` here, ~80 us per directory, against
//! ~17 us to rename it). So an `rmdir` renames the directory into the work
//! dir under a temporary name, which takes it out of the merged view at once,
//! and leaves the delete to a background thread ([`Reaper::delete_later`]).
//!
//! Invariants:
//! - Only temporary names are deleted: ones this process made
//!   (`#lamina-<pid>-<seq>`) and handed over, or, at mount, ones whose process
//!   no longer runs: what a killed server left (a copy-up cut short, or a
//!   delete it had not done yet). The shared whiteout is never touched.
//! - Deleting never follows a symlink and never leaves the work dir: every
//!   step is an `*at` call on a directory fd opened with `O_NOFOLLOW`.
//! - Nothing in the work dir is visible through the mount, so a delete that
//!   has not run yet (or failed) costs space, never correctness; the next
//!   mount deletes it.

use rustix::fd::OwnedFd;
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use rustix::io::Errno;
use std::ffi::{OsStr, OsString};
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::sync::mpsc;

/// What temporary names in the work dir start with (then `<pid>-<seq>`).
pub(crate) const TMP_PREFIX: &str = "#lamina-";

/// A background thread deleting work-dir entries.
pub(crate) struct Reaper {
    tx: Mutex<Option<mpsc::Sender<OsString>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Reaper {
    /// Starts the thread for the work dir `work` (any fd of it; it keeps its
    /// own), after queueing the leftovers of processes that no longer run.
    pub(crate) fn start(work: &OwnedFd) -> std::io::Result<Reaper> {
        let dir = crate::layer::open_listable(work)?;
        let (tx, rx) = mpsc::channel::<OsString>();
        for name in leftovers(&dir)? {
            let _ = tx.send(name);
        }
        let thread = std::thread::Builder::new()
            .name("lamina-reaper".into())
            .spawn(move || {
                for name in rx {
                    if let Err(e) = delete_tree(&dir, &name) {
                        tracing::warn!(
                            "cannot delete {} from the work dir: {e} (it stays until the next mount)",
                            name.to_string_lossy()
                        );
                    }
                }
            })?;
        Ok(Reaper {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Deletes the work-dir entry `name` (a file or a whole tree) soon.
    pub(crate) fn delete_later(&self, name: OsString) {
        if let Some(tx) = self.tx.lock().unwrap().as_ref() {
            let _ = tx.send(name);
        }
    }

    /// Deletes everything handed over so far, then stops the thread.
    pub(crate) fn finish(&self) {
        drop(self.tx.lock().unwrap().take());
        if let Some(t) = self.thread.lock().unwrap().take() {
            let _ = t.join();
        }
    }
}

/// The work dir's temporary names whose process is gone.
fn leftovers(dir: &OwnedFd) -> std::io::Result<Vec<OsString>> {
    let me = std::process::id();
    let mut out = Vec::new();
    for name in names(dir)? {
        let Some(pid) = name
            .as_bytes()
            .strip_prefix(TMP_PREFIX.as_bytes())
            .and_then(|rest| rest.split(|&b| b == b'-').next())
            .and_then(|pid| std::str::from_utf8(pid).ok())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != me && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            out.push(name);
        }
    }
    Ok(out)
}

/// The names in the open directory `dir`, without `.` and `..`.
fn names(dir: &OwnedFd) -> std::io::Result<Vec<OsString>> {
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 16 * 1024];
    let mut iter = rfs::RawDir::new(dir, &mut buf);
    let mut out = Vec::new();
    while let Some(entry) = iter.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(OsStr::from_bytes(name).to_owned());
        }
    }
    Ok(out)
}

/// Deletes `name` in `dir`, recursively if it is a directory, never
/// following symlinks.
fn delete_tree(dir: &OwnedFd, name: &OsStr) -> std::io::Result<()> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR | Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let sub = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for child in names(&sub)? {
        delete_tree(&sub, &child)?;
    }
    drop(sub);
    match rfs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(p: &std::path::Path) -> OwnedFd {
        rfs::open(p, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    #[test]
    fn deletes_handed_over_trees_and_dead_processes_leftovers_only() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path();
        // A dead process's leftover tree (pid 0 never names a process in /proc),
        // a live process's (ours is skipped as "mine": use pid 1, always alive),
        // the shared whiteout, and an unrelated name.
        std::fs::create_dir_all(work.join("#lamina-0-7/a/b")).unwrap();
        std::fs::write(work.join("#lamina-0-7/a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink("/", work.join("#lamina-0-7/a/up")).unwrap();
        std::fs::write(work.join("#lamina-1-3"), "live").unwrap();
        std::fs::write(work.join("#lamina-whiteout"), "").unwrap();
        std::fs::write(work.join("other"), "").unwrap();
        std::fs::create_dir(work.join("#lamina-9-1")).unwrap();
        let reaper = Reaper::start(&open(work)).unwrap();
        // "#lamina-9-1" is handed over explicitly, as an rmdir does.
        reaper.delete_later("#lamina-9-1".into());
        reaper.finish();
        let mut left: Vec<_> = std::fs::read_dir(work)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["#lamina-1-3", "#lamina-whiteout", "other"]);
        // The symlink inside was removed, not followed.
        assert!(
            std::path::Path::new("/")
                .read_dir()
                .unwrap()
                .next()
                .is_some()
        );
    }
}
