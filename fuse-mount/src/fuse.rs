//! FUSE callbacks: thin shims over the `op_*` functions of [`OverlayFs`].
//! Errors become errnos in exactly one place, [`errno`].

use crate::fs::{Backing, Caller, Handle, Node, Opened, OverlayFs};
use crate::layer::DOT_DOT_OFFSET;
use fuser::{
    AccessFlags, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use rustix::fs::{FileType as RType, Stat, Timespec};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The one place where an operation error becomes a FUSE errno.
fn errno(e: rustix::io::Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.raw_os_error())
}

/// Answers an operation that returns nothing but success or an errno.
fn reply_empty(reply: ReplyEmpty, result: Result<(), rustix::io::Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn kind(k: RType) -> FileType {
    match k {
        RType::Directory => FileType::Directory,
        RType::Symlink => FileType::Symlink,
        RType::Fifo => FileType::NamedPipe,
        RType::Socket => FileType::Socket,
        RType::CharacterDevice => FileType::CharDevice,
        RType::BlockDevice => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::new(0, nsec as u32)
    }
}

fn timespec(t: TimeOrNow) -> Timespec {
    match t {
        TimeOrNow::Now => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as _,
            },
            Err(e) => {
                let d = e.duration();
                let mut sec = -(d.as_secs() as i64);
                let mut nsec = d.subsec_nanos() as i64;
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                Timespec {
                    tv_sec: sec,
                    tv_nsec: nsec as _,
                }
            }
        },
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// The fuser adapter around an [`OverlayFs`].
pub struct Fuse {
    pub(crate) fs: Arc<OverlayFs>,
}

impl Fuse {
    fn attr(&self, node: &Node, st: &Stat) -> FileAttr {
        let mut nlink = st.st_nlink as u32;
        if self.fs.is_merged_dir(node) {
            nlink = 1;
        }
        FileAttr {
            ino: INodeNo(node.ino),
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: time(st.st_atime, st.st_atime_nsec as i64),
            mtime: time(st.st_mtime, st.st_mtime_nsec as i64),
            ctime: time(st.st_ctime, st.st_ctime_nsec as i64),
            crtime: UNIX_EPOCH,
            kind: kind(RType::from_raw_mode(st.st_mode)),
            perm: (st.st_mode & 0o7777) as u16,
            nlink,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
            flags: 0,
        }
    }

    fn ttl(&self) -> Duration {
        self.fs.config.ttl
    }

    /// Cache lifetime of an entry: names of files with several links are
    /// looked up again each time, since a copy-up may split them (see `copy_up`).
    fn entry_ttl(&self, st: &Stat) -> Duration {
        if st.st_nlink > 1 && RType::from_raw_mode(st.st_mode) != RType::Directory {
            Duration::ZERO
        } else {
            self.fs.config.ttl
        }
    }

    fn entry(&self, r: Result<(Arc<Node>, Stat), rustix::io::Errno>, reply: ReplyEntry) {
        match r {
            Ok((node, st)) => {
                reply.entry(&self.entry_ttl(&st), &self.attr(&node, &st), Generation(0))
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Registers (or shares) the passthrough backing of an opened file;
    /// `None` with `direct` when an older backing of another real file is
    /// still in use (the kernel allows one backing per inode).
    fn backing(
        &self,
        opened: &Opened,
        register: impl Fn(&std::fs::File) -> std::io::Result<fuser::BackingId>,
    ) -> (Option<Arc<Backing>>, bool) {
        if !self.fs.passthrough.load(Ordering::Relaxed) || opened.node.kind != RType::RegularFile {
            return (None, false);
        }
        let mut slot = opened.node.backing.lock().unwrap();
        if let Some(b) = slot.upgrade() {
            if b.layer == opened.layer {
                return (Some(b), false);
            }
            return (None, true);
        }
        let Ok(reopened) = self.fs.backing_file(&opened.node, opened) else {
            return (None, true);
        };
        match register(reopened.as_ref().unwrap_or(&opened.file)) {
            Ok(id) => {
                let b = Arc::new(Backing {
                    id,
                    layer: opened.layer,
                });
                *slot = Arc::downgrade(&b);
                (Some(b), false)
            }
            Err(e) => {
                tracing::warn!(
                    "FUSE passthrough unavailable ({e}); serving reads and writes in userspace"
                );
                self.fs.passthrough.store(false, Ordering::Relaxed);
                (None, true)
            }
        }
    }
}

impl Filesystem for Fuse {
    fn destroy(&mut self) {
        self.fs.finish();
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_ASYNC_DIO,
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
        ] {
            let _ = config.add_capabilities(cap);
        }
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        if self.fs.passthrough.load(Ordering::Relaxed) {
            let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !ok {
                tracing::warn!(
                    "kernel does not offer FUSE passthrough; serving reads and writes in userspace"
                );
                self.fs.passthrough.store(false, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.op_lookup(parent.0, name) {
            Ok(Some((node, st))) => {
                reply.entry(&self.entry_ttl(&st), &self.attr(&node, &st), Generation(0))
            }
            Ok(None) => {
                // A negative entry with a TTL: the kernel caches the miss.
                reply.entry(&self.ttl(), &negative_attr(), Generation(0));
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.op_forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.op_getattr(ino.0, fh.map(|f| f.0)) {
            Ok((node, st)) => reply.attr(&self.ttl(), &self.attr(&node, &st)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self.fs.op_setattr(
            ino.0,
            mode,
            uid,
            gid,
            size,
            atime.map(timespec),
            mtime.map(timespec),
            fh.map(|f| f.0),
        );
        match r {
            Ok((node, st)) => reply.attr(&self.ttl(), &self.attr(&node, &st)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.op_readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.entry(
            self.fs
                .op_mknod(parent.0, name, mode, rdev as u64, caller(req)),
            reply,
        )
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.entry(self.fs.op_mkdir(parent.0, name, mode, caller(req)), reply)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.op_remove(parent.0, name, false))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.op_remove(parent.0, name, true))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.entry(
            self.fs
                .op_symlink(parent.0, link_name, target.as_os_str(), caller(req)),
            reply,
        )
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self
            .fs
            .op_rename(parent.0, name, newparent.0, newname, flags.bits())
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.entry(self.fs.op_link(ino.0, newparent.0, newname), reply)
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let opened = match self.fs.op_open(ino.0, flags.0) {
            Ok(o) => o,
            Err(e) => return reply.error(errno(e)),
        };
        let (backing, direct) = self.backing(&opened, |f| reply.open_backing(f));
        let Opened { file, node, .. } = opened;
        let fh = self.fs.add_handle(Handle {
            file,
            node,
            _backing: backing.clone(),
        });
        match backing {
            // NOFLUSH: flush has nothing to do here (data goes straight to the
            // backing file; fsync is separate), so spare the round trip on close.
            Some(b) => reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &b.id),
            None if direct => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH,
            ),
            None => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
            ),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (node, st, opened) = match self.fs.op_create(parent.0, name, mode, flags, caller(req)) {
            Ok(r) => r,
            Err(e) => return reply.error(errno(e)),
        };
        let attr = self.attr(&node, &st);
        let (backing, direct) = self.backing(&opened, |f| reply.open_backing(f));
        let Opened { file, node, .. } = opened;
        let fh = self.fs.add_handle(Handle {
            file,
            node,
            _backing: backing.clone(),
        });
        match backing {
            Some(b) => reply.created_passthrough(
                &self.ttl(),
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_NOFLUSH,
                &b.id,
            ),
            None if direct => reply.created(
                &self.ttl(),
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH,
            ),
            None => reply.created(
                &self.ttl(),
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_NOFLUSH,
            ),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.op_read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.fs.op_write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        }
    }

    // No `flush`: writes reach the backing file at once (passthrough, or a
    // synchronous pwrite) and locks are the kernel's, so there is nothing to
    // do at close. fuser answers ENOSYS and the kernel stops sending FLUSH,
    // which saves a round trip on every close(2).

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.op_fsync(fh.0, datasync))
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // No OPENDIR/RELEASEDIR round trips: answered ENOSYS once, the kernel
        // opens directories locally from then on (caching listings, as
        // FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE would) and sends READDIRPLUS
        // with no handle. A `find` of a warm tree then costs no round trip at
        // all, and `rm -r` two fewer per directory. readdir is served from
        // the directory's index, with offsets that stay valid however it
        // changes (`DirIndex::listing`).
        reply.error(fuser::Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (node, listing) = match self.fs.op_listing(ino.0) {
            Ok(l) => l,
            Err(e) => return reply.error(errno(e)),
        };
        if offset < 1 && reply.add(ino, 1, FileType::Directory, ".") {
            return reply.ok();
        }
        if offset < DOT_DOT_OFFSET && reply.add(ino, DOT_DOT_OFFSET, FileType::Directory, "..") {
            return reply.ok();
        }
        let start = listing.partition_point(|(off, ..)| *off <= offset);
        for (off, name, k) in &listing[start..] {
            let Ok(Some((child, _))) = self.fs.dir_entry(&node, name, false) else {
                continue;
            };
            if reply.add(INodeNo(child.ino), *off, kind(*k), name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let (node, listing) = match self.fs.op_listing(ino.0) {
            Ok(l) => l,
            Err(e) => return reply.error(errno(e)),
        };
        let ttl = self.ttl();
        // "." and "..": the kernel takes no reference on these.
        for (off, name) in [(1, "."), (DOT_DOT_OFFSET, "..")] {
            if offset >= off {
                continue;
            }
            let st = match self.fs.stat(&node) {
                Ok(st) => st,
                Err(e) => return reply.error(errno(e)),
            };
            let attr = self.attr(&node, &st);
            if reply.add(ino, off, name, &ttl, &attr, Generation(0)) {
                return reply.ok();
            }
        }
        let start = listing.partition_point(|(off, ..)| *off <= offset);
        for (off, name, _) in &listing[start..] {
            let Ok(Some((child, st))) = self.fs.dir_entry(&node, name, true) else {
                continue;
            };
            let attr = self.attr(&child, &st);
            let ttl = self.entry_ttl(&st);
            if reply.add(INodeNo(child.ino), *off, name, &ttl, &attr, Generation(0)) {
                // Not sent: the kernel takes no reference on it.
                self.fs.unref(&child);
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        // Never sent once OPENDIR has answered ENOSYS (see `opendir`).
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.op_fsyncdir(ino.0))
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.op_statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namelen as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.op_setxattr(ino.0, name, value, flags))
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.op_getxattr(ino.0, name) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(fuser::Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.op_listxattr(ino.0) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(fuser::Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.op_removexattr(ino.0, name))
    }

    /// No ioctl is served: ENOTTY, as for a file without the ioctl. (The
    /// kernel sends one for every `isatty` on an open file, e.g. python's
    /// `open`; fuser's default would log a warning each time.)
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(fuser::Errno::ENOTTY);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.op_access(ino.0, mask.bits(), caller(req)))
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.op_fallocate(fh.0, offset, length, mode))
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.fs.op_lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// Attributes of a negative entry (node id 0): only the TTL matters.
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}
