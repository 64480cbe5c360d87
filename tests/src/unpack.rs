//! Fixtures for the layer unpack tests: a raw tar writer that can spell
//! hostile archives (`..`, absolute names, whiteouts anywhere, PAX records),
//! compression through the system tools, a sentinel directory that must
//! stay untouched, and reading the layers of an OCI image layout.

use crate::tree::{self, Snapshot};
use anyhow::{Context as _, Result, bail, ensure};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One tar entry as written by [`RawTar`]; fields are used verbatim.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Name, any bytes (longer than 100 bytes goes to a PAX `path` record).
    pub name: Vec<u8>,
    /// Type flag: b'0' file, b'5' dir, b'2' symlink, b'1' hardlink, b'3' char,
    /// b'4' block, b'6' fifo.
    pub kind: u8,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: u64,
    /// Link target (symlinks, hardlinks).
    pub link: Vec<u8>,
    /// Device numbers.
    pub dev: (u32, u32),
    /// Content (files).
    pub data: Vec<u8>,
    /// Extra PAX records (`SCHILY.xattr.user.x`, `mtime`, ...).
    pub pax: Vec<(String, Vec<u8>)>,
}

impl Entry {
    /// An entry of `kind` named `name` with defaults (0644/0755, root, t=1e9).
    pub fn new(kind: u8, name: impl AsRef<[u8]>) -> Entry {
        Entry {
            name: name.as_ref().to_vec(),
            kind,
            mode: if kind == b'5' { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            mtime: 1_000_000_000,
            link: Vec::new(),
            dev: (0, 0),
            data: Vec::new(),
            pax: Vec::new(),
        }
    }
    /// A regular file.
    pub fn file(name: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Entry {
        Entry {
            data: data.as_ref().to_vec(),
            ..Entry::new(b'0', name)
        }
    }
    /// A directory.
    pub fn dir(name: impl AsRef<[u8]>) -> Entry {
        Entry::new(b'5', name)
    }
    /// A symlink.
    pub fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
        Entry {
            link: target.as_ref().to_vec(),
            mode: 0o777,
            ..Entry::new(b'2', name)
        }
    }
    /// A hardlink.
    pub fn hardlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
        Entry {
            link: target.as_ref().to_vec(),
            ..Entry::new(b'1', name)
        }
    }
    /// Adds a PAX record.
    pub fn with_pax(mut self, key: &str, value: impl AsRef<[u8]>) -> Entry {
        self.pax.push((key.to_owned(), value.as_ref().to_vec()));
        self
    }
}

fn octal(field: &mut [u8], v: u64) {
    let w = field.len() - 1;
    let s = format!("{:0w$o}", v);
    field[..w].copy_from_slice(s.as_bytes());
    field[w] = 0;
}

fn header(name: &[u8], kind: u8, e: &Entry, size: u64, link: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], u64::from(e.mode));
    octal(&mut h[108..116], u64::from(e.uid));
    octal(&mut h[116..124], u64::from(e.gid));
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], e.mtime);
    h[156] = kind;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], u64::from(e.dev.0));
    octal(&mut h[337..345], u64::from(e.dev.1));
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while len != base + len.to_string().len() {
        len = base + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

/// A tar archive written entry by entry, bypassing every safety check a tar
/// library would apply (that is the point: hostile input).
#[derive(Default)]
pub struct RawTar {
    out: Vec<u8>,
}

impl RawTar {
    /// An empty archive.
    pub fn new() -> RawTar {
        RawTar::default()
    }
    /// Appends an entry (with a PAX header first when needed).
    pub fn push(mut self, e: Entry) -> RawTar {
        let mut pax = Vec::new();
        if e.name.len() > 100 {
            pax.extend(pax_record("path", &e.name));
        }
        if e.link.len() > 100 {
            pax.extend(pax_record("linkpath", &e.link));
        }
        for (k, v) in &e.pax {
            pax.extend(pax_record(k, v));
        }
        if !pax.is_empty() {
            let ph = header(
                b"PaxHeaders/entry",
                b'x',
                &Entry::new(b'x', ""),
                pax.len() as u64,
                b"",
            );
            self.out.extend_from_slice(&ph);
            self.out.extend_from_slice(&pax);
            pad(&mut self.out);
        }
        let size = if e.kind == b'0' {
            e.data.len() as u64
        } else {
            0
        };
        self.out
            .extend_from_slice(&header(&e.name, e.kind, &e, size, &e.link));
        if e.kind == b'0' {
            self.out.extend_from_slice(&e.data);
            pad(&mut self.out);
        }
        self
    }
    /// The archive with its end-of-archive marker.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(&[0u8; 1024]);
        self.out
    }
}

/// Builds an archive from entries.
pub fn tar_of(entries: impl IntoIterator<Item = Entry>) -> Vec<u8> {
    entries
        .into_iter()
        .fold(RawTar::new(), RawTar::push)
        .finish()
}

/// Pipes `data` through a filter command (`gzip -c`, `zstd -c`, ...).
pub fn filter(cmd: &[&str], data: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let mut stdin = child.stdin.take().expect("stdin");
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output()?;
    writer.join().expect("writer thread")?;
    ensure!(out.status.success(), "{cmd:?} failed");
    Ok(out.stdout)
}

/// A place to unpack hostile layers: `dest` (the layer dir) next to a
/// `sentinel` tree that must never change, both in a fresh temp dir.
pub struct Sandbox {
    /// Keeps the temp dir alive.
    pub tmp: tempfile::TempDir,
    /// The (empty) layer directory.
    pub dest: PathBuf,
    /// A directory outside `dest` with `etc/passwd` and `dir/file`.
    pub sentinel: PathBuf,
    before: Snapshot,
}

impl Sandbox {
    /// Creates the sandbox.
    pub fn new() -> Result<Sandbox> {
        let tmp = tempfile::Builder::new()
            .prefix("lamina-unpack-")
            .tempdir()?;
        let dest = tmp.path().join("layers/dest");
        let sentinel = tmp.path().join("sentinel");
        std::fs::create_dir_all(&dest)?;
        std::fs::create_dir_all(sentinel.join("etc"))?;
        std::fs::create_dir_all(sentinel.join("dir"))?;
        std::fs::write(sentinel.join("etc/passwd"), b"root:x:0:0\n")?;
        std::fs::write(sentinel.join("dir/file"), b"keep me\n")?;
        let before = tree::snapshot(tmp.path(), Self::opts())?;
        Ok(Sandbox {
            tmp,
            dest,
            sentinel,
            before,
        })
    }

    fn opts() -> tree::Options {
        tree::Options {
            dir_mtimes: true,
            root: true,
            ..Default::default()
        }
    }

    /// The sentinel's absolute path, for hostile entries and link targets.
    pub fn sentinel_abs(&self) -> String {
        self.sentinel.display().to_string()
    }

    /// Fails unless nothing outside `dest` changed: the sentinel tree, and
    /// everything else in the temp dir (no new or altered files).
    pub fn assert_outside_untouched(&self) -> Result<()> {
        let mut now = tree::snapshot(self.tmp.path(), Self::opts())?;
        let mut before = self.before.clone();
        for s in [&mut now, &mut before] {
            s.nodes
                .retain(|p, _| p != "layers" && !p.starts_with("layers/dest"));
            s.hardlinks
                .retain(|g| !g.iter().any(|p| p.starts_with("layers/dest")));
        }
        // The link count of sentinel files must not have grown either.
        let nlink = std::os::unix::fs::MetadataExt::nlink(&std::fs::metadata(
            self.sentinel.join("etc/passwd"),
        )?);
        ensure!(
            nlink == 1,
            "sentinel etc/passwd got a hardlink (nlink {nlink})"
        );
        tree::assert_same(&before, &now, "outside the layer dir")
    }
}

/// The compressed layer blobs of `tag` in the OCI layout `layout`,
/// bottom-most first.
pub fn oci_layers(layout: &Path, tag: &str) -> Result<Vec<PathBuf>> {
    let blob = |digest: &str| -> Result<PathBuf> {
        let hex = digest.strip_prefix("sha256:").context("sha256 digest")?;
        Ok(layout.join("blobs/sha256").join(hex))
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let manifests = index["manifests"]
        .as_array()
        .context("index.json manifests")?;
    let Some(desc) = manifests
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
    else {
        bail!("tag {tag} not in {}", layout.display());
    };
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(
        desc["digest"].as_str().context("digest")?,
    )?)?)?;
    manifest["layers"]
        .as_array()
        .context("manifest layers")?
        .iter()
        .map(|l| blob(l["digest"].as_str().context("layer digest")?))
        .collect()
}

/// The diff ids of `tag`'s config in `layout`, bottom-most first.
pub fn oci_diff_ids(layout: &Path, tag: &str) -> Result<Vec<String>> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let desc = index["manifests"]
        .as_array()
        .context("manifests")?
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .context("tag")?
        .clone();
    let read = |d: &str| -> Result<serde_json::Value> {
        let hex = d.strip_prefix("sha256:").context("digest")?;
        Ok(serde_json::from_slice(&std::fs::read(
            layout.join("blobs/sha256").join(hex),
        )?)?)
    };
    let manifest = read(desc["digest"].as_str().context("digest")?)?;
    let config = read(
        manifest["config"]["digest"]
            .as_str()
            .context("config digest")?,
    )?;
    Ok(config["rootfs"]["diff_ids"]
        .as_array()
        .context("diff_ids")?
        .iter()
        .filter_map(|d| d.as_str().map(str::to_owned))
        .collect())
}

/// Runs a shell script (`sh -euc`), failing with its stderr.
pub fn sh(script: &str) -> Result<()> {
    let out = Command::new("sh").args(["-euc", script]).output()?;
    ensure!(
        out.status.success(),
        "script failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// True if `cmd` is on the PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// True when running as root (mknod, chown, trusted.* xattrs, mounts).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
