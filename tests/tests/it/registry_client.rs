//! lamina-registry against a real `docker-registry`: the three auth modes,
//! pulls of images placed by skopeo, pushes read back by skopeo + umoci,
//! multi-platform indexes, cross-repository mounts and chunked uploads.

use lamina_registry::credentials::CredentialSources;
use lamina_registry::manifest::{OCI_INDEX, OCI_MANIFEST};
use lamina_registry::{
    BlobPush, Client, ClientOptions, Credentials, Digest, Error, Platform, Reference,
};
use lamina_tests::registry::{
    Auth, Proxy, ProxyMode, Registry, arch_images, big_file_image, build_image, random_bytes,
    runtime, tree_listing, umoci_unpack,
};
use lamina_tests::require_tools;
use std::path::Path;

pub(crate) fn client(creds: Option<(&str, &str, &str)>) -> Client {
    let credentials = CredentialSources {
        explicit: creds
            .map(|(r, u, p)| {
                vec![(
                    r.to_string(),
                    Credentials {
                        username: u.into(),
                        password: p.into(),
                    },
                )]
            })
            .unwrap_or_default(),
        ..CredentialSources::none()
    };
    Client::new(ClientOptions {
        credentials,
        ..ClientOptions::default()
    })
    .unwrap()
}

/// A two-layer image in an OCI layout, returned with its layout dir.
pub(crate) fn two_layer_image(dir: &Path) -> std::path::PathBuf {
    let layout = dir.join("oci");
    let noise = random_bytes(300_000);
    build_image(
        &layout,
        "v1",
        &[
            &[
                ("etc/hello", b"hello\n"),
                ("bin/", b""),
                ("bin/tool", b"#!/bin/sh\necho hi\n"),
            ],
            &[("data/blob.bin", &noise[..]), ("etc/link", b"->hello")],
        ],
    )
    .unwrap();
    layout
}

/// Reads an OCI layout's manifest for `tag` (through index.json).
fn layout_manifest(layout: &Path, tag: &str) -> serde_json::Value {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let digest = entry["digest"].as_str().unwrap();
    serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap())
        .unwrap()
}

fn pull_all_blobs(
    client: &Client,
    r: &Reference,
) -> lamina_registry::Result<Vec<(Digest, Vec<u8>)>> {
    runtime().block_on(async {
        let image = client.resolve(r, &Platform::host()).await?;
        let mut out = vec![];
        for l in &image.manifest.layers {
            let mut reader = client.blob(r, &l.digest, Some(l.size), 0).await?;
            let mut data = vec![];
            while let Some(c) = reader.next_chunk().await? {
                data.extend_from_slice(&c);
            }
            out.push((l.digest.clone(), data));
        }
        Ok(out)
    })
}

fn check_pull_matches_layout(reg: &Registry, client: &Client, layout: &Path) {
    let r = Reference::parse(&format!("{}/test/app:v1", reg.host)).unwrap();
    let blobs = pull_all_blobs(client, &r).unwrap();
    let m = layout_manifest(layout, "v1");
    let want: Vec<String> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        blobs.iter().map(|(d, _)| d.to_string()).collect::<Vec<_>>(),
        want
    );
    for (d, data) in blobs {
        assert_eq!(Digest::of(&data), d);
        assert_eq!(
            data,
            std::fs::read(layout.join("blobs/sha256").join(d.hex())).unwrap()
        );
    }
}

#[test]
fn anonymous_pull_of_skopeo_placed_image() {
    require_tools!("umoci", "skopeo");
    let Some(p) = Registry::with_image(Auth::Anonymous, "test/app:v1", two_layer_image) else {
        return;
    };
    check_pull_matches_layout(&p.reg, &client(None), &p.layout);
    // By digest too.
    let c = client(None);
    let r = Reference::parse(&format!("{}/test/app:v1", p.reg.host)).unwrap();
    let m = runtime().block_on(c.manifest(&r)).unwrap();
    let by_digest = r.with_digest(m.digest.clone());
    let again =
        runtime()
            .block_on(c.manifest(
                &Reference::parse(&format!("{}/test/app@{}", p.reg.host, m.digest)).unwrap(),
            ))
            .unwrap();
    assert_eq!(again.bytes, m.bytes);
    assert_eq!(by_digest.manifest_reference(), m.digest.to_string());
    // Unknown tag: 404 with the URL.
    let err = runtime()
        .block_on(c.manifest(&Reference::parse(&format!("{}/test/app:nope", p.reg.host)).unwrap()))
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { status: 404, .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("http://{}/v2/test/app/manifests/nope", p.reg.host)),
        "{err}"
    );
}

#[test]
fn htpasswd_basic_auth() {
    require_tools!("umoci", "skopeo", "htpasswd");
    let Some(p) = Registry::with_image(
        Auth::htpasswd("alice", "s3cret-pw"),
        "test/app:v1",
        two_layer_image,
    ) else {
        return;
    };
    check_pull_matches_layout(
        &p.reg,
        &client(Some((&p.reg.host, "alice", "s3cret-pw"))),
        &p.layout,
    );

    let r = Reference::parse(&format!("{}/test/app:v1", p.reg.host)).unwrap();
    let err = runtime().block_on(client(None).manifest(&r)).unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized { status: 401, .. }),
        "{err}"
    );
    let wrong = client(Some((&p.reg.host, "alice", "wrong-password-xyz")));
    let err = runtime().block_on(wrong.manifest(&r)).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Unauthorized { status: 401, .. }),
        "{msg}"
    );
    assert!(
        msg.contains(&p.reg.host) && msg.contains("/v2/test/app/manifests/v1"),
        "{msg}"
    );
    assert!(
        !msg.contains("wrong-password-xyz") && !format!("{err:?}").contains("wrong-password-xyz"),
        "{msg}"
    );
    // check_login verifies credentials.
    assert!(runtime().block_on(wrong.check_login(&p.reg.host)).is_err());
    runtime()
        .block_on(client(Some((&p.reg.host, "alice", "s3cret-pw"))).check_login(&p.reg.host))
        .unwrap();
}

#[test]
fn token_auth_with_credentials_reuses_tokens() {
    require_tools!("umoci", "skopeo", "openssl");
    let Some(p) = Registry::with_image(
        Auth::token("bob", "tok-pw", false),
        "test/app:v1",
        two_layer_image,
    ) else {
        return;
    };
    let issuer = p.reg.issuer.as_ref().unwrap();
    let before = issuer.issued.load(std::sync::atomic::Ordering::SeqCst);
    let c = client(Some((&p.reg.host, "bob", "tok-pw")));
    check_pull_matches_layout(&p.reg, &c, &p.layout);
    let used = issuer.issued.load(std::sync::atomic::Ordering::SeqCst) - before;
    // One token for repository:test/app:pull, reused for the manifest and every blob.
    assert_eq!(
        used,
        1,
        "token requests: {:?}",
        issuer.scopes.lock().unwrap()
    );

    let r = Reference::parse(&format!("{}/test/app:v1", p.reg.host)).unwrap();
    let err = runtime().block_on(client(None).manifest(&r)).unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("/token"), "{err}");
    let err = runtime()
        .block_on(client(Some((&p.reg.host, "bob", "nope-pw"))).manifest(&r))
        .unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized { .. }) && !err.to_string().contains("nope-pw"),
        "{err}"
    );
    runtime().block_on(c.check_login(&p.reg.host)).unwrap();
}

#[test]
fn token_auth_anonymous_pull() {
    require_tools!("umoci", "skopeo", "openssl");
    let Some(p) = Registry::with_image(
        Auth::token("bob", "tok-pw", true),
        "test/app:v1",
        two_layer_image,
    ) else {
        return;
    };
    check_pull_matches_layout(&p.reg, &client(None), &p.layout);
}

/// Pushes every blob and the manifest of `oci:LAYOUT:TAG` to `target`.
fn push_layout(
    c: &Client,
    layout: &Path,
    tag: &str,
    target: &Reference,
    mount_from: Option<&str>,
) -> Vec<BlobPush> {
    let m = layout_manifest(layout, tag);
    let mut descs = vec![m["config"].clone()];
    descs.extend(m["layers"].as_array().unwrap().iter().cloned());
    let mut results = vec![];
    runtime().block_on(async {
        for d in descs {
            let digest = Digest::parse(d["digest"].as_str().unwrap()).unwrap();
            let size = d["size"].as_u64().unwrap();
            let f = std::fs::File::open(layout.join("blobs/sha256").join(digest.hex())).unwrap();
            results.push(
                c.push_blob(target, &digest, size, f, mount_from)
                    .await
                    .unwrap(),
            );
        }
        let bytes = serde_json::to_vec(&m).unwrap();
        c.push_manifest(target, OCI_MANIFEST, bytes).await.unwrap();
    });
    results
}

#[test]
fn push_is_read_back_by_skopeo_and_umoci() {
    require_tools!("umoci", "skopeo", "htpasswd");
    let Some(reg) = Registry::start(Auth::htpasswd("u", "p")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layout = two_layer_image(dir.path());
    // Small chunks force chunked uploads for the 300 kB layer.
    let c = Client::new(ClientOptions {
        credentials: CredentialSources {
            explicit: vec![(
                reg.host.clone(),
                Credentials {
                    username: "u".into(),
                    password: "p".into(),
                },
            )],
            ..CredentialSources::none()
        },
        chunk_size: 64 << 10,
        ..ClientOptions::default()
    })
    .unwrap();
    let target = Reference::parse(&format!("{}/pushed/app:v1", reg.host)).unwrap();
    let first = push_layout(&c, &layout, "v1", &target, None);
    assert!(
        first
            .iter()
            .any(|r| matches!(r, BlobPush::Chunked(n) if *n > 1)),
        "{first:?}"
    );
    // Again: everything exists.
    let again = push_layout(&c, &layout, "v1", &target, None);
    assert!(again.iter().all(|r| *r == BlobPush::Exists), "{again:?}");
    // Another repository: mounted, not uploaded.
    let other = Reference::parse(&format!("{}/other/app:v1", reg.host)).unwrap();
    let mounted = push_layout(&c, &layout, "v1", &other, Some("pushed/app"));
    assert!(
        mounted.iter().all(|r| *r == BlobPush::Mounted),
        "{mounted:?}"
    );

    for repo in ["pushed/app:v1", "other/app:v1"] {
        let back = dir
            .path()
            .join(format!("back-{}", repo.replace(['/', ':'], "-")));
        reg.get_oci(repo, &back, "v1").unwrap();
        let got = umoci_unpack(
            &back,
            "v1",
            &dir.path()
                .join(format!("b-{}", repo.replace(['/', ':'], "-"))),
        )
        .unwrap();
        let want = umoci_unpack(
            &layout,
            "v1",
            &dir.path()
                .join(format!("w-{}", repo.replace(['/', ':'], "-"))),
        )
        .unwrap();
        assert_eq!(tree_listing(&got).unwrap(), tree_listing(&want).unwrap());
    }
}

#[test]
fn multi_platform_index() {
    require_tools!("umoci", "skopeo");
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layout = arch_images(dir.path());
    let c = client(None);
    let mut entries = vec![];
    for (tag, arch, variant) in [("amd", "amd64", None), ("arm", "arm64", Some("v8"))] {
        let target = Reference::parse(&format!("{}/multi/app:{tag}", reg.host)).unwrap();
        push_layout(&c, &layout, tag, &target, None);
        let bytes = serde_json::to_vec(&layout_manifest(&layout, tag)).unwrap();
        let mut platform = serde_json::json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = v.into();
        }
        entries.push(serde_json::json!({"mediaType": OCI_MANIFEST, "digest": Digest::of(&bytes).to_string(), "size": bytes.len(), "platform": platform}));
    }
    entries.push(serde_json::json!({"mediaType": OCI_MANIFEST, "digest": entries[0]["digest"], "size": entries[0]["size"], "platform": {"os": "unknown", "architecture": "unknown"}}));
    let index =
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
    let r = Reference::parse(&format!("{}/multi/app:latest", reg.host)).unwrap();
    runtime()
        .block_on(c.push_manifest(&r, OCI_INDEX, serde_json::to_vec(&index).unwrap()))
        .unwrap();

    for (platform, want) in [
        ("linux/amd64", "amd64\n"),
        ("linux/arm64", "arm64\n"),
        ("linux/arm64/v8", "arm64\n"),
    ] {
        let resolved = runtime()
            .block_on(c.resolve(&r, &Platform::parse(platform).unwrap()))
            .unwrap();
        assert!(resolved.index.is_some());
        let layer = &resolved.manifest.layers[0];
        let bytes = runtime()
            .block_on(c.blob_bytes(&r, &layer.digest, layer.size, 1 << 20))
            .unwrap();
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2_decoder(&bytes), &mut tar).unwrap();
        assert!(
            tar.windows(want.len()).any(|w| w == want.as_bytes()),
            "{platform}"
        );
    }
    let err = runtime()
        .block_on(c.resolve(&r, &Platform::parse("linux/s390x").unwrap()))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("linux/amd64")
            && msg.contains("linux/arm64/v8")
            && !msg.contains("unknown/unknown"),
        "{msg}"
    );
}

fn flate2_decoder(bytes: &[u8]) -> impl std::io::Read + '_ {
    // The harness has no gzip crate; gunzip with the system tool.
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = bytes.to_vec();
    std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data));
    let out = child.wait_with_output().unwrap();
    std::io::Cursor::new(out.stdout)
}

#[test]
fn dropped_connection_resumes_with_range() {
    require_tools!("umoci", "skopeo");
    let big = random_bytes(3 << 20);
    let Some(p) = Registry::with_image(Auth::Anonymous, "cut/app:v1", |d| big_file_image(d, &big))
    else {
        return;
    };
    let proxy = Proxy::start(&p.reg.host, ProxyMode::Cut(1 << 20));
    let r = Reference::parse(&format!("{}/cut/app:v1", proxy.host)).unwrap();
    let blobs = pull_all_blobs(&client(None), &r).unwrap();
    assert_eq!(blobs.len(), 1);
    let (digest, data) = &blobs[0];
    assert_eq!(&Digest::of(data), digest);
    let gets: Vec<_> = proxy
        .blob_gets()
        .into_iter()
        .filter(|g| g.0.ends_with(digest.as_str()))
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].1, None);
    assert_eq!(
        gets[1].1.as_deref(),
        Some(format!("bytes={}-", 1 << 20).as_str()),
        "{gets:?}"
    );
}
