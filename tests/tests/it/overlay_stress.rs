//! Several processes change one lamina mount at once (random operations on
//! files that start in a lower layer, so copy-ups race with everything else).
//! The mount must stay up and the result must match a model of the
//! operations, through the mount, after a remount, and in the upper dir.

use anyhow::{Result, ensure};
use lamina_tests::overlay::{LaminaMount, fuse_available};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const WORKERS: usize = 4;
const OPS: usize = 150;

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    File(String),
    Dir,
    Link(String),
}

/// Generates a shell script of random operations inside `w<i>/` and the
/// tree it must leave behind.
fn script(i: usize, seed: u64, model: &mut BTreeMap<String, Kind>) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut s = String::from("set -e\n");
    for n in 0..OPS {
        let files: Vec<String> = model
            .iter()
            .filter(|(_, k)| matches!(k, Kind::File(_)))
            .map(|(p, _)| p.clone())
            .collect();
        let dirs: Vec<String> = model
            .iter()
            .filter(|(_, k)| **k == Kind::Dir)
            .map(|(p, _)| p.clone())
            .collect();
        let pick_dir = |rng: &mut StdRng| -> String {
            let mut d = vec![format!("w{i}")];
            d.extend(dirs.iter().cloned());
            d[rng.random_range(0..d.len())].clone()
        };
        match rng.random_range(0..8) {
            0 | 1 => {
                let p = format!("{}/f{n}", pick_dir(&mut rng));
                let c = format!("c{n}-{}", rng.random::<u32>());
                s += &format!("printf '%s' '{c}' > {p}\n");
                model.insert(p, Kind::File(c));
            }
            2 if !files.is_empty() => {
                let p = files[rng.random_range(0..files.len())].clone();
                let add = format!("+{n}");
                s += &format!("printf '%s' '{add}' >> {p}\n");
                if let Some(Kind::File(c)) = model.get_mut(&p) {
                    c.push_str(&add);
                }
            }
            3 => {
                let p = format!("{}/d{n}", pick_dir(&mut rng));
                s += &format!("mkdir {p}\n");
                model.insert(p, Kind::Dir);
            }
            4 if !files.is_empty() => {
                let p = files[rng.random_range(0..files.len())].clone();
                s += &format!("rm {p}\n");
                model.remove(&p);
            }
            5 if !files.is_empty() => {
                let from = files[rng.random_range(0..files.len())].clone();
                let to = format!("{}/m{n}", pick_dir(&mut rng));
                s += &format!("mv {from} {to}\n");
                let k = model.remove(&from).unwrap();
                model.insert(to, k);
            }
            6 if !dirs.is_empty() => {
                // Move a whole directory (maybe one from the lower layer).
                let from = dirs[rng.random_range(0..dirs.len())].clone();
                let to = format!("w{i}/r{n}");
                s += &format!("mv {from} {to}\n");
                let moved: Vec<(String, Kind)> = model
                    .iter()
                    .filter(|(p, _)| **p == from || p.starts_with(&format!("{from}/")))
                    .map(|(p, k)| (p.clone(), k.clone()))
                    .collect();
                for (p, k) in moved {
                    model.remove(&p);
                    model.insert(format!("{to}{}", &p[from.len()..]), k);
                }
            }
            7 => {
                let p = format!("{}/l{n}", pick_dir(&mut rng));
                s += &format!("ln -s target{n} {p}\n");
                model.insert(p, Kind::Link(format!("target{n}")));
            }
            _ => {}
        }
    }
    s
}

fn read_tree(root: &Path, sub: &str) -> Result<BTreeMap<String, Kind>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![sub.to_string()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(root.join(&d))? {
            let e = e?;
            let rel = format!("{d}/{}", e.file_name().to_string_lossy());
            let ft = e.file_type()?;
            let k = if ft.is_dir() {
                stack.push(rel.clone());
                Kind::Dir
            } else if ft.is_symlink() {
                Kind::Link(std::fs::read_link(e.path())?.to_string_lossy().into_owned())
            } else {
                Kind::File(std::fs::read_to_string(e.path())?)
            };
            out.insert(rel, k);
        }
    }
    Ok(out)
}

#[test]
fn concurrent_processes_leave_what_the_model_says() -> Result<()> {
    if !fuse_available() {
        eprintln!("SKIP overlay_stress: needs root and /dev/fuse");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let lower = tmp.path().join("lower");
    let mut models = Vec::new();
    for i in 0..WORKERS {
        let mut m = BTreeMap::new();
        for d in ["a", "a/b", "c"] {
            std::fs::create_dir_all(lower.join(format!("w{i}/{d}")))?;
            m.insert(format!("w{i}/{d}"), Kind::Dir);
        }
        for f in ["a/x", "a/b/y", "c/z", "top"] {
            std::fs::write(lower.join(format!("w{i}/{f}")), format!("lower {f}"))?;
            m.insert(format!("w{i}/{f}"), Kind::File(format!("lower {f}")));
        }
        models.push(m);
    }
    let (upper, work) = (tmp.path().join("upper"), tmp.path().join("work"));
    let mnt = tmp.path().join("mnt");
    {
        let m = LaminaMount::mount_with_fd_budget(
            std::slice::from_ref(&lower),
            Some((&upper, &work)),
            &mnt,
            Some(64),
        )?;
        let mut children = Vec::new();
        for (i, model) in models.iter_mut().enumerate() {
            let s = script(i, 0x5eed + i as u64, model);
            children.push(
                Command::new("sh")
                    .arg("-c")
                    .arg(s)
                    .current_dir(&m.dir)
                    .spawn()?,
            );
        }
        for mut c in children {
            ensure!(c.wait()?.success(), "a worker's operation failed");
        }
        ensure!(
            std::fs::read_dir(&m.dir).is_ok(),
            "the mount died under load"
        );
        for (i, model) in models.iter().enumerate() {
            ensure!(
                read_tree(&m.dir, &format!("w{i}"))? == *model,
                "worker {i}: the mount differs from the model"
            );
        }
    }
    let again = LaminaMount::mount(&[lower], Some((&upper, &work)), &tmp.path().join("mnt2"))?;
    for (i, model) in models.iter().enumerate() {
        ensure!(
            read_tree(&again.dir, &format!("w{i}"))? == *model,
            "worker {i}: after remount the tree differs from the model"
        );
    }
    Ok(())
}

/// The pid of the `lamina-overlayfs` server of mount point `dir`.
fn server_pid(dir: &Path) -> Option<u32> {
    let want = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        (args.first()?.ends_with("lamina-overlayfs") && args.contains(&want)).then_some(pid)
    })
}

/// Stats `paths` under `dir` from several threads at once, right after the mount.
fn stat_all(dir: &Path, paths: &[&str]) -> Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    for p in paths {
                        let md = std::fs::metadata(dir.join(p))
                            .map_err(|e| anyhow::anyhow!("stat {p} in a fresh mount: {e}"))?;
                        ensure!(md.is_file(), "{p} is a file");
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().unwrap())
    })
}

/// Two mount lifetimes back to back over one mount point and one upper/work
/// dir (what containerd does: ctr's temp mount, then the shim's): paths
/// through symlinks (`/bin -> usr/bin`) must resolve in each fresh mount.
/// The old server, ending after its unmount, used to `umount` the mount
/// point by path, and so took down the *new* mount (ENOENT for everything):
/// the first part makes that ordering certain by keeping the old mount
/// (lazily unmounted) alive until the new one is up; the loop runs the plain back-to-back case.
#[test]
fn remount_back_to_back() -> Result<()> {
    if !fuse_available() {
        eprintln!("SKIP overlay_stress::remount_back_to_back: needs root and /dev/fuse");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let (base, top) = (t.join("l1"), t.join("l2"));
    std::fs::create_dir_all(base.join("usr/bin"))?;
    std::fs::write(base.join("usr/bin/cat"), "cat")?;
    std::os::unix::fs::symlink("usr/bin", base.join("bin"))?;
    std::fs::create_dir_all(top.join("usr/bin"))?;
    std::fs::write(top.join("usr/bin/python3.11"), "py")?;
    std::os::unix::fs::symlink("python3.11", top.join("usr/bin/python3"))?;
    let lowers = [top.clone(), base.clone()];
    let (upper, work, mnt) = (t.join("u"), t.join("w"), t.join("m"));
    let up = Some((upper.as_path(), work.as_path()));
    let paths = ["bin/cat", "usr/bin/python3", "bin/python3"];

    // The old mount stays alive, lazily unmounted, while `hold` is open, so
    // its server ends only after the new mount is up.
    let old = LaminaMount::mount(&lowers, up, &mnt)?;
    stat_all(&mnt, &paths)?;
    let pid = server_pid(&mnt).ok_or_else(|| anyhow::anyhow!("no server for {mnt:?}"))?;
    let hold = std::fs::File::open(&mnt)?;
    run_ok(Command::new("umount").arg("-l").arg(&mnt))?;
    std::mem::forget(old);
    let new = LaminaMount::mount(&lowers, up, &mnt)?;
    drop(hold);
    for _ in 0..250 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ensure!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the old server (pid {pid}) ends once its mount is released"
    );
    stat_all(&mnt, &paths).map_err(|e| e.context("after the old server exited"))?;
    drop(new);

    for i in 0..60 {
        let m = LaminaMount::mount(&lowers, up, &mnt)?;
        stat_all(&mnt, &paths).map_err(|e| e.context(format!("round {i}")))?;
        drop(m);
    }
    Ok(())
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let st = cmd.status()?;
    ensure!(st.success(), "{cmd:?} failed");
    Ok(())
}
