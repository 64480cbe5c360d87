//! Flattening layer dirs into one tree tar (`lamina export`).
//!
//! The layers are merged top-down exactly as overlayfs merges them: the
//! topmost entry for a name wins; a whiteout (0/0 char device, whiteout
//! xattr, or `.wh.NAME` marker) hides the name in every layer below; an
//! opaque dir hides the lower dirs of the same path; a non-dir hides lower
//! dirs. The output has no whiteouts and no overlay xattrs, entries in
//! bytewise order, dirs before their children, and tar hardlinks for names
//! that share an inode. Reads only the layer dirs; no mount is needed.

use super::fsentry::{self, EntryWriter, WH_PREFIX};
use super::tar::TarWriter;
use crate::error::{IoContext, Result};
use crate::{Error, Store};
use std::collections::{BTreeSet, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What the merged view has at a path, seen from a list of dirs (top first).
pub(crate) enum Lookup {
    /// Nothing visible.
    Absent,
    /// Visible; index of the layer it comes from and its metadata.
    Found(usize, Metadata),
}

/// What is in one layer's copy of a directory: read once (export, which
/// visits every name anyway) or probed name by name (diff, which must not
/// cost more than the change it reports).
pub(crate) enum Listing {
    /// Every name, read from the directory.
    Names(HashSet<OsString>),
    /// The directory, asked with `lstat` for each name.
    Probe(PathBuf),
}

impl Listing {
    pub(crate) fn read(dir: &Path) -> Result<Listing> {
        let mut names = HashSet::new();
        for e in std::fs::read_dir(dir).at(dir)? {
            let e = e.at(dir)?;
            names.insert(e.file_name());
        }
        Ok(Listing::Names(names))
    }

    /// A listing that looks names up instead of reading the directory.
    pub(crate) fn probe(dir: &Path) -> Listing {
        Listing::Probe(dir.to_path_buf())
    }

    pub(crate) fn contains(&self, name: &OsStr) -> bool {
        match self {
            Listing::Names(names) => names.contains(name),
            Listing::Probe(dir) => dir.join(name).symlink_metadata().is_ok(),
        }
    }

    /// Every name (reads the directory for a probing listing).
    pub(crate) fn names(&self) -> Result<Vec<OsString>> {
        match self {
            Listing::Names(names) => Ok(names.iter().cloned().collect()),
            Listing::Probe(dir) => Ok(match Listing::read(dir)? {
                Listing::Names(n) => n.into_iter().collect(),
                Listing::Probe(_) => Vec::new(),
            }),
        }
    }

    fn has_marker(&self, name: &[u8]) -> bool {
        let mut m = WH_PREFIX.to_vec();
        m.extend_from_slice(name);
        self.contains(OsStr::from_bytes(&m))
    }
}

/// Looks `name` up in `dirs` (top first, already cut at opaque dirs).
pub(crate) fn lookup(dirs: &[PathBuf], listings: &[Listing], name: &OsStr) -> Result<Lookup> {
    for (i, (dir, listing)) in dirs.iter().zip(listings).enumerate() {
        if listing.has_marker(name.as_bytes()) {
            return Ok(Lookup::Absent);
        }
        if !listing.contains(name) {
            continue;
        }
        let path = dir.join(name);
        let meta = path.symlink_metadata().at(&path)?;
        if fsentry::is_whiteout(&path, &meta) {
            return Ok(Lookup::Absent);
        }
        return Ok(Lookup::Found(i, meta));
    }
    Ok(Lookup::Absent)
}

/// The dirs (top first) that merge into the dir `name`, given it was found
/// as a dir in layer `from`: every lower layer's dir of that name, down to and
/// including the first opaque one, stopping at a layer where the name is not a dir.
pub(crate) fn child_dirs(
    dirs: &[PathBuf],
    listings: &[Listing],
    from: usize,
    name: &OsStr,
) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (dir, listing) in dirs.iter().zip(listings).skip(from) {
        if !out.is_empty() && listing.has_marker(name.as_bytes()) {
            break;
        }
        if !listing.contains(name) {
            continue;
        }
        let path = dir.join(name);
        let meta = path.symlink_metadata().at(&path)?;
        if !meta.is_dir() {
            break;
        }
        let opaque = fsentry::dir_is_opaque(&path)?;
        out.push(path);
        if opaque {
            break;
        }
    }
    Ok(out)
}

fn is_marker(name: &[u8]) -> bool {
    name.starts_with(WH_PREFIX)
}

/// The layer dirs, bottom first, that `export` flattens for `target`: a
/// container's (its image's layers, then its upper) if a container has that
/// id or name, else an image's. Fails with [`Error::ImageNotFound`] if
/// neither has it; the CLI and the API both resolve export targets here.
pub fn target_layer_dirs(store: &Store, target: &str) -> Result<Vec<PathBuf>> {
    match store.container(target) {
        Ok(c) => {
            let mut dirs = store.container_layer_dirs(&c)?;
            dirs.push(c.upper_dir());
            Ok(dirs)
        }
        Err(Error::ContainerNotFound(_)) => store.image_layer_dirs(&store.image(target)?),
        Err(e) => Err(e),
    }
}

/// Writes the merged tree of `layers` (bottom-most first, as the store lists
/// an image's layer dirs; a container's upper last) to `out` as a plain tar.
pub fn export_layers<W: Write>(layers: &[PathBuf], out: W) -> Result<W> {
    let out_name = PathBuf::from("<export stream>");
    let top_first: Vec<PathBuf> = layers.iter().rev().cloned().collect();
    let mut tw = TarWriter::new(BufWriter::with_capacity(1 << 20, out));
    let mut ew = EntryWriter::new(true);
    merge(&top_first, &[], &mut tw, &mut ew, &out_name)?;
    let buffered = tw.finish().at(&out_name)?;
    buffered
        .into_inner()
        .map_err(|e| e.into_error())
        .at(out_name)
}

fn merge<W: Write>(
    dirs: &[PathBuf],
    rel: &[u8],
    tw: &mut TarWriter<W>,
    ew: &mut EntryWriter,
    out_name: &Path,
) -> Result<()> {
    let listings = dirs
        .iter()
        .map(|d| Listing::read(d))
        .collect::<Result<Vec<_>>>()?;
    let mut names = BTreeSet::new();
    for l in &listings {
        for n in l.names()? {
            if !is_marker(n.as_bytes()) {
                names.insert(n.as_bytes().to_vec());
            }
        }
    }
    for nb in names {
        let name = OsStr::from_bytes(&nb);
        let Lookup::Found(i, meta) = lookup(dirs, &listings, name)? else {
            continue;
        };
        let path = dirs[i].join(name);
        let arch = fsentry::join_name(rel, &nb);
        let xattrs: Vec<_> = fsentry::read_xattrs(&path)?
            .into_iter()
            .filter(|(k, _)| !fsentry::is_private_xattr(k))
            .collect();
        ew.append(tw, &path, arch.clone(), &meta, xattrs, out_name)?;
        if meta.is_dir() {
            let below = child_dirs(dirs, &listings, i, name)?;
            merge(&below, &arch, tw, ew, out_name)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_with_whiteouts_and_opaque_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let l1 = tmp.path().join("l1");
        let l2 = tmp.path().join("l2");
        for d in ["a/keep", "b/old", "c", "e"] {
            std::fs::create_dir_all(l1.join(d)).unwrap();
        }
        std::fs::write(l1.join("a/f"), b"1").unwrap();
        std::fs::write(l1.join("a/gone"), b"1").unwrap();
        std::fs::write(l1.join("b/old/x"), b"1").unwrap();
        std::fs::write(l1.join("c/y"), b"1").unwrap();
        std::fs::write(l1.join("e/z"), b"1").unwrap();
        std::fs::create_dir_all(l2.join("a")).unwrap();
        std::fs::create_dir_all(l2.join("b")).unwrap();
        std::fs::write(l2.join("a/f"), b"2").unwrap();
        // marker-style whiteout and opaque dir (no root needed)
        std::fs::write(l2.join("a/.wh.gone"), b"").unwrap();
        std::fs::write(l2.join("b/.wh..wh..opq"), b"").unwrap();
        std::fs::write(l2.join("b/new"), b"2").unwrap();
        // a dir replaced by a file, and by a symlink
        std::fs::write(l2.join("c"), b"file").unwrap();
        std::os::unix::fs::symlink("a", l2.join("e")).unwrap();
        let out = export_layers(&[l1, l2], Vec::new()).unwrap();
        let got: Vec<(String, Vec<u8>)> = crate::archive::testutil::entries(&out)
            .into_iter()
            .map(|(name, _, data, _)| (name, data))
            .collect();
        let names: Vec<&str> = got.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(names, ["a/", "a/f", "a/keep/", "b/", "b/new", "c", "e"]);
        assert_eq!(got[1].1, b"2");
        assert_eq!(got[5].1, b"file");
        assert_eq!(got[6].1, b"a");
    }
}

#[cfg(test)]
pub(crate) mod proptests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::io::Read;

    /// One entry of a generated layer.
    #[derive(Debug, Clone)]
    pub(crate) enum E {
        File(u8),
        Dir,
        Opaque,
        Whiteout,
    }

    fn entry(dir_ok: bool) -> impl Strategy<Value = Option<E>> {
        let mut v: Vec<BoxedStrategy<Option<E>>> = vec![
            Just(None).boxed(),
            any::<u8>().prop_map(|b| Some(E::File(b))).boxed(),
            Just(Some(E::Whiteout)).boxed(),
        ];
        if dir_ok {
            v.push(Just(Some(E::Dir)).boxed());
            v.push(Just(Some(E::Opaque)).boxed());
        }
        proptest::strategy::Union::new(v)
    }

    /// A layer: paths (parents first) to entries, over a small namespace.
    pub(crate) fn layer() -> impl Strategy<Value = Vec<(String, E)>> {
        let names = ["a", "b", "c"];
        let kids = ["x", "y"];
        proptest::collection::vec(entry(true), 3)
            .prop_flat_map(move |tops| {
                let kid_sets =
                    proptest::collection::vec(proptest::collection::vec(entry(true), 2), 3);
                let grand =
                    proptest::collection::vec(proptest::collection::vec(entry(false), 2), 3);
                (Just(tops), kid_sets, grand)
            })
            .prop_map(move |(tops, kids_e, grand)| {
                let mut out = Vec::new();
                for (i, t) in tops.into_iter().enumerate() {
                    let Some(t) = t else { continue };
                    let is_dir = matches!(t, E::Dir | E::Opaque);
                    out.push((names[i].to_string(), t));
                    if !is_dir {
                        continue;
                    }
                    for (j, k) in kids_e[i].iter().enumerate() {
                        let Some(k) = k else { continue };
                        let p = format!("{}/{}", names[i], kids[j]);
                        out.push((p.clone(), k.clone()));
                        if matches!(k, E::Dir | E::Opaque)
                            && let Some(g) = &grand[i][j]
                        {
                            out.push((format!("{p}/q"), g.clone()));
                        }
                    }
                }
                out
            })
    }

    /// The OCI applier's semantics, bottom layer first: the reference model.
    pub(crate) fn model(layers: &[Vec<(String, E)>]) -> BTreeMap<String, Option<u8>> {
        let mut fs: BTreeMap<String, Option<u8>> = BTreeMap::new(); // None = dir
        let remove_below = |fs: &mut BTreeMap<String, Option<u8>>, p: &str| {
            let prefix = format!("{p}/");
            fs.retain(|k, _| !k.starts_with(&prefix));
        };
        for l in layers {
            for (p, e) in l {
                match e {
                    E::Whiteout => {
                        fs.remove(p);
                        remove_below(&mut fs, p);
                    }
                    E::File(b) => {
                        remove_below(&mut fs, p);
                        fs.insert(p.clone(), Some(*b));
                    }
                    E::Opaque => {
                        remove_below(&mut fs, p);
                        fs.insert(p.clone(), None);
                    }
                    E::Dir => {
                        if fs.get(p).is_some_and(|v| v.is_some()) {
                            fs.remove(p);
                        }
                        fs.insert(p.clone(), None);
                    }
                }
            }
        }
        fs
    }

    pub(crate) fn write_layer_dir(dir: &Path, l: &[(String, E)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (p, e) in l {
            let path = dir.join(p);
            match e {
                E::File(b) => std::fs::write(&path, [*b]).unwrap(),
                E::Dir => std::fs::create_dir(&path).unwrap(),
                E::Opaque => {
                    std::fs::create_dir(&path).unwrap();
                    std::fs::write(path.join(".wh..wh..opq"), b"").unwrap();
                }
                E::Whiteout => {
                    let (parent, base) = p.rsplit_once('/').unwrap_or(("", p));
                    std::fs::write(dir.join(parent).join(format!(".wh.{base}")), b"").unwrap();
                }
            }
        }
    }

    /// Writes each layer as `ROOT/l{i}`; returns the dirs, bottom first.
    pub(crate) fn write_layer_dirs(root: &Path, layers: &[Vec<(String, E)>]) -> Vec<PathBuf> {
        layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let d = root.join(format!("l{i}"));
                write_layer_dir(&d, l);
                d
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn export_merges_like_the_oci_applier(layers in proptest::collection::vec(layer(), 1..4)) {
            let tmp = tempfile::tempdir().unwrap();
            let dirs = write_layer_dirs(tmp.path(), &layers);
            let out = export_layers(&dirs, Vec::new()).unwrap();
            let mut got = BTreeMap::new();
            let mut a = tar::Archive::new(&out[..]);
            for e in a.entries().unwrap() {
                let mut e = e.unwrap();
                let name = String::from_utf8(e.path_bytes().to_vec()).unwrap();
                let name = name.trim_end_matches('/').to_string();
                let v = if e.header().entry_type().is_dir() {
                    None
                } else {
                    let mut d = Vec::new();
                    e.read_to_end(&mut d).unwrap();
                    Some(d[0])
                };
                got.insert(name, v);
            }
            prop_assert_eq!(got, model(&layers));
        }
    }
}
