//! The SQLite store: one writer connection (writes are serialized, so every
//! compare-and-set on a generation number is decided in one place) and a
//! small pool of readers (WAL lets them run beside the writer). Blocking
//! SQLite work runs on tokio's blocking pool.

mod lock;
mod migrations;
pub mod policies;
pub mod rotations;
pub mod secrets;
pub mod tokens;

pub use lock::DataDirLock;

use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use zeroize::Zeroizing;

pub const DB_FILE: &str = "tumbler.db";
const READERS: usize = 8;

/// Keys the store works with, all from the master key.
pub struct Keys {
    pub master: MasterKey,
    /// MAC key for client tokens and value fingerprints (idempotent writes).
    pub client_token: Zeroizing<[u8; 32]>,
    /// MAC key of the audit chain.
    pub audit: Zeroizing<[u8; 32]>,
}

impl Keys {
    pub fn new(master: MasterKey) -> Self {
        let client_token = master.derive("tumbler/v1/client-token-mac");
        let audit = audit_key(&master);
        Keys { master, client_token, audit }
    }
}

/// The audit chain's MAC key under `master` (also needed offline, by
/// `audit verify` and the master key rotation that re-MACs the chain).
pub fn audit_key(master: &MasterKey) -> Zeroizing<[u8; 32]> {
    master.derive("tumbler/v1/audit-mac")
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    reader_returned: Condvar,
    keys: Keys,
}

impl Store {
    /// Creates a fresh store bound to `master` (for `tumbler init` and `--dev`).
    pub fn create(data_dir: &Path, master: MasterKey) -> Result<Self> {
        let path = data_dir.join(DB_FILE);
        if path.exists() {
            return Err(Error::conflict(format!(
                "{} already holds a tumbler store; choose an empty data dir",
                data_dir.display()
            )));
        }
        let conn = open_connection(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        migrations::apply(&conn)?;
        conn.execute("INSERT INTO meta (key, value) VALUES ('kek_id', ?1)", [master.id()])?;
        drop(conn);
        Self::open_checked(data_dir, master)
    }

    /// Opens an existing store. A wrong master key is refused before
    /// anything is written (no migration, no new WAL file).
    pub fn open(data_dir: &Path, master: MasterKey) -> Result<Self> {
        check_master_key(data_dir, &master)?;
        Self::open_checked(data_dir, master)
    }

    fn open_checked(data_dir: &Path, master: MasterKey) -> Result<Self> {
        let path = data_dir.join(DB_FILE);
        let writer = open_connection(&path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        migrations::apply(&writer)?;
        let readers = (0..READERS).map(|_| open_connection(&path)).collect::<Result<Vec<_>>>()?;
        Ok(Store {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                readers: Mutex::new(readers),
                reader_returned: Condvar::new(),
                keys: Keys::new(master),
            }),
        })
    }

    /// A key derived from the master key for `purpose` (HKDF).
    pub fn derive_key(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        self.inner.keys.master.derive(purpose)
    }

    /// Runs `f` on a reader connection, off the async runtime.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Keys) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        run_blocking(move || {
            let conn = inner.take_reader();
            let out = f(&conn, &inner.keys);
            inner.return_reader(conn);
            out
        })
        .await
    }

    /// Runs `f` inside one write transaction; commits if it returns Ok.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>, &Keys) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        run_blocking(move || inner.write_now(f)).await
    }

    /// [`Store::write`] for a transaction whose loss in a power cut is
    /// harmless: it commits with `synchronous=NORMAL`, so it is in the WAL
    /// (durable against a crash of the process) when this returns, and on
    /// disk with the next full commit or checkpoint. WAL order means a
    /// later full commit never lands without it. Used for rotation
    /// transitions that a restart simply redoes (see rotation/commit.rs).
    pub async fn write_relaxed<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>, &Keys) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        run_blocking(move || inner.write_with(Sync::Relaxed, f)).await
    }

    /// The synchronous form of [`Store::write`], for offline commands.
    pub fn write_blocking<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>, &Keys) -> Result<T>) -> Result<T> {
        self.inner.write_now(f)
    }
}

impl Inner {
    fn take_reader(&self) -> Connection {
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = pool.pop() {
                return conn;
            }
            pool = self.reader_returned.wait(pool).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn return_reader(&self, conn: Connection) {
        self.readers.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        self.reader_returned.notify_one();
    }

    fn write_now<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>, &Keys) -> Result<T>) -> Result<T> {
        self.write_with(Sync::Full, f)
    }

    fn write_with<T>(&self, sync: Sync, f: impl FnOnce(&rusqlite::Transaction<'_>, &Keys) -> Result<T>) -> Result<T> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // Set on every transaction, so a relaxed one never leaks its
        // setting into the next (a cheap pragma, no I/O).
        conn.pragma_update(None, "synchronous", if sync == Sync::Relaxed { "NORMAL" } else { "FULL" })?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = f(&tx, &self.keys)?;
        tx.commit()?;
        Ok(out)
    }
}

/// How a write transaction reaches the disk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// `synchronous=FULL`: on disk before the commit returns.
    Full,
    /// `synchronous=NORMAL`: in the WAL; on disk with the next full commit.
    Relaxed,
}

async fn run_blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::internal(format!("storage task failed: {e}")))?
}

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // FULL: a commit is on disk before the client hears "done"; a rotated
    // password must never be lost to a power cut.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Freed pages are overwritten, so purged keys and values do not linger.
    conn.pragma_update(None, "secure_delete", "ON")?;
    Ok(conn)
}

/// Compares the key id recorded at init with the given key's id, reading
/// the database without creating or changing any file when it was shut
/// down cleanly.
pub fn check_master_key(data_dir: &Path, master: &MasterKey) -> Result<()> {
    let stored = stored_key_id(data_dir)?;
    if stored != master.id() {
        return Err(Error::forbidden(format!(
            "the master key does not match this data dir (it was sealed with key id {stored}, \
             the key given has id {}); pass the --key-file written for {} or set TUMBLER_MASTER_KEY \
             to that key. Nothing was changed",
            master.id(),
            data_dir.display()
        )));
    }
    Ok(())
}

pub fn stored_key_id(data_dir: &Path) -> Result<String> {
    let path = data_dir.join(DB_FILE);
    if !path.exists() {
        return Err(Error::not_found(format!(
            "{} is not a tumbler data dir (no {DB_FILE}); run `tumbler init --data-dir {}` first",
            data_dir.display(),
            data_dir.display()
        )));
    }
    open_read_only(data_dir)?
        .query_row("SELECT value FROM meta WHERE key = 'kek_id'", [], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::internal("the store has no master key id; it was not created by tumbler init"))
}

/// A read-only connection that creates and changes no file when the store
/// was shut down cleanly, and reads beside a running server otherwise.
pub fn open_read_only(data_dir: &Path) -> Result<Connection> {
    let path = data_dir.join(DB_FILE);
    let clean = !wal_path(&path).exists();
    let conn = if clean {
        let uri = format!("file:{}?immutable=1", path.display());
        Connection::open_with_flags(uri, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI)?
    } else {
        Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?
    };
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

#[cfg(test)]
pub(crate) fn test_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::create(dir.path(), MasterKey::generate()).expect("create store");
    (dir, store)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn level(store: &Store, relaxed: bool) -> i64 {
        let f = |tx: &rusqlite::Transaction<'_>, _: &Keys| Ok(tx.query_row("PRAGMA synchronous", [], |r| r.get(0))?);
        if relaxed { store.write_relaxed(f).await.unwrap() } else { store.write(f).await.unwrap() }
    }

    #[tokio::test]
    async fn a_relaxed_write_never_leaves_the_writer_relaxed() {
        let (_dir, store) = test_store();
        assert_eq!(level(&store, false).await, 2, "FULL");
        assert_eq!(level(&store, true).await, 1, "NORMAL");
        assert_eq!(level(&store, false).await, 2, "the next write is FULL again");
        // Even when the relaxed transaction fails.
        let failed = store.write_relaxed(|_, _| -> Result<()> { Err(Error::conflict("no")) }).await;
        assert!(failed.is_err());
        assert_eq!(level(&store, false).await, 2);
    }
}
