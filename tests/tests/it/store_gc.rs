//! gc never removes what is in use: images (named or kept by a container),
//! containers' layers, work in progress of a concurrent import.

use lamina_tests::store::{Compress, TestStore, big_tar, gnu_tar, make_tree};

#[test]
fn gc_keeps_images_and_containers() {
    let s = TestStore::new();
    let src = s.scratch("a");
    make_tree(&src, &[("a", b"a")]);
    let ta = s.scratch("a.tar");
    gnu_tar(&src, &ta, Compress::Gzip);
    let src = s.scratch("b");
    make_tree(&src, &[("b", b"b")]);
    let tb = s.scratch("b.tar");
    gnu_tar(&src, &tb, Compress::Gzip);
    s.ok(&["import", ta.to_str().unwrap(), "a"]);
    s.ok(&["import", tb.to_str().unwrap(), "b"]);

    // A container on `a`, then its image loses its name.
    let store = s.open();
    let c = store.create_container("a", Some("keep")).unwrap();
    std::fs::write(c.upper_dir().join("new"), b"written").unwrap();
    drop(store);
    s.ok(&["rmi", "a"]);

    let gc = s.json(&["gc", "--format", "json"]);
    assert!(gc["blobs_removed"].as_array().unwrap().is_empty(), "{gc}");
    assert!(gc["layers_removed"].as_array().unwrap().is_empty(), "{gc}");
    let store = s.open();
    let img = store
        .container_image(&store.container("keep").unwrap())
        .unwrap();
    for d in store.image_layer_dirs(&img).unwrap() {
        assert!(d.join("a").is_file());
    }
    assert_eq!(
        std::fs::read(c.upper_dir().join("new")).unwrap(),
        b"written"
    );
    s.ok(&["fsck"]);

    // Removing the container frees `a`, not `b`.
    store.remove_container("keep").unwrap();
    drop(store);
    let gc = s.json(&["gc", "--format", "json"]);
    assert_eq!(gc["blobs_removed"].as_array().unwrap().len(), 3, "{gc}");
    assert_eq!(gc["layers_removed"].as_array().unwrap().len(), 1, "{gc}");
    let b = s.json(&["inspect", "b"]);
    assert!(
        std::path::Path::new(b["layers"][0]["dir"].as_str().unwrap())
            .join("b")
            .is_file()
    );
    s.ok(&["fsck"]);
}

/// gc in a loop while another process imports: the import always completes
/// and the store is consistent (gc waits for the import's lease).
#[test]
fn gc_during_import_removes_nothing_in_flight() {
    let s = TestStore::new();
    let t = s.scratch("big.tar.gz");
    big_tar(&s.scratch("big"), &t, 400, 64 << 10, 7, Compress::Gzip);
    s.ok(&["images"]); // create the store
    let mut import = s
        .cmd(&["import", t.to_str().unwrap(), "big"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut rounds = 0;
    loop {
        s.ok(&["gc"]);
        rounds += 1;
        if import.try_wait().unwrap().is_some() {
            break;
        }
    }
    assert!(import.wait().unwrap().success());
    s.ok(&["gc"]);
    let inspect = s.json(&["inspect", "big"]);
    let dir = std::path::PathBuf::from(inspect["layers"][0]["dir"].as_str().unwrap());
    assert!(dir.join("d000/f00000").is_file());
    let fsck = s.json(&["fsck", "--format", "json"]);
    assert_eq!(fsck["problems"], serde_json::json!([]), "{fsck}");
    assert_eq!(fsck["garbage"], serde_json::json!([]), "{fsck}");
    eprintln!("gc ran {rounds} times during the import");
}
