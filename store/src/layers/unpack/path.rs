//! Entry names as they appear in a layer tar, turned into safe relative paths,
//! and the OCI whiteout naming convention.
//!
//! Invariants of a normalised path: no leading `/`, no empty, `.` or `..`
//! component, no NUL byte; `""` is the layer root. A `..` that would climb
//! above the root is rejected, never clamped: a layer that tries it is
//! hostile or broken. A leading `/` is stripped, as the OCI image spec says
//! (entries are relative to the layer root whatever their spelling).

/// Prefix that turns a name into a whiteout of the name that follows it.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the marker that makes its directory opaque.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Prefix of AUFS-internal metadata names (`.wh..wh.plnk`, ...), ignored.
const META_PREFIX: &[u8] = b".wh..wh.";
/// Deepest path accepted; far beyond any real image, it bounds recursion.
pub const MAX_DEPTH: usize = 1024;

/// Why an entry name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    /// A `..` component climbs above the layer root.
    EscapesRoot,
    /// The name contains a NUL byte.
    Nul,
    /// More than [`MAX_DEPTH`] components.
    TooDeep,
    /// `.wh.` followed by nothing, `.` or `..`.
    BadWhiteout,
}

impl std::fmt::Display for PathProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathProblem::EscapesRoot => "the path climbs above the layer root with `..`",
            PathProblem::Nul => "the path contains a NUL byte",
            PathProblem::TooDeep => "the path is deeper than 1024 components",
            PathProblem::BadWhiteout => "the whiteout names no file (`.wh.`, `.wh..` or `.wh...`)",
        })
    }
}

/// Normalises a tar entry name (or hardlink target) into a relative path.
pub fn normalize(raw: &[u8]) -> Result<Vec<u8>, PathProblem> {
    if raw.contains(&0) {
        return Err(PathProblem::Nul);
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err(PathProblem::EscapesRoot);
                }
            }
            c => parts.push(c),
        }
    }
    if parts.len() > MAX_DEPTH {
        return Err(PathProblem::TooDeep);
    }
    Ok(parts.join(&b'/'))
}

/// Splits a normalised path into its parent and its last component.
/// The root (`""`) has the empty name.
pub fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

/// What a path component means under the OCI whiteout convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind<'a> {
    /// An ordinary name.
    Normal,
    /// `.wh.NAME`: NAME is deleted from the lower layers.
    Whiteout(&'a [u8]),
    /// `.wh..wh..opq`: the directory hides everything below it.
    Opaque,
    /// Other `.wh..wh.*` names: AUFS bookkeeping, skipped.
    Meta,
}

/// Classifies the last component of an entry path.
pub fn classify(name: &[u8]) -> Result<NameKind<'_>, PathProblem> {
    if name == OPAQUE_MARKER {
        return Ok(NameKind::Opaque);
    }
    if name.starts_with(META_PREFIX) {
        return Ok(NameKind::Meta);
    }
    match name.strip_prefix(WHITEOUT_PREFIX) {
        Some(b"" | b"." | b"..") => Err(PathProblem::BadWhiteout),
        Some(target) => Ok(NameKind::Whiteout(target)),
        None => Ok(NameKind::Normal),
    }
}

/// The `.wh.NAME` spelling of a whiteout for `name`.
pub fn whiteout_name(name: &[u8]) -> Vec<u8> {
    [WHITEOUT_PREFIX, name].concat()
}

/// True if `path` is `dir` or lies below it.
pub fn is_within(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty()
        || path == dir
        || (path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(normalize(b"./a//b/./c/").unwrap(), b"a/b/c");
        assert_eq!(normalize(b"/etc/passwd").unwrap(), b"etc/passwd");
        assert_eq!(normalize(b"a/../b").unwrap(), b"b");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert_eq!(normalize(b"../etc"), Err(PathProblem::EscapesRoot));
        assert_eq!(normalize(b"a/../../etc"), Err(PathProblem::EscapesRoot));
        assert_eq!(normalize(b"/../etc"), Err(PathProblem::EscapesRoot));
        assert_eq!(normalize(b"a\0b"), Err(PathProblem::Nul));
        assert_eq!(split_parent(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_parent(b"c"), (&b""[..], &b"c"[..]));
        assert_eq!(classify(b".wh..wh..opq"), Ok(NameKind::Opaque));
        assert_eq!(classify(b".wh..wh.plnk"), Ok(NameKind::Meta));
        assert_eq!(classify(b".wh.foo"), Ok(NameKind::Whiteout(b"foo")));
        assert_eq!(classify(b".wh..foo"), Ok(NameKind::Whiteout(b".foo")));
        assert_eq!(classify(b".wh."), Err(PathProblem::BadWhiteout));
        assert_eq!(classify(b".wh.."), Err(PathProblem::BadWhiteout));
        assert_eq!(classify(b".wh..."), Err(PathProblem::BadWhiteout));
        assert_eq!(classify(b"foo.wh.x"), Ok(NameKind::Normal));
        assert!(is_within(b"a/b", b"a") && !is_within(b"ab", b"a") && is_within(b"x", b""));
    }

    fn component() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"".to_vec()),
            Just(b".".to_vec()),
            Just(b"..".to_vec()),
            proptest::collection::vec(
                any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
                1..8
            ),
        ]
    }

    /// Reference model: a stack machine over components, written independently.
    fn model(comps: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
        let mut depth: Vec<Vec<u8>> = vec![];
        for c in comps {
            if c.is_empty() || c == b"." {
                continue;
            }
            if c == b".." {
                depth.pop()?;
            } else {
                depth.push(c.clone());
            }
        }
        Some(depth)
    }

    proptest! {
        #[test]
        fn normalize_matches_model(comps in proptest::collection::vec(component(), 0..12), lead in any::<bool>()) {
            let mut raw = if lead { b"/".to_vec() } else { vec![] };
            raw.extend(comps.join(&b'/'));
            match (normalize(&raw), model(&comps)) {
                (Ok(p), Some(m)) => {
                    prop_assert_eq!(&p, &m.join(&b'/'));
                    prop_assert!(!p.starts_with(b"/"));
                    for c in p.split(|&b| b == b'/') {
                        prop_assert!(p.is_empty() || (c != b"" && c != b"." && c != b".."));
                    }
                    // Idempotent.
                    prop_assert_eq!(normalize(&p).unwrap(), p);
                }
                (Err(PathProblem::EscapesRoot), None) => {}
                (got, want) => prop_assert!(false, "normalize {:?} = {:?}, model {:?}", raw, got, want),
            }
        }

        #[test]
        fn whiteout_roundtrip(name in proptest::collection::vec(any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0), 1..16)) {
            let wh = whiteout_name(&name);
            match classify(&wh) {
                Ok(NameKind::Whiteout(n)) => prop_assert_eq!(n, &name[..]),
                Ok(NameKind::Opaque) => prop_assert_eq!(&wh[..], OPAQUE_MARKER),
                Ok(NameKind::Meta) => prop_assert!(name.starts_with(b".wh.")),
                Err(PathProblem::BadWhiteout) => prop_assert!(name == b"." || name == b".."),
                other => prop_assert!(false, "{:?}", other),
            }
            if !name.starts_with(WHITEOUT_PREFIX) {
                prop_assert_eq!(classify(&name), Ok(NameKind::Normal));
            }
        }

        #[test]
        fn split_parent_rejoins(path in proptest::collection::vec(component(), 1..8)) {
            let p = normalize(&path.join(&b'/'));
            if let Ok(p) = p {
                let (parent, name) = split_parent(&p);
                prop_assert!(!name.contains(&b'/'));
                let joined = if parent.is_empty() { name.to_vec() } else { [parent, b"/", name].concat() };
                prop_assert_eq!(joined, p.clone());
                prop_assert!(is_within(&p, parent));
            }
        }
    }
}
