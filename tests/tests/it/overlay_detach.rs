//! Background FUSE servers outlive their launcher's pipes: once `lamina
//! mount` / `lamina-overlayfs` has returned (and the pipes it read the
//! server's readiness and errors from are closed), the server keeps serving
//! and what it logs lands in its log file, up to its last line at unmount.

use anyhow::{Context as _, Result, ensure};
use lamina_tests::archive::{lamina, run};
use lamina_tests::overlay::fuse_available;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn alive(pid: u32) -> bool {
    // A zombie (not reaped by a reparented init) has no command line.
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    !alive(pid)
}

/// Runs a launcher with piped stdout/stderr until it exits (its pipes close).
fn launch(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .env("LAMINA_LOG", "info")
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn lamina_mount_server_logs_to_its_file_after_the_launcher_exits() -> Result<()> {
    if !fuse_available() {
        eprintln!("SKIP overlay_detach: needs root and /dev/fuse");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("store");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("hello"), "hello\n")?;
    let tar = tmp.path().join("src.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&tar)
        .arg("."))?;
    lamina(&root, &["import", &tar.to_string_lossy(), "test/detach:1"])?;
    let id = lamina(&root, &["create", "test/detach:1"])?
        .trim()
        .to_string();
    let mnt = tmp.path().join("mnt");
    launch(
        Command::new(lamina_tests::bin("lamina"))
            .arg("--root")
            .arg(&root)
            .args(["mount", &id])
            .arg(&mnt),
    )?;
    let rec = std::fs::read_dir(root.join("mounts"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .context("mount record")?;
    let log = rec.with_extension("log");
    let pid = serde_json::from_slice::<serde_json::Value>(&std::fs::read(&rec)?)?["pid"]
        .as_u64()
        .context("server pid")? as u32;
    // The launcher is gone; the server serves on.
    std::fs::write(mnt.join("after"), "written after the launcher exited\n")?;
    assert_eq!(std::fs::read_to_string(mnt.join("hello"))?, "hello\n");
    ensure!(alive(pid), "server {pid} is alive");
    ensure!(
        std::fs::metadata(&log)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o077 == 0)
            .unwrap_or(false),
        "the server's log {} exists and is private",
        log.display()
    );
    lamina(&root, &["umount", &mnt.to_string_lossy()])?;
    ensure!(wait_gone(pid), "server {pid} exits after umount");
    let text = read_log(&log);
    ensure!(
        text.contains("serving") && text.contains("unmounted; server exiting"),
        "the server logged to {} to its end: {text:?}",
        log.display()
    );
    let upper = root.join("containers").join(&id).join("upper");
    assert_eq!(
        std::fs::read_to_string(upper.join("after"))?,
        "written after the launcher exited\n"
    );
    Ok(())
}

#[test]
fn lamina_overlayfs_server_logs_to_its_file_after_the_launcher_exits() -> Result<()> {
    if !fuse_available() {
        eprintln!("SKIP overlay_detach: needs root and /dev/fuse");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let d = tmp.path();
    for sub in ["lower", "upper", "work", "mnt"] {
        std::fs::create_dir_all(d.join(sub))?;
    }
    std::fs::write(d.join("lower/f"), "lower\n")?;
    let log = d.join("server.log");
    let mnt = d.join("mnt");
    launch(
        Command::new(lamina_tests::bin("lamina-overlayfs"))
            .env("LAMINA_OVERLAYFS_LOG", &log)
            .arg("-o")
            .arg(format!(
                "lowerdir={},upperdir={},workdir={},fsync=0,some_future_option",
                d.join("lower").display(),
                d.join("upper").display(),
                d.join("work").display()
            ))
            .arg(&mnt),
    )?;
    std::fs::write(mnt.join("f"), "changed\n")?;
    let text = read_log(&log);
    let pid: u32 = text
        .split("(pid ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("the server logged its pid: {text:?}"))?;
    ensure!(alive(pid), "server {pid} is alive");
    rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::empty())?;
    ensure!(wait_gone(pid), "server {pid} exits after unmount");
    let text = read_log(&log);
    ensure!(
        text.contains("unmounted; server exiting"),
        "the server logged to its end: {text:?}"
    );
    assert_eq!(std::fs::read_to_string(d.join("upper/f"))?, "changed\n");
    Ok(())
}
