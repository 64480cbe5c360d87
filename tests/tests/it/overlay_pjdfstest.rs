//! pjdfstest (the POSIX file system suite) on a lamina read-write mount
//! served over /dev/fuse (`uring=off`; overlay_uring runs it over io_uring):
//! zero failures. Needs `cargo install pjdfstest` and a `tests` user/group
//! (scripts/test.sh sets both up).

use anyhow::Result;
use lamina_tests::overlay::{LaminaMount, fuse_available, run_pjdfstest};

#[test]
fn pjdfstest_passes_on_a_lamina_mount() -> Result<()> {
    if !fuse_available() {
        eprintln!("SKIP overlay_pjdfstest: needs root and /dev/fuse");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let lower = tmp.path().join("lower");
    std::fs::create_dir_all(lower.join("from-lower"))?;
    let (upper, work) = (tmp.path().join("upper"), tmp.path().join("work"));
    let m = LaminaMount::mount_with(
        &[lower],
        Some((&upper, &work)),
        &tmp.path().join("mnt"),
        Some(200),
        "uring=off",
    )?;
    let dir = m.dir.join("pjd");
    std::fs::create_dir(&dir)?;
    run_pjdfstest(&dir)?;
    Ok(())
}
