//! A small, deterministic tar writer.
//!
//! Every header lamina writes goes through here so that the same input gives
//! byte-identical archives: ustar headers with empty user/group names, no
//! atime/ctime, PAX extended headers only when a field does not fit
//! (long names and link targets, big ids, sub-second mtimes, xattrs) and
//! PAX records in a fixed order. Sparse files use the PAX sparse format 1.0
//! (`GNU.sparse.major=1`), which Go's archive/tar (docker, containerd, umoci)
//! reads as a plain regular file.

use std::io::{self, Write};

/// Size of a tar block.
pub const BLOCK: u64 = 512;

/// What kind of entry a header describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file of this many bytes; the data follows.
    File {
        /// Data length.
        size: u64,
    },
    /// A regular file stored as data segments; holes read as zeros.
    Sparse {
        /// Logical size of the file.
        real_size: u64,
        /// `(offset, length)` of every data segment, ascending.
        segments: Vec<(u64, u64)>,
    },
    /// A directory.
    Dir,
    /// A symbolic link to this target.
    Symlink(Vec<u8>),
    /// A hard link to this earlier entry name.
    Hardlink(Vec<u8>),
    /// A character device.
    Char(u32, u32),
    /// A block device.
    Block(u32, u32),
    /// A named pipe.
    Fifo,
}

/// One entry's header, already normalised.
#[derive(Debug, Clone)]
pub struct Header {
    /// Path inside the archive, relative, without a trailing slash.
    pub name: Vec<u8>,
    /// The entry kind.
    pub kind: Kind,
    /// Permission bits (incl. setuid/setgid/sticky).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u64,
    /// Numeric group.
    pub gid: u64,
    /// Modification time: seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Header {
    /// A header with neutral metadata (root-owned, mode 0644, mtime 0).
    pub fn simple(name: impl Into<Vec<u8>>, kind: Kind) -> Header {
        Header {
            name: name.into(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        }
    }

    /// How many data bytes follow the header in the archive.
    pub fn data_len(&self) -> u64 {
        match &self.kind {
            Kind::File { size } => *size,
            Kind::Sparse { segments, .. } => {
                sparse_map(segments).len() as u64 + segments.iter().map(|s| s.1).sum::<u64>()
            }
            _ => 0,
        }
    }
}

/// Writes tar entries to `W`, tracking the data still owed for the current entry.
pub struct TarWriter<W: Write> {
    out: W,
    /// Data bytes the current entry still expects.
    owed: u64,
    /// Padding to write once the current entry's data is complete.
    pad: u64,
}

impl<W: Write> TarWriter<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        TarWriter {
            out,
            owed: 0,
            pad: 0,
        }
    }

    /// The underlying writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Writes the header(s) of one entry. For files, exactly
    /// [`Header::data_len`] bytes must then be passed to [`TarWriter::write_data`]
    /// (for sparse files: the segments' bytes in order; the map is written here).
    pub fn append(&mut self, h: &Header) -> io::Result<()> {
        if self.owed != 0 {
            return Err(io::Error::other(
                "tar entry written before the previous one's data",
            ));
        }
        let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut name = h.name.clone();
        if h.kind == Kind::Dir {
            name.push(b'/');
        }
        let mut header_name = name.clone();
        let mut size_field = h.data_len();
        if let Kind::Sparse { real_size, .. } = &h.kind {
            pax.push(("GNU.sparse.major", b"1".to_vec()));
            pax.push(("GNU.sparse.minor", b"0".to_vec()));
            pax.push(("GNU.sparse.name", name.clone()));
            pax.push(("GNU.sparse.realsize", real_size.to_string().into_bytes()));
            header_name = sparse_header_name(&name);
        }
        if header_name.len() > 100 {
            pax.push(("path", header_name.clone()));
            header_name = truncate_name(&header_name, 100);
        }
        let link: &[u8] = match &h.kind {
            Kind::Symlink(t) | Kind::Hardlink(t) => t,
            _ => &[],
        };
        let mut link_field = link.to_vec();
        if link.len() > 100 {
            pax.push(("linkpath", link.to_vec()));
            link_field = truncate_name(link, 100);
        }
        const MAX_OCTAL_7: u64 = 0o7777777;
        const MAX_OCTAL_11: u64 = 0o77777777777;
        let (uid, gid) = (h.uid, h.gid);
        if uid > MAX_OCTAL_7 {
            pax.push(("uid", uid.to_string().into_bytes()));
        }
        if gid > MAX_OCTAL_7 {
            pax.push(("gid", gid.to_string().into_bytes()));
        }
        if size_field > MAX_OCTAL_11 {
            pax.push(("size", size_field.to_string().into_bytes()));
            size_field = 0;
        }
        let mtime_fits = h.mtime >= 0 && (h.mtime as u64) <= MAX_OCTAL_11;
        if h.mtime_nsec != 0 || !mtime_fits {
            pax.push(("mtime", format_mtime(h.mtime, h.mtime_nsec).into_bytes()));
        }
        let mut records = Vec::new();
        // Records in a fixed order: the standard keys as pushed, then xattrs by name.
        for (k, v) in &pax {
            push_record(&mut records, k.as_bytes(), v);
        }
        for (k, v) in &h.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            push_record(&mut records, &key, v);
        }
        if !records.is_empty() {
            let mut ph = ustar(
                &pax_header_name(&name),
                b'x',
                0o644,
                0,
                0,
                0,
                records.len() as u64,
                b"",
                0,
                0,
            );
            checksum(&mut ph);
            self.out.write_all(&ph)?;
            self.out.write_all(&records)?;
            self.out.write_all(&zeros(padding(records.len() as u64)))?;
        }
        let (typeflag, major, minor) = match &h.kind {
            Kind::File { .. } | Kind::Sparse { .. } => (b'0', 0, 0),
            Kind::Hardlink(_) => (b'1', 0, 0),
            Kind::Symlink(_) => (b'2', 0, 0),
            Kind::Char(ma, mi) => (b'3', *ma, *mi),
            Kind::Block(ma, mi) => (b'4', *ma, *mi),
            Kind::Dir => (b'5', 0, 0),
            Kind::Fifo => (b'6', 0, 0),
        };
        let mtime = if mtime_fits { h.mtime as u64 } else { 0 };
        let mut block = ustar(
            &header_name,
            typeflag,
            h.mode & 0o7777,
            uid.min(MAX_OCTAL_7),
            gid.min(MAX_OCTAL_7),
            mtime,
            size_field,
            &link_field,
            major,
            minor,
        );
        checksum(&mut block);
        self.out.write_all(&block)?;
        let data_len = h.data_len();
        self.owed = data_len;
        self.pad = padding(data_len);
        if let Kind::Sparse { segments, .. } = &h.kind {
            let map = sparse_map(segments);
            self.write_data(&map)?;
        }
        self.finish_if_done()
    }

    /// Writes data of the current entry.
    pub fn write_data(&mut self, buf: &[u8]) -> io::Result<()> {
        if buf.len() as u64 > self.owed {
            return Err(io::Error::other(
                "more tar entry data than its header announced",
            ));
        }
        self.out.write_all(buf)?;
        self.owed -= buf.len() as u64;
        self.finish_if_done()
    }

    /// Copies exactly `len` data bytes of the current entry from `reader`
    /// (file-to-file copies use `copy_file_range` when `W` is a `File`).
    pub fn copy_data<R: io::Read>(&mut self, reader: R, len: u64) -> io::Result<()> {
        if len > self.owed {
            return Err(io::Error::other(
                "more tar entry data than its header announced",
            ));
        }
        let n = io::copy(&mut reader.take(len), &mut self.out)?;
        if n != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("expected {len} bytes, got {n}"),
            ));
        }
        self.owed -= len;
        self.finish_if_done()
    }

    /// Bytes the current entry still expects.
    pub fn owed(&self) -> u64 {
        self.owed
    }

    fn finish_if_done(&mut self) -> io::Result<()> {
        if self.owed == 0 && self.pad != 0 {
            self.out.write_all(&zeros(self.pad))?;
            self.pad = 0;
        }
        Ok(())
    }

    /// Writes the end-of-archive marker and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        if self.owed != 0 {
            return Err(io::Error::other(
                "tar archive finished in the middle of an entry",
            ));
        }
        self.out.write_all(&[0u8; 1024])?;
        Ok(self.out)
    }
}

/// Bytes of zero padding after `len` data bytes.
pub fn padding(len: u64) -> u64 {
    (BLOCK - len % BLOCK) % BLOCK
}

fn zeros(n: u64) -> Vec<u8> {
    vec![0u8; n as usize]
}

/// The PAX sparse 1.0 map: count, then offset/length pairs, newline separated,
/// padded to a block.
fn sparse_map(segments: &[(u64, u64)]) -> Vec<u8> {
    let mut map = format!("{}\n", segments.len());
    for (off, len) in segments {
        map.push_str(&format!("{off}\n{len}\n"));
    }
    let mut map = map.into_bytes();
    let pad = padding(map.len() as u64);
    map.resize(map.len() + pad as usize, 0);
    map
}

fn split_name(name: &[u8]) -> (&[u8], &[u8]) {
    match name.iter().rposition(|&b| b == b'/') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => (&[], name),
    }
}

fn sparse_header_name(name: &[u8]) -> Vec<u8> {
    let (dir, base) = split_name(name);
    let mut out = Vec::new();
    if !dir.is_empty() {
        out.extend_from_slice(dir);
        out.push(b'/');
    }
    out.extend_from_slice(b"GNUSparseFile.0/");
    out.extend_from_slice(base);
    out
}

fn pax_header_name(name: &[u8]) -> Vec<u8> {
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    let (dir, base) = split_name(trimmed);
    let mut out = Vec::new();
    if !dir.is_empty() {
        out.extend_from_slice(dir);
        out.push(b'/');
    }
    out.extend_from_slice(b"PaxHeaders.0/");
    out.extend_from_slice(base);
    truncate_name(&out, 100)
}

fn truncate_name(name: &[u8], max: usize) -> Vec<u8> {
    name[..name.len().min(max)].to_vec()
}

fn format_mtime(sec: i64, nsec: u32) -> String {
    if nsec == 0 {
        return sec.to_string();
    }
    // A negative time with a fraction: -1.5 means 1.5 s before the epoch.
    let (sign, s, n) = if sec < 0 {
        ("-", (-(sec + 1)) as u64, 1_000_000_000 - nsec)
    } else {
        ("", sec as u64, nsec)
    };
    let frac = format!("{n:09}");
    format!("{sign}{s}.{}", frac.trim_end_matches('0'))
}

fn push_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    // "LEN key=value\n" where LEN counts itself.
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while len != base + len.to_string().len() {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[allow(clippy::too_many_arguments)]
fn ustar(
    name: &[u8],
    typeflag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    size: u64,
    link: &[u8],
    major: u32,
    minor: u32,
) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..name.len()].copy_from_slice(name);
    octal(&mut b[100..108], mode as u64);
    octal(&mut b[108..116], uid);
    octal(&mut b[116..124], gid);
    octal(&mut b[124..136], size);
    octal(&mut b[136..148], mtime);
    b[156] = typeflag;
    b[157..157 + link.len()].copy_from_slice(link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    if typeflag == b'3' || typeflag == b'4' {
        octal(&mut b[329..337], major as u64);
        octal(&mut b[337..345], minor as u64);
    }
    b
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

fn checksum(b: &mut [u8; 512]) {
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&x| x as u32).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn pax_record_length_counts_itself() {
        let mut out = Vec::new();
        push_record(&mut out, b"path", &[b'a'; 5]);
        assert_eq!(out, b"14 path=aaaaa\n");
        let mut out = Vec::new();
        push_record(&mut out, b"k", &[b'v'; 93]); // 1+93+3 = 97 -> "99 " would make 100
        let s = String::from_utf8(out.clone()).unwrap();
        let len: usize = s.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(len, out.len());
    }

    #[test]
    fn long_names_links_and_xattrs_read_back_with_tar_crate() {
        let long = "d/".repeat(80) + "file";
        let mut w = TarWriter::new(Vec::new());
        let mut h = Header::simple(long.clone(), Kind::File { size: 3 });
        h.xattrs = vec![(b"user.k".to_vec(), b"v\0bin".to_vec())];
        h.mtime = 1_700_000_000;
        h.mtime_nsec = 123_000_000;
        w.append(&h).unwrap();
        w.write_data(b"abc").unwrap();
        w.append(&Header::simple(
            "l",
            Kind::Symlink(long.clone().into_bytes()),
        ))
        .unwrap();
        w.append(&Header::simple(
            "h",
            Kind::Hardlink(long.clone().into_bytes()),
        ))
        .unwrap();
        w.append(&Header::simple("dev", Kind::Char(1, 3))).unwrap();
        w.append(&Header::simple("dir", Kind::Dir)).unwrap();
        let data = w.finish().unwrap();
        let mut a = tar::Archive::new(&data[..]);
        let mut it = a.entries().unwrap();
        let mut e = it.next().unwrap().unwrap();
        assert_eq!(e.path_bytes().as_ref(), long.as_bytes());
        let pax: Vec<_> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|x| x.unwrap())
            .map(|x| (x.key().unwrap().to_string(), x.value_bytes().to_vec()))
            .collect();
        assert!(
            pax.iter()
                .any(|(k, v)| k == "SCHILY.xattr.user.k" && v == b"v\0bin")
        );
        assert!(
            pax.iter()
                .any(|(k, v)| k == "mtime" && v == b"1700000000.123")
        );
        let mut d = String::new();
        e.read_to_string(&mut d).unwrap();
        assert_eq!(d, "abc");
        let e = it.next().unwrap().unwrap();
        assert_eq!(e.link_name_bytes().unwrap().as_ref(), long.as_bytes());
        let e = it.next().unwrap().unwrap();
        assert_eq!(e.header().entry_type(), tar::EntryType::Link);
        let e = it.next().unwrap().unwrap();
        assert_eq!(e.header().device_major().unwrap(), Some(1));
        assert_eq!(e.header().device_minor().unwrap(), Some(3));
        let e = it.next().unwrap().unwrap();
        assert_eq!(e.path_bytes().as_ref(), b"dir/");
    }

    #[test]
    fn sparse_entry_has_map_and_segments() {
        let mut w = TarWriter::new(Vec::new());
        let segs = vec![(4096, 5), (1 << 20, 2)];
        w.append(&Header::simple(
            "a/s",
            Kind::Sparse {
                real_size: 2 << 20,
                segments: segs,
            },
        ))
        .unwrap();
        w.write_data(b"hello").unwrap();
        w.write_data(b"xy").unwrap();
        let data = w.finish().unwrap();
        let entries = crate::archive::testutil::entries(&data);
        // The tar crate does not decode PAX sparse: it shows the raw name and map.
        assert_eq!(entries[0].0, "a/GNUSparseFile.0/s");
        assert!(entries[0].2.starts_with(b"2\n4096\n5\n1048576\n2\n\0"));
        assert_eq!(&entries[0].2[512..], b"helloxy");
    }

    #[test]
    fn negative_and_fractional_mtime_format() {
        assert_eq!(format_mtime(5, 0), "5");
        assert_eq!(format_mtime(5, 500_000_000), "5.5");
        assert_eq!(format_mtime(-2, 500_000_000), "-1.5");
    }
}
