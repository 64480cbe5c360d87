//! Commit, save and export judged by peers: every kind of change made in a
//! container through a real overlay mount must come out of `lamina commit` +
//! `lamina save` exactly as the container showed it, once skopeo has copied
//! the archive (as docker-archive and as OCI archive) and umoci has unpacked
//! it; `lamina export` must give the same tree; and commits must stack.

use anyhow::{Context as _, Result, ensure};
use lamina_store::Store;
use lamina_tests::archive::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn prerequisites(test: &str) -> bool {
    for tool in ["skopeo", "umoci", "tar"] {
        if !have(tool) {
            eprintln!("SKIP {test}: `{tool}` is not installed (CI has it)");
            return false;
        }
    }
    if !kernel_overlay_available() {
        eprintln!("SKIP {test}: needs root and kernel overlayfs (CI has both)");
        return false;
    }
    true
}

/// The base image: something of every kind for the container to change.
fn base_rootfs(r: &Path) -> Result<()> {
    for d in [
        "etc/keep",
        "usr/bin",
        "var/lib/data",
        "var/cache/apt",
        "opt/app",
        "srv/old/deep",
        "home/u",
        "data",
        "tmp/opq/sub",
    ] {
        std::fs::create_dir_all(r.join(d))?;
    }
    std::fs::write(r.join("etc/hosts"), "127.0.0.1 localhost\n")?;
    std::fs::write(r.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n")?;
    std::fs::write(r.join("etc/keep/a"), "a")?;
    std::fs::write(r.join("usr/bin/tool"), "#!/bin/sh\necho tool\n")?;
    std::fs::hard_link(r.join("usr/bin/tool"), r.join("usr/bin/tool-alias"))?;
    std::fs::write(r.join("usr/bin/ping"), vec![0x7fu8; 3000])?;
    std::fs::write(r.join("var/lib/data/x"), "x")?;
    std::fs::write(r.join("var/cache/apt/pkg"), "pkg")?;
    std::fs::write(r.join("opt/app/main"), "main")?;
    std::fs::write(r.join("srv/old/deep/f"), "old")?;
    std::fs::write(r.join("home/u/notes"), "notes")?;
    std::fs::write(r.join("home/u/attr"), "attr")?;
    std::fs::write(r.join("data/big"), vec![b'b'; 200_000])?;
    std::fs::write(r.join("tmp/opq/sub/hidden"), "hidden")?;
    std::fs::write(r.join("tmp/opq/hidden2"), "hidden2")?;
    rustix::fs::chown(
        r.join("home/u/notes"),
        Some(rustix::fs::Uid::from_raw(1000)),
        Some(rustix::fs::Gid::from_raw(1000)),
    )?;
    Ok(())
}

/// Changes of every kind, made through the mounted container at `m`.
fn change_everything(m: &Path) -> Result<()> {
    use rustix::fs::FileType;
    // new, changed, deleted files and dirs
    std::fs::write(m.join("etc/hosts"), "10.0.0.1 changed\n")?;
    std::fs::write(m.join("etc/new.conf"), "new")?;
    rustix::fs::chown(
        m.join("etc/new.conf"),
        Some(rustix::fs::Uid::from_raw(1234)),
        Some(rustix::fs::Gid::from_raw(5678)),
    )?;
    std::fs::remove_file(m.join("etc/passwd"))?;
    std::fs::remove_dir_all(m.join("srv/old"))?;
    std::fs::create_dir_all(m.join("newdir/sub"))?;
    std::fs::write(m.join("newdir/sub/f"), "f")?;
    let long = "n".repeat(120);
    std::fs::write(m.join("newdir").join(&long), "long name")?;
    // a dir replaced by a file, and by a symlink
    std::fs::remove_dir_all(m.join("var/cache"))?;
    std::fs::write(m.join("var/cache"), "now a file")?;
    std::fs::remove_dir_all(m.join("opt/app"))?;
    std::os::unix::fs::symlink("/usr/bin", m.join("opt/app"))?;
    // hardlinks: to a lower file, and among new files
    std::fs::hard_link(m.join("data/big"), m.join("data/big-link"))?;
    std::fs::write(m.join("newdir/h1"), "shared")?;
    std::fs::hard_link(m.join("newdir/h1"), m.join("newdir/h2"))?;
    // xattrs and file capabilities (cap_net_raw+ep), on a new and on a lower file
    std::fs::write(m.join("newdir/capbin"), "cap")?;
    let cap = [
        1u8, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    setxattr(&m.join("newdir/capbin"), "security.capability", &cap)?;
    setxattr(&m.join("usr/bin/ping"), "security.capability", &cap)?;
    setxattr(&m.join("home/u/attr"), "user.comment", b"on a lower file")?;
    setxattr(&m.join("newdir/sub/f"), "user.bin", b"\x00\x01binary\xff")?;
    // chmod-only change of a lower file, and of a dir
    std::fs::set_permissions(
        m.join("home/u/notes"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    std::fs::set_permissions(
        m.join("etc/keep"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    // devices, fifos and a sparse file
    std::fs::create_dir_all(m.join("dev"))?;
    mknod(&m.join("dev/null"), FileType::CharacterDevice, 0o666, 1, 3)?;
    mknod(&m.join("dev/loop9"), FileType::BlockDevice, 0o660, 7, 9)?;
    mknod(&m.join("dev/pipe"), FileType::Fifo, 0o644, 0, 0)?;
    sparse_file(
        &m.join("data/sparse"),
        64 << 20,
        &[
            (0, b"head"),
            (20 << 20, b"middle"),
            ((64 << 20) - 4, b"tail"),
        ],
    )?;
    sparse_file(&m.join("data/holey-end"), 8 << 20, &[(4096, b"x")])?;
    // an opaque dir: remove a lower dir and make it again
    std::fs::remove_dir_all(m.join("tmp/opq"))?;
    std::fs::create_dir(m.join("tmp/opq"))?;
    std::fs::write(m.join("tmp/opq/fresh"), "fresh")?;
    Ok(())
}

struct Env {
    _tmp: tempfile::TempDir,
    work: PathBuf,
    root: PathBuf,
}

fn env() -> Result<Env> {
    let tmp = tempfile::Builder::new()
        .prefix("lamina-archive-")
        .tempdir()?;
    let work = tmp.path().to_path_buf();
    let root = work.join("store");
    Ok(Env {
        _tmp: tmp,
        work,
        root,
    })
}

/// Builds the base image with umoci and loads it with `lamina load` from a
/// skopeo docker-archive. Returns the image name.
fn load_base(e: &Env) -> Result<String> {
    let layout = umoci_image(&e.work, "base", base_rootfs)?;
    let tar = e.work.join("base.tar");
    skopeo_copy(
        &format!("oci:{}:base", layout.display()),
        &format!("docker-archive:{}:localhost/base:1", tar.display()),
    )?;
    let out = lamina(&e.root, &["load", "-i", tar.to_str().unwrap()])?;
    ensure!(out.contains("localhost/base:1"), "load said {out:?}");
    Ok("localhost/base:1".into())
}

/// Creates a container of `image`, mounts it with kernel overlayfs, applies
/// `change` and returns (container id, snapshot of the container's view).
fn container_with_changes(
    e: &Env,
    image: &str,
    tag: &str,
    change: impl FnOnce(&Path) -> Result<()>,
) -> Result<(String, Tree)> {
    let store = Store::open(&e.root)?;
    let c = store.create_container(image, None)?;
    let lowers = store.container_layer_dirs(&c)?;
    drop(store);
    let mnt = e.work.join(format!("mnt-{tag}"));
    let m = OverlayMount::mount(&lowers, Some((&c.upper_dir(), &c.work_dir())), &mnt)?;
    change(&m.dir)?;
    let view = snapshot(&m.dir)?;
    drop(m);
    Ok((c.id, view))
}

/// Saves `image`, then checks that skopeo (both transports) + umoci give `expected`.
fn peers_see(e: &Env, image: &str, expected: &Tree, tag: &str) -> Result<()> {
    let saved = e.work.join(format!("saved-{tag}.tar"));
    lamina(&e.root, &["save", image, "-o", saved.to_str().unwrap()])?;
    for transport in ["docker-archive", "oci-archive"] {
        let layout = e.work.join(format!("peer-{tag}-{transport}"));
        skopeo_copy(
            &format!("{transport}:{}", saved.display()),
            &format!("oci:{}:t", layout.display()),
        )
        .with_context(|| format!("skopeo reading lamina's save as {transport}"))?;
        let rootfs = umoci_unpack(
            &layout,
            "t",
            &e.work.join(format!("bundle-{tag}-{transport}")),
        )?;
        assert_same_tree(
            expected,
            &snapshot(&rootfs)?,
            &format!("{transport} of {image} via skopeo+umoci vs the container"),
        )?;
    }
    Ok(())
}

/// `lamina export TARGET` extracted equals `expected`.
fn export_is(e: &Env, target: &str, expected: &Tree, tag: &str) -> Result<()> {
    let tar = e.work.join(format!("export-{tag}.tar"));
    lamina(&e.root, &["export", target, "-o", tar.to_str().unwrap()])?;
    let dir = e.work.join(format!("export-{tag}"));
    extract_tar(&tar, &dir)?;
    assert_same_tree(
        expected,
        &snapshot(&dir)?,
        &format!("export of {target} vs the container"),
    )
}

#[test]
fn every_kind_of_change_survives_commit_save_skopeo_umoci() -> Result<()> {
    if !prerequisites("every_kind_of_change_survives_commit_save_skopeo_umoci") {
        return Ok(());
    }
    let e = env()?;
    let base = load_base(&e)?;
    let (cid, view) = container_with_changes(&e, &base, "c1", change_everything)?;
    // The view to compare against really holds the changes.
    for p in [
        "etc/new.conf",
        "data/sparse",
        "data/big-link",
        "dev/null",
        "dev/pipe",
        "opt/app",
        "tmp/opq/fresh",
    ] {
        ensure!(view.nodes.contains_key(p), "container view lacks {p}");
    }
    ensure!(
        !view.nodes.contains_key("etc/passwd") && !view.nodes.contains_key("tmp/opq/hidden2"),
        "deletions not visible"
    );
    ensure!(
        view.nodes["newdir/capbin"]
            .xattrs
            .iter()
            .any(|(k, _)| k == "security.capability"),
        "no capability"
    );
    ensure!(
        view.hardlinks
            .iter()
            .any(|g| g.contains(&"data/big-link".to_string())),
        "no hardlink group"
    );

    let diff = lamina(&e.root, &["diff", &cid])?;
    for line in [
        "C /etc",
        "C /etc/hosts",
        "A /etc/new.conf",
        "D /etc/passwd",
        "D /srv/old",
        "A /newdir",
        "A /newdir/sub/f",
        "C /var/cache",
        "C /opt/app",
        "A /data/big-link",
        "C /home/u/notes",
        "A /dev/null",
        "A /data/sparse",
        "C /tmp/opq",
        "D /tmp/opq/hidden2",
        "A /tmp/opq/fresh",
    ] {
        ensure!(
            diff.lines().any(|l| l == line),
            "`lamina diff` lacks {line:?}:\n{diff}"
        );
    }
    ensure!(
        !diff.lines().any(|l| l.ends_with("/etc/keep/a")),
        "unchanged lower file reported:\n{diff}"
    );

    let id = lamina(
        &e.root,
        &[
            "commit",
            &cid,
            "localhost/committed:1",
            "-m",
            "every change",
            "--author",
            "tester",
        ],
    )?;
    ensure!(id.trim().starts_with("sha256:"), "commit printed {id:?}");
    let hist = {
        let store = Store::open(&e.root)?;
        let img = store.image("localhost/committed:1")?;
        let (cfg, _) = store.config(&img.config_digest)?;
        ensure!(
            img.layers.len() == 2,
            "committed image has {} layers",
            img.layers.len()
        );
        cfg.history
    };
    let last = hist.last().context("no history")?;
    ensure!(
        last.created_by.as_deref() == Some("lamina commit"),
        "{last:?}"
    );
    ensure!(
        last.comment.as_deref() == Some("every change") && last.author.as_deref() == Some("tester"),
        "{last:?}"
    );

    peers_see(&e, "localhost/committed:1", &view, "c1")?;
    export_is(&e, &cid, &view, "container")?;
    export_is(&e, "localhost/committed:1", &view, "image")?;
    Ok(())
}

#[test]
fn commits_stack_and_reproduce() -> Result<()> {
    if !prerequisites("commits_stack_and_reproduce") {
        return Ok(());
    }
    let e = env()?;
    let base = load_base(&e)?;
    let (c1, _) = container_with_changes(&e, &base, "s1", |m| {
        std::fs::write(m.join("etc/hosts"), "first")?;
        std::fs::create_dir_all(m.join("app"))?;
        std::fs::write(m.join("app/v1"), "v1")?;
        sparse_file(&m.join("app/sparse"), 32 << 20, &[(1 << 20, b"data")])?;
        Ok(())
    })?;
    lamina(&e.root, &["commit", &c1, "localhost/stack:1"])?;
    // The committed layer is mountable: a container of it sees the first change.
    let (c2, view2) = container_with_changes(&e, "localhost/stack:1", "s2", |m| {
        ensure!(
            std::fs::read_to_string(m.join("etc/hosts"))? == "first",
            "commit 1 not visible"
        );
        ensure!(
            std::fs::read(m.join("app/sparse"))?.len() == 32 << 20,
            "sparse file size lost"
        );
        std::fs::remove_file(m.join("app/v1"))?;
        std::fs::write(m.join("app/v2"), "v2")?;
        std::fs::write(m.join("etc/hosts"), "second")?;
        Ok(())
    })?;
    let diff = lamina(&e.root, &["diff", &c2])?;
    ensure!(
        diff.contains("D /app/v1") && diff.contains("A /app/v2") && diff.contains("C /etc/hosts"),
        "{diff}"
    );
    lamina(&e.root, &["commit", &c2, "localhost/stack:2"])?;
    {
        let store = Store::open(&e.root)?;
        let img = store.image("localhost/stack:2")?;
        ensure!(
            img.layers.len() == 3,
            "stacked image has {} layers",
            img.layers.len()
        );
    }
    peers_see(&e, "localhost/stack:2", &view2, "s2")?;
    export_is(&e, "localhost/stack:2", &view2, "stack2")?;

    // Reproducible: committing the same upper again gives the same layer blob.
    lamina(&e.root, &["commit", &c2, "localhost/stack:2again"])?;
    let store = Store::open(&e.root)?;
    let a = store.image("localhost/stack:2")?;
    let b = store.image("localhost/stack:2again")?;
    ensure!(
        a.layers.last().map(|l| &l.digest) == b.layers.last().map(|l| &l.digest),
        "same upper, different layer digest"
    );
    Ok(())
}

#[test]
fn several_images_share_blobs_in_one_save() -> Result<()> {
    if !prerequisites("several_images_share_blobs_in_one_save") {
        return Ok(());
    }
    let e = env()?;
    let base = load_base(&e)?;
    let (c1, view) =
        container_with_changes(&e, &base, "m1", |m| Ok(std::fs::write(m.join("one"), "1")?))?;
    lamina(&e.root, &["commit", &c1, "localhost/multi:one"])?;
    let saved = e.work.join("multi.tar");
    lamina(
        &e.root,
        &[
            "save",
            &base,
            "localhost/multi:one",
            "-o",
            saved.to_str().unwrap(),
        ],
    )?;
    let list = run(Command::new("tar").arg("-tf").arg(&saved))?;
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    let blobs: Vec<&str> = list
        .lines()
        .filter(|l| l.starts_with("blobs/sha256/") && l.len() > 13)
        .collect();
    let mut uniq = blobs.clone();
    uniq.sort();
    uniq.dedup();
    ensure!(uniq.len() == blobs.len(), "a blob is stored twice:\n{list}");
    // base: manifest+config+1 layer; multi: manifest+config+1 more layer (the base layer is shared)
    ensure!(
        blobs.len() == 6,
        "expected 6 blobs, got {}:\n{list}",
        blobs.len()
    );
    // skopeo picks each image out of the one archive by name.
    let layout = e.work.join("pick");
    skopeo_copy(
        &format!("docker-archive:{}:localhost/multi:one", saved.display()),
        &format!("oci:{}:t", layout.display()),
    )?;
    let rootfs = umoci_unpack(&layout, "t", &e.work.join("pick-bundle"))?;
    assert_same_tree(
        &view,
        &snapshot(&rootfs)?,
        "second image of a two-image save",
    )?;
    // and lamina loads both back into a fresh store
    let root2 = e.work.join("store2");
    let out = lamina(&root2, &["load", "-i", saved.to_str().unwrap()])?;
    ensure!(
        out.contains("localhost/base:1") && out.contains("localhost/multi:one"),
        "{out}"
    );
    Ok(())
}

#[test]
fn every_kind_of_change_through_a_lamina_mount_survives_commit_and_save() -> Result<()> {
    let test = "every_kind_of_change_through_a_lamina_mount_survives_commit_and_save";
    if !prerequisites(test) {
        return Ok(());
    }
    if !Path::new("/dev/fuse").exists() {
        eprintln!("SKIP {test}: /dev/fuse is missing (CI has it)");
        return Ok(());
    }
    let e = env()?;
    let base = load_base(&e)?;
    let cid = lamina(&e.root, &["create", &base])?.trim().to_string();
    let mnt = e.work.join("lamina-mnt");
    lamina(&e.root, &["mount", &cid, mnt.to_str().unwrap()])?;
    let changed = change_everything(&mnt).and_then(|()| snapshot(&mnt));
    lamina(&e.root, &["umount", mnt.to_str().unwrap()])?;
    let view = changed?;
    // What the FUSE driver left in the upper dir reads the same through kernel overlayfs.
    {
        let store = Store::open(&e.root)?;
        let c = store.container(&cid)?;
        let lowers = store.container_layer_dirs(&c)?;
        drop(store);
        let k = OverlayMount::mount(
            &lowers,
            Some((&c.upper_dir(), &c.work_dir())),
            &e.work.join("kernel-mnt"),
        )?;
        assert_same_tree(
            &view,
            &snapshot(&k.dir)?,
            "lamina mount vs kernel overlayfs over the same upper",
        )?;
    }
    lamina(&e.root, &["commit", &cid, "localhost/fuse-committed:1"])?;
    peers_see(&e, "localhost/fuse-committed:1", &view, "fuse")?;
    export_is(&e, &cid, &view, "fuse-container")?;
    Ok(())
}
