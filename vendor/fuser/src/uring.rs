//! LAMINA PATCH (io_uring): FUSE-over-io_uring request queues (Linux 6.14+).
//!
//! Protocol (kernel `Documentation/filesystems/fuse-io-uring.rst`,
//! `fs/fuse/dev_uring.c`, uapi `fuse.h`):
//! - the INIT reply carries `FUSE_OVER_IO_URING` (only when the kernel offered
//!   it, i.e. `/sys/module/fuse/parameters/enable_uring` is Y);
//! - the kernel has one queue per *possible* CPU; a request is put on the queue
//!   of the CPU its caller runs on. Each queue here is one thread pinned to
//!   that CPU with its own ring (SQE128: the command area holds
//!   `fuse_uring_cmd_req`), so a request wakes a thread on its own CPU;
//!   `RINGS_PER_QUEUE` such threads per queue, one entry each, so a slow
//!   request holds up only its own thread;
//! - each ring entry is a headers buffer (`fuse_uring_req_header`: in_out[128]
//!   (fuse_in_header in, fuse_out_header out), op_in[128] (the first in-arg,
//!   when it is not empty), `fuse_uring_ent_in_out` (commit id, payload size))
//!   and a payload buffer of at least the kernel's `max_payload_sz`
//!   (max(8 KiB, max_write, max_pages * page size)), passed as an iovec pair
//!   with `FUSE_IO_URING_CMD_REGISTER`. The kernel serves the queues only once
//!   every queue has an entry registered; until then, and for FORGET,
//!   INTERRUPT and notifications always, requests still use /dev/fuse, so the
//!   /dev/fuse readers stay;
//! - a completed entry holds one request: `fuse_in_header.len` is the full
//!   length, so the first in-arg is `len - 40 - payload_sz` bytes of op_in and
//!   the other in-args follow in the payload; fuser's contiguous request
//!   (header ++ arg0 ++ payload) is rebuilt from that;
//! - the reply is the out header in in_out, the rest in the payload
//!   (`payload_sz`), then `FUSE_IO_URING_CMD_COMMIT_AND_FETCH` with the commit
//!   id commits it and waits for the next request in one step.
//!
//! Invariants: an entry's buffers belong to the kernel from the submission of
//! its REGISTER/COMMIT_AND_FETCH until its completion, and to this queue's
//! thread (or the one thread replying, under the entry's mutex) in between.
//! The queue thread waits for the reply of each request before it commits the
//! entry, so a reply sent later or from another thread still works (the queue
//! is held up meanwhile). An entry ends when its command completes with an
//! error (ENOTCONN/ECONNABORTED at unmount or abort); the thread ends when all
//! of its entries have. The thread sleeps in io_uring_enter, after polling
//! for at most a bounded, adaptive window (`Poller`) when the session asks.

use std::alloc::Layout;
use std::alloc::alloc_zeroed;
use std::alloc::dealloc;
use std::io;
use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::debug;
use log::error;
use log::info;
use nix::unistd::Uid;

use crate::Filesystem;
use crate::ReplyEmpty;
use crate::channel::Channel;
use crate::channel::ChannelSender;
use crate::ll::Operation;
use crate::reply::ReplySender;
use crate::request::RequestWithSender;
use crate::session::FilesystemHolder;
use crate::session::SessionACL;
use crate::session::SessionEventLoop;

/// `sizeof(struct fuse_uring_req_header)`: in_out[128] + op_in[128] + ent_in_out (32).
const HEADERS_SIZE: usize = 288;
const OP_IN_OFFSET: usize = 128;
const OP_IN_SIZE: usize = 128;
/// Offset of `struct fuse_uring_ent_in_out` (flags u64, commit_id u64, payload_sz u32, ...).
const ENT_IN_OUT_OFFSET: usize = 256;
const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;
const IN_HEADER_SIZE: usize = 40;
const OUT_HEADER_SIZE: usize = 16;
/// Minimum payload the kernel accepts (`FUSE_MIN_READ_BUFFER`).
const FUSE_MIN_READ_BUFFER: usize = 8192;
/// Ring entries per ring. One: the kernel hands a request to the first free
/// entry of its CPU's queue, so an entry sitting behind a slow request of the
/// same thread would wait for it; with one entry per thread it cannot.
const QUEUE_DEPTH: usize = 1;
/// Threads (each with its own ring) per CPU queue, so that one slow request
/// (a big copy-up) does not hold up the other requests of its CPU.
const RINGS_PER_QUEUE: usize = 2;

/// What the INIT exchange decided for io_uring.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    /// Payload buffer size per entry (>= the kernel's max_payload_sz).
    pub(crate) payload_size: usize,
    /// The longest a queue thread polls for its next request (see [`Poller`]).
    pub(crate) poll: Duration,
}

impl Params {
    pub(crate) fn new(max_write: u32, max_pages: u16, poll: Duration) -> Params {
        let pages = usize::from(max_pages) * page_size::get();
        Params {
            payload_size: FUSE_MIN_READ_BUFFER.max(max_write as usize).max(pages),
            poll,
        }
    }
}

/// The shortest poll worth making; a window that shrinks below it is zero.
const POLL_START: Duration = Duration::from_micros(10);

/// LAMINA PATCH (io_uring poll): how long a queue thread polls for its next
/// request after answering one, before it sleeps in `io_uring_enter`.
///
/// Why: where idle CPUs halt at once (a VM without guest halt polling), a
/// queue thread that sleeps between two requests lets its CPU halt. The reply
/// to each request moves the caller to another CPU (the scheduler prefers an
/// idle CPU to the replying thread's busy one), so every request of a burst
/// wakes a halted vCPU: ~40 us on our VMs, against ~12 us for the whole round
/// trip on one CPU. Threads that poll through a burst keep their CPUs awake,
/// and a wakeup lands on a running vCPU.
///
/// The window adapts per thread, as the kernel's haltpoll governor does: after
/// a poll that ran out and a sleep that a poll up to `max` would have covered,
/// it doubles (from [`POLL_START`], at most `max`); after a longer sleep it
/// halves, down to zero, so a thread whose requests come far apart stops
/// polling. While polling the thread yields at every turn, so any other task
/// of its CPU runs first. CPU spent: at most one window per request.
struct Poller {
    max: Duration,
    window: Duration,
}

impl Poller {
    fn new(max: Duration) -> Poller {
        Poller { max, window: max }
    }

    /// Adapts the window after a poll of `self.window` that ran out and a
    /// sleep of `slept` until the next completion.
    fn slept(&mut self, slept: Duration) {
        if self.window + slept <= self.max {
            self.window = (self.window * 2).max(POLL_START).min(self.max);
        } else {
            self.window /= 2;
            if self.window < POLL_START {
                self.window = Duration::ZERO;
            }
        }
    }
}

/// Polls `ring` for a completion for up to `window`: true when one came.
fn poll_ring(ring: &mut IoUring<squeue::Entry128, cqueue::Entry>, window: Duration) -> bool {
    let start = Instant::now();
    loop {
        // A request handed to this thread is deferred task work, run only by
        // an io_uring_enter with GETEVENTS; the TASKRUN flag says there is some.
        if ring.submission().taskrun() {
            let _ = ring.submit_and_wait(0);
        }
        if !ring.completion().is_empty() {
            return true;
        }
        if start.elapsed() >= window {
            return false;
        }
        std::thread::yield_now();
    }
}

/// A zeroed, page-aligned heap buffer the kernel reads and writes through a raw pointer.
#[derive(Debug)]
struct Buf {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: a Buf is plain memory; access is synchronized by the entry protocol (module docs).
unsafe impl Send for Buf {}
// SAFETY: as above.
unsafe impl Sync for Buf {}

impl Buf {
    fn new(size: usize) -> io::Result<Buf> {
        let layout = Layout::from_size_align(size.max(1), 4096)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        Ok(Buf { ptr, layout })
    }

    fn len(&self) -> usize {
        self.layout.size()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: allocated in Buf::new with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// One ring entry: its buffers and whether the current request has been answered.
#[derive(Debug)]
pub(crate) struct Slot {
    headers: Buf,
    payload: Buf,
    /// The iovec pair handed to REGISTER (kept alive with the buffers).
    iov: Box<[libc::iovec; 2]>,
    pending: Mutex<Pending>,
    /// Signalled when the request is answered, only if the queue thread waits
    /// for it (a reply from inside the callback, the usual case, makes no
    /// futex call).
    answered: Condvar,
}

/// The request an entry is serving.
#[derive(Debug, Default)]
struct Pending {
    /// `Some(commit id)` while a request is being served and not yet answered.
    commit_id: Option<u64>,
    /// The queue thread is waiting on `answered`.
    waiting: bool,
}

impl Pending {
    /// Marks the request answered, waking the queue thread if it waits.
    fn answered(&mut self, cv: &Condvar) {
        self.commit_id = None;
        if self.waiting {
            cv.notify_all();
        }
    }
}

// SAFETY: the iovecs only hold pointers into this slot's own buffers.
unsafe impl Send for Slot {}
// SAFETY: as above; everything mutable is behind the mutex or the entry protocol.
unsafe impl Sync for Slot {}

impl Slot {
    fn new(payload_size: usize) -> io::Result<Slot> {
        let headers = Buf::new(HEADERS_SIZE)?;
        let payload = Buf::new(payload_size)?;
        let iov = Box::new([
            libc::iovec {
                iov_base: headers.ptr.cast(),
                iov_len: HEADERS_SIZE,
            },
            libc::iovec {
                iov_base: payload.ptr.cast(),
                iov_len: payload.len(),
            },
        ]);
        Ok(Slot {
            headers,
            payload,
            iov,
            pending: Mutex::new(Pending::default()),
            answered: Condvar::new(),
        })
    }

    /// Writes a reply (out header ++ payload, as fuser's iovecs) into the entry.
    /// Must be called with `pending` locked and `Some`.
    fn write_reply(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        let total: usize = data.iter().map(|s| s.len()).sum();
        if total < OUT_HEADER_SIZE || total - OUT_HEADER_SIZE > self.payload.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "FUSE reply of {total} bytes does not fit an io_uring entry (payload {})",
                    self.payload.len()
                ),
            ));
        }
        let mut pos = 0usize;
        for s in data {
            let mut bytes: &[u8] = s;
            while !bytes.is_empty() {
                let (dst, room) = if pos < OUT_HEADER_SIZE {
                    // SAFETY: in_out is 128 bytes; pos < 16.
                    (unsafe { self.headers.ptr.add(pos) }, OUT_HEADER_SIZE - pos)
                } else {
                    let off = pos - OUT_HEADER_SIZE;
                    // SAFETY: off + remaining <= payload len (checked above).
                    (
                        unsafe { self.payload.ptr.add(off) },
                        self.payload.len() - off,
                    )
                };
                let n = bytes.len().min(room);
                // SAFETY: dst has room for n bytes; the source is a distinct Rust slice.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, n) };
                bytes = &bytes[n..];
                pos += n;
            }
        }
        let payload_sz = (total - OUT_HEADER_SIZE) as u32;
        // SAFETY: ent_in_out.payload_sz is at ENT_IN_OUT_OFFSET + 16, inside the headers buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                payload_sz.to_ne_bytes().as_ptr(),
                self.headers.ptr.add(ENT_IN_OUT_OFFSET + 16),
                4,
            )
        };
        Ok(())
    }

    /// Answers the pending request with an error, unless it was answered.
    fn answer_errno(&self, commit_id: u64, errno: i32) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.commit_id.is_none() {
            return;
        }
        let len = OUT_HEADER_SIZE as u32;
        let mut hdr = [0u8; OUT_HEADER_SIZE];
        hdr[0..4].copy_from_slice(&len.to_ne_bytes());
        hdr[4..8].copy_from_slice(&(-errno).to_ne_bytes());
        hdr[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        if self.write_reply(&[IoSlice::new(&hdr)]).is_ok() {
            pending.answered(&self.answered);
        }
    }
}

/// Sends fuser's reply into an io_uring entry (the queue thread commits it).
#[derive(Debug, Clone)]
pub(crate) struct UringSender {
    slot: Arc<Slot>,
    ch: ChannelSender,
}

impl UringSender {
    pub(crate) fn send(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        let mut pending = self.slot.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.commit_id.is_none() {
            return Err(io::Error::other(
                "FUSE reply to an io_uring entry that was already answered",
            ));
        }
        self.slot.write_reply(data)?;
        pending.answered(&self.slot.answered);
        Ok(())
    }

    /// The /dev/fuse channel, for backing-file ioctls (passthrough).
    pub(crate) fn channel(&self) -> &ChannelSender {
        &self.ch
    }
}

/// The possible CPUs (`/sys/devices/system/cpu/possible`, e.g. `0-3,5`): the
/// kernel's queue count.
pub(crate) fn possible_cpus() -> usize {
    let parse = |s: &str| -> Option<usize> {
        let mut n = 0;
        for part in s.trim().split(',').filter(|p| !p.is_empty()) {
            n += match part.split_once('-') {
                Some((a, b)) => b.parse::<usize>().ok()? - a.parse::<usize>().ok()? + 1,
                None => {
                    part.parse::<usize>().ok()?;
                    1
                }
            };
        }
        Some(n)
    };
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| parse(&s))
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Builds a FUSE uring command SQE. `len` (the iovec count) is not settable
/// through io-uring's builder, so it is patched into the raw SQE.
fn cmd_sqe(
    fd: i32,
    cmd_op: u32,
    qid: u16,
    commit_id: u64,
    slot: &Slot,
    idx: usize,
) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    // struct fuse_uring_cmd_req { u64 flags; u64 commit_id; u16 qid; u8 padding[6]; }
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    let entry = opcode::UringCmd80::new(types::Fd(fd), cmd_op)
        .cmd(cmd)
        .addr(Some(slot.iov.as_ptr() as u64))
        .build()
        .user_data(idx as u64);
    // SAFETY: Entry128 is #[repr(C)]: a 64-byte io_uring_sqe followed by 64 bytes;
    // io_uring_sqe.len is the u32 at byte 24. Both types are 128 plain bytes.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(entry) };
    raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    let res = set
        .set(cpu)
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    if let Err(e) = res {
        // An offline CPU: the queue still has to exist for the ring to be ready.
        debug!("fuse io_uring queue {cpu}: not pinned ({e})");
    }
}

/// Starts one pinned queue thread per possible CPU and waits until each has
/// registered its entries. Returns the threads (to join at the end of the
/// session) and the first registration error, if any (then the kernel keeps
/// serving through /dev/fuse).
pub(crate) fn start_queues<FS: Filesystem>(
    params: Params,
    ch: &Channel,
    filesystem: &Arc<FilesystemHolder<FS>>,
    allowed: SessionACL,
    session_owner: Uid,
) -> (Vec<JoinHandle<io::Result<()>>>, Option<io::Error>) {
    let nr = possible_cpus();
    let (tx, rx) = mpsc::channel::<(usize, io::Result<()>)>();
    let mut threads = Vec::with_capacity(nr * RINGS_PER_QUEUE);
    let mut first_err = None;
    for (qid, k) in (0..nr).flat_map(|q| (0..RINGS_PER_QUEUE).map(move |k| (q, k))) {
        let thread_name = format!("fuser-uring-{qid}.{k}");
        let event_loop = SessionEventLoop {
            thread_name: thread_name.clone(),
            filesystem: filesystem.clone(),
            ch: ch.clone(),
            allowed,
            session_owner,
        };
        let tx = tx.clone();
        match std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || serve_queue(qid, params, event_loop, tx))
        {
            Ok(t) => threads.push(t),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    drop(tx);
    for (qid, res) in rx.iter() {
        if let Err(e) = res {
            let e = io::Error::new(
                e.kind(),
                format!("FUSE io_uring queue {qid}: registering its entries failed: {e}"),
            );
            first_err.get_or_insert(e);
        }
    }
    if first_err.is_none() {
        info!("FUSE over io_uring: {nr} queues of {RINGS_PER_QUEUE} threads");
    }
    (threads, first_err)
}

fn serve_queue<FS: Filesystem>(
    qid: usize,
    params: Params,
    event_loop: SessionEventLoop<FS>,
    ready: mpsc::Sender<(usize, io::Result<()>)>,
) -> io::Result<()> {
    pin_to_cpu(qid);
    let setup = || -> io::Result<(IoUring<squeue::Entry128, cqueue::Entry>, Vec<Arc<Slot>>)> {
        let entries = (QUEUE_DEPTH * 2) as u32;
        // Task work (handing a request to this thread) runs when this thread
        // enters the kernel to wait, on its own CPU.
        let ring = match IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .build(entries)
        {
            Ok(r) => r,
            Err(_) => IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(entries)?,
        };
        let slots = (0..QUEUE_DEPTH)
            .map(|_| Slot::new(params.payload_size).map(Arc::new))
            .collect::<io::Result<Vec<_>>>()?;
        Ok((ring, slots))
    };
    let (mut ring, slots) = match setup() {
        Ok(x) => x,
        Err(e) => {
            let msg = e.to_string();
            let _ = ready.send((qid, Err(e)));
            return Err(io::Error::other(msg));
        }
    };
    let fd = std::os::fd::AsFd::as_fd(&event_loop.ch).as_raw_fd();
    let qid16 = qid as u16;
    for (idx, slot) in slots.iter().enumerate() {
        let sqe = cmd_sqe(fd, FUSE_IO_URING_CMD_REGISTER, qid16, 0, slot, idx);
        // SAFETY: the SQE points at the slot's iovecs and buffers, which live
        // until after the ring is dropped (slots outlive ring: dropped last).
        unsafe {
            ring.submission()
                .push(&sqe)
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
    }
    let submitted = ring.submit();
    // A REGISTER that fails does so inline: its error completion is already there.
    let mut early = Vec::new();
    for cqe in ring.completion() {
        early.push((cqe.user_data(), cqe.result()));
    }
    let reg_err = match submitted {
        Err(e) => Some(e),
        Ok(_) => early
            .iter()
            .find(|(_, r)| *r < 0)
            .map(|(_, r)| io::Error::from_raw_os_error(-r)),
    };
    if let Some(e) = reg_err {
        let msg = e.to_string();
        let _ = ready.send((qid, Err(e)));
        drop(ring);
        return Err(io::Error::other(msg));
    }
    let _ = ready.send((qid, Ok(())));
    drop(ready);

    let mut live = slots.len();
    // Request bytes rebuilt contiguously (fuser parses from an aligned buffer).
    let req_buf = Buf::new(IN_HEADER_SIZE + OP_IN_SIZE + params.payload_size)?;
    let mut done = early;
    let mut poller = Poller::new(params.poll);
    let result = loop {
        for (user_data, res) in done.drain(..) {
            let idx = user_data as usize;
            let Some(slot) = slots.get(idx) else {
                error!("fuse io_uring queue {qid}: completion for unknown entry {idx}");
                continue;
            };
            if res < 0 {
                live -= 1;
                let errno = -res;
                if ![
                    libc::ENOTCONN,
                    libc::ECONNABORTED,
                    libc::ECANCELED,
                    libc::ENODEV,
                ]
                .contains(&errno)
                {
                    error!(
                        "fuse io_uring queue {qid} entry {idx}: {}",
                        io::Error::from_raw_os_error(errno)
                    );
                }
                continue;
            }
            let commit_id = serve_entry(slot, &req_buf, &event_loop, qid);
            let sqe = cmd_sqe(
                fd,
                FUSE_IO_URING_CMD_COMMIT_AND_FETCH,
                qid16,
                commit_id,
                slot,
                idx,
            );
            // SAFETY: as for REGISTER. At most one command per entry is in
            // flight, and the SQ has room for twice the entries.
            unsafe {
                if ring.submission().push(&sqe).is_err() {
                    break;
                }
            }
        }
        if live == 0 {
            break Ok(());
        }
        if !poller.window.is_zero() {
            match ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => break Err(e),
            }
            if poll_ring(&mut ring, poller.window) {
                for cqe in ring.completion() {
                    done.push((cqe.user_data(), cqe.result()));
                }
                continue;
            }
        }
        let asleep = Instant::now();
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => break Err(e),
        }
        if !params.poll.is_zero() {
            poller.slept(asleep.elapsed());
        }
        for cqe in ring.completion() {
            done.push((cqe.user_data(), cqe.result()));
        }
    };
    // The ring goes first: the kernel lets go of the buffers with it.
    drop(ring);
    drop(slots);
    debug!("fuse io_uring queue {qid} ended");
    result
}

/// Serves the request in `slot`; returns the commit id once it is answered.
fn serve_entry<FS: Filesystem>(
    slot: &Arc<Slot>,
    req_buf: &Buf,
    event_loop: &SessionEventLoop<FS>,
    qid: usize,
) -> u64 {
    // SAFETY: the entry's command completed, so its buffers are this thread's
    // until the commit; nothing else holds a reference into them.
    let headers = unsafe { std::slice::from_raw_parts(slot.headers.ptr, HEADERS_SIZE) };
    let word = |off: usize| u32::from_ne_bytes(headers[off..off + 4].try_into().unwrap());
    let commit_id = u64::from_ne_bytes(
        headers[ENT_IN_OUT_OFFSET + 8..ENT_IN_OUT_OFFSET + 16]
            .try_into()
            .unwrap(),
    );
    let payload_sz = word(ENT_IN_OUT_OFFSET + 16) as usize;
    let len = word(0) as usize;
    slot.pending.lock().unwrap_or_else(|e| e.into_inner()).commit_id = Some(commit_id);
    let arg0 = len
        .checked_sub(IN_HEADER_SIZE + payload_sz)
        .filter(|&a| a <= OP_IN_SIZE && payload_sz <= slot.payload.len());
    let Some(arg0) = arg0 else {
        error!("fuse io_uring queue {qid}: malformed request (len {len}, payload {payload_sz})");
        slot.answer_errno(commit_id, libc::EIO);
        return commit_id;
    };
    // SAFETY: req_buf is this thread's own buffer, large enough for
    // header + op_in + payload; sources are the entry's buffers (owned now).
    let req = unsafe {
        let dst = req_buf.ptr;
        std::ptr::copy_nonoverlapping(slot.headers.ptr, dst, IN_HEADER_SIZE);
        std::ptr::copy_nonoverlapping(
            slot.headers.ptr.add(OP_IN_OFFSET),
            dst.add(IN_HEADER_SIZE),
            arg0,
        );
        std::ptr::copy_nonoverlapping(slot.payload.ptr, dst.add(IN_HEADER_SIZE + arg0), payload_sz);
        std::slice::from_raw_parts(dst, len)
    };
    let sender = ReplySender::Uring(UringSender {
        slot: slot.clone(),
        ch: event_loop.ch.sender(),
    });
    match RequestWithSender::new(sender, req) {
        Some(r) => match r.request.operation() {
            Ok(Operation::Destroy(_)) => {
                r.reply::<ReplyEmpty>().ok();
            }
            Ok(Operation::Forget(_) | Operation::BatchForget(_)) => {
                // Never sent through io_uring; if it were, it has no reply.
                r.dispatch(event_loop);
                slot.answer_errno(commit_id, 0);
            }
            _ => r.dispatch(event_loop),
        },
        None => slot.answer_errno(commit_id, libc::EIO),
    }
    // lamina answers inside the callback; a reply kept for later (or sent from
    // another thread) is waited for here, holding this entry (not the queue's others).
    let mut pending = slot.pending.lock().unwrap_or_else(|e| e.into_inner());
    while pending.commit_id.is_some() {
        pending.waiting = true;
        pending = slot
            .answered
            .wait(pending)
            .unwrap_or_else(|e| e.into_inner());
    }
    pending.waiting = false;
    commit_id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqe_len_patch_is_at_byte_24() {
        let slot = Slot::new(8192).unwrap();
        let e = cmd_sqe(7, FUSE_IO_URING_CMD_REGISTER, 3, 9, &slot, 5);
        let raw: [u8; 128] = unsafe { std::mem::transmute(e) };
        assert_eq!(u32::from_ne_bytes(raw[24..28].try_into().unwrap()), 2);
        assert_eq!(i32::from_ne_bytes(raw[4..8].try_into().unwrap()), 7);
        assert_eq!(
            u64::from_ne_bytes(raw[16..24].try_into().unwrap()),
            slot.iov.as_ptr() as u64
        );
        assert_eq!(u64::from_ne_bytes(raw[32..40].try_into().unwrap()), 5);
        // cmd area at byte 48: commit_id at +8, qid at +16
        assert_eq!(u64::from_ne_bytes(raw[56..64].try_into().unwrap()), 9);
        assert_eq!(u16::from_ne_bytes(raw[64..66].try_into().unwrap()), 3);
    }
}
