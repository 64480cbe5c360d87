//! A container's changes as `docker diff` prints them, from its upper dir.
//!
//! Walks the upper dir only; for each entry it looks the same path up in the
//! image's layer dirs (by name, never by walking them), so the cost is
//! proportional to the size of the change, not of the image.
//! - `A` a path that the image does not have;
//! - `C` a path the image has, changed (content, metadata or type; a dir is
//!   `C` when anything below it changed, as it was copied up; a name made
//!   again inside an opaque dir is `C` too);
//! - `D` a path the image has and the container removed (a whiteout), and
//!   every path of the image hidden by an opaque dir.

use super::export::{Listing, Lookup, child_dirs, lookup};
use super::fsentry::{self, WH_OPAQUE, WH_PREFIX};
use crate::error::{IoContext, Result};
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The kind of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    /// Added.
    Added,
    /// Changed.
    Changed,
    /// Deleted.
    Deleted,
}

/// One changed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What happened.
    pub kind: ChangeKind,
    /// Absolute path in the container, e.g. `/etc/hosts`.
    pub path: PathBuf,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = match self.kind {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        };
        write!(f, "{k} {}", self.path.display())
    }
}

/// The changes of `upper` over `lowers` (bottom-most first, as the store
/// lists an image's layer dirs), in path order.
pub fn diff(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>> {
    let top_first: Vec<PathBuf> = lowers.iter().rev().cloned().collect();
    let mut out = Vec::new();
    walk(upper, Path::new("/"), &top_first, &mut out)?;
    out.sort_by(|a, b| {
        a.path
            .as_os_str()
            .as_bytes()
            .cmp(b.path.as_os_str().as_bytes())
    });
    Ok(out)
}

fn walk(dir: &Path, at: &Path, lowers: &[PathBuf], out: &mut Vec<Change>) -> Result<()> {
    // Lookups by name only: the image's dirs are never listed (except below an opaque dir).
    let listings: Vec<Listing> = lowers.iter().map(|d| Listing::probe(d)).collect();
    let names = fsentry::sorted_names(dir)?;
    let mut deleted = Vec::new();
    for name in &names {
        let nb = name.as_bytes();
        if nb == WH_OPAQUE {
            // The dir itself is reported; its opacity is read by dir_is_opaque.
            continue;
        }
        let path = dir.join(name);
        let meta = path.symlink_metadata().at(&path)?;
        let target = if let Some(real) = nb.strip_prefix(WH_PREFIX) {
            Some(OsStr::from_bytes(real))
        } else if fsentry::is_whiteout(&path, &meta) {
            Some(name.as_os_str())
        } else {
            None
        };
        if let Some(real) = target {
            deleted.push(real.to_os_string());
            continue;
        }
        let found = lookup(lowers, &listings, name)?;
        let kind = match found {
            Lookup::Found(..) => ChangeKind::Changed,
            Lookup::Absent => ChangeKind::Added,
        };
        out.push(Change {
            kind,
            path: at.join(name),
        });
        if meta.is_dir() {
            // Children are classified against what the image had at this
            // path; an opaque dir additionally hides the image's children.
            let below = match found {
                Lookup::Found(i, ref lm) if lm.is_dir() => {
                    let below = child_dirs(lowers, &listings, i, name)?;
                    if fsentry::dir_is_opaque(&path)? {
                        hidden_children(&below, &path, &at.join(name), out)?;
                    }
                    below
                }
                _ => Vec::new(),
            };
            walk(&path, &at.join(name), &below, out)?;
        }
    }
    for real in deleted {
        // A whiteout of something the image does not have hides nothing.
        if let Lookup::Absent = lookup(lowers, &listings, &real)? {
            continue;
        }
        out.push(Change {
            kind: ChangeKind::Deleted,
            path: at.join(&real),
        });
    }
    Ok(())
}

/// Reports `D` for each entry the image had directly in a dir the container
/// made opaque (at `upper_dir`), unless the container made that name again.
/// `dirs` are the image's dirs that merge into that dir (top first).
fn hidden_children(
    dirs: &[PathBuf],
    upper_dir: &Path,
    at: &Path,
    out: &mut Vec<Change>,
) -> Result<()> {
    let child_listings = dirs
        .iter()
        .map(|d| Listing::read(d))
        .collect::<Result<Vec<_>>>()?;
    let mut names = Vec::new();
    for l in &child_listings {
        names.extend(
            l.names()?
                .into_iter()
                .filter(|n| !n.as_bytes().starts_with(WH_PREFIX)),
        );
    }
    names.sort();
    names.dedup();
    for n in names {
        if upper_dir.join(&n).symlink_metadata().is_ok() {
            continue;
        }
        if let Lookup::Found(..) = lookup(dirs, &child_listings, &n)? {
            out.push(Change {
                kind: ChangeKind::Deleted,
                path: at.join(&n),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_docker_style_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let l1 = tmp.path().join("l1");
        let up = tmp.path().join("up");
        for d in ["etc", "var/lib", "opt/o"] {
            std::fs::create_dir_all(l1.join(d)).unwrap();
        }
        std::fs::write(l1.join("etc/hosts"), b"h").unwrap();
        std::fs::write(l1.join("etc/passwd"), b"p").unwrap();
        std::fs::write(l1.join("var/lib/x"), b"x").unwrap();
        std::fs::write(l1.join("opt/o/1"), b"1").unwrap();
        std::fs::write(l1.join("opt/o/3"), b"3").unwrap();
        for d in ["etc", "newdir/sub", "opt/o"] {
            std::fs::create_dir_all(up.join(d)).unwrap();
        }
        std::fs::write(up.join("etc/hosts"), b"H").unwrap();
        std::fs::write(up.join("etc/.wh.passwd"), b"").unwrap();
        std::fs::write(up.join("newdir/sub/f"), b"").unwrap();
        std::fs::write(up.join("opt/o/.wh..wh..opq"), b"").unwrap();
        std::fs::write(up.join("opt/o/2"), b"2").unwrap();
        std::fs::write(up.join("opt/o/3"), b"made again").unwrap();
        std::fs::write(up.join("var"), b"dir replaced by a file").unwrap();
        let got: Vec<String> = diff(&up, &[l1])
            .unwrap()
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            got,
            [
                "C /etc",
                "C /etc/hosts",
                "D /etc/passwd",
                "A /newdir",
                "A /newdir/sub",
                "A /newdir/sub/f",
                "C /opt",
                "C /opt/o",
                "D /opt/o/1",
                "A /opt/o/2",
                "C /opt/o/3",
                "C /var",
            ]
        );
    }
}

#[cfg(test)]
mod proptests {
    use super::super::export::proptests::{layer, model, write_layer_dir, write_layer_dirs};
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every line is true of the image and container views, every added
        /// path has a line, and every removed path has a line for it or an ancestor.
        #[test]
        fn diff_agrees_with_the_views(
            lowers in proptest::collection::vec(layer(), 1..3),
            upper in layer(),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let dirs = write_layer_dirs(tmp.path(), &lowers);
            let up = tmp.path().join("upper");
            write_layer_dir(&up, &upper);
            let before = model(&lowers);
            let mut all = lowers.clone();
            all.push(upper.clone());
            let after = model(&all);
            let changes = diff(&up, &dirs).unwrap();
            let mut reported = std::collections::BTreeMap::new();
            for c in &changes {
                let p = c.path.to_str().unwrap().trim_start_matches('/').to_string();
                let ok = match c.kind {
                    ChangeKind::Added => !before.contains_key(&p) && after.contains_key(&p),
                    ChangeKind::Deleted => before.contains_key(&p) && !after.contains_key(&p),
                    ChangeKind::Changed => before.contains_key(&p) && after.contains_key(&p),
                };
                prop_assert!(ok, "{c} is wrong: before {:?} after {:?}", before.get(&p), after.get(&p));
                reported.insert(p, c.kind);
            }
            for p in after.keys().filter(|p| !before.contains_key(*p)) {
                prop_assert_eq!(reported.get(p), Some(&ChangeKind::Added), "{} added but not reported", p);
            }
            for p in before.keys().filter(|p| !after.contains_key(*p)) {
                let mut q = p.as_str();
                let covered = loop {
                    if reported.contains_key(q) {
                        break true;
                    }
                    match q.rsplit_once('/') {
                        Some((parent, _)) => q = parent,
                        None => break false,
                    }
                };
                prop_assert!(covered, "{} removed but neither it nor an ancestor is reported", p);
            }
        }
    }
}
