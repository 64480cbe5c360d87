//! A real containerd using `lamina serve` as its `lamina` proxy snapshotter:
//! pull, run, write, commit, restart, image removal and GC — once with
//! kernel overlay mounts and once with lamina's FUSE mounts.

use lamina_tests::service::{
    Containerd, LAYER2_CONTENT, LAYER2_FILE, Serve, dir_names, mount_type, runnable_images,
};
use std::path::Path;
use std::time::{Duration, Instant};

fn committed_keys(ctd: &Containerd) -> Vec<String> {
    let out = ctd
        .ctr_ok(&["snapshots", "--snapshotter", "lamina", "ls"])
        .unwrap();
    out.lines()
        .skip(1)
        .filter(|l| l.trim_end().ends_with("Committed"))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

fn pull_run_commit_gc(driver: &str) {
    lamina_tests::require_tools!("umoci", "skopeo", "containerd", "ctr", "runc");
    let Some(served) = runnable_images("lamina-svc-", &["lamina/svc:v1"]) else {
        return;
    };
    let (tmp, image) = (&served.tmp, served.images[0].clone());

    let root = tmp.path().join("root");
    let mut serve = Serve::start(&root, tmp.path(), driver, &[]).unwrap();
    let Some(ctd) = Containerd::start(&serve.snapshotter_socket) else {
        return;
    };
    let sn = ["--snapshotter", "lamina"];

    // Pull: every layer is unpacked through lamina and ends up as
    // layers/<chain id>, the chain ids containerd itself computed.
    ctd.ctr_ok(&[&["images", "pull", "--plain-http"][..], &sn, &[&image]].concat())
        .unwrap();
    let chains = committed_keys(&ctd);
    assert_eq!(
        chains.len(),
        2,
        "two layers, two committed snapshots: {chains:?}"
    );
    let mut hexes: Vec<String> = chains
        .iter()
        .map(|c| c.trim_start_matches("sha256:").to_owned())
        .collect();
    hexes.sort();
    assert_eq!(dir_names(&root.join("layers")), hexes);
    assert!(
        dir_names(&root.join("snapshots")).is_empty(),
        "no upper left after commit"
    );

    // Run: the second layer's file is there, the whiteout hides /bin/ls.
    let out = ctd
        .run(
            &["--rm"],
            &image,
            "t1",
            &[
                "/bin/sh",
                "-c",
                &format!("cat /{LAYER2_FILE}; test -e /bin/ls || echo ls-gone"),
            ],
        )
        .unwrap();
    assert_eq!(out, format!("{LAYER2_CONTENT}ls-gone\n"));

    // A file written in the container lands in its active snapshot's upper dir.
    ctd.run(
        &[],
        &image,
        "t2",
        &["/bin/sh", "-c", "echo written-in-t2 > /newfile"],
    )
    .unwrap();
    let uppers: Vec<_> = dir_names(&root.join("snapshots"))
        .into_iter()
        .map(|id| root.join("snapshots").join(id).join("fs/newfile"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(uppers.len(), 1, "exactly one upper holds /newfile");
    assert_eq!(
        std::fs::read_to_string(&uppers[0]).unwrap(),
        "written-in-t2\n"
    );

    // Commit it; the committed snapshot is a parent a new container sees.
    ctd.ctr_ok(&[&["snapshots"][..], &sn, &["commit", "t2-committed", "t2"]].concat())
        .unwrap();
    let err = ctd
        .ctr(&[&["snapshots"][..], &sn, &["commit", "t2-again", "t2"]].concat())
        .unwrap();
    assert!(!err.status.success(), "committing a gone key fails");

    // The commit is also an image lamina can save: skopeo reads the archive
    // and umoci's unpack of it has the file written in the container, over
    // the image's own layers (whiteout included).
    let saved_name = "lamina.local/snapshots/t2-committed:latest";
    let archive = tmp.path().join("t2.tar");
    lamina(
        &root,
        &["save", "-o", archive.to_str().unwrap(), saved_name],
    );
    let oci = tmp.path().join("t2-oci");
    lamina_tests::archive::skopeo_copy(
        &format!("docker-archive:{}", archive.display()),
        &format!("oci:{}:t2", oci.display()),
    )
    .unwrap();
    let rootfs =
        lamina_tests::archive::umoci_unpack(&oci, "t2", &tmp.path().join("t2-bundle")).unwrap();
    assert_eq!(
        std::fs::read_to_string(rootfs.join("newfile")).unwrap(),
        "written-in-t2\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join(LAYER2_FILE)).unwrap(),
        LAYER2_CONTENT
    );
    assert!(
        !rootfs.join("bin/ls").exists(),
        "the whiteout still hides /bin/ls"
    );
    // It is lamina's image now: removing it is lamina's business.
    lamina(&root, &["rmi", saved_name]);
    ctd.ctr_ok(&[&["snapshots"][..], &sn, &["prepare", "t3", "t2-committed"]].concat())
        .unwrap();
    let mounts = ctd
        .ctr_ok(&[&["snapshots"][..], &sn, &["mounts", "/tmp/unused", "t3"]].concat())
        .unwrap();
    if driver == "fuse" {
        // A bind of the FUSE overlay lamina mounted when t3 was prepared.
        assert!(mounts.contains("-t bind"), "fuse driver: {mounts}");
        let merged = mounts
            .split_whitespace()
            .find(|w| w.ends_with("/merged"))
            .unwrap_or_else(|| panic!("no merged dir in {mounts}"));
        let merged = Path::new(merged);
        assert_eq!(mount_type(merged).as_deref(), Some("fuse.lamina"));
        assert_eq!(
            std::fs::read_to_string(merged.join("newfile")).unwrap(),
            "written-in-t2\n"
        );
        assert_eq!(
            std::fs::read_to_string(merged.join(LAYER2_FILE)).unwrap(),
            LAYER2_CONTENT
        );
    } else {
        assert!(mounts.contains("-t overlay"), "kernel driver: {mounts}");
        assert!(
            mounts.contains("lowerdir="),
            "t3 sits on top of the committed layers: {mounts}"
        );
        assert!(
            mounts.contains(&hexes[0]) && mounts.contains(&hexes[1]),
            "{mounts}"
        );
    }

    // Restarting lamina keeps every snapshot and its contents, and leaves a
    // running container alone.
    ctd.run(&["-d"], &image, "t5", &["/bin/sleep", "600"])
        .unwrap();
    serve.restart().unwrap();
    let out = ctd
        .ctr_ok(&[
            "tasks",
            "exec",
            "--exec-id",
            "e1",
            "t5",
            "/bin/cat",
            &format!("/{LAYER2_FILE}"),
        ])
        .unwrap();
    assert_eq!(
        out, LAYER2_CONTENT,
        "the running container still reads its rootfs"
    );
    ctd.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "t5"])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctd
        .ctr(&["tasks", "rm", "t5"])
        .is_ok_and(|o| !o.status.success())
    {
        assert!(Instant::now() < deadline, "t5 stops");
        std::thread::sleep(Duration::from_millis(100));
    }
    ctd.ctr_ok(&["containers", "rm", "t5"]).unwrap();
    let usage = ctd
        .ctr_ok(&[&["snapshots"][..], &sn, &["usage", "t2-committed"]].concat())
        .unwrap();
    assert!(usage.contains("t2-committed"), "{usage}");
    let out = ctd
        .run(
            &["--rm"],
            &image,
            "t4",
            &["/bin/cat", &format!("/{LAYER2_FILE}")],
        )
        .unwrap();
    assert_eq!(out, LAYER2_CONTENT);

    // Remove everything containerd holds; its GC makes lamina delete the dirs.
    ctd.ctr_ok(&[&["snapshots"][..], &sn, &["rm", "t3"]].concat())
        .unwrap();
    ctd.ctr_ok(&[&["snapshots"][..], &sn, &["rm", "t2-committed"]].concat())
        .unwrap();
    ctd.ctr_ok(&["containers", "rm", "t2"]).unwrap();
    ctd.ctr_ok(&["images", "rm", "--sync", &image]).unwrap();
    // `--sync` makes containerd collect now rather than on its adaptive
    // schedule (which backs off under load); lamina then removes the dirs
    // as the snapshot Remove calls arrive.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let layers = dir_names(&root.join("layers"));
        let snaps = dir_names(&root.join("snapshots"));
        if layers.is_empty() && snaps.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "GC left layers {layers:?} snapshots {snaps:?}\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(serve.alive(), "lamina serve survived: {}", serve.log());
}

#[test]
fn containerd_with_kernel_overlay_mounts() {
    pull_run_commit_gc("kernel");
}

#[test]
fn containerd_with_fuse_mounts() {
    pull_run_commit_gc("fuse");
}

fn inode(p: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap())
}

fn lamina(root: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(lamina_tests::bin("lamina"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lamina {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A layer containerd pulled through lamina and the same layer `lamina pull`
/// wants are one dir, in both orders; each side's removal keeps what the
/// other still uses.
#[test]
fn containerd_and_lamina_pull_share_layer_dirs() {
    lamina_tests::require_tools!("umoci", "skopeo", "containerd", "ctr", "runc");
    let Some(served) = runnable_images("lamina-svc-share-", &["lamina/a:v1", "lamina/b:v1"]) else {
        return;
    };
    let tmp = &served.tmp;
    let (img_a, img_b) = (served.images[0].clone(), served.images[1].clone());
    let root = tmp.path().join("root");
    let serve = Serve::start(&root, tmp.path(), "fuse", &[]).unwrap();
    let Some(ctd) = Containerd::start(&serve.snapshotter_socket) else {
        return;
    };
    let sn = ["--snapshotter", "lamina"];

    // containerd first, then lamina: lamina adopts containerd's dirs.
    ctd.ctr_ok(&[&["images", "pull", "--plain-http"][..], &sn, &[&img_a]].concat())
        .unwrap();
    let layers = root.join("layers");
    let dirs = dir_names(&layers);
    assert_eq!(dirs.len(), 2);

    // What containerd's applier wrote through lamina's extraction mounts is
    // what `lamina pull` unpacks on its own (another root): names, kinds,
    // modes, owners, content, xattrs, file mtimes, hardlinks, whiteouts. Only
    // a whiteout's own mtime may differ (containerd leaves the device's
    // creation time): no overlay ever shows it.
    let alone = tmp.path().join("alone");
    lamina(&alone, &["pull", &img_a]);
    assert_eq!(dir_names(&alone.join("layers")), dirs);
    let tree = |dir: &Path| {
        let mut t = lamina_tests::tree::snapshot(dir, Default::default()).unwrap();
        for n in t.nodes.values_mut() {
            if n.kind == "char" && n.detail == "0:0" {
                n.mtime = None;
            }
        }
        t
    };
    for d in &dirs {
        let by_lamina = tree(&alone.join("layers").join(d));
        assert!(
            by_lamina.nodes.len() > 3,
            "{d}: {:?}",
            by_lamina.nodes.keys()
        );
        let by_containerd = tree(&layers.join(d));
        lamina_tests::tree::assert_same(&by_lamina, &by_containerd, &format!("layer {d}")).unwrap();
    }
    let inodes: Vec<u64> = dirs.iter().map(|d| inode(&layers.join(d))).collect();
    lamina(&root, &["pull", &img_a]);
    assert_eq!(dir_names(&layers), dirs, "no second copy");
    let again: Vec<u64> = dirs.iter().map(|d| inode(&layers.join(d))).collect();
    assert_eq!(inodes, again, "the very same dirs");

    // containerd drops its image: the dirs stay, lamina's image uses them.
    ctd.ctr_ok(&["images", "rm", "--sync", &img_a]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(dir_names(&layers), dirs, "kept for lamina's image");
    lamina(
        &root,
        &[
            "mount",
            &img_a,
            tmp.path().join("m").to_str().unwrap(),
            "--driver",
            "kernel",
        ],
    );
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("m").join(LAYER2_FILE)).unwrap(),
        LAYER2_CONTENT
    );
    lamina(&root, &["umount", tmp.path().join("m").to_str().unwrap()]);

    // lamina first (image b has the same layers), then containerd: the
    // extraction is committed onto the existing dirs.
    ctd.ctr_ok(&[&["images", "pull", "--plain-http"][..], &sn, &[&img_b]].concat())
        .unwrap();
    assert_eq!(dir_names(&layers), dirs);
    let again: Vec<u64> = dirs.iter().map(|d| inode(&layers.join(d))).collect();
    assert_eq!(
        inodes, again,
        "containerd's copy was dropped, the store's dir kept"
    );
    assert!(dir_names(&root.join("snapshots")).is_empty());

    // lamina drops its image and collects: containerd's snapshots keep the dirs.
    lamina(&root, &["rmi", &img_a]);
    lamina(&root, &["gc"]);
    assert_eq!(dir_names(&layers), dirs, "held by containerd's snapshots");
    let out = ctd
        .run(
            &["--rm"],
            &img_b,
            "t1",
            &["/bin/cat", &format!("/{LAYER2_FILE}")],
        )
        .unwrap();
    assert_eq!(out, LAYER2_CONTENT);

    // Both gone: the dirs go.
    ctd.ctr_ok(&["images", "rm", "--sync", &img_b]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !dir_names(&layers).is_empty() {
        assert!(
            Instant::now() < deadline,
            "layers collected: {}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
