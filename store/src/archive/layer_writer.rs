//! A container's upper dir (overlayfs format) -> one OCI layer tar,
//! compressed and hashed in a single pass.
//!
//! Invariants:
//! - Reads the upper dir only, never the lower layers or the merged tree.
//! - Reproducible: entries in bytewise name order, a dir before its children,
//!   normalised headers (see [`super::tar`]); same upper content, same digests.
//! - Whiteouts (0/0 char devices, or empty files with the overlay whiteout
//!   xattr) become `.wh.NAME`; an opaque dir gets a `.wh..wh..opq` entry right
//!   after its own header; `.wh.*` marker files already in the upper pass
//!   through as they are. Overlay-private xattrs are dropped.
//! - Files sharing an inode become one file plus tar hardlinks to it.
//! - An upper written by kernel overlayfs with `redirect_dir` or `metacopy`
//!   (content left in a lower layer) is refused rather than committed wrong.

use super::fsentry::{self, EntryWriter, WH_OPAQUE, WH_PREFIX};
use super::hash::HashWriter;
use super::tar::{Kind, TarWriter};
use crate::error::{Error, IoContext, Result};
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// gzip (`application/vnd.oci.image.layer.v1.tar+gzip`), readable by every tool.
    #[default]
    Gzip,
    /// zstd (`application/vnd.oci.image.layer.v1.tar+zstd`).
    Zstd,
    /// No compression (`application/vnd.oci.image.layer.v1.tar`).
    None,
}

impl Compression {
    /// The OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "gzip" | "gz" => Ok(Compression::Gzip),
            "zstd" | "zst" => Ok(Compression::Zstd),
            "none" | "uncompressed" => Ok(Compression::None),
            other => Err(format!(
                "unknown compression {other:?}: use gzip, zstd or none"
            )),
        }
    }
}

/// Options of [`write_layer`].
#[derive(Debug, Clone, Copy)]
pub struct LayerOptions {
    /// Blob compression.
    pub compression: Compression,
    /// Store files with holes as PAX sparse entries (else their zeros are written out).
    pub sparse: bool,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions {
            compression: Compression::Gzip,
            sparse: true,
        }
    }
}

/// What [`write_layer`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDigests {
    /// `sha256:` of the uncompressed tar (the diff id).
    pub diff_id: String,
    /// `sha256:` of the blob as written (compressed).
    pub digest: String,
    /// Size of the blob as written.
    pub size: u64,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
    /// The blob's media type.
    pub media_type: &'static str,
}

/// Writes the layer tar of `upper` to `out`, compressed as asked, and returns
/// both digests and the writer.
///
/// Reading and tar-building (with the diff id hash) run on the calling
/// thread; compression, the blob hash and writing to `out` run on a second
/// thread fed with 1 MiB chunks, so the two overlap.
pub fn write_layer<W: Write + Send>(
    upper: &Path,
    out: W,
    opts: &LayerOptions,
) -> Result<(LayerDigests, W)> {
    write_layer_tee(upper, out, None, opts)
}

/// Like [`write_layer`], also sending the uncompressed tar to `tee` (for an
/// unpacker running at the same time). The caller ends `tee` with
/// [`StreamWriter::finish`] once this returns `Ok`; a `tee` dropped without it
/// makes the reader fail, so a failed write never looks like a short layer.
pub fn write_layer_tee<W: Write + Send>(
    upper: &Path,
    out: W,
    tee: Option<&mut StreamWriter>,
    opts: &LayerOptions,
) -> Result<(LayerDigests, W)> {
    let out_name = PathBuf::from("<layer stream>");
    let io_out = |source| Error::Io {
        path: out_name.clone(),
        source,
    };
    let blob = HashWriter::new(BufWriter::with_capacity(1 << 20, out));
    let ((diff_id, uncompressed_size), blob) = if opts.compression == Compression::None {
        let (d, t) = write_tar(
            upper,
            Tee {
                first: blob,
                second: tee,
            },
            opts,
        )?;
        (d, t.first)
    } else {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
        let compression = opts.compression;
        std::thread::scope(|scope| {
            let worker = scope.spawn(move || compress(rx, blob, compression));
            let sender = ChunkSender {
                tx,
                buf: Vec::with_capacity(CHUNK),
            };
            let tar = write_tar(
                upper,
                Tee {
                    first: sender,
                    second: tee,
                },
                opts,
            )
            .and_then(|(d, t)| {
                t.first.close().map_err(io_out)?;
                Ok(d)
            });
            let compressed = worker
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("compression thread panicked")));
            match (tar, compressed) {
                (Ok(d), Ok(blob)) => Ok((d, blob)),
                // A failed compressor makes the tar side fail too; report the cause.
                (_, Err(e)) => Err(io_out(e)),
                (Err(e), Ok(_)) => Err(e),
            }
        })?
    };
    let (digest, size, buffered) = blob.finish();
    let out = buffered.into_inner().map_err(|e| io_out(e.into_error()))?;
    Ok((
        LayerDigests {
            diff_id,
            digest,
            size,
            uncompressed_size,
            media_type: opts.compression.media_type(),
        },
        out,
    ))
}

/// Writes to `first` and copies what it took to `second`.
struct Tee<'a, A> {
    first: A,
    second: Option<&'a mut StreamWriter>,
}

impl<A: Write> Write for Tee<'_, A> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.first.write(data)?;
        if let Some(s) = self.second.as_mut() {
            s.write_all(&data[..n])?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.first.flush()
    }
}

/// The error a [`StreamWriter`] reports when its reader went away.
pub const READER_STOPPED: &str = "the reader of the layer stream stopped";

enum StreamMsg {
    Data(Vec<u8>),
    End,
}

/// The writing end of an in-process byte stream between two threads (see [`stream`]).
pub struct StreamWriter {
    tx: std::sync::mpsc::SyncSender<StreamMsg>,
    buf: Vec<u8>,
}

/// The reading end of an in-process byte stream (see [`stream`]).
pub struct StreamReader {
    rx: std::sync::mpsc::Receiver<StreamMsg>,
    cur: Vec<u8>,
    pos: usize,
    ended: bool,
}

/// A bounded in-process byte stream: what the writer writes, the reader
/// reads; the reader sees end-of-file only after [`StreamWriter::finish`],
/// and an error if the writer was dropped without it.
pub fn stream() -> (StreamWriter, StreamReader) {
    let (tx, rx) = std::sync::mpsc::sync_channel(8);
    (
        StreamWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        },
        StreamReader {
            rx,
            cur: Vec::new(),
            pos: 0,
            ended: false,
        },
    )
}

impl StreamWriter {
    fn send(&mut self, msg: StreamMsg) -> std::io::Result<()> {
        self.tx
            .send(msg)
            .map_err(|_| std::io::Error::other(READER_STOPPED))
    }

    /// Sends what is buffered and the end of the stream.
    pub fn finish(mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            self.send(StreamMsg::Data(chunk))?;
        }
        self.send(StreamMsg::End)
    }
}

impl Write for StreamWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            self.send(StreamMsg::Data(chunk))?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::io::Read for StreamReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(StreamMsg::Data(v)) => {
                    self.cur = v;
                    self.pos = 0;
                }
                Ok(StreamMsg::End) => self.ended = true,
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the layer stream was cut off (writing the layer failed)",
                    ));
                }
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

const CHUNK: usize = 1 << 20;

/// How many files the read-ahead thread may be ahead of the tar writer.
const PREFETCH_AHEAD: usize = 256;

/// The tar side of the compression pipeline: sends full chunks to the compressor.
struct ChunkSender {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkSender {
    fn send(&mut self) -> std::io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .send(chunk)
            .map_err(|_| std::io::Error::other("the compression thread stopped"))
    }

    /// Sends what is buffered and closes the channel.
    fn close(mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        Ok(())
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The compressor side: everything received, compressed into `blob`.
fn compress<B: Write>(
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    blob: B,
    compression: Compression,
) -> std::io::Result<B> {
    match compression {
        Compression::Gzip => {
            let mut enc = flate2::GzBuilder::new().write(blob, flate2::Compression::default());
            for chunk in rx {
                enc.write_all(&chunk)?;
            }
            enc.finish()
        }
        Compression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(blob, 3)?;
            enc.include_checksum(false)?;
            for chunk in rx {
                enc.write_all(&chunk)?;
            }
            enc.finish()
        }
        Compression::None => {
            let mut blob = blob;
            for chunk in rx {
                blob.write_all(&chunk)?;
            }
            Ok(blob)
        }
    }
}

/// Writes the uncompressed layer tar of `upper` into `out`; returns its digest and size.
fn write_tar<W: Write>(upper: &Path, out: W, opts: &LayerOptions) -> Result<((String, u64), W)> {
    let out_name = PathBuf::from("<layer stream>");
    let hashed = HashWriter::new(BufWriter::with_capacity(256 << 10, out));
    let mut tw = TarWriter::new(hashed);
    let mut ew = EntryWriter::new(opts.sparse);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let done = ew.files_done.clone();
    std::thread::scope(|scope| {
        scope.spawn(|| fsentry::prefetch(upper, &done, &stop, PREFETCH_AHEAD));
        let walked = walk_upper(upper, &[], &mut tw, &mut ew, &out_name);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        walked
    })?;
    let hashed = tw.finish().at(&out_name)?;
    let (diff_id, n, buffered) = hashed.finish();
    let out = buffered
        .into_inner()
        .map_err(|e| e.into_error())
        .at(out_name)?;
    Ok(((diff_id, n), out))
}

/// Writes the uncompressed layer tar of `upper` into `out` (no hashing).
pub fn write_layer_tar<W: Write>(upper: &Path, out: W, opts: &LayerOptions) -> Result<W> {
    Ok(write_tar(upper, out, opts)?.1)
}

fn walk_upper<W: Write>(
    dir: &Path,
    rel: &[u8],
    tw: &mut TarWriter<W>,
    ew: &mut EntryWriter,
    out_name: &Path,
) -> Result<()> {
    for name in fsentry::sorted_names(dir)? {
        let nb = name.as_bytes();
        let path = dir.join(&name);
        let meta = path.symlink_metadata().at(&path)?;
        let arch = fsentry::join_name(rel, nb);
        if nb == WH_OPAQUE {
            // Emitted right after the dir header (below); never twice.
            continue;
        }
        if fsentry::is_whiteout(&path, &meta) {
            let mut wh = WH_PREFIX.to_vec();
            wh.extend_from_slice(nb);
            let mut h =
                fsentry::base_header(fsentry::join_name(rel, &wh), Kind::File { size: 0 }, &meta);
            h.mode &= 0o777;
            tw.append(&h).at(out_name)?;
            continue;
        }
        if nb.starts_with(WH_PREFIX) {
            // A whiteout marker file already in OCI form.
            let h = fsentry::base_header(arch, Kind::File { size: 0 }, &meta);
            tw.append(&h).at(out_name)?;
            continue;
        }
        let all = fsentry::read_xattrs(&path)?;
        if let Some(feature) = fsentry::unrepresentable(&all) {
            return Err(Error::Archive {
                path: path.clone(),
                reason: format!(
                    "carries the overlayfs {feature} xattr (the upper was written by kernel overlayfs with \
                     {feature}=on): its content lives in a lower layer and cannot be put in an OCI layer; \
                     mount containers with redirect_dir=off,metacopy=off (lamina's drivers do)"
                ),
            });
        }
        let opaque = meta.is_dir()
            && (fsentry::xattrs_say_opaque(&all)
                || path
                    .join(std::ffi::OsStr::from_bytes(WH_OPAQUE))
                    .symlink_metadata()
                    .is_ok());
        let xattrs: Vec<_> = all
            .into_iter()
            .filter(|(k, _)| !fsentry::is_private_xattr(k))
            .collect();
        ew.append(tw, &path, arch.clone(), &meta, xattrs, out_name)?;
        if meta.is_dir() {
            if opaque {
                let mut h = fsentry::base_header(
                    fsentry::join_name(&arch, WH_OPAQUE),
                    Kind::File { size: 0 },
                    &meta,
                );
                h.mode &= 0o777;
                tw.append(&h).at(out_name)?;
            }
            walk_upper(&path, &arch, tw, ew, out_name)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::testutil::entries;
    use rustix::fs::FileType;
    use std::io::Read;
    use std::os::unix::fs::{FileExt, PermissionsExt, symlink};

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    fn setxattr(path: &Path, name: &str, value: &[u8]) {
        rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
    }

    fn mknod(path: &Path, kind: FileType, mode: u32, dev: rustix::fs::Dev) {
        let mode = rustix::fs::Mode::from_raw_mode(mode);
        rustix::fs::mknodat(rustix::fs::CWD, path, kind, mode, dev).unwrap();
    }

    /// An upper dir with one of every kind of change.
    fn make_upper(root: &Path) {
        std::fs::create_dir_all(root.join("etc/sub")).unwrap();
        std::fs::write(root.join("etc/new.conf"), b"hello").unwrap();
        std::fs::write(root.join("etc/sub/x"), b"x").unwrap();
        std::fs::hard_link(root.join("etc/new.conf"), root.join("etc/link.conf")).unwrap();
        symlink("../etc/new.conf", root.join("symlink")).unwrap();
        std::fs::create_dir(root.join("opq")).unwrap();
        setxattr(&root.join("opq"), "trusted.overlay.opaque", b"y");
        std::fs::write(root.join("opq/inner"), b"i").unwrap();
        setxattr(&root.join("etc/new.conf"), "user.note", b"v1");
        setxattr(&root.join("etc/new.conf"), "trusted.overlay.origin", b"zz");
        std::fs::set_permissions(
            root.join("etc/sub/x"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        mknod(&root.join("gone"), FileType::CharacterDevice, 0, 0);
        mknod(
            &root.join("null"),
            FileType::CharacterDevice,
            0o666,
            rustix::fs::makedev(1, 3),
        );
        mknod(&root.join("fifo"), FileType::Fifo, 0o600, 0);
        let f = std::fs::File::create(root.join("sparse")).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_at(b"middle", 32 << 20).unwrap();
        f.write_at(b"start", 0).unwrap();
    }

    #[test]
    fn upper_becomes_oci_layer() {
        if !is_root() {
            eprintln!("SKIP upper_becomes_oci_layer: needs root (mknod, trusted xattrs)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let upper = tmp.path().join("upper");
        make_upper(&upper);
        let opts = LayerOptions {
            compression: Compression::None,
            ..Default::default()
        };
        let (d, data) = write_layer(&upper, Vec::new(), &opts).unwrap();
        assert_eq!(d.diff_id, d.digest);
        assert_eq!(d.size, data.len() as u64);
        let es = entries(&data);
        let names: Vec<&str> = es.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc/",
                "etc/link.conf",
                "etc/new.conf",
                "etc/sub/",
                "etc/sub/x",
                "fifo",
                ".wh.gone",
                "null",
                "opq/",
                "opq/.wh..wh..opq",
                "opq/inner",
                "GNUSparseFile.0/sparse",
                "symlink"
            ]
        );
        let get = |n: &str| es.iter().find(|e| e.0 == n).unwrap();
        // first name in order carries the data, the second is a hardlink to it
        assert_eq!(get("etc/link.conf").1, tar::EntryType::Regular);
        assert_eq!(get("etc/link.conf").2, b"hello");
        assert_eq!(get("etc/new.conf").1, tar::EntryType::Link);
        assert_eq!(get("etc/new.conf").2, b"etc/link.conf");
        let x = &get("etc/link.conf").3;
        assert!(
            x.iter()
                .any(|(k, v)| k == "SCHILY.xattr.user.note" && v == b"v1")
        );
        assert!(!x.iter().any(|(k, _)| k.contains("overlay")));
        assert_eq!(
            get("opq/")
                .3
                .iter()
                .filter(|(k, _)| k.contains("overlay"))
                .count(),
            0
        );
        assert_eq!(get("fifo").1, tar::EntryType::Fifo);
        assert_eq!(get("null").1, tar::EntryType::Char);
        assert_eq!(get("symlink").2, b"../etc/new.conf");
        let sp = get("GNUSparseFile.0/sparse");
        assert!(
            sp.3.iter()
                .any(|(k, v)| k == "GNU.sparse.realsize" && v == b"67108864")
        );
        assert!(
            sp.3.iter()
                .any(|(k, v)| k == "GNU.sparse.name" && v == b"sparse")
        );
        // Only the data blocks are stored, not 64 MiB of zeros.
        assert!(
            sp.2.len() < 1 << 20,
            "sparse entry stores {} bytes",
            sp.2.len()
        );
        let mode = {
            let mut a = tar::Archive::new(&data[..]);
            let e = a
                .entries()
                .unwrap()
                .map(|e| e.unwrap())
                .find(|e| e.path_bytes().as_ref() == b"etc/sub/x")
                .unwrap();
            e.header().mode().unwrap()
        };
        assert_eq!(mode, 0o4755);
    }

    #[test]
    fn same_content_gives_same_digest() {
        if !is_root() {
            eprintln!("SKIP same_content_gives_same_digest: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        make_upper(&a);
        let b = tmp.path().join("b");
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(&a)
            .arg(&b)
            .status()
            .unwrap();
        assert!(st.success());
        for c in [Compression::Gzip, Compression::Zstd] {
            let opts = LayerOptions {
                compression: c,
                ..Default::default()
            };
            let (da, _) = write_layer(&a, std::io::sink(), &opts).unwrap();
            let (db, _) = write_layer(&b, std::io::sink(), &opts).unwrap();
            assert_eq!(da, db, "{c:?}");
            assert_ne!(da.digest, da.diff_id);
        }
        std::fs::write(b.join("etc/sub/x"), b"y").unwrap();
        let (da, _) = write_layer(&a, std::io::sink(), &LayerOptions::default()).unwrap();
        let (db, _) = write_layer(&b, std::io::sink(), &LayerOptions::default()).unwrap();
        assert_ne!(da.diff_id, db.diff_id);
    }

    #[test]
    fn compressed_stream_decodes_to_the_diff_id() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::fs::write(tmp.path().join("d/f"), vec![7u8; 100_000]).unwrap();
        let (d, blob) = write_layer(tmp.path(), Vec::new(), &LayerOptions::default()).unwrap();
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&blob[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(super::super::hash::sha256_digest(&plain), d.diff_id);
        assert_eq!(super::super::hash::sha256_digest(&blob), d.digest);
        assert_eq!(d.uncompressed_size, plain.len() as u64);
        let (dz, blob) = write_layer(
            tmp.path(),
            Vec::new(),
            &LayerOptions {
                compression: Compression::Zstd,
                sparse: true,
            },
        )
        .unwrap();
        let plain = zstd::decode_all(&blob[..]).unwrap();
        assert_eq!(super::super::hash::sha256_digest(&plain), dz.diff_id);
        assert_eq!(dz.diff_id, d.diff_id);
    }

    #[test]
    fn redirects_and_metacopy_are_refused() {
        if !is_root() {
            eprintln!("SKIP redirects_and_metacopy_are_refused: needs root (trusted xattrs)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("moved")).unwrap();
        setxattr(
            &tmp.path().join("moved"),
            "trusted.overlay.redirect",
            b"/orig",
        );
        let err = write_layer(tmp.path(), std::io::sink(), &LayerOptions::default()).unwrap_err();
        assert!(err.to_string().contains("redirect_dir"), "{err}");
    }

    #[test]
    fn stream_ends_only_when_finished() {
        use std::io::Read;
        let (mut w, mut r) = stream();
        let t = std::thread::spawn(move || {
            let mut v = Vec::new();
            let res = r.read_to_end(&mut v);
            (res.is_ok(), v.len())
        });
        w.write_all(&vec![1u8; (1 << 20) + 5]).unwrap();
        w.finish().unwrap();
        assert_eq!(t.join().unwrap(), (true, (1 << 20) + 5));
        // Dropped without finish: the reader gets an error, not a short stream.
        let (mut w, mut r) = stream();
        let t = std::thread::spawn(move || r.read_to_end(&mut Vec::new()).is_err());
        w.write_all(&[1u8; 100]).unwrap();
        drop(w);
        assert!(t.join().unwrap());
    }

    #[test]
    fn sparse_off_writes_zeros() {
        let tmp = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(tmp.path().join("s")).unwrap();
        f.set_len(1 << 20).unwrap();
        f.write_at(b"z", 4096 * 10).unwrap();
        let opts = LayerOptions {
            compression: Compression::None,
            sparse: false,
        };
        let (_, data) = write_layer(tmp.path(), Vec::new(), &opts).unwrap();
        let es = entries(&data);
        assert_eq!(es[0].0, "s");
        assert_eq!(es[0].2.len(), 1 << 20);
        assert_eq!(es[0].2[4096 * 10], b'z');
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::Store;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};

    /// A generated node: file (content, mode, sparse?), dir (mode), symlink, or a hardlink
    /// to the n-th file created so far.
    #[derive(Debug, Clone)]
    enum N {
        File(Vec<u8>, u32, bool),
        Dir(u32),
        Symlink(String),
        Link(usize),
    }

    fn node() -> impl Strategy<Value = N> {
        prop_oneof![
            (
                proptest::collection::vec(any::<u8>(), 0..3000),
                0o400u32..0o7777,
                any::<bool>()
            )
                .prop_map(|(d, m, s)| N::File(d, m, s)),
            (0o500u32..0o777).prop_map(N::Dir),
            "[a-z./]{1,30}".prop_map(N::Symlink),
            (0usize..8).prop_map(N::Link),
        ]
    }

    /// Paths (parents first) over a small namespace, with long names sometimes.
    fn tree() -> impl Strategy<Value = Vec<(String, N)>> {
        proptest::collection::vec(("(a|b|c|d|[a-z]{100,120})", node()), 1..12).prop_map(|items| {
            let mut out: Vec<(String, N)> = Vec::new();
            let mut dirs = vec![String::new()];
            for (i, (name, n)) in items.into_iter().enumerate() {
                let parent = dirs[i % dirs.len()].clone();
                let path = if parent.is_empty() {
                    name
                } else {
                    format!("{parent}/{name}")
                };
                if out.iter().any(|(p, _)| *p == path) {
                    continue;
                }
                if matches!(n, N::Dir(_)) {
                    dirs.push(path.clone());
                }
                out.push((path, n));
            }
            out
        })
    }

    fn build(root: &Path, t: &[(String, N)]) {
        std::fs::create_dir_all(root).unwrap();
        let mut files: Vec<PathBuf> = Vec::new();
        for (p, n) in t {
            let path = root.join(p);
            match n {
                N::File(d, mode, sparse) => {
                    let f = std::fs::File::create(&path).unwrap();
                    if *sparse {
                        f.set_len(8 << 20).unwrap();
                        f.write_at(d, 4 << 20).unwrap();
                    } else {
                        f.write_all_at(d, 0).unwrap();
                    }
                    files.push(path.clone());
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))
                        .unwrap();
                }
                N::Dir(_) => std::fs::create_dir(&path).unwrap(),
                N::Symlink(t) => std::os::unix::fs::symlink(t, &path).unwrap(),
                N::Link(i) if !files.is_empty() => {
                    std::fs::hard_link(&files[i % files.len()], &path).unwrap()
                }
                N::Link(_) => std::fs::write(&path, b"").unwrap(),
            }
        }
        // Dir modes last, so that creating children was allowed.
        for (p, n) in t.iter().rev() {
            if let N::Dir(mode) = n {
                std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(*mode))
                    .unwrap();
            }
        }
    }

    /// path -> (kind, mode, content or target).
    type Described = BTreeMap<String, (String, u32, Vec<u8>)>;

    /// Every node under `root`, and the hardlink groups.
    fn describe(root: &Path) -> (Described, Vec<Vec<String>>) {
        let mut m = BTreeMap::new();
        let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                let md = p.symlink_metadata().unwrap();
                let (kind, data) = if md.is_dir() {
                    stack.push(p.clone());
                    ("dir", Vec::new())
                } else if md.file_type().is_symlink() {
                    (
                        "symlink",
                        std::fs::read_link(&p)
                            .unwrap()
                            .as_os_str()
                            .as_bytes()
                            .to_vec(),
                    )
                } else {
                    if md.nlink() > 1 {
                        inodes.entry(md.ino()).or_default().push(rel.clone());
                    }
                    ("file", std::fs::read(&p).unwrap())
                };
                let mode = if md.file_type().is_symlink() {
                    0
                } else {
                    md.mode() & 0o7777
                };
                m.insert(rel, (kind.to_string(), mode, data));
            }
        }
        let mut links: Vec<Vec<String>> = inodes
            .into_values()
            .map(|mut v| {
                v.sort();
                v
            })
            .collect();
        links.sort();
        (m, links)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// What the layer writer writes, the store's unpacker gives back.
        #[test]
        fn layer_round_trips_through_the_store_unpacker(t in tree()) {
            let tmp = tempfile::tempdir().unwrap();
            let upper = tmp.path().join("upper");
            build(&upper, &t);
            let store = Store::open(tmp.path().join("store")).unwrap();
            let (d, blob) = write_layer(&upper, Vec::new(), &LayerOptions::default()).unwrap();
            let info = store.unpack_layer(None, None, &blob[..], "proptest layer").unwrap();
            prop_assert_eq!(info.diff_id.as_str(), d.diff_id.as_str());
            let got = describe(&store.layer_dir(&info.chain_id));
            prop_assert_eq!(got, describe(&upper));
        }
    }
}
