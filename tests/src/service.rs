//! Fixtures for `lamina serve`: the daemon itself, a real containerd that
//! uses it as its `lamina` proxy snapshotter, a gRPC client of the snapshots
//! API, a raw HTTP client for the API socket, and a small runnable image made
//! from the host's own `dash`, `cat` and `ls` (with their libraries).

use anyhow::{Context as _, Result, bail, ensure};
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running `lamina serve` on a temporary root. SIGTERM on drop.
pub struct Serve {
    child: Option<Child>,
    /// The store root.
    pub root: PathBuf,
    /// containerd snapshotter socket.
    pub snapshotter_socket: PathBuf,
    /// HTTP API socket.
    pub api_socket: PathBuf,
    /// `--driver` value.
    pub driver: String,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl Serve {
    /// Starts `lamina --root ROOT serve --driver DRIVER` with its sockets in
    /// `sock_dir`, and waits until both sockets answer.
    pub fn start(root: &Path, sock_dir: &Path, driver: &str, extra: &[&str]) -> Result<Serve> {
        Self::start_with_env(root, sock_dir, driver, extra, &[])
    }

    /// [`Serve::start`] with extra environment variables for the daemon
    /// (registry settings of the layer fast path, auth files).
    pub fn start_with_env(
        root: &Path,
        sock_dir: &Path,
        driver: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Serve> {
        let mut s = Serve {
            child: None,
            root: root.to_owned(),
            snapshotter_socket: sock_dir.join("snapshotter.sock"),
            api_socket: sock_dir.join("api.sock"),
            driver: driver.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.root.with_extension("serve.log"))?;
        let child = Command::new(crate::bin("lamina"))
            .arg("--root")
            .arg(&self.root)
            .arg("serve")
            .arg("--driver")
            .arg(&self.driver)
            .arg("--snapshotter-socket")
            .arg(&self.snapshotter_socket)
            .arg("--api-socket")
            .arg(&self.api_socket)
            .args(&self.extra)
            .env("LAMINA_LOG", "lamina=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting lamina serve")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if UnixStream::connect(&self.snapshotter_socket).is_ok()
                && UnixStream::connect(&self.api_socket).is_ok()
            {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("lamina serve exited with {status}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("lamina serve did not open its sockets: {}", self.log())
    }

    /// The daemon's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.with_extension("serve.log")).unwrap_or_default()
    }

    /// Stops the daemon (SIGTERM, then waits).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops and starts the daemon again on the same root and sockets.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// Whether the daemon is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.stop();
        // The FUSE overlays the daemon mounted ahead outlive it by design;
        // detached here so the temp dir's removal never walks into one and
        // their servers exit.
        for m in mounts_under(&self.root) {
            let _ = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// The names in `dir`, sorted (none if it is missing).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort();
    found.dedup();
    found.reverse();
    found
}

/// The filesystem type of the mount at exactly `dir` (`fuse.lamina`,
/// `overlay`, ...), from /proc/self/mountinfo; `None` if nothing is mounted
/// there.
pub fn mount_type(dir: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (Path::new(left.split(' ').nth(4)?) == dir)
            .then(|| right.split(' ').next().unwrap_or_default().to_owned())
    })
}

/// A fresh temp dir (`PREFIX*`) with a daemon on `DIR/root`, its sockets in
/// `DIR`: bind as `let (tmp, root, serve) = ...` so the daemon goes first.
pub fn serve_in_tempdir(
    prefix: &str,
    driver: &str,
    extra: &[&str],
) -> Result<(tempfile::TempDir, PathBuf, Serve)> {
    let tmp = tempfile::Builder::new().prefix(prefix).tempdir()?;
    let root = tmp.path().join("root");
    let serve = Serve::start(&root, tmp.path(), driver, extra)?;
    Ok((tmp, root, serve))
}

/// The runnable image ([`build_runnable_image`]) pushed to a loopback
/// registry under several names.
pub struct RunnableImages {
    /// The registry serving them.
    pub registry: crate::registry::Registry,
    /// Temp dir holding the image's OCI layout (`oci/`), free for the test.
    pub tmp: tempfile::TempDir,
    /// `HOST/REPO:TAG` of each pushed name, in the order asked for.
    pub images: Vec<String>,
}

/// Builds the runnable image in a fresh temp dir (`PREFIX*`) and pushes it as
/// each of `repos` (`lamina/svc:v1`). `None` (after saying why) when no
/// registry can be started.
pub fn runnable_images(prefix: &str, repos: &[&str]) -> Option<RunnableImages> {
    let registry = crate::registry::Registry::start(crate::registry::Auth::Anonymous)?;
    let tmp = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir");
    let layout = tmp.path().join("oci");
    build_runnable_image(&layout, "v1").expect("building the runnable image");
    let images = repos
        .iter()
        .map(|repo| {
            registry
                .put_oci(&layout, "v1", repo)
                .expect("pushing the runnable image");
            format!("{}/{repo}", registry.host)
        })
        .collect();
    Some(RunnableImages {
        registry,
        tmp,
        images,
    })
}

/// A real containerd whose `lamina` snapshotter is a [`Serve`]. Killed on drop.
pub struct Containerd {
    child: Child,
    /// Temp dir with config, root, state and sockets.
    pub dir: tempfile::TempDir,
    /// containerd's gRPC socket.
    pub address: PathBuf,
    /// The containerd namespace `ctr` uses: unique per instance, because
    /// runc keeps its state per namespace under one host-wide root.
    pub namespace: String,
}

impl Containerd {
    /// Starts containerd with `[proxy_plugins.lamina]` pointing at
    /// `snapshotter_socket`; `None` (after saying why) when containerd, ctr
    /// or runc is missing or we are not root.
    pub fn start(snapshotter_socket: &Path) -> Option<Containerd> {
        for tool in ["containerd", "ctr", "runc", "mount.fuse3"] {
            if !crate::registry::have(tool) && !Path::new("/sbin").join(tool).exists() {
                eprintln!("SKIPPED: needs `{tool}` (apt-get install containerd runc fuse3)");
                return None;
            }
        }
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: containerd needs root");
            return None;
        }
        Some(Self::try_start(snapshotter_socket).expect("starting containerd"))
    }

    fn try_start(snapshotter_socket: &Path) -> Result<Containerd> {
        let dir = tempfile::Builder::new().prefix("lamina-ctd-").tempdir()?;
        let d = dir.path();
        let address = d.join("c.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{d}/debug.sock"
[proxy_plugins.lamina]
  type = "snapshot"
  address = "{snap}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = address.display(),
            d = d.display(),
            snap = snapshotter_socket.display(),
        );
        std::fs::write(d.join("config.toml"), config)?;
        // PATH is left as it is, without `lamina-overlayfs`: every mount
        // lamina hands out is a bind, an overlay or a bind of a FUSE mount
        // lamina made itself, so containerd never runs `mount.fuse3`. A
        // `fuse3.lamina-overlayfs` spec would fail the tests here.
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("containerd.log"))?)
            .spawn()
            .context("starting containerd")?;
        let namespace = format!(
            "lamina-{}",
            d.file_name()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches("lamina-ctd-")
        );
        let mut c = Containerd {
            child,
            dir,
            address,
            namespace,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if c.ctr(&["version"]).is_ok_and(|o| o.status.success()) {
                return Ok(c);
            }
            if let Ok(Some(status)) = c.child.try_wait() {
                bail!("containerd exited with {status}: {}", c.log());
            }
            ensure!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr --address SOCK ARGS...`.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running ctr")
    }

    /// Runs ctr and returns its stdout, failing with its stderr.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args)?;
        ensure!(
            out.status.success(),
            "ctr {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Containerd {
    /// `ctr run [FLAGS] --snapshotter lamina IMAGE ID CMD...`, returning its
    /// stdout; any failure fails the test.
    pub fn run(&self, flags: &[&str], image: &str, id: &str, cmd: &[&str]) -> Result<String> {
        let args = [
            &["run"][..],
            flags,
            &["--snapshotter", "lamina", image, id],
            cmd,
        ]
        .concat();
        let out = self.ctr(&args)?;
        if !out.status.success() {
            bail!(
                "ctr {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The marker file of the second layer of [`build_runnable_image`].
pub const LAYER2_FILE: &str = "etc/lamina-layer2";
/// Its content.
pub const LAYER2_CONTENT: &str = "second layer\n";

/// Builds `oci:LAYOUT:TAG`, two layers, runnable by runc: layer 1 has the
/// host's `dash` as `/bin/sh`, `cat`, `ls` and `sleep` with their shared libraries;
/// layer 2 adds [`LAYER2_FILE`] and deletes `/bin/ls` (a whiteout).
pub fn build_runnable_image(layout: &Path, tag: &str) -> Result<()> {
    use crate::registry::run;
    crate::registry::build_image_with(layout, tag, 2, |i, rootfs| {
        if i == 1 {
            std::fs::write(rootfs.join(LAYER2_FILE), LAYER2_CONTENT)?;
            std::fs::remove_file(rootfs.join("bin/ls"))?;
            return Ok(());
        }
        for (host, dest) in [
            ("/bin/dash", "bin/sh"),
            ("/bin/cat", "bin/cat"),
            ("/bin/ls", "bin/ls"),
            ("/bin/sleep", "bin/sleep"),
        ] {
            copy_into(Path::new(host), &rootfs.join(dest))?;
            let ldd = Command::new("ldd").arg(host).output()?;
            for line in String::from_utf8_lossy(&ldd.stdout).lines() {
                let lib = match line.split_once("=>") {
                    Some((_, rest)) => rest.split_whitespace().next(),
                    None => line.split_whitespace().next(),
                };
                if let Some(lib) = lib.filter(|l| l.starts_with('/')) {
                    copy_into(Path::new(lib), &rootfs.join(lib.trim_start_matches('/')))?;
                }
            }
        }
        for dir in ["tmp", "proc", "sys", "dev", "etc", "run"] {
            std::fs::create_dir_all(rootfs.join(dir))?;
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;
        Ok(())
    })?;
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci").args(["config", "--image", &image, "--config.cmd", "/bin/sh"]))?;
    Ok(())
}

fn copy_into(src: &Path, dest: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dest.parent().unwrap())?;
    std::fs::copy(src, dest).with_context(|| format!("copying {}", src.display()))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// One HTTP/1.1 request over a Unix socket: `(status, body)`. The body is
/// read to the end (`Connection: close`), de-chunked when chunked.
pub fn http(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<(u16, Vec<u8>)> {
    let raw = http_raw(socket, &{
        let body = body.unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: lamina\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        )
        .into_bytes();
        if !body.is_empty() {
            req.extend_from_slice(b"Content-Type: application/json\r\n");
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        req
    })?;
    parse_response(&raw)
}

/// Sends raw bytes to a Unix socket and returns everything it answers.
pub fn http_raw(socket: &Path, request: &[u8]) -> Result<Vec<u8>> {
    let mut s =
        UnixStream::connect(socket).with_context(|| format!("connecting {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    // A server may answer (413) and close before reading all of a big body.
    let _ = s.write_all(request);
    // Closing with part of our request unread makes the kernel report
    // ECONNRESET once its answer is read: that is the end of the answer.
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of HTTP headers in the answer")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let mut body = raw[end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size = usize::from_str_radix(std::str::from_utf8(&data[..nl])?.trim(), 16)?;
        data = &data[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// The snapshots gRPC client type.
pub type SnapshotsClient =
    containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient<
        containerd_snapshots::tonic::transport::Channel,
    >;

/// A gRPC client of the snapshotter socket.
pub async fn snapshots_client(socket: &Path) -> Result<SnapshotsClient> {
    let socket = socket.to_owned();
    let channel = containerd_snapshots::tonic::transport::Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_| {
            tokio::net::UnixStream::connect(socket.clone())
        }))
        .await?;
    Ok(SnapshotsClient::new(channel))
}

/// The names of the snapshots `List` returns for `filters` (containerd's
/// filter syntax), sorted.
pub async fn snapshot_names(c: &mut SnapshotsClient, filters: Vec<String>) -> Vec<String> {
    let mut stream = c
        .list(
            containerd_snapshots::api::snapshots::v1::ListSnapshotsRequest {
                snapshotter: "lamina".into(),
                filters,
            },
        )
        .await
        .unwrap()
        .into_inner();
    let mut names = vec![];
    while let Some(resp) = stream.message().await.unwrap() {
        names.extend(resp.info.into_iter().map(|i| i.name));
    }
    names.sort();
    names
}
