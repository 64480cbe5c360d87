//! containerd's snapshots service (`containerd.services.snapshots.v1`) over
//! [`Snapshots`]: a proxy-plugin snapshotter.
//!
//! Mounts handed to containerd, for a snapshot over committed parents P1..Pn:
//!
//! | snapshot | `kernel` driver | `fuse` driver |
//! |---|---|---|
//! | active, no parent | `bind` of its upper, rw | same |
//! | active, parents | `overlay` lowerdir=P1:..:Pn,upperdir,workdir | `bind` of `snapshots/<id>/merged`, a FUSE overlay of the same dirs mounted by lamina (see [`merged`](super::merged)) |
//! | active, labelled as containerd's layer extraction | `overlay` | `overlay` (see below) |
//! | view, one parent | `bind` of P1, ro | same |
//! | view, parents | `overlay` lowerdir only | `bind` ro of `snapshots/<id>/merged`, a read-only FUSE overlay mounted by lamina |
//!
//! An extraction snapshot gets an `overlay` spec under both drivers: containerd
//! then writes the layer straight into the upper dir in overlay format (it
//! never mounts it), which is lamina's layer format; nothing goes through FUSE.
//! The first layer (no parent) is a bind of the upper, also written directly.
//!
//! A Prepare carrying containerd's remote-snapshotter labels (CRI's image
//! puller) whose layer lamina does not have yet is served by the fast path
//! of [`remote`]: lamina fetches and unpacks the layer itself, registers the
//! committed snapshot and answers AlreadyExists; on any failure it logs a
//! warning and prepares as usual. `lamina serve --no-fetch-layers` turns
//! this off.
//!
//! With the `fuse` driver a snapshot's overlay is mounted once, when it is
//! prepared, by a `lamina-overlayfs` server in its own session, and every
//! mount containerd makes of it (`ctr run` mounts the rootfs once to read
//! `/etc/group`, the shim once for runc) is a bind of that mount: one FUSE
//! server per container instead of one per mount, and containerd never runs
//! `mount.fuse3`. The FUSE servers are their own processes, so restarting
//! `lamina serve` leaves running containers alone.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use containerd_snapshots::{self as cs, api::types::Mount, tonic};

use super::filters;
use super::merged;
use super::remote;
use super::snapshots::{self, Kind, Record, Snapshots};

/// Which overlay containerd is told to mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Driver {
    /// lamina's FUSE overlay, through `mount.fuse3` and `lamina-overlayfs`.
    Fuse,
    /// Kernel overlayfs.
    Kernel,
}

/// The snapshotter containerd talks to.
pub struct Snapshotter {
    snapshots: Arc<Snapshots>,
    /// The image store committed snapshots are saved into as images.
    store: Arc<lamina_store::Store>,
    driver: Driver,
    /// `index=off` when the kernel knows the option: the same lower dirs
    /// are mounted by many overlays at once.
    overlay_index_off: bool,
    /// Mounts snapshots' FUSE overlays ahead (`fuse` driver).
    mounter: merged::Mounter,
    /// The remote fast path, when on (see [`remote`]).
    remote: Option<remote::Fetcher>,
}

impl Snapshotter {
    /// A snapshotter over `snapshots`, handing out `driver` mounts, saving
    /// committed snapshots as images in `store`.
    pub fn new(snapshots: Arc<Snapshots>, store: Arc<lamina_store::Store>, driver: Driver) -> Self {
        Snapshotter {
            snapshots,
            store,
            driver,
            overlay_index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
            mounter: merged::Mounter::new(),
            remote: None,
        }
    }

    /// Turns the remote fast path on: a Prepare labelled by containerd's
    /// remote-snapshotter handler fetches its layer through `fetcher`.
    pub fn with_remote(mut self, fetcher: remote::Fetcher) -> Self {
        self.remote = Some(fetcher);
        self
    }

    /// The remote fast path for a Prepare (see [`remote`]): `Ok(Some(name))`
    /// when the layer was fetched and registered as the committed snapshot
    /// `name` (the caller answers AlreadyExists), `Ok(None)` when the
    /// Prepare does not ask for it or the local fast path of
    /// [`Snapshots::create`] applies, an error when it failed (the caller
    /// logs it and prepares as usual).
    async fn fetch_remote(
        &self,
        key: &str,
        parent: &str,
        labels: &HashMap<String, String>,
    ) -> anyhow::Result<Option<String>> {
        let Some(fetcher) = &self.remote else {
            return Ok(None);
        };
        let Some(req) = remote::Request::from_labels(labels) else {
            return Ok(None);
        };
        let req = req?;
        let (k, p, target) = (key.to_owned(), parent.to_owned(), req.target.to_string());
        let ready = self
            .blocking(move |s| {
                // Already there (pulled, or fetched for another namespace),
                // or the key is taken: `create` answers as usual.
                if s.layer_dir(&target).is_dir() || s.stat(&k).is_ok() {
                    return Ok(None);
                }
                s.parent_chain(&p).map(Some)
            })
            .await?;
        let Some(parent_chain) = ready else {
            return Ok(None);
        };
        let parent_chain = parent_chain
            .as_deref()
            .map(lamina_store::Digest::parse)
            .transpose()?;
        // Held until the snapshot is registered: the store's GC cannot take
        // the fresh, still unreferenced layer meanwhile.
        let store = self.store.clone();
        let _lease = tokio::task::spawn_blocking(move || store.lease()).await??;
        fetcher.fetch(&req, parent_chain.as_ref()).await?;
        let (k, p, l, target) = (
            key.to_owned(),
            parent.to_owned(),
            labels.clone(),
            req.target.to_string(),
        );
        let name = self
            .blocking(move |s| s.commit_fetched_layer(&k, &p, &l, &target))
            .await?;
        if name.is_none() {
            anyhow::bail!("layer {} went away before it was registered", req.target);
        }
        Ok(name)
    }

    /// Runs a blocking snapshot operation off the async runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Snapshots) -> snapshots::Result<T> + Send + 'static,
    ) -> Result<T, tonic::Status> {
        let s = self.snapshots.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| tonic::Status::internal(format!("snapshot operation panicked: {e}")))?
            .map_err(status)
    }

    fn mounts_of(&self, s: &Snapshots, r: &Record) -> snapshots::Result<Vec<Mount>> {
        let lowers = s.lower_dirs(r.parent.as_deref())?;
        let join = |dirs: &[std::path::PathBuf]| {
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        };
        let bind = |dir: &Path, ro: bool| Mount {
            r#type: "bind".into(),
            source: dir.display().to_string(),
            target: String::new(),
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        };
        // Mounted ahead by lamina (fuse driver), except extraction snapshots,
        // which containerd writes directly (see the module doc).
        let ahead = self.driver == Driver::Fuse
            && snapshots::extraction_target(&r.key, &r.labels).is_none();
        let mount_ahead = |upper: Option<(&Path, &Path)>| {
            let merged = merged::merged_dir(&s.snapshot_dir(r.id));
            self.mounter
                .ensure(&merged, &lowers, upper)
                .map_err(|source| snapshots::Error::Io {
                    path: merged.clone(),
                    source,
                })?;
            Ok::<_, snapshots::Error>(merged)
        };
        let mut options = vec![];
        if self.overlay_index_off {
            options.push("index=off".to_owned());
        }
        let overlay = |options| {
            vec![Mount {
                r#type: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options,
            }]
        };
        let mounts = match (r.kind, lowers.len()) {
            (Kind::Committed, _) => {
                return Err(snapshots::Error::FailedPrecondition(format!(
                    "snapshot {:?} is committed: mount it through a View",
                    r.key
                )));
            }
            (Kind::Active, 0) => vec![bind(&s.fs_dir(r), false)],
            (Kind::View, 0) => vec![bind(&s.fs_dir(r), true)],
            (Kind::View, 1) => vec![bind(&lowers[0], true)],
            (Kind::View, _) if ahead => vec![bind(&mount_ahead(None)?, true)],
            (Kind::View, _) => {
                options.push(format!("lowerdir={}", join(&lowers)));
                overlay(options)
            }
            (Kind::Active, _) if ahead => {
                let (upper, work) = (s.fs_dir(r), s.work_dir(r));
                vec![bind(&mount_ahead(Some((&upper, &work)))?, false)]
            }
            (Kind::Active, _) => {
                options.push(format!("workdir={}", s.work_dir(r).display()));
                options.push(format!("upperdir={}", s.fs_dir(r).display()));
                options.push(format!("lowerdir={}", join(&lowers)));
                overlay(options)
            }
        };
        Ok(mounts)
    }

    async fn create(
        self: &Arc<Self>,
        key: String,
        parent: String,
        kind: Kind,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, tonic::Status> {
        let this = self.clone();
        self.blocking(move |s| {
            let r = s.create(&key, &parent, kind, labels)?;
            this.mounts_of(s, &r).inspect_err(|e| {
                // A failed call changes nothing: the new snapshot goes again
                // (a FUSE overlay that could not be mounted, a missing layer).
                tracing::warn!(key, "prepare failed after the snapshot was made: {e}");
                match s.remove(&key) {
                    Ok(dirs) => dirs.iter().for_each(|d| snapshots::remove_tree(d)),
                    Err(e) => tracing::warn!(key, "cannot undo the failed prepare: {e}"),
                }
            })
        })
        .await
    }
}

/// Logs a gRPC call's latency when dropped (debug, target
/// `lamina::service::snapshotter`): `op`, `key` and `elapsed_us`, timestamped
/// by the subscriber. `bench/containerd-bench.sh` reads these lines to split
/// a container start into its parts.
struct Timed {
    op: &'static str,
    key: String,
    start: Instant,
}

impl Timed {
    fn new(op: &'static str, key: &str) -> Self {
        Timed {
            op,
            key: key.to_owned(),
            start: Instant::now(),
        }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        tracing::debug!(
            op = self.op,
            key = self.key,
            elapsed_us = self.start.elapsed().as_micros() as u64,
            "snapshot call done"
        );
    }
}

/// containerd's error codes for snapshot errors.
fn status(e: snapshots::Error) -> tonic::Status {
    use snapshots::Error as E;
    let msg = e.to_string();
    match e {
        E::NotFound(_) => tonic::Status::not_found(msg),
        E::AlreadyExists(_) => tonic::Status::already_exists(msg),
        E::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
        E::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
        E::Db { .. } | E::Io { .. } | E::Store(_) => {
            tracing::error!("{msg}");
            tonic::Status::internal(msg)
        }
    }
}

fn info(r: Record) -> cs::Info {
    cs::Info {
        kind: match r.kind {
            Kind::View => cs::Kind::View,
            Kind::Active => cs::Kind::Active,
            Kind::Committed => cs::Kind::Committed,
        },
        name: r.key,
        parent: r.parent.unwrap_or_default(),
        labels: r.labels,
        created_at: r.created,
        updated_at: r.updated,
    }
}

/// The image name a committed snapshot is saved under:
/// `lamina.local/snapshots/<NAME>:latest`, where NAME is the name the user
/// gave `ctr snapshots commit` (containerd's metadata layer prefixes it with
/// `<namespace>/<n>/`), lowercased, with characters a repository name cannot
/// hold turned into `-`. `None` if nothing usable is left.
pub fn snapshot_image_name(name: &str) -> Option<String> {
    let user = name.splitn(3, '/').nth(2).unwrap_or(name);
    let repo: String = user
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.' | '_' | '-') => c,
            _ => '-',
        })
        .collect();
    let repo = repo.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let full = format!("lamina.local/snapshots/{repo}:latest");
    (!repo.is_empty() && lamina_store::reference::normalize(&full).is_ok()).then_some(full)
}

/// Saves the committed snapshot `r` (not a layer extraction) as an image in
/// `store`: its chain of dirs, bottom first, each written as a layer. A
/// failure is logged and leaves the commit in place: the snapshot is still a
/// parent containerd can use, only `lamina save` of it is not possible.
fn save_as_image(s: &Snapshots, store: &lamina_store::Store, r: &Record) {
    let Some(image) = snapshot_image_name(&r.key) else {
        tracing::warn!(
            name = r.key,
            "no image name can be made from this snapshot name: not saved as an image"
        );
        return;
    };
    let result = s.lower_dirs(r.parent.as_deref()).map(|lowers| {
        let mut dirs: Vec<_> = lowers.into_iter().rev().collect();
        dirs.push(s.fs_dir(r));
        dirs
    });
    let dirs = match result {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(name = r.key, "cannot list the snapshot's layers: {e}");
            return;
        }
    };
    let opts = lamina_store::archive::commit::CommitOptions {
        sparse: true,
        ..Default::default()
    };
    let created_by = format!("containerd snapshot commit {}", r.key);
    match lamina_store::archive::commit::commit_dirs(store, &dirs, &image, &created_by, &opts) {
        Ok(img) => {
            tracing::info!(name = r.key, image, id = %img.id, "committed snapshot saved as an image")
        }
        Err(e) => tracing::warn!(
            name = r.key,
            image,
            "saving the committed snapshot as an image failed: {e}"
        ),
    }
}

/// The gRPC face: `Arc<Snapshotter>` so creating mounts can reach the driver
/// from blocking tasks.
pub struct Service(pub Arc<Snapshotter>);

// The trait fixes `tonic::Status` (large) as the error type.
#[allow(clippy::result_large_err)]
#[tonic::async_trait]
impl cs::Snapshotter for Service {
    type Error = tonic::Status;

    async fn stat(&self, key: String) -> Result<cs::Info, Self::Error> {
        let _t = Timed::new("stat", &key);
        self.0.blocking(move |s| s.stat(&key)).await.map(info)
    }

    async fn update(
        &self,
        info_in: cs::Info,
        fieldpaths: Option<Vec<String>>,
    ) -> Result<cs::Info, Self::Error> {
        let key = info_in.name;
        let labels = info_in.labels;
        let paths = fieldpaths.unwrap_or_default();
        self.0
            .blocking(move |s| s.update(&key, labels, &paths))
            .await
            .map(info)
    }

    async fn usage(&self, key: String) -> Result<cs::Usage, Self::Error> {
        let u = self
            .0
            .blocking(move |s| {
                let r = s.stat(&key)?;
                if r.kind == Kind::View {
                    return Ok(snapshots::Usage::default());
                }
                snapshots::usage(&s.fs_dir(&r))
            })
            .await?;
        Ok(cs::Usage {
            inodes: u.inodes,
            size: u.size,
        })
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Self::Error> {
        let _t = Timed::new("mounts", &key);
        let this = self.0.clone();
        self.0
            .blocking(move |s| {
                let r = s.stat(&key)?;
                this.mounts_of(s, &r)
            })
            .await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Self::Error> {
        tracing::debug!(key, parent, ?labels, "prepare");
        let _t = Timed::new("prepare", &key);
        match self.0.fetch_remote(&key, &parent, &labels).await {
            Ok(Some(name)) => {
                return Err(tonic::Status::already_exists(format!(
                    "target snapshot {name:?} fetched by lamina"
                )));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                key,
                "remote fast path failed, containerd applies the layer itself: {e:#}"
            ),
        }
        self.0.create(key, parent, Kind::Active, labels).await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Self::Error> {
        tracing::debug!(key, parent, "view");
        let _t = Timed::new("view", &key);
        self.0.create(key, parent, Kind::View, labels).await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Self::Error> {
        tracing::debug!(name, key, "commit");
        let _t = Timed::new("commit", &key);
        let store = self.0.store.clone();
        self.0
            .blocking(move |s| {
                let r = s.commit(&name, &key, labels)?;
                // Committed: its upper is a lower now, nobody writes it
                // through lamina's overlay any more.
                merged::release(&s.snapshot_dir(r.id));
                if r.chain_id.is_none() {
                    save_as_image(s, &store, &r);
                }
                Ok(())
            })
            .await
    }

    async fn remove(&self, key: String) -> Result<(), Self::Error> {
        let _t = Timed::new("remove", &key);
        tracing::debug!(key, "remove");
        self.0
            .blocking(move |s| {
                for dir in s.remove(&key)? {
                    snapshots::remove_tree(&dir);
                }
                Ok(())
            })
            .await
    }

    async fn clear(&self) -> Result<(), Self::Error> {
        self.0
            .blocking(|s| {
                for dir in s.orphans()? {
                    snapshots::remove_tree(&dir);
                }
                Ok(())
            })
            .await
    }

    type InfoStream = futures::stream::Iter<std::vec::IntoIter<Result<cs::Info, tonic::Status>>>;

    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, Self::Error> {
        let records = self.0.blocking(|s| s.list()).await?;
        let infos: Vec<_> = records
            .into_iter()
            .filter(|r| filters::matches(&filters, r))
            .map(|r| Ok(info(r)))
            .collect();
        Ok(futures::stream::iter(infos))
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot_image_name;

    #[test]
    fn committed_snapshot_image_names() {
        assert_eq!(
            snapshot_image_name("default/12/t2-committed").as_deref(),
            Some("lamina.local/snapshots/t2-committed:latest")
        );
        assert_eq!(
            snapshot_image_name("default/3/My App:v1").as_deref(),
            Some("lamina.local/snapshots/my-app-v1:latest")
        );
        assert_eq!(
            snapshot_image_name("plain").as_deref(),
            Some("lamina.local/snapshots/plain:latest")
        );
        assert_eq!(snapshot_image_name("ns/1/@@@"), None);
    }
}
