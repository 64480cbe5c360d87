//! podman as the judge of lamina's archives, both ways: `lamina save` read
//! by `podman load` and by podman's `docker-archive:` and `oci-archive:`
//! transports; `podman save` (docker-archive and oci-archive) read by
//! `lamina load`. The images have two layers, the top one with whiteouts of
//! a file and of a dir and an opaque dir. "Same image" means the same image
//! id (config digest) and the same tree: podman's own unpack (`podman image
//! mount`, podman's kernel overlay driver) against lamina's mount.

use anyhow::{Context as _, Result, ensure};
use lamina_tests::archive::{Tree, assert_same_tree, lamina, snapshot};
use lamina_tests::podman::{Podman, lamina_layered_image, podman_available, small_rootfs_tar};
use std::path::Path;

/// lamina's read-only mount of `image` in `store`, snapshotted.
fn lamina_view(store: &Path, image: &str) -> Result<Tree> {
    let mnt = tempfile::Builder::new()
        .prefix("lamina-podman-view-")
        .tempdir()?;
    let m = mnt.path().join("m");
    let ms = m.to_string_lossy().into_owned();
    lamina(store, &["mount", image, &ms])?;
    let view = snapshot(&m);
    lamina(store, &["umount", &ms])?;
    view.with_context(|| format!("snapshot of lamina's mount of {image}"))
}

/// podman's unpack of the only image it has, snapshotted; its id.
fn podman_view(p: &Podman) -> Result<(Tree, String)> {
    let ids = p.ok(&["images", "-q", "--no-trunc"])?;
    let ids: Vec<&str> = ids.lines().collect();
    ensure!(ids.len() == 1, "podman has one image: {ids:?}");
    let id = ids[0].trim_start_matches("sha256:").to_string();
    let dir = p.ok(&["image", "mount", &id])?.trim().to_string();
    let view = snapshot(dir.as_ref());
    p.ok(&["image", "umount", &id])?;
    Ok((view.context("snapshot of podman's image mount")?, id))
}

/// The config digest (hex) of `image` in a lamina store.
fn lamina_id(store: &Path, image: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(&lamina(store, &["inspect", image])?)?;
    let id = v["id"]
        .as_str()
        .or_else(|| v[0]["id"].as_str())
        .with_context(|| format!("no id in lamina inspect: {v}"))?;
    Ok(id.trim_start_matches("sha256:").to_string())
}

/// What `podman run` shows of the layered image.
fn podman_runs_layered(p: &Podman, id: &str) -> Result<()> {
    let out = p.ok(&[
        "run",
        "--rm",
        id,
        "/bin/sh",
        "-c",
        "cat /data/keep /data/new /opq/new; ls /data; ls /opq; ls /usr/bin",
    ])?;
    ensure!(
        out.starts_with("kept\nwritten by lamina\nonly this\nkeep\nnew\nnew\n"),
        "podman run of the loaded image: {out}"
    );
    ensure!(!out.contains("touch"), "whiteout of a file: {out}");
    Ok(())
}

#[test]
fn podman_reads_lamina_save_in_both_forms() -> Result<()> {
    if !podman_available() {
        return Ok(());
    }
    let store = tempfile::tempdir()?;
    let image = "localhost/peers/saved:1";
    lamina_layered_image(store.path(), image)?;
    let want = lamina_view(store.path(), image)?;
    let want_id = lamina_id(store.path(), image)?;
    let tar = store.path().join("saved.tar");
    let tars = tar.to_string_lossy().into_owned();
    lamina(store.path(), &["save", image, "-o", &tars])?;

    let p = Podman::new(None, None)?;
    for how in ["load", "docker-archive:", "oci-archive:"] {
        if how == "load" {
            let out = p.ok(&["load", "-i", &tars])?;
            ensure!(out.contains(image), "podman load names the image: {out}");
        } else {
            p.ok(&["pull", "-q", &format!("{how}{tars}")])?;
        }
        let (got, id) = podman_view(&p).with_context(|| format!("after podman {how}"))?;
        ensure!(
            id == want_id,
            "podman {how}: image id {id}, lamina's {want_id}"
        );
        assert_same_tree(
            &want,
            &got,
            &format!("lamina's view vs podman's unpack after podman {how}"),
        )?;
        podman_runs_layered(&p, &id)?;
        p.ok(&["rmi", "-af"])?;
    }
    Ok(())
}

#[test]
fn lamina_loads_podman_save_in_both_formats() -> Result<()> {
    if !podman_available() {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let tar = small_rootfs_tar(work.path())?;
    // podman makes the image: an imported base, then a committed layer with
    // whiteouts of a file and a dir, an opaque dir and a new file.
    let p = Podman::new(None, None)?;
    p.ok(&[
        "import",
        "-q",
        &tar.to_string_lossy(),
        "localhost/peers/base:1",
    ])?;
    let cid = p
        .ok(&[
            "create",
            "localhost/peers/base:1",
            "/bin/sh",
            "-c",
            "rm /usr/bin/touch && rm -r /data/gone /opq && mkdir /opq && \
             echo only this > /opq/new && echo written by podman > /data/new",
        ])?
        .trim()
        .to_string();
    p.ok(&["start", "-a", &cid])?;
    let image = "localhost/peers/podman:1";
    p.ok(&["commit", "-q", &cid, image])?;
    p.ok(&["rm", &cid])?;
    p.ok(&["rmi", "localhost/peers/base:1"])?;
    let (want, want_id) = podman_view(&p)?;
    ensure!(
        want.nodes.contains_key("data/new")
            && !want.nodes.contains_key("usr/bin/touch")
            && !want.nodes.contains_key("data/gone")
            && !want.nodes.contains_key("opq/old"),
        "fixture sanity: podman's image has the changes"
    );

    for format in ["docker-archive", "oci-archive"] {
        let saved = work.path().join(format!("{format}.tar"));
        let saved = saved.to_string_lossy().into_owned();
        p.ok(&["save", "-q", "--format", format, "-o", &saved, image])?;
        let store = tempfile::tempdir()?;
        let out = lamina(store.path(), &["load", "-i", &saved])?;
        ensure!(out.contains(image), "lamina load names the image: {out}");
        let id = lamina_id(store.path(), image)?;
        ensure!(
            id == want_id,
            "{format}: lamina's image id {id}, podman's {want_id}"
        );
        let layers = lamina(store.path(), &["layers", image])?;
        ensure!(
            layers
                .lines()
                .skip(1)
                .filter(|l| !l.trim().is_empty())
                .count()
                >= 2,
            "{format}: both layers loaded: {layers}"
        );
        assert_same_tree(
            &want,
            &lamina_view(store.path(), image)?,
            &format!("podman's unpack vs lamina's view after lamina load of podman's {format}"),
        )?;
    }
    Ok(())
}
