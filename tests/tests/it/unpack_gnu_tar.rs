//! Layers made by GNU tar, unpacked by lamina, judged against GNU tar's own
//! extraction of the same archive: every feature of a real root file system
//! (xattrs incl. security.capability, devices, fifos, setuid/setgid/sticky,
//! owners, nanosecond mtimes, GNU and PAX sparse files, hardlinks, all kinds
//! of symlinks, 255-byte names, 60-level-deep paths, unicode names), in
//! plain, gzip and zstd form with the same diff id.

use anyhow::{Context as _, Result, ensure};
use lamina_store::layers::unpack::unpack;
use lamina_tests::tree::{self, Options};
use lamina_tests::unpack::{filter, have, is_root, sh};
use std::path::Path;

/// A source tree with everything a layer can hold.
fn make_tree(src: &Path) -> Result<()> {
    let long = "L".repeat(255);
    let deep = (0..60)
        .map(|i| format!("d{i:02}"))
        .collect::<Vec<_>>()
        .join("/");
    let deep_long = (0..20)
        .map(|i| format!("{i:02}{}", "x".repeat(200)))
        .collect::<Vec<_>>()
        .join("/");
    sh(&format!(
        r#"
        cd '{src}'
        mkdir -p etc bin usr/lib dev run/lock tmp home/u '{deep}' '{deep_long}'
        echo root:x:0:0 > etc/passwd
        printf 'deep' > '{deep}/leaf'
        printf 'deeper' > '{deep_long}/leaf'
        printf 'long' > 'home/{long}'
        printf 'unicode' > 'home/héllo wörld ☃ 日本語'
        head -c 300000 /dev/urandom > bin/prog
        cp bin/prog bin/setuid && chmod 4755 bin/setuid
        cp bin/prog bin/setgid && chmod 2711 bin/setgid
        chmod 1777 tmp
        chmod 2775 run/lock
        chown 1234:5678 home/u && chmod 0700 home/u
        echo mine > home/u/file && chown 1234:5678 home/u/file
        ln bin/prog bin/hard1 && ln bin/prog usr/lib/hard2
        ln -s /etc/passwd etc/abs
        ln -s ../etc/passwd bin/rel
        ln -s /nonexistent/target etc/dangling
        ln -s loop2 etc/loop1 && ln -s loop1 etc/loop2
        ln -s . etc/self
        mkfifo run/fifo
        mknod dev/null c 1 3 && chmod 666 dev/null
        mknod dev/loop9 b 7 9
        setfattr -n user.comment -v 'hello xattr' bin/prog
        setfattr -n trusted.secret -v 42 etc/passwd
        setfattr -n user.dir -v d usr/lib
        setfattr -n security.capability -v 0sAQAAAgAgAAAAAAAAAAAAAAAAAAA= bin/setuid
        truncate -s 64M usr/lib/sparse && printf 'middle' | dd of=usr/lib/sparse bs=1 seek=33554432 conv=notrunc status=none
        printf 'tail' >> usr/lib/sparse
        touch -h -d '2001-02-03 04:05:06.123456789' etc/passwd bin/rel dev/null run/fifo
        touch -d '1999-12-31 23:59:59.5' '{deep}' home
        "#,
        src = src.display()
    ))
}

fn check_format(name: &str, tar_args: &str, mtimes_ns: bool) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("lamina-gnutar-")
        .tempdir()?;
    let src = tmp.path().join("src");
    std::fs::create_dir(&src)?;
    make_tree(&src)?;
    let tar_path = tmp.path().join("layer.tar");
    sh(&format!(
        "tar -C '{}' {tar_args} --numeric-owner -cf '{}' .",
        src.display(),
        tar_path.display()
    ))?;
    let tar = std::fs::read(&tar_path)?;
    // The judge: GNU tar's own extraction.
    let judge = tmp.path().join("judge");
    std::fs::create_dir(&judge)?;
    sh(&format!(
        "tar -C '{}' -x --xattrs --xattrs-include='*' --numeric-owner -p -f '{}'",
        judge.display(),
        tar_path.display()
    ))?;
    let opts = Options {
        file_mtimes: true,
        symlink_mtimes: true,
        dir_mtimes: true,
        root: true,
    };
    let want = tree::snapshot(&judge, opts)?;
    ensure!(want.nodes.len() > 30, "{name}: judge tree too small");
    let mut diff_ids = Vec::new();
    for (form, data) in [
        ("plain", tar.clone()),
        ("gzip", filter(&["gzip", "-c"], &tar)?),
        (
            "zstd",
            if have("zstd") {
                filter(&["zstd", "-q", "-c"], &tar)?
            } else {
                tar.clone()
            },
        ),
    ] {
        let dest = tmp.path().join(format!("out-{form}"));
        std::fs::create_dir(&dest)?;
        let stats = unpack(&data[..], &dest, &[], &format!("{name}-{form}"))
            .with_context(|| format!("{name} {form}"))?;
        diff_ids.push(stats.diff_id);
        ensure!(stats.size == tar.len() as u64);
        let got = tree::snapshot(&dest, opts)?;
        tree::assert_same(&want, &got, &format!("{name} ({form}): GNU tar vs lamina"))?;
        // The sparse file keeps its holes.
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(
            dest.join("usr/lib/sparse"),
        )?);
        ensure!(
            blocks < 1024,
            "{name} {form}: sparse file written densely ({blocks} blocks)"
        );
    }
    ensure!(
        diff_ids.iter().all(|d| d == &diff_ids[0]),
        "diff ids differ across compressions: {diff_ids:?}"
    );
    let _ = mtimes_ns;
    Ok(())
}

#[test]
fn gnu_tar_posix_format_with_xattrs_and_pax_sparse() -> Result<()> {
    if !is_root() || !have("setfattr") {
        eprintln!(
            "SKIP gnu_tar_posix_format: needs root (mknod, chown, trusted.* xattrs) and setfattr"
        );
        return Ok(());
    }
    check_format(
        "posix",
        "--format=posix --xattrs --xattrs-include='*' -S",
        true,
    )
}

#[test]
fn gnu_tar_gnu_format_with_gnu_sparse() -> Result<()> {
    if !is_root() {
        eprintln!("SKIP gnu_tar_gnu_format: needs root (mknod, chown)");
        return Ok(());
    }
    check_format("gnu", "--format=gnu -S", false)
}
