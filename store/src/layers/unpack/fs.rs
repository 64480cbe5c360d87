//! Directory-fd based file system access confined to one layer directory.
//!
//! Every lookup of a directory goes through `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)` relative to the layer root's fd, so a symlink in
//! the layer (even `a -> /` or `../../..`) resolves inside the layer, never
//! outside it. The last component of every entry is then created, replaced or
//! removed with `*at` calls on that parent fd without following symlinks
//! (`O_NOFOLLOW`, `O_EXCL`, `AT_SYMLINK_NOFOLLOW`, `linkat` without
//! `AT_SYMLINK_FOLLOW`). Paths longer than [`SHORT_PATH`] bytes are opened in
//! pieces; beyond the first piece symlinks are refused (`RESOLVE_NO_SYMLINKS`)
//! rather than followed.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use super::path::OPAQUE_MARKER;

/// The xattr that makes a directory opaque for overlayfs.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Longest path resolved by one `openat2` call (PATH_MAX is 4096).
pub const SHORT_PATH: usize = 3072;

/// Flags of a directory fd usable both as a `*at` base and for `fsetxattr`.
pub const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);

/// Opens `rel` below `base` with `openat2`, retrying on `EAGAIN` (which the
/// kernel returns when a rename raced with a scoped `..` lookup).
fn openat2_retry(
    base: BorrowedFd<'_>,
    rel: &[u8],
    oflags: OFlags,
    resolve: ResolveFlags,
) -> io::Result<OwnedFd> {
    loop {
        match rustix::fs::openat2(base, rel, oflags, Mode::empty(), resolve) {
            Err(Errno::AGAIN | Errno::INTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// The root of a layer directory, and a one-entry cache of the last parent
/// directory looked up (tar archives list a directory's entries together).
pub struct Tree {
    root: OwnedFd,
    cache: Option<(Vec<u8>, OwnedFd)>,
}

impl Tree {
    /// Opens the layer directory at `path` (the caller's path, trusted).
    pub fn open(path: &Path) -> io::Result<Tree> {
        let root = rustix::fs::openat(CWD, path, DIR_FLAGS, Mode::empty())?;
        Ok(Tree { root, cache: None })
    }

    /// The layer root's fd.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Opens the existing directory `rel` (normalised), resolving symlinks
    /// as if the layer root were `/`.
    pub fn open_dir(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        self.open_dir_with(rel, ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS)
    }

    /// Opens the existing directory `rel` without following any symlink
    /// (`ELOOP` if a component is one).
    pub fn open_dir_no_symlinks(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        self.open_dir_with(
            rel,
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
    }

    fn open_dir_with(&self, rel: &[u8], in_root: ResolveFlags) -> io::Result<OwnedFd> {
        if rel.is_empty() {
            return self.root.try_clone();
        }
        if rel.len() <= SHORT_PATH {
            return openat2_retry(self.root(), rel, DIR_FLAGS, in_root);
        }
        // Long path: the first piece may use symlinks, later pieces not.
        let mut fd: Option<OwnedFd> = None;
        let mut rest = rel;
        while !rest.is_empty() {
            let cut = if rest.len() <= SHORT_PATH {
                rest.len()
            } else {
                rest[..=SHORT_PATH]
                    .iter()
                    .rposition(|&b| b == b'/')
                    .ok_or_else(|| io::Error::from(Errno::NAMETOOLONG))?
            };
            let piece = &rest[..cut];
            let next = match &fd {
                None => openat2_retry(self.root(), piece, DIR_FLAGS, in_root)?,
                Some(base) => openat2_retry(
                    base.as_fd(),
                    piece,
                    DIR_FLAGS,
                    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
                )
                .map_err(|e| {
                    if e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) {
                        io::Error::other(
                            "symlinks are not followed beyond the first 3072 bytes of a path",
                        )
                    } else {
                        e
                    }
                })?,
            };
            fd = Some(next);
            rest = rest.get(cut + 1..).unwrap_or(b"");
        }
        Ok(fd.expect("non-empty path"))
    }

    /// Opens directory `rel`, creating missing components (mode 0755) and
    /// noting their paths in `created`. A component that exists but is not
    /// a directory (or is a symlink leading nowhere in the layer) is an
    /// error, never replaced; except a whiteout of this layer (`.wh.d` then
    /// `d/x` without `d/`): the directory was deleted and made again, so it
    /// becomes an opaque directory.
    ///
    /// The deepest existing ancestor is found by bisection and the rest is
    /// made component by component from its fd, so a deep missing path costs
    /// O(depth log depth) lookups, not O(depth²).
    pub fn open_dir_create(&self, rel: &[u8], created: &mut Vec<Vec<u8>>) -> io::Result<OwnedFd> {
        let missing = |e: &io::Error| {
            [Errno::NOENT, Errno::NOTDIR]
                .iter()
                .any(|n| e.raw_os_error() == Some(n.raw_os_error()))
        };
        match self.open_dir(rel) {
            Err(e) if missing(&e) && !rel.is_empty() => {}
            other => return other,
        }
        // Ends of the components: prefix(k) = rel[..ends[k-1]].
        let ends: Vec<usize> = rel
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'/')
            .map(|(i, _)| i)
            .chain([rel.len()])
            .collect();
        let prefix = |k: usize| {
            if k == 0 {
                &rel[..0]
            } else {
                &rel[..ends[k - 1]]
            }
        };
        // Invariant: prefix(lo) opens (lo_fd), prefix(hi + 1) does not.
        let (mut lo, mut hi) = (0, ends.len() - 1);
        let mut lo_fd = self.root.try_clone()?;
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            match self.open_dir(prefix(mid)) {
                Ok(fd) => {
                    lo = mid;
                    lo_fd = fd;
                }
                Err(e) if missing(&e) => hi = mid - 1,
                Err(e) => return Err(e),
            }
        }
        let mut fd = lo_fd;
        for k in lo + 1..=ends.len() {
            let name = &prefix(k)[if k == 1 { 0 } else { ends[k - 2] + 1 }..];
            match rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(0o755)) {
                Ok(()) => created.push(prefix(k).to_vec()),
                Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            fd = match rustix::fs::openat(&fd, name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty()) {
                Ok(next) => next,
                Err(Errno::NOTDIR | Errno::LOOP) => match lstat(fd.as_fd(), name)? {
                    Some(st) if is_whiteout(&st) => {
                        rustix::fs::unlinkat(&fd, name, AtFlags::empty())?;
                        rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(0o755))?;
                        let next = rustix::fs::openat(
                            &fd,
                            name,
                            DIR_FLAGS | OFlags::NOFOLLOW,
                            Mode::empty(),
                        )?;
                        set_opaque(next.as_fd())?;
                        next
                    }
                    Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                        return Err(io::Error::other(
                            "a path component is a symlink that does not lead to a directory inside the layer",
                        ));
                    }
                    _ => return Err(Errno::NOTDIR.into()),
                },
                Err(e) => return Err(e.into()),
            };
        }
        Ok(fd)
    }

    /// Takes the fd of parent directory `rel` out of the cache (or opens it,
    /// creating it if `created` is given).
    pub fn take_parent(
        &mut self,
        rel: &[u8],
        created: Option<&mut Vec<Vec<u8>>>,
    ) -> io::Result<OwnedFd> {
        if let Some((path, fd)) = self.cache.take()
            && path == rel
        {
            return Ok(fd);
        }
        match created {
            Some(created) => self.open_dir_create(rel, created),
            None => self.open_dir(rel),
        }
    }

    /// Returns a parent fd to the cache.
    pub fn put_parent(&mut self, rel: &[u8], fd: OwnedFd) {
        self.cache = Some((rel.to_vec(), fd));
    }

    /// Forgets the cached parent: something in the tree was removed or
    /// replaced, so a cached resolution may be stale.
    pub fn invalidate(&mut self) {
        self.cache = None;
    }
}

/// Makes the directory `dir` opaque: the overlay xattr, or without the
/// privilege for `trusted.*` the `.wh..wh..opq` marker file.
pub fn set_opaque(dir: BorrowedFd<'_>) -> io::Result<()> {
    match rustix::fs::fsetxattr(dir, OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::PERM) => {
            let flags =
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rustix::fs::openat(dir, OPAQUE_MARKER, flags, Mode::from_raw_mode(0o600)) {
                Ok(_) | Err(Errno::EXIST) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// `lstat` of `name` in `dir`; `None` if it does not exist.
pub fn lstat(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// True for a directory.
pub fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// True for an overlayfs whiteout: a character device 0/0.
pub fn is_whiteout(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// Removes `name` in `dir` whatever it is, a directory with all its content.
/// Never follows a symlink: only things inside `dir` are removed.
pub fn remove_all(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    let sub = rustix::fs::openat(dir, name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())?;
    let mut names = Vec::new();
    for entry in Dir::read_from(&sub)? {
        let entry = entry?;
        let child = entry.file_name().to_bytes();
        if child != b"." && child != b".." {
            names.push(child.to_vec());
        }
    }
    for child in names {
        remove_all(sub.as_fd(), &child)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

/// Changes the mode of `name` in `dir` (a device or fifo) without following
/// it if it is a symlink and without opening it for I/O.
pub fn chmod_nofollow(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<()> {
    let (_fd, proc) = proc_path_nofollow(dir, name)?;
    rustix::fs::chmod(proc.as_str(), Mode::from_raw_mode(mode))?;
    Ok(())
}

/// An `O_PATH|O_NOFOLLOW` fd of `name` in `dir` and its `/proc/self/fd`
/// path, valid while the fd lives. The /proc magic link jumps to the inode
/// itself, even a symlink, so no path in the layer is resolved again.
fn proc_path_nofollow(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<(OwnedFd, String)> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    Ok((fd, proc))
}

/// Sets an xattr on `name` in `dir` without following it if it is a
/// symlink, and without opening it for I/O (it may be a device or fifo).
pub fn set_xattr_nofollow(
    dir: BorrowedFd<'_>,
    name: &[u8],
    xname: &[u8],
    value: &[u8],
) -> io::Result<()> {
    let (_fd, proc) = proc_path_nofollow(dir, name)?;
    rustix::fs::setxattr(
        proc.as_str(),
        OsStr::from_bytes(xname),
        value,
        rustix::fs::XattrFlags::empty(),
    )?;
    Ok(())
}
