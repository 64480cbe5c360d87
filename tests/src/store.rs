//! Fixtures for the store tests: a `lamina` store in a temp dir driven
//! through the real binary, and layer tarballs made by GNU tar.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A store root in a temp dir plus helpers to run `lamina --root` on it.
pub struct TestStore {
    /// Keeps the dir alive.
    pub dir: tempfile::TempDir,
}

impl TestStore {
    /// A fresh, empty store root.
    pub fn new() -> TestStore {
        TestStore {
            dir: tempfile::Builder::new()
                .prefix("lamina-store-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    /// The store root.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A scratch path next to the root (not inside it).
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `lamina --root ROOT args...`, not yet run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(crate::bin("lamina"));
        c.arg("--root").arg(self.root()).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs `lamina`, returning its output whatever the status.
    pub fn output(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run lamina")
    }

    /// Runs `lamina` and panics (with stderr) unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "lamina {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs `lamina ... --format json`-style commands and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("JSON output")
    }

    /// Opens the store in-process (for assertions the CLI does not expose).
    pub fn open(&self) -> lamina_store::Store {
        lamina_store::Store::open(self.root()).expect("open store")
    }

    /// Names of the entries of a dir under the root (sorted; empty if absent).
    pub fn entries(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root().join(sub))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Default for TestStore {
    fn default() -> Self {
        Self::new()
    }
}

/// Makes a directory tree: `(relative path, content)`; a path ending in `/`
/// is a directory.
pub fn make_tree(dir: &Path, files: &[(&str, &[u8])]) {
    std::fs::create_dir_all(dir).unwrap();
    for (path, data) in files {
        let p = dir.join(path.trim_end_matches('/'));
        if path.ends_with('/') {
            std::fs::create_dir_all(&p).unwrap();
        } else {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, data).unwrap();
        }
    }
}

/// Compression of a fixture tarball.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Tars `dir` with GNU tar (`--numeric-owner`, sorted names) into `out`,
/// compressed with the real gzip or zstd.
pub fn gnu_tar(dir: &Path, out: &Path, compress: Compress) {
    let flag = match compress {
        Compress::None => None,
        Compress::Gzip => Some("--gzip"),
        Compress::Zstd => Some("--zstd"),
    };
    let mut c = Command::new("tar");
    c.arg("--sort=name")
        .arg("--numeric-owner")
        .arg("-C")
        .arg(dir);
    if let Some(f) = flag {
        c.arg(f);
    }
    let status = c.arg("-cf").arg(out).arg(".").status().expect("run tar");
    assert!(status.success(), "tar failed");
}

/// A tarball of `n` files of `size` pseudo-random bytes each (distinct per
/// `seed`), for tests that need an import to take a while.
pub fn big_tar(dir: &Path, out: &Path, n: usize, size: usize, seed: u64, compress: Compress) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for i in 0..n {
        let mut data = vec![0u8; size];
        for chunk in data.chunks_mut(8) {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let b = state.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let p = dir.join(format!("d{:03}/f{i:05}", i % 100));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    gnu_tar(dir, out, compress);
}

/// sha256 of a file as `sha256:<hex>`.
pub fn file_digest(path: &Path) -> String {
    use sha2::Digest;
    let data = std::fs::read(path).unwrap();
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(&data)))
}
