//! lamina's FUSE overlay against kernel overlayfs over the same layer dirs:
//! the merged views must match before and after the same sequence of
//! writes, renames and deletes, and the upper dir lamina writes must mean the
//! same as the kernel's when mounted again (by the kernel and by lamina).

use anyhow::{Context as _, Result, ensure};
use lamina_tests::overlay::{
    KernelMount, LaminaMount, Tree, apply_changes_to_both, assert_same_tree, edge_layers,
    fuse_available, kernel_overlay_available, kernel_view_of_upper, snapshot,
};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

fn no_times(t: Tree) -> Tree {
    t.no_times()
}

#[test]
fn merged_view_and_upper_match_kernel_overlayfs() -> Result<()> {
    if !fuse_available() || !kernel_overlay_available() {
        eprintln!("SKIP overlay_compare: needs root, /dev/fuse and kernel overlayfs");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let base = tmp.path();
    let layers = edge_layers(&base.join("layers"), false)?;
    for d in ["ku", "kw", "fu", "fw"] {
        std::fs::create_dir_all(base.join(d))?;
    }
    let (kmnt, fmnt) = (base.join("k"), base.join("f"));
    {
        let k = KernelMount::mount(&layers, Some((&base.join("ku"), &base.join("kw"))), &kmnt)?;
        let f = LaminaMount::mount_with_fd_budget(
            &layers,
            Some((&base.join("fu"), &base.join("fw"))),
            &fmnt,
            Some(32),
        )?;
        let kt = snapshot(&k.dir)?;
        ensure!(
            kt.entries.contains_key("opq_x/new1") && !kt.entries.contains_key("opq_x/old1"),
            "fixture sanity"
        );
        assert_same_tree(
            &kt,
            &snapshot(&f.dir)?,
            "merged view before writes (kernel vs lamina)",
        )?;

        let results = apply_changes_to_both(&k.dir, &f.dir)?;
        eprintln!("{}", results.join("\n"));
        assert_same_tree(
            &no_times(snapshot(&k.dir)?),
            &no_times(snapshot(&f.dir)?),
            "merged view after the same writes (kernel vs lamina)",
        )?;
    }
    // The upper dirs, read back as the top layer of a read-only kernel mount,
    // and lamina's upper remounted by lamina, all show the same tree.
    let kview = kernel_view_of_upper(&base.join("ku"), &layers, &base.join("k2"))?;
    let fview = kernel_view_of_upper(&base.join("fu"), &layers, &base.join("f2"))?;
    assert_same_tree(
        &kview,
        &fview,
        "kernel view of kernel upper vs kernel view of lamina upper",
    )?;
    let again = LaminaMount::mount(
        &layers,
        Some((&base.join("fu"), &base.join("fw"))),
        &base.join("f3"),
    )
    .context("remounting lamina over its upper")?;
    assert_same_tree(
        &kview,
        &no_times(snapshot(&again.dir)?),
        "lamina remounted over its upper",
    )?;
    Ok(())
}

#[test]
fn read_only_mount_refuses_writes() -> Result<()> {
    if !fuse_available() {
        eprintln!("SKIP overlay_compare: needs root and /dev/fuse");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let layers = edge_layers(&tmp.path().join("layers"), true)?;
    let m = LaminaMount::mount(&layers, None, &tmp.path().join("m"))?;
    assert_eq!(std::fs::read_to_string(m.dir.join("a.txt"))?, "top a\n");
    let err = std::fs::write(m.dir.join("new"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = std::fs::remove_file(m.dir.join("a.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    Ok(())
}

#[test]
fn oci_whiteout_markers_mean_what_native_whiteouts_mean() -> Result<()> {
    if !fuse_available() || !kernel_overlay_available() {
        eprintln!("SKIP overlay_compare: needs root, /dev/fuse and kernel overlayfs");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let native = edge_layers(&tmp.path().join("native"), false)?;
    let markers = edge_layers(&tmp.path().join("markers"), true)?;
    let k = KernelMount::mount(&native, None, &tmp.path().join("k"))?;
    let f = LaminaMount::mount(&markers, None, &tmp.path().join("f"))?;
    assert_same_tree(
        &no_times(snapshot(&k.dir)?),
        &no_times(snapshot(&f.dir)?),
        "kernel over native layers vs lamina over marker layers",
    )
}

/// Kernel overlayfs (at `base/k`, upper `base/ku`) and lamina (at `base/f`,
/// upper `base/fu`) over the same `layers`, read-write.
fn mount_both_rw(layers: &[PathBuf], base: &Path) -> Result<(KernelMount, LaminaMount)> {
    for d in ["ku", "kw", "fu", "fw"] {
        std::fs::create_dir_all(base.join(d))?;
    }
    let k = KernelMount::mount(
        layers,
        Some((&base.join("ku"), &base.join("kw"))),
        &base.join("k"),
    )?;
    let f = LaminaMount::mount(
        layers,
        Some((&base.join("fu"), &base.join("fw"))),
        &base.join("f"),
    )?;
    Ok((k, f))
}

/// Fails at the first step that kernel overlayfs (`kr`) and lamina (`fr`)
/// answered differently.
fn ensure_same_answers<W: std::fmt::Display, T: PartialEq + std::fmt::Debug>(
    kr: &[(W, T)],
    fr: &[(W, T)],
) -> Result<()> {
    ensure!(
        kr.len() == fr.len(),
        "{} steps against {}",
        kr.len(),
        fr.len()
    );
    for ((what, kv), (_, fv)) in kr.iter().zip(fr) {
        ensure!(kv == fv, "{what}: kernel {kv:?}, lamina {fv:?}");
    }
    Ok(())
}

/// One xattr call on a symlink (never followed), as `Ok(value or names)` or
/// the errno.
fn symlink_xattr_ops(root: &Path) -> Vec<(String, Result<Vec<u8>, i32>)> {
    use rustix::fs::{XattrFlags, lgetxattr, llistxattr, lremovexattr, lsetxattr};
    let get = |p: &str, n: &str| {
        let mut buf = vec![0u8; 256];
        lgetxattr(root.join(p), n, &mut buf[..]).map(|len| buf[..len].to_vec())
    };
    let list = |p: &str| {
        let mut buf = vec![0u8; 1024];
        llistxattr(root.join(p), &mut buf[..]).map(|len| {
            let mut names: Vec<&[u8]> = buf[..len]
                .split(|&b| b == 0)
                .filter(|n| !n.is_empty() && !n.starts_with(b"trusted.overlay."))
                .collect();
            names.sort();
            names.join(&b","[..])
        })
    };
    let set = |p: &str, n: &str, v: &[u8]| {
        lsetxattr(root.join(p), n, v, XattrFlags::empty()).map(|()| Vec::new())
    };
    let remove = |p: &str, n: &str| lremovexattr(root.join(p), n).map(|()| Vec::new());
    let steps: Vec<(&str, rustix::io::Result<Vec<u8>>)> = vec![
        ("get trusted of a lower symlink", get("sym", "trusted.note")),
        (
            "get security of a lower symlink",
            get("sym", "security.mark"),
        ),
        ("list a lower symlink", list("sym")),
        ("get a missing name", get("sym", "trusted.absent")),
        ("set user. on a symlink", set("sym", "user.x", b"1")),
        ("get user. of a symlink", get("sym", "user.x")),
        ("remove a missing name", remove("sym", "trusted.absent")),
        (
            "set trusted. on a lower symlink",
            set("sym", "trusted.new", b"n"),
        ),
        (
            "remove trusted. of a copied-up symlink",
            remove("sym", "trusted.note"),
        ),
        ("list after the changes", list("sym")),
        (
            "get from a symlink in a lower dir",
            get("d/inner", "trusted.deep"),
        ),
        ("create flag on an existing name", {
            lsetxattr(
                root.join("d/inner"),
                "trusted.deep",
                b"x",
                XattrFlags::CREATE,
            )
            .map(|()| Vec::new())
        }),
        ("set security. on a new symlink", {
            symlink("nowhere", root.join("fresh"))
                .map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap())
                .and_then(|()| set("fresh", "security.mark", b"s"))
        }),
        ("list a new symlink", list("fresh")),
        ("the symlink's target is unchanged", {
            std::fs::read_link(root.join("sym"))
                .map(|t| t.into_os_string().into_encoded_bytes())
                .map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap())
        }),
    ];
    steps
        .into_iter()
        .map(|(what, r)| (what.to_string(), r.map_err(|e| e.raw_os_error())))
        .collect()
}

#[test]
fn symlink_xattrs_match_kernel_overlayfs() -> Result<()> {
    if !fuse_available() || !kernel_overlay_available() {
        eprintln!("SKIP overlay_compare: needs root, /dev/fuse and kernel overlayfs");
        return Ok(());
    }
    use rustix::fs::{XattrFlags, lsetxattr};
    let tmp = tempfile::tempdir()?;
    let base = tmp.path();
    let (top, low) = (base.join("l1"), base.join("l2"));
    std::fs::create_dir_all(low.join("d"))?;
    std::fs::create_dir_all(&top)?;
    symlink("target/file", low.join("sym"))?;
    lsetxattr(
        low.join("sym"),
        "trusted.note",
        b"lower",
        XattrFlags::empty(),
    )?;
    lsetxattr(low.join("sym"), "security.mark", b"m", XattrFlags::empty())?;
    symlink("../sym", low.join("d/inner"))?;
    lsetxattr(
        low.join("d/inner"),
        "trusted.deep",
        b"deep",
        XattrFlags::empty(),
    )?;
    symlink("x", top.join("top_sym"))?;
    let (k, f) = mount_both_rw(&[top, low], base)?;
    assert_same_tree(
        &snapshot(&k.dir)?,
        &snapshot(&f.dir)?,
        "symlink xattrs before changes (kernel vs lamina)",
    )?;
    let kr = symlink_xattr_ops(&k.dir);
    let fr = symlink_xattr_ops(&f.dir);
    for ((what, kv), (_, fv)) in kr.iter().zip(&fr) {
        eprintln!("{what}: kernel {kv:?} lamina {fv:?}");
    }
    ensure_same_answers(&kr, &fr)?;
    // The cases mean something: the lower value reads back, user. is refused.
    ensure!(
        kr[0].1 == Ok(b"lower".to_vec()),
        "kernel reads {:?}",
        kr[0].1
    );
    ensure!(
        kr[4].1 == Err(libc::EPERM),
        "kernel refuses user.: {:?}",
        kr[4].1
    );
    assert_same_tree(
        &no_times(snapshot(&k.dir)?),
        &no_times(snapshot(&f.dir)?),
        "symlink xattrs after the same changes (kernel vs lamina)",
    )?;
    // The copied-up symlinks in the two uppers carry the same xattrs.
    for p in ["sym", "fresh"] {
        let (ku, fu) = (base.join("ku").join(p), base.join("fu").join(p));
        let kx = lamina_tests::tree::xattrs(&ku)?;
        let fx = lamina_tests::tree::xattrs(&fu)?;
        ensure!(kx == fx, "upper {p}: kernel {kx:?}, lamina {fx:?}");
        ensure!(std::fs::symlink_metadata(&fu)?.file_type().is_symlink());
    }
    Ok(())
}

/// A `security.capability` value: revision 2, effective, CAP_NET_RAW permitted.
const NET_RAW_CAP: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// Writes, file capabilities and reads of them, through a mount at `root`:
/// a write drops a file's capabilities, a new value reads back at once.
fn capability_ops(root: &Path) -> Vec<(&'static str, Result<Vec<u8>, i32>)> {
    use rustix::fs::{XattrFlags, getxattr, setxattr};
    use std::io::Write as _;
    let caps = |p: &str| {
        let mut buf = vec![0u8; 64];
        getxattr(root.join(p), "security.capability", &mut buf[..]).map(|n| buf[..n].to_vec())
    };
    let set = |p: &str| {
        setxattr(
            root.join(p),
            "security.capability",
            &NET_RAW_CAP,
            XattrFlags::empty(),
        )
        .map(|()| Vec::new())
    };
    let append = |p: &str| {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(root.join(p))
            .and_then(|mut f| f.write_all(b"x"))
            .map(|()| Vec::new())
            .map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap())
    };
    let steps: Vec<(&str, rustix::io::Result<Vec<u8>>)> = vec![
        ("write a new file", append("new")),
        ("its capabilities", caps("new")),
        ("write it again", append("new")),
        ("set capabilities on it", set("new")),
        ("its capabilities after the set", caps("new")),
        ("write it once more", append("new")),
        ("its capabilities after that write", caps("new")),
        ("a lower file's capabilities", caps("bin")),
        ("write the lower file", append("bin")),
        ("its capabilities after the write", caps("bin")),
    ];
    steps
        .into_iter()
        .map(|(what, r)| (what, r.map_err(|e| e.raw_os_error())))
        .collect()
}

#[test]
fn file_capabilities_drop_on_write_as_on_kernel_overlayfs() -> Result<()> {
    if !fuse_available() || !kernel_overlay_available() {
        eprintln!("SKIP overlay_compare: needs root, /dev/fuse and kernel overlayfs");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let base = tmp.path();
    let low = base.join("low");
    std::fs::create_dir_all(&low)?;
    std::fs::write(low.join("bin"), b"elf")?;
    rustix::fs::setxattr(
        low.join("bin"),
        "security.capability",
        &NET_RAW_CAP,
        rustix::fs::XattrFlags::empty(),
    )?;
    let (k, f) = mount_both_rw(&[low], base)?;
    let kr = capability_ops(&k.dir);
    let fr = capability_ops(&f.dir);
    ensure_same_answers(&kr, &fr)?;
    // The cases mean something: the set value reads back, and a write drops it.
    ensure!(
        kr[4].1 == Ok(NET_RAW_CAP.to_vec()) && kr[6].1 == Err(libc::ENODATA),
        "kernel overlayfs: after the set {:?}, after the write {:?}",
        kr[4].1,
        kr[6].1
    );
    ensure!(
        kr[7].1 == Ok(NET_RAW_CAP.to_vec()),
        "kernel overlayfs reads the lower file's capabilities as {:?}",
        kr[7].1
    );
    Ok(())
}
