//! The one system call the driver makes without a safe wrapper in rustix,
//! behind a safe function with its SAFETY note.

use std::os::fd::{AsRawFd, BorrowedFd};

/// Starts writeback of `len` bytes at `offset` of `fd` without waiting for
/// it (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the caller's later
/// fsync finds less to write. Advisory: if it fails, the fsync does it all.
pub(crate) fn start_writeback(fd: BorrowedFd<'_>, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    #[allow(unsafe_code)]
    // SAFETY: sync_file_range only reads its integer arguments; `fd` is a
    // valid open descriptor for the duration of the call (it is borrowed).
    let _ =
        unsafe { libc::sync_file_range(fd.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
}
