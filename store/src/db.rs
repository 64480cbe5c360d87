//! The metadata database: `lamina.db`, SQLite in WAL mode.
//!
//! Schema (version 2):
//!
//! ```text
//! manifests(digest PK, media_type, size, config_digest, rmi_pending, added_at)
//!     one row per image present (an image *is* a manifest; its id is the config digest)
//! configs(digest PK, size, created, os, architecture)
//! manifest_layers(manifest -> manifests ON DELETE CASCADE, idx, digest, media_type, size,
//!                 diff_id, chain_id; PK(manifest, idx))     idx 0 = bottom-most
//! layer_blobs(digest PK, diff_id, media_type)    compressed blob -> diff id, learnt on unpack
//! layers(chain_id PK, diff_id, parent, size, added_at)      unpacked dirs under layers/
//! images(name PK, manifest -> manifests, index_digest, added_at)   names ("repo:tag")
//! containers(id PK, name UNIQUE, manifest -> manifests, image_name, created_at)
//! layer_refs(owner, chain_id, added_at; PK(owner, chain_id))   (v2) external gc roots
//! ```
//!
//! Rules:
//! - Migrations are an ordered, append-only list; `PRAGMA user_version` is the
//!   number applied. They run in one `BEGIN IMMEDIATE` transaction, so two
//!   processes opening a fresh store at once apply them once. A DB newer than
//!   this build is refused rather than guessed at.
//! - Every write is a `BEGIN IMMEDIATE` transaction (so `busy_timeout` applies
//!   to the whole transaction, never a mid-transaction upgrade that fails with
//!   SQLITE_BUSY). Readers never block writers (WAL).
//! - A row that names a directory (`layers`, `containers`) is inserted only
//!   after the directory is complete, and deleted before it is removed.

use crate::{Error, Result};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The migrations, in order; index + 1 is the `user_version` after applying it.
/// Append only: never edit a released entry.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE manifests (
        digest TEXT PRIMARY KEY,
        media_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        config_digest TEXT NOT NULL,
        rmi_pending INTEGER NOT NULL DEFAULT 0,
        added_at INTEGER NOT NULL
    );
    CREATE INDEX manifests_by_config ON manifests(config_digest);
    CREATE TABLE configs (
        digest TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        created TEXT,
        os TEXT,
        architecture TEXT
    );
    CREATE TABLE manifest_layers (
        manifest TEXT NOT NULL REFERENCES manifests(digest) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        digest TEXT NOT NULL,
        media_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        diff_id TEXT NOT NULL,
        chain_id TEXT NOT NULL,
        PRIMARY KEY (manifest, idx)
    );
    CREATE INDEX manifest_layers_by_chain ON manifest_layers(chain_id);
    CREATE TABLE layer_blobs (
        digest TEXT PRIMARY KEY,
        diff_id TEXT NOT NULL,
        media_type TEXT NOT NULL
    );
    CREATE TABLE layers (
        chain_id TEXT PRIMARY KEY,
        diff_id TEXT NOT NULL,
        parent TEXT,
        size INTEGER NOT NULL,
        added_at INTEGER NOT NULL
    );
    CREATE TABLE images (
        name TEXT PRIMARY KEY,
        manifest TEXT NOT NULL REFERENCES manifests(digest),
        index_digest TEXT,
        added_at INTEGER NOT NULL
    );
    CREATE INDEX images_by_manifest ON images(manifest);
    CREATE TABLE containers (
        id TEXT PRIMARY KEY,
        name TEXT UNIQUE,
        manifest TEXT NOT NULL REFERENCES manifests(digest),
        image_name TEXT,
        created_at INTEGER NOT NULL
    );
    "#,
    // 2: references to layer dirs held by other parts of lamina (the containerd
    // snapshotter keeps committed snapshots as layer dirs): gc roots.
    r#"
    CREATE TABLE layer_refs (
        owner TEXT NOT NULL,
        chain_id TEXT NOT NULL,
        added_at INTEGER NOT NULL,
        PRIMARY KEY (owner, chain_id)
    );
    "#,
];

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `e` is SQLite's "another connection holds the lock".
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// The open database, shared by the threads of one process.
#[derive(Debug)]
pub(crate) struct Db {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl Db {
    /// Opens (creating) the DB and applies pending migrations.
    pub(crate) fn open(path: &Path) -> Result<Db> {
        Self::open_with(path, MIGRATIONS)
    }

    /// Opens (creating) the DB and applies `migrations`.
    ///
    /// Processes that open a new DB at the same time race to switch it to
    /// WAL, and SQLite answers the losers `SQLITE_BUSY` at once, without
    /// calling the busy handler; they try again, for as long as the busy
    /// timeout would have waited.
    pub(crate) fn open_with(path: &Path, migrations: &[&str]) -> Result<Db> {
        let deadline = Instant::now() + BUSY_TIMEOUT;
        loop {
            match Self::try_open(path, migrations) {
                Err(Error::Db { source, .. }) if is_busy(&source) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                r => return r,
            }
        }
    }

    fn try_open(path: &Path, migrations: &[&str]) -> Result<Db> {
        let err = |source| Error::Db {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        let db = Db {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        };
        db.migrate(migrations)?;
        Ok(db)
    }

    fn migrate(&self, migrations: &[&str]) -> Result<()> {
        let known = migrations.len() as i64;
        let path = self.path.clone();
        // Fast path without a write lock: most opens find the schema current.
        if self.version()? == known {
            return Ok(());
        }
        self.write(|tx| {
            let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if version > known {
                return Ok(Err(Error::SchemaTooNew {
                    path: path.clone(),
                    found: version,
                    known,
                }));
            }
            for (i, sql) in migrations.iter().enumerate().skip(version as usize) {
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", i as i64 + 1)?;
            }
            Ok(Ok(()))
        })?
    }

    /// The schema version of the open DB.
    pub(crate) fn version(&self) -> Result<i64> {
        self.read(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction, committed if `f` returns Ok.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let run = |conn: &mut Connection| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        };
        run(&mut conn).map_err(|source| Error::Db {
            path: self.path.clone(),
            source,
        })
    }

    /// Runs read-only queries.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(|source| Error::Db {
            path: self.path.clone(),
            source,
        })
    }
}

/// Seconds since the epoch, for `added_at` columns.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(db: &Db) -> Vec<String> {
        db.read(|c| {
            let mut st =
                c.prepare("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")?;
            st.query_map([], |r| r.get(0))?.collect()
        })
        .unwrap()
    }

    /// Migration 1 on an empty file creates every table and sets version 1.
    #[test]
    fn migration_1_creates_schema() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_with(&dir.path().join("t.db"), &MIGRATIONS[..1]).unwrap();
        assert_eq!(db.version().unwrap(), 1);
        assert_eq!(
            tables(&db),
            [
                "configs",
                "containers",
                "images",
                "layer_blobs",
                "layers",
                "manifest_layers",
                "manifests"
            ]
        );
        let mode: String = db
            .read(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(mode, "wal");
        // Cascade: removing a manifest removes its layer rows.
        db.write(|tx| {
            tx.execute(
                "INSERT INTO manifests(digest, media_type, size, config_digest, added_at) VALUES ('m','t',1,'c',0)",
                [],
            )?;
            tx.execute(
                "INSERT INTO manifest_layers VALUES ('m',0,'d','t',1,'x','y')",
                [],
            )?;
            tx.execute("DELETE FROM manifests", [])
        })
        .unwrap();
        let n: i64 = db
            .read(|c| c.query_row("SELECT count(*) FROM manifest_layers", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(n, 0);
    }

    /// Migration 2 on a version-1 DB with data adds `layer_refs`, keeping the data.
    #[test]
    fn migration_2_adds_layer_refs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let db = Db::open_with(&path, &MIGRATIONS[..1]).unwrap();
        db.write(|tx| {
            tx.execute(
                "INSERT INTO layers(chain_id, diff_id, parent, size, added_at) VALUES ('c','d',NULL,1,0)",
                [],
            )
        })
        .unwrap();
        drop(db);
        let db = Db::open_with(&path, &MIGRATIONS[..2]).unwrap();
        assert_eq!(db.version().unwrap(), 2);
        assert!(tables(&db).contains(&"layer_refs".to_string()));
        let n: i64 = db
            .read(|c| c.query_row("SELECT count(*) FROM layers", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(n, 1);
        db.write(|tx| tx.execute("INSERT INTO layer_refs VALUES ('o','c',0)", []))
            .unwrap();
    }

    /// Reopening applies nothing twice; a later migration applies on top, in order.
    #[test]
    fn migrations_apply_once_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(Db::open(&path).unwrap());
        drop(Db::open(&path).unwrap());
        let mut more: Vec<&str> = MIGRATIONS.to_vec();
        more.push("CREATE TABLE extra(x); INSERT INTO extra VALUES (1);");
        let db = Db::open_with(&path, &more).unwrap();
        assert_eq!(db.version().unwrap(), MIGRATIONS.len() as i64 + 1);
        drop(db);
        let db = Db::open_with(&path, &more).unwrap();
        let n: i64 = db
            .read(|c| c.query_row("SELECT count(*) FROM extra", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(n, 1, "the extra migration ran exactly once");
    }

    /// A failing migration leaves the DB at the previous version, untouched.
    #[test]
    fn failed_migration_is_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(Db::open(&path).unwrap());
        let mut bad: Vec<&str> = MIGRATIONS.to_vec();
        bad.push("CREATE TABLE half(x); THIS IS NOT SQL;");
        assert!(Db::open_with(&path, &bad).is_err());
        let db = Db::open(&path).unwrap();
        assert_eq!(db.version().unwrap(), MIGRATIONS.len() as i64);
        assert!(!tables(&db).contains(&"half".to_string()));
    }

    /// A DB from a newer lamina is refused.
    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut more: Vec<&str> = MIGRATIONS.to_vec();
        more.push("CREATE TABLE extra(x);");
        drop(Db::open_with(&path, &more).unwrap());
        assert!(matches!(Db::open(&path), Err(Error::SchemaTooNew { .. })));
    }

    /// Concurrent first opens apply the migrations once.
    #[test]
    fn concurrent_first_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || Db::open(&p).map(|db| db.version().unwrap()))
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().unwrap(), MIGRATIONS.len() as i64);
        }
    }
}
