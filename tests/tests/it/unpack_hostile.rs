//! Hostile layers: each is rejected with an error naming the layer and the
//! entry, or made harmless inside the layer dir as the OCI spec says; in
//! every case nothing outside the layer dir changes.

use anyhow::{Result, ensure};
use lamina_store::layers::unpack::{UnpackError, UnpackStats, unpack};
use lamina_tests::unpack::{Entry, Sandbox, filter, tar_of};

fn run(sb: &Sandbox, tar: &[u8]) -> Result<UnpackStats, UnpackError> {
    unpack(tar, &sb.dest, &[], "hostile-layer")
}

/// Asserts a rejection naming the layer and `entry`.
fn assert_rejected(r: Result<UnpackStats, UnpackError>, entry: &str) -> Result<()> {
    match r {
        Err(e @ (UnpackError::Rejected { .. } | UnpackError::Entry { .. })) => {
            let msg = e.to_string();
            ensure!(
                msg.contains("hostile-layer"),
                "error does not name the layer: {msg}"
            );
            ensure!(
                msg.contains(entry),
                "error does not name entry {entry}: {msg}"
            );
            Ok(())
        }
        other => anyhow::bail!("expected a rejection of {entry}, got {other:?}"),
    }
}

/// Unpacks the layer `entries` makes (given the fresh sandbox it goes into):
/// it must be rejected naming the layer and `entry`, and change nothing
/// outside the layer dir.
fn rejected<I>(entry: &str, entries: impl FnOnce(&Sandbox) -> I) -> Result<()>
where
    I: IntoIterator<Item = Entry>,
{
    let sb = Sandbox::new()?;
    assert_rejected(run(&sb, &tar_of(entries(&sb))), entry)?;
    sb.assert_outside_untouched()
}

#[test]
fn dotdot_escaping_the_root_is_rejected() -> Result<()> {
    for name in [
        "../sentinel/evil",
        "a/../../sentinel/evil",
        "./../../x",
        "/../sentinel/evil",
    ] {
        rejected(name, |_| [Entry::dir("a"), Entry::file(name, "evil")])?;
    }
    Ok(())
}

#[test]
fn dotdot_inside_the_root_is_normalised() -> Result<()> {
    let sb = Sandbox::new()?;
    run(&sb, &tar_of([Entry::dir("a"), Entry::file("a/../b", "ok")]))?;
    ensure!(std::fs::read(sb.dest.join("b"))? == b"ok");
    sb.assert_outside_untouched()
}

#[test]
fn absolute_paths_land_inside_the_layer() -> Result<()> {
    let sb = Sandbox::new()?;
    let abs = format!("{}/etc/passwd", sb.sentinel_abs());
    run(
        &sb,
        &tar_of([Entry::file(&abs, "evil"), Entry::file("/top", "t")]),
    )?;
    let inside = sb.dest.join(abs.trim_start_matches('/'));
    ensure!(
        std::fs::read(&inside)? == b"evil",
        "absolute entry not stripped into the layer"
    );
    ensure!(std::fs::read(sb.dest.join("top"))? == b"t");
    sb.assert_outside_untouched()
}

#[test]
fn writes_through_a_symlink_to_root_stay_inside() -> Result<()> {
    let sb = Sandbox::new()?;
    let abs = sb.sentinel_abs();
    run(
        &sb,
        &tar_of([
            Entry::symlink("a", "/"),
            Entry::file("a/etc/x", "through /"),
            Entry::symlink("up", "../../../../../.."),
            Entry::file("up/y", "through ../.."),
            Entry::symlink("s", format!("{abs}/dir")),
            Entry::dir(format!("{}/dir", abs.trim_start_matches('/'))),
            Entry::file("s/file", "through abs"),
        ]),
    )?;
    // Symlinks resolve as if the layer dir were `/`.
    ensure!(std::fs::read(sb.dest.join("etc/x"))? == b"through /");
    ensure!(std::fs::read(sb.dest.join("y"))? == b"through ../..");
    ensure!(
        std::fs::read(sb.dest.join(abs.trim_start_matches('/')).join("dir/file"))?
            == b"through abs"
    );
    ensure!(
        std::fs::read_link(sb.dest.join("a"))?.as_os_str() == "/",
        "symlink kept as is"
    );
    sb.assert_outside_untouched()
}

#[test]
fn writes_through_a_dangling_escaping_symlink_fail_inside() -> Result<()> {
    // `a` points (relatively) at the sentinel's etc, which is not in the layer.
    rejected("a/passwd", |_| {
        [
            Entry::symlink("a", "../../sentinel/etc"),
            Entry::file("a/passwd", "evil"),
        ]
    })
}

#[test]
fn symlink_entries_are_never_followed_when_replaced() -> Result<()> {
    let sb = Sandbox::new()?;
    let target = sb.sentinel.join("etc/passwd").display().to_string();
    // A later file at the symlink's name replaces the symlink, not its target.
    run(
        &sb,
        &tar_of([Entry::symlink("p", &target), Entry::file("p", "replaced")]),
    )?;
    ensure!(std::fs::read(sb.dest.join("p"))? == b"replaced");
    ensure!(std::fs::symlink_metadata(sb.dest.join("p"))?.is_file());
    sb.assert_outside_untouched()
}

#[test]
fn hardlinks_outside_the_layer_are_rejected() -> Result<()> {
    // `..` escaping the root.
    rejected("h", |_| [Entry::hardlink("h", "../../sentinel/etc/passwd")])?;
    // Absolute: means the layer's own path, which does not exist.
    rejected("h", |sb| {
        [Entry::hardlink(
            "h",
            sb.sentinel.join("etc/passwd").display().to_string(),
        )]
    })?;
    // Through a symlink pointing outside.
    rejected("h", |sb| {
        let etc = sb.sentinel.join("etc").display().to_string();
        [Entry::symlink("s", &etc), Entry::hardlink("h", "s/passwd")]
    })?;
    // Through a relative symlink climbing out.
    rejected("h", |_| {
        [
            Entry::symlink("s", "../../sentinel/etc"),
            Entry::hardlink("h", "s/passwd"),
        ]
    })
}

#[test]
fn whiteouts_and_opaque_markers_beneath_symlinks_stay_inside() -> Result<()> {
    // Whiteouts and opaque markers never follow a symlink: below one they
    // are redundant (the symlink hides the lower dir) and dropped.
    let sb = Sandbox::new()?;
    let etc = sb.sentinel.join("etc").display().to_string();
    let names = |dir: &std::path::Path| -> Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(dir)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        v.sort();
        Ok(v)
    };
    run(
        &sb,
        &tar_of([
            Entry::symlink("s", &etc),
            Entry::file("s/.wh.passwd", ""),
            Entry::symlink("r", "../../sentinel/etc"),
            Entry::file("r/.wh..wh..opq", ""),
            Entry::symlink("a", "/"),
            Entry::file("a/.wh.etc", ""),
            Entry::file("a/.wh..wh..opq", ""),
            Entry::dir("d"),
            Entry::symlink("d/up", "../.."),
            Entry::file("d/up/.wh.d", ""),
            Entry::file("d/up/.wh..wh..opq", ""),
        ]),
    )?;
    ensure!(
        names(&sb.dest)? == ["a", "d", "r", "s"],
        "{:?}",
        names(&sb.dest)?
    );
    ensure!(names(&sb.dest.join("d"))? == ["up"]);
    let mut buf = [0u8; 8];
    ensure!(
        rustix::fs::lgetxattr(&sb.dest, "trusted.overlay.opaque", &mut buf[..]).is_err(),
        "root made opaque"
    );
    sb.assert_outside_untouched()
}

#[test]
fn bad_whiteout_names_are_rejected() -> Result<()> {
    for name in ["d/.wh.", "d/.wh..", "d/.wh..."] {
        rejected(name, |_| [Entry::dir("d"), Entry::file(name, "")])?;
    }
    Ok(())
}

#[test]
fn duplicate_entries_later_wins() -> Result<()> {
    let sb = Sandbox::new()?;
    run(
        &sb,
        &tar_of([
            Entry::file("f", "one"),
            Entry::file("f", "two"),
            Entry::dir("d"),
            Entry::file("d/keep", "k"),
            Entry {
                mode: 0o700,
                ..Entry::dir("d")
            },
            Entry::dir("x"),
            Entry::file("x/gone", "g"),
            Entry::file("x", "x is a file now"),
            Entry::file("y", "y was a file"),
            Entry::dir("y"),
            Entry::file("y/in", "in"),
            Entry::file("z", "z was a file"),
            Entry::symlink("z", "f"),
        ]),
    )?;
    use std::os::unix::fs::PermissionsExt;
    ensure!(std::fs::read(sb.dest.join("f"))? == b"two");
    ensure!(
        std::fs::read(sb.dest.join("d/keep"))? == b"k",
        "a dir over a dir merges"
    );
    ensure!(
        std::fs::metadata(sb.dest.join("d"))?.permissions().mode() & 0o7777 == 0o700,
        "later dir metadata wins"
    );
    ensure!(std::fs::read(sb.dest.join("x"))? == b"x is a file now");
    ensure!(std::fs::read(sb.dest.join("y/in"))? == b"in");
    ensure!(std::fs::read_link(sb.dest.join("z"))?.as_os_str() == "f");
    sb.assert_outside_untouched()
}

#[test]
fn overlay_xattrs_from_the_layer_are_dropped() -> Result<()> {
    if !lamina_tests::unpack::is_root() {
        eprintln!(
            "SKIP overlay_xattrs_from_the_layer_are_dropped: needs root for trusted.* xattrs"
        );
        return Ok(());
    }
    let sb = Sandbox::new()?;
    run(
        &sb,
        &tar_of([
            Entry::dir("d").with_pax("SCHILY.xattr.trusted.overlay.redirect", "/etc"),
            Entry::file("f", "x")
                .with_pax("SCHILY.xattr.trusted.overlay.metacopy", "")
                .with_pax("SCHILY.xattr.user.overlay.redirect", "/etc")
                .with_pax("SCHILY.xattr.user.ok", "1"),
        ]),
    )?;
    let x = lamina_tests::tree::xattrs(&sb.dest.join("f"))?;
    ensure!(x == vec![("user.ok".to_owned(), b"1".to_vec())], "{x:?}");
    let mut buf = [0u8; 64];
    for (file, name) in [
        ("f", "trusted.overlay.metacopy"),
        ("f", "user.overlay.redirect"),
    ] {
        ensure!(
            rustix::fs::lgetxattr(sb.dest.join(file), name, &mut buf[..]).is_err(),
            "{name} kept on {file}"
        );
    }
    ensure!(
        rustix::fs::lgetxattr(sb.dest.join("d"), "trusted.overlay.redirect", &mut buf[..]).is_err()
    );
    sb.assert_outside_untouched()
}

#[test]
fn absurdly_deep_paths_are_rejected() -> Result<()> {
    let name = "a/".repeat(2000) + "f";
    rejected("a/a/a", |_| [Entry::file(&name, "x")])
}

#[test]
fn truncated_and_corrupt_streams_fail() -> Result<()> {
    let tar = tar_of((0..50).map(|i| Entry::file(format!("f{i}"), vec![i as u8; 20_000])));
    for (name, cmd) in [
        ("gzip", &["gzip", "-c"][..]),
        ("zstd", &["zstd", "-q", "-c"][..]),
    ] {
        if !lamina_tests::unpack::have(cmd[0]) {
            eprintln!("SKIP {name}: {} not installed", cmd[0]);
            continue;
        }
        let z = filter(cmd, &tar)?;
        // Truncated.
        let sb = Sandbox::new()?;
        let r = unpack(&z[..z.len() / 2], &sb.dest, &[], "hostile-layer");
        ensure!(
            matches!(r, Err(UnpackError::Read { .. })),
            "{name} truncated: {r:?}"
        );
        ensure!(r.unwrap_err().to_string().contains("hostile-layer"));
        sb.assert_outside_untouched()?;
        // Only the trailer missing.
        let sb = Sandbox::new()?;
        let r = unpack(&z[..z.len() - 4], &sb.dest, &[], "hostile-layer");
        ensure!(r.is_err(), "{name} without its last bytes accepted");
        // Corrupt in the middle.
        let mut bad = z.clone();
        let mid = bad.len() / 2;
        for b in &mut bad[mid..mid + 64] {
            *b ^= 0x5a;
        }
        let sb = Sandbox::new()?;
        let r = unpack(&bad[..], &sb.dest, &[], "hostile-layer");
        ensure!(r.is_err(), "{name} corrupt accepted");
        sb.assert_outside_untouched()?;
    }
    Ok(())
}

#[test]
fn data_that_is_not_a_tar_fails() -> Result<()> {
    let sb = Sandbox::new()?;
    let text = b"this is not a tar archive, just some text\n".repeat(100);
    let r = unpack(&text[..], &sb.dest, &[], "hostile-layer");
    ensure!(matches!(r, Err(UnpackError::Tar { .. })), "{r:?}");
    let r = unpack(&b""[..], &sb.dest, &[], "hostile-layer");
    ensure!(matches!(r, Err(UnpackError::Empty { .. })), "{r:?}");
    let r = unpack(&b"short"[..], &sb.dest, &[], "hostile-layer");
    ensure!(r.is_err(), "5 bytes accepted: {r:?}");
    let junk = filter(&["gzip", "-c"], &text)?;
    let r = unpack(&junk[..], &sb.dest, &[], "hostile-layer");
    ensure!(
        matches!(r, Err(UnpackError::Tar { .. })),
        "gzip of text: {r:?}"
    );
    sb.assert_outside_untouched()
}

#[test]
fn diff_id_mismatch_is_reported() -> Result<()> {
    let sb = Sandbox::new()?;
    let tar = tar_of([Entry::file("f", "x")]);
    let stats = unpack(&tar[..], &sb.dest, &[], "hostile-layer")?;
    use sha2::Digest as _;
    ensure!(stats.diff_id == format!("sha256:{}", hex::encode(sha2::Sha256::digest(&tar))));
    ensure!(stats.size == tar.len() as u64);
    stats.verify_diff_id(&stats.diff_id.clone(), "hostile-layer")?;
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = stats.verify_diff_id(&wrong, "hostile-layer").unwrap_err();
    ensure!(matches!(err, UnpackError::DiffIdMismatch { .. }));
    ensure!(err.to_string().contains("hostile-layer") && err.to_string().contains(&wrong));
    Ok(())
}

mod random {
    //! Random archives built from hostile pieces: whatever the mix, the
    //! unpack never touches anything outside the layer dir and never panics.
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        let comp = prop_oneof![
            Just("a".to_owned()),
            Just("dir".to_owned()),
            Just("file".to_owned()),
            Just("..".to_owned()),
            Just(".wh.file".to_owned()),
            Just(".wh..wh..opq".to_owned()),
            Just("SENTINEL".to_owned()),
        ];
        (any::<bool>(), proptest::collection::vec(comp, 1..4)).prop_map(|(abs, c)| {
            let p = c.join("/");
            if abs { format!("/{p}") } else { p }
        })
    }

    fn entry() -> impl Strategy<Value = (u8, String, String)> {
        // Targets that would reach the sentinel if a symlink were followed
        // outside the layer (never `/` itself: a broken unpacker must not
        // be able to damage the machine running the test).
        let target = prop_oneof![
            Just("../../sentinel".to_owned()),
            Just("../../sentinel/dir".to_owned()),
            Just("SENTINEL".to_owned()),
            Just("SENTINEL/dir/file".to_owned()),
            Just("a".to_owned()),
            Just("dir/file".to_owned()),
        ];
        (
            prop_oneof![Just(b'0'), Just(b'5'), Just(b'2'), Just(b'1')],
            name(),
            target,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn nothing_escapes(entries in proptest::collection::vec(entry(), 1..16)) {
            let sb = Sandbox::new().unwrap();
            let sentinel = sb.sentinel_abs();
            let fix = |s: &str| s.replace("SENTINEL", &sentinel);
            let tar = tar_of(entries.iter().map(|(kind, name, target)| {
                let name = fix(name);
                match kind {
                    b'0' => Entry::file(&name, "x"),
                    b'5' => Entry::dir(&name),
                    b'2' => Entry::symlink(&name, fix(target)),
                    _ => Entry::hardlink(&name, fix(target)),
                }
            }));
            let r = run(&sb, &tar);
            if let Err(e) = &r {
                prop_assert!(e.to_string().contains("hostile-layer"), "{}", e);
            }
            sb.assert_outside_untouched().map_err(|e| TestCaseError::fail(format!("{e:#} after {entries:?} -> {r:?}")))?;
        }
    }
}

/// Through the store: a hostile layer fails with an error naming the layer
/// and the entry, leaves no layer directory behind, and the store goes on
/// unpacking good layers (on top of a good parent, too).
#[test]
fn hostile_layers_through_the_store_leave_no_trace() -> Result<()> {
    let sb = Sandbox::new()?;
    let store = lamina_store::Store::open(&sb.dest)?;
    let base = store.unpack_layer(
        None,
        None,
        &tar_of([Entry::dir("etc"), Entry::file("etc/f", "base")])[..],
        "base",
    )?;
    let listing = || -> Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(sb.dest.join("layers"))?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        v.sort();
        Ok(v)
    };
    let before = listing()?;
    let etc = sb.sentinel.join("etc").display().to_string();
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("../escape", tar_of([Entry::file("../../../escape", "x")])),
        (
            "h",
            tar_of([Entry::symlink("s", &etc), Entry::hardlink("h", "s/passwd")]),
        ),
        (
            "s/passwd",
            tar_of([
                Entry::symlink("s", "../../../../sentinel/etc"),
                Entry::file("s/passwd", "x"),
            ]),
        ),
        (
            "d/.wh..",
            tar_of([Entry::dir("d"), Entry::file("d/.wh..", "")]),
        ),
    ];
    for (entry, tar) in &hostile {
        let err = store
            .unpack_layer(Some(&base.chain_id), None, &tar[..], "hostile-layer")
            .expect_err("hostile layer accepted");
        let msg = format!("{err:#}");
        ensure!(
            msg.contains("hostile-layer") && msg.contains(entry),
            "error names neither layer nor {entry}: {msg}"
        );
        ensure!(listing()? == before, "a failed layer left {:?}", listing()?);
    }
    // Truncated gzip through the store.
    let gz = filter(
        &["gzip", "-c"],
        &tar_of((0..20).map(|i| Entry::file(format!("f{i}"), vec![7u8; 50_000]))),
    )?;
    ensure!(
        store
            .unpack_layer(None, None, &gz[..gz.len() / 2], "hostile-layer")
            .is_err()
    );
    ensure!(
        listing()? == before,
        "a truncated layer left {:?}",
        listing()?
    );
    // Still usable.
    let good = store.unpack_layer(
        Some(&base.chain_id),
        None,
        &tar_of([Entry::hardlink("etc/g", "etc/f")])[..],
        "good",
    )?;
    ensure!(std::fs::read(store.layer_dir(&good.chain_id).join("etc/g"))? == b"base");
    sb.assert_outside_untouched()
}
