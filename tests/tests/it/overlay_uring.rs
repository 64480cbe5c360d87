//! lamina's patched fuser: the mount shows its subtype (`fuse.lamina`).

use anyhow::{Result, ensure};
use lamina_tests::overlay::{LaminaMount, fuse_available};

/// The fstype field (after the ` - ` separator) of `dir`'s line in
/// /proc/self/mountinfo.
fn mount_fstype(dir: &std::path::Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = dir.to_str()?;
    info.lines().rev().find_map(|l| {
        let mut f = l.split(' ');
        let mp = f.nth(4)?;
        if mp != want {
            return None;
        }
        let rest = l.split(" - ").nth(1)?;
        rest.split(' ').next().map(str::to_string)
    })
}

#[test]
fn a_lamina_mount_shows_its_subtype() -> Result<()> {
    if !fuse_available() {
        eprintln!("SKIP overlay_uring: needs root and /dev/fuse");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let lower = tmp.path().join("lower");
    std::fs::create_dir_all(&lower)?;
    std::fs::write(lower.join("f"), "x")?;
    let dir = tmp.path().join("mnt");
    let m = LaminaMount::mount(&[lower], None, &dir)?;
    let fstype = mount_fstype(&m.dir.canonicalize()?);
    ensure!(
        fstype.as_deref() == Some("fuse.lamina"),
        "fstype of {} in /proc/self/mountinfo: {fstype:?}, expected fuse.lamina",
        m.dir.display()
    );
    Ok(())
}
