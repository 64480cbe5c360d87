//! Shared fixtures for lamina's integration tests: temporary stores, the
//! `lamina` binary, a real registry on loopback, peer tools.

pub mod archive;
pub mod overlay;
pub mod podman;
pub mod registry;
pub mod service;
pub mod store;
pub mod tree;
pub mod unpack;

/// Path of a binary built from this workspace (`lamina`, `lamina-overlayfs`).
///
/// `scripts/test.sh` builds the binaries before the tests run; `LAMINA_BIN_DIR`
/// overrides where they are looked for.
pub fn bin(name: &str) -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("LAMINA_BIN_DIR") {
        return std::path::PathBuf::from(dir).join(name);
    }
    // target/debug/deps/it-XXXX -> target/debug/NAME
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(name))
        .expect("test binary lives in target/<profile>/deps")
}
