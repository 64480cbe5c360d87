//! Reading one directory across the layers and merging it, overlayfs style.
//!
//! Layer numbering: `0` is the upper dir when there is one, then the lower
//! dirs top-most first. A directory is merged from a *chain* of layers (the
//! layers in which it exists as a directory, top first); the chain stops at
//! the first layer where the directory is opaque (`trusted.overlay.opaque=y`,
//! `user.overlay.opaque=y`, or a `.wh..wh..opq` entry), or where a layer holds a
//! whiteout or a non-directory at that name.
//!
//! A whiteout is a character device 0/0 or a `.wh.NAME` entry; it hides NAME
//! in every layer below it and is itself never shown.
//!
//! The merged result, [`DirIndex`], is the name → layer index that makes a
//! lookup O(1) whatever the number of layers: it is built once per directory
//! (lazily, on first use) and then updated in place by the operations that
//! change the upper layer.

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{self as rfs, FileType, Mode, OFlags};
use rustix::io::Errno;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::hash::{Hash, Hasher};
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, OnceLock};

/// Marker entry that makes a directory opaque.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Prefix of whiteout marker files.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The opaque xattr kernel overlayfs uses (and lamina writes).
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The opaque xattr of unprivileged overlayfs mounts (read only).
pub const OPAQUE_XATTR_USER: &str = "user.overlay.opaque";

/// What a name resolves to in the merged view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Shown, from this layer, with this type.
    Present {
        /// Top-most layer that has it.
        layer: usize,
        /// Its file type.
        kind: FileType,
    },
    /// Hidden by a whiteout.
    Whiteout,
}

/// One name of a merged directory.
#[derive(Clone, Debug)]
pub struct Entry {
    /// What the name shows.
    pub state: State,
    /// Whether the layers below the upper one would show this name: removing
    /// it from the upper layer then needs a whiteout, and a directory created
    /// or moved here must be opaque.
    pub lower_positive: bool,
    /// Whether the upper layer holds a whiteout at this name (to be removed
    /// before something is created here).
    pub upper_whiteout: bool,
    /// For a directory: the layers it is merged from, top first.
    pub dir_chain: Vec<usize>,
    /// Merge bookkeeping: the directory chain may still grow downwards.
    open: bool,
    /// Merge bookkeeping: a layer below the upper one has been seen.
    lower_seen: bool,
}

impl Entry {
    /// An entry created in the upper layer.
    pub fn upper(kind: FileType, lower_positive: bool) -> Entry {
        Entry {
            state: State::Present { layer: 0, kind },
            lower_positive,
            upper_whiteout: false,
            dir_chain: if kind == FileType::Directory {
                vec![0]
            } else {
                Vec::new()
            },
            open: false,
            lower_seen: true,
        }
    }

    /// A whiteout written into the upper layer.
    pub fn whiteout() -> Entry {
        Entry {
            state: State::Whiteout,
            lower_positive: true,
            upper_whiteout: true,
            dir_chain: Vec::new(),
            open: false,
            lower_seen: true,
        }
    }

    /// Whether the name is shown.
    pub fn is_present(&self) -> bool {
        matches!(self.state, State::Present { .. })
    }
}

/// A merged directory: the dir in each layer of its chain, and its names.
#[derive(Clone, Debug, Default)]
pub struct DirIndex {
    /// The layers actually merged, top first (the chain cut at the first
    /// opaque layer).
    pub layers: Vec<usize>,
    /// Every name, whiteouts included (they matter for later writes).
    /// Whoever changes it calls [`DirIndex::changed`].
    pub entries: BTreeMap<OsString, Entry>,
    /// The readdir listing, made on first use.
    listing: OnceLock<Arc<Listing>>,
}

/// A directory's shown names as readdir gives them: `(offset, name, type)`
/// in offset order (see [`DirIndex::listing`]).
pub type Listing = Vec<(u64, OsString, FileType)>;

/// Readdir offsets up to this one are `.` (1) and `..` (2).
pub const DOT_DOT_OFFSET: u64 = 2;

/// The readdir offset of `name`: a hash of it, above [`DOT_DOT_OFFSET`] and
/// below 2^63 (the kernel keeps offsets in a signed `loff_t`).
pub fn readdir_offset(name: &OsStr) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    name.as_bytes().hash(&mut h);
    (h.finish() >> 1).max(DOT_DOT_OFFSET + 1)
}

impl DirIndex {
    /// An index of `entries` merged from `layers`.
    pub fn new(layers: Vec<usize>, entries: BTreeMap<OsString, Entry>) -> DirIndex {
        DirIndex {
            layers,
            entries,
            listing: OnceLock::new(),
        }
    }

    /// The shown names in readdir order. A name's offset is a hash of it
    /// ([`readdir_offset`]), as ext4's hash cookies, not a position: a
    /// listing read in several calls, with names added or removed in
    /// between, neither repeats nor skips a name that stayed, and no open
    /// handle has to keep a snapshot (lamina serves readdir without
    /// OPENDIR). Made once per change of the directory.
    pub fn listing(&self) -> Arc<Listing> {
        self.listing
            .get_or_init(|| {
                let mut l: Listing = self
                    .visible()
                    .map(|(n, k)| (readdir_offset(n), n.clone(), k))
                    .collect();
                l.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
                Arc::new(l)
            })
            .clone()
    }

    /// Call after changing `entries`: the listing is made again.
    pub fn changed(&mut self) {
        self.listing = OnceLock::new();
    }

    /// Names shown, in order, with their types.
    pub fn visible(&self) -> impl Iterator<Item = (&OsString, FileType)> {
        self.entries.iter().filter_map(|(n, e)| match e.state {
            State::Present { kind, .. } => Some((n, kind)),
            State::Whiteout => None,
        })
    }

    /// Whether no name is shown.
    pub fn is_empty(&self) -> bool {
        self.visible().next().is_none()
    }
}

/// One raw directory entry of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raw {
    /// A real entry of this type.
    Node(FileType),
    /// A whiteout for the name.
    Whiteout,
}

/// A readable fd (for listing, fsync) of the directory `dir` (any fd of it,
/// O_PATH included).
pub(crate) fn open_listable(dir: impl AsFd) -> Result<OwnedFd, Errno> {
    rfs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Reads the directory `dir` (any fd, O_PATH included) of one layer: its
/// entries with whiteout markers decoded, and whether it is opaque.
pub fn read_layer_dir(dir: &OwnedFd) -> Result<(Vec<(OsString, Raw)>, bool), Errno> {
    let fd = open_listable(dir)?;
    let mut opaque = is_opaque_dir(&fd);
    let mut out = Vec::new();
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 64 * 1024];
    let mut iter = rfs::RawDir::new(&fd, &mut buf);
    while let Some(entry) = iter.next() {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        let bytes = name.as_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        if bytes == OPAQUE_MARKER.as_bytes() {
            opaque = true;
            continue;
        }
        if let Some(hidden) = bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if !hidden.is_empty() {
                out.push((OsStr::from_bytes(hidden).to_owned(), Raw::Whiteout));
            }
            continue;
        }
        let mut kind = entry.file_type();
        if kind == FileType::Unknown || kind == FileType::CharacterDevice {
            let st = rfs::statat(&fd, name, rfs::AtFlags::SYMLINK_NOFOLLOW)?;
            kind = FileType::from_raw_mode(st.st_mode);
            if kind == FileType::CharacterDevice && st.st_rdev == 0 {
                out.push((name.to_owned(), Raw::Whiteout));
                continue;
            }
        }
        out.push((name.to_owned(), Raw::Node(kind)));
    }
    Ok((out, opaque))
}

/// Whether a directory carries an opaque xattr.
pub fn is_opaque_dir(fd: &impl AsFd) -> bool {
    let mut buf = [0u8; 8];
    for name in [OPAQUE_XATTR, OPAQUE_XATTR_USER] {
        if let Ok(n) = rfs::fgetxattr(fd, name, &mut buf[..])
            && n >= 1
            && buf[0] == b'y'
        {
            return true;
        }
    }
    false
}

/// Merges the listings of one directory from its chain, top layer first.
/// `listings` yields `(layer, entries, opaque)`; merging stops after the
/// first opaque layer. Returns the entries and how many layers were used.
pub fn merge(
    listings: impl IntoIterator<Item = (usize, Vec<(OsString, Raw)>, bool)>,
) -> (BTreeMap<OsString, Entry>, usize) {
    let mut map: BTreeMap<OsString, Entry> = BTreeMap::new();
    let mut used = 0;
    for (layer, list, opaque) in listings {
        used += 1;
        let is_upper_layer = layer == 0;
        for (name, raw) in list {
            let whiteout = raw == Raw::Whiteout;
            match map.get_mut(&name) {
                None => {
                    let (state, dir_chain, open) = match raw {
                        Raw::Whiteout => (State::Whiteout, Vec::new(), false),
                        Raw::Node(kind) => (
                            State::Present { layer, kind },
                            if kind == FileType::Directory {
                                vec![layer]
                            } else {
                                Vec::new()
                            },
                            kind == FileType::Directory,
                        ),
                    };
                    map.insert(
                        name,
                        Entry {
                            state,
                            lower_positive: !is_upper_layer && !whiteout,
                            upper_whiteout: is_upper_layer && whiteout,
                            dir_chain,
                            open,
                            lower_seen: !is_upper_layer,
                        },
                    );
                }
                Some(e) => {
                    if !is_upper_layer && !e.lower_seen {
                        e.lower_seen = true;
                        e.lower_positive = !whiteout;
                    }
                    if e.open {
                        if raw == Raw::Node(FileType::Directory) {
                            e.dir_chain.push(layer);
                        } else {
                            e.open = false;
                        }
                    }
                }
            }
        }
        if opaque {
            break;
        }
    }
    (map, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> OsString {
        OsString::from(s)
    }

    #[test]
    fn whiteouts_hide_lower_and_dirs_chain() {
        let upper = vec![
            (n("a"), Raw::Whiteout),
            (n("d"), Raw::Node(FileType::Directory)),
        ];
        let l1 = vec![
            (n("a"), Raw::Node(FileType::RegularFile)),
            (n("b"), Raw::Node(FileType::RegularFile)),
            (n("d"), Raw::Node(FileType::Directory)),
        ];
        let l2 = vec![
            (n("d"), Raw::Node(FileType::RegularFile)),
            (n("b"), Raw::Whiteout),
        ];
        let (m, used) = merge(vec![(0, upper, false), (1, l1, false), (2, l2, false)]);
        assert_eq!(used, 3);
        assert_eq!(m[&n("a")].state, State::Whiteout);
        assert!(m[&n("a")].upper_whiteout && m[&n("a")].lower_positive);
        assert_eq!(
            m[&n("b")].state,
            State::Present {
                layer: 1,
                kind: FileType::RegularFile
            }
        );
        assert_eq!(m[&n("d")].dir_chain, vec![0, 1]);
        assert!(m[&n("d")].lower_positive);
    }

    #[test]
    fn opaque_layer_stops_merge() {
        let l1 = vec![(n("x"), Raw::Node(FileType::RegularFile))];
        let l2 = vec![(n("y"), Raw::Node(FileType::RegularFile))];
        let (m, used) = merge(vec![(1, l1, true), (2, l2, false)]);
        assert_eq!(used, 1);
        assert!(!m.contains_key(&n("y")));
    }

    #[test]
    fn lower_whiteout_means_not_lower_positive() {
        let upper = vec![(n("x"), Raw::Node(FileType::RegularFile))];
        let l1 = vec![(n("x"), Raw::Whiteout)];
        let l2 = vec![(n("x"), Raw::Node(FileType::RegularFile))];
        let (m, _) = merge(vec![(0, upper, false), (1, l1, false), (2, l2, false)]);
        assert!(!m[&n("x")].lower_positive);
    }

    mod rules {
        use super::*;
        use proptest::prelude::*;

        const NAMES: [&str; 4] = ["a", "b", "c", "d"];

        fn raw() -> impl Strategy<Value = Option<Raw>> {
            prop_oneof![
                Just(None),
                Just(Some(Raw::Node(FileType::RegularFile))),
                Just(Some(Raw::Node(FileType::Directory))),
                Just(Some(Raw::Node(FileType::Symlink))),
                Just(Some(Raw::Whiteout)),
            ]
        }

        /// Layers top first: per name an optional entry, and an opaque flag.
        fn layers() -> impl Strategy<Value = Vec<(Vec<Option<Raw>>, bool)>> {
            proptest::collection::vec(
                (proptest::collection::vec(raw(), NAMES.len()), any::<bool>()),
                1..6,
            )
        }

        proptest! {
            /// The merge agrees with overlayfs's rules written the naive way:
            /// the top-most layer (above and including the first opaque one)
            /// that has a name decides it; a whiteout hides it; a directory
            /// continues down through directories only.
            #[test]
            fn merge_matches_the_rules(layers in layers()) {
                let listings: Vec<(usize, Vec<(OsString, Raw)>, bool)> = layers
                    .iter()
                    .enumerate()
                    .map(|(l, (names, opaque))| {
                        let list = names
                            .iter()
                            .zip(NAMES)
                            .filter_map(|(r, n)| r.as_ref().map(|r| (n.into(), match r {
                                Raw::Whiteout => Raw::Whiteout,
                                Raw::Node(k) => Raw::Node(*k),
                            })))
                            .collect();
                        (l, list, *opaque)
                    })
                    .collect();
                let (merged, _) = merge(listings);
                let visible_layers = layers.iter().position(|(_, o)| *o).map_or(layers.len(), |p| p + 1);
                for (i, name) in NAMES.iter().enumerate() {
                    let top = (0..visible_layers).find(|&l| layers[l].0[i].is_some());
                    let got = merged.get(OsStr::new(name));
                    match top {
                        None => prop_assert!(got.is_none()),
                        Some(l) => {
                            let e = got.expect("name present in some layer");
                            match layers[l].0[i].as_ref().unwrap() {
                                Raw::Whiteout => prop_assert_eq!(e.state, State::Whiteout),
                                Raw::Node(k) => {
                                    prop_assert_eq!(e.state, State::Present { layer: l, kind: *k });
                                    if *k == FileType::Directory {
                                        let mut chain = vec![l];
                                        for below in l + 1..visible_layers {
                                            match &layers[below].0[i] {
                                                None => continue,
                                                Some(Raw::Node(FileType::Directory)) => chain.push(below),
                                                Some(_) => break,
                                            }
                                        }
                                        prop_assert_eq!(&e.dir_chain, &chain);
                                    }
                                }
                            }
                            // Layer 0 is the upper one: does anything below show the name?
                            let first_lower = (1..visible_layers).find(|&l| layers[l].0[i].is_some());
                            let expect = first_lower.is_some_and(|l| layers[l].0[i] != Some(Raw::Whiteout));
                            prop_assert_eq!(e.lower_positive, expect);
                        }
                    }
                }
            }
        }
    }
}
