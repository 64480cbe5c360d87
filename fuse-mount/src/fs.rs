//! The overlay filesystem's operations, free of FUSE plumbing: every
//! operation is `fn op_*(..) -> OpResult<T>` and the FUSE layer (`fuse.rs`)
//! turns errors into errnos in one place.
//!
//! Invariants:
//! - Every node holds an `O_PATH` fd of its current real file: the upper copy
//!   once copied up, else the top-most lower file. Operations go through that
//!   fd or through directory fds (`openat`-style), never through joined
//!   path strings, so a symlink in the data cannot redirect them.
//! - Inode numbers: a node's number is allocated on first sight of its real
//!   file's `(st_dev, st_ino)` and remembered for the mount's lifetime (the
//!   upper copy made by a copy-up maps to the same number), so a file keeps
//!   its number across copy-up and across the kernel forgetting it. The
//!   mapping is dropped when the last link of an upper file goes away, so a
//!   reused inode number of the backing fs is not mistaken for the old file.
//! - Namespace lock: operations that change the upper layer (create, remove,
//!   rename, copy-up) hold `ns` for writing; lookups and reads hold it for
//!   reading. Directory indexes are only changed under the write lock.
//! - Copy-up is atomic: the copy is made in the work dir under a temporary
//!   name (data, owner, mode, xattrs, times) and renamed into place.

use crate::layer::{self, DirIndex, Entry, State};
use crate::reaper::{Reaper, TMP_PREFIX};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags, Stat, Timespec,
    Timestamps,
};
use rustix::io::Errno;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

/// Result of an overlay operation; the error is the errno returned to the caller.
pub type OpResult<T> = Result<T, Errno>;

/// The root's inode number.
pub const ROOT_INO: u64 = 1;

pub(crate) fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_io_error(&e).unwrap_or(Errno::IO)
}

/// The caller of an operation (owner of what it creates).
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
}

/// A file or directory of the merged tree.
pub struct Node {
    /// Inode number (= FUSE node id).
    pub ino: u64,
    /// Its type (fixed for the node's life).
    pub kind: FileType,
    lookups: AtomicU64,
    st: Mutex<NodeState>,
    /// Kernel passthrough backing file shared by the node's open handles.
    pub(crate) backing: Mutex<Weak<Backing>>,
    /// Xattr changes made through the mount (set, remove), counted.
    xattr_changes: AtomicU64,
    /// `xattr_changes + 1` as it was before a getxattr of
    /// `security.capability` that found none: while the count has not moved
    /// since, the real file has none (nothing else may change the layers
    /// while mounted). The kernel asks for it before every write to a FUSE
    /// file, to know whether the write drops file capabilities.
    no_caps: AtomicU64,
}

struct NodeState {
    /// O_PATH fd of the real file; dropped under fd pressure, reopened by path.
    fd: Option<Arc<OwnedFd>>,
    layer: usize,
    parent: u64,
    name: OsString,
    /// Directories: layers merged, top first.
    chain: Vec<usize>,
    /// Directories: the merged index, built on first use.
    index: Option<Arc<DirIndex>>,
    /// Directories: the dir in other layers of `chain` than `layer`, opened
    /// once (each lookup of a name from a lower layer needs it), sorted by
    /// layer; dropped with `fd` under fd pressure.
    layer_dirs: Vec<(usize, Arc<OwnedFd>)>,
    /// The fd may not be closed: `parent`/`name` no longer lead to this
    /// file (that name was removed while the file lives on: other links, or
    /// open), so it could not be reopened by path.
    pinned: bool,
}

impl Node {
    /// The count of xattr changes, read before a look for capabilities; give
    /// it to [`Node::no_caps_since`] if the look found none.
    fn xattr_epoch(&self) -> u64 {
        self.xattr_changes.load(Ordering::Acquire)
    }

    /// Records that the real file had no `security.capability` when the
    /// count of xattr changes was `epoch`.
    fn no_caps_since(&self, epoch: u64) {
        self.no_caps.store(epoch + 1, Ordering::Release);
    }

    /// Whether the real file is known to have no `security.capability`: no
    /// xattr changed since that was found.
    fn known_no_caps(&self) -> bool {
        self.no_caps.load(Ordering::Acquire) == self.xattr_epoch() + 1
    }

    /// Counts an xattr change made through the mount (forgets `no_caps`).
    fn xattr_changed(&self) {
        self.xattr_changes.fetch_add(1, Ordering::AcqRel);
    }
}

/// A registered passthrough backing file and the real file it is.
pub(crate) struct Backing {
    pub(crate) id: fuser::BackingId,
    pub(crate) layer: usize,
}

/// An open file (directories are opened by the kernel alone: see
/// `opendir` in fuse.rs).
pub(crate) struct Handle {
    pub(crate) file: File,
    pub(crate) node: Arc<Node>,
    pub(crate) _backing: Option<Arc<Backing>>,
}

/// What opening a file gives: the fd and whether a backing can be shared.
pub(crate) struct Opened {
    pub(crate) file: File,
    pub(crate) node: Arc<Node>,
    pub(crate) layer: usize,
}

/// Settings of an overlay mount (see the crate docs).
#[derive(Clone, Debug)]
pub struct OverlayConfig {
    /// Read-only layers, top-most first.
    pub lowers: Vec<PathBuf>,
    /// Writable upper dir and its work dir (same filesystem); `None` = read-only.
    pub upper: Option<(PathBuf, PathBuf)>,
    /// Kernel cache lifetime of entries and attributes.
    pub ttl: std::time::Duration,
    /// Serving threads.
    pub threads: usize,
    /// Use kernel FUSE passthrough for open files when the kernel allows.
    pub passthrough: bool,
    /// Serve requests over FUSE-over-io_uring (see [`crate::Uring`]).
    pub uring: crate::Uring,
    /// The longest an io_uring queue thread polls for its next request after
    /// answering one (adaptive, see `docs/overlay.md`); zero: never polls.
    pub uring_poll: std::time::Duration,
    /// Flush a copied-up file's data to disk before it takes the file's name,
    /// as kernel overlayfs does, so a crash (power loss) never leaves an upper
    /// file whose name is there but whose data is not. Off is kernel
    /// overlayfs's `volatile` (fuse-overlayfs's `fsync=0`).
    pub sync_copy_up: bool,
}

impl OverlayConfig {
    /// A config with lamina's defaults for the given layers.
    pub fn new(lowers: Vec<PathBuf>, upper: Option<(PathBuf, PathBuf)>) -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        OverlayConfig {
            lowers,
            upper,
            ttl: std::time::Duration::from_secs(86400),
            threads: (cpus * 2).clamp(4, 16),
            passthrough: true,
            uring: crate::Uring::default(),
            uring_poll: crate::DEFAULT_URING_POLL,
            sync_copy_up: true,
        }
    }
}

/// The overlay filesystem.
pub struct OverlayFs {
    pub(crate) layers: Vec<Arc<OwnedFd>>,
    pub(crate) has_upper: bool,
    work: Option<OwnedFd>,
    ns: RwLock<()>,
    nodes: Mutex<HashMap<u64, Arc<Node>>>,
    ids: Mutex<HashMap<(u64, u64), u64>>,
    next_ino: AtomicU64,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    tmp_seq: AtomicU64,
    /// This process's id, for temporary names (`getpid` is a syscall).
    pid: u32,
    /// Whiteouts are hard links to one shared inode in the work dir (see
    /// [`OverlayFs::new_whiteout`]); turned off when the fs refuses the link.
    shared_whiteouts: AtomicBool,
    /// Whether this process made the shared whiteout inode yet.
    shared_whiteout_made: Mutex<bool>,
    /// Deletes removed directories from the work dir in the background.
    reaper: Option<Reaper>,
    fd_queue: Mutex<std::collections::VecDeque<u64>>,
    fd_budget: usize,
    euid: u32,
    egid: u32,
    pub(crate) passthrough: AtomicBool,
    pub(crate) config: OverlayConfig,
}

/// A known node resolved again by `name` in `parent`: one more kernel
/// reference if `count`, and for a non-directory (which may have several
/// names) that name is the one it is reopened by from now on.
fn found_again(n: &Node, s: &mut NodeState, parent: u64, name: &OsStr, count: bool) {
    if count {
        n.lookups.fetch_add(1, Ordering::Relaxed);
    }
    if n.kind != FileType::Directory {
        // Found by this name just now: it leads to the file again.
        s.parent = parent;
        s.name = name.to_owned();
        s.pinned = false;
    }
}

/// Chunk of a flushed copy-up after which its writeback starts (see `copy_data`).
const COPY_UP_FLUSH_STEP: u64 = 32 << 20;

/// The work dir's shared whiteout inode, which whiteouts are hard links to.
const SHARED_WHITEOUT: &str = "#lamina-whiteout";

fn open_dir_path(path: &std::path::Path) -> OpResult<OwnedFd> {
    rfs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// How many node fds to keep open: most of the soft RLIMIT_NOFILE, the rest
/// is left for open files and temporary fds.
/// `LAMINA_FUSE_FD_BUDGET` overrides it (tests use a small one to exercise
/// reopening).
fn fd_budget() -> usize {
    if let Some(n) = std::env::var("LAMINA_FUSE_FD_BUDGET")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return std::cmp::max(n, 16);
    }
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    ((lim as usize) * 3 / 4).saturating_sub(512).max(256)
}

/// Opens `rel` under a layer root without following any symlink (the last
/// component itself may be one: an O_PATH fd to it is returned).
fn open_beneath(root: &OwnedFd, rel: &std::path::Path, extra: OFlags) -> OpResult<OwnedFd> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC | extra;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let mut tries = 0;
    loop {
        match rfs::openat2(root, rel, flags, Mode::empty(), resolve) {
            Err(Errno::AGAIN) if tries < 8 => tries += 1,
            r => return r,
        }
    }
}

fn proc_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

impl OverlayFs {
    /// Opens the layer dirs. Errors name the dir that failed.
    pub fn new(config: OverlayConfig) -> crate::Result<OverlayFs> {
        let mut layers = Vec::new();
        let mut work = None;
        let open = |p: &PathBuf| {
            open_dir_path(p)
                .map(Arc::new)
                .map_err(|e| crate::Error::Io {
                    path: p.clone(),
                    source: e.into(),
                })
        };
        if let Some((upper, workdir)) = &config.upper {
            layers.push(open(upper)?);
            work = Some(
                Arc::try_unwrap(open(workdir)?)
                    .map_err(|_| crate::Error::Config("work dir".into()))?,
            );
        }
        for l in &config.lowers {
            layers.push(open(l)?);
        }
        if layers.is_empty() {
            return Err(crate::Error::Config(
                "no lower dir given (lowerdir=...)".into(),
            ));
        }
        let has_upper = config.upper.is_some();
        let reaper = work.as_ref().and_then(|w| match Reaper::start(w) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(
                    "no background deletes in the work dir ({e}): removals wait for them"
                );
                None
            }
        });
        let root_fd = layers[0].clone();
        let st = rfs::fstat(&*root_fd).map_err(|e| crate::Error::Io {
            path: config.lowers.first().cloned().unwrap_or_default(),
            source: e.into(),
        })?;
        let fs = OverlayFs {
            layers,
            has_upper,
            work,
            ns: RwLock::new(()),
            nodes: Mutex::new(HashMap::new()),
            ids: Mutex::new(HashMap::new()),
            next_ino: AtomicU64::new(ROOT_INO + 1),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            tmp_seq: AtomicU64::new(0),
            pid: std::process::id(),
            shared_whiteouts: AtomicBool::new(true),
            shared_whiteout_made: Mutex::new(false),
            reaper,
            fd_queue: Mutex::new(Default::default()),
            fd_budget: fd_budget(),
            euid: rustix::process::geteuid().as_raw(),
            egid: rustix::process::getegid().as_raw(),
            passthrough: AtomicBool::new(config.passthrough),
            config,
        };
        let chain: Vec<usize> = (0..fs.layers.len()).collect();
        let root = Arc::new(Node {
            ino: ROOT_INO,
            kind: FileType::Directory,
            lookups: AtomicU64::new(1),
            st: Mutex::new(NodeState {
                fd: Some(root_fd),
                layer: 0,
                parent: ROOT_INO,
                name: OsString::new(),
                chain,
                index: None,
                layer_dirs: Vec::new(),
                pinned: false,
            }),
            backing: Mutex::new(Weak::new()),
            xattr_changes: AtomicU64::new(0),
            no_caps: AtomicU64::new(0),
        });
        fs.ids
            .lock()
            .unwrap()
            .insert((st.st_dev, st.st_ino), ROOT_INO);
        fs.nodes.lock().unwrap().insert(ROOT_INO, root);
        Ok(fs)
    }

    fn upper_layer(&self) -> OpResult<()> {
        if self.has_upper {
            Ok(())
        } else {
            Err(Errno::ROFS)
        }
    }

    /// The node with this number.
    pub fn node(&self, ino: u64) -> OpResult<Arc<Node>> {
        self.nodes
            .lock()
            .unwrap()
            .get(&ino)
            .cloned()
            .ok_or(Errno::STALE)
    }

    /// The O_PATH fd of a node's real file (reopened by path if it was
    /// closed under fd pressure) and the layer it is in.
    fn node_fd(&self, node: &Node) -> OpResult<(Arc<OwnedFd>, usize)> {
        let layer = {
            let st = node.st.lock().unwrap();
            if let Some(fd) = &st.fd {
                return Ok((fd.clone(), st.layer));
            }
            st.layer
        };
        let rel = self.rel_path(node)?;
        let fd = Arc::new(open_beneath(&self.layers[layer], &rel, OFlags::empty())?);
        let mut st = node.st.lock().unwrap();
        if st.layer != layer {
            // Copied up meanwhile: that fd is the right one.
            if let Some(fd) = &st.fd {
                return Ok((fd.clone(), st.layer));
            }
        }
        st.fd = Some(fd.clone());
        drop(st);
        self.fd_opened(node.ino);
        Ok((fd, layer))
    }

    /// Accounts for one more node fd; closes the oldest ones beyond the budget.
    fn fd_opened(&self, ino: u64) {
        let mut q = self.fd_queue.lock().unwrap();
        q.push_back(ino);
        if q.len() <= self.fd_budget {
            return;
        }
        let nodes = self.nodes.lock().unwrap();
        let mut budget = q.len();
        while q.len() > self.fd_budget * 9 / 10 && budget > 0 {
            budget -= 1;
            let Some(old) = q.pop_front() else { break };
            if let Some(n) = nodes.get(&old) {
                let mut st = n.st.lock().unwrap();
                if st.pinned {
                    drop(st);
                    q.push_back(old);
                } else {
                    st.fd = None;
                    st.layer_dirs.clear();
                }
            }
        }
    }

    /// A directory node's dir in one of its layers.
    fn dir_in_layer(&self, dir: &Node, layer: usize) -> OpResult<Arc<OwnedFd>> {
        let (fd, top) = self.node_fd(dir)?;
        if top == layer {
            return Ok(fd);
        }
        // Sorted by layer: a lookup costs the same at any depth.
        let cached = |st: &NodeState| {
            st.layer_dirs
                .binary_search_by_key(&layer, |(l, _)| *l)
                .map(|i| st.layer_dirs[i].1.clone())
        };
        if let Ok(fd) = cached(&dir.st.lock().unwrap()) {
            return Ok(fd);
        }
        let rel = self.rel_path(dir)?;
        let fd = Arc::new(open_beneath(&self.layers[layer], &rel, OFlags::DIRECTORY)?);
        let mut st = dir.st.lock().unwrap();
        let at = match cached(&st) {
            Ok(other) => return Ok(other),
            Err(at) => at,
        };
        if st.fd.is_none() {
            // Evicted meanwhile: keep nothing the budget does not count.
            return Ok(fd);
        }
        st.layer_dirs.insert(at, (layer, fd.clone()));
        drop(st);
        self.fd_opened(dir.ino);
        Ok(fd)
    }

    fn in_upper(&self, node: &Node) -> bool {
        self.has_upper && node.st.lock().unwrap().layer == 0
    }

    /// Path of a node relative to the layer roots (for opening a directory
    /// in a lower layer with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`).
    fn rel_path(&self, node: &Node) -> OpResult<PathBuf> {
        let mut parts = Vec::new();
        let (mut parent, mut name) = {
            let st = node.st.lock().unwrap();
            (st.parent, st.name.clone())
        };
        let mut ino = node.ino;
        while ino != ROOT_INO {
            parts.push(name);
            let p = self.node(parent)?;
            ino = p.ino;
            let st = p.st.lock().unwrap();
            parent = st.parent;
            name = st.name.clone();
        }
        let mut path = PathBuf::from(".");
        for p in parts.iter().rev() {
            path.push(p);
        }
        Ok(path)
    }

    /// The merged index of a directory node, built on first use.
    pub(crate) fn index(&self, node: &Node) -> OpResult<Arc<DirIndex>> {
        let chain = {
            let st = node.st.lock().unwrap();
            if let Some(ix) = &st.index {
                return Ok(ix.clone());
            }
            st.chain.clone()
        };
        if node.kind != FileType::Directory {
            return Err(Errno::NOTDIR);
        }
        let mut layers = Vec::new();
        let mut listings = Vec::new();
        for &l in &chain {
            let fd = match self.dir_in_layer(node, l) {
                Ok(fd) => fd,
                // The chain said it is a dir there; a concurrent change of
                // a lower layer is not supported, so stop merging.
                Err(_) if !layers.is_empty() => break,
                Err(e) => return Err(e),
            };
            let (list, opaque) = layer::read_layer_dir(&fd)?;
            layers.push(l);
            listings.push((l, list, opaque));
            if opaque {
                break;
            }
        }
        let (entries, _) = layer::merge(listings);
        let ix = Arc::new(DirIndex::new(layers, entries));
        node.st.lock().unwrap().index = Some(ix.clone());
        Ok(ix)
    }

    fn update_index(&self, dir: &Node, f: impl FnOnce(&mut DirIndex)) -> OpResult<()> {
        self.index(dir)?;
        let mut st = dir.st.lock().unwrap();
        let ix = Arc::make_mut(st.index.as_mut().ok_or(Errno::IO)?);
        f(ix);
        ix.changed();
        Ok(())
    }

    fn node_for(
        &self,
        st: &Stat,
        kind: FileType,
        fd: OwnedFd,
        layer: usize,
        parent: u64,
        name: &OsStr,
        chain: Vec<usize>,
        count: bool,
    ) -> Arc<Node> {
        let mut ino = *self
            .ids
            .lock()
            .unwrap()
            .entry((st.st_dev, st.st_ino))
            .or_insert_with(|| self.next_ino.fetch_add(1, Ordering::Relaxed));
        let mut nodes = self.nodes.lock().unwrap();
        if let Some(n) = nodes.get(&ino) {
            if n.kind == kind {
                let mut s = n.st.lock().unwrap();
                found_again(n, &mut s, parent, name, count);
                let reopened = s.fd.is_none() && s.layer == layer;
                if reopened {
                    s.fd = Some(Arc::new(fd));
                }
                drop(s);
                let n = n.clone();
                drop(nodes);
                if reopened {
                    self.fd_opened(ino);
                }
                return n;
            }
            // Same backing inode number, other type: a reused inode; never
            // hand the kernel one node id for two different files.
            ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
            self.ids.lock().unwrap().insert((st.st_dev, st.st_ino), ino);
        }
        let n = Arc::new(Node {
            ino,
            kind,
            lookups: AtomicU64::new(u64::from(count)),
            st: Mutex::new(NodeState {
                fd: Some(Arc::new(fd)),
                layer,
                parent,
                name: name.to_owned(),
                chain,
                index: None,
                layer_dirs: Vec::new(),
                pinned: false,
            }),
            backing: Mutex::new(Weak::new()),
            xattr_changes: AtomicU64::new(0),
            no_caps: AtomicU64::new(0),
        });
        nodes.insert(ino, n.clone());
        drop(nodes);
        self.fd_opened(ino);
        n
    }

    /// The node the mount already has for the file `st` describes, found by
    /// `name` in `parent` at `layer`, if it still holds an fd of it there
    /// (else the caller opens the file and goes through [`Self::node_for`],
    /// which this does the same as for a known node).
    fn known_node(
        &self,
        st: &Stat,
        kind: FileType,
        layer: usize,
        parent: u64,
        name: &OsStr,
        count: bool,
    ) -> Option<Arc<Node>> {
        let ino = *self.ids.lock().unwrap().get(&(st.st_dev, st.st_ino))?;
        let n = self.nodes.lock().unwrap().get(&ino).cloned()?;
        let mut s = n.st.lock().unwrap();
        if n.kind != kind || s.layer != layer || s.fd.is_none() {
            return None;
        }
        found_again(&n, &mut s, parent, name, count);
        drop(s);
        Some(n)
    }

    /// Resolves a name in a directory; `count` adds a kernel lookup reference.
    pub(crate) fn child(
        &self,
        parent: &Node,
        name: &OsStr,
        count: bool,
    ) -> OpResult<Option<(Arc<Node>, Stat)>> {
        let ix = self.index(parent)?;
        let Some(e) = ix.entries.get(name) else {
            return Ok(None);
        };
        let State::Present { layer, kind } = e.state else {
            return Ok(None);
        };
        let dirfd = self.dir_in_layer(parent, layer)?;
        // A stat of the name, then an open only for a file the mount has no
        // node (or no fd) for: a name is resolved again and again (readdir
        // after readdir, the unlink after the lookup). Callers hold the
        // namespace lock, so nothing renames the name between the two
        // (lower layers never change, the upper one only through the mount).
        let st = rfs::statat(&*dirfd, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if let Some(node) = self.known_node(&st, kind, layer, parent.ino, name, count) {
            return Ok(Some((node, st)));
        }
        let fd = rfs::openat(
            &*dirfd,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let node = self.node_for(
            &st,
            kind,
            fd,
            layer,
            parent.ino,
            name,
            e.dir_chain.clone(),
            count,
        );
        let st = if node.st.lock().unwrap().layer != layer {
            rfs::fstat(&*self.node_fd(&node)?.0)?
        } else {
            st
        };
        Ok(Some((node, st)))
    }

    /// Stat of a node's real file.
    pub fn stat(&self, node: &Node) -> OpResult<Stat> {
        rfs::fstat(&*self.node_fd(node)?.0)
    }

    /// Whether a directory is merged from more than one layer (its nlink is
    /// then reported as 1, as overlayfs does, since the count is unknown).
    pub fn is_merged_dir(&self, node: &Node) -> bool {
        node.kind == FileType::Directory && node.st.lock().unwrap().chain.len() > 1
    }

    // ---- lookup, forget, attributes ----------------------------------------------------

    /// `lookup`: `None` means "no such name" (cacheable).
    pub fn op_lookup(&self, parent: u64, name: &OsStr) -> OpResult<Option<(Arc<Node>, Stat)>> {
        if name.len() > 255 {
            return Err(Errno::NAMETOOLONG);
        }
        let _g = self.ns.read().unwrap();
        let p = self.node(parent)?;
        self.child(&p, name, true)
    }

    /// `forget`: drops `n` kernel references.
    pub fn op_forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut nodes = self.nodes.lock().unwrap();
        if let Some(node) = nodes.get(&ino) {
            let prev = node.lookups.fetch_sub(
                n.min(node.lookups.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            if prev <= n {
                nodes.remove(&ino);
            }
        }
    }

    /// Undo one lookup reference taken by [`Self::child`] (readdirplus overflow).
    pub(crate) fn unref(&self, node: &Node) {
        node.lookups.fetch_sub(1, Ordering::Relaxed);
    }

    /// `getattr`.
    pub fn op_getattr(&self, ino: u64, fh: Option<u64>) -> OpResult<(Arc<Node>, Stat)> {
        if let Some(fh) = fh
            && let Some(h) = self.handles.lock().unwrap().get(&fh).cloned()
            && let Handle { file, node, .. } = &*h
        {
            return Ok((node.clone(), rfs::fstat(file)?));
        }
        let node = self.node(ino)?;
        let st = self.stat(&node)?;
        Ok((node, st))
    }

    /// `readlink`.
    pub fn op_readlink(&self, ino: u64) -> OpResult<Vec<u8>> {
        let node = self.node(ino)?;
        let (fd, _) = self.node_fd(&node)?;
        Ok(rfs::readlinkat(&*fd, "", Vec::new())?.into_bytes())
    }

    /// `setattr`: copies up first, then chown, chmod, truncate, times.
    #[allow(clippy::too_many_arguments)]
    pub fn op_setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<Timespec>,
        mtime: Option<Timespec>,
        fh: Option<u64>,
    ) -> OpResult<(Arc<Node>, Stat)> {
        self.upper_layer()?;
        let node = self.node(ino)?;
        {
            let _g = self.ns.write().unwrap();
            if !self.in_upper(&node) {
                self.copy_up(&node, size == Some(0))?;
            }
        }
        let (fd, _) = self.node_fd(&node)?;
        if uid.is_some() || gid.is_some() {
            let u = uid.map(rfs::Uid::from_raw);
            let g = gid.map(rfs::Gid::from_raw);
            rfs::chownat(
                &*fd,
                "",
                u,
                g,
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        if let Some(mode) = mode
            && node.kind != FileType::Symlink
        {
            rfs::chmodat(
                rfs::CWD,
                proc_path(&*fd),
                Mode::from_raw_mode(mode & 0o7777),
                AtFlags::empty(),
            )?;
        }
        if let Some(size) = size {
            let handle = fh.and_then(|fh| self.handles.lock().unwrap().get(&fh).cloned());
            match handle.as_deref() {
                Some(Handle { file, .. }) if file_writable(file) => rfs::ftruncate(file, size)?,
                _ => {
                    let f = rfs::open(
                        proc_path(&*fd),
                        OFlags::WRONLY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    rfs::ftruncate(&f, size)?;
                }
            }
        }
        if atime.is_some() || mtime.is_some() {
            let omit = Timespec {
                tv_sec: 0,
                tv_nsec: rfs::UTIME_OMIT,
            };
            let ts = Timestamps {
                last_access: atime.unwrap_or(omit),
                last_modification: mtime.unwrap_or(omit),
            };
            if node.kind == FileType::Symlink {
                let (pfd, name) = self.parent_upper_fd(&node)?;
                rfs::utimensat(&*pfd, &name, &ts, AtFlags::SYMLINK_NOFOLLOW)?;
            } else {
                rfs::utimensat(rfs::CWD, proc_path(&*fd), &ts, AtFlags::empty())?;
            }
        }
        let st = rfs::fstat(&*fd)?;
        Ok((node, st))
    }

    fn parent_upper_fd(&self, node: &Node) -> OpResult<(Arc<OwnedFd>, OsString)> {
        let (parent, name) = {
            let st = node.st.lock().unwrap();
            (st.parent, st.name.clone())
        };
        let p = self.node(parent)?;
        if !self.in_upper(&p) {
            return Err(Errno::IO);
        }
        Ok((self.node_fd(&p)?.0, name))
    }

    // ---- copy-up -----------------------------------------------------------------------

    fn tmp_name(&self) -> String {
        format!(
            "{TMP_PREFIX}{}-{}",
            self.pid,
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Copies a node (and its parents) into the upper layer. Needs the
    /// namespace write lock. `skip_data`: the file is about to be truncated.
    pub(crate) fn copy_up(&self, node: &Arc<Node>, skip_data: bool) -> OpResult<()> {
        self.upper_layer()?;
        if self.in_upper(node) {
            return Ok(());
        }
        let (parent_ino, name) = {
            let st = node.st.lock().unwrap();
            if st.pinned && node.ino != ROOT_INO {
                // Its name is gone: copying it up would bring the name back.
                return Err(Errno::STALE);
            }
            (st.parent, st.name.clone())
        };
        let src_fd = self.node_fd(node)?.0;
        let parent = self.node(parent_ino)?;
        self.copy_up(&parent, false)?;
        let upper_parent = self.node_fd(&parent)?.0;
        let work = self.work.as_ref().ok_or(Errno::ROFS)?;
        let st = rfs::fstat(&*src_fd)?;
        let tmp = self.tmp_name();
        let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
        let result = (|| -> OpResult<()> {
            match node.kind {
                FileType::Directory => {
                    rfs::mkdirat(work, &tmp, Mode::from_raw_mode(0o700))?;
                }
                FileType::RegularFile => {
                    let dst = rfs::openat(
                        work,
                        &tmp,
                        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )?;
                    if !skip_data && st.st_size > 0 {
                        let src = rfs::open(
                            proc_path(&*src_fd),
                            OFlags::RDONLY | OFlags::CLOEXEC,
                            Mode::empty(),
                        )?;
                        let sync = self.config.sync_copy_up;
                        copy_data(&src, &dst, st.st_size as u64, sync)?;
                        if sync {
                            rfs::fsync(&dst)?;
                        }
                    }
                }
                FileType::Symlink => {
                    let target = rfs::readlinkat(&*src_fd, "", Vec::new())?;
                    rfs::symlinkat(target.as_c_str(), work, &tmp)?;
                }
                kind => {
                    rfs::mknodat(work, &tmp, kind, mode, st.st_rdev)?;
                }
            }
            copy_xattrs(&proc_path(&*src_fd), work, &tmp)?;
            rfs::chownat(
                work,
                &tmp,
                Some(rfs::Uid::from_raw(st.st_uid)),
                Some(rfs::Gid::from_raw(st.st_gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
            if node.kind != FileType::Symlink {
                rfs::chmodat(work, &tmp, mode, AtFlags::empty())?;
            }
            let ts = Timestamps {
                last_access: Timespec {
                    tv_sec: st.st_atime,
                    tv_nsec: st.st_atime_nsec as _,
                },
                last_modification: Timespec {
                    tv_sec: st.st_mtime,
                    tv_nsec: st.st_mtime_nsec as _,
                },
            };
            rfs::utimensat(work, &tmp, &ts, AtFlags::SYMLINK_NOFOLLOW)?;
            rfs::renameat_with(work, &tmp, &*upper_parent, &name, RenameFlags::NOREPLACE)?;
            Ok(())
        })();
        if let Err(e) = result {
            let flags = if node.kind == FileType::Directory {
                AtFlags::REMOVEDIR
            } else {
                AtFlags::empty()
            };
            let _ = rfs::unlinkat(work, &tmp, flags);
            return Err(e);
        }
        let fd = Arc::new(rfs::openat(
            &*upper_parent,
            &name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
        let ust = rfs::fstat(&*fd)?;
        {
            let mut ids = self.ids.lock().unwrap();
            ids.insert((ust.st_dev, ust.st_ino), node.ino);
            if node.kind != FileType::Directory && st.st_nlink > 1 {
                // Copy-up breaks a lower hardlink, as in overlayfs: the other
                // names stay on the lower file and get their own inode on
                // their next lookup (their entries are not cached, see fuse.rs).
                ids.remove(&(st.st_dev, st.st_ino));
            }
        }
        {
            let mut s = node.st.lock().unwrap();
            s.fd = Some(fd.clone());
            s.layer = 0;
            if node.kind == FileType::Directory {
                s.chain.insert(0, 0);
                if let Some(ix) = s.index.as_mut() {
                    Arc::make_mut(ix).layers.insert(0, 0);
                }
            }
        }
        self.fd_opened(node.ino);
        self.update_index(&parent, |ix| {
            if let Some(e) = ix.entries.get_mut(&name)
                && let State::Present { kind, .. } = e.state
            {
                e.state = State::Present { layer: 0, kind };
                if kind == FileType::Directory {
                    e.dir_chain.insert(0, 0);
                }
            }
        })
    }

    /// Copies a directory and everything under it into the upper layer, after
    /// which it no longer depends on lower layers (so it can move anywhere).
    fn copy_up_tree(&self, dir: &Arc<Node>) -> OpResult<()> {
        self.copy_up(dir, false)?;
        let ix = self.index(dir)?;
        let names: Vec<(OsString, FileType, usize)> = ix
            .entries
            .iter()
            .filter_map(|(n, e)| match e.state {
                State::Present { layer, kind } => Some((n.clone(), kind, layer)),
                State::Whiteout => None,
            })
            .collect();
        // Holding the index would make every update below clone it.
        drop(ix);
        for (name, kind, layer) in names {
            if layer == 0 && kind != FileType::Directory {
                continue;
            }
            if let Some((child, _)) = self.child(dir, &name, false)? {
                if kind == FileType::Directory {
                    self.copy_up_tree(&child)?;
                } else {
                    self.copy_up(&child, false)?;
                }
            }
        }
        let mut s = dir.st.lock().unwrap();
        s.chain = vec![0];
        s.index = None;
        s.layer_dirs.clear();
        Ok(())
    }

    // ---- creating names ----------------------------------------------------------------

    /// Makes `name` in `parent` ready to be created in the upper layer:
    /// returns the upper dir fd and the old entry.
    fn prepare_new(
        &self,
        parent: &Arc<Node>,
        name: &OsStr,
    ) -> OpResult<(Arc<OwnedFd>, Option<Entry>)> {
        self.upper_layer()?;
        if name.len() > 255 {
            return Err(Errno::NAMETOOLONG);
        }
        let old = self.index(parent)?.entries.get(name).cloned();
        if old.as_ref().is_some_and(|e| e.is_present()) {
            return Err(Errno::EXIST);
        }
        self.copy_up(parent, false)?;
        let dirfd = self.node_fd(parent)?.0;
        if old.as_ref().is_some_and(|e| e.upper_whiteout) {
            rfs::unlinkat(&*dirfd, name, AtFlags::empty())?;
            self.update_index(parent, |ix| {
                if let Some(e) = ix.entries.get_mut(name) {
                    e.upper_whiteout = false;
                }
            })?;
        }
        Ok((dirfd, old))
    }

    /// Owner of a new file: the caller, with the group inherited from a
    /// set-group-ID parent.
    fn owner(&self, parent: &Node, caller: Caller) -> OpResult<(u32, u32, bool)> {
        let pst = self.stat(parent)?;
        let setgid = pst.st_mode & 0o2000 != 0;
        let gid = if setgid { pst.st_gid } else { caller.gid };
        // What the backing fs gave the new file, created by this process.
        let own_gid = if setgid { pst.st_gid } else { self.egid };
        let needs_chown = caller.uid != self.euid || gid != own_gid;
        Ok((caller.uid, gid, needs_chown))
    }

    /// Finishes a creation: owner, index entry, node.
    fn finish_new(
        &self,
        parent: &Arc<Node>,
        dirfd: &OwnedFd,
        name: &OsStr,
        kind: FileType,
        old: Option<Entry>,
        caller: Caller,
        mode: Option<u32>,
    ) -> OpResult<(Arc<Node>, Stat)> {
        let (uid, gid, needs_chown) = self.owner(parent, caller)?;
        let fd = rfs::openat(
            dirfd,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        if needs_chown {
            rfs::chownat(
                &fd,
                "",
                Some(rfs::Uid::from_raw(uid)),
                Some(rfs::Gid::from_raw(gid)),
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        if let (Some(mode), true) = (mode, needs_chown)
            && mode & 0o6000 != 0
            && kind != FileType::Symlink
        {
            rfs::chmodat(
                rfs::CWD,
                proc_path(&fd),
                Mode::from_raw_mode(mode & 0o7777),
                AtFlags::empty(),
            )?;
        }
        let lower_positive = old.as_ref().is_some_and(|e| e.lower_positive);
        if kind == FileType::Directory && lower_positive {
            rfs::setxattr(
                proc_path(&fd),
                layer::OPAQUE_XATTR,
                b"y",
                rfs::XattrFlags::empty(),
            )?;
        }
        let st = rfs::fstat(&fd)?;
        let node = self.node_for(&st, kind, fd, 0, parent.ino, name, vec![0], true);
        // A file made just now has no capabilities (only a setxattr gives it
        // some): the write that follows need not look.
        node.no_caps_since(node.xattr_epoch());
        if kind == FileType::Directory {
            node.st.lock().unwrap().index =
                Some(Arc::new(DirIndex::new(vec![0], Default::default())));
        }
        self.update_index(parent, |ix| {
            ix.entries
                .insert(name.to_owned(), Entry::upper(kind, lower_positive));
        })?;
        Ok((node, st))
    }

    /// `mknod` (regular files, devices, fifos, sockets).
    pub fn op_mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        caller: Caller,
    ) -> OpResult<(Arc<Node>, Stat)> {
        let _g = self.ns.write().unwrap();
        let p = self.node(parent)?;
        let (dirfd, old) = self.prepare_new(&p, name)?;
        let kind = FileType::from_raw_mode(mode);
        let perm = Mode::from_raw_mode(mode & 0o7777);
        if kind == FileType::RegularFile {
            rfs::openat(
                &*dirfd,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                perm,
            )?;
        } else {
            rfs::mknodat(&*dirfd, name, kind, perm, rdev)?;
        }
        self.finish_new(&p, &dirfd, name, kind, old, caller, Some(mode))
    }

    /// `mkdir`.
    pub fn op_mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: Caller,
    ) -> OpResult<(Arc<Node>, Stat)> {
        let _g = self.ns.write().unwrap();
        let p = self.node(parent)?;
        let (dirfd, old) = self.prepare_new(&p, name)?;
        rfs::mkdirat(&*dirfd, name, Mode::from_raw_mode(mode & 0o7777))?;
        self.finish_new(
            &p,
            &dirfd,
            name,
            FileType::Directory,
            old,
            caller,
            Some(mode),
        )
    }

    /// `symlink`.
    pub fn op_symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
        caller: Caller,
    ) -> OpResult<(Arc<Node>, Stat)> {
        let _g = self.ns.write().unwrap();
        let p = self.node(parent)?;
        let (dirfd, old) = self.prepare_new(&p, name)?;
        rfs::symlinkat(target, &*dirfd, name)?;
        self.finish_new(&p, &dirfd, name, FileType::Symlink, old, caller, None)
    }

    /// `create`: creates and opens a regular file.
    pub(crate) fn op_create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> OpResult<(Arc<Node>, Stat, Opened)> {
        let _g = self.ns.write().unwrap();
        let p = self.node(parent)?;
        let (dirfd, old) = self.prepare_new(&p, name)?;
        let perm = Mode::from_raw_mode(mode & 0o7777);
        let file = rfs::openat(
            &*dirfd,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
            perm,
        )?;
        let (node, st) = self.finish_new(
            &p,
            &dirfd,
            name,
            FileType::RegularFile,
            old,
            caller,
            Some(mode),
        )?;
        let file = if flags & libc::O_ACCMODE == libc::O_RDONLY || flags & libc::O_APPEND != 0 {
            // Reopen with the caller's access mode/append (the create fd is O_RDWR).
            drop(file);
            self.reopen(&node, flags)?
        } else {
            File::from(file)
        };
        Ok((
            node.clone(),
            st,
            Opened {
                file,
                node,
                layer: 0,
            },
        ))
    }

    /// `link`: a new name for an existing file (copied up first).
    pub fn op_link(
        &self,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
    ) -> OpResult<(Arc<Node>, Stat)> {
        let _g = self.ns.write().unwrap();
        let node = self.node(ino)?;
        if node.kind == FileType::Directory {
            return Err(Errno::PERM);
        }
        let p = self.node(newparent)?;
        let (dirfd, old) = self.prepare_new(&p, newname)?;
        self.copy_up(&node, false)?;
        let (fd, _) = self.node_fd(&node)?;
        rfs::linkat(&*fd, "", &*dirfd, newname, AtFlags::EMPTY_PATH)?;
        let lower_positive = old.as_ref().is_some_and(|e| e.lower_positive);
        self.update_index(&p, |ix| {
            ix.entries
                .insert(newname.to_owned(), Entry::upper(node.kind, lower_positive));
        })?;
        node.lookups.fetch_add(1, Ordering::Relaxed);
        let st = rfs::fstat(&*fd)?;
        Ok((node, st))
    }

    // ---- removing names ----------------------------------------------------------------

    /// Writes a whiteout at `name` in upper dir `dirfd`: a new name (`None`:
    /// `EEXIST` if the upper layer has it), or atomically replacing what the
    /// upper layer has there (`Some(is_dir)`).
    fn whiteout(&self, dirfd: &OwnedFd, name: &OsStr, replace: Option<bool>) -> OpResult<()> {
        let Some(is_dir) = replace else {
            return self.new_whiteout(dirfd, name);
        };
        let work = self.work.as_ref().ok_or(Errno::ROFS)?;
        let tmp = self.tmp_name();
        self.new_whiteout(work, OsStr::new(&tmp))?;
        let r = if is_dir {
            rfs::renameat_with(work, &tmp, dirfd, name, RenameFlags::EXCHANGE)
                .and_then(|()| rfs::unlinkat(work, &tmp, AtFlags::REMOVEDIR))
        } else {
            rfs::renameat(work, &tmp, dirfd, name)
        };
        if r.is_err() {
            let _ = rfs::unlinkat(work, &tmp, AtFlags::empty());
        }
        r
    }

    /// Creates a whiteout (a 0/0 char device) at the new name `name` in
    /// `dirfd`; `EEXIST` if the name exists.
    ///
    /// As kernel overlayfs does, whiteouts are hard links to one shared
    /// whiteout inode, [`SHARED_WHITEOUT`] in the work dir: a link adds a
    /// directory entry, a new inode also allocates an inode, which on ext4
    /// here costs 10-30x more (170-460 us against 15 us), and `rm -rf` of a
    /// lower tree writes one whiteout per file. Every tool that reads upper
    /// dirs (ours, containerd's, containers/storage's) checks for a whiteout
    /// before it checks for hard links, as kernel-made uppers need. The
    /// process makes a fresh shared inode on its first whiteout (replacing any
    /// left by an earlier mount, so it is always one we made), and again when
    /// the old one reaches the fs's link limit; if the fs refuses the link,
    /// every whiteout gets its own inode.
    fn new_whiteout(&self, dirfd: &OwnedFd, name: &OsStr) -> OpResult<()> {
        let work = self.work.as_ref().ok_or(Errno::ROFS)?;
        if self.shared_whiteouts.load(Ordering::Relaxed) {
            let mut made = self.shared_whiteout_made.lock().unwrap();
            for _ in 0..2 {
                if !*made {
                    let tmp = self.tmp_name();
                    let fresh =
                        rfs::mknodat(work, &tmp, FileType::CharacterDevice, Mode::empty(), 0)
                            .and_then(|()| rfs::renameat(work, &tmp, work, SHARED_WHITEOUT));
                    if fresh.is_err() {
                        let _ = rfs::unlinkat(work, &tmp, AtFlags::empty());
                        self.shared_whiteouts.store(false, Ordering::Relaxed);
                        break;
                    }
                    *made = true;
                }
                match rfs::linkat(work, SHARED_WHITEOUT, dirfd, name, AtFlags::empty()) {
                    Ok(()) => return Ok(()),
                    // At the link limit, or removed from under us: a fresh one.
                    Err(Errno::MLINK | Errno::NOENT) => *made = false,
                    Err(Errno::PERM | Errno::OPNOTSUPP | Errno::XDEV) => {
                        self.shared_whiteouts.store(false, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        rfs::mknodat(dirfd, name, FileType::CharacterDevice, Mode::empty(), 0)
    }

    /// The whiteouts an upper dir holds; `NOTEMPTY` if it holds anything else.
    fn only_whiteouts(dir: &OwnedFd) -> OpResult<Vec<OsString>> {
        let (list, _) = layer::read_layer_dir(dir)?;
        list.into_iter()
            .map(|(name, raw)| match raw {
                layer::Raw::Whiteout => Ok(name),
                _ => Err(Errno::NOTEMPTY),
            })
            .collect()
    }

    /// Removes the whiteouts an upper dir holds so that it can be removed
    /// (nothing if it holds anything else: `NOTEMPTY`).
    fn clear_whiteouts(dir: &OwnedFd) -> OpResult<()> {
        // `*at` calls take the O_PATH fd as it is.
        for name in Self::only_whiteouts(dir)? {
            let _ = rfs::unlinkat(dir, &name, AtFlags::empty());
            let mut marker = OsString::from(layer::WHITEOUT_PREFIX);
            marker.push(&name);
            let _ = rfs::unlinkat(dir, &marker, AtFlags::empty());
        }
        let _ = rfs::unlinkat(dir, layer::OPAQUE_MARKER, AtFlags::empty());
        Ok(())
    }

    /// Removes the upper dir `name` in `dirfd`, empty in the merged view (it
    /// holds whiteouts at most), leaving a whiteout in its place if it
    /// `hides_lower`. The dir is renamed into the work dir and deleted there
    /// in the background (see [`crate::reaper`]); without a reaper its
    /// whiteouts and then it are deleted now.
    fn remove_upper_dir(
        &self,
        dirfd: &OwnedFd,
        name: &OsStr,
        child: &Node,
        hides_lower: bool,
    ) -> OpResult<()> {
        let child_fd = self.node_fd(child)?.0;
        let Some(reaper) = &self.reaper else {
            Self::clear_whiteouts(&child_fd)?;
            return if hides_lower {
                self.whiteout(dirfd, name, Some(true))
            } else {
                rfs::unlinkat(dirfd, name, AtFlags::REMOVEDIR)
            };
        };
        Self::only_whiteouts(&child_fd)?;
        let work = self.work.as_ref().ok_or(Errno::ROFS)?;
        let tmp = self.tmp_name();
        if hides_lower {
            // The whiteout and the dir swap places: the name never goes missing.
            self.new_whiteout(work, OsStr::new(&tmp))?;
            if let Err(e) = rfs::renameat_with(work, &tmp, dirfd, name, RenameFlags::EXCHANGE) {
                let _ = rfs::unlinkat(work, &tmp, AtFlags::empty());
                return Err(e);
            }
        } else {
            rfs::renameat_with(dirfd, name, work, &tmp, RenameFlags::NOREPLACE)?;
        }
        reaper.delete_later(tmp.into());
        Ok(())
    }

    /// At the end of the session: finishes the background deletes.
    pub fn finish(&self) {
        if let Some(r) = &self.reaper {
            r.finish();
        }
    }

    /// The identity of an upper file about to lose a name (taken before the
    /// removal: afterwards it may not be reachable to ask).
    /// Also pins the node's fd: the name it was known by is going away.
    fn upper_identity(&self, node: &Node) -> Option<Stat> {
        let (fd, layer) = self.node_fd(node).ok()?;
        node.st.lock().unwrap().pinned = true;
        if layer != 0 || !self.has_upper {
            return None;
        }
        rfs::fstat(&*fd).ok()
    }

    /// After a removal: when that was the file's last name, its inode number
    /// may be reused by the backing fs for a new file, which must not inherit
    /// this node.
    fn forget_identity(&self, before: Option<Stat>, kind: FileType) {
        if let Some(st) = before
            && (kind == FileType::Directory || st.st_nlink <= 1)
        {
            self.ids.lock().unwrap().remove(&(st.st_dev, st.st_ino));
        }
    }

    /// `unlink` and `rmdir`.
    pub fn op_remove(&self, parent: u64, name: &OsStr, dir: bool) -> OpResult<()> {
        self.upper_layer()?;
        let _g = self.ns.write().unwrap();
        let p = self.node(parent)?;
        let e = self
            .index(&p)?
            .entries
            .get(name)
            .cloned()
            .ok_or(Errno::NOENT)?;
        let State::Present { layer, kind } = e.state else {
            return Err(Errno::NOENT);
        };
        let is_dir = kind == FileType::Directory;
        if dir && !is_dir {
            return Err(Errno::NOTDIR);
        }
        if !dir && is_dir {
            return Err(Errno::ISDIR);
        }
        let (child, _) = self.child(&p, name, false)?.ok_or(Errno::NOENT)?;
        if is_dir && !self.index(&child)?.is_empty() {
            return Err(Errno::NOTEMPTY);
        }
        self.copy_up(&p, false)?;
        let dirfd = self.node_fd(&p)?.0;
        let before = self.upper_identity(&child);
        if layer != 0 {
            self.whiteout(&dirfd, name, None)?;
        } else if is_dir {
            self.remove_upper_dir(&dirfd, name, &child, e.lower_positive)?;
        } else if e.lower_positive {
            self.whiteout(&dirfd, name, Some(false))?;
        } else {
            rfs::unlinkat(&*dirfd, name, AtFlags::empty())?;
        }
        self.forget_identity(before, kind);
        self.update_index(&p, |ix| {
            if e.lower_positive {
                ix.entries.insert(name.to_owned(), Entry::whiteout());
            } else {
                ix.entries.remove(name);
            }
        })
    }

    /// `rename` (plain, `RENAME_NOREPLACE`, `RENAME_EXCHANGE`). Directories
    /// that come from lower layers are copied up whole first: never EXDEV.
    pub fn op_rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> OpResult<()> {
        self.upper_layer()?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        if flags & !(libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) != 0 {
            return Err(Errno::INVAL);
        }
        let _g = self.ns.write().unwrap();
        let sp = self.node(parent)?;
        let dp = self.node(newparent)?;
        let se = self
            .index(&sp)?
            .entries
            .get(name)
            .cloned()
            .filter(|e| e.is_present())
            .ok_or(Errno::NOENT)?;
        let de = self.index(&dp)?.entries.get(newname).cloned();
        let dst_present = de.as_ref().is_some_and(|e| e.is_present());
        if noreplace && dst_present {
            return Err(Errno::EXIST);
        }
        if exchange && !dst_present {
            return Err(Errno::NOENT);
        }
        let (src, _) = self.child(&sp, name, false)?.ok_or(Errno::NOENT)?;
        let dst = if dst_present {
            self.child(&dp, newname, false)?.map(|(n, _)| n)
        } else {
            None
        };
        if let Some(d) = &dst {
            if Arc::ptr_eq(d, &src) {
                return Ok(());
            }
            if !exchange {
                match (
                    src.kind == FileType::Directory,
                    d.kind == FileType::Directory,
                ) {
                    (true, false) => return Err(Errno::NOTDIR),
                    (false, true) => return Err(Errno::ISDIR),
                    (true, true) if !self.index(d)?.is_empty() => return Err(Errno::NOTEMPTY),
                    _ => {}
                }
            }
        }
        if src.kind == FileType::Directory {
            // A directory may not move into itself.
            let mut cur = dp.clone();
            loop {
                if Arc::ptr_eq(&cur, &src) {
                    return Err(Errno::INVAL);
                }
                if cur.ino == ROOT_INO {
                    break;
                }
                let parent = cur.st.lock().unwrap().parent;
                cur = self.node(parent)?;
            }
        }
        self.copy_up(&sp, false)?;
        self.copy_up(&dp, false)?;
        let full = |n: &Arc<Node>| -> OpResult<()> {
            if n.kind == FileType::Directory {
                let chain = n.st.lock().unwrap().chain.clone();
                if chain != [0] {
                    self.copy_up_tree(n)
                } else {
                    Ok(())
                }
            } else {
                self.copy_up(n, false)
            }
        };
        full(&src)?;
        if exchange {
            full(dst.as_ref().unwrap())?;
        }
        let sfd = self.node_fd(&sp)?.0;
        let dfd = self.node_fd(&dp)?.0;
        let replaced = if exchange {
            None
        } else {
            dst.as_ref().and_then(|d| self.upper_identity(d))
        };
        let dst_lower = de.as_ref().is_some_and(|e| e.lower_positive);
        if exchange {
            rfs::renameat_with(&*sfd, name, &*dfd, newname, RenameFlags::EXCHANGE)?;
        } else {
            if let Some(d) = &dst
                && d.kind == FileType::Directory
                && self.in_upper(d)
            {
                Self::clear_whiteouts(&self.node_fd(d)?.0)?;
            }
            if de.as_ref().is_some_and(|e| e.upper_whiteout) && src.kind == FileType::Directory {
                rfs::unlinkat(&*dfd, newname, AtFlags::empty())?;
            }
            if se.lower_positive {
                match rfs::renameat_with(&*sfd, name, &*dfd, newname, RenameFlags::WHITEOUT) {
                    Ok(()) => {}
                    Err(Errno::INVAL) | Err(Errno::NOTSUP) => {
                        rfs::renameat(&*sfd, name, &*dfd, newname)?;
                        self.whiteout(&sfd, name, None)?;
                    }
                    Err(e) => return Err(e),
                }
            } else {
                rfs::renameat(&*sfd, name, &*dfd, newname)?;
            }
        }
        let set_opaque = |n: &Arc<Node>| -> OpResult<()> {
            if n.kind == FileType::Directory {
                let fd = self.node_fd(n)?.0;
                rfs::setxattr(
                    proc_path(&*fd),
                    layer::OPAQUE_XATTR,
                    b"y",
                    rfs::XattrFlags::empty(),
                )?;
            }
            Ok(())
        };
        if dst_lower {
            set_opaque(&src)?;
        }
        if exchange && se.lower_positive {
            set_opaque(dst.as_ref().unwrap())?;
        }
        // Nodes and indexes.
        {
            let mut s = src.st.lock().unwrap();
            s.parent = dp.ino;
            s.name = newname.to_owned();
        }
        if exchange {
            let d = dst.as_ref().unwrap();
            let mut s = d.st.lock().unwrap();
            s.parent = sp.ino;
            s.name = name.to_owned();
        } else if let Some(d) = &dst {
            self.forget_identity(replaced, d.kind);
        }
        let skind = src.kind;
        let dkind = dst.as_ref().map(|d| d.kind);
        self.update_index(&sp, |ix| {
            if exchange {
                ix.entries.insert(
                    name.to_owned(),
                    Entry::upper(dkind.unwrap(), se.lower_positive),
                );
            } else if se.lower_positive {
                ix.entries.insert(name.to_owned(), Entry::whiteout());
            } else {
                ix.entries.remove(name);
            }
        })?;
        self.update_index(&dp, |ix| {
            ix.entries
                .insert(newname.to_owned(), Entry::upper(skind, dst_lower));
        })
    }

    // ---- open files --------------------------------------------------------------------

    fn reopen(&self, node: &Node, flags: i32) -> OpResult<File> {
        let (fd, _) = self.node_fd(node)?;
        let keep = libc::O_ACCMODE
            | libc::O_APPEND
            | libc::O_NONBLOCK
            | libc::O_DSYNC
            | libc::O_SYNC
            | libc::O_NOATIME;
        let mut of = OFlags::from_bits_retain((flags & keep) as u32) | OFlags::CLOEXEC;
        of.remove(OFlags::NOATIME);
        Ok(File::from(rfs::open(proc_path(&*fd), of, Mode::empty())?))
    }

    /// `open`: copies up when opened for writing or truncation.
    pub(crate) fn op_open(&self, ino: u64, flags: i32) -> OpResult<Opened> {
        let node = self.node(ino)?;
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let trunc = flags & libc::O_TRUNC != 0;
        if (write || trunc) && !self.in_upper(&node) {
            self.upper_layer()?;
            let _g = self.ns.write().unwrap();
            self.copy_up(&node, trunc)?;
        }
        let (_, layer) = self.node_fd(&node)?;
        let file = self.reopen(&node, flags)?;
        if trunc && node.kind == FileType::RegularFile {
            rfs::ftruncate(&file, 0)?;
        }
        Ok(Opened { file, node, layer })
    }

    /// The file to register as passthrough backing for `node`: read-write
    /// when in the upper layer, so every later open of the inode can share
    /// it. `None`: the opened file itself will do (the kernel takes its own
    /// reference when it registers it).
    pub(crate) fn backing_file(&self, node: &Node, opened: &Opened) -> OpResult<Option<File>> {
        let fl = rfs::fcntl_getfl(&opened.file)?;
        if fl.contains(OFlags::RDWR) && !fl.contains(OFlags::APPEND) {
            // Already what a shared backing needs (e.g. a new file's create fd).
            return Ok(None);
        }
        if opened.layer == 0
            && self.has_upper
            && let Ok(f) = self.reopen(node, libc::O_RDWR)
        {
            return Ok(Some(f));
        }
        Ok(None)
    }

    pub(crate) fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, Arc::new(h));
        fh
    }

    pub(crate) fn handle(&self, fh: u64) -> OpResult<Arc<Handle>> {
        self.handles
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(Errno::BADF)
    }

    pub(crate) fn release(&self, fh: u64) {
        self.handles.lock().unwrap().remove(&fh);
    }

    /// `read` (when not served by passthrough).
    pub fn op_read(&self, fh: u64, offset: u64, size: u32) -> OpResult<Vec<u8>> {
        let h = self.handle(fh)?;
        let Handle { file, .. } = &*h;
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_errno(e)),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// `write` (when not served by passthrough).
    pub fn op_write(&self, fh: u64, offset: u64, data: &[u8]) -> OpResult<u32> {
        let h = self.handle(fh)?;
        let Handle { file, .. } = &*h;
        let append = rfs::fcntl_getfl(file)
            .map(|f| f.contains(OFlags::APPEND))
            .unwrap_or(false);
        if append {
            let mut f = file;
            f.write_all(data).map_err(io_errno)?;
        } else {
            file.write_all_at(data, offset).map_err(io_errno)?;
        }
        Ok(data.len() as u32)
    }

    /// `fsync` / `fdatasync`.
    pub fn op_fsync(&self, fh: u64, datasync: bool) -> OpResult<()> {
        let h = self.handle(fh)?;
        if datasync {
            rfs::fdatasync(&h.file)
        } else {
            rfs::fsync(&h.file)
        }
    }

    /// `fallocate`.
    pub fn op_fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> OpResult<()> {
        let h = self.handle(fh)?;
        let Handle { file, .. } = &*h;
        rfs::fallocate(
            file,
            rfs::FallocateFlags::from_bits_retain(mode as u32),
            offset,
            len,
        )
    }

    /// `lseek` (SEEK_DATA/SEEK_HOLE).
    pub fn op_lseek(&self, fh: u64, offset: i64, whence: i32) -> OpResult<i64> {
        let h = self.handle(fh)?;
        let Handle { file, .. } = &*h;
        let pos = match whence {
            libc::SEEK_DATA => rfs::SeekFrom::Data(offset as u64),
            libc::SEEK_HOLE => rfs::SeekFrom::Hole(offset as u64),
            libc::SEEK_END => rfs::SeekFrom::End(offset),
            libc::SEEK_CUR => rfs::SeekFrom::Current(offset),
            _ => rfs::SeekFrom::Start(offset as u64),
        };
        Ok(rfs::seek(file, pos)? as i64)
    }

    // ---- directories -------------------------------------------------------------------

    /// A directory's merged names for readdir (see [`DirIndex::listing`]).
    pub(crate) fn op_listing(&self, ino: u64) -> OpResult<(Arc<Node>, Arc<layer::Listing>)> {
        let _g = self.ns.read().unwrap();
        let node = self.node(ino)?;
        let listing = self.index(&node)?.listing();
        Ok((node, listing))
    }

    /// `fsyncdir`: syncs the directory's real dir.
    pub fn op_fsyncdir(&self, ino: u64) -> OpResult<()> {
        let node = self.node(ino)?;
        let (fd, _) = self.node_fd(&node)?;
        rfs::fsync(layer::open_listable(&*fd)?)
    }

    /// Resolves a listed name for readdir(plus).
    pub(crate) fn dir_entry(
        &self,
        dir: &Node,
        name: &OsStr,
        count: bool,
    ) -> OpResult<Option<(Arc<Node>, Stat)>> {
        let _g = self.ns.read().unwrap();
        self.child(dir, name, count)
    }

    // ---- xattrs, statfs, access ----------------------------------------------------

    /// The /proc magic link of the node's `O_PATH` fd. Path-based xattr
    /// calls through it reach the inode itself, a symlink's too (the magic
    /// link is followed, the symlink it lands on is not), so symlinks behave
    /// as on the backing fs: `trusted.*`/`security.*` work, `user.*` is
    /// refused by the VFS as on overlayfs.
    fn xattr_path(&self, node: &Node) -> OpResult<String> {
        Ok(proc_path(&*self.node_fd(node)?.0))
    }

    /// `getxattr` (overlay-private names are hidden).
    pub fn op_getxattr(&self, ino: u64, name: &OsStr) -> OpResult<Vec<u8>> {
        if is_private_xattr(name) {
            return Err(Errno::NODATA);
        }
        let node = self.node(ino)?;
        let caps = name.as_bytes() == CAPS_XATTR;
        if caps && node.known_no_caps() {
            return Err(Errno::NODATA);
        }
        let epoch = node.xattr_epoch();
        let path = self.xattr_path(&node)?;
        let mut buf = vec![0u8; 4096];
        loop {
            match rfs::getxattr(&path, name, &mut buf[..]) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(Errno::RANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 16, 0),
                Err(Errno::NODATA) if caps => {
                    node.no_caps_since(epoch);
                    return Err(Errno::NODATA);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `listxattr` (overlay-private names are hidden).
    pub fn op_listxattr(&self, ino: u64) -> OpResult<Vec<u8>> {
        let node = self.node(ino)?;
        let path = self.xattr_path(&node)?;
        let raw = list_xattrs(&path)?;
        let mut out = Vec::new();
        for name in raw.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if !is_private_xattr(OsStr::from_bytes(name)) {
                out.extend_from_slice(name);
                out.push(0);
            }
        }
        Ok(out)
    }

    /// `setxattr` (copies up first).
    pub fn op_setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> OpResult<()> {
        self.upper_layer()?;
        if is_private_xattr(name) {
            return Err(Errno::PERM);
        }
        let node = self.node(ino)?;
        {
            let _g = self.ns.write().unwrap();
            self.copy_up(&node, false)?;
        }
        let path = self.xattr_path(&node)?;
        let res = rfs::setxattr(
            &path,
            name,
            value,
            rfs::XattrFlags::from_bits_retain(flags as u32),
        );
        node.xattr_changed();
        res
    }

    /// `removexattr` (copies up first).
    pub fn op_removexattr(&self, ino: u64, name: &OsStr) -> OpResult<()> {
        self.upper_layer()?;
        if is_private_xattr(name) {
            return Err(Errno::NODATA);
        }
        let node = self.node(ino)?;
        let path = self.xattr_path(&node)?;
        // Nothing to remove: no copy-up needed.
        rfs::getxattr(&path, name, &mut [0u8; 0][..]).map(|_| ())?;
        {
            let _g = self.ns.write().unwrap();
            self.copy_up(&node, false)?;
        }
        let path = self.xattr_path(&node)?;
        let res = rfs::removexattr(&path, name);
        node.xattr_changed();
        res
    }

    /// `statfs`: of the upper layer (or the top lower layer when read-only).
    pub fn op_statfs(&self) -> OpResult<rfs::StatFs> {
        rfs::fstatfs(&*self.layers[0])
    }

    /// `access` (the kernel checks permissions itself with `default_permissions`;
    /// this answers explicit access(2) calls the same way).
    pub fn op_access(&self, ino: u64, mask: i32, caller: Caller) -> OpResult<()> {
        let node = self.node(ino)?;
        let st = self.stat(&node)?;
        if mask & libc::W_OK != 0 && !self.has_upper {
            return Err(Errno::ROFS);
        }
        if caller.uid == 0 {
            if mask & libc::X_OK != 0 && node.kind != FileType::Directory && st.st_mode & 0o111 == 0
            {
                return Err(Errno::ACCESS);
            }
            return Ok(());
        }
        let bits = if st.st_uid == caller.uid {
            (st.st_mode >> 6) & 7
        } else if st.st_gid == caller.gid {
            (st.st_mode >> 3) & 7
        } else {
            st.st_mode & 7
        };
        if (mask as u32 & 7) & !bits != 0 {
            return Err(Errno::ACCESS);
        }
        Ok(())
    }
}

fn file_writable(f: &File) -> bool {
    rfs::fcntl_getfl(f)
        .map(|fl| fl.intersects(OFlags::WRONLY | OFlags::RDWR))
        .unwrap_or(false)
}

/// The xattr that holds a file's capabilities.
const CAPS_XATTR: &[u8] = b"security.capability";

/// Names overlayfs keeps for itself; never shown through the mount.
fn is_private_xattr(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.starts_with(b"trusted.overlay.")
        || b.starts_with(b"user.overlay.")
        || b.starts_with(b"trusted.lamina.")
}

fn list_xattrs(path: &str) -> OpResult<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    loop {
        match rfs::listxattr(path, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 16, 0),
            Err(e) => return Err(e),
        }
    }
}

/// Copies user-visible xattrs from `src` (a path; a /proc magic link of a
/// symlink reaches the symlink) to `name` in `dir` (not followed).
fn copy_xattrs(src: &str, dir: &OwnedFd, name: &str) -> OpResult<()> {
    let names = match list_xattrs(src) {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    };
    if names.is_empty() {
        return Ok(());
    }
    let dst = format!("{}/{}", proc_path(dir), name);
    for n in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let n = OsStr::from_bytes(n);
        if is_private_xattr(n) {
            continue;
        }
        let mut buf = vec![0u8; 65536];
        let len = match rfs::getxattr(src, n, &mut buf[..]) {
            Ok(l) => l,
            Err(_) => continue,
        };
        match rfs::lsetxattr(&dst, n, &buf[..len], rfs::XattrFlags::empty()) {
            Ok(()) | Err(Errno::NOTSUP) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies file data: reflink when the filesystem can, else copy_file_range,
/// else read/write. With `flush`, writeback of each chunk starts once it is
/// copied: copying and writing to disk overlap, and the caller's fsync waits
/// only for the last chunks.
fn copy_data(src: &impl AsFd, dst: &impl AsFd, len: u64, flush: bool) -> OpResult<()> {
    if rfs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let step: u64 = if flush { COPY_UP_FLUSH_STEP } else { 1 << 30 };
    let mut pos = 0u64;
    let mut fallback = false;
    while pos < len {
        let chunk = (len - pos).min(step) as usize;
        let (mut off_in, mut off_out) = (pos, pos);
        match rfs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), chunk) {
            Ok(0) => break,
            Ok(n) => {
                if flush {
                    crate::sys::start_writeback(dst.as_fd(), pos, n as u64);
                }
                pos += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                fallback = true;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    if fallback {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = rustix::io::pread(src, &mut buf[..], pos)?;
            if n == 0 {
                break;
            }
            let mut w = 0;
            while w < n {
                w += rustix::io::pwrite(dst, &buf[w..n], pos + w as u64)?;
            }
            pos += n as u64;
        }
    }
    Ok(())
}
