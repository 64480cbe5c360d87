//! podman as a peer of the overlay driver: podman's overlay storage driver
//! with `mount_program = lamina-overlayfs` pulls a lamina-made image from a
//! loopback registry and runs, changes and commits containers on mounts that
//! lamina's server makes.

use anyhow::{Context as _, Result, ensure};
use lamina_tests::archive::{assert_same_tree, lamina, snapshot};
use lamina_tests::podman::{Podman, lamina_layered_image, podman_available};
use lamina_tests::registry::{Auth, Registry};
use std::time::{Duration, Instant};

/// The pids of running `lamina-overlayfs` processes whose command line
/// mentions `needle`.
fn servers_mentioning(needle: &str) -> Vec<u32> {
    let exe = lamina_tests::bin("lamina-overlayfs");
    let exe = exe.to_string_lossy();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.starts_with(&*exe) && cmd.contains(needle)
        })
        .collect()
}

/// Mount point, fstype and source of each mount line.
fn parse_mounts(lines: &[String]) -> Vec<(String, String, String)> {
    lines
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some((
                f.get(4)?.to_string(),
                f.get(sep + 1)?.to_string(),
                f.get(sep + 2)?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn podman_runs_and_commits_containers_on_lamina_overlayfs() -> Result<()> {
    if !podman_available() {
        return Ok(());
    }
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return Ok(());
    };
    let store = tempfile::tempdir()?;
    let image = format!("{}/peers/small:1", reg.host);
    lamina_layered_image(store.path(), &image)?;
    lamina(store.path(), &["push", &image])?;

    let program = lamina_tests::bin("lamina-overlayfs");
    let p = Podman::new(Some(&program), Some(&reg.host))?;
    let info = p.ok(&["info", "--format", "{{json .Store.GraphOptions}}"])?;
    ensure!(
        info.contains(&*program.to_string_lossy()),
        "podman does not use lamina-overlayfs as mount_program: {info}"
    );
    p.ok(&["pull", "-q", &image])?;

    // A container reads files of both layers and writes one.
    let out = p.ok(&[
        "run",
        "--rm",
        &image,
        "/bin/sh",
        "-c",
        "cat /data/keep /data/new /opq/new; ls /opq; ls /data; \
         echo written > /written && cat /written; ls /usr/bin",
    ])?;
    ensure!(
        out.starts_with("kept\nwritten by lamina\nonly this\nnew\nkeep\nnew\nwritten\n"),
        "container view: {out}"
    );
    ensure!(
        !out.contains("touch"),
        "the whiteout of /usr/bin/touch hides it: {out}"
    );
    // A second container sees the image unchanged.
    let err = p.fails(&["run", "--rm", &image, "cat", "/written"])?;
    ensure!(err.contains("No such file"), "second container: {err}");

    // While a container runs, its root is a FUSE mount served by lamina.
    let id = p
        .ok(&["run", "-d", &image, "/bin/sleep", "60"])?
        .trim()
        .to_string();
    let merged: Vec<_> = parse_mounts(&p.mounts())
        .into_iter()
        .filter(|(m, _, _)| m.ends_with("/merged"))
        .collect();
    ensure!(merged.len() == 1, "one container root mount: {merged:?}");
    let (mnt, fstype, source) = &merged[0];
    ensure!(
        fstype.starts_with("fuse") && source == "lamina-overlayfs",
        "the container root is served by lamina-overlayfs: {merged:?}"
    );
    let servers = servers_mentioning(mnt);
    ensure!(servers.len() == 1, "one server for {mnt}: {servers:?}");
    let ps = p.ok(&["exec", &id, "/bin/sh", "-c", "cat /data/keep"])?;
    ensure!(ps == "kept\n", "exec in the running container: {ps}");
    p.ok(&["rm", "-f", "-t", "0", &id])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !servers_mentioning(mnt).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure!(
        servers_mentioning(mnt).is_empty(),
        "the server exits with its mount"
    );
    ensure!(
        !p.mounts().iter().any(|l| l.contains(mnt.as_str())),
        "the container root is unmounted"
    );

    // Commit a container that deleted a lower file and a lower dir and
    // wrote a file; the new image shows both.
    let cid = p
        .ok(&[
            "create",
            &image,
            "/bin/sh",
            "-c",
            "rm /data/keep && rm -r /opq && mkdir -p /data/more && echo committed > /data/more/c",
        ])?
        .trim()
        .to_string();
    p.ok(&["start", "-a", &cid])?;
    let committed = "localhost/peers/committed:1";
    p.ok(&["commit", "-q", &cid, committed])?;
    let out = p.ok(&[
        "run",
        "--rm",
        committed,
        "/bin/sh",
        "-c",
        "ls /; ls /data; cat /data/more/c /data/new",
    ])?;
    ensure!(
        !out.contains("keep") && !out.lines().any(|l| l == "opq"),
        "deletions committed: {out}"
    );
    ensure!(
        out.contains("committed\nwritten by lamina\n"),
        "write committed: {out}"
    );

    // podman's read-only image mount (lamina-overlayfs over podman's own
    // unpack of the layers) shows what lamina shows of the image.
    let pm = p.ok(&["image", "mount", &image])?.trim().to_string();
    let podman_view = snapshot(pm.as_ref());
    let _ = p.ok(&["image", "umount", &image]);
    let mnt = store.path().join("view");
    let m = mnt.to_string_lossy().into_owned();
    lamina(store.path(), &["mount", &image, &m])?;
    let lamina_view = snapshot(&mnt);
    lamina(store.path(), &["umount", &m])?;
    assert_same_tree(
        &lamina_view?,
        &podman_view.context("snapshot of podman's image mount")?,
        "podman image mount on lamina-overlayfs vs lamina's mount of the image",
    )
}
