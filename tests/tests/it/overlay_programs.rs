//! Programs run from a lamina mount of a Debian tree: chroot, `dpkg -l`,
//! python3; a write persists across umount and remount.

use anyhow::{Result, ensure};
use lamina_tests::overlay::{LaminaMount, debian_tree, fuse_available};
use std::process::Command;

#[test]
fn chroot_into_debian_and_persist_a_write() -> Result<()> {
    if !fuse_available() {
        eprintln!("SKIP overlay_programs: needs root and /dev/fuse");
        return Ok(());
    }
    let Some(debian) = debian_tree() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let (upper, work) = (tmp.path().join("upper"), tmp.path().join("work"));
    {
        let m = LaminaMount::mount(
            std::slice::from_ref(&debian),
            Some((&upper, &work)),
            &tmp.path().join("mnt"),
        )?;
        let out = Command::new("chroot")
            .arg(&m.dir)
            .args(["dpkg", "-l"])
            .output()?;
        ensure!(
            out.status.success(),
            "dpkg -l failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list = String::from_utf8_lossy(&out.stdout);
        ensure!(
            list.contains("libc6") && list.contains("dpkg"),
            "dpkg -l lists no packages:\n{list}"
        );
        if m.dir.join("usr/bin/python3").exists() {
            let out = Command::new("chroot")
                .arg(&m.dir)
                .args([
                    "python3",
                    "-c",
                    "import os, sys; print([6 * 7, os.getcwd()])",
                ])
                .output()?;
            ensure!(
                out.status.success(),
                "python3 failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[42, '/']");
        } else {
            eprintln!(
                "note: no python3 in {}; python check skipped",
                debian.display()
            );
        }
        let st = Command::new("chroot")
            .arg(&m.dir)
            .args(["sh", "-c", "echo persisted > /root/note && mkdir -p /etc/lamina && cp /etc/hostname /etc/lamina/"])
            .status()?;
        ensure!(st.success(), "writing inside the chroot failed");
    }
    let m = LaminaMount::mount(
        std::slice::from_ref(&debian),
        Some((&upper, &work)),
        &tmp.path().join("mnt2"),
    )?;
    assert_eq!(
        std::fs::read_to_string(m.dir.join("root/note"))?,
        "persisted\n"
    );
    ensure!(m.dir.join("etc/lamina/hostname").exists());
    ensure!(
        !debian.join("root/note").exists(),
        "the lower layer must stay untouched"
    );
    Ok(())
}
