//! kill -9 at any point leaves a consistent store that the next run cleans up.

use lamina_tests::store::{Compress, TestStore, big_tar};
use std::io::Write;
use std::time::{Duration, Instant};

/// Killed while the tar is still arriving (through a fifo): no blob, no
/// image, fsck clean, the next import works.
#[test]
fn kill_during_ingest() {
    let s = TestStore::new();
    let t = s.scratch("big.tar");
    big_tar(&s.scratch("src"), &t, 200, 64 << 10, 3, Compress::None);
    let data = std::fs::read(&t).unwrap();
    let fifo = s.scratch("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    s.ok(&["images"]);
    let mut child = s
        .cmd(&["import", fifo.to_str().unwrap(), "crash"])
        .spawn()
        .unwrap();
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    w.write_all(&data[..data.len() / 2]).unwrap();
    // Wait until the import has taken in (most of) what we wrote, then kill.
    let start = Instant::now();
    while s
        .open()
        .content()
        .ingests()
        .unwrap()
        .first()
        .is_none_or(|i| i.offset < (data.len() / 4) as u64)
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "import did not start reading"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    drop(w);

    assert!(
        s.entries("blobs/sha256").is_empty(),
        "no partial blob is visible"
    );
    assert_eq!(
        s.json(&["images", "--format", "json"]),
        serde_json::json!([])
    );
    let fsck = s.json(&["fsck", "--format", "json"]);
    assert_eq!(fsck["problems"], serde_json::json!([]), "{fsck}");
    s.ok(&["import", t.to_str().unwrap(), "crash"]);
    s.ok(&["fsck"]);
}

/// Killed while the layer is being unpacked: the temp dir is removed by the
/// next open, no layer dir or image is half there, and re-importing works.
#[test]
fn kill_during_unpack() {
    let s = TestStore::new();
    let t = s.scratch("big.tar.gz");
    big_tar(&s.scratch("src"), &t, 3000, 16 << 10, 5, Compress::Gzip);
    s.ok(&["images"]);
    let mut killed_mid_unpack = false;
    for attempt in 0..5 {
        let mut child = s
            .cmd(&["import", t.to_str().unwrap(), "crash"])
            .spawn()
            .unwrap();
        let start = Instant::now();
        let mut seen = false;
        while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(120) {
            if s.entries("layers").iter().any(|n| n.contains(".tmp-")) {
                seen = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().ok();
        child.wait().unwrap();
        if seen {
            killed_mid_unpack = true;
            break;
        }
        eprintln!("attempt {attempt}: the import finished before we saw its temp dir");
        s.ok(&["rmi", "crash"]);
        s.ok(&["gc"]);
    }
    assert!(killed_mid_unpack, "never caught the import mid-unpack");
    // The next process cleans up on open.
    assert_eq!(
        s.json(&["images", "--format", "json"]),
        serde_json::json!([])
    );
    assert!(
        !s.entries("layers").iter().any(|n| n.contains(".tmp-")),
        "{:?}",
        s.entries("layers")
    );
    assert!(
        s.entries("layers").is_empty(),
        "no complete-looking layer: {:?}",
        s.entries("layers")
    );
    let fsck = s.json(&["fsck", "--format", "json"]);
    assert_eq!(fsck["problems"], serde_json::json!([]), "{fsck}");
    // The blob was complete: the re-import reuses it and unpacks again.
    s.ok(&["import", t.to_str().unwrap(), "crash"]);
    let dir = s.json(&["inspect", "crash"])["layers"][0]["dir"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        std::fs::read_dir(std::path::Path::new(&dir))
            .unwrap()
            .count(),
        100
    );
    s.ok(&["fsck"]);
}

/// kill -9 at pseudo-random moments of an import: after each, the store has
/// no problem, and the image is either fully there or absent.
#[test]
fn kill_at_random_moments() {
    let s = TestStore::new();
    let t = s.scratch("mid.tar.gz");
    big_tar(&s.scratch("src"), &t, 600, 16 << 10, 9, Compress::Gzip);
    s.ok(&["images"]);
    // Measure a whole import to spread the kills over it.
    let start = Instant::now();
    s.ok(&["import", t.to_str().unwrap(), "probe"]);
    let full = start.elapsed();
    s.ok(&["rmi", "probe"]);
    s.ok(&["gc"]);
    let mut seed = 0x9e3779b97f4a7c15u64;
    for round in 0..8 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = full.mul_f64((seed % 1000) as f64 / 1000.0 * 1.2);
        let mut child = s
            .cmd(&["import", t.to_str().unwrap(), "victim"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        child.kill().ok();
        child.wait().unwrap();
        let fsck = s.json(&["fsck", "--format", "json"]);
        assert_eq!(
            fsck["problems"],
            serde_json::json!([]),
            "round {round} ({delay:?}): {fsck}"
        );
        let images = s.json(&["images", "--format", "json"]);
        if let Some(img) = images.as_array().unwrap().first() {
            let inspect = s.json(&["inspect", img["id"].as_str().unwrap()]);
            let dir = std::path::PathBuf::from(inspect["layers"][0]["dir"].as_str().unwrap());
            let files: usize = std::fs::read_dir(&dir)
                .unwrap()
                .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
                .sum();
            assert_eq!(files, 600, "round {round}: a registered image is complete");
            s.ok(&["rmi", "victim"]);
        }
        // Alternate: sometimes collect between rounds, sometimes not.
        if round % 2 == 1 {
            s.ok(&["gc"]);
        }
    }
    s.ok(&["import", t.to_str().unwrap(), "final"]);
    s.ok(&["gc"]);
    let fsck = s.json(&["fsck", "--format", "json"]);
    assert_eq!(fsck["problems"], serde_json::json!([]), "{fsck}");
    // Only partial ingests of killed imports may stay (gc keeps them a day).
    for g in fsck["garbage"].as_array().unwrap() {
        assert!(g.as_str().unwrap().starts_with("partial ingest"), "{fsck}");
    }
}
