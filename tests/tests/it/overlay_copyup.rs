//! A copy-up flushes the copied data to disk before the copy takes the
//! file's name, as kernel overlayfs does: after a power loss the upper file
//! either is not there (the lower one shows) or holds all its data, never a
//! name without its data. `volatile` (kernel overlayfs) and `fsync=0`
//! (fuse-overlayfs) turn the flush off.
//!
//! The flush is seen with cachestat(2): right after the copy-up, none of the
//! upper file's cached pages is dirty or under writeback.

use anyhow::{Context, Result, ensure};
use lamina_tests::overlay::{LaminaMount, fuse_available};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// cachestat(2) (Linux 6.5+) over the whole file: (cached, dirty, writeback) pages.
fn page_states(path: &Path) -> Result<(u64, u64, u64)> {
    const SYS_CACHESTAT: libc::c_long = 451;
    let f = std::fs::File::open(path)?;
    let range = [0u64; 2]; // offset 0, length 0 = to the end
    let mut cs = [0u64; 5]; // cache, dirty, writeback, evicted, recently evicted
    #[allow(unsafe_code)]
    // SAFETY: cachestat reads `range` (two u64) and writes `cs` (five u64),
    // both live for the call; the fd is open for its duration.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            f.as_raw_fd(),
            range.as_ptr(),
            cs.as_mut_ptr(),
            0,
        )
    };
    ensure!(
        r == 0,
        "cachestat {}: {} (needs Linux 6.5+)",
        path.display(),
        std::io::Error::last_os_error()
    );
    Ok((cs[0], cs[1], cs[2]))
}

/// The pages of `upper`'s copy of `name` that are not on disk yet.
fn unflushed(upper: &Path, name: &str) -> Result<u64> {
    let (_, dirty, writeback) = page_states(&upper.join(name))?;
    Ok(dirty + writeback)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn copy_up_flushes_the_data_before_the_name_appears() -> Result<()> {
    if !fuse_available() {
        eprintln!("SKIP overlay_copyup: needs root and /dev/fuse");
        return Ok(());
    }
    // Not tmpfs: there every page stays "dirty" and fsync has nothing to do.
    let tmp = tempfile::tempdir_in("/var/tmp")?;
    let lower = tmp.path().join("lower");
    std::fs::create_dir_all(&lower)?;
    let big = pattern(16 << 20, 7);
    let small = pattern(100_000, 3);
    for (name, data) in [("meta", &big), ("append", &small), ("volatile", &big)] {
        std::fs::write(lower.join(name), data)?;
    }
    let (upper, work) = (tmp.path().join("upper"), tmp.path().join("work"));
    let lowers = [lower.clone()];
    {
        let m = LaminaMount::mount(&lowers, Some((&upper, &work)), &tmp.path().join("mnt"))?;
        // A metadata change copies the data up too: all of it on disk.
        std::fs::set_permissions(m.dir.join("meta"), std::fs::Permissions::from_mode(0o600))?;
        let left = unflushed(&upper, "meta")?;
        ensure!(
            left == 0,
            "{left} of the copied-up file's pages were not on disk after chmod"
        );
        ensure!(
            std::fs::read(upper.join("meta"))? == big,
            "copied data differs"
        );

        // Opening for writing copies up before the write: only the page the
        // write itself touched may be dirty.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(m.dir.join("append"))?;
        f.write_all(b"x")?;
        drop(f);
        let left = unflushed(&upper, "append")?;
        ensure!(
            left <= 1,
            "{left} pages of a copied-up 100 kB file were not on disk after a 1-byte append"
        );
        let mut want = small.clone();
        want.push(b'x');
        ensure!(
            std::fs::read(m.dir.join("append"))? == want,
            "append lost data"
        );
    }
    {
        // `volatile` copies up the same data, without the flush.
        let m = LaminaMount::mount_with(
            &lowers,
            Some((&upper, &work)),
            &tmp.path().join("mnt2"),
            None,
            "volatile",
        )?;
        std::fs::set_permissions(
            m.dir.join("volatile"),
            std::fs::Permissions::from_mode(0o600),
        )?;
        let st = std::fs::metadata(upper.join("volatile")).context("not copied up")?;
        ensure!(st.permissions().mode() & 0o777 == 0o600, "mode not kept");
        ensure!(
            std::fs::read(m.dir.join("volatile"))? == big,
            "copied data differs"
        );
    }
    Ok(())
}
