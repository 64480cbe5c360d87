//! Layer unpack: a (possibly compressed) tar stream into one layer directory,
//! in overlayfs format.
//!
//! The stream is read once. The calling thread detects the compression
//! (gzip, zstd or none, from the magic bytes), decompresses and hands the
//! uncompressed bytes in large chunks to a worker thread that hashes them
//! (the diff id), parses the tar and writes the entries; memory stays
//! bounded by a few chunks whatever the layer size. Nothing is fsynced: the
//! caller syncs the file system once per layer if it wants durability.
//!
//! Invariants:
//! - Nothing is written, linked, chmod-ed or deleted outside `dest`: every
//!   lookup is relative to `dest`'s fd with `RESOLVE_IN_ROOT` (symlinks in the
//!   layer resolve inside it), and every last component is handled with
//!   no-follow `*at` calls (see [`fs`]). Lower layers are only read (as
//!   hardlink sources).
//! - Entry names are normalised ([`path::normalize`]): a leading `/` is
//!   stripped, `..` above the root is rejected.
//! - Whiteouts become character devices 0/0 (or `.wh.NAME` marker files
//!   without the privilege for mknod), `.wh..wh..opq` becomes the
//!   `trusted.overlay.opaque=y` xattr (or the marker file). Layers cannot
//!   set `trusted.overlay.*` or `user.overlay.*` xattrs themselves.
//! - On error `dest` holds a partial layer; the caller deletes it. An error
//!   in either stage stops the other at once (the stream is not read to its
//!   end).
//!
//! Decisions where the OCI image spec is silent (the same as containerd's
//! overlay applier, and what `umoci unpack` produces for real images):
//! - Symlinks are resolved inside the layer being unpacked only, as if its
//!   directory were `/`: `a -> /` then `a/etc/x` writes the layer's `etc/x`.
//!   A symlink that leads nowhere inside the layer makes the entry an error.
//! - A directory the tar needs but does not list takes the owner, mode and
//!   times of the same directory in the nearest lower layer (0755 root
//!   otherwise), so the merged view keeps them. This is applied after the
//!   last entry (to those still implicit then), so the lower layers are
//!   not needed before.
//! - Regular files of 16 KiB or more get their writeback started as soon
//!   as they are written (`sync_file_range(SYNC_FILE_RANGE_WRITE)` on a
//!   background thread, a hint without durability): the disk writes the
//!   layer while it unpacks, and the caller's final `syncfs` finds little
//!   left to flush.
//! - Whiteouts and opaque markers never follow symlinks: one below a
//!   symlink or any other non-directory of the same layer is dropped (that
//!   node already hides everything below it; umoci writes these when a
//!   directory became a file or a symlink).
//! - Hardlink targets are looked up in this layer, then in the lower layers
//!   nearest first; a whiteout on the way means "not found".
//! - Device nodes that cannot be created without privilege are skipped with
//!   a warning; fifos, files and everything else never are.
//! - Memory: a few 1 MiB chunks, plus one small record per directory (its
//!   mode and times are applied at the end, deepest first).

mod apply;
pub mod error;
mod fs;
pub mod path;
mod stream;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

pub use apply::OPAQUE_XATTR;
pub use error::UnpackError;
pub use stream::Compression;

/// What an unpack saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// `sha256:<hex>` of the uncompressed tar stream: the layer's diff id.
    pub diff_id: String,
    /// Bytes of the uncompressed tar stream.
    pub size: u64,
    /// Tar entries applied (whiteouts included, PAX/GNU extension headers not).
    pub entries: u64,
}

impl UnpackStats {
    /// Checks the diff id against the one an image config announces.
    pub fn verify_diff_id(&self, expected: &str, layer_name: &str) -> Result<(), UnpackError> {
        if self.diff_id == expected {
            Ok(())
        } else {
            Err(UnpackError::DiffIdMismatch {
                layer: layer_name.to_owned(),
                expected: expected.to_owned(),
                actual: self.diff_id.clone(),
            })
        }
    }
}

/// Unpacks the layer tar stream `reader` (gzip, zstd or plain) into `dest`.
///
/// `dest` must be an existing empty directory on the same file system as
/// `lowers`, the directories of the parent layers, nearest first (hardlinks
/// to files of lower layers are made with `link()`, or copied if that fails).
/// `layer_name` only labels errors. On error, `dest` is left partial and the
/// caller removes it; nothing outside `dest` has been modified.
pub fn unpack(
    reader: impl Read,
    dest: &Path,
    lowers: &[PathBuf],
    layer_name: &str,
) -> Result<UnpackStats, UnpackError> {
    let lower_trees = lowers
        .iter()
        .map(|p| open_tree(p))
        .collect::<Result<Vec<_>, _>>()?;
    unpack_into(reader, dest, apply::Lowers::Ready(&lower_trees), layer_name)
}

/// Like [`unpack`], but the parent layers' directories (nearest first) come
/// from `lowers`, which is called at most once and only when the layer
/// needs them: at a hardlink whose target this layer does not have, or
/// after the last entry for the directories the tar does not list (they
/// inherit the lower ones' metadata).
/// `lowers` may block until the parent layers exist, so a layer can unpack
/// while its parents are still being unpacked; the result is the same as
/// [`unpack`] with the final directories. An `Err(reason)` from `lowers`
/// fails the unpack with [`UnpackError::LowerLayers`].
pub fn unpack_with_pending_lowers(
    reader: impl Read,
    dest: &Path,
    lowers: impl FnOnce() -> Result<Vec<PathBuf>, String> + Send,
    layer_name: &str,
) -> Result<UnpackStats, UnpackError> {
    let load = move || {
        let dirs = lowers().map_err(|reason| UnpackError::LowerLayers {
            layer: layer_name.to_owned(),
            reason,
        })?;
        dirs.iter().map(|p| open_tree(p)).collect()
    };
    unpack_into(
        reader,
        dest,
        apply::Lowers::Pending(Box::new(load)),
        layer_name,
    )
}

fn open_tree(p: &Path) -> Result<fs::Tree, UnpackError> {
    fs::Tree::open(p).map_err(|source| UnpackError::Directory {
        path: p.to_owned(),
        source,
    })
}

fn unpack_into(
    reader: impl Read,
    dest: &Path,
    lowers: apply::Lowers<'_>,
    layer_name: &str,
) -> Result<UnpackStats, UnpackError> {
    let tree = open_tree(dest)?;
    let (tx, rx) = sync_channel(stream::CHUNKS);
    let (free_tx, free_rx) = sync_channel(stream::CHUNKS);

    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("lamina-untar".into())
            // remove_all recurses once per path component (at most path::MAX_DEPTH).
            .stack_size(16 << 20)
            .spawn_scoped(scope, move || {
                let mut input = stream::ChannelReader::new(rx, free_tx);
                let entries = apply_archive(&mut input, tree, lowers, layer_name)?;
                Ok((entries, input.digest()))
            })
            .map_err(|source| UnpackError::Read {
                layer: layer_name.to_owned(),
                source,
            })?;
        let produced = stream::produce(reader, tx, free_rx);
        let applied = worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let summary = produced.map_err(|source| UnpackError::Read {
            layer: layer_name.to_owned(),
            source,
        })?;
        if summary.size == 0 {
            return Err(UnpackError::Empty {
                layer: layer_name.to_owned(),
            });
        }
        let (entries, digest) = applied?;
        Ok(UnpackStats {
            diff_id: format!("sha256:{}", hex::encode(digest)),
            size: summary.size,
            entries,
        })
    })
}

/// The worker: parses the tar and applies every entry, then drains the
/// stream (so the whole of it is hashed) and fixes up directories.
fn apply_archive(
    input: &mut stream::ChannelReader,
    tree: fs::Tree,
    lowers: apply::Lowers<'_>,
    layer: &str,
) -> Result<u64, UnpackError> {
    let mut applier = apply::Applier::new(tree, lowers, layer);
    let mut last: Option<String> = None;
    let tar_error = |last: &Option<String>, source| UnpackError::Tar {
        layer: layer.to_owned(),
        after: match last {
            None => "at the start".to_owned(),
            Some(name) => format!("after entry {name:?}"),
        },
        source,
    };
    {
        let mut archive = tar::Archive::new(&mut *input);
        for entry in archive.entries().map_err(|e| tar_error(&last, e))? {
            let mut entry = entry.map_err(|e| tar_error(&last, e))?;
            applier.apply(&mut entry)?;
            last = Some(String::from_utf8_lossy(&entry.path_bytes()).into_owned());
        }
    }
    input.drain().map_err(|e| tar_error(&last, e))?;
    applier.finish()
}
