//! Fixtures for the archive tests (commit, save, load, export, diff): tree
//! snapshots (from [`crate::tree`]) to compare what peers unpack with what a
//! container shows, a kernel overlayfs mount of a container, and wrappers
//! around the `lamina`, `skopeo` and `umoci` command lines.

use anyhow::{Context as _, Result, ensure};
use std::path::{Path, PathBuf};
use std::process::Command;

pub use crate::overlay::{have, is_root, kernel_overlay_available, run};

/// Runs `lamina --root ROOT ARGS...`, failing unless it succeeds; returns stdout.
pub fn lamina(root: &Path, args: &[&str]) -> Result<String> {
    let out = run(Command::new(crate::bin("lamina"))
        .arg("--root")
        .arg(root)
        .args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `lamina --root ROOT ARGS...` expecting failure; returns stderr.
pub fn lamina_fails(root: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(crate::bin("lamina"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()?;
    ensure!(
        !out.status.success(),
        "lamina {args:?} succeeded but should have failed"
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A tree snapshot (see [`crate::tree`]).
pub use crate::tree::Snapshot as Tree;

/// Snapshots the tree under `root` with [`crate::tree`]'s default options
/// (nanosecond mtimes of everything but dirs, xattrs, hardlink groups).
pub fn snapshot(root: &Path) -> Result<Tree> {
    crate::tree::snapshot(root, crate::tree::Options::default())
}

/// Fails with a readable list of differences unless the trees are equal.
pub fn assert_same_tree(expected: &Tree, actual: &Tree, what: &str) -> Result<()> {
    crate::tree::assert_same(expected, actual, what)
}

/// A kernel overlayfs mount, unmounted on drop.
pub struct OverlayMount {
    /// Where it is mounted.
    pub dir: PathBuf,
}

impl OverlayMount {
    /// Mounts `lowers` (bottom-most first) with an optional (upper, work) pair at `dir`.
    pub fn mount(
        lowers: &[PathBuf],
        upper: Option<(&Path, &Path)>,
        dir: &Path,
    ) -> Result<OverlayMount> {
        if lowers.len() == 1 && upper.is_none() {
            // overlayfs needs two layers without an upper; bind-mount one read-only instead.
            std::fs::create_dir_all(dir)?;
            run(Command::new("mount")
                .args(["--bind", "-o", "ro"])
                .arg(&lowers[0])
                .arg(dir))?;
        } else {
            let top_first: Vec<PathBuf> = lowers.iter().rev().cloned().collect();
            crate::overlay::mount_plain_overlay(&top_first, upper, dir)?;
        }
        Ok(OverlayMount {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// Unpacks `image` of the OCI layout `layout` with umoci; returns the rootfs.
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> Result<PathBuf> {
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(bundle))?;
    Ok(bundle.join("rootfs"))
}

/// `skopeo copy SRC DST` (quiet).
pub fn skopeo_copy(src: &str, dst: &str) -> Result<()> {
    run(Command::new("skopeo").args(["copy", "-q", src, dst]))?;
    Ok(())
}

/// Extracts a tar (as root: owners, modes, devices, xattrs kept) into `dir`.
pub fn extract_tar(tar: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    run(Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--same-owner",
            "--numeric-owner",
            "-xpf",
        ])
        .arg(tar)
        .arg("-C")
        .arg(dir))?;
    Ok(())
}

/// Makes an OCI layout with one image `tag` whose rootfs is built by `fill`
/// (umoci new + unpack + repack). Returns the layout dir.
pub fn umoci_image(
    work: &Path,
    tag: &str,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let layout = work.join("layout");
    if !layout.join("index.json").exists() {
        run(Command::new("umoci")
            .arg("init")
            .arg("--layout")
            .arg(&layout))?;
    }
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    let bundle = work.join(format!("bundle-{tag}"));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    fill(&bundle.join("rootfs"))?;
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle))?;
    Ok(layout)
}

/// Writes `data` at `offset` of a file of `size` bytes with holes elsewhere.
pub fn sparse_file(path: &Path, size: u64, chunks: &[(u64, &[u8])]) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path)?;
    f.set_len(size)?;
    for (off, data) in chunks {
        f.write_at(data, *off)?;
    }
    Ok(())
}

/// Sets an xattr (not following symlinks).
pub fn setxattr(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .map_err(std::io::Error::from)
        .with_context(|| format!("setxattr {name} on {}", path.display()))
}

/// Makes a device node or fifo.
pub fn mknod(
    path: &Path,
    kind: rustix::fs::FileType,
    mode: u32,
    major: u32,
    minor: u32,
) -> Result<()> {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        kind,
        rustix::fs::Mode::from_raw_mode(mode),
        rustix::fs::makedev(major, minor),
    )
    .map_err(std::io::Error::from)
    .with_context(|| format!("mknod {}", path.display()))
}
