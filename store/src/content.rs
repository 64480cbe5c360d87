//! Content-addressed blobs: manifests, indexes, configs and compressed layers.
//!
//! ```text
//! blobs/sha256/<hex>        complete, verified, read-only (0444) blobs
//! ingest/<sha256(key)>/     one partial write per ingest key:
//!     ref                   the key, for humans and `gc`
//!     data                  the bytes received so far
//!     lock                  flock held by the writer
//! ```
//!
//! Invariants:
//! - A file under `blobs/` is complete and hashes to its name: it appears only
//!   by `rename(2)` of a fsynced, verified `ingest/*/data`, and the directory
//!   is fsynced after the rename. A crash leaves at most an ingest dir.
//! - Writes of an ingest start their writeback every few MiB (a hint, not
//!   a sync): the data reaches the disk while it downloads, and the fsync
//!   of the commit, which is what makes it durable, finds little left.
//! - The same content is stored once: committing a blob that already exists
//!   just drops the ingest.
//! - An ingest dropped without commit (or killed) keeps its data; the next
//!   [`ContentStore::ingest`] with the same key rehashes it and resumes at
//!   [`Ingest::offset`]. Only one writer per key at a time (the `lock` file);
//!   a second one waits.
//! - Every ingest holds a [`crate::Store::lease`]-style shared gc lock, so gc
//!   never removes an ingest or a just-committed blob under a writer. A caller
//!   that commits a blob and references it later (register an image) must hold
//!   its own lease across both steps.

use crate::error::IoContext;
use crate::lock::{FileLock, LockMode};
use crate::{Digest, Error, Result};
use sha2::{Digest as _, Sha256};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The blob store under a store root.
#[derive(Debug)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
    gc_lock: PathBuf,
}

/// A partial ingest found on disk.
#[derive(Debug, Clone)]
pub struct IngestStatus {
    /// The key it was started with.
    pub key: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Bytes received so far.
    pub offset: u64,
    /// Last write.
    pub updated: SystemTime,
}

impl ContentStore {
    pub(crate) fn new(root: &Path) -> ContentStore {
        ContentStore {
            blobs: root.join("blobs/sha256"),
            ingest: root.join("ingest"),
            gc_lock: root.join("locks/gc.lock"),
        }
    }

    /// Where the blob `digest` lives (whether or not it is present).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// The size of the blob if it is present.
    pub fn info(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Opens a blob for reading; [`Error::BlobNotFound`] if absent.
    pub fn open(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest);
        match File::open(&path) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::BlobNotFound(digest.clone()))
            }
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Reads a whole blob that must not exceed `max_bytes` (manifests, configs).
    pub fn read_limited(&self, digest: &Digest, max_bytes: u64) -> Result<Vec<u8>> {
        let mut f = self.open(digest)?;
        let size = f.metadata().at(self.blob_path(digest))?.len();
        if size > max_bytes {
            return Err(Error::BlobTooLarge {
                digest: digest.clone(),
                size,
                max: max_bytes,
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        f.read_to_end(&mut buf).at(self.blob_path(digest))?;
        Ok(buf)
    }

    /// Stores `data`, verifying it against `expected` if given; returns its digest.
    pub fn put(&self, data: &[u8], expected: Option<&Digest>) -> Result<Digest> {
        let digest = Digest::of(data);
        if let Some(exp) = expected
            && *exp != digest
        {
            return Err(Error::DigestMismatch {
                what: "blob".into(),
                expected: exp.clone(),
                actual: digest,
            });
        }
        if self.info(&digest)? == Some(data.len() as u64) {
            return Ok(digest);
        }
        let key = format!("put-{}", digest.hex());
        let mut ingest = self.ingest(&key, Some((digest.clone(), data.len() as u64)))?;
        if ingest.offset() > 0 {
            // Resume of an interrupted put: the partial data was rehashed and is a prefix.
            ingest.write_all(&data[ingest.offset() as usize..])
        } else {
            ingest.write_all(data)
        }
        .at(&ingest.dir)?;
        ingest.commit()
    }

    /// Copies `reader` into a new blob (resuming a partial ingest of the same
    /// key by skipping that many bytes of `reader`). Returns digest and size.
    pub fn put_reader(
        &self,
        key: &str,
        mut reader: impl Read,
        expected: Option<(Digest, u64)>,
    ) -> Result<(Digest, u64)> {
        let mut ingest = self.ingest(key, expected)?;
        let skip = ingest.offset();
        let dir = ingest.dir.clone();
        if skip > 0 {
            std::io::copy(&mut (&mut reader).take(skip), &mut std::io::sink()).at(&dir)?;
        }
        std::io::copy(&mut reader, &mut ingest).at(&dir)?;
        let size = ingest.offset();
        Ok((ingest.commit()?, size))
    }

    /// Starts or resumes the ingest `key` (any string: a digest, a URL...).
    ///
    /// `expected` (digest, size) makes [`Ingest::commit`] verify both and lets
    /// writes past `size` fail early. If the expected blob is already present
    /// the ingest starts "complete": `offset()` is the size, writes are
    /// discarded and `commit` returns the digest. Waits while another process
    /// writes the same key.
    pub fn ingest(&self, key: &str, expected: Option<(Digest, u64)>) -> Result<Ingest> {
        let lease = FileLock::lock(&self.gc_lock, LockMode::Shared)?;
        let dir = self.ingest.join(Digest::of(key.as_bytes()).hex());
        loop {
            if let Some((d, size)) = &expected
                && self.info(d)? == Some(*size)
            {
                return Ok(Ingest::present(key, dir, d.clone(), *size, lease));
            }
            fs::create_dir_all(&dir).at(&dir)?;
            let lock_path = dir.join("lock");
            let lock = FileLock::lock(&lock_path, LockMode::Exclusive)?;
            // The previous holder may have committed and removed the dir while we
            // waited: then our lock is on an unlinked file; start over.
            if !same_file(&lock, &lock_path) {
                continue;
            }
            return Ingest::resume(key, dir, expected, &self.blobs, lock, lease);
        }
    }

    /// Every blob present, in no particular order.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.blobs).at(&self.blobs)? {
            let entry = entry.at(&self.blobs)?;
            if let Some(name) = entry.file_name().to_str()
                && let Ok(d) = Digest::from_hex(name)
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Rehashes a blob; `Ok(Some(actual))` when it does not match its name.
    pub fn verify(&self, digest: &Digest) -> Result<Option<Digest>> {
        let mut f = self.open(digest)?;
        let mut hasher = Sha256::new();
        hash_into(&mut f, &mut hasher).at(self.blob_path(digest))?;
        let actual = Digest::from_hasher(hasher);
        Ok((actual != *digest).then_some(actual))
    }

    /// Removes a blob (gc only; the caller holds the exclusive gc lock).
    pub(crate) fn remove(&self, digest: &Digest) -> Result<u64> {
        let path = self.blob_path(digest);
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(&path) {
            Ok(()) => Ok(size),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Partial ingests on disk.
    pub fn ingests(&self) -> Result<Vec<IngestStatus>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.ingest).at(&self.ingest)? {
            let dir = entry.at(&self.ingest)?.path();
            let key = fs::read_to_string(dir.join("ref")).unwrap_or_default();
            let (offset, updated) = match fs::metadata(dir.join("data")) {
                Ok(m) => (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)),
                Err(_) => (
                    0,
                    fs::metadata(&dir)
                        .and_then(|m| m.modified())
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                ),
            };
            out.push(IngestStatus {
                key,
                dir,
                offset,
                updated,
            });
        }
        Ok(out)
    }

    /// Removes an ingest dir unless a writer holds it. Returns whether it was removed.
    pub(crate) fn remove_ingest_if_idle(&self, dir: &Path) -> Result<bool> {
        let Some(lock) = FileLock::try_lock(&dir.join("lock"), LockMode::Exclusive)? else {
            return Ok(false);
        };
        fs::remove_dir_all(dir).at(dir)?;
        drop(lock);
        Ok(true)
    }
}

fn same_file(lock: &FileLock, path: &Path) -> bool {
    let Ok(on_disk) = fs::metadata(path) else {
        return false;
    };
    let Ok(held) = lock.file().metadata() else {
        return false;
    };
    on_disk.ino() == held.ino() && on_disk.dev() == held.dev()
}

/// Feeds everything `r` yields to `hasher`; returns the byte count.
pub(crate) fn hash_into(r: &mut impl Read, hasher: &mut Sha256) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

/// Fsyncs a directory so a rename into it is durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Bytes an ingest writes between two starts of writeback
/// ([`write_behind`]).
const WRITE_BEHIND: u64 = 8 << 20;

/// Starts the writeback of a file's dirty pages on a background thread,
/// which then closes `fd`: the disk writes data while the caller goes on,
/// and the caller's later `fsync`/`syncfs` (which alone makes the data
/// durable) finds little left. Never blocks: when the thread lags behind,
/// the hint is dropped (and `fd` closed at once).
pub(crate) fn write_behind(fd: OwnedFd) {
    use std::sync::OnceLock;
    use std::sync::mpsc::{SyncSender, sync_channel};
    // A few files in flight: each queued fd counts against RLIMIT_NOFILE.
    static QUEUE: OnceLock<Option<SyncSender<OwnedFd>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = sync_channel::<OwnedFd>(32);
        std::thread::Builder::new()
            .name("lamina-writeback".into())
            .spawn(move || {
                for fd in rx {
                    // Only a hint: write errors surface at the sync.
                    let _ = crate::sys::start_writeback(fd.as_fd());
                }
            })
            .ok()
            .map(|_| tx)
    });
    if let Some(tx) = queue {
        let _ = tx.try_send(fd);
    }
}

/// A blob being written. See [`ContentStore::ingest`].
///
/// Dropping it without [`Ingest::commit`] keeps the data for a later resume;
/// [`Ingest::abort`] deletes it.
#[derive(Debug)]
pub struct Ingest {
    key: String,
    dir: PathBuf,
    blobs: PathBuf,
    out: Option<BufWriter<File>>,
    hasher: Sha256,
    offset: u64,
    expected: Option<(Digest, u64)>,
    /// Set when the expected blob already exists.
    present: bool,
    /// Bytes written since writeback was last started.
    unflushed: u64,
    _lock: Option<FileLock>,
    _lease: FileLock,
}

impl Ingest {
    fn present(key: &str, dir: PathBuf, digest: Digest, size: u64, lease: FileLock) -> Ingest {
        Ingest {
            key: key.into(),
            dir,
            blobs: PathBuf::new(),
            out: None,
            hasher: Sha256::new(),
            offset: size,
            expected: Some((digest, size)),
            present: true,
            unflushed: 0,
            _lock: None,
            _lease: lease,
        }
    }

    fn resume(
        key: &str,
        dir: PathBuf,
        expected: Option<(Digest, u64)>,
        blobs: &Path,
        lock: FileLock,
        lease: FileLock,
    ) -> Result<Ingest> {
        let ref_path = dir.join("ref");
        if !ref_path.exists() {
            fs::write(&ref_path, key).at(&ref_path)?;
        }
        let data = dir.join("data");
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data)
            .at(&data)?;
        // Rehash what is there: the partial data is only trusted through its hash.
        let mut hasher = Sha256::new();
        let mut offset = hash_into(&mut file, &mut hasher).at(&data)?;
        if let Some((_, size)) = &expected
            && offset > *size
        {
            file.set_len(0).at(&data)?;
            file.rewind().at(&data)?;
            hasher = Sha256::new();
            offset = 0;
        }
        Ok(Ingest {
            key: key.into(),
            dir,
            blobs: blobs.to_path_buf(),
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            hasher,
            offset,
            expected,
            present: false,
            unflushed: 0,
            _lock: Some(lock),
            _lease: lease,
        })
    }

    /// Bytes already received: resume the source from here.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The ingest key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// sha256 of the bytes received so far, those found on disk at resume
    /// included (the expected digest if the blob was already present). A
    /// writer can check a complete blob with it before [`Ingest::commit`]
    /// (which checks again, and fsyncs).
    pub fn digest(&self) -> Digest {
        match (&self.expected, self.present) {
            (Some((d, _)), true) => d.clone(),
            _ => Digest::from_hasher(self.hasher.clone()),
        }
    }

    /// Verifies size and digest, then makes the blob visible. Idempotent if the
    /// blob already exists. On mismatch the partial data is deleted (it would
    /// only reproduce the same mismatch on resume).
    pub fn commit(mut self) -> Result<Digest> {
        if self.present {
            return Ok(self.expected.take().expect("present ingest has a digest").0);
        }
        let data = self.dir.join("data");
        let file = self
            .out
            .take()
            .expect("ingest has a writer")
            .into_inner()
            .map_err(|e| e.into_error())
            .at(&data)?;
        file.sync_all().at(&data)?;
        drop(file);
        let actual = Digest::from_hasher(self.hasher.clone());
        if let Some((exp, size)) = &self.expected {
            if self.offset != *size {
                let err = Error::SizeMismatch {
                    what: self.key.clone(),
                    expected: *size,
                    actual: self.offset,
                };
                // Short data stays for resume; only over-long data is dropped.
                if self.offset > *size {
                    let _ = fs::remove_dir_all(&self.dir);
                }
                return Err(err);
            }
            if *exp != actual {
                let _ = fs::remove_dir_all(&self.dir);
                return Err(Error::DigestMismatch {
                    what: self.key.clone(),
                    expected: exp.clone(),
                    actual,
                });
            }
        }
        let target = self.blobs.join(actual.hex());
        if !target.exists() {
            fs::set_permissions(&data, fs::Permissions::from_mode(0o444)).at(&data)?;
            fs::rename(&data, &target).at(&target)?;
            fsync_dir(&self.blobs)?;
        }
        fs::remove_dir_all(&self.dir).at(&self.dir)?;
        Ok(actual)
    }

    /// Deletes the partial data.
    pub fn abort(mut self) -> Result<()> {
        self.out.take();
        if self.present {
            return Ok(());
        }
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&self.dir, e)),
        }
    }
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(out) = self.out.as_mut() else {
            // The blob is already present: the data is not needed.
            return Ok(buf.len());
        };
        if let Some((_, size)) = &self.expected
            && self.offset + buf.len() as u64 > *size
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("ingest {}: more than the expected {size} bytes", self.key),
            ));
        }
        let n = out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.offset += n as u64;
        self.unflushed += n as u64;
        if self.unflushed >= WRITE_BEHIND {
            // Write-behind: the disk writes the blob while it downloads, so
            // the fsync of the commit has little left to do.
            out.flush()?;
            if let Ok(dup) = out.get_ref().try_clone() {
                write_behind(dup.into());
            }
            self.unflushed = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.out.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        for d in ["blobs/sha256", "ingest", "locks"] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let cs = ContentStore::new(dir.path());
        (dir, cs)
    }

    #[test]
    fn put_is_idempotent_and_stored_once() {
        let (_d, cs) = store();
        let a = cs.put(b"hello", None).unwrap();
        let b = cs.put(b"hello", Some(&a)).unwrap();
        assert_eq!(a, b);
        assert_eq!(cs.list().unwrap(), vec![a.clone()]);
        assert_eq!(cs.read_limited(&a, 100).unwrap(), b"hello");
        assert!(matches!(
            cs.read_limited(&a, 2),
            Err(Error::BlobTooLarge { .. })
        ));
        assert!(cs.ingests().unwrap().is_empty());
        let mode = fs::metadata(cs.blob_path(&a)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444);
    }

    #[test]
    fn ingest_digest_covers_the_resumed_prefix() {
        let (_d, cs) = store();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let digest = Digest::of(&data);
        let exp = Some((digest.clone(), data.len() as u64));
        let mut w = cs.ingest("d", exp.clone()).unwrap();
        w.write_all(&data[..50_000]).unwrap();
        assert_eq!(w.digest(), Digest::of(&data[..50_000]));
        drop(w);
        let mut w = cs.ingest("d", exp.clone()).unwrap();
        assert_eq!(w.digest(), Digest::of(&data[..50_000]));
        w.write_all(&data[50_000..]).unwrap();
        assert_eq!(w.digest(), digest);
        assert_eq!(w.commit().unwrap(), digest);
        // Present: the expected digest, nothing to hash.
        assert_eq!(cs.ingest("e", exp).unwrap().digest(), digest);
    }

    #[test]
    fn ingest_resumes_after_drop_and_rehashes() {
        let (_d, cs) = store();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(&data);
        let exp = Some((digest.clone(), data.len() as u64));
        let mut w = cs.ingest("k", exp.clone()).unwrap();
        assert_eq!(w.offset(), 0);
        w.write_all(&data[..100_000]).unwrap();
        drop(w); // interrupted
        assert!(
            cs.info(&digest).unwrap().is_none(),
            "not visible before commit"
        );
        let mut w = cs.ingest("k", exp.clone()).unwrap();
        assert_eq!(w.offset(), 100_000);
        w.write_all(&data[100_000..]).unwrap();
        assert_eq!(w.commit().unwrap(), digest);
        assert_eq!(cs.info(&digest).unwrap(), Some(data.len() as u64));
        assert!(cs.ingests().unwrap().is_empty());
        // Once present, a new ingest starts complete.
        let w = cs.ingest("other", exp).unwrap();
        assert_eq!(w.offset(), data.len() as u64);
        assert_eq!(w.commit().unwrap(), digest);
    }

    #[test]
    fn corrupt_partial_data_is_caught_on_resume() {
        let (_d, cs) = store();
        let data = vec![7u8; 50_000];
        let digest = Digest::of(&data);
        let exp = Some((digest.clone(), data.len() as u64));
        let mut w = cs.ingest("k", exp.clone()).unwrap();
        w.write_all(&data[..20_000]).unwrap();
        drop(w);
        // Corrupt the partial file behind the store's back.
        let status = &cs.ingests().unwrap()[0];
        assert_eq!(status.key, "k");
        assert_eq!(status.offset, 20_000);
        fs::write(status.dir.join("data"), vec![8u8; 20_000]).unwrap();
        let mut w = cs.ingest("k", exp.clone()).unwrap();
        w.write_all(&data[w.offset() as usize..]).unwrap();
        assert!(matches!(w.commit(), Err(Error::DigestMismatch { .. })));
        assert!(cs.info(&digest).unwrap().is_none());
        // The bad data was dropped: a fresh ingest starts from zero and succeeds.
        let mut w = cs.ingest("k", exp).unwrap();
        assert_eq!(w.offset(), 0);
        w.write_all(&data).unwrap();
        assert_eq!(w.commit().unwrap(), digest);
    }

    #[test]
    fn size_is_enforced() {
        let (_d, cs) = store();
        let digest = Digest::of(b"abc");
        let mut w = cs.ingest("k", Some((digest.clone(), 3))).unwrap();
        assert!(w.write_all(b"abcd").is_err());
        w.abort().unwrap();
        let mut w = cs.ingest("k", Some((digest, 3))).unwrap();
        w.write_all(b"ab").unwrap();
        assert!(matches!(w.commit(), Err(Error::SizeMismatch { .. })));
        // Short data stays resumable.
        assert_eq!(cs.ingests().unwrap()[0].offset, 2);
    }

    proptest::proptest! {
        /// However a write is cut into interrupted sessions, the committed blob
        /// is the data and its digest.
        #[test]
        fn resume_at_any_cut(
            data in proptest::collection::vec(proptest::num::u8::ANY, 1..20_000),
            cuts in proptest::collection::vec(0usize..20_000, 0..4),
        ) {
            let (_d, cs) = store();
            let digest = Digest::of(&data);
            let exp = Some((digest.clone(), data.len() as u64));
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % data.len()).collect();
            cuts.sort();
            for c in cuts {
                let mut w = cs.ingest("k", exp.clone()).unwrap();
                let off = w.offset() as usize;
                if c > off {
                    w.write_all(&data[off..c]).unwrap();
                }
            }
            let mut w = cs.ingest("k", exp).unwrap();
            let off = w.offset() as usize;
            w.write_all(&data[off..]).unwrap();
            proptest::prop_assert_eq!(w.commit().unwrap(), digest.clone());
            proptest::prop_assert_eq!(std::fs::read(cs.blob_path(&digest)).unwrap(), data);
        }
    }

    #[test]
    fn two_writers_of_one_key_take_turns() {
        let (_d, cs) = store();
        let cs = std::sync::Arc::new(cs);
        let data = vec![1u8; 10_000];
        let digest = Digest::of(&data);
        let exp = Some((digest.clone(), data.len() as u64));
        let mut first = cs.ingest("k", exp.clone()).unwrap();
        first.write_all(&data[..5000]).unwrap();
        let cs2 = cs.clone();
        let exp2 = exp.clone();
        let data2 = data.clone();
        let t = std::thread::spawn(move || {
            // Blocks until `first` commits, then finds the blob present.
            let mut w = cs2.ingest("k", exp2).unwrap();
            let off = w.offset() as usize;
            w.write_all(&data2[off..]).unwrap();
            w.commit().unwrap()
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        first.write_all(&data[5000..]).unwrap();
        assert_eq!(first.commit().unwrap(), digest);
        assert_eq!(t.join().unwrap(), digest);
        assert!(cs.ingests().unwrap().is_empty());
    }
}
