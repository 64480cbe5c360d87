//! containerd as a judge of `lamina save` (it reads docker-archives and OCI
//! archives the way `docker load` does) and as a source for `lamina load`
//! (`ctr images export` writes what docker >= 25 writes: OCI layout plus
//! manifest.json).

use anyhow::{Result, ensure};
use lamina_store::Store;
use lamina_tests::archive::*;

#[test]
fn containerd_imports_lamina_saves_and_lamina_loads_containerd_exports() -> Result<()> {
    for tool in ["skopeo", "umoci", "tar"] {
        if !have(tool) {
            eprintln!("SKIP containerd round trip: `{tool}` is not installed (CI has it)");
            return Ok(());
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix("lamina-ctd-archive-")
        .tempdir()?;
    let work = tmp.path();
    // No lamina snapshotter is needed: containerd imports with its own.
    let Some(ctd) = lamina_tests::service::Containerd::start(&work.join("no-snapshotter.sock"))
    else {
        return Ok(());
    };
    let layout = umoci_image(work, "img", |r| {
        std::fs::create_dir_all(r.join("etc"))?;
        std::fs::write(r.join("etc/motd"), "from umoci\n")?;
        std::fs::write(r.join("bin-file"), vec![9u8; 10_000])?;
        std::fs::hard_link(r.join("bin-file"), r.join("bin-link"))?;
        Ok(())
    })?;
    let reference = snapshot(&umoci_unpack(&layout, "img", &work.join("ref"))?)?;
    let root = work.join("store");
    let oa = work.join("in.tar");
    skopeo_copy(
        &format!("oci:{}:img", layout.display()),
        &format!("oci-archive:{}:localhost/ctd/img:1", oa.display()),
    )?;
    lamina(&root, &["load", "-i", oa.to_str().unwrap()])?;
    let manifest = Store::open(&root)?
        .image("localhost/ctd/img:1")?
        .manifest_digest;

    let saved = work.join("saved.tar");
    lamina(
        &root,
        &["save", "localhost/ctd/img:1", "-o", saved.to_str().unwrap()],
    )?;
    ctd.ctr_ok(&["images", "import", saved.to_str().unwrap()])?;
    let ls = ctd.ctr_ok(&["images", "ls"])?;
    ensure!(
        ls.lines()
            .any(|l| l.contains("docker.io/localhost/ctd/img:1")
                || l.contains("localhost/ctd/img:1")),
        "containerd did not import the name: {ls}"
    );
    ensure!(
        ls.contains(manifest.as_str()),
        "containerd changed the manifest digest: {ls}"
    );

    let exported = work.join("ctr-export.tar");
    let name = ls
        .lines()
        .skip(1)
        .find(|l| l.contains("ctd/img:1"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    ctd.ctr_ok(&["images", "export", exported.to_str().unwrap(), &name])?;
    let root2 = work.join("store2");
    let out = lamina(&root2, &["load", "-i", exported.to_str().unwrap()])?;
    ensure!(out.contains("ctd/img:1"), "{out}");
    let img = Store::open(&root2)?.image(&name)?;
    ensure!(
        img.manifest_digest == manifest,
        "digest changed through containerd"
    );
    let tar = work.join("export.tar");
    lamina(&root2, &["export", &name, "-o", tar.to_str().unwrap()])?;
    let dir = work.join("exported");
    extract_tar(&tar, &dir)?;
    assert_same_tree(
        &reference,
        &snapshot(&dir)?,
        "lamina export of an image loaded from ctr export vs umoci",
    )
}
