//! `lamina load` reads what skopeo writes (docker-archive and OCI archive),
//! and the loaded image's tree — mounted from its layer dirs with kernel
//! overlayfs, and exported — equals umoci's unpack of the same image.

use anyhow::{Result, ensure};
use lamina_store::Store;
use lamina_tests::archive::*;
use std::path::Path;

/// A two-layer image made with umoci: the second layer deletes, replaces
/// and adds (so whiteouts and opaque dirs cross the load).
fn two_layer_image(work: &Path) -> Result<std::path::PathBuf> {
    let layout = umoci_image(work, "two", |r| {
        for d in ["etc", "usr/share/doc/a", "usr/lib"] {
            std::fs::create_dir_all(r.join(d))?;
        }
        std::fs::write(r.join("etc/os-release"), "ID=test\n")?;
        std::fs::write(r.join("usr/share/doc/a/README"), "doc")?;
        std::fs::write(r.join("usr/lib/libx.so"), vec![1u8; 50_000])?;
        std::fs::hard_link(r.join("usr/lib/libx.so"), r.join("usr/lib/libx.so.1"))?;
        std::os::unix::fs::symlink("libx.so", r.join("usr/lib/libx.so.2"))?;
        Ok(())
    })?;
    // Second layer: a fresh unpack (repack diffs against the unpacked state), changed, repacked.
    let bundle = work.join("bundle-two-again");
    let image = format!("{}:two", layout.display());
    run(std::process::Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    let r = bundle.join("rootfs");
    std::fs::remove_dir_all(r.join("usr/share/doc"))?;
    std::fs::write(r.join("etc/os-release"), "ID=test2\n")?;
    std::fs::write(r.join("etc/added"), "added")?;
    setxattr(&r.join("etc/added"), "user.x", b"y")?;
    run(std::process::Command::new("umoci")
        .args(["repack", "--image", &format!("{}:two", layout.display())])
        .arg(&bundle))?;
    Ok(layout)
}

#[test]
fn loads_what_skopeo_saves_and_the_tree_equals_umoci_unpack() -> Result<()> {
    for tool in ["skopeo", "umoci", "tar"] {
        if !have(tool) {
            eprintln!("SKIP loads_what_skopeo_saves: `{tool}` is not installed (CI has it)");
            return Ok(());
        }
    }
    if !kernel_overlay_available() {
        eprintln!("SKIP loads_what_skopeo_saves: needs root and kernel overlayfs (CI has both)");
        return Ok(());
    }
    let tmp = tempfile::Builder::new().prefix("lamina-load-").tempdir()?;
    let work = tmp.path();
    let layout = two_layer_image(work)?;
    let reference = snapshot(&umoci_unpack(&layout, "two", &work.join("ref-bundle"))?)?;
    let src = format!("oci:{}:two", layout.display());
    let cases = [
        (
            "docker-archive",
            format!(
                "docker-archive:{}:localhost/loaded:d",
                work.join("d.tar").display()
            ),
            "localhost/loaded:d",
        ),
        (
            "oci-archive",
            format!(
                "oci-archive:{}:localhost/loaded:o",
                work.join("o.tar").display()
            ),
            "localhost/loaded:o",
        ),
    ];
    let root = work.join("store");
    for (kind, dest, name) in &cases {
        skopeo_copy(&src, dest)?;
        let file = dest.split(':').nth(1).unwrap();
        let out = lamina(&root, &["load", "-i", file])?;
        ensure!(out.contains(name), "{kind}: load printed {out:?}");
        let store = Store::open(&root)?;
        let img = store.image(name)?;
        ensure!(img.layers.len() == 2, "{kind}: {} layers", img.layers.len());
        let dirs = store.image_layer_dirs(&img)?;
        drop(store);
        let m = OverlayMount::mount(&dirs, None, &work.join(format!("mnt-{kind}")))?;
        assert_same_tree(
            &reference,
            &snapshot(&m.dir)?,
            &format!("{kind}: loaded image mounted vs umoci unpack"),
        )?;
        drop(m);
        if std::path::Path::new("/dev/fuse").exists() {
            // And through lamina's own (FUSE) read-only image mount.
            let fm = work.join(format!("fuse-{kind}"));
            lamina(&root, &["mount", name, fm.to_str().unwrap()])?;
            let seen = snapshot(&fm);
            lamina(&root, &["umount", fm.to_str().unwrap()])?;
            assert_same_tree(
                &reference,
                &seen?,
                &format!("{kind}: `lamina mount` of the loaded image vs umoci unpack"),
            )?;
        } else {
            eprintln!("note: /dev/fuse missing, `lamina mount` comparison skipped (CI has it)");
        }
        let tar = work.join(format!("export-{kind}.tar"));
        lamina(&root, &["export", name, "-o", tar.to_str().unwrap()])?;
        let dir = work.join(format!("export-{kind}"));
        extract_tar(&tar, &dir)?;
        assert_same_tree(
            &reference,
            &snapshot(&dir)?,
            &format!("{kind}: export vs umoci unpack"),
        )?;
    }
    Ok(())
}

#[test]
fn loads_old_docker_layout_with_layer_dirs() -> Result<()> {
    // The pre-25 `docker save` layout: <id>/layer.tar, <id>/json, <config hex>.json,
    // manifest.json with those paths, repositories; a shared layer as a symlink.
    let tmp = tempfile::Builder::new()
        .prefix("lamina-oldload-")
        .tempdir()?;
    let work = tmp.path();
    let layer = {
        let mut tw = lamina_store::archive::tar::TarWriter::new(Vec::new());
        let mut h = lamina_store::archive::tar::Header::simple(
            "hello.txt",
            lamina_store::archive::tar::Kind::File { size: 5 },
        );
        h.mode = 0o644;
        tw.append(&h)?;
        tw.write_data(b"hello")?;
        tw.finish()?
    };
    let diff_id = lamina_store::Digest::of(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id.as_str(), diff_id.as_str()]},
        "history": [{"created_by": "a"}, {"created_by": "b"}],
    }))?;
    let cfg_digest = lamina_store::Digest::of(&config);
    let l1 = "1".repeat(64);
    let l2 = "2".repeat(64);
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("{}.json", cfg_digest.hex()),
        "RepoTags": ["old/layout:v1"],
        "Layers": [format!("{l1}/layer.tar"), format!("{l2}/layer.tar")],
    }]))?;
    let mut tw = lamina_store::archive::tar::TarWriter::new(Vec::new());
    let file = |tw: &mut lamina_store::archive::tar::TarWriter<Vec<u8>>,
                name: &str,
                data: &[u8]|
     -> Result<()> {
        tw.append(&lamina_store::archive::tar::Header::simple(
            name,
            lamina_store::archive::tar::Kind::File {
                size: data.len() as u64,
            },
        ))?;
        tw.write_data(data)?;
        Ok(())
    };
    file(&mut tw, &format!("{l1}/layer.tar"), &layer)?;
    file(&mut tw, &format!("{l1}/json"), b"{}")?;
    file(&mut tw, &format!("{l1}/VERSION"), b"1.0")?;
    tw.append(&lamina_store::archive::tar::Header::simple(
        format!("{l2}/layer.tar"),
        lamina_store::archive::tar::Kind::Symlink(format!("../{l1}/layer.tar").into_bytes()),
    ))?;
    file(&mut tw, &format!("{}.json", cfg_digest.hex()), &config)?;
    file(&mut tw, "manifest.json", &manifest)?;
    file(&mut tw, "repositories", br#"{"old/layout":{"v1":"2222"}}"#)?;
    let archive = work.join("old.tar");
    std::fs::write(&archive, tw.finish()?)?;
    let root = work.join("store");
    let out = lamina(&root, &["load", "-i", archive.to_str().unwrap()])?;
    ensure!(out.contains("docker.io/old/layout:v1"), "{out}");
    let store = Store::open(&root)?;
    let img = store.image("old/layout:v1")?;
    ensure!(
        img.layers.len() == 2
            && img.layers[0].media_type == "application/vnd.oci.image.layer.v1.tar",
        "{img:?}"
    );
    let dirs = store.image_layer_dirs(&img)?;
    ensure!(
        std::fs::read(dirs[1].join("hello.txt"))? == b"hello",
        "layer content"
    );
    Ok(())
}
