//! Tree snapshots for comparing two directory trees as a user of the merged
//! file system sees them: names, types, modes, owners, sizes, content hashes,
//! xattrs (overlay's own `trusted.overlay.*` and friends excluded), link
//! targets, device numbers, nanosecond mtimes and hardlink groups.
//!
//! Used to prove that kernel overlayfs over lamina's layer dirs shows the
//! same tree as `umoci unpack`, and reusable for any "same tree" check.

use anyhow::{Context as _, Result, bail};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What a snapshot records besides names, types and content.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Record mtimes (nanoseconds) of files, devices and fifos.
    pub file_mtimes: bool,
    /// Record mtimes of symlinks.
    pub symlink_mtimes: bool,
    /// Record mtimes of directories (unreliable when a tool writes into a
    /// directory after setting its time).
    pub dir_mtimes: bool,
    /// Include the root directory's own metadata under the name ".".
    pub root: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            file_mtimes: true,
            symlink_mtimes: true,
            dir_mtimes: false,
            root: false,
        }
    }
}

/// One node of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `dir`, `file`, `symlink`, `char`, `block`, `fifo`, `socket`.
    pub kind: &'static str,
    /// Permission bits with setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (files).
    pub size: u64,
    /// sha256 of the content (files), the target (symlinks), `MAJ:MIN` (devices).
    pub detail: String,
    /// xattrs other than overlay bookkeeping, sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// `(seconds, nanoseconds)` when recorded (see [`Options`]).
    pub mtime: Option<(i64, i64)>,
}

/// A snapshot: nodes by path relative to the root, and hardlink groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Every path below the root ("." for the root with [`Options::root`]).
    pub nodes: BTreeMap<String, Node>,
    /// Sorted groups (of 2 or more) of paths sharing one inode.
    pub hardlinks: Vec<Vec<String>>,
}

/// True for xattrs that belong to the overlay machinery, not to the image.
pub fn is_overlay_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.")
        || name.starts_with("user.overlay.")
        || name.starts_with("user.fuseoverlayfs.")
        || name == "security.selinux"
}

/// The xattrs of `path` (not followed), overlay bookkeeping excluded.
pub fn xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let fd = rustix::fs::open(
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
    .with_context(|| format!("open {}", path.display()))?;
    xattrs_of_fd(&fd).with_context(|| format!("xattrs of {}", path.display()))
}

/// The xattrs of the inode behind an `O_PATH` fd, through its /proc magic
/// link (which reaches the inode itself, even a symlink's).
fn xattrs_of_fd(fd: &OwnedFd) -> Result<Vec<(String, Vec<u8>)>> {
    let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let mut names = vec![0u8; 1 << 16];
    let n = match rustix::fs::listxattr(proc.as_str(), &mut names[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => 0,
        Err(e) => return Err(std::io::Error::from(e)).context("listxattr"),
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let s = String::from_utf8_lossy(name).into_owned();
        if is_overlay_xattr(&s) {
            continue;
        }
        let mut v = vec![0u8; 1 << 16];
        let len = rustix::fs::getxattr(proc.as_str(), OsStr::from_bytes(name), &mut v[..])
            .map_err(std::io::Error::from)
            .with_context(|| format!("getxattr {s}"))?;
        v.truncate(len);
        out.push((s, v));
    }
    out.sort();
    Ok(out)
}

fn node(dir: BorrowedFd<'_>, name: &OsStr, st: &rustix::fs::Stat, opts: &Options) -> Result<Node> {
    let ft = FileType::from_raw_mode(st.st_mode);
    let dev = || {
        format!(
            "{}:{}",
            rustix::fs::major(st.st_rdev),
            rustix::fs::minor(st.st_rdev)
        )
    };
    let (kind, detail, size) = match ft {
        FileType::Directory => ("dir", String::new(), 0),
        FileType::Symlink => {
            let target =
                rustix::fs::readlinkat(dir, name, Vec::new()).map_err(std::io::Error::from)?;
            (
                "symlink",
                String::from_utf8_lossy(target.as_bytes()).into_owned(),
                0,
            )
        }
        FileType::RegularFile => {
            let fd = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(std::io::Error::from)?;
            let mut f = std::fs::File::from(fd);
            let mut h = sha2::Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            ("file", hex::encode(h.finalize()), st.st_size as u64)
        }
        FileType::CharacterDevice => ("char", dev(), 0),
        FileType::BlockDevice => ("block", dev(), 0),
        FileType::Fifo => ("fifo", String::new(), 0),
        _ => ("socket", String::new(), 0),
    };
    let want_mtime = match kind {
        "dir" => opts.dir_mtimes,
        "symlink" => opts.symlink_mtimes,
        _ => opts.file_mtimes,
    };
    let pfd = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)?;
    Ok(Node {
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size,
        detail,
        xattrs: xattrs_of_fd(&pfd)?,
        mtime: want_mtime.then_some((st.st_mtime, st.st_mtime_nsec as i64)),
    })
}

type Inodes = BTreeMap<(u64, u64), Vec<String>>;

fn walk(
    dir: BorrowedFd<'_>,
    prefix: &str,
    opts: &Options,
    nodes: &mut BTreeMap<String, Node>,
    inodes: &mut Inodes,
) -> Result<()> {
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(dir).map_err(std::io::Error::from)? {
        let e = e.map_err(std::io::Error::from)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_owned());
        }
    }
    for name in names {
        let rel = format!("{prefix}{}", String::from_utf8_lossy(name.as_bytes()));
        let st = rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(std::io::Error::from)
            .with_context(|| format!("stat {rel}"))?;
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if !is_dir && st.st_nlink > 1 {
            inodes
                .entry((st.st_dev, st.st_ino))
                .or_default()
                .push(rel.clone());
        }
        nodes.insert(
            rel.clone(),
            node(dir, &name, &st, opts).with_context(|| format!("snapshot of {rel}"))?,
        );
        if is_dir {
            let sub = rustix::fs::openat(
                dir,
                &name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(std::io::Error::from)
            .with_context(|| format!("open {rel}"))?;
            walk(sub.as_fd(), &format!("{rel}/"), opts, nodes, inodes)?;
        }
    }
    Ok(())
}

/// Snapshots the tree under `root`, never following symlinks. Works with
/// directory fds, so paths longer than PATH_MAX are fine.
pub fn snapshot(root: &Path, opts: Options) -> Result<Snapshot> {
    let mut nodes = BTreeMap::new();
    let mut inodes = Inodes::new();
    let rootfd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
    .with_context(|| format!("open {}", root.display()))?;
    if opts.root {
        let st = rustix::fs::fstat(&rootfd).map_err(std::io::Error::from)?;
        nodes.insert(
            ".".to_owned(),
            node(rootfd.as_fd(), OsStr::new("."), &st, &opts)?,
        );
    }
    walk(rootfd.as_fd(), "", &opts, &mut nodes, &mut inodes)?;
    let mut hardlinks: Vec<Vec<String>> = inodes
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    hardlinks.sort();
    Ok(Snapshot { nodes, hardlinks })
}

/// The differences between two snapshots, one readable line each.
pub fn diff(expected: &Snapshot, actual: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (p, n) in &expected.nodes {
        match actual.nodes.get(p) {
            None => out.push(format!("missing {p:?} ({})", n.kind)),
            Some(a) if a != n => out.push(format!(
                "differs {p:?}:\n    expected {n:?}\n    actual   {a:?}"
            )),
            Some(_) => {}
        }
    }
    for (p, n) in &actual.nodes {
        if !expected.nodes.contains_key(p) {
            out.push(format!("unexpected {p:?} ({})", n.kind));
        }
    }
    if expected.hardlinks != actual.hardlinks {
        out.push(format!(
            "hardlink groups differ:\n    expected {:?}\n    actual   {:?}",
            expected.hardlinks, actual.hardlinks
        ));
    }
    out
}

/// Fails with the list of differences unless the snapshots are equal.
pub fn assert_same(expected: &Snapshot, actual: &Snapshot, what: &str) -> Result<()> {
    let d = diff(expected, actual);
    if !d.is_empty() {
        bail!("{what}: {} difference(s):\n{}", d.len(), d.join("\n"));
    }
    Ok(())
}
