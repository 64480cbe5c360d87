//! `lamina create/ps/mount/umount/rm` end to end: a container mount is
//! read-write and persists across remounts, an image mount is read-only,
//! `umount` cleans up after a killed server with the upper dir intact, and
//! `--driver kernel` mounts the same layers with kernel overlayfs.

use anyhow::{Context as _, Result, ensure};
use lamina_tests::overlay::{fuse_available, kernel_overlay_available, run};
use std::path::{Path, PathBuf};
use std::process::Command;

fn lamina(root: &Path, args: &[&str]) -> Result<String> {
    let out = run(Command::new(lamina_tests::bin("lamina"))
        .arg("--root")
        .arg(root)
        .args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn lamina_err(root: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(lamina_tests::bin("lamina"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()?;
    ensure!(!out.status.success(), "lamina {args:?} should have failed");
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A store at `TMP/store` holding `image`: a tar of a tree whose only file
/// `etc/os` holds `os`, brought in with `lamina import`.
fn store_with_image(tmp: &Path, os: &str, image: &str) -> Result<PathBuf> {
    let root = tmp.join("store");
    let rootfs = tmp.join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc"))?;
    std::fs::write(rootfs.join("etc/os"), os)?;
    let tar = tmp.join("rootfs.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&rootfs)
        .arg("."))?;
    lamina(&root, &["import", tar.to_str().unwrap(), image])
        .context("lamina import (needed for this test)")?;
    Ok(root)
}

#[test]
fn container_mount_lifecycle() -> Result<()> {
    if !fuse_available() {
        eprintln!("SKIP overlay_cli: needs root and /dev/fuse");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let root = store_with_image(tmp.path(), "lamina-test\n", "test/cli:1")?;
    let root_s = root.to_str().unwrap();

    let id = lamina(&root, &["create", "test/cli:1", "--name", "web"])?
        .trim()
        .to_string();
    ensure!(id.len() == 64, "create prints the container id, got {id:?}");
    let ps: serde_json::Value = serde_json::from_str(&lamina(&root, &["ps", "--format", "json"])?)?;
    ensure!(
        ps[0]["id"] == id.as_str() && ps[0]["name"] == "web",
        "ps lists the container: {ps}"
    );

    let mnt = tmp.path().join("mnt");
    let m = mnt.to_str().unwrap();
    lamina(&root, &["mount", "web", m])?;
    assert_eq!(
        std::fs::read_to_string(mnt.join("etc/os"))?,
        "lamina-test\n"
    );
    std::fs::write(mnt.join("etc/os"), "changed\n")?;
    std::fs::write(mnt.join("new"), "new file\n")?;
    ensure!(
        lamina_err(&root, &["rm", "web"])?.contains("umount"),
        "rm refuses a mounted container"
    );
    lamina(&root, &["umount", m])?;
    ensure!(!mnt.join("new").exists(), "unmounted");

    // Remount: the writes persisted; then kill the server and clean up.
    lamina(&root, &["mount", &id[..12], m])?;
    assert_eq!(std::fs::read_to_string(mnt.join("etc/os"))?, "changed\n");
    let rec = std::fs::read_dir(root.join("mounts"))?
        .filter_map(|e| e.ok())
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        .context("mount record")?;
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(rec.path())?)?;
    let pid = rec["pid"].as_u64().context("server pid")?;
    run(Command::new("kill").arg("-9").arg(pid.to_string()))?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    lamina(&root, &["umount", m]).context("umount after the server died")?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    ensure!(!mounts.contains(m), "the dead mount is gone");
    let upper = root.join("containers").join(&id).join("upper");
    assert_eq!(
        std::fs::read_to_string(upper.join("new"))?,
        "new file\n",
        "upper dir intact"
    );

    // Image mounts are read-only.
    lamina(&root, &["mount", "test/cli:1", m])?;
    let err = std::fs::write(mnt.join("x"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    lamina(&root, &["umount", m])?;

    if kernel_overlay_available() {
        lamina(&root, &["mount", "web", m, "--driver", "kernel"])?;
        assert_eq!(std::fs::read_to_string(mnt.join("etc/os"))?, "changed\n");
        // redirect_dir=off: a lower dir cannot be renamed (no redirect xattr
        // in the upper dir); metacopy=off: a chmod copies the data up.
        let err = std::fs::rename(mnt.join("etc"), mnt.join("etc2")).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EXDEV),
            "rename of a lower dir"
        );
        lamina(&root, &["umount", m])?;
        lamina(&root, &["create", "test/cli:1", "--name", "k"])?;
        lamina(&root, &["mount", "k", m, "--driver", "kernel"])?;
        run(Command::new("chmod").arg("600").arg(mnt.join("etc/os")))?;
        lamina(&root, &["umount", m])?;
        let kid = lamina(&root, &["ps", "--format", "json"])?;
        let ps: serde_json::Value = serde_json::from_str(&kid)?;
        let kid = ps
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == "k"))
            .and_then(|c| c["id"].as_str())
            .context("container k in ps")?
            .to_string();
        let copied = root.join("containers").join(&kid).join("upper/etc/os");
        assert_eq!(
            std::fs::read_to_string(&copied)?,
            "lamina-test\n",
            "chmod copied the data up (no metacopy)"
        );
        lamina(&root, &["rm", "k"])?;
    }
    ensure!(
        lamina_err(&root, &["umount", m])?.contains("not mounted"),
        "umount of a plain dir fails"
    );
    lamina(&root, &["rm", "web"])?;
    ensure!(
        lamina(&root, &["ps"])?.lines().count() == 1,
        "rm removed the container"
    );
    let _ = root_s;
    Ok(())
}

/// An image mount keeps its layers from `rmi` + `gc`; after `umount`, gc
/// removes them.
#[test]
fn image_mount_survives_rmi_and_gc() -> Result<()> {
    if !fuse_available() {
        eprintln!("SKIP overlay_cli: needs root and /dev/fuse");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let root = store_with_image(tmp.path(), "kept\n", "test/kept:1")?;
    let layers = || -> Result<usize> {
        Ok(std::fs::read_dir(root.join("layers"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().len() == 64)
            .count())
    };
    ensure!(layers()? == 1, "one layer dir after import");

    let mnt = tmp.path().join("mnt");
    let m = mnt.to_str().unwrap();
    lamina(&root, &["mount", "test/kept:1", m])?;
    lamina(&root, &["rmi", "test/kept:1"])?;
    let gc: serde_json::Value = serde_json::from_str(&lamina(&root, &["gc", "--format", "json"])?)?;
    ensure!(layers()? == 1, "gc kept the layer of a mounted image: {gc}");
    assert_eq!(std::fs::read_to_string(mnt.join("etc/os"))?, "kept\n");
    lamina(&root, &["umount", m])?;
    lamina(&root, &["gc"])?;
    ensure!(layers()? == 0, "after umount, gc removed the layer");
    Ok(())
}
