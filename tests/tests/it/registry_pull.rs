//! `lamina pull` / `push` / `login` against a real `docker-registry`: the
//! store's layer dirs must hold what `umoci unpack` makes of the same image,
//! pushes must read back through skopeo + umoci, a killed pull resumes with
//! `Range`, and corrupt bytes never become blobs.

use lamina_registry::manifest::{OCI_INDEX, OCI_MANIFEST};
use lamina_registry::{Client, Digest, Reference};
use lamina_tests::registry::{
    Auth, Proxy, ProxyMode, Registry, arch_images, big_file_image, build_image, merged_listing,
    random_bytes, runtime, tree_listing, umoci_unpack,
};
use lamina_tests::require_tools;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs lamina with a fresh credential environment rooted in `env_dir`.
pub(crate) fn lamina(root: &Path, env_dir: &Path, args: &[&str]) -> Output {
    lamina_cmd(root, env_dir, args).output().unwrap()
}

pub(crate) fn lamina_cmd(root: &Path, env_dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(lamina_tests::bin("lamina"));
    c.arg("--root")
        .arg(root)
        .args(args)
        .env("HOME", env_dir)
        .env("DOCKER_CONFIG", env_dir.join("docker"))
        .env("LAMINA_AUTH_FILE", env_dir.join("auth.json"))
        .env_remove("XDG_CONFIG_HOME")
        .env("LAMINA_REGISTRY_RETRIES", "1")
        .env("LAMINA_REGISTRY_TIMEOUT", "10")
        .stdin(Stdio::null());
    c
}

pub(crate) fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "lamina failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn err(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "lamina should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The store's layer dirs of `name`, merged (upper layers win; the test
/// images have no whiteouts), against umoci's rootfs of the source, compared
/// with the tree helper: types, modes, owners, content, xattrs, file mtimes.
fn assert_same_tree(root: &Path, name: &str, layout: &Path, tag: &str, scratch: &Path) {
    use lamina_tests::tree::{Options, Snapshot, assert_same, snapshot};
    let store = lamina_store::Store::open(root).unwrap();
    let image = store.image(name).unwrap();
    let dirs = store.image_layer_dirs(&image).unwrap();
    let mut merged = Snapshot {
        nodes: Default::default(),
        hardlinks: vec![],
    };
    for d in &dirs {
        let s = snapshot(d, Options::default()).unwrap();
        merged.nodes.extend(s.nodes);
        merged.hardlinks.extend(s.hardlinks);
    }
    let want = snapshot(
        &umoci_unpack(layout, tag, scratch).unwrap(),
        Options::default(),
    )
    .unwrap();
    assert_same(
        &want,
        &merged,
        &format!("layer dirs of {name} vs umoci unpack"),
    )
    .unwrap();
    // The simpler listing agrees too.
    assert_eq!(
        merged_listing(&dirs).unwrap(),
        tree_listing(&scratch.join("rootfs")).unwrap()
    );
}

fn image(dir: &Path) -> std::path::PathBuf {
    let layout = dir.join("oci");
    let noise = random_bytes(200_000);
    build_image(
        &layout,
        "v1",
        &[
            &[
                ("etc/os-release", b"NAME=test\n"),
                ("usr/bin/", b""),
                ("usr/bin/tool", b"#!/bin/sh\n"),
            ],
            &[("srv/data.bin", &noise[..]), ("srv/link", b"->data.bin")],
            &[("etc/motd", b"third layer\n")],
        ],
    )
    .unwrap();
    layout
}

#[test]
fn pull_anonymous_layers_match_umoci_and_second_pull_fetches_nothing() {
    require_tools!("umoci", "skopeo");
    let Some(p) = Registry::with_image(Auth::Anonymous, "lib/app:v1", image) else {
        return;
    };
    let dir = p.dir.path();
    let root = dir.join("root");
    let out = ok(&lamina(&root, dir, &["pull", &p.name]));
    assert!(out.contains("unpacked"), "{out}");
    assert_same_tree(&root, &p.name, &p.layout, "v1", &dir.join("u"));
    // Everything is there now: nothing is fetched again.
    let again = ok(&lamina(&root, dir, &["pull", &p.name]));
    assert!(again.contains("fetched 0"), "{again}");
    assert!(!again.contains("download"), "{again}");
    // By digest, into another store: the same layers, named by digest.
    let digest = again
        .split_whitespace()
        .skip_while(|w| *w != "pulled")
        .nth(2)
        .unwrap()
        .to_string();
    let by_digest = format!("{}/lib/app@{digest}", p.reg.host);
    let root2 = dir.join("root2");
    ok(&lamina(&root2, dir, &["pull", &by_digest]));
    assert_same_tree(&root2, &by_digest, &p.layout, "v1", &dir.join("u2"));
    let wrong = format!("{}/lib/app@sha256:{}", p.reg.host, "0".repeat(64));
    let e = err(&lamina(&root2, dir, &["pull", &wrong]));
    assert!(
        e.contains("404")
            && e.contains(&format!("/v2/lib/app/manifests/sha256:{}", "0".repeat(64))),
        "{e}"
    );
}

#[test]
fn login_then_pull_with_htpasswd() {
    require_tools!("umoci", "skopeo", "htpasswd");
    let Some(p) = Registry::with_image(Auth::htpasswd("carol", "pa55-word"), "priv/app:v1", image)
    else {
        return;
    };
    let dir = p.dir.path();
    let root = dir.join("root");

    let e = err(&lamina(&root, dir, &["pull", &p.name]));
    assert!(
        e.contains("401") && e.contains(&format!("http://{}/v2/priv/app/manifests/v1", p.reg.host)),
        "{e}"
    );

    let login = |password: &str| {
        let mut c = lamina_cmd(
            &root,
            dir,
            &["login", &p.reg.host, "-u", "carol", "--password-stdin"],
        );
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        std::io::Write::write_all(
            child.stdin.as_mut().unwrap(),
            format!("{password}\n").as_bytes(),
        )
        .unwrap();
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    };
    let e = err(&login("not-it"));
    assert!(e.contains("401") && !e.contains("not-it"), "{e}");
    assert!(
        !dir.join("auth.json").exists(),
        "failed login must not store credentials"
    );
    ok(&login("pa55-word"));
    let auth = dir.join("auth.json");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&auth).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&auth).unwrap();
    assert!(
        text.contains(&p.reg.host) && !text.contains("pa55-word"),
        "{text}"
    );

    ok(&lamina(&root, dir, &["pull", &p.name]));
    assert_same_tree(&root, &p.name, &p.layout, "v1", &dir.join("u"));
}

#[test]
fn pull_with_token_auth_and_docker_config() {
    require_tools!("umoci", "skopeo", "openssl");
    let Some(p) = Registry::with_image(Auth::token("dave", "t0ken", false), "tok/app:v1", image)
    else {
        return;
    };
    let dir = p.dir.path();
    let root = dir.join("root");
    let e = err(&lamina(&root, dir, &["pull", &p.name]));
    assert!(e.contains("401") && e.contains("/token"), "{e}");
    // Credentials from docker's config.json.
    std::fs::create_dir_all(dir.join("docker")).unwrap();
    std::fs::write(
        dir.join("docker/config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"ZGF2ZTp0MGtlbg=="}}}}}}"#,
            p.reg.host
        ),
    )
    .unwrap();
    let before = p
        .reg
        .issuer
        .as_ref()
        .unwrap()
        .issued
        .load(std::sync::atomic::Ordering::SeqCst);
    ok(&lamina(&root, dir, &["pull", &p.name]));
    let used = p
        .reg
        .issuer
        .as_ref()
        .unwrap()
        .issued
        .load(std::sync::atomic::Ordering::SeqCst)
        - before;
    assert_eq!(
        used, 1,
        "one pull token reused for manifest, config and 3 layers"
    );
    assert_same_tree(&root, &p.name, &p.layout, "v1", &dir.join("u"));
}

#[test]
fn push_reads_back_with_skopeo_and_umoci() {
    require_tools!("umoci", "skopeo");
    let Some(p) = Registry::with_image(Auth::Anonymous, "src/app:v1", image) else {
        return;
    };
    let dir = p.dir.path();
    let Some(other) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let root = dir.join("root");
    ok(&lamina(&root, dir, &["pull", &p.name]));
    // Same registry, other repository: blobs are mounted.
    let same = format!("{}/dst/app:v2", p.reg.host);
    let out = ok(&lamina(&root, dir, &["push", &p.name, &same]));
    assert!(out.contains("mounted from src/app"), "{out}");
    // Another registry, small chunks: chunked uploads.
    let far = format!("{}/far/app:v3", other.host);
    let mut c = lamina_cmd(&root, dir, &["push", &p.name, &far]);
    c.env("LAMINA_PUSH_CHUNK_SIZE", "65536");
    let out = ok(&c.output().unwrap());
    assert!(out.contains("chunks"), "{out}");
    // Again: everything exists.
    let out = ok(&lamina(&root, dir, &["push", &p.name, &far]));
    assert!(!out.contains("uploaded"), "{out}");

    use lamina_tests::tree::{Options, assert_same, snapshot};
    let want = snapshot(
        &umoci_unpack(&p.layout, "v1", &dir.join("w")).unwrap(),
        Options::default(),
    )
    .unwrap();
    for (r, repo, tag) in [(&p.reg, "dst/app:v2", "v2"), (&other, "far/app:v3", "v3")] {
        let back = dir.join(format!("back-{tag}"));
        r.get_oci(repo, &back, tag).unwrap();
        let got = umoci_unpack(&back, tag, &dir.join(format!("b-{tag}"))).unwrap();
        assert_same(&want, &snapshot(&got, Options::default()).unwrap(), repo).unwrap();
    }
}

#[test]
fn multi_platform_pull_picks_platform_and_lists_alternatives() {
    require_tools!("umoci", "skopeo");
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layout = arch_images(dir.path());
    let mut entries = vec![];
    for (tag, arch) in [("amd", "amd64"), ("arm", "arm64")] {
        reg.put_oci(&layout, tag, &format!("multi/app:{tag}"))
            .unwrap();
        let c = Client::new(Default::default()).unwrap();
        let m = runtime()
            .block_on(
                c.manifest(&Reference::parse(&format!("{}/multi/app:{tag}", reg.host)).unwrap()),
            )
            .unwrap();
        entries.push(serde_json::json!({"mediaType": m.media_type, "digest": m.digest.to_string(), "size": m.bytes.len(),
            "platform": {"os": "linux", "architecture": arch}}));
    }
    let index =
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
    let c = Client::new(Default::default()).unwrap();
    let r = Reference::parse(&format!("{}/multi/app:all", reg.host)).unwrap();
    let index_digest = runtime()
        .block_on(c.push_manifest(&r, OCI_INDEX, serde_json::to_vec(&index).unwrap()))
        .unwrap();
    let _ = OCI_MANIFEST;

    let root = dir.path().join("root");
    let name = r.to_string();
    for (platform, want) in [("linux/arm64", "arm64\n"), ("linux/amd64", "amd64\n")] {
        ok(&lamina(
            &root,
            dir.path(),
            &["pull", "--platform", platform, &name],
        ));
        let store = lamina_store::Store::open(&root).unwrap();
        let img = store.image(&name).unwrap();
        let dirs = store.image_layer_dirs(&img).unwrap();
        assert_eq!(
            std::fs::read_to_string(dirs.last().unwrap().join("arch")).unwrap(),
            want
        );
        assert!(
            img.index_digests
                .iter()
                .any(|d| d.as_str() == index_digest.as_str())
        );
    }
    let e = err(&lamina(
        &root,
        dir.path(),
        &["pull", "--platform", "linux/riscv64", &name],
    ));
    assert!(
        e.contains("linux/amd64") && e.contains("linux/arm64") && e.contains("--platform"),
        "{e}"
    );
    // Pushing the multi-platform image pushes the index when all of it is here.
    let out = ok(&lamina(
        &root,
        dir.path(),
        &["push", &name, &format!("{}/copy/app:all", reg.host)],
    ));
    assert!(out.contains(index_digest.as_str()), "{out}");
}

#[test]
fn killed_pull_resumes_with_range() {
    require_tools!("umoci", "skopeo");
    let big = random_bytes(16 << 20);
    let Some(p) = Registry::with_image(Auth::Anonymous, "big/app:v1", |d| big_file_image(d, &big))
    else {
        return;
    };
    let dir = p.dir.path();
    let proxy = Proxy::start(&p.reg.host, ProxyMode::Throttle(4 << 20));
    let root = dir.join("root");
    let name = format!("{}/big/app:v1", proxy.host);
    let mut child = lamina_cmd(&root, dir, &["pull", &name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let layer_path = |gets: &[(String, Option<String>, u64)]| {
        gets.iter().max_by_key(|g| g.2).map(|g| g.0.clone())
    };
    loop {
        let gets = proxy.blob_gets();
        if gets.iter().any(|g| g.2 > 8 << 20) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pull did not progress: {gets:?}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pull ended before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let first = proxy.blob_gets();
    let path = layer_path(&first).unwrap();
    let first_bytes: u64 = first.iter().filter(|g| g.0 == path).map(|g| g.2).sum();
    proxy.set_mode(ProxyMode::Pass);
    let out = ok(&lamina(&root, dir, &["pull", &name]));
    assert!(out.contains("resume"), "{out}");
    let all = proxy.blob_gets();
    let second: Vec<_> = all[first.len()..]
        .iter()
        .filter(|g| g.0 == path)
        .cloned()
        .collect();
    assert_eq!(second.len(), 1, "{second:?}");
    let range = second[0]
        .1
        .clone()
        .expect("the second pull asks for a Range");
    let from: u64 = range
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    // What reached the ingest file survives kill -9; what sat in socket
    // buffers, the channel and the write buffer is fetched again.
    assert!(from > 2 << 20, "resumed from {from}");
    let layer_size = std::fs::metadata(
        p.layout
            .join("blobs/sha256")
            .join(path.rsplit(':').next().unwrap()),
    )
    .unwrap()
    .len();
    let total = first_bytes + second[0].2;
    eprintln!(
        "killed after {first_bytes} bytes sent, resumed from {from}, {total} bytes in all for a {layer_size}-byte layer"
    );
    // About one layer (plus what was in flight at the kill), never two.
    assert!(
        total < layer_size + layer_size / 3,
        "fetched {total} bytes for a {layer_size}-byte layer"
    );
    let store = lamina_store::Store::open(&root).unwrap();
    let img = store.image(&name).unwrap();
    let dirs = store.image_layer_dirs(&img).unwrap();
    assert_eq!(std::fs::read(dirs[0].join("big.bin")).unwrap(), big);
}

#[test]
fn corrupt_bytes_never_become_blobs() {
    require_tools!("umoci", "skopeo");
    let Some(p) = Registry::with_image(Auth::Anonymous, "bad/app:v1", image) else {
        return;
    };
    let dir = p.dir.path();
    let proxy = Proxy::start(&p.reg.host, ProxyMode::Corrupt);
    let root = dir.join("root");
    let name = format!("{}/bad/app:v1", proxy.host);
    let e = err(&lamina(&root, dir, &["pull", &name]));
    assert!(
        e.contains("digest mismatch")
            && e.contains(&format!("http://{}/v2/bad/app/blobs/sha256:", proxy.host)),
        "{e}"
    );
    // The corrupted layer (the 200 kB one, layer 2) is neither a blob nor a
    // layer dir; only the verified layer below it may have been kept.
    let store = lamina_store::Store::open(&root).unwrap();
    let bad_digest = e
        .split("blobs/")
        .nth(1)
        .and_then(|s| s.get(..71))
        .unwrap()
        .to_string();
    let bad = lamina_store::Digest::parse(&bad_digest).unwrap();
    assert_eq!(
        store.content().info(&bad).unwrap(),
        None,
        "{bad} must not be a blob"
    );
    assert!(store.images().unwrap().is_empty());
    let layers: Vec<_> = std::fs::read_dir(root.join("layers"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        layers.len() <= 1,
        "only the bottom layer may be unpacked: {layers:?}"
    );
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            p.layout.join("blobs/sha256").join(
                serde_json::from_slice::<serde_json::Value>(
                    &std::fs::read(p.layout.join("index.json")).unwrap(),
                )
                .unwrap()["manifests"][0]["digest"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("sha256:"),
            ),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        m["layers"][1]["digest"].as_str(),
        Some(bad_digest.as_str()),
        "the big layer is the corrupted one"
    );
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            p.layout.join("blobs/sha256").join(
                m["config"]["digest"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("sha256:"),
            ),
        )
        .unwrap(),
    )
    .unwrap();
    let diff = |i: usize| {
        lamina_store::Digest::parse(config["rootfs"]["diff_ids"][i].as_str().unwrap()).unwrap()
    };
    let chain2 = lamina_store::chain_id(Some(&lamina_store::chain_id(None, &diff(0))), &diff(1));
    assert!(
        !store.has_layer(&chain2).unwrap(),
        "the corrupted layer must not be unpacked"
    );
    assert!(!root.join("layers").join(chain2.hex()).exists());
    // Through a clean path the same pull then works.
    ok(&lamina(&root, dir, &["pull", &p.name]));
    assert_same_tree(&root, &p.name, &p.layout, "v1", &dir.join("u"));
    let _ = Digest::of(b"");
}

#[test]
fn pull_with_docker_credential_helper() {
    require_tools!("umoci", "skopeo", "htpasswd");
    let Some(p) = Registry::with_image(Auth::htpasswd("erin", "h3lper"), "helped/app:v1", image)
    else {
        return;
    };
    let dir = p.dir.path();
    // A credential helper speaking docker's protocol: server URL on stdin, JSON on stdout.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-lamina-test");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\n[ \"$server\" = \"{}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\necho '{{\"ServerURL\":\"'$server'\",\"Username\":\"erin\",\"Secret\":\"h3lper\"}}'\n",
            p.reg.host
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(dir.join("docker")).unwrap();
    std::fs::write(
        dir.join("docker/config.json"),
        r#"{"credsStore":"lamina-test"}"#,
    )
    .unwrap();
    let root = dir.join("root");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = lamina_cmd(&root, dir, &["pull", &p.name])
        .env("PATH", &path)
        .output()
        .unwrap();
    ok(&out);
    assert_same_tree(&root, &p.name, &p.layout, "v1", &dir.join("u"));
    // Without the helper on PATH, the registry refuses.
    let e = err(&lamina(&dir.join("root2"), dir, &["pull", &p.name]));
    assert!(e.contains("401"), "{e}");
}

#[test]
fn plain_http_only_for_loopback_or_insecure() {
    require_tools!("umoci", "skopeo");
    let Some(ip) = lamina_tests::registry::non_loopback_ip() else {
        eprintln!("SKIPPED: no non-loopback IPv4 address on this machine");
        return;
    };
    let Some(p) = Registry::start_on(&ip).map(|r| r.place("net/app:v1", image)) else {
        return;
    };
    let dir = p.dir.path();
    let root = dir.join("root");
    // HTTPS is required off loopback: the plain-HTTP registry fails the TLS handshake.
    let e = err(&lamina(&root, dir, &["pull", &p.name]));
    assert!(
        e.contains(&format!("https://{}/v2/", p.reg.host)) && e.contains("--insecure"),
        "{e}"
    );
    // With --insecure, lamina falls back to plain HTTP.
    ok(&lamina(&root, dir, &["pull", "--insecure", &p.name]));
    assert_same_tree(&root, &p.name, &p.layout, "v1", &dir.join("u"));
}
