//! containerd's snapshots gRPC API spoken directly to `lamina serve`: the
//! semantics containerd relies on (error codes, kinds, parents, labels,
//! mounts), the remote-snapshotter fast path, and bad input.

use containerd_snapshots::api::snapshots::v1 as api;
use containerd_snapshots::tonic::Code;
use lamina_tests::service::{
    SnapshotsClient, dir_names, serve_in_tempdir, snapshot_names, snapshots_client,
};
use std::collections::HashMap;

const CHAIN: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn prepare(key: &str, parent: &str, labels: &[(&str, &str)]) -> api::PrepareSnapshotRequest {
    api::PrepareSnapshotRequest {
        snapshotter: "lamina".into(),
        key: key.into(),
        parent: parent.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn commit(name: &str, key: &str) -> api::CommitSnapshotRequest {
    api::CommitSnapshotRequest {
        snapshotter: "lamina".into(),
        name: name.into(),
        key: key.into(),
        labels: HashMap::new(),
    }
}

fn key(k: &str) -> api::StatSnapshotRequest {
    api::StatSnapshotRequest {
        snapshotter: "lamina".into(),
        key: k.into(),
    }
}

fn remove(k: &str) -> api::RemoveSnapshotRequest {
    api::RemoveSnapshotRequest {
        snapshotter: "lamina".into(),
        key: k.into(),
    }
}

/// A Prepare that must succeed: its mounts.
async fn prepared(
    c: &mut SnapshotsClient,
    key: &str,
    parent: &str,
    labels: &[(&str, &str)],
) -> Vec<api_types::Mount> {
    c.prepare(prepare(key, parent, labels))
        .await
        .unwrap()
        .into_inner()
        .mounts
}

fn code<T: std::fmt::Debug>(r: Result<T, containerd_snapshots::tonic::Status>) -> Code {
    r.unwrap_err().code()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn grpc_semantics_and_error_codes() {
    let (_tmp, _root, mut serve) = serve_in_tempdir("lamina-svc-grpc-", "kernel", &[]).unwrap();
    rt().block_on(async {
        let mut c = snapshots_client(&serve.snapshotter_socket).await.unwrap();

        // Active snapshot without parent: a writable bind of its upper.
        let m = prepared(&mut c, "a", "", &[]).await;
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].r#type, "bind");
        assert!(m[0].options.contains(&"rw".to_string()));
        std::fs::write(Path::new(&m[0].source).join("file-a"), "a").unwrap();

        assert_eq!(
            code(c.prepare(prepare("a", "", &[])).await),
            Code::AlreadyExists
        );
        assert_eq!(
            code(c.prepare(prepare("b", "missing", &[])).await),
            Code::NotFound
        );
        assert_eq!(
            code(c.prepare(prepare("b", "a", &[])).await),
            Code::InvalidArgument,
            "parent not committed"
        );
        assert_eq!(
            code(c.prepare(prepare("", "", &[])).await),
            Code::InvalidArgument
        );
        assert_eq!(code(c.stat(key("nope")).await), Code::NotFound);
        assert_eq!(code(c.remove(remove("nope")).await), Code::NotFound);
        assert_eq!(code(c.commit(commit("x", "nope")).await), Code::NotFound);

        c.commit(commit("base", "a")).await.unwrap();
        assert_eq!(
            code(c.stat(key("a")).await),
            Code::NotFound,
            "the active key is gone after commit"
        );
        let info = c
            .stat(key("base"))
            .await
            .unwrap()
            .into_inner()
            .info
            .unwrap();
        assert_eq!(info.kind, 3, "committed");
        assert_eq!(
            code(c.commit(commit("base2", "base")).await),
            Code::FailedPrecondition,
            "double commit"
        );

        // Child over the committed parent: an overlay whose lower is the parent.
        let m = prepared(&mut c, "child", "base", &[]).await;
        assert_eq!(m[0].r#type, "overlay");
        let lower = option(&m[0], "lowerdir").to_owned();
        assert_eq!(
            std::fs::read_to_string(Path::new(&lower).join("file-a")).unwrap(),
            "a"
        );
        assert_eq!(
            code(c.prepare(prepare("child", "base", &[])).await),
            Code::AlreadyExists
        );
        assert_eq!(
            code(c.remove(remove("base")).await),
            Code::FailedPrecondition,
            "has a child"
        );

        // Views: read-only, not committable.
        let v = c
            .view(api::ViewSnapshotRequest {
                snapshotter: "lamina".into(),
                key: "view".into(),
                parent: "base".into(),
                labels: HashMap::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .mounts;
        assert!(v[0].options.contains(&"ro".to_string()), "{v:?}");
        assert_eq!(
            code(c.commit(commit("v2", "view")).await),
            Code::FailedPrecondition
        );

        // Labels: update one, then replace all.
        let upd = |labels: &[(&str, &str)], paths: &[&str]| api::UpdateSnapshotRequest {
            snapshotter: "lamina".into(),
            info: Some(api::Info {
                name: "base".into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            update_mask: Some(prost_types_mask(paths)),
        };
        let i = c
            .update(upd(&[("one", "1")], &["labels.one"]))
            .await
            .unwrap()
            .into_inner()
            .info
            .unwrap();
        assert_eq!(i.labels.get("one").map(String::as_str), Some("1"));
        let i = c
            .update(upd(&[("two", "2")], &[]))
            .await
            .unwrap()
            .into_inner()
            .info
            .unwrap();
        assert_eq!(
            i.labels.len(),
            1,
            "no mask replaces all labels: {:?}",
            i.labels
        );
        assert_eq!(
            code(c.update(upd(&[], &["kind"])).await),
            Code::InvalidArgument,
            "kind is immutable"
        );

        // List with containerd's filter syntax; usage counts the upper.
        let listed = snapshot_names(&mut c, vec!["kind==committed".into()]).await;
        assert_eq!(listed, vec!["base".to_string()]);
        assert_eq!(snapshot_names(&mut c, vec![]).await.len(), 3);
        let u = c
            .usage(api::UsageRequest {
                snapshotter: "lamina".into(),
                key: "base".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(u.inodes >= 1 && u.size > 0, "{u:?}");

        // Nothing changed by the failed calls; removal in order works.
        c.remove(remove("view")).await.unwrap();
        c.remove(remove("child")).await.unwrap();
        c.remove(remove("base")).await.unwrap();
        assert!(snapshot_names(&mut c, vec![]).await.is_empty());
    });
    assert!(serve.alive(), "{}", serve.log());
}

fn prost_types_mask(paths: &[&str]) -> prost_types::FieldMask {
    prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    }
}

use std::path::Path;

#[test]
fn extraction_commits_become_layer_dirs_and_the_fast_path_reuses_them() {
    let (_tmp, root, mut serve) = serve_in_tempdir("lamina-svc-fast-", "fuse", &[]).unwrap();
    rt().block_on(async {
        let mut c = snapshots_client(&serve.snapshotter_socket).await.unwrap();
        let target = [("containerd.io/snapshot.ref", CHAIN)];
        // containerd's unpacker: prepare with the target label, apply, commit
        // under the chain id. The upper becomes layers/<chain>.
        let m = prepared(&mut c, "ns1/1/extract-1", "", &target).await;
        std::fs::write(Path::new(&m[0].source).join("layer-file"), "x").unwrap();
        c.commit(commit(&format!("ns1/2/{CHAIN}"), "ns1/1/extract-1"))
            .await
            .unwrap();
        let layer = root
            .join("layers")
            .join(CHAIN.trim_start_matches("sha256:"));
        assert_eq!(
            std::fs::read_to_string(layer.join("layer-file")).unwrap(),
            "x"
        );

        // A second extraction of the same chain (another namespace): answered
        // AlreadyExists, and a committed snapshot with the target label exists
        // for containerd to find — no second unpack.
        let err = c
            .prepare(prepare("ns2/1/extract-2", "", &target))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        let found = snapshot_names(
            &mut c,
            vec![format!(
                r#"labels."containerd.io/snapshot.ref"=={CHAIN},parent=="""#
            )],
        )
        .await;
        assert!(found.contains(&"ns2/1/extract-2".to_string()), "{found:?}");

        // Its mounts (through a view) are the shared layer dir.
        let v = c
            .view(api::ViewSnapshotRequest {
                snapshotter: "lamina".into(),
                key: "ns2/v".into(),
                parent: "ns2/1/extract-2".into(),
                labels: HashMap::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .mounts;
        assert_eq!(Path::new(&v[0].source), layer);

        // The store's gc keeps a layer a snapshot holds.
        let gc = std::process::Command::new(lamina_tests::bin("lamina"))
            .arg("--root")
            .arg(&root)
            .arg("gc")
            .output()
            .unwrap();
        assert!(
            gc.status.success(),
            "{}",
            String::from_utf8_lossy(&gc.stderr)
        );
        assert!(
            layer.join("layer-file").exists(),
            "lamina gc kept the snapshot's layer"
        );

        // The layer dir lives until its last snapshot goes.
        c.remove(remove("ns2/v")).await.unwrap();
        c.remove(remove(&format!("ns1/2/{CHAIN}"))).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert!(layer.exists(), "still used by ns2/1/extract-2");
        c.remove(remove("ns2/1/extract-2")).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while layer.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the released layer was collected"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    assert!(serve.alive(), "{}", serve.log());
}

#[test]
fn snapshots_survive_a_restart_and_garbage_bytes_do_not_kill_the_daemon() {
    let (_tmp, _root, mut serve) = serve_in_tempdir("lamina-svc-restart-", "kernel", &[]).unwrap();
    rt().block_on(async {
        let mut c = snapshots_client(&serve.snapshotter_socket).await.unwrap();
        let m = prepared(&mut c, "keep", "", &[]).await;
        std::fs::write(Path::new(&m[0].source).join("f"), "kept").unwrap();
        c.commit(commit("kept", "keep")).await.unwrap();
        c.prepare(prepare("active", "kept", &[("a", "b")]))
            .await
            .unwrap();
    });
    // Not gRPC at all, then a valid HTTP/2 preface followed by junk.
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\xff\xff\xff\xff",
    ] {
        send_junk(&serve.snapshotter_socket, junk);
    }
    assert!(serve.alive(), "{}", serve.log());
    serve.restart().unwrap();
    rt().block_on(async {
        let mut c = snapshots_client(&serve.snapshotter_socket).await.unwrap();
        assert_eq!(
            snapshot_names(&mut c, vec![]).await,
            vec!["active".to_string(), "kept".to_string()]
        );
        let m = c
            .mounts(mounts("active"))
            .await
            .unwrap()
            .into_inner()
            .mounts;
        let lower = option(&m[0], "lowerdir").to_owned();
        assert_eq!(
            std::fs::read_to_string(Path::new(&lower).join("f")).unwrap(),
            "kept"
        );
        let info = c
            .stat(key("active"))
            .await
            .unwrap()
            .into_inner()
            .info
            .unwrap();
        assert_eq!((info.kind, info.parent.as_str()), (2, "kept"));
        assert_eq!(info.labels.get("a").map(String::as_str), Some("b"));
    });
}

/// Writes bytes, half-closes, and reads whatever comes back (briefly).
fn send_junk(socket: &Path, junk: &[u8]) {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let _ = s.write_all(junk);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
}

fn mounts(k: &str) -> api::MountsRequest {
    api::MountsRequest {
        snapshotter: "lamina".into(),
        key: k.into(),
    }
}

fn option<'a>(m: &'a api_types::Mount, name: &str) -> &'a str {
    m.options
        .iter()
        .find_map(|o| o.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {name}= in {m:?}"))
}

use containerd_snapshots::api::types as api_types;

/// With `--driver fuse`: containerd's layer extraction writes the upper dir
/// directly (a bind for the first layer, an `overlay` spec containerd
/// applies into without mounting for the others: no FUSE on pull), while a
/// container's snapshot is a bind of a FUSE overlay lamina mounted ahead.
/// That mount survives a restart of the daemon, is mounted again when it is
/// gone, and is detached when the snapshot is removed. A view over several
/// layers is a read-only one.
#[test]
fn fuse_driver_extraction_writes_uppers_and_containers_get_a_premounted_overlay() {
    if !lamina_tests::overlay::fuse_available() {
        eprintln!("SKIPPED: needs root and /dev/fuse");
        return;
    }
    const CHAIN2: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
    let (_tmp, root, mut serve) = serve_in_tempdir("lamina-svc-kinds-", "fuse", &[]).unwrap();
    let layer = |chain: &str| {
        root.join("layers")
            .join(chain.trim_start_matches("sha256:"))
    };
    let merged = rt().block_on(async {
        let mut c = snapshots_client(&serve.snapshotter_socket).await.unwrap();
        // First layer, `ctr images pull`'s key format: a bind of the upper.
        let first = format!("ns/1/extract-1 {CHAIN}");
        let m = prepared(&mut c, &first, "", &[]).await;
        assert_eq!((m.len(), m[0].r#type.as_str()), (1, "bind"), "{m:?}");
        assert!(
            m[0].source
                .starts_with(root.join("snapshots").to_str().unwrap())
        );
        std::fs::write(Path::new(&m[0].source).join("base"), "from layer 1").unwrap();
        c.commit(commit(&format!("ns/2/{CHAIN}"), &first))
            .await
            .unwrap();

        // Second layer, CRI's label: an overlay spec over the first layer's
        // dir, whose upper containerd writes in overlay format.
        let second = "ns/3/extract-2";
        let m = prepared(
            &mut c,
            second,
            &format!("ns/2/{CHAIN}"),
            &[("containerd.io/snapshot.ref", CHAIN2)],
        )
        .await;
        assert_eq!(m[0].r#type, "overlay", "{m:?}");
        assert_eq!(Path::new(option(&m[0], "lowerdir")), layer(CHAIN));
        let upper = option(&m[0], "upperdir").to_owned();
        assert!(
            lamina_tests::service::mounts_under(&root).is_empty(),
            "nothing mounted for an extraction"
        );
        std::fs::write(Path::new(&upper).join("top"), "from layer 2").unwrap();
        c.commit(commit(&format!("ns/4/{CHAIN2}"), second))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(layer(CHAIN2).join("top")).unwrap(),
            "from layer 2"
        );

        // A container: a bind of a live FUSE overlay of both layers.
        let m = prepared(&mut c, "ns/5/box", &format!("ns/4/{CHAIN2}"), &[]).await;
        assert_eq!(m[0].r#type, "bind", "{m:?}");
        assert!(m[0].options.contains(&"rw".to_string()));
        let merged = std::path::PathBuf::from(&m[0].source);
        assert_eq!(merged.file_name().unwrap(), "merged");
        assert_eq!(
            lamina_tests::service::mount_type(&merged).as_deref(),
            Some("fuse.lamina")
        );
        assert_eq!(
            std::fs::read_to_string(merged.join("base")).unwrap(),
            "from layer 1"
        );
        std::fs::write(merged.join("written"), "by the container").unwrap();
        let upper = merged.parent().unwrap().join("fs");
        assert_eq!(
            std::fs::read_to_string(upper.join("written")).unwrap(),
            "by the container"
        );
        let again = c.mounts(mounts("ns/5/box")).await.unwrap().into_inner();
        assert_eq!(again.mounts, m, "Mounts reuses the mount");

        // A view over both layers: a read-only bind of a read-only overlay.
        let v = c
            .view(api::ViewSnapshotRequest {
                snapshotter: "lamina".into(),
                key: "ns/6/look".into(),
                parent: format!("ns/4/{CHAIN2}"),
                labels: HashMap::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .mounts;
        assert_eq!(v[0].r#type, "bind", "{v:?}");
        assert!(v[0].options.contains(&"ro".to_string()));
        let view = Path::new(&v[0].source);
        assert_eq!(
            lamina_tests::service::mount_type(view).as_deref(),
            Some("fuse.lamina")
        );
        assert_eq!(
            std::fs::read_to_string(view.join("top")).unwrap(),
            "from layer 2"
        );
        assert!(std::fs::write(view.join("nope"), "x").is_err(), "read-only");
        c.remove(remove("ns/6/look")).await.unwrap();
        assert_eq!(lamina_tests::service::mount_type(view), None);
        merged
    });

    // A restart leaves the mount and its server alone.
    serve.restart().unwrap();
    assert_eq!(
        std::fs::read_to_string(merged.join("top")).unwrap(),
        "from layer 2"
    );
    // Gone (a reboot, a dead server): the next Mounts mounts it again.
    rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::DETACH).unwrap();
    assert_eq!(lamina_tests::service::mount_type(&merged), None);
    rt().block_on(async {
        let mut c = snapshots_client(&serve.snapshotter_socket).await.unwrap();
        c.mounts(mounts("ns/5/box")).await.unwrap();
        assert_eq!(
            lamina_tests::service::mount_type(&merged).as_deref(),
            Some("fuse.lamina")
        );
        assert_eq!(
            std::fs::read_to_string(merged.join("written")).unwrap(),
            "by the container"
        );
        // Remove detaches it before deleting the snapshot: the layers stay.
        c.remove(remove("ns/5/box")).await.unwrap();
    });
    assert_eq!(lamina_tests::service::mount_type(&merged), None);
    assert!(!merged.parent().unwrap().exists());
    assert!(layer(CHAIN).join("base").exists() && layer(CHAIN2).join("top").exists());

    // A mount that cannot be made (a layer dir gone from under the store)
    // fails the Prepare and leaves no snapshot behind.
    std::fs::remove_dir_all(layer(CHAIN2)).unwrap();
    let before = dir_names(&root.join("snapshots"));
    rt().block_on(async {
        let mut c = snapshots_client(&serve.snapshotter_socket).await.unwrap();
        let err = c
            .prepare(prepare("ns/7/broken", &format!("ns/4/{CHAIN2}"), &[]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Internal, "{err:?}");
        assert_eq!(code(c.stat(key("ns/7/broken")).await), Code::NotFound);
    });
    assert_eq!(dir_names(&root.join("snapshots")), before);
    assert!(serve.alive(), "{}", serve.log());
}
