//! The few system calls that need `unsafe`, each with its SAFETY note.
//!
//! Layer unpack does nearly everything (`openat2` with `RESOLVE_IN_ROOT`,
//! `mknodat`, `*xattr`, `linkat`, ...) through rustix's safe wrappers. A
//! system call without one goes here, behind a safe function, with
//! `#[allow(unsafe_code)]` on the block.

use std::os::fd::{AsRawFd, BorrowedFd};

/// Starts writeback of the dirty pages of `fd` without waiting for it
/// (`sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`): a later `syncfs`
/// or `fsync` then finds less to write. It promises no durability by itself
/// (no metadata, no device flush).
pub fn start_writeback(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: sync_file_range only reads its integer arguments; `fd` is a
    // valid open descriptor for the duration of the call (it is borrowed).
    let r = unsafe { libc::sync_file_range(fd.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
