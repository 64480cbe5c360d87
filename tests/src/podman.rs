//! Fixtures for tests that use podman as a peer: a rootful podman that is
//! isolated and offline, and small runnable images made by lamina.
//!
//! Each [`Podman`] lives in its own temp dir: its own graph root, run root,
//! tmp dir and file locks (no shared `/dev/shm` lock segment), its own
//! `storage.conf`, `registries.conf` (no search registries, only the given
//! loopback registry, as insecure) and `containers.conf` (no network,
//! cgroupfs, runc, events to a file, ulimits this machine allows). So tests
//! can run in parallel and podman never reaches the internet. Dropping it
//! removes its containers and detaches whatever is still mounted in its dir.

use anyhow::{Context as _, Result, bail, ensure};
use std::path::{Path, PathBuf};
use std::process::Command;

/// True when running as root with podman, conmon, runc and `/dev/fuse`;
/// otherwise says what is missing (scripts/test.sh installs podman).
pub fn podman_available() -> bool {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root".to_string());
    }
    for tool in ["podman", "conmon", "runc"] {
        if !crate::archive::have(tool) {
            missing.push(tool.to_string());
        }
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse".into());
    }
    if !missing.is_empty() {
        eprintln!(
            "SKIP: podman tests need {} (scripts/test.sh installs podman)",
            missing.join(", ")
        );
        return false;
    }
    true
}

/// An isolated rootful podman (see the module docs).
pub struct Podman {
    /// Everything podman writes lives under here.
    pub dir: tempfile::TempDir,
    env: Vec<(&'static str, PathBuf)>,
}

impl Podman {
    /// A podman whose overlay driver mounts with `mount_program` (kernel
    /// overlayfs when `None`) and that may pull from the plain-HTTP loopback
    /// registry `registry` (`127.0.0.1:PORT`).
    pub fn new(mount_program: Option<&Path>, registry: Option<&str>) -> Result<Podman> {
        let dir = tempfile::Builder::new()
            .prefix("lamina-podman-")
            .tempdir_in("/var/tmp")?;
        let d = dir.path();
        for sub in ["graph", "run", "tmp", "net", "locks"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        let mut storage = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            d.join("graph").display(),
            d.join("run").display()
        );
        if let Some(p) = mount_program {
            storage.push_str(&format!(
                "[storage.options.overlay]\nmount_program = \"{}\"\n",
                p.display()
            ));
        }
        std::fs::write(d.join("storage.conf"), storage)?;
        let mut registries = String::from("unqualified-search-registries = []\n");
        if let Some(r) = registry {
            registries.push_str(&format!(
                "[[registry]]\nlocation = \"{r}\"\ninsecure = true\n"
            ));
        }
        std::fs::write(d.join("registries.conf"), registries)?;
        let (nofile, nproc) = (
            hard_limit(rustix::process::Resource::Nofile),
            hard_limit(rustix::process::Resource::Nproc),
        );
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[containers]\nnetns = \"none\"\n\
                 default_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
                 [network]\nnetwork_config_dir = \"{net}\"\n\
                 [engine]\nevents_logger = \"file\"\nevents_logfile_path = \"{events}\"\n\
                 cgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\nlock_type = \"file\"\n\
                 tmp_dir = \"{tmp}\"\nimage_copy_tmp_dir = \"{tmp}\"\n",
                net = d.join("net").display(),
                events = d.join("events.log").display(),
                tmp = d.join("tmp").display(),
            ),
        )?;
        let env = vec![
            ("CONTAINERS_STORAGE_CONF", d.join("storage.conf")),
            ("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf")),
            ("CONTAINERS_CONF", d.join("containers.conf")),
            ("TMPDIR", d.join("tmp")),
        ];
        Ok(Podman { dir, env })
    }

    /// `podman ARGS...` with this instance's configuration.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--tmpdir")
            .arg(self.dir.path().join("tmp"))
            .args(args)
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// Runs `podman ARGS...`, failing with its output unless it succeeds;
    /// returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = crate::archive::run(&mut self.cmd(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `podman ARGS...` expecting failure; returns stdout + stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.cmd(args).output()?;
        ensure!(
            !out.status.success(),
            "podman {args:?} succeeded but should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// The mount lines (from /proc/self/mountinfo) under this instance's dir.
    pub fn mounts(&self) -> Vec<String> {
        let prefix = self.dir.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&prefix)))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "-af", "-t", "0"]).output();
        let _ = self.cmd(&["umount", "-a"]).output();
        let _ = self.cmd(&["image", "umount", "-a"]).output();
        // What podman left mounted (its graph bind mount, a server that
        // died): deepest first, detached so a busy one cannot stop us.
        let mut points: Vec<String> = self
            .mounts()
            .iter()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = rustix::mount::unmount(p.as_str(), rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// A limit a container may set (podman's defaults exceed what this machine
/// allows, and runc cannot raise them): small, never above the hard limit.
fn hard_limit(which: rustix::process::Resource) -> u64 {
    rustix::process::getrlimit(which)
        .maximum
        .unwrap_or(1024)
        .min(1024)
}

/// Fills `root` with a tiny runnable Debian-ish tree from this machine's
/// files: `/bin/sh` (dash), `cat`, `ls`, `rm`, `mkdir`, `sleep`, `touch`, the
/// libraries they load, `/etc/os-release`, and a few data files and dirs the
/// tests change (`/data/keep`, `/data/gone/`, `/opq/old`).
pub fn small_rootfs(root: &Path) -> Result<()> {
    let tools = ["dash", "cat", "ls", "rm", "mkdir", "sleep", "touch"];
    std::fs::create_dir_all(root.join("usr/bin"))?;
    std::fs::create_dir_all(root.join("etc"))?;
    for d in ["bin", "lib", "lib64", "sbin"] {
        // As on merged-/usr Debian: /bin -> usr/bin, ...
        if Path::new("/").join(d).is_symlink() {
            std::os::unix::fs::symlink(format!("usr/{d}"), root.join(d))?;
            std::fs::create_dir_all(root.join("usr").join(d))?;
        }
    }
    let mut libs = std::collections::BTreeSet::new();
    for t in tools {
        let path = PathBuf::from("/usr/bin").join(t);
        ensure!(
            path.exists(),
            "{} is missing on this machine",
            path.display()
        );
        std::fs::copy(&path, root.join("usr/bin").join(t))?;
        let out = crate::archive::run(Command::new("ldd").arg(&path))?;
        for w in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if w.starts_with('/') {
                libs.insert(PathBuf::from(w));
            }
        }
    }
    std::os::unix::fs::symlink("dash", root.join("usr/bin/sh"))?;
    for lib in libs {
        // Where the file is under merged /usr, reached through the image's
        // own /lib -> usr/lib links.
        let real = lib.canonicalize()?;
        let dest = root.join(real.strip_prefix("/")?);
        std::fs::create_dir_all(dest.parent().context("library dir")?)?;
        std::fs::copy(&real, &dest)?;
        let named = root.join(lib.strip_prefix("/")?);
        if !named.exists() {
            std::fs::create_dir_all(named.parent().context("library dir")?)?;
            std::os::unix::fs::symlink(&real, &named)?;
        }
    }
    std::fs::copy("/etc/os-release", root.join("etc/os-release"))?;
    std::fs::create_dir_all(root.join("data/gone/sub"))?;
    std::fs::create_dir_all(root.join("opq"))?;
    std::fs::write(root.join("data/keep"), "kept\n")?;
    std::fs::write(root.join("data/gone/sub/f"), "going\n")?;
    std::fs::write(root.join("opq/old"), "old\n")?;
    let check = Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c", "cat /data/keep"])
        .output()?;
    if !check.status.success() || check.stdout != b"kept\n" {
        bail!(
            "the small rootfs does not run: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
    Ok(())
}

/// [`small_rootfs`] made in `dir/rootfs` and packed as `dir/rootfs.tar`;
/// returns the tar's path.
pub fn small_rootfs_tar(dir: &Path) -> Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    small_rootfs(&rootfs)?;
    let tar = dir.join("rootfs.tar");
    crate::archive::run(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    )?;
    Ok(tar)
}

/// Makes `name` in the lamina store at `store`: [`small_rootfs`] imported as
/// `name-base`, then a second layer committed from a container that
/// deleted `/usr/bin/touch` and the dir `/data/gone`, replaced `/opq` by a
/// new dir (opaque) and wrote `/data/new` — whiteouts of a file and a dir, an
/// opaque dir and a new file.
pub fn lamina_layered_image(store: &Path, name: &str) -> Result<()> {
    let work = tempfile::Builder::new()
        .prefix("lamina-podman-img-")
        .tempdir()?;
    let tar = small_rootfs_tar(work.path())?;
    let lamina = |args: &[&str]| crate::archive::lamina(store, args);
    let base = format!("{name}-base");
    lamina(&["import", &tar.to_string_lossy(), &base])?;
    let id = lamina(&["create", &base])?.trim().to_string();
    let mnt = work.path().join("mnt");
    let m = mnt.to_string_lossy().into_owned();
    lamina(&["mount", &id, &m])?;
    let changed = (|| -> Result<()> {
        std::fs::remove_file(mnt.join("usr/bin/touch"))?;
        std::fs::remove_dir_all(mnt.join("data/gone"))?;
        std::fs::remove_dir_all(mnt.join("opq"))?;
        std::fs::create_dir(mnt.join("opq"))?;
        std::fs::write(mnt.join("opq/new"), "only this\n")?;
        std::fs::write(mnt.join("data/new"), "written by lamina\n")?;
        Ok(())
    })();
    lamina(&["umount", &m])?;
    changed?;
    lamina(&["commit", &id, name, "-m", "podman peer test layer"])?;
    lamina(&["rm", &id])?;
    Ok(())
}
