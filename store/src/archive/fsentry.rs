//! Turning files on disk into tar entries: metadata, xattrs, data, sparse
//! maps, hardlinks, and the overlayfs whiteout/opaque conventions.
//!
//! Overlay-private xattrs (`trusted.overlay.*`, `user.overlay.*`,
//! `user.fuseoverlayfs.*`) describe the union, not the file, and never go
//! into an archive.

use super::tar::{Header, Kind, TarWriter};
use crate::error::{Error, IoContext, Result};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Prefix of a whiteout entry's name in an OCI layer.
pub const WH_PREFIX: &[u8] = b".wh.";
/// Name of the opaque-directory marker in an OCI layer.
pub const WH_OPAQUE: &[u8] = b".wh..wh..opq";

const OPAQUE_XATTRS: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];
const WHITEOUT_XATTRS: [&str; 2] = ["trusted.overlay.whiteout", "user.overlay.whiteout"];

/// Whether an xattr belongs to the overlay machinery rather than to the file.
pub fn is_private_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name.starts_with(b"user.fuseoverlayfs.")
}

/// All xattrs of `path` (not following symlinks), sorted by name, overlay-private ones included.
pub fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut names = vec![0u8; 1024];
    let len = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let need = rustix::fs::llistxattr_query(path).at(path)?;
                names.resize(need.max(names.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(path, e.into())),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = OsStr::from_bytes(name);
        let mut value = vec![0u8; 256];
        let n = loop {
            match rustix::fs::lgetxattr(path, cname, &mut value[..]) {
                Ok(n) => break Some(n),
                Err(rustix::io::Errno::RANGE) => {
                    let need = rustix::fs::lgetxattr_query(path, cname).at(path)?;
                    value.resize(need.max(value.len() * 2), 0);
                }
                // Removed between list and get.
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(Error::io(path, e.into())),
            }
        };
        if let Some(n) = n {
            value.truncate(n);
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// The overlayfs feature (`redirect_dir`, `metacopy`) whose xattr is among
/// `xattrs`: such an upper entry points at content in a lower layer, which a
/// layer tar cannot express.
pub fn unrepresentable(xattrs: &[(Vec<u8>, Vec<u8>)]) -> Option<&'static str> {
    xattrs.iter().find_map(|(k, _)| match k.as_slice() {
        b"trusted.overlay.redirect" | b"user.overlay.redirect" => Some("redirect_dir"),
        b"trusted.overlay.metacopy" | b"user.overlay.metacopy" => Some("metacopy"),
        _ => None,
    })
}

/// Whether a directory is opaque (hides everything below it), judging by its xattrs.
pub fn xattrs_say_opaque(xattrs: &[(Vec<u8>, Vec<u8>)]) -> bool {
    xattrs
        .iter()
        .any(|(k, v)| OPAQUE_XATTRS.iter().any(|o| k == o.as_bytes()) && v == b"y")
}

/// Whether an opaque marker is present in a directory: the xattr, or a
/// `.wh..wh..opq` file where xattrs were not available.
pub fn dir_is_opaque(path: &Path) -> Result<bool> {
    for name in OPAQUE_XATTRS {
        let mut v = [0u8; 4];
        match rustix::fs::lgetxattr(path, name, &mut v[..]) {
            Ok(1) if v[0] == b'y' => return Ok(true),
            Ok(_) => {}
            Err(
                rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP | rustix::io::Errno::RANGE,
            ) => {}
            Err(e) => return Err(Error::io(path, e.into())),
        }
    }
    Ok(path
        .join(OsStr::from_bytes(WH_OPAQUE))
        .symlink_metadata()
        .is_ok())
}

/// Whether an entry in an overlayfs-format directory is a whiteout: a 0/0
/// char device, or an empty file carrying the overlay whiteout xattr.
pub fn is_whiteout(path: &Path, meta: &Metadata) -> bool {
    let ft = meta.file_type();
    if ft.is_char_device() {
        return meta.rdev() == 0;
    }
    if ft.is_file() && meta.len() == 0 {
        for name in WHITEOUT_XATTRS {
            if rustix::fs::lgetxattr(path, name, &mut [0u8; 1][..]).is_ok() {
                return true;
            }
        }
    }
    false
}

/// Reads a directory's entry names, sorted bytewise (the archive order).
pub fn sorted_names(dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).at(dir)? {
        names.push(e.at(dir)?.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Joins an archive name and a child name.
pub fn join_name(parent: &[u8], child: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return child.to_vec();
    }
    let mut v = Vec::with_capacity(parent.len() + 1 + child.len());
    v.extend_from_slice(parent);
    v.push(b'/');
    v.extend_from_slice(child);
    v
}

/// Header fields every entry shares, from a file's metadata.
pub fn base_header(name: Vec<u8>, kind: Kind, meta: &Metadata) -> Header {
    Header {
        name,
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid() as u64,
        gid: meta.gid() as u64,
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec() as u32,
        xattrs: Vec::new(),
    }
}

/// Appends tar entries for files on disk; remembers inodes for hardlinks.
pub struct EntryWriter {
    /// (dev, ino) of files with several links -> the archive name written first.
    links: HashMap<(u64, u64), Vec<u8>>,
    buf: Vec<u8>,
    /// Write sparse files as PAX sparse entries (else as plain data).
    pub sparse: bool,
    /// Regular files appended so far (paces [`prefetch`]).
    pub files_done: std::sync::Arc<AtomicUsize>,
}

impl EntryWriter {
    /// A writer; `sparse` selects PAX sparse entries for files with holes.
    pub fn new(sparse: bool) -> Self {
        EntryWriter {
            links: HashMap::new(),
            buf: vec![0u8; 1 << 20],
            sparse,
            files_done: Default::default(),
        }
    }

    /// Appends `path` (already lstat'ed as `meta`) under archive `name`, with
    /// the given (non-private) xattrs. Directories get only their header.
    /// Sockets are skipped (they cannot be archived).
    pub fn append<W: Write>(
        &mut self,
        tw: &mut TarWriter<W>,
        path: &Path,
        name: Vec<u8>,
        meta: &Metadata,
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
        out_path: &Path,
    ) -> Result<()> {
        let ft = meta.file_type();
        if ft.is_file() {
            self.files_done.fetch_add(1, Ordering::Relaxed);
        }
        if !ft.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                let h = base_header(name, Kind::Hardlink(first.clone()), meta);
                return tw.append(&h).at(out_path);
            }
            self.links.insert(key, name.clone());
        }
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            let target = std::fs::read_link(path).at(path)?;
            Kind::Symlink(target.as_os_str().as_bytes().to_vec())
        } else if ft.is_char_device() {
            Kind::Char(
                rustix::fs::major(meta.rdev()),
                rustix::fs::minor(meta.rdev()),
            )
        } else if ft.is_block_device() {
            Kind::Block(
                rustix::fs::major(meta.rdev()),
                rustix::fs::minor(meta.rdev()),
            )
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_file() {
            return self.append_file(tw, path, name, meta, xattrs, out_path);
        } else {
            tracing::debug!(path = %path.display(), "skipping socket");
            return Ok(());
        };
        let mut h = base_header(name, kind, meta);
        h.xattrs = xattrs;
        tw.append(&h).at(out_path)
    }

    fn append_file<W: Write>(
        &mut self,
        tw: &mut TarWriter<W>,
        path: &Path,
        name: Vec<u8>,
        meta: &Metadata,
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
        out_path: &Path,
    ) -> Result<()> {
        let size = meta.len();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .at(path)?;
        // A file with fewer allocated blocks than its size has holes.
        let segments = if self.sparse && size > 0 && (meta.blocks() * 512) < size {
            data_segments(&mut f, size).at(path)?
        } else {
            None
        };
        let kind = match &segments {
            Some(segs) => Kind::Sparse {
                real_size: size,
                segments: segs.clone(),
            },
            None => Kind::File { size },
        };
        let mut h = base_header(name, kind, meta);
        h.xattrs = xattrs;
        tw.append(&h).at(out_path)?;
        let segs = segments.unwrap_or_else(|| vec![(0, size)]);
        for (off, len) in segs {
            let mut pos = off;
            let end = off + len;
            while pos < end {
                let want = ((end - pos) as usize).min(self.buf.len());
                let n = f.read_at(&mut self.buf[..want], pos).at(path)?;
                if n == 0 {
                    return Err(Error::Io {
                        path: path.to_path_buf(),
                        source: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "file shrank while being archived; stop whatever writes to it and retry",
                        ),
                    });
                }
                tw.write_data(&self.buf[..n]).at(out_path)?;
                pos += n as u64;
            }
        }
        Ok(())
    }
}

/// The data segments of a file with holes, via SEEK_DATA/SEEK_HOLE. `None`
/// when the filesystem cannot tell or the file is one dense segment. A file
/// ending in a hole gets a final `(size, 0)` segment, as GNU tar writes it.
fn data_segments(f: &mut File, size: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
    let mut segs = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match rustix::fs::seek(&*f, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if data >= size {
            break;
        }
        let hole = rustix::fs::seek(&*f, rustix::fs::SeekFrom::Hole(data))?.min(size);
        segs.push((data, hole - data));
        pos = hole;
    }
    f.seek(SeekFrom::Start(0))?;
    if segs.len() == 1 && segs[0] == (0, size) {
        return Ok(None);
    }
    if segs.last().is_none_or(|&(o, l)| o + l < size) {
        segs.push((size, 0));
    }
    Ok(Some(segs))
}

/// Walks `root` in archive order ahead of an [`EntryWriter`] and asks the
/// kernel to read each regular file in (`POSIX_FADV_WILLNEED`), at most
/// `ahead` files ahead of `done`, so that reading many small cold files
/// keeps the disk queue full. Best effort: errors are ignored (the writer
/// reports them). Returns when the walk ends or `stop` is set.
pub fn prefetch(root: &Path, done: &AtomicUsize, stop: &AtomicBool, ahead: usize) {
    fn walk(dir: &Path, count: &mut usize, done: &AtomicUsize, stop: &AtomicBool, ahead: usize) {
        let Ok(names) = sorted_names(dir) else { return };
        for name in names {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let path = dir.join(&name);
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                walk(&path, count, done, stop, ahead);
            } else if meta.is_file() {
                *count += 1;
                while *count > done.load(Ordering::Relaxed) + ahead {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                // Only files with data on disk; sparse ones are read by extent anyway.
                if meta.len() > 0
                    && meta.blocks() * 512 >= meta.len()
                    && let Ok(f) = std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_NOATIME)
                        .open(&path)
                {
                    let _ = rustix::fs::fadvise(
                        &f,
                        0,
                        std::num::NonZeroU64::new(meta.len()),
                        rustix::fs::Advice::WillNeed,
                    );
                }
            }
        }
    }
    let mut count = 0;
    walk(root, &mut count, done, stop, ahead);
}

/// Reads a small file fully (for tests and markers).
pub fn read_small(path: &Path, max: u64) -> Result<Vec<u8>> {
    let f = File::open(path).at(path)?;
    let mut v = Vec::new();
    f.take(max).read_to_end(&mut v).at(path)?;
    Ok(v)
}
