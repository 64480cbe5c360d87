//! The image lifecycle through the real `lamina` binary: import (gzip, zstd,
//! plain) → images → inspect → history → layers → tag → rmi → gc.

use lamina_tests::store::{Compress, TestStore, file_digest, gnu_tar, make_tree};

#[test]
fn import_list_inspect_tag_rmi_gc() {
    let s = TestStore::new();
    let src = s.scratch("src");
    make_tree(
        &src,
        &[
            ("etc/os-release", b"ID=lamina\n"),
            ("bin/", b""),
            ("usr/share/doc/x", b"doc"),
        ],
    );
    let tgz = s.scratch("rootfs.tar.gz");
    gnu_tar(&src, &tgz, Compress::Gzip);

    let id = s
        .ok(&["import", tgz.to_str().unwrap(), "myapp:1"])
        .trim()
        .to_string();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");

    // images (json and table)
    let images = s.json(&["images", "--format", "json"]);
    let images = images.as_array().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["id"], id.as_str());
    assert_eq!(images[0]["names"][0], "docker.io/library/myapp:1");
    let table = s.ok(&["images"]);
    assert!(
        table.lines().next().unwrap().starts_with("REPOSITORY"),
        "{table}"
    );
    assert!(
        table.contains("docker.io/library/myapp") && table.contains(&id[7..19]),
        "{table}"
    );
    assert_eq!(s.ok(&["images", "-q"]).trim(), &id[7..19]);
    assert_eq!(s.ok(&["images", "-q", "--no-trunc"]).trim(), id);

    // inspect: manifest, config, layers with chain ids and dirs
    let inspect = s.json(&["inspect", "myapp:1"]);
    assert_eq!(inspect["id"], id.as_str());
    let repo_digest = format!(
        "docker.io/library/myapp@{}",
        inspect["manifest_digest"].as_str().unwrap()
    );
    assert_eq!(inspect["repo_digests"], serde_json::json!([repo_digest]));
    assert_eq!(
        inspect["manifest"]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let layer = &inspect["layers"][0];
    assert_eq!(
        layer["digest"],
        file_digest(&tgz).as_str(),
        "the tar is stored as given"
    );
    assert_eq!(
        layer["media_type"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(inspect["config"]["rootfs"]["diff_ids"][0], layer["diff_id"]);
    assert_eq!(
        layer["chain_id"], layer["diff_id"],
        "a bottom layer's chain id is its diff id"
    );
    assert_eq!(
        inspect["config"]["history"][0]["created_by"],
        "lamina import"
    );
    assert_eq!(inspect["config"]["os"], "linux");
    let dir = std::path::PathBuf::from(layer["dir"].as_str().unwrap());
    assert_eq!(
        std::fs::read(dir.join("etc/os-release")).unwrap(),
        b"ID=lamina\n"
    );
    assert!(dir.join("bin").is_dir());
    // by short id too
    assert_eq!(s.json(&["inspect", &id[7..19]])["id"], id.as_str());

    // history and layers
    let history = s.json(&["history", "myapp:1", "--format", "json"]);
    assert_eq!(history[0]["created_by"], "lamina import");
    assert_eq!(history[0]["id"], id.as_str());
    let h = s.ok(&["history", "myapp:1"]);
    assert!(h.contains("lamina import") && h.starts_with("IMAGE"), "{h}");
    let layers = s.json(&["layers", "docker.io/library/myapp:1", "--format", "json"]);
    assert_eq!(layers[0]["chain_id"], layer["chain_id"]);
    assert_eq!(layers[0]["present"], true);

    // tag, rmi
    s.ok(&["tag", "myapp:1", "localhost:5000/other:2"]);
    let names = s.json(&["images", "--format", "json"])[0]["names"].clone();
    assert_eq!(
        names,
        serde_json::json!(["docker.io/library/myapp:1", "localhost:5000/other:2"])
    );
    let out = s.output(&["rmi", &id[7..19]]);
    assert!(
        !out.status.success(),
        "rmi by id of a multi-named image needs --force"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("several names"));
    let out = s.ok(&["rmi", "myapp:1"]);
    assert_eq!(out.trim(), "Untagged: docker.io/library/myapp:1");
    assert!(
        !dir.join("etc").exists() || dir.exists(),
        "rmi does not touch layer dirs"
    );
    let out = s.ok(&["rmi", "localhost:5000/other:2"]);
    assert!(out.contains(&format!("Deleted: {id}")), "{out}");
    assert_eq!(
        s.json(&["images", "--format", "json"]),
        serde_json::json!([])
    );
    assert!(!s.output(&["inspect", "myapp:1"]).status.success());

    // gc frees blobs and the layer dir
    assert_eq!(
        s.entries("blobs/sha256").len(),
        3,
        "layer, config, manifest"
    );
    let gc = s.json(&["gc", "--format", "json"]);
    assert_eq!(gc["blobs_removed"].as_array().unwrap().len(), 3, "{gc}");
    assert_eq!(gc["layers_removed"].as_array().unwrap().len(), 1, "{gc}");
    assert!(!dir.exists());
    assert!(s.entries("blobs/sha256").is_empty());
    assert!(s.entries("layers").is_empty());
    s.ok(&["fsck"]);
}

#[test]
fn plain_gzip_and_zstd_share_one_layer_dir() {
    let s = TestStore::new();
    let src = s.scratch("src");
    make_tree(&src, &[("a/b/c", b"same content"), ("d", b"")]);
    let mut chains = Vec::new();
    for (c, ext, mt) in [
        (
            Compress::None,
            "tar",
            "application/vnd.oci.image.layer.v1.tar",
        ),
        (
            Compress::Gzip,
            "tgz",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            Compress::Zstd,
            "tzst",
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    ] {
        let f = s.scratch(&format!("l.{ext}"));
        gnu_tar(&src, &f, c);
        s.ok(&["import", f.to_str().unwrap(), &format!("img:{ext}")]);
        let inspect = s.json(&["inspect", &format!("img:{ext}")]);
        assert_eq!(inspect["layers"][0]["media_type"], mt);
        assert_eq!(inspect["layers"][0]["digest"], file_digest(&f).as_str());
        chains.push(inspect["layers"][0]["chain_id"].clone());
    }
    assert!(
        chains.windows(2).all(|w| w[0] == w[1]),
        "same tar, same diff id: {chains:?}"
    );
    assert_eq!(s.entries("layers").len(), 1, "{:?}", s.entries("layers"));
    assert_eq!(
        s.json(&["images", "--format", "json"])
            .as_array()
            .unwrap()
            .len(),
        3
    );
    s.ok(&["fsck"]);
}

#[test]
fn errors_name_the_thing_and_leave_no_trace() {
    let s = TestStore::new();
    let junk = s.scratch("junk.tar");
    std::fs::write(
        &junk,
        b"this is not a tar archive at all, not even close........",
    )
    .unwrap();
    let out = s.output(&["import", junk.to_str().unwrap(), "junk"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("junk.tar"), "{err}");
    assert!(s.entries("layers").is_empty(), "{:?}", s.entries("layers"));
    assert_eq!(
        s.json(&["images", "--format", "json"]),
        serde_json::json!([])
    );
    let out = s.output(&["inspect", "nosuch"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = s.output(&["import", junk.to_str().unwrap(), "Bad/Name"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid image reference"));
    // The store stays usable.
    let src = s.scratch("src");
    make_tree(&src, &[("x", b"y")]);
    let t = s.scratch("ok.tar");
    gnu_tar(&src, &t, Compress::None);
    s.ok(&["import", t.to_str().unwrap(), "fine"]);
    s.ok(&["fsck"]);
}
