//! Tree snapshots for comparing two directory trees as a user of the merged
//! file system sees them: names, types, modes, owners, sizes, content hashes,
//! xattrs (overlay's own `trusted.overlay.*` and friends excluded), link
//! targets, device numbers, nanosecond mtimes and hardlink groups.
//!
//! Used to prove that kernel overlayfs over lamina's layer dirs shows the
//! same tree as `umoci unpack`, and reusable for any "same tree" check.

use anyhow::{Context as _, Result, bail};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
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
    let mut names = vec![0u8; 1 << 16];
    let n = match rustix::fs::llistxattr(path, &mut names[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => 0,
        Err(e) => {
            return Err(std::io::Error::from(e))
                .with_context(|| format!("listxattr {}", path.display()));
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let s = String::from_utf8_lossy(name).into_owned();
        if is_overlay_xattr(&s) {
            continue;
        }
        let mut v = vec![0u8; 1 << 16];
        let len = rustix::fs::lgetxattr(path, OsStr::from_bytes(name), &mut v[..])
            .map_err(std::io::Error::from)
            .with_context(|| format!("getxattr {s} {}", path.display()))?;
        v.truncate(len);
        out.push((s, v));
    }
    out.sort();
    Ok(out)
}

fn node(path: &Path, m: &std::fs::Metadata, opts: &Options) -> Result<Node> {
    let ft = m.file_type();
    let (kind, detail, size) = if ft.is_dir() {
        ("dir", String::new(), 0)
    } else if ft.is_symlink() {
        (
            "symlink",
            String::from_utf8_lossy(std::fs::read_link(path)?.as_os_str().as_bytes()).into_owned(),
            0,
        )
    } else if ft.is_file() {
        let mut h = sha2::Sha256::new();
        let mut f =
            std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        ("file", hex::encode(h.finalize()), m.len())
    } else {
        let dev = format!(
            "{}:{}",
            rustix::fs::major(m.rdev()),
            rustix::fs::minor(m.rdev())
        );
        if ft.is_char_device() {
            ("char", dev, 0)
        } else if ft.is_block_device() {
            ("block", dev, 0)
        } else if ft.is_fifo() {
            ("fifo", String::new(), 0)
        } else {
            ("socket", String::new(), 0)
        }
    };
    let want_mtime = match kind {
        "dir" => opts.dir_mtimes,
        "symlink" => opts.symlink_mtimes,
        _ => opts.file_mtimes,
    };
    Ok(Node {
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        size,
        detail,
        xattrs: xattrs(path)?,
        mtime: want_mtime.then(|| (m.mtime(), m.mtime_nsec())),
    })
}

/// Snapshots the tree under `root`, never following symlinks.
pub fn snapshot(root: &Path, opts: Options) -> Result<Snapshot> {
    let mut nodes = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    if opts.root {
        let m = root
            .symlink_metadata()
            .with_context(|| format!("stat {}", root.display()))?;
        nodes.insert(".".to_owned(), node(root, &m, &opts)?);
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = e?.path();
            let rel = String::from_utf8_lossy(path.strip_prefix(root)?.as_os_str().as_bytes())
                .into_owned();
            let m = path
                .symlink_metadata()
                .with_context(|| format!("stat {}", path.display()))?;
            if m.is_dir() {
                stack.push(path.clone());
            } else if m.nlink() > 1 {
                inodes
                    .entry((m.dev(), m.ino()))
                    .or_default()
                    .push(rel.clone());
            }
            nodes.insert(rel, node(&path, &m, &opts)?);
        }
    }
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
