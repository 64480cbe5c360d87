//! Inter-process locks: `flock(2)` on files under `<root>/locks/`.
//!
//! flock locks belong to an open file description, so they exclude other
//! processes *and* other `FileLock`s of the same process, and the kernel drops
//! them when the holder dies (kill -9 included): a crash never leaves a lock
//! behind. Lock files themselves are never deleted while the store is in use
//! (deleting a lock file someone waits on would split the lock in two), except
//! the per-unpack ones that recovery removes after winning them.
//!
//! Locks used by the store:
//! - `gc.lock`: shared by every operation that creates data not yet referenced
//!   from the DB (ingest, unpack, register, create container) — see
//!   [`crate::Store::lease`]; exclusive during `gc`.
//! - `layer-<chainid hex>.lock`: exclusive while a layer dir is produced, so
//!   two processes never unpack the same layer.
//! - `blob-<digest hex>.lock`: exclusive while a layer blob is unpacked whose
//!   diff id is not yet known (import), same purpose.
//! - `unpack-<token>.lock`: held by the unpack writing `layers/*.tmp-<token>`,
//!   so recovery in another process knows whether that temp dir is live.
//! - `ingest/<key>/lock`: held by the writer of that ingest.

use crate::Result;
use crate::error::IoContext;
use rustix::fs::FlockOperation;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A held lock; released on drop.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Many holders at once.
    Shared,
    /// One holder.
    Exclusive,
}

impl FileLock {
    /// Opens (creating) `path` and waits for the lock.
    pub fn lock(path: &Path, mode: LockMode) -> Result<FileLock> {
        let file = open_lock_file(path)?;
        let op = match mode {
            LockMode::Shared => FlockOperation::LockShared,
            LockMode::Exclusive => FlockOperation::LockExclusive,
        };
        rustix::fs::flock(&file, op).at(path)?;
        Ok(FileLock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Like [`FileLock::lock`] but returns `None` instead of waiting.
    pub fn try_lock(path: &Path, mode: LockMode) -> Result<Option<FileLock>> {
        let file = open_lock_file(path)?;
        let op = match mode {
            LockMode::Shared => FlockOperation::NonBlockingLockShared,
            LockMode::Exclusive => FlockOperation::NonBlockingLockExclusive,
        };
        match rustix::fs::flock(&file, op) {
            Ok(()) => Ok(Some(FileLock {
                file,
                path: path.to_path_buf(),
            })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(crate::Error::io(path, e.into())),
        }
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Releases the lock and deletes the lock file (only for locks nobody
    /// else can be waiting on).
    pub(crate) fn release_and_remove(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.file);
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .at(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_within_a_process() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let a = FileLock::lock(&p, LockMode::Shared).unwrap();
        let b = FileLock::try_lock(&p, LockMode::Shared).unwrap();
        assert!(b.is_some(), "shared + shared");
        assert!(
            FileLock::try_lock(&p, LockMode::Exclusive)
                .unwrap()
                .is_none()
        );
        drop(a);
        drop(b);
        let c = FileLock::try_lock(&p, LockMode::Exclusive).unwrap();
        assert!(c.is_some());
        assert!(FileLock::try_lock(&p, LockMode::Shared).unwrap().is_none());
    }
}
