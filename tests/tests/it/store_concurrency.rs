//! Several lamina processes on one store: no corruption, no work done twice.

use lamina_tests::store::{Compress, TestStore, big_tar};
use std::process::Stdio;

/// Two processes import the same layer at once: both images exist, the
/// layer is unpacked exactly once (the other process waits and reuses it).
#[test]
fn concurrent_imports_share_a_layer() {
    let s = TestStore::new();
    let t = s.scratch("shared.tar.gz");
    big_tar(&s.scratch("src"), &t, 300, 64 << 10, 1, Compress::Gzip);
    s.ok(&["images"]);
    let spawn = |name: &str| {
        s.cmd(&["import", t.to_str().unwrap(), name])
            .env("LAMINA_LOG", "lamina_store=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("one"), spawn("two"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let err_a = String::from_utf8_lossy(&a.stderr);
    let err_b = String::from_utf8_lossy(&b.stderr);
    assert!(a.status.success(), "{err_a}");
    assert!(b.status.success(), "{err_b}");
    let unpacks = err_a.matches("unpacked layer").count() + err_b.matches("unpacked layer").count();
    assert_eq!(
        unpacks, 1,
        "the layer must be unpacked once:\n{err_a}\n{err_b}"
    );
    let one = s.json(&["inspect", "one"]);
    let two = s.json(&["inspect", "two"]);
    assert_eq!(one["layers"][0]["chain_id"], two["layers"][0]["chain_id"]);
    assert_eq!(s.entries("layers").len(), 1);
    let fsck = s.json(&["fsck", "--format", "json"]);
    assert_eq!(fsck["problems"], serde_json::json!([]), "{fsck}");
}

/// Imports of different images while other processes list and inspect:
/// every command succeeds and every image ends up listed.
#[test]
fn listing_during_imports() {
    let s = TestStore::new();
    let tars: Vec<_> = (0..4)
        .map(|i| {
            let t = s.scratch(&format!("t{i}.tar.zst"));
            big_tar(
                &s.scratch(&format!("src{i}")),
                &t,
                50,
                32 << 10,
                100 + i,
                Compress::Zstd,
            );
            t
        })
        .collect();
    s.ok(&["images"]);
    let children: Vec<_> = tars
        .iter()
        .enumerate()
        .map(|(i, t)| {
            s.cmd(&["import", t.to_str().unwrap(), &format!("img{i}")])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for _ in 0..10 {
        let v = s.json(&["images", "--format", "json"]);
        for img in v.as_array().unwrap() {
            s.ok(&["layers", img["id"].as_str().unwrap()]);
        }
    }
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        s.json(&["images", "--format", "json"])
            .as_array()
            .unwrap()
            .len(),
        4
    );
    s.ok(&["fsck"]);
}
