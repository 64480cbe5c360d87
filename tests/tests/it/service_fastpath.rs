//! The remote-snapshotter fast path of `lamina serve`: a Prepare carrying
//! containerd's CRI labels (`cri.image-ref`, `cri.manifest-digest`,
//! `cri.layer-digest`, `containerd.io/snapshot.ref`) has lamina fetch the
//! layer from a real loopback registry itself and answer AlreadyExists; the
//! layer dirs are `lamina pull`'s; every failure falls back to a normal
//! Prepare and registers nothing.

use containerd_snapshots::api::snapshots::v1 as api;
use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::Code;
use lamina_registry::{Client, ClientOptions, CredentialSources, Credentials, Reference};
use lamina_tests::registry::{Auth, Placed, Registry, build_image, free_port, random_bytes};
use lamina_tests::service::{Serve, SnapshotsClient, snapshot_names, snapshots_client};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

const REF: &str = "containerd.io/snapshot.ref";
const IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
const MANIFEST: &str = "containerd.io/snapshot/cri.manifest-digest";
const LAYER: &str = "containerd.io/snapshot/cri.layer-digest";
const LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
const BOGUS: &str = "sha256:4444444444444444444444444444444444444444444444444444444444444444";

/// An image in a loopback registry, as CRI's puller sees it.
struct Image {
    /// `HOST/REPO:TAG`.
    name: String,
    manifest: String,
    /// Layer blob digests, bottom first.
    blobs: Vec<String>,
    /// Chain ids, bottom first.
    chains: Vec<String>,
}

impl Image {
    /// A two-layer image in a fresh registry (kept running by the
    /// [`Placed`]); `None` (after saying why) when the registry or
    /// umoci/skopeo is missing.
    fn place() -> Option<(Placed, Image)> {
        Self::place_with(Auth::Anonymous, None)
    }

    /// [`Image::place`] in a registry with `auth`, read with `creds`.
    fn place_with(auth: Auth, creds: Option<&Credentials>) -> Option<(Placed, Image)> {
        for tool in ["umoci", "skopeo"] {
            if !lamina_tests::registry::have(tool) {
                eprintln!("SKIPPED: needs `{tool}` on PATH (install it; CI has it)");
                return None;
            }
        }
        let placed = Registry::with_image(auth, "fast/app:v1", |dir| {
            let layout = dir.join("oci");
            let noise = random_bytes(300_000);
            build_image(
                &layout,
                "v1",
                &[
                    &[
                        ("etc/os-release", b"NAME=fast\n"),
                        ("usr/bin/", b""),
                        ("usr/bin/tool", b"#!/bin/sh\n"),
                    ],
                    &[("srv/data.bin", &noise[..]), ("etc/motd", b"layer two\n")],
                ],
            )
            .unwrap();
            layout
        })?;
        let img = Image::describe(&placed.name, creds);
        Some((placed, img))
    }

    /// What the registry serves for `name`.
    fn describe(name: &str, creds: Option<&Credentials>) -> Image {
        let name = name.to_owned();
        // What the registry serves (skopeo may have rewritten the manifest).
        let (manifest, blobs, diff_ids) = lamina_tests::registry::runtime().block_on(async {
            let r = Reference::parse(&name).unwrap();
            let mut opts = ClientOptions {
                credentials: CredentialSources::none(),
                ..ClientOptions::default()
            };
            if let Some(c) = creds {
                opts.credentials.explicit = vec![(r.registry().to_owned(), c.clone())];
            }
            let client = Client::new(opts).unwrap();
            let m = client.manifest(&r).await.unwrap();
            let config = m.config.clone().unwrap();
            let bytes = client
                .blob_bytes(&r, &config.digest, config.size, 1 << 20)
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let diff_ids: Vec<String> = v["rootfs"]["diff_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap().to_owned())
                .collect();
            let blobs: Vec<String> = m.layers.iter().map(|l| l.digest.to_string()).collect();
            (m.digest.to_string(), blobs, diff_ids)
        });
        let mut chains: Vec<String> = vec![];
        let mut parent: Option<lamina_store::Digest> = None;
        for d in &diff_ids {
            let c =
                lamina_store::chain_id(parent.as_ref(), &lamina_store::Digest::parse(d).unwrap());
            chains.push(c.to_string());
            parent = Some(c);
        }
        Image {
            name,
            manifest,
            blobs,
            chains,
        }
    }

    /// The labels CRI puts on the Prepare of layer `i`.
    fn labels(&self, i: usize) -> HashMap<String, String> {
        HashMap::from([
            (REF.to_owned(), self.chains[i].clone()),
            (IMAGE_REF.to_owned(), self.name.clone()),
            (MANIFEST.to_owned(), self.manifest.clone()),
            (LAYER.to_owned(), self.blobs[i].clone()),
            (LAYERS.to_owned(), self.blobs[i..].join(",")),
        ])
    }
}

/// A daemon on a fresh root, with the test's own (empty) auth files and few
/// registry retries.
fn serve(prefix: &str, extra: &[&str]) -> (tempfile::TempDir, PathBuf, Serve) {
    let tmp = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    let root = tmp.path().join("root");
    let home = tmp.path().to_str().unwrap().to_owned();
    let docker = tmp.path().join("docker");
    let auth = tmp.path().join("auth.json");
    let serve = Serve::start_with_env(
        &root,
        tmp.path(),
        "fuse",
        extra,
        &[
            ("HOME", &home),
            ("DOCKER_CONFIG", docker.to_str().unwrap()),
            ("LAMINA_AUTH_FILE", auth.to_str().unwrap()),
            ("LAMINA_REGISTRY_RETRIES", "1"),
            ("LAMINA_REGISTRY_TIMEOUT", "10"),
        ],
    )
    .unwrap();
    (tmp, root, serve)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn prepare(
    c: &mut SnapshotsClient,
    key: &str,
    parent: &str,
    labels: HashMap<String, String>,
) -> Result<Vec<Mount>, containerd_snapshots::tonic::Status> {
    c.prepare(api::PrepareSnapshotRequest {
        snapshotter: "lamina".into(),
        key: key.into(),
        parent: parent.into(),
        labels,
    })
    .await
    .map(|r| r.into_inner().mounts)
}

async fn stat(c: &mut SnapshotsClient, key: &str) -> Result<api::Info, Code> {
    c.stat(api::StatSnapshotRequest {
        snapshotter: "lamina".into(),
        key: key.into(),
    })
    .await
    .map(|r| r.into_inner().info.unwrap())
    .map_err(|s| s.code())
}

async fn remove(c: &mut SnapshotsClient, key: &str) {
    c.remove(api::RemoveSnapshotRequest {
        snapshotter: "lamina".into(),
        key: key.into(),
    })
    .await
    .unwrap();
}

fn layer_dir(root: &Path, chain: &str) -> PathBuf {
    root.join("layers")
        .join(chain.trim_start_matches("sha256:"))
}

/// How many layers the daemon fetched through the fast path (its log
/// lines); with `bytes`, only those whose blob it downloaded then (not
/// prefetched before).
fn fetches(serve: &Serve, bytes: bool) -> usize {
    serve
        .log()
        .lines()
        .filter(|l| l.contains("layer fetched by lamina") && !(bytes && l.contains("fetched=0")))
        .count()
}

fn blob_path(root: &Path, digest: &str) -> PathBuf {
    root.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn lamina(root: &Path, env_dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(lamina_tests::bin("lamina"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env("HOME", env_dir)
        .env("DOCKER_CONFIG", env_dir.join("docker"))
        .env("LAMINA_AUTH_FILE", env_dir.join("auth.json"))
        .env("LAMINA_REGISTRY_RETRIES", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lamina {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_fsck_clean(root: &Path) {
    let report = lamina_store::Store::open(root).unwrap().fsck().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

/// The store checks clean and the daemon is still up.
fn assert_healthy(root: &Path, serve: &mut Serve) {
    assert_fsck_clean(root);
    assert!(serve.alive(), "{}", serve.log());
}

#[test]
fn labelled_prepares_fetch_the_layers_and_lamina_pull_reuses_them() {
    if !lamina_tests::overlay::fuse_available() {
        eprintln!("SKIPPED: needs root and /dev/fuse");
        return;
    }
    let Some((_placed, img)) = Image::place() else {
        return;
    };
    let (tmp, root, mut serve) = serve("lamina-fast-ok-", &[]);
    let [t1, t2] = [&img.chains[0], &img.chains[1]];
    rt().block_on(async {
        let mut c = snapshots_client(&serve.snapshotter_socket).await.unwrap();

        // Layer 1: fetched by lamina, registered under the snapshot.ref name.
        let e = prepare(&mut c, &format!("ns/1/extract-1 {t1}"), "", img.labels(0))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{e:?}\n{}", serve.log());
        let info = stat(&mut c, t1).await.unwrap();
        assert_eq!(
            (info.kind, info.parent.as_str()),
            (3, ""),
            "committed, no parent"
        );
        assert_eq!(info.labels.get(REF), Some(t1));
        assert_eq!(info.labels.get(LAYER), Some(&img.blobs[0]));
        assert_eq!(
            stat(&mut c, &format!("ns/1/extract-1 {t1}"))
                .await
                .unwrap_err(),
            Code::NotFound,
            "the active key is not kept"
        );
        assert!(layer_dir(&root, t1).join("usr/bin/tool").is_file());
        // Layer 2's blob is prefetched meanwhile, before containerd asks.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !blob_path(&root, &img.blobs[1]).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "layer 2's blob was prefetched\n{}",
                serve.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(
            !layer_dir(&root, t2).exists(),
            "only downloaded, not unpacked"
        );
        // What containerd's metadata layer looks for after AlreadyExists.
        let found =
            snapshot_names(&mut c, vec![format!(r#"labels."{REF}"=={t1},parent=="""#)]).await;
        assert_eq!(found, vec![t1.clone()]);

        // Layer 2 on top of layer 1's name.
        let e = prepare(&mut c, &format!("ns/2/extract-2 {t2}"), t1, img.labels(1))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{e:?}\n{}", serve.log());
        let info = stat(&mut c, t2).await.unwrap();
        assert_eq!((info.kind, info.parent.as_str()), (3, t1.as_str()));
        assert!(layer_dir(&root, t2).join("srv/data.bin").is_file());
        assert_eq!(fetches(&serve, false), 2, "{}", serve.log());
        assert_eq!(
            fetches(&serve, true),
            1,
            "layer 2 was prefetched\n{}",
            serve.log()
        );

        // A container over both: its mount shows the files of both layers.
        let m = prepare(&mut c, "ns/3/box", t2, HashMap::new())
            .await
            .unwrap();
        assert_eq!(m[0].r#type, "bind", "{m:?}");
        let merged = Path::new(&m[0].source);
        assert_eq!(
            std::fs::read_to_string(merged.join("etc/os-release")).unwrap(),
            "NAME=fast\n"
        );
        assert_eq!(
            std::fs::read_to_string(merged.join("etc/motd")).unwrap(),
            "layer two\n"
        );
        assert_eq!(
            std::fs::metadata(merged.join("srv/data.bin"))
                .unwrap()
                .len(),
            300_000
        );
        remove(&mut c, "ns/3/box").await;
    });

    // `lamina pull` of the same image afterwards: nothing downloaded or
    // unpacked, the very same layer dirs (same inodes).
    let inode = |p: PathBuf| std::fs::metadata(p).unwrap().ino();
    let before = (
        inode(layer_dir(&root, t1).join("usr/bin/tool")),
        inode(layer_dir(&root, t2).join("srv/data.bin")),
    );
    let out = lamina(&root, tmp.path(), &["pull", &img.name]);
    assert!(out.contains("fetched 0"), "{out}");
    assert!(!out.contains(" download"), "{out}");
    assert!(!out.contains("unpacked"), "{out}");
    let after = (
        inode(layer_dir(&root, t1).join("usr/bin/tool")),
        inode(layer_dir(&root, t2).join("srv/data.bin")),
    );
    assert_eq!(before, after, "the pull kept the fetched layer dirs");
    let store = lamina_store::Store::open(&root).unwrap();
    let image = store.image(&img.name).unwrap();
    assert_eq!(
        store.image_layer_dirs(&image).unwrap(),
        vec![layer_dir(&root, t1), layer_dir(&root, t2)]
    );
    assert_fsck_clean(&root);

    // After a restart the fetched snapshots are still there; another
    // namespace finds the layers without fetching them again.
    serve.restart().unwrap();
    rt().block_on(async {
        let mut c = snapshots_client(&serve.snapshotter_socket).await.unwrap();
        assert_eq!(stat(&mut c, t2).await.unwrap().kind, 3);
        let e = prepare(&mut c, "ns2/1/extract-1", "", img.labels(0))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists);
        let m = prepare(&mut c, "ns2/2/box", t2, HashMap::new())
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(Path::new(&m[0].source).join("etc/motd")).unwrap(),
            "layer two\n"
        );
        remove(&mut c, "ns2/2/box").await;
    });
    // The log starts afresh with the restart.
    assert_eq!(fetches(&serve, false), 0, "{}", serve.log());
    assert!(serve.log().contains("prepare key=\"ns2/1/extract-1\""));
    assert!(serve.alive(), "{}", serve.log());
}

#[test]
fn a_pulled_image_serves_labelled_prepares_without_a_fetch() {
    let Some((_placed, img)) = Image::place() else {
        return;
    };
    let (tmp, root, mut serve) = serve("lamina-fast-pulled-", &[]);
    let out = lamina(&root, tmp.path(), &["pull", &img.name]);
    assert!(out.contains("unpacked"), "{out}");
    let inode = std::fs::metadata(layer_dir(&root, &img.chains[1]).join("srv/data.bin"))
        .unwrap()
        .ino();
    rt().block_on(async {
        let mut c = snapshots_client(&serve.snapshotter_socket).await.unwrap();
        // Registered as the local fast path does (under the key), found by
        // containerd through its label and parent.
        for (i, key, parent) in [(0, "ns/1/extract", ""), (1, "ns/2/extract", "ns/1/extract")] {
            let e = prepare(&mut c, key, parent, img.labels(i))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
            let info = stat(&mut c, key).await.unwrap();
            assert_eq!((info.kind, info.parent.as_str()), (3, parent));
        }
    });
    assert_eq!(fetches(&serve, false), 0, "{}", serve.log());
    assert_eq!(
        std::fs::metadata(layer_dir(&root, &img.chains[1]).join("srv/data.bin"))
            .unwrap()
            .ino(),
        inode
    );
    assert_healthy(&root, &mut serve);
}

#[test]
fn failed_fetches_fall_back_to_a_normal_prepare_and_register_nothing() {
    let Some((placed, img)) = Image::place() else {
        return;
    };
    let (_tmp, root, mut serve) = serve("lamina-fast-fail-", &[]);
    let t1 = img.chains[0].clone();
    let with = |i: usize, k: &str, v: &str| {
        let mut l = img.labels(i);
        l.insert(k.to_owned(), v.to_owned());
        l
    };
    let dead = format!("127.0.0.1:{}/fast/app:v1", free_port());
    let cases: Vec<(&str, &str, HashMap<String, String>, &str)> = vec![
        ("unknown layer blob", "", with(0, LAYER, BOGUS), t1.as_str()),
        (
            "unknown manifest",
            "",
            with(0, MANIFEST, BOGUS),
            t1.as_str(),
        ),
        ("snapshot.ref not the chain", "", with(0, REF, BOGUS), BOGUS),
        (
            "layer 2 on no parent",
            "",
            img.labels(1),
            img.chains[1].as_str(),
        ),
        (
            "unreachable registry",
            "",
            with(0, IMAGE_REF, &dead),
            t1.as_str(),
        ),
        (
            "unknown repository",
            "",
            with(0, IMAGE_REF, &format!("{}/no/such:v1", placed.reg.host)),
            t1.as_str(),
        ),
        (
            "malformed image ref",
            "",
            with(0, IMAGE_REF, "Not A Ref!"),
            t1.as_str(),
        ),
    ];
    rt().block_on(async {
        let mut c = snapshots_client(&serve.snapshotter_socket).await.unwrap();
        for (i, (what, parent, labels, target)) in cases.into_iter().enumerate() {
            let key = format!("ns/{i}/extract");
            let m = prepare(&mut c, &key, parent, labels)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:?}\n{}", serve.log()));
            // The normal Prepare: a writable bind of a fresh upper.
            assert_eq!(
                (m.len(), m[0].r#type.as_str()),
                (1, "bind"),
                "{what}: {m:?}"
            );
            assert!(
                Path::new(&m[0].source).starts_with(root.join("snapshots")),
                "{what}: {m:?}"
            );
            assert_eq!(stat(&mut c, &key).await.unwrap().kind, 2, "{what}: active");
            assert_eq!(
                stat(&mut c, target).await.unwrap_err(),
                Code::NotFound,
                "{what}: nothing registered under {target}"
            );
            assert!(!layer_dir(&root, target).exists(), "{what}");
            remove(&mut c, &key).await;
        }
        assert_eq!(snapshot_names(&mut c, vec![]).await, Vec::<String>::new());
        assert!(
            !layer_dir(&root, &t1).exists(),
            "a refused fetch downloads nothing"
        );
        assert!(serve.log().contains("remote fast path failed"));

        // The same daemon still takes the fast path with good labels.
        let e = prepare(&mut c, "ns/9/extract", "", img.labels(0))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{}", serve.log());
    });
    assert_healthy(&root, &mut serve);
}

#[test]
fn concurrent_prepares_of_one_layer_fetch_it_once() {
    let Some((_placed, img)) = Image::place() else {
        return;
    };
    let (_tmp, root, mut serve) = serve("lamina-fast-race-", &[]);
    let socket = serve.snapshotter_socket.clone();
    let results: Vec<Code> = rt().block_on(async {
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let (socket, labels) = (socket.clone(), img.labels(0));
                tokio::spawn(async move {
                    let mut c = snapshots_client(&socket).await.unwrap();
                    prepare(&mut c, &format!("ns{i}/1/extract"), "", labels)
                        .await
                        .unwrap_err()
                        .code()
                })
            })
            .collect();
        let mut out = vec![];
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    assert_eq!(results, vec![Code::AlreadyExists; 4], "{}", serve.log());
    assert_eq!(fetches(&serve, true), 1, "{}", serve.log());
    rt().block_on(async {
        let mut c = snapshots_client(&socket).await.unwrap();
        // One under the chain id, the others under their keys, all found by
        // containerd's label filter.
        let found = snapshot_names(
            &mut c,
            vec![format!(r#"labels."{REF}"=={},parent=="""#, img.chains[0])],
        )
        .await;
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found.contains(&img.chains[0]), "{found:?}");
    });
    assert_healthy(&root, &mut serve);
}

#[test]
fn no_fetch_layers_turns_the_fast_path_off() {
    let Some((_placed, img)) = Image::place() else {
        return;
    };
    let (_tmp, root, mut serve) = serve("lamina-fast-off-", &["--no-fetch-layers"]);
    rt().block_on(async {
        let mut c = snapshots_client(&serve.snapshotter_socket).await.unwrap();
        let m = prepare(&mut c, "ns/1/extract", "", img.labels(0))
            .await
            .unwrap();
        assert_eq!(m[0].r#type, "bind");
        assert_eq!(
            stat(&mut c, &img.chains[0]).await.unwrap_err(),
            Code::NotFound
        );
    });
    assert!(!layer_dir(&root, &img.chains[0]).exists());
    assert!(serve.alive(), "{}", serve.log());
}

#[test]
fn a_corrupt_blob_falls_back_and_leaves_the_store_clean() {
    use lamina_tests::registry::{Proxy, ProxyMode};
    let Some((placed, img)) = Image::place() else {
        return;
    };
    // Layer 2 (300 kB of noise) comes through a proxy that flips a gzip
    // header byte: same diff id, wrong blob digest. Layer 1 is too small to
    // be touched.
    let proxy = Proxy::start(&placed.reg.host, ProxyMode::Corrupt);
    let via_proxy = |i: usize| {
        let mut l = img.labels(i);
        l.insert(IMAGE_REF.to_owned(), format!("{}/fast/app:v1", proxy.host));
        l
    };
    let (_tmp, root, mut serve) = serve("lamina-fast-corrupt-", &[]);
    let [t1, t2] = [&img.chains[0], &img.chains[1]];
    rt().block_on(async {
        let mut c = snapshots_client(&serve.snapshotter_socket).await.unwrap();
        let e = prepare(&mut c, "ns/1/extract", "", via_proxy(0))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{}", serve.log());
        let m = prepare(&mut c, "ns/2/extract", t1, via_proxy(1))
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{}", serve.log()));
        assert_eq!(
            m[0].r#type, "overlay",
            "the normal extraction mounts: {m:?}"
        );
        assert!(!proxy.blob_gets().is_empty());
        assert_eq!(stat(&mut c, t2).await.unwrap_err(), Code::NotFound);
        assert!(!layer_dir(&root, t2).exists());
        let log = serve.log();
        assert!(
            log.contains("remote fast path failed") && log.contains("digest"),
            "{log}"
        );
        remove(&mut c, "ns/2/extract").await;

        // The registry heals: the same Prepare now takes the fast path.
        proxy.set_mode(ProxyMode::Pass);
        let e = prepare(&mut c, "ns/3/extract", t1, via_proxy(1))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{}", serve.log());
        assert!(layer_dir(&root, t2).join("srv/data.bin").is_file());
    });
    assert_healthy(&root, &mut serve);
}

#[test]
fn containerd_takes_fetched_layers_through_its_own_snapshots_api() {
    use lamina_tests::service::{Containerd, LAYER2_CONTENT, LAYER2_FILE, runnable_images};
    lamina_tests::require_tools!("umoci", "skopeo", "containerd", "ctr", "runc");
    let Some(served) = runnable_images("lamina-fast-ctd-", &["lamina/fast:v1"]) else {
        return;
    };
    let image = served.images[0].clone();
    let img = Image::describe(&image, None);
    let (_tmp, root, mut serve) = serve("lamina-fast-ctd-", &[]);
    let Some(ctd) = Containerd::start(&serve.snapshotter_socket) else {
        return;
    };
    // CRI's puller, through containerd's own snapshots service: its metadata
    // layer passes the labels on, takes AlreadyExists, and finds the
    // committed snapshot by label and parent. Under a lease, as a pull is,
    // so containerd's GC keeps the snapshots until the image refers to them.
    ctd.ctr_ok(&["leases", "create", "--id", "fastpull"])
        .unwrap();
    rt().block_on(async {
        let mut c = snapshots_client(&ctd.address).await.unwrap();
        for i in 0..img.chains.len() {
            let parent = if i == 0 {
                ""
            } else {
                img.chains[i - 1].as_str()
            };
            let mut req = containerd_snapshots::tonic::Request::new(api::PrepareSnapshotRequest {
                snapshotter: "lamina".into(),
                key: format!("extract-{i} {}", img.chains[i]),
                parent: parent.into(),
                labels: img.labels(i),
            });
            req.metadata_mut()
                .insert("containerd-namespace", ctd.namespace.parse().unwrap());
            req.metadata_mut()
                .insert("containerd-lease", "fastpull".parse().unwrap());
            let e = c.prepare(req).await.unwrap_err();
            assert_eq!(
                e.code(),
                Code::AlreadyExists,
                "{e:?}\n{}\n{}",
                serve.log(),
                ctd.log()
            );
        }
    });
    let listed = ctd
        .ctr_ok(&["snapshots", "--snapshotter", "lamina", "ls"])
        .unwrap();
    for chain in &img.chains {
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(chain.as_str()) && l.trim_end().ends_with("Committed")),
            "{chain} is a committed snapshot in containerd: {listed}"
        );
        assert!(layer_dir(&root, chain).is_dir());
    }
    // `ctr images pull` then finds the image's chain and applies nothing;
    // the container runs on the layers lamina fetched.
    ctd.ctr_ok(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "lamina",
        &image,
    ])
    .unwrap();
    ctd.ctr_ok(&["leases", "delete", "fastpull"]).unwrap();
    let out = ctd
        .run(
            &["--rm"],
            &image,
            "fast1",
            &["/bin/cat", &format!("/{LAYER2_FILE}")],
        )
        .unwrap();
    assert_eq!(out, LAYER2_CONTENT);
    let log = serve.log();
    assert!(log.contains(r#"op="prepare""#), "{log}");
    assert!(
        !log.contains(r#"op="commit""#),
        "containerd committed no extraction of its own: {log}"
    );
    assert_eq!(fetches(&serve, false), img.chains.len(), "{log}");
    assert!(serve.alive(), "{}", serve.log());
}

#[test]
fn a_private_registry_takes_the_daemons_own_credentials() {
    let creds = Credentials {
        username: "fast".into(),
        password: "s3cret".into(),
    };
    let Some((placed, img)) = Image::place_with(Auth::htpasswd("fast", "s3cret"), Some(&creds))
    else {
        return;
    };
    let (tmp, root, mut serve) = serve("lamina-fast-auth-", &[]);
    rt().block_on(async {
        let mut c = snapshots_client(&serve.snapshotter_socket).await.unwrap();
        // No credentials yet: refused by the registry, the normal Prepare.
        let m = prepare(&mut c, "ns/1/extract", "", img.labels(0))
            .await
            .unwrap();
        assert_eq!(m[0].r#type, "bind");
        let log = serve.log();
        assert!(
            log.contains("remote fast path failed") && log.contains("401"),
            "{log}"
        );
        assert_eq!(
            stat(&mut c, &img.chains[0]).await.unwrap_err(),
            Code::NotFound
        );
        remove(&mut c, "ns/1/extract").await;

        // The daemon's auth file (what `lamina login` writes): the fast path.
        lamina_registry::credentials::store(
            &tmp.path().join("auth.json"),
            &placed.reg.host,
            &creds,
        )
        .unwrap();
        let e = prepare(&mut c, "ns/2/extract", "", img.labels(0))
            .await
            .map(|m| panic!("{m:?}\n{}", serve.log()))
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{}", serve.log());
        assert_eq!(stat(&mut c, &img.chains[0]).await.unwrap().kind, 3);
    });
    assert!(layer_dir(&root, &img.chains[0]).is_dir());
    assert_healthy(&root, &mut serve);
}

#[test]
fn a_blob_missing_from_the_registry_falls_back() {
    let Some((placed, img)) = Image::place() else {
        return;
    };
    // The registry lists layer 2 in the manifest but lost its data.
    let hex = img.blobs[1].trim_start_matches("sha256:");
    let data = placed
        .reg
        .dir
        .path()
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    std::fs::remove_file(&data).unwrap();
    let (_tmp, root, mut serve) = serve("lamina-fast-noblob-", &[]);
    let [t1, t2] = [&img.chains[0], &img.chains[1]];
    rt().block_on(async {
        let mut c = snapshots_client(&serve.snapshotter_socket).await.unwrap();
        let e = prepare(&mut c, "ns/1/extract", "", img.labels(0))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{}", serve.log());
        let m = prepare(&mut c, "ns/2/extract", t1, img.labels(1))
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{}", serve.log()));
        assert_eq!(
            m[0].r#type, "overlay",
            "the normal extraction mounts: {m:?}"
        );
        assert_eq!(stat(&mut c, t2).await.unwrap_err(), Code::NotFound);
        let log = serve.log();
        assert!(
            log.contains("remote fast path failed") && log.contains("404"),
            "{log}"
        );
        remove(&mut c, "ns/2/extract").await;
    });
    assert!(!layer_dir(&root, t2).exists());
    assert!(!blob_path(&root, &img.blobs[1]).exists());
    assert_healthy(&root, &mut serve);
}
