//! The few system calls that need `unsafe`, each with its SAFETY note.
//!
//! None so far: layer unpack does everything (`openat2` with
//! `RESOLVE_IN_ROOT`, `mknodat`, `*xattr`, `linkat`, ...) through rustix's
//! safe wrappers. A system call without one goes here, behind a safe
//! function, with `#[allow(unsafe_code)]` on the block.
