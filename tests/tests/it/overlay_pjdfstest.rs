//! pjdfstest (the POSIX file system suite) on a lamina read-write mount
//! served over /dev/fuse (`uring=off`; overlay_uring runs it over io_uring):
//! zero failures. Needs `cargo install pjdfstest` and a `tests` user/group
//! (scripts/test.sh sets both up).

use anyhow::{Result, ensure};
use lamina_tests::overlay::{LaminaMount, fuse_available, have};
use std::process::Command;

#[test]
fn pjdfstest_passes_on_a_lamina_mount() -> Result<()> {
    let home_bin =
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo/bin/pjdfstest"));
    let exe = match home_bin.filter(|p| p.exists()) {
        Some(p) => p,
        None if have("pjdfstest") => "pjdfstest".into(),
        None => {
            eprintln!(
                "SKIP overlay_pjdfstest: pjdfstest is not installed (cargo install --locked pjdfstest)"
            );
            return Ok(());
        }
    };
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
    let out = Command::new(exe).arg("-p").arg(&dir).output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let summary = text
        .lines()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or("no summary")
        .to_string();
    eprintln!("pjdfstest on lamina: {summary}");
    let failed: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_end().ends_with("FAILED"))
        .collect();
    ensure!(
        failed.is_empty() && summary.contains(" 0 failed"),
        "pjdfstest failures:\n{}\n{summary}",
        failed.join("\n")
    );
    Ok(())
}
