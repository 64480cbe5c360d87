//! No layer-count limit: 500 layers mount and merge correctly (kernel
//! overlayfs cannot take them in one mount option string).

use anyhow::{Result, ensure};
use lamina_tests::overlay::{LaminaMount, fuse_available};
use std::path::PathBuf;

#[test]
fn five_hundred_layers_mount_and_merge() -> Result<()> {
    if !fuse_available() {
        eprintln!("SKIP overlay_layers: needs root and /dev/fuse");
        return Ok(());
    }
    const N: usize = 500;
    let tmp = tempfile::tempdir()?;
    // Layer i (0 = bottom) adds common/c<i> and own<i>, and whites out own<i-1>
    // every tenth layer; the top-most file named `shadow` wins.
    let mut bottom_first = Vec::new();
    for i in 0..N {
        let l = tmp.path().join(format!("layer{i:03}"));
        std::fs::create_dir_all(l.join("common"))?;
        std::fs::write(l.join(format!("common/c{i}")), format!("{i}"))?;
        std::fs::write(l.join(format!("own{i}")), "")?;
        std::fs::write(l.join("shadow"), format!("from {i}"))?;
        if i % 10 == 0 && i > 0 {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                l.join(format!("own{}", i - 1)),
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                0,
            )?;
        }
        bottom_first.push(l);
    }
    let top_first: Vec<PathBuf> = bottom_first.iter().rev().cloned().collect();
    let (upper, work) = (tmp.path().join("upper"), tmp.path().join("work"));
    let m = LaminaMount::mount_with_fd_budget(
        &top_first,
        Some((&upper, &work)),
        &tmp.path().join("mnt"),
        Some(64),
    )?;
    ensure!(
        std::fs::read_dir(m.dir.join("common"))?.count() == N,
        "common/ must merge all {N} layers"
    );
    assert_eq!(
        std::fs::read_to_string(m.dir.join("shadow"))?,
        format!("from {}", N - 1)
    );
    assert_eq!(std::fs::read_to_string(m.dir.join("common/c0"))?, "0");
    let owns = std::fs::read_dir(&m.dir)?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("own"))
        })
        .count();
    assert_eq!(owns, N - (N - 1) / 10, "whited-out names must be hidden");
    ensure!(!m.dir.join("own9").exists() && m.dir.join("own10").exists());
    // Writes work at any depth: copy-up of a bottom-layer file.
    std::fs::write(m.dir.join("common/c0"), "changed")?;
    assert_eq!(std::fs::read_to_string(upper.join("common/c0"))?, "changed");
    Ok(())
}
