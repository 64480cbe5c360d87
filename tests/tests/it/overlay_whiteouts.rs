//! Whiteouts are hard links to one shared whiteout inode in the work dir,
//! as kernel overlayfs makes them: a removal costs a link, not an inode.
//! The upper dir stays readable by kernel overlayfs, and a shared inode
//! left in the work dir by someone else is never trusted. Removed dirs are
//! deleted from the work dir in the background, and what a dead server left
//! there is deleted by the next mount.

use anyhow::{Result, ensure};
use lamina_tests::overlay::{KernelMount, LaminaMount, fuse_available, kernel_overlay_available};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Result<Vec<String>> {
    let mut v = std::fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>>>()?;
    v.sort();
    Ok(v)
}

/// `path` must be a 0/0 char device (an overlayfs whiteout); its metadata.
fn whiteout(path: &Path) -> Result<std::fs::Metadata> {
    let m = std::fs::symlink_metadata(path)?;
    ensure!(
        m.file_type().is_char_device() && m.rdev() == 0,
        "{} is not a whiteout: {:?} rdev {}",
        path.display(),
        m.file_type(),
        m.rdev()
    );
    Ok(m)
}

/// Waits (up to 10 s: the server finishes its deletes as it exits) until
/// the work dir holds exactly `expected`.
fn wait_for_work_dir(work: &Path, expected: &[&str]) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = names(work)?;
        if now == expected {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "work dir holds {now:?}, expected {expected:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn whiteouts_share_one_inode_and_stay_readable_by_kernel_overlayfs() -> Result<()> {
    if !fuse_available() {
        eprintln!("SKIP overlay_whiteouts: needs root and /dev/fuse");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let lower = tmp.path().join("lower");
    std::fs::create_dir_all(lower.join("d"))?;
    for f in ["a", "b", "c", "d/e", "d/f"] {
        std::fs::write(lower.join(f), f)?;
    }
    let (upper, work) = (tmp.path().join("upper"), tmp.path().join("work"));
    std::fs::create_dir_all(&work)?;
    // A "shared whiteout" that is not one: the mount must not link to it.
    std::fs::write(work.join("#lamina-whiteout"), "not a whiteout")?;
    let lowers = [lower.clone()];
    {
        let m = LaminaMount::mount(&lowers, Some((&upper, &work)), &tmp.path().join("mnt"))?;
        std::fs::remove_file(m.dir.join("a"))?;
        std::fs::remove_file(m.dir.join("b"))?;
        std::fs::remove_dir_all(m.dir.join("d"))?;
        assert_eq!(names(&m.dir)?, ["c"]);
    }
    let (a, b, d) = (
        whiteout(&upper.join("a"))?,
        whiteout(&upper.join("b"))?,
        whiteout(&upper.join("d"))?,
    );
    let shared = whiteout(&work.join("#lamina-whiteout"))?;
    ensure!(
        [&a, &b, &d].iter().all(|m| m.ino() == shared.ino()),
        "whiteouts must be links to the work dir's shared whiteout"
    );
    // a, b, d, the shared name; d's own children were whiteouts too until
    // d went (their links were removed with it).
    assert_eq!(shared.nlink(), 4);

    // The removed dir went into the work dir and was deleted in the
    // background: nothing but the shared whiteout is left there.
    wait_for_work_dir(&work, &["#lamina-whiteout"])?;

    // A second mount makes its own shared inode (the old one stays linked
    // from the upper dir) and keeps working. It also deletes what a server
    // that is gone left in the work dir (pid 0 is never a process).
    std::fs::create_dir_all(work.join("#lamina-0-5/sub"))?;
    std::fs::write(work.join("#lamina-0-6"), "half a copy-up")?;
    {
        let m = LaminaMount::mount(&lowers, Some((&upper, &work)), &tmp.path().join("mnt"))?;
        std::fs::remove_file(m.dir.join("c"))?;
        assert_eq!(names(&m.dir)?, Vec::<String>::new());
    }
    wait_for_work_dir(&work, &["#lamina-whiteout"])?;
    let c = whiteout(&upper.join("c"))?;
    ensure!(
        c.ino() != a.ino(),
        "a new mount makes a fresh shared whiteout"
    );
    assert_eq!(whiteout(&work.join("#lamina-whiteout"))?.ino(), c.ino());

    if kernel_overlay_available() {
        let kwork = tmp.path().join("kwork");
        std::fs::create_dir_all(&kwork)?;
        let k = KernelMount::mount(&lowers, Some((&upper, &kwork)), &tmp.path().join("kmnt"))?;
        assert_eq!(
            names(&k.dir)?,
            Vec::<String>::new(),
            "kernel overlayfs view"
        );
    } else {
        eprintln!("SKIP part of overlay_whiteouts: no kernel overlayfs");
    }
    Ok(())
}
