//! `import`: a tar (plain, gzip or zstd) becomes a one-layer image.
//!
//! The file is stored as given (its media type says how it is compressed),
//! unpacked once per distinct blob (see [`crate::Store::unpack_layer_blob`]),
//! and described by a generated config (diff id, one history entry, creation
//! time, host os/arch) and an OCI manifest, both stored as blobs.

use crate::images::media_types;
use crate::{Error, ImageRecord, Result, Store};
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
        let head = reader
            .fill_buf()
            .map_err(|e| Error::io("<import input>", e))?;
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
