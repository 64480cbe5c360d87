//! Snapshot records: containerd's snapshot model (keys, parents, kinds,
//! labels) mapped onto lamina's own directories.
//!
//! ```text
//! <root>/snapshots.db            SQLite (WAL): one row per snapshot, see SCHEMA
//! <root>/snapshots/<id>/fs       an active snapshot's writable upper dir (empty for a view)
//! <root>/snapshots/<id>/work     its overlay work dir
//! <root>/snapshots/<id>/merged   with `--driver fuse`: its FUSE overlay, mounted ahead
//! <root>/layers/<chainid hex>/   a committed snapshot whose chain id is known: the very
//!                                layer dir `lamina pull` unpacks into, shared by both
//! ```
//!
//! Invariants:
//! - A committed snapshot with a chain id lives in `layers/<hex>`; one without (a
//!   commit of arbitrary changes) keeps its `snapshots/<id>/fs`.
//! - The chain id of a commit is taken from containerd's unpacker: the active
//!   snapshot was prepared with the label `containerd.io/snapshot.ref` naming the
//!   chain id, and the commit name ends with that same chain id (containerd has
//!   verified the layer's diff id while applying it). Nothing else is trusted.
//! - Every change is one DB transaction, done before the directory work; the
//!   directory work is redone or undone by [`Snapshots::open`] after a crash:
//!   committed rows whose `layers/<hex>` is missing get their upper renamed in,
//!   `snapshots/<id>` dirs without a row are deleted.
//! - A `layers/<hex>` dir is deleted on Remove only when no other snapshot row
//!   names it and the lamina image store does not use it.
//! - All operations hold one mutex, so concurrent gRPC calls are serialised; the
//!   slow parts (deleting trees, measuring usage) run after it is released.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

/// The label containerd's unpacker puts on the snapshot it extracts a layer
/// into: the chain id the committed snapshot will have.
pub const LABEL_TARGET: &str = "containerd.io/snapshot.ref";

const SCHEMA: &[&str] = &[
    // 1: snapshot rows. `parent` is the parent's key; `chain_id` is set on
    // committed snapshots stored as lamina layer dirs.
    "CREATE TABLE snapshots (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        parent TEXT,
        kind INTEGER NOT NULL,
        labels TEXT NOT NULL,
        chain_id TEXT,
        created_ns INTEGER NOT NULL,
        updated_ns INTEGER NOT NULL
    );
    CREATE INDEX snapshots_parent ON snapshots(parent);
    CREATE INDEX snapshots_chain ON snapshots(chain_id);",
];

/// A snapshot's kind, numbered as in containerd's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A read-only view of a committed parent.
    View = 1,
    /// A writable snapshot.
    Active = 2,
    /// An immutable snapshot other snapshots can descend from.
    Committed = 3,
}

impl Kind {
    fn from_i64(v: i64) -> Kind {
        match v {
            1 => Kind::View,
            2 => Kind::Active,
            _ => Kind::Committed,
        }
    }
}

/// One snapshot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Record {
    /// Row id, names `snapshots/<id>`.
    pub id: i64,
    /// The key (for committed snapshots, the name) containerd knows it by.
    pub key: String,
    /// The parent's key, if any.
    pub parent: Option<String>,
    /// Active, view or committed.
    pub kind: Kind,
    /// containerd labels.
    pub labels: HashMap<String, String>,
    /// For committed snapshots stored as a lamina layer: `sha256:<hex>`.
    pub chain_id: Option<String>,
    /// Creation time.
    #[serde(skip)]
    pub created: SystemTime,
    /// Last update.
    #[serde(skip)]
    pub updated: SystemTime,
}

/// How a snapshot operation failed, in containerd's terms.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No snapshot with that key.
    #[error("snapshot {0:?} not found")]
    NotFound(String),
    /// The key or name is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The snapshot is not in a state that allows the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// The DB failed.
    #[error("snapshot database {path}: {source}")]
    Db {
        /// The DB file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// lamina's image store failed.
    #[error("image store: {0}")]
    Store(String),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Result of snapshot operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Disk usage of one snapshot, excluding its parents.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Usage {
    /// Allocated bytes (st_blocks * 512, hard links counted once).
    pub size: i64,
    /// Inodes.
    pub inodes: i64,
}

/// The snapshot records of one lamina root.
pub struct Snapshots {
    root: PathBuf,
    db_path: PathBuf,
    conn: Mutex<Connection>,
    layers: Box<dyn LayerStore>,
}

/// Who else owns `layers/`: the snapshotter holds a reference on every layer
/// dir a committed snapshot uses, so the image store's GC keeps it, and gives
/// it back when the last such snapshot goes.
pub trait LayerStore: Send + Sync {
    /// Takes the snapshotter's reference on `chain_id`, then runs `place`
    /// (which makes sure `layers/<hex>` exists) while the store cannot
    /// collect it.
    fn hold(&self, chain_id: &str, place: &mut dyn FnMut() -> Result<()>) -> Result<()>;
    /// Drops the reference: the dir goes once nothing else uses it.
    fn release(&self, chain_id: &str) -> Result<()>;
    /// The chain ids the snapshotter holds references on.
    fn held(&self) -> Result<Vec<String>> {
        Ok(vec![])
    }
}

/// Layer dirs owned by the snapshotter alone (no image store): released
/// dirs are deleted at once. For tests of the records on their own.
#[cfg(test)]
pub struct OwnLayers {
    /// The store root.
    pub root: PathBuf,
}

#[cfg(test)]
impl LayerStore for OwnLayers {
    fn hold(&self, _chain_id: &str, place: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        place()
    }

    fn release(&self, chain_id: &str) -> Result<()> {
        let hex = chain_id.strip_prefix("sha256:").unwrap_or(chain_id);
        let layer = self.root.join("layers").join(hex);
        // Renamed away first, so nobody sees a half-deleted layer.
        let trash = self.root.join("snapshots").join(format!("removing-{hex}"));
        match std::fs::rename(&layer, &trash) {
            Ok(()) => remove_tree(&trash),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&layer)(e)),
        }
        Ok(())
    }
}

impl Snapshots {
    /// Opens (creating if needed) the records under `root`, and finishes or
    /// undoes the directory work of operations a crash interrupted.
    pub fn open(root: &Path, layers: Box<dyn LayerStore>) -> Result<Self> {
        for dir in [root.join("snapshots"), root.join("layers")] {
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        let db_path = root.join("snapshots.db");
        let db = |source| Error::Db {
            path: db_path.clone(),
            source,
        };
        let mut conn = Connection::open(&db_path).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(db)?;
        migrate(&mut conn).map_err(db)?;
        let s = Snapshots {
            root: root.to_owned(),
            db_path: db_path.clone(),
            conn: Mutex::new(conn),
            layers,
        };
        s.recover()?;
        Ok(s)
    }

    fn db(&self) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        move |source| Error::Db {
            path: self.db_path.clone(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-done transaction
        // (SQLite rolls it back), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `snapshots/<id>`.
    pub fn snapshot_dir(&self, id: i64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// `layers/<hex>` for a chain id `sha256:<hex>`.
    pub fn layer_dir(&self, chain_id: &str) -> PathBuf {
        self.root
            .join("layers")
            .join(chain_id.strip_prefix("sha256:").unwrap_or(chain_id))
    }

    /// The directory holding a snapshot's own files (its upper dir).
    pub fn fs_dir(&self, r: &Record) -> PathBuf {
        match &r.chain_id {
            Some(chain) => self.layer_dir(chain),
            None => self.snapshot_dir(r.id).join("fs"),
        }
    }

    /// The overlay work dir of an active snapshot.
    pub fn work_dir(&self, r: &Record) -> PathBuf {
        self.snapshot_dir(r.id).join("work")
    }

    /// Looks a snapshot up by key.
    pub fn stat(&self, key: &str) -> Result<Record> {
        let conn = self.lock();
        get(&conn, key)
            .map_err(self.db())?
            .ok_or_else(|| Error::NotFound(key.to_owned()))
    }

    /// The dirs of a snapshot's committed ancestors, nearest first: the
    /// `lowerdir` of an overlay over `parent`.
    pub fn lower_dirs(&self, parent: Option<&str>) -> Result<Vec<PathBuf>> {
        let conn = self.lock();
        let mut dirs = Vec::new();
        let mut next = parent.map(str::to_owned);
        while let Some(key) = next {
            let r = get(&conn, &key)
                .map_err(self.db())?
                .ok_or_else(|| Error::NotFound(key.clone()))?;
            dirs.push(self.fs_dir(&r));
            next = r.parent;
            if dirs.len() > 500 {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot chain under {key:?} is deeper than 500: refusing (a cycle?)"
                )));
            }
        }
        Ok(dirs)
    }

    /// Creates an active or view snapshot over `parent` (empty: none).
    ///
    /// Fast path: an active snapshot labelled as containerd's extraction of
    /// chain id X, when `layers/X` already exists (lamina pulled that layer),
    /// becomes a committed snapshot at once and the call fails with
    /// AlreadyExists, which tells containerd not to apply the layer.
    pub fn create(
        &self,
        key: &str,
        parent: &str,
        kind: Kind,
        labels: HashMap<String, String>,
    ) -> Result<Record> {
        if key.is_empty() {
            return Err(Error::InvalidArgument(
                "snapshot key must not be empty".into(),
            ));
        }
        let conn = self.lock();
        if get(&conn, key).map_err(self.db())?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "snapshot {key:?} already exists"
            )));
        }
        let parent = if parent.is_empty() {
            None
        } else {
            let p = get(&conn, parent)
                .map_err(self.db())?
                .ok_or_else(|| Error::NotFound(parent.to_owned()))?;
            if p.kind != Kind::Committed {
                return Err(Error::InvalidArgument(format!(
                    "parent {parent:?} is not a committed snapshot"
                )));
            }
            Some(p)
        };
        let now = now_ns();
        if kind == Kind::Active
            && let Some(target) = labels.get(LABEL_TARGET).filter(|t| is_digest(t))
            && parent.as_ref().is_none_or(|p| p.chain_id.is_some())
            && self.commit_existing_layer(&conn, key, parent.as_ref(), &labels, target)?
        {
            tracing::info!(
                key,
                target,
                "layer already in the store: committed without extraction"
            );
            return Err(Error::AlreadyExists(format!(
                "target snapshot {target:?} already exists in lamina's store"
            )));
        }
        let tx = conn.unchecked_transaction().map_err(self.db())?;
        tx.execute(
            "INSERT INTO snapshots (key, parent, kind, labels, chain_id, created_ns, updated_ns)
             VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?5)",
            params![
                key,
                parent.as_ref().map(|p| &p.key),
                kind as i64,
                labels_json(&labels),
                now
            ],
        )
        .map_err(self.db())?;
        let record = get(&tx, key)
            .map_err(self.db())?
            .ok_or_else(|| Error::NotFound(key.to_owned()))?;
        let dir = self.snapshot_dir(record.id);
        let made = (|| {
            std::fs::create_dir(&dir)?;
            std::fs::create_dir(dir.join("fs"))?;
            if kind == Kind::Active {
                std::fs::create_dir(dir.join("work"))?;
            }
            Ok(())
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(io_err(&dir)(e));
        }
        tx.commit().map_err(self.db())?;
        Ok(record)
    }

    /// The remote fast path's registration (see
    /// [`remote`](super::remote)): `layers/<target>` was just fetched by
    /// lamina for the Prepare of `key` over `parent`; records it as a
    /// committed snapshot with `parent` and `labels`, named `target` (the
    /// `containerd.io/snapshot.ref` value, as stargz-snapshotter names it) or,
    /// when a concurrent Prepare of the same layer took that name first,
    /// `key` (as the local fast path of [`Snapshots::create`] does; containerd
    /// finds either by label and parent). Returns the name, or `None` when the
    /// layer dir is gone (collected meanwhile): the caller then prepares as
    /// usual. Fails like `create` on a taken key or a bad parent, and with
    /// FailedPrecondition when the parent is not a lamina layer.
    pub fn commit_fetched_layer(
        &self,
        key: &str,
        parent: &str,
        labels: &HashMap<String, String>,
        target: &str,
    ) -> Result<Option<String>> {
        if key.is_empty() || !is_digest(target) {
            return Err(Error::InvalidArgument(format!(
                "cannot register fetched layer {target:?} under key {key:?}"
            )));
        }
        let conn = self.lock();
        if get(&conn, key).map_err(self.db())?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "snapshot {key:?} already exists"
            )));
        }
        let parent = self.fetch_parent(&conn, parent)?;
        let name = if get(&conn, target).map_err(self.db())?.is_none() {
            target
        } else {
            key
        };
        let done = self.commit_existing_layer(&conn, name, parent.as_ref(), labels, target)?;
        Ok(done.then(|| name.to_owned()))
    }

    /// The chain id a fetched layer goes on: `None` for no parent, the
    /// parent's chain id when it is a committed lamina layer.
    pub fn parent_chain(&self, parent: &str) -> Result<Option<String>> {
        let conn = self.lock();
        Ok(self.fetch_parent(&conn, parent)?.and_then(|p| p.chain_id))
    }

    /// `parent` as the parent of a fetched layer: absent (empty), or a
    /// committed snapshot kept as a lamina layer.
    fn fetch_parent(&self, conn: &Connection, parent: &str) -> Result<Option<Record>> {
        if parent.is_empty() {
            return Ok(None);
        }
        let p = get(conn, parent)
            .map_err(self.db())?
            .ok_or_else(|| Error::NotFound(parent.to_owned()))?;
        if p.kind != Kind::Committed || p.chain_id.is_none() {
            return Err(Error::FailedPrecondition(format!(
                "parent {parent:?} is not a committed lamina layer: the layer above it cannot be fetched"
            )));
        }
        Ok(Some(p))
    }

    /// The fast path of [`Snapshots::create`]: when `layers/<target>` exists,
    /// records `key` as a committed snapshot on it and returns true.
    fn commit_existing_layer(
        &self,
        conn: &Connection,
        key: &str,
        parent: Option<&Record>,
        labels: &HashMap<String, String>,
        target: &str,
    ) -> Result<bool> {
        let layer = self.layer_dir(target);
        if !layer.is_dir() {
            return Ok(false);
        }
        let mut present = false;
        self.layers.hold(target, &mut || {
            present = layer.is_dir();
            Ok(())
        })?;
        if !present {
            // Collected between the check and the hold: extract as usual.
            self.release_if_unused(conn, target)?;
            return Ok(false);
        }
        conn.execute(
            "INSERT INTO snapshots (key, parent, kind, labels, chain_id, created_ns, updated_ns)
             VALUES (?1, ?2, 3, ?3, ?4, ?5, ?5)",
            params![
                key,
                parent.map(|p| &p.key),
                labels_json(labels),
                target,
                now_ns()
            ],
        )
        .map_err(self.db())?;
        Ok(true)
    }

    /// Turns active snapshot `key` into committed snapshot `name`.
    pub fn commit(&self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<Record> {
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "commit name must not be empty".into(),
            ));
        }
        let conn = self.lock();
        let active = get(&conn, key)
            .map_err(self.db())?
            .ok_or_else(|| Error::NotFound(key.to_owned()))?;
        if active.kind != Kind::Active {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is not active: only active snapshots can be committed"
            )));
        }
        if get(&conn, name).map_err(self.db())?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "snapshot {name:?} already exists"
            )));
        }
        let parent_chain = match &active.parent {
            Some(p) => get(&conn, p).map_err(self.db())?.and_then(|p| p.chain_id),
            None => None,
        };
        let chain_id = extraction_target(&active.key, &active.labels)
            .filter(|t| name.ends_with(t))
            .filter(|_| active.parent.is_none() || parent_chain.is_some())
            .map(str::to_owned);
        let mut labels = labels;
        if let Some(chain) = &chain_id {
            labels
                .entry(LABEL_TARGET.to_owned())
                .or_insert_with(|| chain.clone());
        }
        conn.execute(
            "UPDATE snapshots SET key = ?1, kind = 3, labels = ?2, chain_id = ?3, updated_ns = ?4
             WHERE id = ?5",
            params![name, labels_json(&labels), chain_id, now_ns(), active.id],
        )
        .map_err(self.db())?;
        let committed = get(&conn, name)
            .map_err(self.db())?
            .ok_or_else(|| Error::NotFound(name.to_owned()))?;
        if committed.chain_id.is_some() {
            self.adopt_upper(&committed)?;
        }
        drop(conn);
        Ok(committed)
    }

    /// Moves a committed snapshot's upper into `layers/<chain>`, or drops it
    /// when that layer is already there (pulled by lamina or another
    /// namespace). Idempotent: recovery calls it again after a crash.
    fn adopt_upper(&self, r: &Record) -> Result<()> {
        let Some(chain) = &r.chain_id else {
            return Ok(());
        };
        let dir = self.snapshot_dir(r.id);
        let upper = dir.join("fs");
        let layer = self.layer_dir(chain);
        self.layers.hold(chain, &mut || {
            if upper.exists() && !layer.exists() {
                match std::fs::rename(&upper, &layer) {
                    Ok(()) => {}
                    // Someone else put the same layer there first: theirs wins.
                    Err(e) if layer.exists() => tracing::debug!("{}: {e}", layer.display()),
                    Err(e) => return Err(io_err(&layer)(e)),
                }
            }
            Ok(())
        })?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(())
    }

    /// Removes a snapshot that has no children; returns the dirs to delete
    /// (the caller deletes them, outside the lock).
    pub fn remove(&self, key: &str) -> Result<Vec<PathBuf>> {
        let conn = self.lock();
        let r = get(&conn, key)
            .map_err(self.db())?
            .ok_or_else(|| Error::NotFound(key.to_owned()))?;
        let children: i64 = conn
            .query_row(
                "SELECT count(*) FROM snapshots WHERE parent = ?1",
                [key],
                |row| row.get(0),
            )
            .map_err(self.db())?;
        if children > 0 {
            return Err(Error::FailedPrecondition(format!(
                "cannot remove snapshot {key:?}: {children} snapshot(s) descend from it"
            )));
        }
        conn.execute("DELETE FROM snapshots WHERE id = ?1", [r.id])
            .map_err(self.db())?;
        let mut doomed = vec![];
        let dir = self.snapshot_dir(r.id);
        if dir.exists() {
            doomed.push(dir);
        }
        if let Some(chain) = &r.chain_id {
            // Under the lock: no snapshot can take the layer meanwhile.
            self.release_if_unused(&conn, chain)?;
        }
        Ok(doomed)
    }

    /// Drops the service's hold on layer `chain` when no snapshot row
    /// refers to it any more.
    fn release_if_unused(&self, conn: &Connection, chain: &str) -> Result<()> {
        let users: i64 = conn
            .query_row(
                "SELECT count(*) FROM snapshots WHERE chain_id = ?1",
                [chain],
                |row| row.get(0),
            )
            .map_err(self.db())?;
        if users == 0 {
            self.layers.release(chain)?;
        }
        Ok(())
    }

    /// Updates a snapshot's labels: `fieldpaths` empty or `labels` replaces
    /// them all, `labels.K` sets or (when absent from `labels`) deletes one.
    pub fn update(
        &self,
        key: &str,
        labels: HashMap<String, String>,
        fieldpaths: &[String],
    ) -> Result<Record> {
        let conn = self.lock();
        let mut r = get(&conn, key)
            .map_err(self.db())?
            .ok_or_else(|| Error::NotFound(key.to_owned()))?;
        if fieldpaths.is_empty() || fieldpaths.iter().any(|f| f == "labels") {
            r.labels = labels;
        } else {
            for path in fieldpaths {
                let Some(label) = path.strip_prefix("labels.") else {
                    return Err(Error::InvalidArgument(format!(
                        "cannot update field {path:?} of snapshot {key:?}: only labels are mutable"
                    )));
                };
                match labels.get(label) {
                    Some(v) => r.labels.insert(label.to_owned(), v.clone()),
                    None => r.labels.remove(label),
                };
            }
        }
        conn.execute(
            "UPDATE snapshots SET labels = ?1, updated_ns = ?2 WHERE id = ?3",
            params![labels_json(&r.labels), now_ns(), r.id],
        )
        .map_err(self.db())?;
        get(&conn, key)
            .map_err(self.db())?
            .ok_or_else(|| Error::NotFound(key.to_owned()))
    }

    /// Every snapshot.
    pub fn list(&self) -> Result<Vec<Record>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!("SELECT {COLUMNS} FROM snapshots ORDER BY id"))
            .map_err(self.db())?;
        let rows = stmt
            .query_map([], row_to_record)
            .map_err(self.db())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.db())?;
        Ok(rows)
    }

    /// Chain ids of every committed snapshot kept as a lamina layer: roots for
    /// the store's GC.
    pub fn referenced_chain_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .list()?
            .into_iter()
            .filter_map(|r| r.chain_id)
            .collect())
    }

    /// Deletes `snapshots/*` dirs that no row owns (left by a crash or by
    /// Remove). Returns them for the caller to delete outside the lock.
    pub fn orphans(&self) -> Result<Vec<PathBuf>> {
        let conn = self.lock();
        let ids: std::collections::HashSet<i64> = {
            let mut stmt = conn
                .prepare("SELECT id FROM snapshots")
                .map_err(self.db())?;
            stmt.query_map([], |row| row.get(0))
                .map_err(self.db())?
                .collect::<rusqlite::Result<_>>()
                .map_err(self.db())?
        };
        let dir = self.root.join("snapshots");
        let mut doomed = vec![];
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name();
            let owned = name
                .to_str()
                .and_then(|n| n.parse::<i64>().ok())
                .is_some_and(|id| ids.contains(&id));
            if !owned {
                doomed.push(entry.path());
            }
        }
        Ok(doomed)
    }

    fn recover(&self) -> Result<()> {
        for r in self.list()? {
            if r.kind == Kind::Committed && r.chain_id.is_some() && self.snapshot_dir(r.id).exists()
            {
                self.adopt_upper(&r)?;
            }
        }
        // References and rows agree again after a crash between the two.
        let chains: std::collections::HashSet<String> =
            self.referenced_chain_ids()?.into_iter().collect();
        for chain in &chains {
            self.layers.hold(chain, &mut || Ok(()))?;
        }
        for chain in self.layers.held()? {
            if !chains.contains(&chain) {
                self.layers.release(&chain)?;
            }
        }
        for dir in self.orphans()? {
            remove_tree(&dir);
        }
        Ok(())
    }
}

/// The chain id containerd's unpacker is extracting into this snapshot, if it
/// is one: the `containerd.io/snapshot.ref` label (containerd's unpacker,
/// CRI), or containerd's extraction key format `extract-<unique> <chainid>`
/// (`ctr images pull` through `Image.Unpack`, which sets no label).
pub fn extraction_target<'a>(key: &'a str, labels: &'a HashMap<String, String>) -> Option<&'a str> {
    if let Some(t) = labels.get(LABEL_TARGET).filter(|t| is_digest(t)) {
        return Some(t);
    }
    let (prefix, chain) = key.rsplit_once(' ')?;
    let last = prefix.rsplit('/').next().unwrap_or(prefix);
    (last.starts_with("extract-") && is_digest(chain)).then_some(chain)
}

/// Deletes a tree, logging instead of failing: what is left is found again
/// by the next cleanup. A snapshot dir's FUSE overlay (`merged`) is detached
/// first, so the delete never walks into it.
pub fn remove_tree(path: &Path) {
    super::merged::release(path);
    if let Err(e) = std::fs::remove_dir_all(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot delete {}: {e}", path.display());
    }
}

/// Disk usage of a tree: blocks and inodes, hard links once.
pub fn usage(dir: &Path) -> Result<Usage> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut u = Usage::default();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&d)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&d))?;
            let meta = entry.metadata().map_err(io_err(&entry.path()))?;
            if seen.insert((meta.dev(), meta.ino())) {
                u.inodes += 1;
                u.size += meta.blocks() as i64 * 512;
            }
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(u)
}

const COLUMNS: &str = "id, key, parent, kind, labels, chain_id, created_ns, updated_ns";

fn get(conn: &Connection, key: &str) -> rusqlite::Result<Option<Record>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM snapshots WHERE key = ?1"),
        [key],
        row_to_record,
    )
    .optional()
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let labels: String = row.get(4)?;
    Ok(Record {
        id: row.get(0)?,
        key: row.get(1)?,
        parent: row.get(2)?,
        kind: Kind::from_i64(row.get(3)?),
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        chain_id: row.get(5)?,
        created: from_ns(row.get(6)?),
        updated: from_ns(row.get(7)?),
    })
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in SCHEMA.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

fn labels_json(labels: &HashMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".into())
}

fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn from_ns(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Snapshots {
        Snapshots::open(
            dir,
            Box::new(OwnLayers {
                root: dir.to_owned(),
            }),
        )
        .unwrap()
    }

    const CHAIN: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn migrations_apply_once_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        drop(open(tmp.path()));
        let s = open(tmp.path());
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn containerd_error_semantics() {
        let tmp = tempfile::tempdir().unwrap();
        let s = open(tmp.path());
        s.create("a", "", Kind::Active, HashMap::new()).unwrap();
        assert!(matches!(
            s.create("a", "", Kind::Active, HashMap::new()),
            Err(Error::AlreadyExists(_))
        ));
        assert!(matches!(
            s.create("b", "nope", Kind::Active, HashMap::new()),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            s.create("b", "a", Kind::Active, HashMap::new()),
            Err(Error::InvalidArgument(_))
        ));
        s.commit("c", "a", HashMap::new()).unwrap();
        assert!(matches!(
            s.commit("c2", "a", HashMap::new()),
            Err(Error::NotFound(_))
        ));
        s.create("v", "c", Kind::View, HashMap::new()).unwrap();
        assert!(matches!(
            s.commit("c3", "v", HashMap::new()),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(matches!(s.remove("c"), Err(Error::FailedPrecondition(_))));
        s.remove("v").unwrap();
        s.remove("c").unwrap();
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn unpack_commit_becomes_layer_dir_and_fast_path_reuses_it() {
        let tmp = tempfile::tempdir().unwrap();
        let s = open(tmp.path());
        let labels = HashMap::from([(LABEL_TARGET.to_owned(), CHAIN.to_owned())]);
        let a = s
            .create("ns/1/extract-1", "", Kind::Active, labels.clone())
            .unwrap();
        std::fs::write(s.fs_dir(&a).join("hello"), "hi").unwrap();
        let c = s
            .commit(&format!("ns/2/{CHAIN}"), "ns/1/extract-1", HashMap::new())
            .unwrap();
        assert_eq!(c.chain_id.as_deref(), Some(CHAIN));
        let layer = s.layer_dir(CHAIN);
        assert_eq!(std::fs::read_to_string(layer.join("hello")).unwrap(), "hi");
        assert!(!s.snapshot_dir(a.id).exists());
        // A second namespace extracting the same chain gets AlreadyExists and a
        // committed record over the same dir.
        assert!(matches!(
            s.create("ns2/1/extract-2", "", Kind::Active, labels),
            Err(Error::AlreadyExists(_))
        ));
        let r = s.stat("ns2/1/extract-2").unwrap();
        assert_eq!((r.kind, s.fs_dir(&r)), (Kind::Committed, layer.clone()));
        // The layer goes only with its last user.
        assert!(s.remove(&format!("ns/2/{CHAIN}")).unwrap().is_empty());
        assert!(layer.exists());
        let doomed = s.remove("ns2/1/extract-2").unwrap();
        assert!(!layer.exists());
        doomed.iter().for_each(|d| remove_tree(d));
    }

    #[test]
    fn fetched_layers_register_under_the_target_name_once() {
        const CHAIN2: &str =
            "sha256:2222222222222222222222222222222222222222222222222222222222222222";
        let tmp = tempfile::tempdir().unwrap();
        let s = open(tmp.path());
        let labels = HashMap::from([(LABEL_TARGET.to_owned(), CHAIN.to_owned())]);
        // No layer dir (collected meanwhile): nothing registered.
        assert_eq!(
            s.commit_fetched_layer("k1", "", &labels, CHAIN).unwrap(),
            None
        );
        assert!(s.list().unwrap().is_empty());
        std::fs::create_dir(s.layer_dir(CHAIN)).unwrap();
        assert_eq!(
            s.commit_fetched_layer("k1", "", &labels, CHAIN)
                .unwrap()
                .as_deref(),
            Some(CHAIN)
        );
        let r = s.stat(CHAIN).unwrap();
        assert_eq!(
            (r.kind, r.chain_id.as_deref()),
            (Kind::Committed, Some(CHAIN))
        );
        assert!(matches!(s.stat("k1"), Err(Error::NotFound(_))));
        // A second Prepare of the same layer: the name is taken, its key is used.
        assert_eq!(
            s.commit_fetched_layer("k2", "", &labels, CHAIN)
                .unwrap()
                .as_deref(),
            Some("k2")
        );
        // The parent must be a committed lamina layer.
        s.create("plain", "", Kind::Active, HashMap::new()).unwrap();
        s.commit("plain-c", "plain", HashMap::new()).unwrap();
        std::fs::create_dir(s.layer_dir(CHAIN2)).unwrap();
        assert!(matches!(
            s.commit_fetched_layer("k3", "plain-c", &labels, CHAIN2),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(matches!(
            s.commit_fetched_layer("k3", "nope", &labels, CHAIN2),
            Err(Error::NotFound(_))
        ));
        assert_eq!(s.parent_chain(CHAIN).unwrap().as_deref(), Some(CHAIN));
        assert_eq!(s.parent_chain("").unwrap(), None);
        assert_eq!(
            s.commit_fetched_layer("k3", CHAIN, &labels, CHAIN2)
                .unwrap()
                .as_deref(),
            Some(CHAIN2)
        );
        assert_eq!(s.stat(CHAIN2).unwrap().parent.as_deref(), Some(CHAIN));
    }

    #[test]
    fn ctr_extraction_key_format_names_the_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let s = open(tmp.path());
        let key = format!("default/1/extract-123-abc {CHAIN}");
        s.create(&key, "", Kind::Active, HashMap::new()).unwrap();
        let c = s
            .commit(&format!("default/2/{CHAIN}"), &key, HashMap::new())
            .unwrap();
        assert_eq!(c.chain_id.as_deref(), Some(CHAIN));
        assert!(s.layer_dir(CHAIN).is_dir());
        assert_eq!(
            extraction_target(&format!("x/1/other {CHAIN}"), &HashMap::new()),
            None
        );
    }

    #[test]
    fn commit_name_must_match_target_label_to_claim_a_chain_id() {
        let tmp = tempfile::tempdir().unwrap();
        let s = open(tmp.path());
        s.create("k", "", Kind::Active, HashMap::new()).unwrap();
        let c = s
            .commit(&format!("x/{CHAIN}"), "k", HashMap::new())
            .unwrap();
        assert_eq!(c.chain_id, None);
        assert!(!s.layer_dir(CHAIN).exists());
    }

    #[test]
    fn crash_between_commit_row_and_rename_is_finished_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let s = open(tmp.path());
        let labels = HashMap::from([(LABEL_TARGET.to_owned(), CHAIN.to_owned())]);
        let a = s.create("e", "", Kind::Active, labels).unwrap();
        std::fs::write(s.fs_dir(&a).join("f"), "x").unwrap();
        // Simulate the crash: the row says committed, the rename did not happen.
        s.lock()
            .execute(
                "UPDATE snapshots SET key = ?1, kind = 3, chain_id = ?2 WHERE id = ?3",
                params![CHAIN, CHAIN, a.id],
            )
            .unwrap();
        std::fs::create_dir(tmp.path().join("snapshots/999")).unwrap();
        drop(s);
        let s = open(tmp.path());
        assert!(s.layer_dir(CHAIN).join("f").exists());
        assert!(!tmp.path().join("snapshots/999").exists());
        assert!(!s.snapshot_dir(a.id).exists());
    }
}
