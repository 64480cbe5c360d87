//! The second stage of unpack: tar entries applied to the layer directory in
//! overlayfs format.
//!
//! Order of metadata for each node: create, write the data, `chown`, `chmod`
//! (after chown, which clears setuid/setgid), xattrs (after the data, since a
//! write drops `security.capability`), then times. Directories get their
//! mode and times at the very end, deepest first, so that creating their
//! content neither changes their mtime nor runs into a read-only mode.
//!
//! Same-layer rules (OCI image spec): a later entry replaces an earlier one
//! (a directory over a directory merges); a whiteout only hides lower layers,
//! so a `.wh.NAME` whose NAME this layer already has keeps NAME (a directory
//! becomes opaque instead), and an entry that comes after its own whiteout
//! replaces the whiteout (a directory is then made opaque).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use tar::EntryType;

use super::error::UnpackError;
use super::fs::{self as lfs, DIR_FLAGS, Tree};
use super::path::{self, NameKind};

pub use super::fs::OPAQUE_XATTR;
/// Files at least this large get their writeback started as soon as they
/// are written ([`crate::content::write_behind`]); smaller ones are left to
/// the kernel's batching and the final syncfs.
const WRITEBACK_MIN: u64 = 16 << 10;
/// xattrs overlayfs interprets (`user.overlay.*` under `userxattr`); a
/// layer may not set them (a forged `redirect` would make the mount look
/// elsewhere).
const OVERLAY_XATTR_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

/// Metadata of one entry, from its header and PAX records.
struct Meta {
    /// The real name of a PAX-format sparse file (`GNU.sparse.name`).
    sparse_name: Option<Vec<u8>>,
    /// PAX-format sparse layout, if the entry is one.
    sparse: Option<PaxSparse>,
    mode: u32,
    uid: u32,
    gid: u32,
    times: Timestamps,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Deferred directory metadata.
struct DirMeta {
    mode: u32,
    times: Timestamps,
}

/// The lower layers' directories, nearest first; opened only when first
/// needed (a hardlink whose target is not in this layer, or in
/// [`Applier::finish`] for the directories the tar does not list), so a
/// caller may still be producing them while this layer unpacks.
pub enum Lowers<'a> {
    /// Already open.
    Ready(&'a [Tree]),
    /// Produced on first use (may block until the lower layers exist).
    Pending(Box<dyn FnOnce() -> Result<Vec<Tree>, UnpackError> + Send + 'a>),
    /// Produced by `Pending`.
    Loaded(Vec<Tree>),
    /// `Pending` failed with this message.
    Failed(String),
}

impl Lowers<'_> {
    /// The lower trees, waiting for them if they are still pending.
    fn get(&mut self, layer: &str) -> Result<&[Tree], UnpackError> {
        if matches!(self, Lowers::Pending(_)) {
            let pending = std::mem::replace(self, Lowers::Failed(String::new()));
            let Lowers::Pending(load) = pending else {
                unreachable!("checked above")
            };
            match load() {
                Ok(trees) => *self = Lowers::Loaded(trees),
                Err(e) => {
                    *self = Lowers::Failed(e.to_string());
                    return Err(e);
                }
            }
        }
        match self {
            Lowers::Ready(t) => Ok(t),
            Lowers::Loaded(t) => Ok(t),
            Lowers::Pending(_) => unreachable!("loaded above"),
            Lowers::Failed(reason) => Err(UnpackError::LowerLayers {
                layer: layer.to_owned(),
                reason: reason.clone(),
            }),
        }
    }
}

/// Applies the entries of one layer.
pub struct Applier<'a> {
    tree: Tree,
    lowers: Lowers<'a>,
    layer: &'a str,
    dirs: HashMap<Vec<u8>, DirMeta>,
    /// Directories this layer needs but does not list (yet): they inherit
    /// the lower layers' metadata in [`Applier::finish`], so an unpack
    /// whose parents are still pending does not wait for them here.
    implicit: BTreeSet<Vec<u8>>,
    buf: Vec<u8>,
    euid: u32,
    egid: u32,
    umask: u32,
    /// Entries applied so far.
    pub entries: u64,
}

fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o777)
}

/// Parses a PAX time: `SECONDS[.FRACTION]`, possibly negative.
pub fn parse_pax_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos: i64 = 0;
    for i in 0..9 {
        nanos = nanos * 10 + frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
    }
    let mut ts = Timespec {
        tv_sec: secs,
        tv_nsec: nanos as _,
    };
    if neg {
        ts.tv_sec = -secs;
        if nanos > 0 {
            ts.tv_sec -= 1;
            ts.tv_nsec = (1_000_000_000 - nanos) as _;
        }
    }
    Some(ts)
}

fn lossy(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

fn errno_is(e: &io::Error, errno: Errno) -> bool {
    e.raw_os_error() == Some(errno.raw_os_error())
}

impl<'a> Applier<'a> {
    /// An applier writing into `tree`, finding hardlink targets in `lowers`.
    pub fn new(tree: Tree, lowers: Lowers<'a>, layer: &'a str) -> Applier<'a> {
        Applier {
            tree,
            lowers,
            layer,
            dirs: HashMap::new(),
            implicit: BTreeSet::new(),
            buf: vec![0; 1 << 20],
            euid: rustix::process::geteuid().as_raw(),
            egid: rustix::process::getegid().as_raw(),
            umask: umask(),
            entries: 0,
        }
    }

    fn rejected(&self, entry: &[u8], reason: impl Into<String>) -> UnpackError {
        UnpackError::Rejected {
            layer: self.layer.to_owned(),
            entry: lossy(entry),
            reason: reason.into(),
        }
    }

    fn failed(
        &self,
        entry: &[u8],
        op: &'static str,
    ) -> impl FnOnce(io::Error) -> UnpackError + use<'_> {
        let entry = lossy(entry);
        move |source| UnpackError::Entry {
            layer: self.layer.to_owned(),
            entry,
            op,
            source,
        }
    }

    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
    ) -> Result<Meta, UnpackError> {
        let h = entry.header();
        let bad = |what: &str, e: io::Error| self.rejected(raw, format!("bad {what} field: {e}"));
        let mode = h.mode().map_err(|e| bad("mode", e))? & 0o7777;
        let uid = u32::try_from(h.uid().map_err(|e| bad("uid", e))?)
            .map_err(|_| self.rejected(raw, "uid out of range"))?;
        let gid = u32::try_from(h.gid().map_err(|e| bad("gid", e))?)
            .map_err(|_| self.rejected(raw, "gid out of range"))?;
        let secs = h.mtime().map_err(|e| bad("mtime", e))?;
        let mut mtime = Timespec {
            tv_sec: i64::try_from(secs).unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        let mut atime = None;
        let mut xattrs = Vec::new();
        let mut sparse_name = None;
        let mut sparse = PaxSparseBuilder::default();
        if let Some(pax) = entry.pax_extensions().map_err(|e| bad("PAX", e))? {
            for ext in pax {
                let ext = ext.map_err(|e| bad("PAX", e))?;
                let key = ext.key_bytes();
                if key == b"mtime" {
                    mtime = parse_pax_time(ext.value_bytes())
                        .ok_or_else(|| self.rejected(raw, "bad PAX mtime"))?;
                } else if key == b"atime" {
                    atime = parse_pax_time(ext.value_bytes());
                } else if let Some(key) = key.strip_prefix(b"GNU.sparse.") {
                    if key == b"name" {
                        sparse_name = Some(ext.value_bytes().to_vec());
                    } else {
                        sparse.record(key, ext.value_bytes()).map_err(|e| {
                            self.rejected(raw, format!("bad PAX sparse record: {e}"))
                        })?;
                    }
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    if OVERLAY_XATTR_PREFIXES.iter().any(|p| name.starts_with(p)) {
                        tracing::warn!(layer = self.layer, entry = %lossy(raw), xattr = %lossy(name), "overlay xattr in layer ignored");
                    } else {
                        xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                    }
                }
            }
        }
        let times = Timestamps {
            last_access: atime.unwrap_or(mtime),
            last_modification: mtime,
        };
        let sparse = sparse
            .build()
            .map_err(|e| self.rejected(raw, format!("bad PAX sparse records: {e}")))?;
        Ok(Meta {
            sparse_name,
            sparse,
            mode,
            uid,
            gid,
            times,
            xattrs,
        })
    }

    fn needs_chown(&self, m: &Meta) -> bool {
        self.euid == 0 && (m.uid != self.euid || m.gid != self.egid)
    }

    fn needs_chmod(&self, m: &Meta, chowned: bool) -> bool {
        chowned || m.mode & 0o7000 != 0 || m.mode & self.umask != 0
    }

    /// Applies one entry.
    pub fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let etype = entry.header().entry_type();
        match etype {
            EntryType::XGlobalHeader => return Ok(()),
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link
            | EntryType::Char
            | EntryType::Block
            | EntryType::Fifo => {}
            other => {
                tracing::warn!(layer = self.layer, entry = %lossy(&raw), kind = ?other, "tar entry type not supported, skipped");
                return Ok(());
            }
        }
        self.entries += 1;
        let mut meta = self.meta(entry, &raw)?;
        let raw = meta.sparse_name.take().unwrap_or(raw);
        let rel = path::normalize(&raw).map_err(|p| self.rejected(&raw, p.to_string()))?;
        let (parent, name) = path::split_parent(&rel);
        if name.is_empty() {
            if etype != EntryType::Directory {
                return Err(self.rejected(&raw, "only a directory can stand for the layer root"));
            }
            let root = self
                .tree
                .open_dir(b"")
                .map_err(self.failed(&raw, "open layer root"))?;
            self.dir_meta(&raw, &rel, root.as_fd(), &meta)?;
            return Ok(());
        }
        let kind = path::classify(name).map_err(|p| self.rejected(&raw, p.to_string()))?;
        if kind == NameKind::Meta {
            return Ok(());
        }
        if kind != NameKind::Normal {
            // Whiteouts and opaque markers never follow symlinks: below a
            // symlink or any other non-directory of this layer they are
            // redundant (that node already hides the lower directory; umoci
            // writes `d/.wh.x` after replacing dir `d` with a file or a
            // symlink), so they are dropped.
            match self.tree.open_dir_no_symlinks(parent) {
                Ok(pfd) => {
                    return match kind {
                        NameKind::Whiteout(target) => self.whiteout(&raw, pfd.as_fd(), target),
                        _ => self.opaque(&raw, pfd.as_fd()),
                    };
                }
                Err(e) if errno_is(&e, Errno::LOOP) || errno_is(&e, Errno::NOTDIR) => {
                    tracing::debug!(layer = self.layer, entry = %lossy(&raw), "whiteout below a non-directory dropped");
                    return Ok(());
                }
                // Missing directories: created below (no symlink on the way).
                Err(e) if errno_is(&e, Errno::NOENT) => {}
                Err(e) => return Err(self.failed(&raw, "open parent directory")(e)),
            }
        }
        let mut created = Vec::new();
        let pfd = match self.tree.take_parent(parent, Some(&mut created)) {
            Ok(fd) => {
                self.implicit.extend(created);
                fd
            }
            Err(e) => return Err(self.failed(&raw, "open parent directory")(e)),
        };
        let parent = parent.to_vec();
        let result = match kind {
            NameKind::Meta => Ok(()),
            NameKind::Opaque => self.opaque(&raw, pfd.as_fd()),
            NameKind::Whiteout(target) => self.whiteout(&raw, pfd.as_fd(), target),
            NameKind::Normal => self.node(entry, etype, meta, &raw, &rel, pfd.as_fd(), name),
        };
        self.tree.put_parent(&parent, pfd);
        result
    }

    /// A directory this layer needs but does not list (its tar has
    /// `a/b/f` without `a/b/`) takes the owner, mode and times of the same
    /// directory in the nearest lower layer, as the merged view had it;
    /// without one it stays root-owned 0755. Done at the end, for the
    /// directories still implicit then (a later entry may have listed,
    /// replaced or removed them): the result is the same as at creation,
    /// since the lower layers never change, but the lower layers are only
    /// waited for once this layer's tar is applied.
    fn inherit_implicit_dirs(&mut self) -> Result<(), UnpackError> {
        for rel in std::mem::take(&mut self.implicit) {
            let (parent, name) = path::split_parent(&rel);
            // Still a directory of this layer, reached without symlinks?
            let Ok(pfd) = self.tree.open_dir_no_symlinks(parent) else {
                continue;
            };
            match lfs::lstat(pfd.as_fd(), name) {
                Ok(Some(st)) if lfs::is_dir(&st) => {}
                Ok(_) => continue,
                Err(e) => return Err(self.failed(&rel, "stat implicit directory")(e)),
            }
            self.inherit_from_lowers(&rel, &rel)?;
        }
        Ok(())
    }

    fn inherit_from_lowers(&mut self, raw: &[u8], rel: &[u8]) -> Result<(), UnpackError> {
        let (parent, name) = path::split_parent(rel);
        let lowers = self.lowers.get(self.layer)?;
        for lower in lowers {
            // A real directory of the lower layer, not a symlink to one.
            let Ok(lparent) = lower.open_dir(parent) else {
                continue;
            };
            let Ok(Some(st)) = lfs::lstat(lparent.as_fd(), name) else {
                continue;
            };
            if !lfs::is_dir(&st) {
                break;
            }
            let pfd = self
                .tree
                .open_dir(parent)
                .map_err(|source| UnpackError::Entry {
                    layer: self.layer.to_owned(),
                    entry: lossy(raw),
                    op: "open parent directory",
                    source,
                })?;
            if self.euid == 0 {
                rustix::fs::chownat(
                    &pfd,
                    name,
                    Some(rustix::fs::Uid::from_raw(st.st_uid)),
                    Some(rustix::fs::Gid::from_raw(st.st_gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| UnpackError::Entry {
                    layer: self.layer.to_owned(),
                    entry: lossy(raw),
                    op: "chown implicit directory",
                    source: e.into(),
                })?;
            }
            let times = Timestamps {
                last_access: Timespec {
                    tv_sec: st.st_atime as _,
                    tv_nsec: st.st_atime_nsec as _,
                },
                last_modification: Timespec {
                    tv_sec: st.st_mtime as _,
                    tv_nsec: st.st_mtime_nsec as _,
                },
            };
            self.dirs.entry(rel.to_vec()).or_insert(DirMeta {
                mode: st.st_mode & 0o7777,
                times,
            });
            break;
        }
        Ok(())
    }

    /// Makes the directory `dir` opaque.
    fn opaque(&self, raw: &[u8], dir: BorrowedFd<'_>) -> Result<(), UnpackError> {
        // Without CAP_SYS_ADMIN for trusted.*, the marker file stays
        // (fuse-overlayfs reads it).
        lfs::set_opaque(dir).map_err(self.failed(raw, "make directory opaque"))
    }

    fn marker(&self, raw: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), UnpackError> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600)) {
            Ok(_) | Err(Errno::EXIST) => Ok(()),
            Err(e) => Err(self.failed(raw, "create whiteout marker")(e.into())),
        }
    }

    /// `.wh.TARGET` in `dir`.
    fn whiteout(
        &mut self,
        raw: &[u8],
        dir: BorrowedFd<'_>,
        target: &[u8],
    ) -> Result<(), UnpackError> {
        match lfs::lstat(dir, target).map_err(self.failed(raw, "stat whiteout target"))? {
            // This layer has TARGET: it stays, and already hides the lower ones,
            // except that a directory merges: make it opaque.
            Some(st) if lfs::is_dir(&st) => {
                let sub =
                    rustix::fs::openat(dir, target, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())
                        .map_err(|e| self.failed(raw, "open whited-out directory")(e.into()))?;
                self.opaque(raw, sub.as_fd())
            }
            Some(_) => Ok(()),
            None => {
                match rustix::fs::mknodat(dir, target, FileType::CharacterDevice, Mode::empty(), 0)
                {
                    Ok(()) => Ok(()),
                    Err(Errno::PERM) => self.marker(raw, dir, &path::whiteout_name(target)),
                    Err(e) => Err(self.failed(raw, "create whiteout")(e.into())),
                }
            }
        }
    }

    /// Makes room for a new node `name` in `dir` after EEXIST: removes what
    /// is there. Returns whether it was a whiteout.
    fn clear(
        &mut self,
        raw: &[u8],
        rel: &[u8],
        dir: BorrowedFd<'_>,
        name: &[u8],
    ) -> Result<bool, UnpackError> {
        let st = lfs::lstat(dir, name).map_err(self.failed(raw, "stat existing entry"))?;
        let was_whiteout = st.as_ref().is_some_and(lfs::is_whiteout);
        lfs::remove_all(dir, name).map_err(self.failed(raw, "remove replaced entry"))?;
        self.tree.invalidate();
        // Records of directories below it go stale; `finish` skips those
        // that no longer lead to a directory (an O(1) removal here keeps
        // hostile replace-loops linear).
        self.dirs.remove(rel);
        Ok(was_whiteout)
    }

    /// Runs `create`; if the name exists, replaces it and runs it again.
    fn create<T>(
        &mut self,
        raw: &[u8],
        rel: &[u8],
        dir: BorrowedFd<'_>,
        name: &[u8],
        op: &'static str,
        mut create: impl FnMut() -> rustix::io::Result<T>,
    ) -> Result<T, UnpackError> {
        match create() {
            Err(Errno::EXIST) => {
                self.clear(raw, rel, dir, name)?;
                create().map_err(|e| self.failed(raw, op)(e.into()))
            }
            other => other.map_err(|e| self.failed(raw, op)(e.into())),
        }
    }

    // The entry, its metadata and where it goes: all needed, none derivable.
    #[allow(clippy::too_many_arguments)]
    fn node<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        etype: EntryType,
        meta: Meta,
        raw: &[u8],
        rel: &[u8],
        dir: BorrowedFd<'_>,
        name: &[u8],
    ) -> Result<(), UnpackError> {
        match etype {
            EntryType::Directory => {
                let mut opaque = false;
                match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        let st = lfs::lstat(dir, name)
                            .map_err(self.failed(raw, "stat existing entry"))?;
                        if !st.as_ref().is_some_and(lfs::is_dir) {
                            opaque = self.clear(raw, rel, dir, name)?;
                            rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))
                                .map_err(|e| self.failed(raw, "create directory")(e.into()))?;
                        }
                    }
                    Err(e) => return Err(self.failed(raw, "create directory")(e.into())),
                }
                let fd = rustix::fs::openat(dir, name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())
                    .map_err(|e| self.failed(raw, "open directory")(e.into()))?;
                if opaque {
                    self.opaque(raw, fd.as_fd())?;
                }
                self.dir_meta(raw, rel, fd.as_fd(), &meta)
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let flags = OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC;
                let mode = Mode::from_raw_mode(meta.mode & 0o777);
                let fd = self.create(raw, rel, dir, name, "create file", || {
                    rustix::fs::openat(dir, name, flags, mode)
                })?;
                let size = entry.size();
                match &meta.sparse {
                    Some(layout) => self.write_pax_sparse(entry, raw, fd.as_fd(), layout)?,
                    None => self.write_data(
                        entry,
                        raw,
                        fd.as_fd(),
                        etype == EntryType::GNUSparse,
                        size,
                    )?,
                }
                let chowned = self.needs_chown(&meta);
                if chowned {
                    rustix::fs::fchown(
                        &fd,
                        Some(rustix::fs::Uid::from_raw(meta.uid)),
                        Some(rustix::fs::Gid::from_raw(meta.gid)),
                    )
                    .map_err(|e| self.failed(raw, "chown")(e.into()))?;
                }
                if self.needs_chmod(&meta, chowned) {
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode))
                        .map_err(|e| self.failed(raw, "chmod")(e.into()))?;
                }
                for (k, v) in &meta.xattrs {
                    rustix::fs::fsetxattr(&fd, k.as_slice(), v, XattrFlags::empty())
                        .map_err(|e| self.failed(raw, "set xattr")(e.into()))?;
                }
                rustix::fs::futimens(&fd, &meta.times)
                    .map_err(|e| self.failed(raw, "set times")(e.into()))?;
                if size >= WRITEBACK_MIN {
                    // Write-behind: the disk writes this file while the rest
                    // of the layer unpacks, so the caller's final syncfs has
                    // little left to do (on another thread: starting
                    // writeback allocates blocks and may wait for the disk).
                    crate::content::write_behind(fd);
                }
                Ok(())
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.is_empty() {
                    return Err(self.rejected(raw, "symlink with an empty target"));
                }
                self.create(raw, rel, dir, name, "create symlink", || {
                    rustix::fs::symlinkat(target.as_slice(), dir, name)
                })?;
                self.special_meta(raw, dir, name, &meta, false)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let h = entry.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                let (ft, dev) = match etype {
                    EntryType::Char => {
                        (FileType::CharacterDevice, rustix::fs::makedev(major, minor))
                    }
                    EntryType::Block => (FileType::BlockDevice, rustix::fs::makedev(major, minor)),
                    _ => (FileType::Fifo, 0),
                };
                let mode = Mode::from_raw_mode(meta.mode & 0o777);
                let made = match rustix::fs::mknodat(dir, name, ft, mode, dev) {
                    Err(Errno::EXIST) => {
                        self.clear(raw, rel, dir, name)?;
                        rustix::fs::mknodat(dir, name, ft, mode, dev)
                    }
                    other => other,
                };
                match made {
                    Ok(()) => self.special_meta(raw, dir, name, &meta, true),
                    // Without CAP_MKNOD (rootless) devices cannot exist; like
                    // other rootless unpackers, skip them rather than fail.
                    Err(Errno::PERM) if ft != FileType::Fifo => {
                        tracing::warn!(layer = self.layer, entry = %lossy(raw), "no permission to create a device node, skipped");
                        Ok(())
                    }
                    Err(e) => Err(self.failed(raw, "create device or fifo")(e.into())),
                }
            }
            EntryType::Link => self.hardlink(entry, raw, rel, dir, name),
            _ => Ok(()),
        }
    }

    /// Writes the entry's data; for a GNU sparse entry, all-zero blocks
    /// become holes.
    fn write_data<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        fd: BorrowedFd<'_>,
        sparse: bool,
        size: u64,
    ) -> Result<(), UnpackError> {
        let mut buf = std::mem::take(&mut self.buf);
        let result = (|| -> Result<(), UnpackError> {
            let mut offset = 0u64;
            loop {
                let n = match entry.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => {
                        return Err(UnpackError::Tar {
                            layer: self.layer.to_owned(),
                            after: format!("in the data of entry {:?}", lossy(raw)),
                            source,
                        });
                    }
                };
                if sparse {
                    for block in buf[..n].chunks(64 << 10) {
                        if block.iter().any(|&b| b != 0) {
                            write_all_at(fd, block, offset)
                                .map_err(self.failed(raw, "write file"))?;
                        }
                        offset += block.len() as u64;
                    }
                } else {
                    write_all_at(fd, &buf[..n], offset).map_err(self.failed(raw, "write file"))?;
                    offset += n as u64;
                }
            }
            if sparse && offset > 0 {
                rustix::fs::ftruncate(fd, size.max(offset))
                    .map_err(|e| self.failed(raw, "truncate file")(e.into()))?;
            }
            Ok(())
        })();
        self.buf = buf;
        result
    }

    /// Writes a PAX-format sparse file: the data holds the chunks listed in
    /// the map (for format 1.0 the map is at the start of the data).
    fn write_pax_sparse<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        fd: BorrowedFd<'_>,
        layout: &PaxSparse,
    ) -> Result<(), UnpackError> {
        let map = match &layout.map {
            Some(map) => map.clone(),
            None => read_sparse_map(entry)
                .map_err(|e| self.rejected(raw, format!("bad sparse map: {e}")))?,
        };
        let mut buf = std::mem::take(&mut self.buf);
        let result = (|| -> Result<(), UnpackError> {
            for &(offset, len) in &map {
                let mut done = 0u64;
                while done < len {
                    let want = buf.len().min((len - done) as usize);
                    entry
                        .read_exact(&mut buf[..want])
                        .map_err(|source| UnpackError::Tar {
                            layer: self.layer.to_owned(),
                            after: format!("in the data of sparse entry {:?}", lossy(raw)),
                            source,
                        })?;
                    write_all_at(fd, &buf[..want], offset + done)
                        .map_err(self.failed(raw, "write file"))?;
                    done += want as u64;
                }
            }
            rustix::fs::ftruncate(fd, layout.real_size)
                .map_err(|e| self.failed(raw, "truncate file")(e.into()))
        })();
        self.buf = buf;
        result
    }

    /// Owner, mode, xattrs and times of a symlink, device or fifo.
    fn special_meta(
        &self,
        raw: &[u8],
        dir: BorrowedFd<'_>,
        name: &[u8],
        meta: &Meta,
        chmod: bool,
    ) -> Result<(), UnpackError> {
        let chowned = self.needs_chown(meta);
        if chowned {
            rustix::fs::chownat(
                dir,
                name,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.failed(raw, "chown")(e.into()))?;
        }
        if chmod && self.needs_chmod(meta, chowned) {
            lfs::chmod_nofollow(dir, name, meta.mode).map_err(self.failed(raw, "chmod"))?;
        }
        for (k, v) in &meta.xattrs {
            lfs::set_xattr_nofollow(dir, name, k, v).map_err(self.failed(raw, "set xattr"))?;
        }
        rustix::fs::utimensat(dir, name, &meta.times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.failed(raw, "set times")(e.into()))
    }

    /// Owner and xattrs of a directory now; mode and times at the end.
    fn dir_meta(
        &mut self,
        raw: &[u8],
        rel: &[u8],
        fd: BorrowedFd<'_>,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        if self.needs_chown(meta) {
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
            )
            .map_err(|e| self.failed(raw, "chown")(e.into()))?;
        }
        for (k, v) in &meta.xattrs {
            rustix::fs::fsetxattr(fd, k.as_slice(), v, XattrFlags::empty())
                .map_err(|e| self.failed(raw, "set xattr")(e.into()))?;
        }
        self.implicit.remove(rel);
        self.dirs.insert(
            rel.to_vec(),
            DirMeta {
                mode: meta.mode,
                times: meta.times.clone(),
            },
        );
        Ok(())
    }

    fn hardlink<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        rel: &[u8],
        dir: BorrowedFd<'_>,
        name: &[u8],
    ) -> Result<(), UnpackError> {
        let target_raw = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .unwrap_or_default();
        let target = path::normalize(&target_raw).map_err(|p| {
            self.rejected(
                raw,
                format!("hardlink target {:?}: {p}", lossy(&target_raw)),
            )
        })?;
        if target == rel {
            return Ok(());
        }
        let (tparent, tname) = path::split_parent(&target);
        if tname.is_empty() {
            return Err(self.rejected(raw, "hardlink to the layer root"));
        }
        let source = match self.find_link_source(tparent, tname) {
            Ok(s) => s,
            Err(LinkLookup::Io(e)) => return Err(self.failed(raw, "look up hardlink target")(e)),
            Err(LinkLookup::Lowers(e)) => return Err(e),
        };
        let Some((sdir, st)) = source else {
            return Err(self.rejected(
                raw,
                format!(
                    "hardlink target {:?} is neither in this layer nor in its parents",
                    lossy(&target_raw)
                ),
            ));
        };
        if lfs::is_dir(&st) {
            return Err(self.rejected(raw, "hardlink to a directory"));
        }
        let linked = match rustix::fs::linkat(&sdir, tname, dir, name, AtFlags::empty()) {
            Err(Errno::EXIST) => {
                self.clear(raw, rel, dir, name)?;
                rustix::fs::linkat(&sdir, tname, dir, name, AtFlags::empty())
            }
            other => other,
        };
        match linked {
            Ok(()) => Ok(()),
            Err(Errno::XDEV | Errno::MLINK) => {
                self.copy_for_link(raw, sdir.as_fd(), tname, &st, dir, name)
            }
            Err(e) => Err(self.failed(raw, "create hardlink")(e.into())),
        }
    }

    /// Finds the directory holding the hardlink target: this layer first,
    /// then the lower layers nearest first; a whiteout ends the search.
    /// The lower layers are only waited for when this layer does not have
    /// the target.
    fn find_link_source(
        &mut self,
        parent: &[u8],
        name: &[u8],
    ) -> Result<Option<(OwnedFd, rustix::fs::Stat)>, LinkLookup> {
        if let Some(found) = link_source_in(&self.tree, parent, name).map_err(LinkLookup::Io)? {
            return Ok(found);
        }
        for tree in self.lowers.get(self.layer).map_err(LinkLookup::Lowers)? {
            if let Some(found) = link_source_in(tree, parent, name).map_err(LinkLookup::Io)? {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Where `link()` is impossible (another file system, too many links),
    /// a hardlink becomes a copy with the same metadata.
    fn copy_for_link(
        &mut self,
        raw: &[u8],
        sdir: BorrowedFd<'_>,
        sname: &[u8],
        st: &rustix::fs::Stat,
        dir: BorrowedFd<'_>,
        name: &[u8],
    ) -> Result<(), UnpackError> {
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(self.rejected(
                raw,
                "cannot hardlink across file systems to a non-regular file",
            ));
        }
        let src = rustix::fs::openat(
            sdir,
            sname,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.failed(raw, "open hardlink target")(e.into()))?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dst = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))
            .map_err(|e| self.failed(raw, "create hardlink copy")(e.into()))?;
        let (mut src, mut dst) = (File::from(src), File::from(dst));
        io::copy(&mut src, &mut dst).map_err(self.failed(raw, "copy hardlink target"))?;
        rustix::fs::fchown(
            &dst,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
        )
        .map_err(|e| self.failed(raw, "chown")(e.into()))?;
        rustix::fs::fchmod(&dst, Mode::from_raw_mode(st.st_mode & 0o7777))
            .map_err(|e| self.failed(raw, "chmod")(e.into()))?;
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: st.st_atime as _,
                tv_nsec: st.st_atime_nsec as _,
            },
            last_modification: Timespec {
                tv_sec: st.st_mtime as _,
                tv_nsec: st.st_mtime_nsec as _,
            },
        };
        rustix::fs::futimens(&dst, &times).map_err(|e| self.failed(raw, "set times")(e.into()))?;
        dst.flush().map_err(self.failed(raw, "write file"))
    }

    /// Gives implicit directories their lower twins' metadata, then applies
    /// the deferred directory modes and times, deepest first.
    pub fn finish(mut self) -> Result<u64, UnpackError> {
        self.inherit_implicit_dirs()?;
        let mut dirs: Vec<(Vec<u8>, DirMeta)> =
            std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by_key(|(p, _)| {
            std::cmp::Reverse(if p.is_empty() {
                0
            } else {
                1 + p.iter().filter(|&&b| b == b'/').count()
            })
        });
        for (rel, meta) in dirs {
            let fd = if rel.is_empty() {
                self.tree.open_dir(b"")
            } else {
                let (parent, name) = path::split_parent(&rel);
                self.tree.open_dir(parent).and_then(|p| {
                    Ok(rustix::fs::openat(
                        &p,
                        name,
                        DIR_FLAGS | OFlags::NOFOLLOW,
                        Mode::empty(),
                    )?)
                })
            };
            let fd = match fd {
                Ok(fd) => fd,
                // Replaced by a later entry (a file, a symlink, gone with
                // its parent): nothing to fix up.
                Err(e)
                    if [Errno::NOENT, Errno::NOTDIR, Errno::LOOP]
                        .iter()
                        .any(|&n| errno_is(&e, n)) =>
                {
                    continue;
                }
                Err(e) => return Err(self.failed(&rel, "reopen directory")(e)),
            };
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode))
                .map_err(|e| self.failed(&rel, "chmod")(e.into()))?;
            rustix::fs::futimens(&fd, &meta.times)
                .map_err(|e| self.failed(&rel, "set times")(e.into()))?;
        }
        Ok(self.entries)
    }
}

/// Why a hardlink target could not be looked up.
enum LinkLookup {
    Io(io::Error),
    Lowers(UnpackError),
}

/// Looks `parent/name` up in one layer: `None` if it has no such node (look
/// further down), `Some(None)` for a whiteout (the search ends).
#[allow(clippy::type_complexity)]
fn link_source_in(
    tree: &Tree,
    parent: &[u8],
    name: &[u8],
) -> io::Result<Option<Option<(OwnedFd, rustix::fs::Stat)>>> {
    let sdir = match tree.open_dir(parent) {
        Ok(fd) => fd,
        Err(e) if errno_is(&e, Errno::NOENT) || errno_is(&e, Errno::NOTDIR) => return Ok(None),
        Err(e) => return Err(e),
    };
    match lfs::lstat(sdir.as_fd(), name)? {
        Some(st) if lfs::is_whiteout(&st) => Ok(Some(None)),
        Some(st) => Ok(Some(Some((sdir, st)))),
        None => Ok(None),
    }
}

/// Sparse layout of a PAX-format (GNU 0.x/1.0) sparse file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaxSparse {
    /// Size of the file with its holes.
    real_size: u64,
    /// `(offset, length)` of the data chunks; `None`: at the start of the
    /// data (format 1.0).
    map: Option<Vec<(u64, u64)>>,
}

/// Most chunks accepted in a sparse map (bounds memory on hostile input).
const MAX_SPARSE_CHUNKS: usize = 1 << 20;

#[derive(Default)]
struct PaxSparseBuilder {
    major: Option<u64>,
    real_size: Option<u64>,
    map: Option<Vec<(u64, u64)>>,
    /// Format 0.0: repeated offset/numbytes records.
    pairs: Vec<(u64, u64)>,
}

fn parse_u64(v: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("{:?} is not a number", lossy(v)))
}

impl PaxSparseBuilder {
    fn record(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        match key {
            b"major" => self.major = Some(parse_u64(value)?),
            b"realsize" | b"size" => self.real_size = Some(parse_u64(value)?),
            b"map" => {
                let nums = value
                    .split(|&b| b == b',')
                    .filter(|v| !v.is_empty())
                    .map(parse_u64)
                    .collect::<Result<Vec<_>, _>>()?;
                if nums.len() % 2 != 0 || nums.len() / 2 > MAX_SPARSE_CHUNKS {
                    return Err("odd or huge map".into());
                }
                self.map = Some(nums.chunks(2).map(|c| (c[0], c[1])).collect());
            }
            b"offset" if self.pairs.len() < MAX_SPARSE_CHUNKS => {
                self.pairs.push((parse_u64(value)?, 0))
            }
            b"offset" => return Err("too many chunks".into()),
            b"numbytes" => match self.pairs.last_mut() {
                Some(last) => last.1 = parse_u64(value)?,
                _ => return Err("numbytes without offset".into()),
            },
            _ => {}
        }
        Ok(())
    }

    fn build(mut self) -> Result<Option<PaxSparse>, String> {
        let Some(real_size) = self.real_size else {
            return Ok(None);
        };
        if self.major == Some(1) {
            return Ok(Some(PaxSparse {
                real_size,
                map: None,
            }));
        }
        if self.map.is_none() && !self.pairs.is_empty() {
            self.map = Some(std::mem::take(&mut self.pairs));
        }
        match self.map {
            Some(map) => Ok(Some(PaxSparse {
                real_size,
                map: Some(map),
            })),
            None => Err("sparse file without a map".into()),
        }
    }
}

/// Reads the map at the start of a format 1.0 sparse file's data: decimal
/// numbers, one a line (count, then offset and length pairs), padded to a
/// 512-byte block.
fn read_sparse_map(entry: &mut impl Read) -> Result<Vec<(u64, u64)>, String> {
    let mut text = Vec::new();
    let mut block = [0u8; 512];
    loop {
        entry.read_exact(&mut block).map_err(|e| e.to_string())?;
        text.extend_from_slice(&block);
        let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        // The last piece is unterminated.
        let complete = &lines[..lines.len() - 1];
        if let Some(first) = complete.first() {
            let count = parse_u64(first)? as usize;
            if count > MAX_SPARSE_CHUNKS {
                return Err("too many chunks".into());
            }
            if complete.len() > 2 * count {
                let nums = complete[1..=2 * count]
                    .iter()
                    .map(|l| parse_u64(l))
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(nums.chunks(2).map(|c| (c[0], c[1])).collect());
            }
        }
    }
}

fn write_all_at(fd: BorrowedFd<'_>, mut data: &[u8], mut offset: u64) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::pwrite(fd, data, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        let t = parse_pax_time(b"1700000000.123456789").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1700000000, 123456789));
        let t = parse_pax_time(b"1700000000.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1700000000, 500000000));
        let t = parse_pax_time(b"12").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (12, 0));
        let t = parse_pax_time(b"-1.25").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 750000000));
        assert!(parse_pax_time(b"x").is_none());
        assert!(parse_pax_time(b"1.2e3").is_none());
    }
}
