//! Layer-over-layer semantics of unpack, checked on the layer dirs
//! themselves: whiteouts as 0/0 char devices, opaque xattrs, same-layer
//! rules, hardlinks into lower layers, directories a tar leaves implicit.

use anyhow::{Result, ensure};
use lamina_store::layers::unpack::{OPAQUE_XATTR, UnpackError, unpack};
use lamina_tests::unpack::{Entry, is_root, tar_of};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

fn opaque(p: &Path) -> bool {
    let mut buf = [0u8; 8];
    rustix::fs::lgetxattr(p, OPAQUE_XATTR, &mut buf[..]).is_ok_and(|n| &buf[..n] == b"y")
}

fn is_whiteout(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

#[test]
fn whiteouts_opaque_dirs_and_lower_hardlinks() -> Result<()> {
    if !is_root() {
        eprintln!(
            "SKIP whiteouts_opaque_dirs_and_lower_hardlinks: needs root (mknod, trusted.* xattrs, chown)"
        );
        return Ok(());
    }
    let tmp = tempfile::Builder::new()
        .prefix("lamina-unpack-layers-")
        .tempdir()?;
    let l0 = tmp.path().join("l0");
    let l1 = tmp.path().join("l1");
    let l2 = tmp.path().join("l2");
    for d in [&l0, &l1, &l2] {
        std::fs::create_dir(d)?;
    }
    unpack(
        &tar_of([
            Entry {
                mode: 0o750,
                uid: 7,
                gid: 8,
                mtime: 1_111_111_111,
                ..Entry::dir("a")
            },
            Entry::file("a/f", "lower f"),
            Entry::file("x", "x"),
            Entry::file("gone", "to be whited out"),
        ])[..],
        &l0,
        &[],
        "l0",
    )?;
    unpack(
        &tar_of([Entry::file(".wh.gone", "")])[..],
        &l1,
        &[l0.clone()],
        "l1",
    )?;
    let lowers: Vec<PathBuf> = vec![l1.clone(), l0.clone()];
    unpack(
        &tar_of([
            // No `a/` nor `a/b/` entry: implicit directories.
            Entry::file("a/b/g", "g"),
            Entry::hardlink("h", "a/f"),
            Entry::file(".wh.x", ""),
            Entry::file("a/.wh..wh..opq", ""),
            Entry::file("y", "same layer"),
            Entry::file(".wh.y", ""),
            Entry::dir("z"),
            Entry::file("z/in", "z"),
            Entry::file(".wh.z", ""),
            Entry::file(".wh.w", ""),
            Entry::dir("w"),
        ])[..],
        &l2,
        &lowers,
        "l2",
    )?;
    let a = std::fs::metadata(l2.join("a"))?;
    ensure!(
        (a.mode() & 0o7777, a.uid(), a.gid(), a.mtime()) == (0o750, 7, 8, 1_111_111_111),
        "implicit dir did not inherit the lower dir's metadata: {:o} {}:{} {}",
        a.mode(),
        a.uid(),
        a.gid(),
        a.mtime()
    );
    ensure!(std::fs::metadata(l2.join("a/b"))?.mode() & 0o7777 == 0o755);
    ensure!(
        std::fs::metadata(l2.join("h"))?.ino() == std::fs::metadata(l0.join("a/f"))?.ino(),
        "hardlink into l0"
    );
    ensure!(is_whiteout(&l1.join("gone")) && is_whiteout(&l2.join("x")));
    ensure!(opaque(&l2.join("a")), "a not opaque");
    ensure!(
        std::fs::read(l2.join("y"))? == b"same layer",
        "a whiteout hid a file of its own layer"
    );
    ensure!(
        opaque(&l2.join("z")) && std::fs::read(l2.join("z/in"))? == b"z",
        "same-layer dir + whiteout: opaque dir"
    );
    ensure!(
        opaque(&l2.join("w")) && std::fs::metadata(l2.join("w"))?.is_dir(),
        "whiteout then dir: opaque dir"
    );

    // A whiteout, then entries below the same name without a dir entry:
    // the dir is deleted and made again, so it is opaque.
    let l4 = tmp.path().join("l4");
    std::fs::create_dir(&l4)?;
    unpack(
        &tar_of([Entry::file(".wh.a", ""), Entry::file("a/new", "n")])[..],
        &l4,
        &lowers,
        "l4",
    )?;
    ensure!(
        opaque(&l4.join("a")) && std::fs::read(l4.join("a/new"))? == b"n",
        "whiteout then a/new"
    );

    // A hardlink to a file whited out in a nearer layer has no target.
    let l3 = tmp.path().join("l3");
    std::fs::create_dir(&l3)?;
    let r = unpack(
        &tar_of([Entry::hardlink("h2", "gone")])[..],
        &l3,
        &[l1.clone(), l0.clone()],
        "l3",
    );
    ensure!(matches!(r, Err(UnpackError::Rejected { .. })), "{r:?}");
    Ok(())
}

/// An input that never ends: a hostile entry followed by endless zeros.
struct Endless {
    head: std::io::Cursor<Vec<u8>>,
    served: u64,
}

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.head.read(buf)?;
        if n > 0 {
            return Ok(n);
        }
        self.served += buf.len() as u64;
        buf.fill(0);
        Ok(buf.len())
    }
}

#[test]
fn errors_return_without_reading_the_rest_of_the_stream() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut head = tar_of([Entry::file("../escape", "x")]);
    head.truncate(head.len() - 1024);
    // Not finishing the stream is the point: the error stops the reader.
    let r = unpack(
        Endless {
            head: std::io::Cursor::new(head),
            served: 0,
        },
        tmp.path(),
        &[],
        "endless",
    );
    ensure!(matches!(r, Err(UnpackError::Rejected { .. })), "{r:?}");
    Ok(())
}

/// Without CAP_SYS_ADMIN and CAP_MKNOD in the initial namespace (rootless),
/// opaque dirs keep the `.wh..wh..opq` marker, whiteouts are 0/0 devices
/// (which a user namespace may create) or `.wh.` markers, and real device
/// nodes are skipped.
#[test]
fn rootless_unpack_keeps_markers() -> Result<()> {
    let lamina = lamina_tests::bin("lamina");
    if !is_root() || !lamina.exists() || !lamina_tests::unpack::have("unshare") {
        eprintln!(
            "SKIP rootless_unpack_keeps_markers: needs root (to make a user namespace), unshare and the lamina binary"
        );
        return Ok(());
    }
    let tmp = tempfile::Builder::new()
        .prefix("lamina-unpack-rootless-")
        .tempdir()?;
    let layer = tmp.path().join("layer.tar");
    std::fs::write(
        &layer,
        tar_of([
            Entry::dir("d"),
            Entry::file("d/.wh..wh..opq", ""),
            Entry::file("d/f", "f"),
            Entry::file(".wh.gone", ""),
            Entry {
                dev: (1, 3),
                ..Entry::new(b'3', "null")
            },
            Entry::new(b'6', "fifo"),
        ]),
    )?;
    let root = tmp.path().join("root");
    let out = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user"])
        .arg(&lamina)
        .arg("--root")
        .arg(&root)
        .arg("import")
        .arg(&layer)
        .arg("rootless:latest")
        .output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("not implemented") {
            eprintln!("SKIP rootless_unpack_keeps_markers: lamina import not implemented yet");
            return Ok(());
        }
        anyhow::bail!("rootless import failed: {err}");
    }
    let layers: Vec<PathBuf> = std::fs::read_dir(root.join("layers"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("d").is_dir())
        .collect();
    ensure!(
        layers.len() == 1,
        "expected one layer dir, found {layers:?}"
    );
    let l = &layers[0];
    ensure!(l.join("d/.wh..wh..opq").is_file(), "opaque marker missing");
    ensure!(!opaque(&l.join("d")));
    ensure!(
        is_whiteout(&l.join("gone")) || l.join(".wh.gone").is_file(),
        "whiteout missing"
    );
    ensure!(
        std::fs::symlink_metadata(l.join("null")).is_err(),
        "device created without CAP_MKNOD?"
    );
    ensure!(
        std::fs::symlink_metadata(l.join("fifo"))?
            .file_type()
            .is_fifo()
    );
    Ok(())
}

/// A lower layer on another file system (tmpfs under /dev/shm): `link()`
/// fails with EXDEV and the hardlink becomes a copy with the same metadata.
#[test]
fn hardlink_to_a_lower_layer_on_another_fs_is_copied() -> Result<()> {
    let shm = Path::new("/dev/shm");
    if !is_root() || !shm.is_dir() {
        eprintln!(
            "SKIP hardlink_to_a_lower_layer_on_another_fs_is_copied: needs root and /dev/shm"
        );
        return Ok(());
    }
    let lower = tempfile::Builder::new()
        .prefix("lamina-unpack-lower-")
        .tempdir_in(shm)?;
    let upper = tempfile::Builder::new()
        .prefix("lamina-unpack-upper-")
        .tempdir()?;
    if std::fs::metadata(lower.path())?.dev() == std::fs::metadata(upper.path())?.dev() {
        eprintln!(
            "SKIP hardlink_to_a_lower_layer_on_another_fs_is_copied: /dev/shm is on the same fs"
        );
        return Ok(());
    }
    unpack(
        &tar_of([Entry {
            mode: 0o4711,
            uid: 3,
            gid: 4,
            mtime: 1_222_333_444,
            ..Entry::file("f", "lower content")
        }])[..],
        lower.path(),
        &[],
        "lower",
    )?;
    unpack(
        &tar_of([Entry::hardlink("h", "f")])[..],
        upper.path(),
        &[lower.path().to_path_buf()],
        "upper",
    )?;
    let m = std::fs::symlink_metadata(upper.path().join("h"))?;
    ensure!(std::fs::read(upper.path().join("h"))? == b"lower content");
    ensure!(
        (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()) == (0o4711, 3, 4, 1_222_333_444),
        "copy lost metadata: {:o} {}:{} {}",
        m.mode(),
        m.uid(),
        m.gid(),
        m.mtime()
    );
    Ok(())
}

/// A file 1000 directories deep (200 KB of path) with no directory entries:
/// the directories are made implicitly, through fds (the path is 50 times
/// PATH_MAX), and the file is there.
#[test]
fn very_deep_implicit_directories() -> Result<()> {
    use rustix::fs::{Mode, OFlags};
    let tmp = tempfile::tempdir()?;
    let comps: Vec<String> = (0..1000)
        .map(|i| format!("{i:04}{}", "d".repeat(196)))
        .collect();
    let name = format!("{}/leaf", comps.join("/"));
    unpack(
        &tar_of([Entry::file(&name, "deep")])[..],
        tmp.path(),
        &[],
        "deep",
    )?;
    let mut fd = rustix::fs::open(
        tmp.path(),
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )?;
    for c in &comps {
        fd = rustix::fs::openat(
            &fd,
            c.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            Mode::empty(),
        )?;
    }
    let leaf = rustix::fs::openat(
        &fd,
        "leaf",
        OFlags::RDONLY | OFlags::NOFOLLOW,
        Mode::empty(),
    )?;
    let mut s = String::new();
    std::fs::File::from(leaf).read_to_string(&mut s)?;
    ensure!(s == "deep");
    // Remove it with fds too (tempdir's recursive delete uses long paths).
    fn rm(dir: std::os::fd::BorrowedFd<'_>, name: &str) -> std::io::Result<()> {
        let sub = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            Mode::empty(),
        )?;
        let mut names = Vec::new();
        for e in rustix::fs::Dir::read_from(&sub)? {
            let n = e?.file_name().to_string_lossy().into_owned();
            if n != "." && n != ".." {
                names.push(n);
            }
        }
        for n in names {
            if rustix::fs::unlinkat(&sub, n.as_str(), rustix::fs::AtFlags::empty()).is_err() {
                rm(std::os::fd::AsFd::as_fd(&sub), &n)?;
            }
        }
        Ok(rustix::fs::unlinkat(
            dir,
            name,
            rustix::fs::AtFlags::REMOVEDIR,
        )?)
    }
    let root = rustix::fs::open(
        tmp.path(),
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )?;
    rm(std::os::fd::AsFd::as_fd(&root), &comps[0])?;
    Ok(())
}
