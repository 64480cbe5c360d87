//! `lamina-overlayfs -o lowerdir=A:B,upperdir=U,workdir=W MOUNTPOINT`:
//! a fuse-overlayfs compatible front end to lamina's overlay driver.

fn main() -> std::process::ExitCode {
    eprintln!("lamina-overlayfs: not implemented yet");
    std::process::ExitCode::FAILURE
}
