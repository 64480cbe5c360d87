//! Bad archives: each is refused with an error that says what is wrong, and
//! no image name is left behind.

use anyhow::{Result, ensure};
use lamina_store::Store;
use lamina_store::archive::tar::{Header, Kind, TarWriter};
use lamina_tests::archive::*;
use std::path::Path;

/// A valid one-image archive (OCI + docker-archive) as (path, bytes) entries.
fn good_entries() -> Vec<(String, Vec<u8>)> {
    let layer = {
        let mut tw = TarWriter::new(Vec::new());
        tw.append(&Header::simple("f", Kind::File { size: 2 }))
            .unwrap();
        tw.write_data(b"ok").unwrap();
        tw.finish().unwrap()
    };
    let diff = lamina_store::Digest::of(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff.as_str()]},
    }))
    .unwrap();
    let cd = lamina_store::Digest::of(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.as_str(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": diff.as_str(), "size": layer.len()}],
    }))
    .unwrap();
    let md = lamina_store::Digest::of(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.as_str(), "size": manifest.len(),
            "annotations": {"io.containerd.image.name": "localhost/bad:1"}}],
    }))
    .unwrap();
    vec![
        (format!("blobs/sha256/{}", diff.hex()), layer),
        (format!("blobs/sha256/{}", cd.hex()), config),
        (format!("blobs/sha256/{}", md.hex()), manifest),
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), index),
    ]
}

fn write_archive(path: &Path, entries: &[(String, Vec<u8>)]) -> Result<()> {
    let mut tw = TarWriter::new(Vec::new());
    for (name, data) in entries {
        tw.append(&Header::simple(
            name.as_bytes().to_vec(),
            Kind::File {
                size: data.len() as u64,
            },
        ))?;
        tw.write_data(data)?;
    }
    std::fs::write(path, tw.finish()?)?;
    Ok(())
}

/// Loads `entries` into a fresh store expecting an error containing `needle`,
/// then checks the store has no image.
fn refused(entries: &[(String, Vec<u8>)], needle: &str) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let archive = tmp.path().join("a.tar");
    write_archive(&archive, entries)?;
    let root = tmp.path().join("store");
    let err = lamina_fails(&root, &["load", "-i", archive.to_str().unwrap()])?;
    ensure!(
        err.contains(needle),
        "error {err:?} does not mention {needle:?}"
    );
    let store = Store::open(&root)?;
    ensure!(
        store.images()?.is_empty(),
        "a failed load left images: {:?}",
        store.images()?
    );
    Ok(())
}

#[test]
fn the_good_archive_loads() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let archive = tmp.path().join("a.tar");
    write_archive(&archive, &good_entries())?;
    let out = lamina(
        &tmp.path().join("store"),
        &["load", "-i", archive.to_str().unwrap()],
    )?;
    ensure!(out.contains("localhost/bad:1"), "{out}");
    Ok(())
}

#[test]
fn missing_blob_is_refused() -> Result<()> {
    let mut e = good_entries();
    e.remove(0); // the layer
    refused(&e, "missing from the archive")
}

#[test]
fn missing_manifest_blob_is_refused() -> Result<()> {
    let mut e = good_entries();
    e.remove(2);
    refused(&e, "missing from the archive")
}

#[test]
fn digest_mismatch_is_refused() -> Result<()> {
    let mut e = good_entries();
    e[0].1[0] ^= 0xff;
    refused(&e, "does not match its digest")
}

#[test]
fn paths_outside_the_archive_are_refused() -> Result<()> {
    let mut e = good_entries();
    e.insert(0, ("../../etc/evil".into(), b"x".to_vec()));
    refused(&e, "outside the archive")?;
    let mut e = good_entries();
    e.insert(0, ("/etc/evil".into(), b"x".to_vec()));
    refused(&e, "absolute path")
}

#[test]
fn absurd_sizes_are_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let archive = tmp.path().join("a.tar");
    // An entry header claiming 1 TiB, then the archive ends.
    let mut bytes = Vec::new();
    {
        let mut tw = TarWriter::new(&mut bytes);
        tw.append(&Header::simple(
            format!("blobs/sha256/{}", "a".repeat(64)),
            Kind::File { size: 1 << 40 },
        ))?;
    }
    bytes.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&archive, &bytes)?;
    let root = tmp.path().join("store");
    let err = lamina_fails(&root, &["load", "-i", archive.to_str().unwrap()])?;
    ensure!(err.contains("more than the whole archive"), "{err}");
    // An oversized metadata file.
    let mut e = good_entries();
    e.push(("manifest.json".into(), vec![b' '; 17 << 20]));
    refused(&e, "refusing more than")
}

#[test]
fn not_an_image_archive_is_refused() -> Result<()> {
    refused(
        &[("hello.txt".into(), b"hi".to_vec())],
        "neither index.json",
    )?;
    let mut e = good_entries();
    e.last_mut().unwrap().1 = b"{not json".to_vec();
    refused(&e, "not valid JSON")
}

#[test]
fn config_lying_about_layers_is_refused() -> Result<()> {
    let mut e = good_entries();
    // A manifest whose uncompressed layer does not match the config's diff id.
    let other = {
        let mut tw = TarWriter::new(Vec::new());
        tw.append(&Header::simple("g", Kind::File { size: 0 }))?;
        tw.finish()?
    };
    let od = lamina_store::Digest::of(&other);
    let cfg_name = e[1].0.clone();
    let cd = lamina_store::Digest::parse(&format!("sha256:{}", &cfg_name[13..]))?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.as_str(), "size": e[1].1.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": od.as_str(), "size": other.len()}],
    }))?;
    let md = lamina_store::Digest::of(&manifest);
    e.push((format!("blobs/sha256/{}", od.hex()), other));
    e.push((format!("blobs/sha256/{}", md.hex()), manifest.clone()));
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": e[2].0.replace("blobs/sha256/", "sha256:"), "size": e[2].1.len(),
             "annotations": {"io.containerd.image.name": "localhost/good:1"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.as_str(), "size": manifest.len(),
             "annotations": {"io.containerd.image.name": "localhost/liar:1"}}],
    }))?;
    let idx = e.iter().position(|(n, _)| n == "index.json").unwrap();
    e[idx].1 = index;
    // Neither image gets a name: the good one is not registered either.
    refused(&e, "does not match its diff id")
}
