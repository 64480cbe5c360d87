//! Fixtures for the overlay (FUSE driver) tests: a `lamina-overlayfs` mount
//! that unmounts on drop, layer dirs with every overlayfs edge case, and the
//! Debian tree the program tests chroot into, tree snapshots to compare
//! mounts, and a kernel overlayfs mount over the same dirs.

use anyhow::{Context as _, Result, bail};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

/// True when `cmd` is on PATH.
pub fn have(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// True when running as root (mount, mknod, trusted xattrs).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs a command; fails with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<std::process::Output> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// What a snapshot keeps of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Type letter and details: `d`, `f <len> <content>`, `l <target>`, `c/b <maj:min>`, `p`, `s`.
    pub what: String,
    /// Mode bits, owner, group.
    pub meta: (u32, u32, u32),
    /// User-visible xattrs (overlay-private ones excluded), sorted.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// mtime of non-directories (seconds); `None` when not compared.
    pub mtime: Option<i64>,
}

/// A tree snapshot: entries by relative path and the groups of hardlinked paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// Every path under the root.
    pub entries: BTreeMap<String, Entry>,
    /// Sorted groups of paths that share an inode.
    pub links: Vec<Vec<String>>,
}

impl Tree {
    /// The same tree without modification times.
    pub fn no_times(mut self) -> Tree {
        for e in self.entries.values_mut() {
            e.mtime = None;
        }
        self
    }
}

fn xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut names = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap_or(0);
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let s = String::from_utf8_lossy(name).into_owned();
        if s.starts_with("trusted.overlay.") || s.starts_with("user.overlay.") {
            continue;
        }
        let mut v = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(path, std::ffi::OsStr::from_bytes(name), &mut v[..])?;
        v.truncate(len);
        out.push((s, v));
    }
    out.sort();
    Ok(out)
}

/// Snapshots everything under `root` (symlinks not followed).
pub fn snapshot(root: &Path) -> Result<Tree> {
    let mut entries = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = e?.path();
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            let m = path.symlink_metadata()?;
            let ft = m.file_type();
            let dev = |r: u64| format!("{}:{}", rustix::fs::major(r), rustix::fs::minor(r));
            let what = if ft.is_dir() {
                stack.push(path.clone());
                "d".to_string()
            } else if ft.is_symlink() {
                format!("l {}", std::fs::read_link(&path)?.display())
            } else if ft.is_file() {
                format!(
                    "f {} {}",
                    m.len(),
                    String::from_utf8_lossy(&std::fs::read(&path)?)
                )
            } else if ft.is_char_device() {
                format!("c {}", dev(m.rdev()))
            } else if ft.is_block_device() {
                format!("b {}", dev(m.rdev()))
            } else if ft.is_fifo() {
                "p".to_string()
            } else {
                "s".to_string()
            };
            if !ft.is_dir() && m.nlink() > 1 {
                inodes
                    .entry((m.dev(), m.ino()))
                    .or_default()
                    .push(rel.clone());
            }
            let mtime = (!ft.is_dir() && !ft.is_symlink()).then(|| m.mtime());
            entries.insert(
                rel,
                Entry {
                    what,
                    meta: (m.mode() & 0o7777, m.uid(), m.gid()),
                    xattrs: xattrs(&path)?,
                    mtime,
                },
            );
        }
    }
    let mut links: Vec<Vec<String>> = inodes.into_values().filter(|v| v.len() > 1).collect();
    links.iter_mut().for_each(|v| v.sort());
    links.sort();
    Ok(Tree { entries, links })
}

/// Fails with the list of differences unless the trees are equal.
pub fn assert_same_tree(expected: &Tree, actual: &Tree, what: &str) -> Result<()> {
    let mut diffs = Vec::new();
    for (p, e) in &expected.entries {
        match actual.entries.get(p) {
            None => diffs.push(format!("missing {p} ({})", e.what)),
            Some(a) if a != e => diffs.push(format!(
                "differs {p}:\n   expected {e:?}\n   actual   {a:?}"
            )),
            _ => {}
        }
    }
    for p in actual
        .entries
        .keys()
        .filter(|p| !expected.entries.contains_key(*p))
    {
        diffs.push(format!("unexpected {p}"));
    }
    if expected.links != actual.links {
        diffs.push(format!(
            "hardlink groups: expected {:?}, actual {:?}",
            expected.links, actual.links
        ));
    }
    if !diffs.is_empty() {
        bail!(
            "{what}: {} difference(s):\n{}",
            diffs.len(),
            diffs.join("\n")
        );
    }
    Ok(())
}

/// Whether kernel overlayfs can be mounted here.
pub fn kernel_overlay_available() -> bool {
    is_root() && std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.contains("overlay"))
}

/// The `lowerdir=...[,upperdir=...,workdir=...]` mount options of `lowers`
/// (top-most first, as in `lowerdir=`) and an optional `(upper, work)`.
pub fn overlay_options(lowers: &[PathBuf], upper: Option<(&Path, &Path)>) -> String {
    let lower: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    let mut opts = format!("lowerdir={}", lower.join(":"));
    if let Some((u, w)) = upper {
        opts.push_str(&format!(
            ",upperdir={},workdir={}",
            u.display(),
            w.display()
        ));
    }
    opts
}

/// Mounts plain kernel overlayfs (whiteouts and opaque dirs only: no
/// redirects, no index, no metacopy) of `lowers` (top-most first) with an
/// optional `(upper, work)` at `dir`, making `dir` if needed.
pub(crate) fn mount_plain_overlay(
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let opts = overlay_options(lowers, upper) + ",redirect_dir=off,index=off,metacopy=off";
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(dir))?;
    Ok(())
}

/// A kernel overlayfs mount (plain: no redirects, no index), unmounted on drop.
pub struct KernelMount {
    /// Where it is mounted.
    pub dir: PathBuf,
}

impl KernelMount {
    /// Mounts `lowers` (top-most first) with an optional `(upper, work)` at `dir`.
    pub fn mount(
        lowers: &[PathBuf],
        upper: Option<(&Path, &Path)>,
        dir: &Path,
    ) -> Result<KernelMount> {
        mount_plain_overlay(lowers, upper, dir)?;
        Ok(KernelMount {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// A `lamina-overlayfs` mount, unmounted on drop.
pub struct LaminaMount {
    /// Where it is mounted.
    pub dir: PathBuf,
}

impl LaminaMount {
    /// Mounts `lowers` (top-most first, as in `lowerdir=`) with an optional
    /// `(upper, work)` at `dir`; returns once the mount is ready.
    pub fn mount(
        lowers: &[PathBuf],
        upper: Option<(&Path, &Path)>,
        dir: &Path,
    ) -> Result<LaminaMount> {
        Self::mount_with_fd_budget(lowers, upper, dir, None)
    }

    /// Like [`LaminaMount::mount`]; a small `fd_budget` makes the driver
    /// close and reopen node fds all the time, so a test covers that path.
    pub fn mount_with_fd_budget(
        lowers: &[PathBuf],
        upper: Option<(&Path, &Path)>,
        dir: &Path,
        fd_budget: Option<usize>,
    ) -> Result<LaminaMount> {
        Self::mount_with(lowers, upper, dir, fd_budget, "")
    }

    /// Like [`LaminaMount::mount_with_fd_budget`], with `extra` appended to
    /// the `-o` options (e.g. `uring=off`).
    pub fn mount_with(
        lowers: &[PathBuf],
        upper: Option<(&Path, &Path)>,
        dir: &Path,
        fd_budget: Option<usize>,
        extra: &str,
    ) -> Result<LaminaMount> {
        std::fs::create_dir_all(dir)?;
        if let Some((u, w)) = upper {
            std::fs::create_dir_all(u)?;
            std::fs::create_dir_all(w)?;
        }
        let mut opts = overlay_options(lowers, upper);
        if !extra.is_empty() {
            opts = format!("{opts},{extra}");
        }
        let mut cmd = Command::new(crate::bin("lamina-overlayfs"));
        if let Some(n) = fd_budget {
            cmd.env("LAMINA_FUSE_FD_BUDGET", n.to_string());
        }
        run(cmd.arg("-o").arg(&opts).arg(dir))?;
        Ok(LaminaMount {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for LaminaMount {
    fn drop(&mut self) {
        if Command::new("umount")
            .arg(&self.dir)
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Whether FUSE mounts can be made here (root and /dev/fuse).
pub fn fuse_available() -> bool {
    is_root() && Path::new("/dev/fuse").exists()
}

fn write(path: &Path, data: &str) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

fn mknod(path: &Path, kind: rustix::fs::FileType, dev: u64) -> Result<()> {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        kind,
        rustix::fs::Mode::from_raw_mode(0o644),
        dev,
    )
    .with_context(|| format!("mknod {}", path.display()))
}

fn whiteout(path: &Path) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .with_context(|| format!("whiteout {}", path.display()))
}

fn opaque(path: &Path) -> Result<()> {
    rustix::fs::setxattr(
        path,
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .with_context(|| format!("opaque xattr on {}", path.display()))
}

/// Builds three layers under `base` exercising every overlayfs rule;
/// returns them top-most first (`lowerdir=` order).
///
/// Bottom (l3) to top (l1): whiteouts as char 0/0 and as `.wh.` markers,
/// opaque dirs by xattr and by `.wh..wh..opq`, file→dir, dir→file,
/// file→symlink, dir→symlink replacements, hardlinks within a layer and a
/// hardlink pair whose one name is replaced above, xattrs, devices, fifos,
/// a deep directory merged over all layers, modes and owners.
///
/// With `markers`, some whiteouts and one opaque dir use the OCI tar forms
/// (`.wh.NAME` files, `.wh..wh..opq`), which lamina honours and kernel
/// overlayfs does not; without, the same tree in overlayfs's native form.
pub fn edge_layers(base: &Path, markers: bool) -> Result<Vec<PathBuf>> {
    let (l1, l2, l3) = (base.join("l1"), base.join("l2"), base.join("l3"));
    for l in [&l1, &l2, &l3] {
        std::fs::create_dir_all(l)?;
    }
    // l3: the base.
    write(&l3.join("a.txt"), "bottom a\n")?;
    write(&l3.join("keep.txt"), "kept from the bottom\n")?;
    write(&l3.join("dir1/x"), "x\n")?;
    write(&l3.join("dir1/y"), "y\n")?;
    write(&l3.join("deep/l3only/f"), "l3 deep\n")?;
    write(&l3.join("deep/shared"), "l3 shared\n")?;
    write(&l3.join("gone_char"), "whited out by char\n")?;
    write(&l3.join("gone_marker"), "whited out by marker\n")?;
    write(&l3.join("opq_x/old1"), "hidden\n")?;
    write(&l3.join("opq_m/old2"), "hidden\n")?;
    write(&l3.join("f2d"), "file becomes dir\n")?;
    write(&l3.join("d2f/child"), "dir becomes file\n")?;
    write(&l3.join("f2l"), "file becomes symlink\n")?;
    write(&l3.join("d2l/child"), "dir becomes symlink\n")?;
    write(&l3.join("hl/one"), "hardlinked\n")?;
    std::fs::hard_link(l3.join("hl/one"), l3.join("hl/two"))?;
    write(&l3.join("hl/p1"), "pair\n")?;
    std::fs::hard_link(l3.join("hl/p1"), l3.join("hl/p2"))?;
    write(&l3.join("attrs"), "with xattrs\n")?;
    rustix::fs::setxattr(
        l3.join("attrs"),
        "user.color",
        b"blue",
        rustix::fs::XattrFlags::empty(),
    )?;
    rustix::fs::setxattr(
        l3.join("attrs"),
        "trusted.secret",
        b"s3",
        rustix::fs::XattrFlags::empty(),
    )?;
    std::fs::create_dir_all(l3.join("dev"))?;
    mknod(
        &l3.join("dev/null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::makedev(1, 3),
    )?;
    mknod(
        &l3.join("dev/loop9"),
        rustix::fs::FileType::BlockDevice,
        rustix::fs::makedev(7, 9),
    )?;
    mknod(&l3.join("dev/fifo"), rustix::fs::FileType::Fifo, 0)?;
    symlink("a.txt", l3.join("link_a"))?;
    write(&l3.join("mv_me/a"), "move me\n")?;
    write(&l3.join("mv_me/sub/b"), "move me too\n")?;
    write(&l3.join("modes/suid"), "suid\n")?;
    std::fs::set_permissions(
        l3.join("modes/suid"),
        std::fs::Permissions::from_mode(0o4755),
    )?;
    write(&l3.join("modes/owned"), "owned\n")?;
    std::os::unix::fs::lchown(l3.join("modes/owned"), Some(1234), Some(5678))?;
    std::fs::create_dir_all(l3.join("modes/sticky"))?;
    std::fs::set_permissions(
        l3.join("modes/sticky"),
        std::fs::Permissions::from_mode(0o1777),
    )?;

    // l2: the middle.
    whiteout(&l2.join("gone_char"))?;
    if markers {
        write(&l2.join(".wh.gone_marker"), "")?;
    } else {
        whiteout(&l2.join("gone_marker"))?;
    }
    std::fs::create_dir_all(l2.join("opq_x"))?;
    opaque(&l2.join("opq_x"))?;
    write(&l2.join("opq_x/new1"), "l2 new\n")?;
    std::fs::create_dir_all(l2.join("opq_m"))?;
    if markers {
        write(&l2.join("opq_m/.wh..wh..opq"), "")?;
    } else {
        opaque(&l2.join("opq_m"))?;
    }
    write(&l2.join("opq_m/new2"), "l2 new\n")?;
    write(&l2.join("f2d/inside"), "now a dir\n")?;
    write(&l2.join("d2f"), "now a file\n")?;
    symlink("a.txt", l2.join("f2l"))?;
    symlink("dir1", l2.join("d2l"))?;
    write(&l2.join("dir1/z"), "z from l2\n")?;
    whiteout(&l2.join("dir1/y"))?;
    write(&l2.join("deep/l2only/f"), "l2 deep\n")?;
    write(&l2.join("deep/shared"), "l2 shared\n")?;
    write(&l2.join("hl/p2"), "p2 replaced above\n")?;

    // l1: the top.
    write(&l1.join("a.txt"), "top a\n")?;
    write(&l1.join("deep/l1only/f"), "l1 deep\n")?;
    whiteout(&l1.join("deep/l3only"))?;
    if markers {
        write(&l1.join("dir1/.wh.x"), "")?;
    } else {
        whiteout(&l1.join("dir1/x"))?;
    }
    write(&l1.join("gone_char"), "back again\n")?;
    Ok(vec![l1, l2, l3])
}

/// A Debian minbase tree (bookworm), built once with debootstrap and cached
/// in /var/tmp/lamina-test-debian. `None` (after saying why) when it cannot be built.
pub fn debian_tree() -> Option<PathBuf> {
    let dir = PathBuf::from("/var/tmp/lamina-test-debian");
    if dir.join("usr/bin/dpkg").exists() {
        return Some(dir);
    }
    if !have("debootstrap") {
        eprintln!("SKIP: debootstrap is not installed (scripts/test.sh installs it)");
        return None;
    }
    let tmp = PathBuf::from(format!(
        "/var/tmp/lamina-test-debian.tmp-{}",
        std::process::id()
    ));
    let status = Command::new("debootstrap")
        .args(["--variant=minbase", "--include=python3-minimal", "bookworm"])
        .arg(&tmp)
        .arg("http://deb.debian.org/debian")
        .stdout(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() && std::fs::rename(&tmp, &dir).is_ok() => Some(dir),
        other => {
            eprintln!(
                "SKIP: debootstrap of a Debian tree failed ({other:?}); is the mirror reachable?"
            );
            let _ = std::fs::remove_dir_all(&tmp);
            dir.join("usr/bin/dpkg").exists().then_some(dir)
        }
    }
}

/// Runs `sh -c SCRIPT` in `dir`; fails with its output unless it succeeds.
pub fn sh(dir: &Path, script: &str) -> Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()?;
    if !out.status.success() {
        bail!(
            "sh -c {script:?} in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The kernel overlayfs view (no times) of `upper` read back as the top
/// layer over `layers` (top-most first), mounted read-only at `dir` for the
/// snapshot: what an upper dir means to the kernel.
pub fn kernel_view_of_upper(upper: &Path, layers: &[PathBuf], dir: &Path) -> Result<Tree> {
    let mut lowers = vec![upper.to_path_buf()];
    lowers.extend(layers.iter().cloned());
    Ok(snapshot(&KernelMount::mount(&lowers, None, dir)?.dir)?.no_times())
}

/// Runs pjdfstest (from `~/.cargo/bin` or PATH) on the empty dir `dir` and
/// fails with its FAILED lines and Summary unless nothing failed; returns the
/// Summary line. `None` (after saying so) when pjdfstest is not installed.
pub fn run_pjdfstest(dir: &Path) -> Result<Option<String>> {
    let home_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/pjdfstest"));
    let exe = match home_bin.filter(|p| p.exists()) {
        Some(p) => p,
        None if have("pjdfstest") => "pjdfstest".into(),
        None => {
            eprintln!("SKIP: pjdfstest is not installed (cargo install --locked pjdfstest)");
            return Ok(None);
        }
    };
    let out = Command::new(&exe)
        .arg("-p")
        .arg(dir)
        .output()
        .with_context(|| format!("running {} -p {}", exe.display(), dir.display()))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let summary = text
        .lines()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or("no summary")
        .to_string();
    eprintln!("pjdfstest on {}: {summary}", dir.display());
    let failed: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_end().ends_with("FAILED"))
        .collect();
    if !failed.is_empty() || !summary.contains(" 0 failed") {
        bail!(
            "pjdfstest failures on {}:\n{}\n{summary}",
            dir.display(),
            failed.join("\n")
        );
    }
    Ok(Some(summary))
}

/// One scripted change: its name and what it does in a mount's root (the
/// flag says whether the mount is kernel overlayfs).
pub type ChangeOp = (&'static str, fn(&Path, bool) -> std::io::Result<()>);

/// Renames a directory; on kernel overlayfs without redirect_dir a lower dir
/// gives EXDEV and is moved as `mv` does it (copy, then delete).
fn rename_dir(root: &Path, from: &str, to: &str, kernel: bool) -> std::io::Result<()> {
    match std::fs::rename(root.join(from), root.join(to)) {
        Err(e) if kernel && e.raw_os_error() == Some(libc::EXDEV) => {
            let ok = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("cp -a {from} {to} && rm -rf {from}"))
                .current_dir(root)
                .status()?
                .success();
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::other("cp/rm emulation failed"))
            }
        }
        r => r,
    }
}

/// Writes, renames and deletes over [`edge_layers`] that every kind of entry
/// goes through: copy-ups, whiteouts, opaque dirs, hardlinks, xattrs, modes.
pub fn scripted_changes() -> Vec<ChangeOp> {
    vec![
        ("append to a lower file", |r, _| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(r.join("a.txt"))?
                .write_all(b"more\n")
        }),
        ("truncate a lower file", |r, _| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(r.join("keep.txt"))?
                .set_len(5)
        }),
        ("chmod a lower suid file", |r, _| {
            std::fs::set_permissions(r.join("modes/suid"), std::fs::Permissions::from_mode(0o750))
        }),
        ("chown a lower file", |r, _| {
            std::os::unix::fs::lchown(r.join("modes/owned"), Some(42), Some(43))
        }),
        ("set an xattr", |r, _| {
            rustix::fs::setxattr(
                r.join("attrs"),
                "user.color",
                b"red",
                rustix::fs::XattrFlags::empty(),
            )?;
            Ok(rustix::fs::removexattr(r.join("attrs"), "trusted.secret")?)
        }),
        ("unlink a lower file", |r, _| {
            std::fs::remove_file(r.join("dir1/z"))
        }),
        ("remove a lower opaque dir", |r, _| {
            std::fs::remove_dir_all(r.join("opq_x"))
        }),
        ("mkdir where a dir was removed", |r, _| {
            std::fs::create_dir(r.join("opq_x"))?;
            std::fs::write(r.join("opq_x/fresh"), "fresh\n")
        }),
        ("create over a whiteout", |r, _| {
            std::fs::write(r.join("gone_marker"), "reborn\n")
        }),
        ("rename a lower file across dirs", |r, _| {
            std::fs::rename(r.join("a.txt"), r.join("dir1/a_moved"))
        }),
        ("rename a file over a lower symlink", |r, _| {
            std::fs::rename(r.join("keep.txt"), r.join("f2l"))
        }),
        ("hardlink a lower hardlinked file", |r, _| {
            std::fs::hard_link(r.join("hl/one"), r.join("new_link"))
        }),
        ("write the other name of a lower hardlink", |r, _| {
            std::fs::write(r.join("hl/two"), "two changed\n")
        }),
        ("hardlink a lower file", |r, _| {
            std::fs::hard_link(r.join("attrs"), r.join("attrs_link"))
        }),
        ("symlink", |r, _| symlink("dir1", r.join("new_sym"))),
        ("mkfifo", |r, _| {
            Ok(rustix::fs::mknodat(
                rustix::fs::CWD,
                r.join("newfifo"),
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o640),
                0,
            )?)
        }),
        ("rename a lower dir tree", |r, k| {
            rename_dir(r, "mv_me", "moved_dir", k)
        }),
        ("rmdir a merged subdir", |r, _| {
            std::fs::remove_file(r.join("deep/l2only/f"))?;
            std::fs::remove_dir(r.join("deep/l2only"))
        }),
        ("write into a deep merged dir", |r, _| {
            std::fs::write(r.join("deep/l1only/f"), "rewritten\n")
        }),
        ("rename a file over a dir (EISDIR)", |r, _| {
            std::fs::rename(r.join("d2f"), r.join("f2d"))
        }),
        ("rmdir a non-empty merged dir (ENOTEMPTY)", |r, _| {
            std::fs::remove_dir(r.join("dir1"))
        }),
        ("unlink a lower symlink", |r, _| {
            std::fs::remove_file(r.join("link_a"))
        }),
        ("create a new tree", |r, _| {
            std::fs::create_dir_all(r.join("newdir/sub"))?;
            std::fs::write(r.join("newdir/sub/file"), "new\n")
        }),
        ("rename an upper-only dir", |r, _| {
            std::fs::rename(r.join("newdir"), r.join("newdir2"))
        }),
        ("move a lower dir into an opaque dir", |r, k| {
            rename_dir(r, "f2d", "opq_m/f2d_moved", k)
        }),
        ("replace a lower hardlink name", |r, _| {
            std::fs::write(r.join("hl/p1"), "rewritten pair\n")
        }),
        ("open O_TRUNC a lower file", |r, _| {
            std::fs::write(r.join("deep/shared"), "")
        }),
    ]
}

/// Applies [`scripted_changes`] to a kernel overlayfs mount and a lamina
/// mount of the same dirs, one change at a time; fails on the first change
/// whose result (errno) differs. Returns one line per change.
pub fn apply_changes_to_both(kernel: &Path, lamina: &Path) -> Result<Vec<String>> {
    let mut results = Vec::new();
    for (name, op) in scripted_changes() {
        let kr = op(kernel, true).map_err(|e| e.raw_os_error());
        let fr = op(lamina, false).map_err(|e| e.raw_os_error());
        results.push(format!("{name}: kernel {kr:?} lamina {fr:?}"));
        anyhow::ensure!(
            kr == fr,
            "operation {name:?} differs: kernel {kr:?}, lamina {fr:?}"
        );
    }
    Ok(results)
}
