//! `lamina-overlayfs -o lowerdir=A:B,upperdir=U,workdir=W MOUNTPOINT`:
//! a fuse-overlayfs compatible front end to lamina's overlay driver.
//!
//! Accepts fuse-overlayfs's calling conventions: `-o` options (repeatable),
//! an optional source before the mount point (as `mount.fuse3` passes it for
//! `mount -t fuse.lamina-overlayfs SRC DIR`), `-f` to stay in the foreground.
//! Without `-f` it returns once the mount is ready, with the server running
//! in the background (what podman's `mount_program` expects). Options it does
//! not know are ignored with a warning.

use lamina_fuse::{OverlayConfig, daemon};
use std::path::PathBuf;
use std::process::ExitCode;

const CHILD_ENV: &str = "LAMINA_OVERLAYFS_SERVER";

struct Opts {
    lowers: Vec<PathBuf>,
    upper: Option<PathBuf>,
    work: Option<PathBuf>,
    read_only: bool,
    foreground: bool,
    threads: Option<usize>,
    passthrough: bool,
    mountpoint: PathBuf,
    source: String,
}

fn usage() -> String {
    "usage: lamina-overlayfs [-f] -o lowerdir=DIR[:DIR...][,upperdir=DIR,workdir=DIR] [SOURCE] MOUNTPOINT".into()
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        lowers: Vec::new(),
        upper: None,
        work: None,
        read_only: false,
        foreground: false,
        threads: None,
        passthrough: true,
        mountpoint: PathBuf::new(),
        source: "lamina-overlayfs".into(),
    };
    let mut positional = Vec::new();
    let mut it = args.iter();
    let mut options = Vec::new();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => options.push(it.next().ok_or_else(usage)?.clone()),
            s if s.starts_with("-o") => options.push(s[2..].to_string()),
            "-f" => o.foreground = true,
            "-d" | "--debug" => o.foreground = true,
            "-h" | "--help" => return Err(usage()),
            "-V" | "--version" => {
                return Err(format!("lamina-overlayfs {}", env!("CARGO_PKG_VERSION")));
            }
            s if s.starts_with('-') => eprintln!("lamina-overlayfs: ignoring unknown flag {s}"),
            _ => positional.push(a.clone()),
        }
    }
    for opt in options.iter().flat_map(|s| s.split(',')) {
        let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
        match k {
            "lowerdir" => o
                .lowers
                .extend(v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from)),
            "upperdir" => o.upper = Some(PathBuf::from(v)),
            "workdir" => o.work = Some(PathBuf::from(v)),
            "ro" => o.read_only = true,
            "threads" => o.threads = v.parse().ok(),
            "passthrough" => o.passthrough = v != "0" && v != "off",
            ""
            | "rw"
            | "dev"
            | "suid"
            | "exec"
            | "nodev"
            | "nosuid"
            | "noexec"
            | "atime"
            | "noatime"
            | "relatime"
            | "async"
            | "allow_other"
            | "default_permissions" => {}
            _ => eprintln!("lamina-overlayfs: ignoring unsupported option {opt}"),
        }
    }
    match positional.len() {
        1 => o.mountpoint = PathBuf::from(&positional[0]),
        2 => {
            o.source = positional[0].clone();
            o.mountpoint = PathBuf::from(&positional[1]);
        }
        _ => return Err(usage()),
    }
    if o.lowers.is_empty() {
        return Err(format!("no lowerdir given\n{}", usage()));
    }
    if o.upper.is_some() != o.work.is_some() {
        return Err(
            "upperdir and workdir go together: give both, or neither for a read-only mount".into(),
        );
    }
    Ok(o)
}

fn serve(o: Opts) -> Result<(), String> {
    let upper = match (o.upper, o.work, o.read_only) {
        (Some(u), Some(w), false) => Some((u, w)),
        _ => None,
    };
    let mut cfg = OverlayConfig::new(o.lowers, upper);
    if let Some(t) = o.threads {
        cfg.threads = t;
    }
    cfg.passthrough = o.passthrough;
    let mounted = lamina_fuse::mount(cfg, &o.mountpoint, &o.source).map_err(|e| e.to_string())?;
    daemon::notify_ready();
    mounted.run().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("lamina-overlayfs: {msg}");
            return ExitCode::FAILURE;
        }
    };
    if opts.foreground || std::env::var_os(CHILD_ENV).is_some() {
        if std::env::var_os(CHILD_ENV).is_some() {
            daemon::detach();
        }
        return match serve(opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => {
                eprintln!("lamina-overlayfs: {msg}");
                ExitCode::FAILURE
            }
        };
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("lamina-overlayfs"));
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args).env(CHILD_ENV, "1");
    match daemon::spawn_and_wait(cmd) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
