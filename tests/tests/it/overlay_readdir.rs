//! readdir through the mount: the kernel opens directories without asking
//! the server (OPENDIR is answered ENOSYS), and offsets are hashes of names,
//! so a listing read in many small calls while the directory changes under
//! it neither repeats a name nor skips one that stayed.

use anyhow::{Result, ensure};
use lamina_tests::overlay::{LaminaMount, fuse_available};
use std::collections::HashSet;
use std::ffi::OsString;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;

#[test]
fn a_listing_read_while_the_dir_changes_repeats_and_skips_nothing() -> Result<()> {
    if !fuse_available() {
        eprintln!("SKIP overlay_readdir: needs root and /dev/fuse");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let lower = tmp.path().join("lower");
    std::fs::create_dir_all(lower.join("d"))?;
    // Names in two layers: half in the lower dir, half created in the upper.
    const N: usize = 1200;
    for i in (0..N).step_by(2) {
        std::fs::write(lower.join(format!("d/n{i:05}")), "")?;
    }
    let (upper, work) = (tmp.path().join("upper"), tmp.path().join("work"));
    let m = LaminaMount::mount(&[lower], Some((&upper, &work)), &tmp.path().join("mnt"))?;
    let d = m.dir.join("d");
    for i in (1..N).step_by(2) {
        std::fs::write(d.join(format!("n{i:05}")), "")?;
    }

    let dir = std::fs::File::open(&d)?;
    // A small buffer: many getdents64 calls, and the listing is read by the
    // server in several READDIRPLUS requests.
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 512];
    let mut iter = rustix::fs::RawDir::new(&dir, &mut buf);
    let mut seen: Vec<OsString> = Vec::new();
    let mut changed = false;
    let (mut removed, mut added) = (HashSet::new(), HashSet::new());
    while let Some(entry) = iter.next() {
        let name = std::ffi::OsStr::from_bytes(entry?.file_name().to_bytes()).to_owned();
        seen.push(name);
        if seen.len() == N / 3 && !changed {
            changed = true;
            // Remove names already listed and names not listed yet, from
            // both layers, and add new ones.
            let listed: HashSet<&OsString> = seen.iter().collect();
            let mut listed_gone = 0;
            let mut unlisted_gone = 0;
            for i in 0..N {
                let name = OsString::from(format!("n{i:05}"));
                let is_listed = listed.contains(&name);
                if (is_listed && listed_gone < 40)
                    || (!is_listed && unlisted_gone < 40 && i % 7 == 0)
                {
                    std::fs::remove_file(d.join(&name))?;
                    removed.insert(name);
                    if is_listed {
                        listed_gone += 1;
                    } else {
                        unlisted_gone += 1;
                    }
                }
            }
            for i in 0..60 {
                let name = OsString::from(format!("new{i:03}"));
                std::fs::write(d.join(&name), "")?;
                added.insert(name);
            }
        }
    }
    ensure!(changed, "the listing ended before the change");
    let mut unique = HashSet::new();
    for name in &seen {
        ensure!(unique.insert(name), "{name:?} listed twice");
    }
    for i in 0..N {
        let name = OsString::from(format!("n{i:05}"));
        if !removed.contains(&name) {
            ensure!(unique.contains(&name), "{name:?} stayed but was not listed");
        }
    }
    ensure!(unique.contains(&OsString::from(".")) && unique.contains(&OsString::from("..")));
    // A fresh listing shows exactly the new state.
    let now: HashSet<OsString> = std::fs::read_dir(&d)?
        .map(|e| Ok(e?.file_name()))
        .collect::<Result<_>>()?;
    let want: HashSet<OsString> = (0..N)
        .map(|i| OsString::from(format!("n{i:05}")))
        .filter(|n| !removed.contains(n))
        .chain(added.iter().cloned())
        .collect();
    ensure!(now == want, "fresh listing differs from the dir's state");
    Ok(())
}
