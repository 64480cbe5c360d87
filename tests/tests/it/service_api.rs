//! The HTTP/JSON API of `lamina serve`, spoken over its Unix socket: a whole
//! image lifecycle, bad requests (4xx, the store unchanged, the daemon alive),
//! mount roots, several clients at once.

use lamina_tests::service::{LAYER2_CONTENT, LAYER2_FILE, Serve, http, http_raw, runnable_images};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn call(serve: &Serve, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| serde_json::to_vec(&b).unwrap());
    let (status, bytes) = http(&serve.api_socket, method, path, body.as_deref()).unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn api_socket_is_0660_and_bad_requests_are_4xx_without_side_effects() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let tmp = tempfile::Builder::new()
        .prefix("lamina-api-bad-")
        .tempdir()
        .unwrap();
    let mroot = tmp.path().join("mounts");
    let mut serve = Serve::start(
        &tmp.path().join("root"),
        tmp.path(),
        "kernel",
        &["--mount-root", mroot.to_str().unwrap()],
    )
    .unwrap();
    for sock in [&serve.api_socket, &serve.snapshotter_socket] {
        let meta = std::fs::metadata(sock).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o660,
            "{}",
            sock.display()
        );
        assert_eq!(meta.uid(), rustix::process::geteuid().as_raw());
    }
    let (s, v) = call(&serve, "GET", "/v1/ping", None);
    assert_eq!((s, v["ok"].as_bool()), (200, Some(true)));
    let before = (
        call(&serve, "GET", "/v1/images", None),
        call(&serve, "GET", "/v1/containers", None),
    );

    let cases: Vec<(&str, &str, Option<&[u8]>, u16)> = vec![
        ("POST", "/v1/containers", Some(b"{not json"), 400),
        ("POST", "/v1/containers", Some(b"{\"image\": 5}"), 400),
        (
            "POST",
            "/v1/containers",
            Some(b"{\"image\": \"x\", \"bogus\": 1}"),
            400,
        ),
        (
            "POST",
            "/v1/containers",
            Some(b"{\"image\": \"no/such:image\"}"),
            404,
        ),
        (
            "POST",
            "/v1/containers",
            Some(b"{\"image\": \"UPPER CASE!!\"}"),
            404,
        ),
        ("POST", "/v1/images/pull", Some(b"{\"ref\": \"\"}"), 400),
        ("POST", "/v1/images/pull", Some(b"[]"), 400),
        ("GET", "/v1/images/inspect", None, 400),
        ("GET", "/v1/images/inspect?ref=nope", None, 404),
        ("GET", "/v1/images/save", None, 400),
        ("GET", "/v1/images/save?ref=nope", None, 404),
        ("GET", "/v1/export?target=nope", None, 404),
        ("DELETE", "/v1/images?ref=nope", None, 404),
        ("DELETE", "/v1/containers?id=nope", None, 404),
        (
            "POST",
            "/v1/containers/commit",
            Some(b"{\"container\": \"nope\"}"),
            404,
        ),
        (
            "POST",
            "/v1/mounts",
            Some(b"{\"target\": \"x\", \"dir\": \"/etc/x\"}"),
            403,
        ),
        (
            "POST",
            "/v1/mounts",
            Some(b"{\"target\": \"x\", \"dir\": \"relative\"}"),
            400,
        ),
        ("DELETE", "/v1/mounts?dir=/", None, 403),
        ("PUT", "/v1/images", None, 405),
        ("GET", "/v2/whatever", None, 404),
    ];
    for (method, path, body, want) in cases {
        let (status, bytes) = http(&serve.api_socket, method, path, body).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!(
            status,
            want,
            "{method} {path}: {}",
            String::from_utf8_lossy(&bytes)
        );
        assert!(
            v["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{method} {path} says why"
        );
    }
    // Mount point escaping through "..", and through a symlink inside a root.
    std::fs::create_dir_all(&mroot).unwrap();
    std::os::unix::fs::symlink("/etc", mroot.join("escape")).unwrap();
    for dir in [
        format!("{}/../x", mroot.display()),
        format!("{}/escape/x", mroot.display()),
    ] {
        let (s, v) = call(
            &serve,
            "POST",
            "/v1/mounts",
            Some(serde_json::json!({"target": "x", "dir": dir})),
        );
        assert_eq!(s, 403, "{dir}: {v}");
    }
    // Oversized bodies and bytes that are not HTTP at all.
    let big = vec![b'x'; 2 << 20];
    let (s, _) = http(&serve.api_socket, "POST", "/v1/containers", Some(&big)).unwrap();
    assert_eq!(s, 413);
    let junk = http_raw(&serve.api_socket, b"\x00\x01\x02 garbage\r\n\r\n").unwrap();
    assert!(
        junk.is_empty() || junk.starts_with(b"HTTP/1.1 4"),
        "{}",
        String::from_utf8_lossy(&junk)
    );

    assert!(serve.alive(), "{}", serve.log());
    let after = (
        call(&serve, "GET", "/v1/images", None),
        call(&serve, "GET", "/v1/containers", None),
    );
    assert_eq!(before, after, "nothing changed in the store");
    assert!(!Path::new("/etc/x").exists());
}

#[test]
fn api_pull_inspect_create_mount_commit_save_export_over_the_socket() {
    lamina_tests::require_tools!("umoci", "skopeo", "tar");
    let Some(served) = runnable_images("lamina-api-", &["lamina/api:v1"]) else {
        return;
    };
    let (tmp, image) = (&served.tmp, served.images[0].clone());
    let mroot = tmp.path().join("mounts");
    let serve = Serve::start(
        &tmp.path().join("root"),
        tmp.path(),
        "kernel",
        &["--mount-root", mroot.to_str().unwrap()],
    )
    .unwrap();

    // Pull: NDJSON progress, ending with the image.
    let (status, body) = http(
        &serve.api_socket,
        "POST",
        "/v1/images/pull",
        Some(serde_json::json!({"ref": image}).to_string().as_bytes()),
    )
    .unwrap();
    assert_eq!(status, 200);
    let events: Vec<Value> = String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.iter().any(|e| e["event"] == "layer"), "{events:?}");
    let last = events.last().unwrap();
    assert_eq!(last["event"], "done", "{events:?}");
    assert_eq!(last["image"]["layers"], 2);
    // A pull of something that does not exist ends with an error event.
    let (_, body) = http(
        &serve.api_socket,
        "POST",
        "/v1/images/pull",
        Some(
            serde_json::json!({"ref": format!("{}/lamina/missing:v1", served.registry.host)})
                .to_string()
                .as_bytes(),
        ),
    )
    .unwrap();
    let last: Value =
        serde_json::from_str(String::from_utf8(body).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "error", "{last}");

    let (s, list) = call(&serve, "GET", "/v1/images", None);
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (s, info) = call(
        &serve,
        "GET",
        &format!("/v1/images/inspect?ref={}", enc(&image)),
        None,
    );
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["layers"].as_array().unwrap().len(), 2);
    assert_eq!(
        info["config"]["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Containers from several clients at once: all distinct, all listed.
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let serve = &serve;
                let image = &image;
                s.spawn(move || {
                    let (st, c) = call(
                        serve,
                        "POST",
                        "/v1/containers",
                        Some(serde_json::json!({"image": image, "name": format!("c{i}")})),
                    );
                    assert_eq!(st, 201, "{c}");
                    c["id"].as_str().unwrap().to_owned()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (_, cs) = call(&serve, "GET", "/v1/containers", None);
    assert_eq!(cs.as_array().unwrap().len(), 4);
    let (s, _) = call(
        &serve,
        "POST",
        "/v1/containers",
        Some(serde_json::json!({"image": image, "name": "c0"})),
    );
    assert_eq!(s, 409, "names are unique");

    // Mount a container under an allowed root, write, unmount.
    let dir = mroot.join("c0");
    let (s, m) = call(
        &serve,
        "POST",
        "/v1/mounts",
        Some(serde_json::json!({"target": ids[0], "dir": dir, "driver": "kernel"})),
    );
    assert_eq!(s, 201, "{m}");
    assert_eq!(
        std::fs::read_to_string(dir.join(LAYER2_FILE)).unwrap(),
        LAYER2_CONTENT
    );
    std::fs::write(dir.join("api-was-here"), "yes").unwrap();
    for by in [ids[0].as_str(), "c0"] {
        let (s, v) = call(&serve, "DELETE", &format!("/v1/containers?id={by}"), None);
        assert_eq!(s, 409, "a mounted container is not removed (by {by}): {v}");
    }
    let (s, v) = call(
        &serve,
        "DELETE",
        &format!("/v1/mounts?dir={}", enc(dir.to_str().unwrap())),
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert!(!dir.join(LAYER2_FILE).exists());

    // Export the container: its write and the image's files, flattened.
    let (s, tarball) = http(
        &serve.api_socket,
        "GET",
        &format!("/v1/export?target={}", ids[0]),
        None,
    )
    .unwrap();
    assert_eq!(s, 200);
    let listing = tar_list(&tmp.path().join("export.tar"), &tarball);
    assert!(listing.contains(&"api-was-here".to_string()), "{listing:?}");
    assert!(listing.contains(&LAYER2_FILE.to_string()));
    assert!(!listing.contains(&"bin/ls".to_string()), "whiteout applied");

    // Commit it, then save the result: skopeo reads the archive.
    let (s, img) = call(
        &serve,
        "POST",
        "/v1/containers/commit",
        Some(
            serde_json::json!({"container": ids[0], "ref": "localhost/api/committed:1", "message": "via api"}),
        ),
    );
    assert_eq!(s, 201, "{img}");
    assert_eq!(img["layers"], 3);
    let (s, archive) = http(
        &serve.api_socket,
        "GET",
        "/v1/images/save?ref=localhost/api/committed:1",
        None,
    )
    .unwrap();
    assert_eq!(s, 200);
    let file = tmp.path().join("saved.tar");
    std::fs::write(&file, &archive).unwrap();
    let out = Command::new("skopeo")
        .args(["inspect", &format!("docker-archive:{}", file.display())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspected: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 3);

    // Clean up through the API.
    for id in &ids {
        let (s, v) = call(&serve, "DELETE", &format!("/v1/containers?id={id}"), None);
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = call(
        &serve,
        "DELETE",
        "/v1/images?ref=localhost/api/committed:1",
        None,
    );
    assert_eq!(s, 200, "{v}");
    let (_, list) = call(&serve, "GET", "/v1/images", None);
    assert_eq!(list.as_array().unwrap().len(), 1);
}

fn tar_list(path: &Path, data: &[u8]) -> Vec<String> {
    std::fs::write(path, data).unwrap();
    let out = Command::new("tar").arg("-tf").arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "tar reads it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_owned())
        .collect()
}
