//! `lamina pull` unpacks all layers of an image at once: a layer whose
//! hardlinks point into lower layers (or whose tar leaves out directories
//! the lower layers have) must still come out as if unpacked bottom-up, and
//! a hostile hardlink still fails the pull without leaving a layer dir.

use super::registry_pull::{err, lamina, ok};
use lamina_store::Digest;
use lamina_tests::registry::Registry;
use lamina_tests::registry::{Auth, random_bytes};
use lamina_tests::require_tools;
use lamina_tests::unpack::{Entry, tar_of};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Writes an OCI layout with uncompressed tar layers `layers` (bottom first)
/// tagged `tag`.
fn write_layout(layout: &Path, tag: &str, layers: &[Vec<u8>]) {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = Digest::of(data);
        std::fs::write(blobs.join(d.hex()), data).unwrap();
        (d, data.len())
    };
    let descs: Vec<_> = layers
        .iter()
        .map(|l| {
            let (d, n) = put(l);
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": d.as_str(), "size": n})
        })
        .collect();
    let diff_ids: Vec<_> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let (cd, cn) = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": cd.as_str(), "size": cn},
        "layers": descs,
    }))
    .unwrap();
    let (md, mn) = put(&manifest);
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": md.as_str(), "size": mn,
        "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

#[test]
fn pull_unpacks_layers_concurrently_with_hardlinks_into_lower_layers() {
    require_tools!("skopeo");
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A big bottom layer, so the upper ones start before it is done.
    let big = random_bytes(8 << 20);
    let bottom = tar_of([
        Entry::dir("usr/"),
        Entry {
            mode: 0o750,
            ..Entry::dir("usr/lib/")
        },
        Entry::file("usr/lib/big", &big),
        Entry::file("usr/lib/shared", b"shared bytes"),
    ]);
    // No directory entries: usr/ and usr/lib/ are implicit here.
    let middle = tar_of([
        Entry::hardlink("usr/lib/alias", "usr/lib/shared"),
        Entry::file("usr/lib/own", b"middle"),
    ]);
    // Links into both layers below, and to one of its own files.
    let top = tar_of([
        Entry::hardlink("usr/lib/again", "usr/lib/alias"),
        Entry::hardlink("usr/lib/big2", "usr/lib/big"),
        Entry::file("etc-file", b"top"),
        Entry::hardlink("etc-link", "etc-file"),
    ]);
    let layout = dir.path().join("oci");
    write_layout(&layout, "v1", &[bottom, middle, top]);
    reg.put_oci(&layout, "v1", "par/links:v1").unwrap();
    let root = dir.path().join("root");
    let name = format!("{}/par/links:v1", reg.host);
    ok(&lamina(&root, dir.path(), &["pull", &name]));

    let store = lamina_store::Store::open(&root).unwrap();
    let image = store.image(&name).unwrap();
    let dirs = store.image_layer_dirs(&image).unwrap();
    assert_eq!(dirs.len(), 3);
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    let (b, m, t) = (&dirs[0], &dirs[1], &dirs[2]);
    assert_eq!(
        std::fs::read(m.join("usr/lib/alias")).unwrap(),
        b"shared bytes"
    );
    assert_eq!(
        ino(&m.join("usr/lib/alias")),
        ino(&b.join("usr/lib/shared"))
    );
    assert_eq!(
        ino(&t.join("usr/lib/again")),
        ino(&b.join("usr/lib/shared"))
    );
    assert_eq!(ino(&t.join("usr/lib/big2")), ino(&b.join("usr/lib/big")));
    assert_eq!(ino(&t.join("etc-link")), ino(&t.join("etc-file")));
    assert_eq!(std::fs::read(t.join("usr/lib/big2")).unwrap(), big);
    // Implicit dirs took the lower layer's metadata.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode();
    assert_eq!(mode(&b.join("usr/lib")) & 0o7777, 0o750);
    assert_eq!(mode(&m.join("usr/lib")), mode(&b.join("usr/lib")));
    assert_eq!(mode(&t.join("usr/lib")), mode(&b.join("usr/lib")));
    let fsck = store.fsck().unwrap();
    assert!(fsck.is_ok(), "{:?}", fsck.problems);
}

#[test]
fn pull_with_a_dangling_hardlink_in_an_upper_layer_fails_and_leaves_no_layer() {
    require_tools!("skopeo");
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bottom = tar_of([Entry::file("a", random_bytes(4 << 20))]);
    let top = tar_of([Entry::hardlink("b", "nowhere")]);
    let layout = dir.path().join("oci");
    write_layout(&layout, "v1", &[bottom, top]);
    reg.put_oci(&layout, "v1", "par/bad:v1").unwrap();
    let root = dir.path().join("root");
    let name = format!("{}/par/bad:v1", reg.host);
    let e = err(&lamina(&root, dir.path(), &["pull", &name]));
    assert!(
        e.contains("neither in this layer nor in its parents"),
        "{e}"
    );
    let store = lamina_store::Store::open(&root).unwrap();
    assert!(store.image(&name).is_err());
    let leftovers: Vec<_> = std::fs::read_dir(root.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
