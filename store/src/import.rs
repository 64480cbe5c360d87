//! `import`: a tar (plain, gzip or zstd) becomes a one-layer image.
//!
//! The file is stored as given (its media type says how it is compressed),
//! unpacked once per distinct blob (see [`crate::Store::unpack_layer_blob`]),
//! and described by a generated config (diff id, one history entry, creation
//! time, host os/arch) and an OCI manifest, both stored as blobs.

use crate::error::IoContext;
use crate::images::media_types;
use crate::{ImageRecord, Result, Store};
use std::io::{BufRead, BufReader, Read};

/// The OCI platform of this host: (`linux`, `amd64`), (`linux`, `arm64`)...
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    (std::env::consts::OS, arch)
}

/// Layer media type for a stream starting with `head`.
pub fn layer_media_type(head: &[u8]) -> &'static str {
    if head.starts_with(&[0x1f, 0x8b]) {
        media_types::OCI_LAYER_GZIP
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        media_types::OCI_LAYER_ZSTD
    } else {
        media_types::OCI_LAYER_TAR
    }
}

impl Store {
    /// Imports the tar stream `reader` as image `name`; `created_by` goes into
    /// the history entry (`lamina import` by the CLI).
    pub fn import_tar(
        &self,
        reader: impl Read,
        name: &str,
        created_by: &str,
    ) -> Result<ImageRecord> {
        crate::reference::normalize(name)?;
        let _lease = self.lease()?;
        let mut reader = BufReader::with_capacity(1 << 20, reader);
        let head = reader.fill_buf().at("<import input>")?;
        let media_type = layer_media_type(head);
        let key = format!("import-{:016x}", rand::random::<u64>());
        let (blob, size) = self.content.put_reader(&key, reader, None)?;
        let layer =
            self.unpack_layer_blob(None, &blob, media_type, None, &format!("import {blob}"))?;
        let now = crate::time::now_rfc3339();
        let (os, arch) = host_platform();
        let config = serde_json::json!({
            "created": now,
            "architecture": arch,
            "os": os,
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": [layer.diff_id] },
            "history": [{ "created": now, "created_by": created_by }],
        });
        let (config_digest, config_size) = self.put_json(&config)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_MANIFEST,
            "config": { "mediaType": media_types::OCI_CONFIG, "digest": config_digest, "size": config_size },
            "layers": [{ "mediaType": media_type, "digest": blob, "size": size }],
        });
        let (manifest_digest, _) = self.put_json(&manifest)?;
        self.register_image(Some(name), &manifest_digest)
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::{store, tar};

    /// The generated manifest and config are valid OCI documents (parsed by
    /// the oci-spec crate) that describe the stored layer.
    #[test]
    fn import_writes_valid_oci_documents() {
        let (_d, s) = store();
        let t = tar(&[("etc/hostname", b"lamina\n")]);
        let img = s
            .import_tar(&t[..], "imported:v1", "lamina import")
            .unwrap();
        assert_eq!(img.names, vec!["docker.io/library/imported:v1"]);
        let (_, m) = s.manifest(&img.manifest_digest).unwrap();
        let (_, c) = s.config(&img.config_digest).unwrap();
        let m = oci_spec::image::ImageManifest::from_reader(&m[..]).unwrap();
        let c = oci_spec::image::ImageConfiguration::from_reader(&c[..]).unwrap();
        assert_eq!(m.layers().len(), 1);
        assert_eq!(
            m.layers()[0].digest().to_string(),
            img.layers[0].digest.as_str()
        );
        assert_eq!(m.layers()[0].size(), t.len() as u64);
        assert_eq!(
            m.layers()[0].media_type().to_string(),
            crate::images::media_types::OCI_LAYER_TAR
        );
        assert_eq!(
            c.rootfs().diff_ids(),
            &vec![crate::Digest::of(&t).to_string()]
        );
        assert_eq!(
            c.history().as_ref().unwrap()[0].created_by().as_deref(),
            Some("lamina import")
        );
        let created = c.created().as_deref().unwrap();
        assert!(crate::time::parse_rfc3339(created).is_some(), "{created}");
        assert_eq!(c.os().to_string(), "linux");
        let dir = s.layer_dir(&img.layers[0].chain_id);
        assert_eq!(
            std::fs::read(dir.join("etc/hostname")).unwrap(),
            b"lamina\n"
        );
    }
}
