//! lamina's patched fuser: the mount shows its subtype (`fuse.lamina`), and
//! FUSE-over-io_uring (`uring=on`) serves the same filesystem as /dev/fuse.
//!
//! The io_uring tests switch the kernel's opt-in on
//! (`/sys/module/fuse/parameters/enable_uring` = Y, left on: connections
//! made meanwhile by other tests then use io_uring too, as `uring=auto` is
//! the default) and skip loudly where the kernel has no FUSE io_uring. Each
//! checks through the server's io_uring fds (`/proc/PID/fdinfo`: completions
//! per ring) that the requests really went through io_uring.

use anyhow::{Context as _, Result, bail, ensure};
use lamina_tests::overlay::{
    KernelMount, LaminaMount, Tree, apply_changes_to_both, assert_same_tree, edge_layers,
    fuse_available, kernel_overlay_available, kernel_view_of_upper, run, run_pjdfstest, snapshot,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// The fstype field (after the ` - ` separator) of `dir`'s line in
/// /proc/self/mountinfo.
fn mount_fstype(dir: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = dir.to_str()?;
    info.lines().rev().find_map(|l| {
        let mut f = l.split(' ');
        let mp = f.nth(4)?;
        if mp != want {
            return None;
        }
        let rest = l.split(" - ").nth(1)?;
        rest.split(' ').next().map(str::to_string)
    })
}

#[test]
fn a_lamina_mount_shows_its_subtype() -> Result<()> {
    if !fuse_available() {
        eprintln!("SKIP overlay_uring: needs root and /dev/fuse");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let lower = lower_with(tmp.path(), &[("f", b"x")])?;
    let dir = tmp.path().join("mnt");
    let m = LaminaMount::mount(&[lower], None, &dir)?;
    let fstype = mount_fstype(&m.dir.canonicalize()?);
    ensure!(
        fstype.as_deref() == Some("fuse.lamina"),
        "fstype of {} in /proc/self/mountinfo: {fstype:?}, expected fuse.lamina",
        m.dir.display()
    );
    Ok(())
}

/// Turns the kernel's FUSE io_uring opt-in on; `false` (after saying why)
/// when this kernel has none or it cannot be set.
fn enable_uring(test: &str) -> bool {
    if !fuse_available() {
        eprintln!("SKIP overlay_uring::{test}: needs root and /dev/fuse");
        return false;
    }
    if !Path::new(ENABLE_URING).exists() {
        eprintln!(
            "SKIP overlay_uring::{test}: this kernel has no FUSE io_uring ({ENABLE_URING} missing; needs Linux 6.14+ with CONFIG_FUSE_IO_URING)"
        );
        return false;
    }
    if std::fs::read_to_string(ENABLE_URING).is_ok_and(|s| s.trim() == "Y") {
        return true;
    }
    if let Err(e) = std::fs::write(ENABLE_URING, "Y") {
        eprintln!("SKIP overlay_uring::{test}: cannot set {ENABLE_URING}: {e}");
        return false;
    }
    true
}

/// `lamina-overlayfs -o lowerdir=...[,upperdir,workdir],uring=MODE DIR`;
/// `mode` may carry more options (`on,uring_poll=0`).
fn mount_uring(
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    dir: &Path,
    mode: &str,
) -> Result<LaminaMount> {
    std::fs::create_dir_all(dir)?;
    let lower: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    let mut opts = format!("lowerdir={},uring={mode}", lower.join(":"));
    if let Some((u, w)) = upper {
        std::fs::create_dir_all(u)?;
        std::fs::create_dir_all(w)?;
        opts.push_str(&format!(
            ",upperdir={},workdir={}",
            u.display(),
            w.display()
        ));
    }
    run(Command::new(lamina_tests::bin("lamina-overlayfs"))
        .arg("-o")
        .arg(&opts)
        .arg(dir))?;
    Ok(LaminaMount {
        dir: dir.to_path_buf(),
    })
}

/// Makes `tmp/lower` holding `files` (name, content); returns its path.
fn lower_with(tmp: &Path, files: &[(&str, &[u8])]) -> Result<PathBuf> {
    let lower = tmp.join("lower");
    std::fs::create_dir_all(&lower)?;
    for (name, data) in files {
        std::fs::write(lower.join(name), data)?;
    }
    Ok(lower)
}

/// A read-write `uring=on` mount of `lower` at `tmp/MNT` over `tmp/UPPER`
/// and `tmp/WORK` (names given as `[UPPER, WORK, MNT]`).
fn mount_rw_on(tmp: &Path, lower: &Path, [upper, work, mnt]: [&str; 3]) -> Result<LaminaMount> {
    mount_uring(
        &[lower.to_path_buf()],
        Some((&tmp.join(upper), &tmp.join(work))),
        &tmp.join(mnt),
        "on",
    )
}

/// The pid of the `lamina-overlayfs` server of the mount at `dir`.
fn server_pid(dir: &Path) -> Result<u32> {
    let want = dir.as_os_str().as_encoded_bytes();
    for e in std::fs::read_dir("/proc")? {
        let e = e?;
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args
            .first()
            .is_some_and(|a| a.ends_with(b"lamina-overlayfs"))
            && args.contains(&want)
        {
            return Ok(pid);
        }
    }
    bail!("no lamina-overlayfs server for {}", dir.display())
}

/// Completions posted so far on each io_uring of `pid` (`CqTail` in fdinfo).
fn uring_completions(pid: u32) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let e = e?;
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:[io_uring]" {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))?;
        let tail = info
            .lines()
            .find_map(|l| l.strip_prefix("CqTail:"))
            .context("no CqTail in io_uring fdinfo")?;
        out.push(tail.trim().parse()?);
    }
    Ok(out)
}

fn possible_cpus() -> usize {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    s.trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap_or(0) + 1 - a.parse::<usize>().unwrap_or(0),
            None => 1,
        })
        .sum()
}

/// Runs `f` and returns how many requests the server of `dir` answered
/// through io_uring meanwhile (one completion per request).
fn uring_requests_during(dir: &Path, f: impl FnOnce() -> Result<()>) -> Result<u64> {
    let pid = server_pid(dir)?;
    let before: u64 = uring_completions(pid)?.iter().sum();
    f()?;
    let after: u64 = uring_completions(pid)?.iter().sum();
    Ok(after - before)
}

fn stat_missing(dir: &Path, n: usize) -> Result<()> {
    for i in 0..n {
        match std::fs::symlink_metadata(dir.join(format!("nope{i}"))) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => bail!("stat of a missing name: {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn uring_on_serves_requests_through_io_uring_and_off_does_not() -> Result<()> {
    if !enable_uring("uring_on_serves_requests_through_io_uring_and_off_does_not") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let lower = lower_with(tmp.path(), &[("f", b"lower\n")])?;

    let on = mount_uring(
        std::slice::from_ref(&lower),
        None,
        &tmp.path().join("on"),
        "on",
    )?;
    let pid = server_pid(&on.dir)?;
    let rings = uring_completions(pid)?;
    ensure!(
        !rings.is_empty() && rings.len() % possible_cpus() == 0,
        "uring=on: {} io_uring fds in the server, expected rings for each possible CPU ({})",
        rings.len(),
        possible_cpus()
    );
    let served = uring_requests_during(&on.dir, || stat_missing(&on.dir, 2000))?;
    ensure!(
        served >= 2000,
        "uring=on: 2000 lookups of missing names, but only {served} io_uring completions"
    );
    assert_eq!(std::fs::read_to_string(on.dir.join("f"))?, "lower\n");

    let off = mount_uring(&[lower], None, &tmp.path().join("off"), "off")?;
    let rings = uring_completions(server_pid(&off.dir)?)?;
    ensure!(
        rings.is_empty(),
        "uring=off: the server has {} io_uring fds",
        rings.len()
    );
    stat_missing(&off.dir, 100)?;
    Ok(())
}

/// Times the io_uring queue threads of `pid` went to sleep so far (their
/// voluntary context switches; a thread that polls and yields is not asleep).
fn uring_thread_sleeps(pid: u32) -> Result<u64> {
    let mut sleeps = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let t = t?.path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        if !comm.starts_with("fuser-uring-") {
            continue;
        }
        let status = std::fs::read_to_string(t.join("status"))?;
        let n = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .context("no voluntary_ctxt_switches in a thread's status")?;
        sleeps += n.trim().parse::<u64>()?;
    }
    Ok(sleeps)
}

/// CPU time (user + system, in clock ticks) `pid` has used so far.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the `(comm)`: state is field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

#[test]
fn uring_poll_serves_a_burst_without_sleeping_and_stops_when_idle() -> Result<()> {
    if !enable_uring("uring_poll_serves_a_burst_without_sleeping_and_stops_when_idle") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let lower = lower_with(tmp.path(), &[])?;
    const N: u64 = 2000;
    // Sleeps of the queue threads during a burst of N lookups, one caller.
    let sleeps_during_burst = |m: &LaminaMount| -> Result<u64> {
        let pid = server_pid(&m.dir)?;
        stat_missing(&m.dir, 10)?;
        let before = uring_thread_sleeps(pid)?;
        stat_missing(&m.dir, N as usize)?;
        Ok(uring_thread_sleeps(pid)? - before)
    };

    // Without polling a thread sleeps between two requests.
    let off = mount_uring(
        std::slice::from_ref(&lower),
        None,
        &tmp.path().join("nopoll"),
        "on,uring_poll=0",
    )?;
    let nopoll = sleeps_during_burst(&off)?;
    ensure!(
        nopoll >= N / 2,
        "uring_poll=0: the queue threads slept {nopoll} times for {N} requests; a thread that never polls sleeps before most of them"
    );

    // A window far longer than the gaps of a burst (even on a loaded
    // machine): the threads catch the next request while they poll.
    let poll = mount_uring(
        &[lower],
        None,
        &tmp.path().join("poll"),
        "on,uring_poll=100000",
    )?;
    let polled = sleeps_during_burst(&poll)?;
    ensure!(
        polled < N / 10,
        "uring_poll=100000: the queue threads slept {polled} times for {N} requests (without polling: {nopoll}); they should have polled through the burst"
    );

    // Once the burst is over every window runs out (100 ms at most) and the
    // threads sleep: an idle mount costs no CPU.
    std::thread::sleep(Duration::from_millis(500));
    let pid = server_pid(&poll.dir)?;
    let before = cpu_ticks(pid)?;
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid)? - before;
    ensure!(
        used <= 5,
        "an idle mount's server used {used} clock ticks of CPU in 1 s: its queue threads keep polling"
    );
    Ok(())
}

#[test]
fn uring_bad_value_is_ignored_and_auto_is_the_default() -> Result<()> {
    if !enable_uring("uring_bad_value_is_ignored_and_auto_is_the_default") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let lower = lower_with(tmp.path(), &[])?;
    // No uring option: auto, and the kernel offers it now.
    let m = LaminaMount::mount(&[lower], None, &tmp.path().join("m"))?;
    let served = uring_requests_during(&m.dir, || stat_missing(&m.dir, 500))?;
    ensure!(
        served >= 500,
        "uring=auto (default): {served} io_uring completions for 500 lookups"
    );
    Ok(())
}

fn no_times(t: Tree) -> Tree {
    t.no_times()
}

#[test]
fn uring_on_matches_kernel_overlayfs_before_and_after_writes() -> Result<()> {
    if !enable_uring("uring_on_matches_kernel_overlayfs_before_and_after_writes") {
        return Ok(());
    }
    if !kernel_overlay_available() {
        eprintln!("SKIP overlay_uring: needs kernel overlayfs");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let base = tmp.path();
    let layers = edge_layers(&base.join("layers"), false)?;
    let k = KernelMount::mount(&layers, Some((&base.join("ku"), &base.join("kw"))), &{
        std::fs::create_dir_all(base.join("ku"))?;
        std::fs::create_dir_all(base.join("kw"))?;
        base.join("k")
    })?;
    let f = mount_uring(
        &layers,
        Some((&base.join("fu"), &base.join("fw"))),
        &base.join("f"),
        "on",
    )?;
    let served = uring_requests_during(&f.dir, || {
        assert_same_tree(
            &snapshot(&k.dir)?,
            &snapshot(&f.dir)?,
            "merged view before writes (kernel vs lamina over io_uring)",
        )?;
        apply_changes_to_both(&k.dir, &f.dir).context("the same changes over io_uring")?;
        assert_same_tree(
            &no_times(snapshot(&k.dir)?),
            &no_times(snapshot(&f.dir)?),
            "merged view after the same writes (kernel vs lamina over io_uring)",
        )
    })?;
    ensure!(served > 100, "only {served} requests went through io_uring");
    drop(f);
    // lamina's upper, read back by the kernel, means what the kernel's does.
    let kview = kernel_view_of_upper(&base.join("ku"), &layers, &base.join("k2"))?;
    let fview = kernel_view_of_upper(&base.join("fu"), &layers, &base.join("f2"))?;
    assert_same_tree(&kview, &fview, "kernel views of the two upper dirs")
}

/// A shell script of creates, appends, renames, copy-ups and deletes in `w<i>`.
fn worker_script(i: usize) -> String {
    let mut s = format!("set -e\nmkdir -p w{i}\ncd w{i}\n");
    for n in 0..120 {
        s += &format!("printf 'c{n}' > f{n}\n");
        if n % 3 == 0 {
            s += &format!("printf '+{n}' >> f{}\n", n / 2);
        }
        if n % 5 == 0 {
            s += &format!("mkdir d{n}\nmv f{n} d{n}/moved\n");
        }
        if n % 7 == 0 && n > 0 {
            s += &format!("rm -f f{}\n", n - 1);
        }
        if n % 11 == 0 {
            s += &format!("printf 'up{n}' >> ../lower{i}/l{}\n", n % 4);
        }
        if n % 13 == 0 {
            s += &format!("mv d{} r{n}\n", (n / 5) * 5);
        }
    }
    s
}

#[test]
fn uring_on_stays_consistent_under_concurrent_processes() -> Result<()> {
    if !enable_uring("uring_on_stays_consistent_under_concurrent_processes") {
        return Ok(());
    }
    const WORKERS: usize = 6;
    let tmp = tempfile::tempdir()?;
    let lower = tmp.path().join("lower");
    let reference = tmp.path().join("reference");
    for root in [&lower, &reference] {
        for i in 0..WORKERS {
            std::fs::create_dir_all(root.join(format!("lower{i}")))?;
            for l in 0..4 {
                std::fs::write(root.join(format!("lower{i}/l{l}")), format!("lower {l}\n"))?;
            }
        }
    }
    let m = mount_rw_on(tmp.path(), &lower, ["u", "w", "m"])?;
    for i in 0..WORKERS {
        run(Command::new("sh")
            .arg("-c")
            .arg(worker_script(i))
            .current_dir(&reference))?;
    }
    let served = uring_requests_during(&m.dir, || {
        let children: Vec<_> = (0..WORKERS)
            .map(|i| {
                Command::new("sh")
                    .arg("-c")
                    .arg(worker_script(i))
                    .current_dir(&m.dir)
                    .output()
            })
            .collect::<std::io::Result<_>>()
            .map(|v: Vec<_>| v)?;
        for (i, out) in children.iter().enumerate() {
            ensure!(
                out.status.success(),
                "worker {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    });
    // The workers above ran one after another; now all at once.
    let served = served?
        + uring_requests_during(&m.dir, || {
            let procs: Vec<_> = (0..WORKERS)
                .map(|i| {
                    Command::new("sh")
                        .arg("-c")
                        .arg(format!(
                            "for n in $(seq 1 200); do printf x >> p{i}_$((n % 17)); \
                             stat nope{i}_$n 2>/dev/null || true; done"
                        ))
                        .current_dir(&m.dir)
                        .spawn()
                })
                .collect::<std::io::Result<_>>()
                .map(|v: Vec<_>| v)?;
            for mut p in procs {
                ensure!(p.wait()?.success(), "a concurrent worker failed");
            }
            Ok(())
        })?;
    for i in 0..WORKERS {
        for k in 0..17 {
            let want = (1..=200).filter(|n| n % 17 == k).count();
            std::fs::write(reference.join(format!("p{i}_{k}")), "x".repeat(want))?;
        }
    }
    ensure!(
        served > 1000,
        "only {served} requests went through io_uring"
    );
    assert_same_tree(
        &no_times(snapshot(&reference)?),
        &no_times(snapshot(&m.dir)?),
        "plain dir vs lamina over io_uring after the same operations",
    )
}

#[test]
fn uring_on_keeps_passthrough_reads_in_the_kernel() -> Result<()> {
    if !enable_uring("uring_on_keeps_passthrough_reads_in_the_kernel") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let data: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    let lower = lower_with(tmp.path(), &[("big", &data)])?;
    let m = mount_rw_on(tmp.path(), &lower, ["u", "w", "m"])?;
    let path = m.dir.join("big");
    let served = uring_requests_during(&m.dir, || {
        use std::io::Read;
        let mut f = std::fs::File::open(&path)?;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        ensure!(got == data, "data read through the mount differs");
        Ok(())
    })?;
    // 4096 reads of 4 KiB: with passthrough none reaches the server, only
    // lookup/open/release do.
    ensure!(
        (1..64).contains(&served),
        "16 MiB read in 4 KiB reads: {served} requests through io_uring (passthrough should keep reads in the kernel)"
    );
    // Writes through a passthrough file, then read back.
    std::fs::write(m.dir.join("new"), &data[..1 << 20])?;
    ensure!(std::fs::read(m.dir.join("new"))? == data[..1 << 20]);
    ensure!(std::fs::read(tmp.path().join("u/new"))? == data[..1 << 20]);
    Ok(())
}

#[test]
fn uring_on_unmount_ends_the_server() -> Result<()> {
    if !enable_uring("uring_on_unmount_ends_the_server") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let lower = lower_with(tmp.path(), &[("f", b"x")])?;
    for round in 0..3 {
        let m = mount_rw_on(tmp.path(), &lower, ["u", "w", "m"])?;
        let pid = server_pid(&m.dir)?;
        stat_missing(&m.dir, 50)?;
        // Keep a file open across the unmount request (lazy unmount).
        let open = std::fs::File::open(m.dir.join("f"))?;
        run(Command::new("umount").arg("-l").arg(&m.dir))?;
        drop(open);
        std::mem::forget(m);
        let t = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists() {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')) {
                break;
            }
            ensure!(
                t.elapsed() < Duration::from_secs(10),
                "round {round}: the server {pid} still runs 10 s after the unmount"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

#[test]
fn uring_on_passes_pjdfstest() -> Result<()> {
    if !enable_uring("uring_on_passes_pjdfstest") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let lower = lower_with(tmp.path(), &[])?;
    std::fs::create_dir(lower.join("from-lower"))?;
    let m = mount_rw_on(tmp.path(), &lower, ["upper", "work", "mnt"])?;
    let dir = m.dir.join("pjd");
    std::fs::create_dir(&dir)?;
    let mut summary = None;
    let served = uring_requests_during(&m.dir, || {
        summary = run_pjdfstest(&dir).context("pjdfstest over io_uring")?;
        Ok(())
    })?;
    if summary.is_none() {
        return Ok(());
    }
    eprintln!("pjdfstest on lamina over io_uring: {served} io_uring requests");
    ensure!(
        served > 1000,
        "only {served} requests went through io_uring"
    );
    Ok(())
}
