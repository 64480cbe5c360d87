//! Serving a mount from a background process that reports readiness.
//!
//! The foreground command starts the server as a child with stdout and
//! stderr piped and returns once the child prints [`READY`] on stdout (the
//! mount is then visible), or fails with the child's error output. The child
//! leaves the caller's session ([`detach`]) so that it outlives it.
//!
//! Once ready, the server points its stdout and stderr at a log file or
//! `/dev/null` ([`redirect_output`]): the launcher exits right after the
//! handshake, and a write to a pipe nobody reads is `EPIPE` (or `SIGPIPE`),
//! which would kill or wedge a server that logs.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The line a server prints on stdout once its mount is ready.
pub const READY: &str = "lamina-mount-ready";

/// Set (to any value) in a `lamina-overlayfs` server's environment by
/// whoever starts it with [`spawn_and_wait`]: the process is then the
/// background server itself, not a launcher that starts one.
pub const SERVER_ENV: &str = "LAMINA_OVERLAYFS_SERVER";

/// Starts `cmd` and waits until it reports readiness; returns the running
/// child. On failure the error carries what the child printed on stderr.
pub fn spawn_and_wait(mut cmd: Command) -> std::io::Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut line = String::new();
    let ready = BufReader::new(stdout).read_line(&mut line).is_ok() && line.trim() == READY;
    // Whatever the child said so far (warnings, or the reason it failed).
    let mut said = Vec::new();
    if !ready {
        let _ = child.wait();
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    while let Ok(chunk) = rx.try_recv() {
        said.extend(chunk);
    }
    if ready {
        let _ = std::io::stderr().write_all(&said);
        return Ok(child);
    }
    let msg = String::from_utf8_lossy(&said).trim().to_string();
    Err(std::io::Error::other(if msg.is_empty() {
        "the mount server exited before the mount was ready".to_string()
    } else {
        msg
    }))
}

/// In the server: report readiness to the waiting parent.
pub fn notify_ready() {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{READY}");
    let _ = out.flush();
}

/// In the server: leave the caller's session and process group, so that
/// signals to the caller's terminal do not reach the server.
pub fn detach() {
    let _ = rustix::process::setsid();
}

/// In the server, right after [`notify_ready`]: stdout goes to `/dev/null`
/// and stderr (where the server logs) is appended to `log`, created `0600`
/// if missing, or goes to `/dev/null` when `log` is `None`. If `log` cannot
/// be opened, stderr goes to `/dev/null` too and the error is returned.
pub fn redirect_output(log: Option<&Path>) -> std::io::Result<()> {
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    rustix::stdio::dup2_stdout(&null)?;
    let opened = log.map(|p| {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(p)
    });
    match opened {
        Some(Ok(f)) => Ok(rustix::stdio::dup2_stderr(&f)?),
        Some(Err(e)) => {
            rustix::stdio::dup2_stderr(&null)?;
            Err(e)
        }
        None => Ok(rustix::stdio::dup2_stderr(&null)?),
    }
}
