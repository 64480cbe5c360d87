//! What every command needs: where the store is.

use std::path::PathBuf;

/// Shared state of one `lamina` invocation.
pub struct Context {
    /// The store root.
    pub root: PathBuf,
}

impl Context {
    /// Resolves the store root: `--root`/`LAMINA_ROOT`, else `/var/lib/lamina`
    /// for root, else `$XDG_DATA_HOME/lamina` (or `~/.local/share/lamina`).
    pub fn new(root: Option<PathBuf>) -> Self {
        let root = root.unwrap_or_else(default_root);
        Context { root }
    }
}

fn default_root() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/lamina");
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("lamina");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".local/share/lamina")
}
