//! `lamina-overlayfs -o lowerdir=A:B,upperdir=U,workdir=W MOUNTPOINT`:
//! a fuse-overlayfs compatible front end to lamina's overlay driver.
//!
//! Accepts fuse-overlayfs's calling conventions: `-o` options (repeatable),
//! an optional source before the mount point (as `mount.fuse3` passes it for
//! `mount -t fuse.lamina-overlayfs SRC DIR`), `-f` to stay in the foreground.
//! Without `-f` it returns once the mount is ready, with the server running
//! in the background (what podman's `mount_program` expects). Options it does
//! not know are ignored with a warning, as fuse-overlayfs's own options that
//! change nothing here (`noacl`, `fast_ino`, ...) are ignored quietly: a
//! mount never fails on an option. `fsync=0` (fuse-overlayfs) and `volatile`
//! (kernel overlayfs) stop copy-ups from flushing the copied data to disk. Options are split on commas
//! outside double quotes (`context="a,b"`), and `\,` / `\:` escape a comma or
//! a colon in a path.
//!
//! The background server logs (`LAMINA_LOG`, default `warn`) to the file named
//! by `LAMINA_OVERLAYFS_LOG`, else to `/dev/null`: once the mount is ready its
//! launcher exits, and nothing may go to the launcher's pipes any more.

use lamina_fuse::{OverlayConfig, daemon};

#[path = "../logging.rs"]
mod logging;
use std::path::PathBuf;
use std::process::ExitCode;

const LOG_ENV: &str = "LAMINA_OVERLAYFS_LOG";

struct Opts {
    lowers: Vec<PathBuf>,
    upper: Option<PathBuf>,
    work: Option<PathBuf>,
    read_only: bool,
    foreground: bool,
    threads: Option<usize>,
    passthrough: bool,
    uring: lamina_fuse::Uring,
    uring_poll: Option<std::time::Duration>,
    sync_copy_up: bool,
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
        uring: lamina_fuse::Uring::default(),
        uring_poll: None,
        sync_copy_up: true,
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
    for opt in options.iter().flat_map(|s| split_unescaped(s, ',', true)) {
        let opt = opt.as_str();
        let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
        match k {
            "lowerdir" => o.lowers.extend(
                split_unescaped(v, ':', false)
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from),
            ),
            "upperdir" => o.upper = Some(PathBuf::from(unescape(v))),
            "workdir" => o.work = Some(PathBuf::from(unescape(v))),
            "ro" => o.read_only = true,
            "threads" => o.threads = v.parse().ok(),
            "passthrough" => o.passthrough = v != "0" && v != "off",
            // FUSE-over-io_uring: auto (default: when the kernel offers it),
            // on (the mount fails if the kernel does not offer it), off.
            "uring" => match v.parse() {
                Ok(u) => o.uring = u,
                Err(msg) => eprintln!("lamina-overlayfs: ignoring {msg}"),
            },
            // Microseconds an io_uring queue thread polls at most for its
            // next request (0: never).
            "uring_poll" => match v.parse() {
                Ok(us) => o.uring_poll = Some(std::time::Duration::from_micros(us)),
                Err(_) => eprintln!("lamina-overlayfs: ignoring uring_poll={v}: use microseconds"),
            },
            // Copy-ups flush their data before they take the name, unless
            // the caller trades that for speed (data it can recreate).
            "fsync" => o.sync_copy_up = v != "0",
            "volatile" => o.sync_copy_up = false,
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
            | "default_permissions"
            // fuse-overlayfs options with nothing to do here: lamina always
            // allocates stable inodes, keeps xattrs, and the kernel enforces
            // permissions.
            | "noacl"
            | "fast_ino"
            | "static_nlink"
            | "writeback"
            | "timeout"
            | "threaded"
            | "redirect_dir"
            | "context"
            | "debug"
            | "suid_dir"
            | "xattr_permissions" => {}
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

/// Splits `s` at `sep`, except where `sep` is escaped with a backslash or
/// (with `quotes`) inside double quotes; an escaped `sep` loses its
/// backslash, other escapes and the quotes are kept.
fn split_unescaped(s: &str, sep: char, quotes: bool) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let cur = out.last_mut().expect("never empty");
        match c {
            '\\' => match chars.next() {
                Some(n) if n == sep => cur.push(n),
                Some(n) => {
                    cur.push('\\');
                    cur.push(n);
                }
                None => cur.push('\\'),
            },
            '"' if quotes => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c == sep && !quoted => out.push(String::new()),
            c => cur.push(c),
        }
    }
    out
}

/// Resolves a backslash-escaped `:` in a single path (`\,` was resolved
/// when the options were split).
fn unescape(s: &str) -> String {
    s.replace("\\:", ":")
}

fn serve(o: Opts, background: bool) -> Result<(), String> {
    let upper = match (o.upper, o.work, o.read_only) {
        (Some(u), Some(w), false) => Some((u, w)),
        _ => None,
    };
    let mut cfg = OverlayConfig::new(o.lowers, upper);
    if let Some(t) = o.threads {
        cfg.threads = t;
    }
    cfg.passthrough = o.passthrough;
    cfg.uring = o.uring;
    if let Some(p) = o.uring_poll {
        cfg.uring_poll = p;
    }
    cfg.sync_copy_up = o.sync_copy_up;
    let mounted = lamina_fuse::mount(cfg, &o.mountpoint, &o.source).map_err(|e| e.to_string())?;
    daemon::notify_ready();
    if background {
        // The launcher exits now: nothing may go to its pipes any more.
        let log = std::env::var_os(LOG_ENV).map(PathBuf::from);
        if let Err(e) = daemon::redirect_output(log.as_deref()) {
            tracing::warn!("cannot open the log file: {e}; logging to /dev/null");
        }
    }
    tracing::info!(
        "serving {} (pid {})",
        o.mountpoint.display(),
        std::process::id()
    );
    let mountpoint = o.mountpoint.clone();
    let res = mounted.run().map_err(|e| e.to_string());
    match &res {
        Ok(()) => tracing::info!("{} unmounted; server exiting", mountpoint.display()),
        Err(e) => tracing::error!("serving {} failed: {e}", mountpoint.display()),
    }
    res
}

fn main() -> ExitCode {
    logging::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("lamina-overlayfs: {msg}");
            return ExitCode::FAILURE;
        }
    };
    let background = std::env::var_os(daemon::SERVER_ENV).is_some();
    if opts.foreground || background {
        if background {
            daemon::detach();
        }
        return match serve(opts, background) {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => {
                eprintln!("lamina-overlayfs: {msg}");
                ExitCode::FAILURE
            }
        };
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("lamina-overlayfs"));
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args).env(daemon::SERVER_ENV, "1");
    match daemon::spawn_and_wait(cmd) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn podman_option_string_parses() {
        // What containers/storage passes as mount_program, with a trailing
        // comma, fuse-overlayfs-only options and an SELinux context.
        let o = parse(&args(&[
            "-o",
            "lowerdir=/s/l/A:/s/l/B,upperdir=/s/c/diff,workdir=/s/c/work,,fsync=0,noacl,\
             context=\"system_u:object_r:container_file_t:s0:c1,c2\",volatile",
            "/s/c/merged",
        ]))
        .unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("/s/l/A"), "/s/l/B".into()]);
        assert_eq!(o.upper, Some("/s/c/diff".into()));
        assert_eq!(o.work, Some("/s/c/work".into()));
        assert_eq!(o.mountpoint, PathBuf::from("/s/c/merged"));
        assert!(
            !o.sync_copy_up,
            "fsync=0 and volatile: copy-ups are not flushed"
        );
    }

    #[test]
    fn copy_ups_are_flushed_unless_asked_not_to() {
        let sync = |opts: &str| parse(&args(&["-o", opts, "/m"])).unwrap().sync_copy_up;
        assert!(sync("lowerdir=/l,upperdir=/u,workdir=/w"));
        assert!(sync("lowerdir=/l,upperdir=/u,workdir=/w,fsync=1"));
        assert!(!sync("lowerdir=/l,upperdir=/u,workdir=/w,fsync=0"));
        assert!(!sync("lowerdir=/l,upperdir=/u,workdir=/w,volatile"));
    }

    #[test]
    fn escaped_separators_stay_in_paths() {
        let o = parse(&args(&[
            "-o",
            r"lowerdir=/a\:b:/c\,d,upperdir=/u\:1,workdir=/w",
            "src",
            "/m",
        ]))
        .unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("/a:b"), "/c,d".into()]);
        assert_eq!(o.upper, Some("/u:1".into()));
        assert_eq!(o.source, "src");
    }

    #[test]
    fn unknown_options_never_fail_the_parse() {
        let o = parse(&args(&[
            "-o",
            "lowerdir=/l,frobnicate=7,squash_to_root",
            "/m",
        ]))
        .unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("/l")]);
        assert!(parse(&args(&["-o", "upperdir=/u,workdir=/w", "/m"])).is_err());
    }
}
