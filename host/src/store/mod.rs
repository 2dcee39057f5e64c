//! The SQLite store: one writer connection (writes are serialized, so every
//! compare-and-set on a generation number is decided in one place) and a
//! small pool of readers (WAL lets them run beside the writer). Blocking
//! SQLite work runs on tokio's blocking pool.
//!
//! Durability: a write commits with `synchronous=FULL` (on disk before the
//! caller hears "done") unless it asks for [`Durability::Normal`]: only
//! writes whose loss in a power cut is harmless do (the audit records of
//! read-only requests, and transitions a restart redoes: a rotation's claim
//! and its intermediate steps, a lease's state marks); those are in the WAL
//! when their commit returns and on disk within [`SYNC_EVERY`] (the store's
//! own thread syncs the WAL, off every commit's path), or sooner with the
//! next FULL commit or checkpoint.

mod lock;
mod migrations;
pub mod policies;
pub mod rotations;
pub mod secrets;
pub mod tokens;
mod values;

pub use lock::DataDirLock;

use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::model::SecretName;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use secrets::{Selector, ValueRead};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// Tables whose rows decide who a token is and what it may do: a commit
/// that changes one of them moves the auth generation.
const AUTH_TABLES: [&str; 2] = ["tokens", "policies"];

/// Tables a secret's value is read from: a commit that changes one of them
/// moves the data generation (see [`values`]).
const DATA_TABLES: [&str; 3] = ["secrets", "versions", "labels"];

/// How far a commit has gone when [`Store::write_with`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// On disk (`synchronous=FULL`): survives a power cut or a kernel crash.
    /// Every change of state commits this way.
    Full,
    /// In the WAL through write(2) (`synchronous=NORMAL`): survives a crash
    /// or kill of the process; a power cut or kernel crash may lose it until
    /// the WAL is next synced, at most [`SYNC_EVERY`] later (or with the
    /// next FULL commit or checkpoint). What is lost is always a suffix: a FULL commit
    /// syncs every commit before it, and WAL recovery keeps a prefix.
    Normal,
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// First, so it is dropped (and its connection closed) before the
    /// others: the last connection to close checkpoints and removes the WAL.
    checkpointer: Checkpointer,
    /// Shared with the checkpoint thread, which holds it to finish a
    /// checkpoint (see `Checkpointer`).
    writer: Arc<Mutex<Writer>>,
    readers: Mutex<Vec<Connection>>,
    reader_returned: Condvar,
    keys: Keys,
    /// Moves after every commit (or rollback) that touched [`AUTH_TABLES`].
    auth_generation: AtomicU64,
    /// Set by the writer's update hook when the open transaction touches
    /// [`AUTH_TABLES`]; cleared when the generation moves.
    auth_touched: Arc<AtomicBool>,
    /// Moves after every commit (or rollback) that touched [`DATA_TABLES`].
    data_generation: AtomicU64,
    /// As `auth_touched`, for [`DATA_TABLES`].
    data_touched: Arc<AtomicBool>,
    /// Sealed versions recently read (see [`values`]).
    values: values::ValueCache,
    /// Write transactions since the store was opened.
    commits: AtomicU64,
    /// Whether a [`Durability::Normal`] commit waits for a sync of the
    /// WAL, and the WAL (shared with the checkpoint thread, which syncs it).
    wal: Arc<WalSync>,
    data_dir: PathBuf,
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
        let mut writer = open_connection(&path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        migrations::apply(&writer)?;
        let auth_touched = Arc::new(AtomicBool::new(false));
        let data_touched = Arc::new(AtomicBool::new(false));
        watch_tables(&mut writer, auth_touched.clone(), data_touched.clone())?;
        let readers = (0..READERS).map(|_| open_connection(&path)).collect::<Result<Vec<_>>>()?;
        // Checkpoints run on their own connection and thread, never inside
        // a commit (see `Checkpointer`).
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        // A WAL that grew past this while a long read kept it from being
        // started over is cut back to it when it is.
        writer.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        let wal = Arc::new(WalSync { unsynced: AtomicBool::new(false), path: wal_path(&path) });
        // open_connection sets FULL.
        let writer = Arc::new(Mutex::new(Writer { conn: writer, durability: Durability::Full }));
        let checkpointer = Checkpointer::start(open_connection(&path)?, wal.clone(), writer.clone())?;
        Ok(Store {
            inner: Arc::new(Inner {
                checkpointer,
                writer,
                readers: Mutex::new(readers),
                reader_returned: Condvar::new(),
                keys: Keys::new(master),
                auth_generation: AtomicU64::new(0),
                auth_touched,
                data_generation: AtomicU64::new(0),
                data_touched,
                values: values::ValueCache::default(),
                commits: AtomicU64::new(0),
                wal,
                data_dir: data_dir.to_path_buf(),
            }),
        })
    }

    /// The directory the store's files are in.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
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

    /// Runs `f` in one read transaction on a reader connection right here,
    /// on the async thread, when one is free (else on the blocking pool, as
    /// [`Store::read`] does). Saves the two thread hand-offs of the blocking
    /// pool, which cost more than a point lookup on a warm page cache; so
    /// only for reads of a few rows by key (a token, one secret value),
    /// never for scans: `f` holds up every other request this thread serves
    /// while it runs.
    pub async fn read_quick<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Keys) -> Result<T> + Send + 'static,
    {
        match self.inner.try_take_reader() {
            Some(conn) => {
                let out = read_transaction(&conn, &self.inner.keys, f);
                self.inner.return_reader(conn);
                out
            }
            None => self.read(move |conn, keys| read_transaction(conn, keys, f)).await,
        }
    }

    /// Runs `f` inside one write transaction; commits if it returns Ok,
    /// and returns once the commit is on disk ([`Durability::Full`]).
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>, &Keys) -> Result<T> + Send + 'static,
    {
        self.write_with(Durability::Full, f).await
    }

    /// [`Store::write`] with the commit's durability chosen by the caller.
    pub async fn write_with<T, F>(&self, durability: Durability, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>, &Keys) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        run_blocking(move || inner.write_now(durability, f)).await
    }

    /// The synchronous form of [`Store::write`], for offline commands.
    pub fn write_blocking<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>, &Keys) -> Result<T>) -> Result<T> {
        self.inner.write_now(Durability::Full, f)
    }

    /// The synchronous form of [`Store::write_with`], for a thread of its
    /// own (the audit log's group commit) that may block on the writer.
    pub fn write_blocking_with<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &Keys) -> Result<T>,
    ) -> Result<T> {
        self.inner.write_now(durability, f)
    }

    /// Changes whenever a commit may have changed a token or a policy;
    /// whatever was derived from those rows under another value is stale.
    /// Read it *before* reading the rows: the writer moves it after the
    /// commit and before the write that made the change returns.
    pub fn auth_generation(&self) -> u64 {
        self.inner.auth_generation.load(Ordering::SeqCst)
    }

    /// The value of the version `sel` picks of a live secret: a read of a
    /// version read before, and unchanged since, skips SQLite ([`values`]);
    /// either way the value is decrypted here, for this caller.
    pub async fn read_value(&self, name: SecretName, sel: Selector) -> Result<ValueRead> {
        // Before the rows: see `values`.
        let generation = self.inner.data_generation.load(Ordering::SeqCst);
        if let Some(sealed) = self.inner.values.get(&name, &sel, generation) {
            return secrets::open(&self.inner.keys, &name, &sealed);
        }
        let (name, sel, sealed) = self
            .read_quick(move |conn, _| {
                let sealed = secrets::locate(conn, &name, &sel)?;
                Ok((name, sel, Arc::new(sealed)))
            })
            .await?;
        self.inner.values.insert(&name, &sel, generation, sealed.clone());
        secrets::open(&self.inner.keys, &name, &sealed)
    }

    /// Write transactions (committed or rolled back) since the store was
    /// opened.
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// Puts every [`Durability::Normal`] commit made so far on disk
    /// (fsync of the WAL), if there is one, now rather than within
    /// [`SYNC_EVERY`]: for a clean close. Blocks; runs beside the writer:
    /// it neither takes the writer nor delays a commit.
    pub fn sync_wal(&self) -> Result<()> {
        self.inner.wal.sync()
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

    fn try_take_reader(&self) -> Option<Connection> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn return_reader(&self, conn: Connection) {
        self.readers.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        self.reader_returned.notify_one();
    }

    fn write_now<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &Keys) -> Result<T>,
    ) -> Result<T> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        writer.set_durability(durability)?;
        let out = self.transact(&mut writer.conn, f);
        if durability == Durability::Normal {
            // Even after an error: the commit may have reached the WAL.
            // Before `committed`, which may wake the checkpoint thread to
            // sync it: a thread that counts this commit sees this flag.
            self.wal.unsynced.store(true, Ordering::SeqCst);
        }
        self.checkpointer.committed();
        self.commits.fetch_add(1, Ordering::Relaxed);
        // Committed or rolled back, the generation moves before the caller
        // hears back (and even if it has stopped listening), so no request
        // can start after a revocation and still see the old rows' caller.
        if self.auth_touched.swap(false, Ordering::SeqCst) {
            self.auth_generation.fetch_add(1, Ordering::SeqCst);
        }
        if self.data_touched.swap(false, Ordering::SeqCst) {
            self.data_generation.fetch_add(1, Ordering::SeqCst);
        }
        out
    }

    fn transact<T>(
        &self,
        conn: &mut Connection,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &Keys) -> Result<T>,
    ) -> Result<T> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = f(&tx, &self.keys)?;
        tx.commit()?;
        Ok(out)
    }
}

/// What syncing the WAL needs: whether a relaxed commit is waiting for it,
/// and the file.
struct WalSync {
    unsynced: AtomicBool,
    path: PathBuf,
}

impl WalSync {
    fn sync(&self) -> Result<()> {
        if !self.unsynced.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let synced = self.fsync();
        if synced.is_err() {
            // Try again next time.
            self.unsynced.store(true, Ordering::SeqCst);
        }
        synced
    }

    fn fsync(&self) -> Result<()> {
        let file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            // No WAL: the last connection checkpointed it into the (synced) database.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(wal_sync_error(&self.path, e)),
        };
        file.sync_data().map_err(|e| wal_sync_error(&self.path, e))
    }
}

/// Runs `f` inside `BEGIN ... COMMIT`: its statements see one snapshot, and
/// the WAL read lock is taken and released once instead of per statement
/// (with a few point lookups, that locking was most of the cost).
fn read_transaction<T>(conn: &Connection, keys: &Keys, f: impl FnOnce(&Connection, &Keys) -> Result<T>) -> Result<T> {
    conn.prepare_cached("BEGIN")?.execute([])?;
    let out = f(conn, keys);
    // Nothing was written: COMMIT only ends the read.
    let ended = conn.prepare_cached("COMMIT").and_then(|mut end| end.execute([]));
    if ended.is_err() && !conn.is_autocommit() {
        // Never hand a connection back inside a transaction.
        let _ = conn.execute_batch("ROLLBACK");
    }
    let out = out?;
    ended?;
    Ok(out)
}

fn wal_sync_error(path: &Path, e: std::io::Error) -> Error {
    Error::unavailable(format!("cannot sync {} to disk: {e}; check the disk holding the data dir", path.display()))
}

/// The connection that writes, and the durability its commits have now.
struct Writer {
    conn: Connection,
    durability: Durability,
}

impl Writer {
    /// Sets `synchronous` for the next commit. Every write sets the level it
    /// needs before it begins, so a run of relaxed audit batches costs no
    /// pragma, and no write can inherit a weaker level than it asked for.
    fn set_durability(&mut self, durability: Durability) -> Result<()> {
        if self.durability != durability {
            let level = match durability {
                Durability::Full => "FULL",
                Durability::Normal => "NORMAL",
            };
            self.conn.pragma_update(None, "synchronous", level)?;
            self.durability = durability;
        }
        Ok(())
    }
}

/// Flags every change to [`AUTH_TABLES`] and [`DATA_TABLES`] made through
/// `writer` (the only connection that writes while the server runs).
fn watch_tables(writer: &mut Connection, auth: Arc<AtomicBool>, data: Arc<AtomicBool>) -> Result<()> {
    writer.update_hook(Some(move |_: rusqlite::hooks::Action, _: &str, table: &str, _: i64| {
        if AUTH_TABLES.contains(&table) {
            auth.store(true, Ordering::SeqCst);
        } else if DATA_TABLES.contains(&table) {
            data.store(true, Ordering::SeqCst);
        }
    }))?;
    Ok(())
}

/// Statements through the connection's prepared-statement cache. The hot
/// paths (rotation transitions, lease marks, versions, audit records) run
/// the same few dozen statements thousands of times a second, and parsing
/// one again cost more than running it. Use these instead of `execute` and
/// `query_row` on a connection or transaction.
pub trait Cached {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

async fn run_blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::internal(format!("storage task failed: {e}")))?
}

/// Copies committed WAL frames into the database from a connection and
/// thread of its own, every [`SYNC_EVERY`] while there were commits, and
/// first syncs the WAL when a relaxed commit waits for it; with no commit
/// it sleeps until the next one wakes it. SQLite's
/// automatic checkpoint ran inside whichever commit crossed 1,000 WAL
/// pages (several times a second under audited reads), with two fsyncs,
/// holding up every request waiting on that commit; and a sync of the WAL
/// on the audit log's thread held up every read waiting on its record. A
/// passive checkpoint takes no lock a writer or reader needs, and a sync
/// none at all.
///
/// A checkpoint that ran while commits went on has not copied the frames
/// they added, and SQLite starts the WAL over from its beginning only
/// once every frame is copied: under steady commits (audited reads) it
/// never was, and the WAL grew by every commit, tens of MB a second, for
/// as long as the load lasted. So a checkpoint that leaves frames behind
/// is finished with the writer held once the WAL is long
/// ([`WAL_RESTART_FRAMES`]): only the frames of its own length are left
/// by then, and the next commit starts the WAL over.
struct Checkpointer {
    shared: Arc<CheckpointState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct CheckpointState {
    /// Commits since the last checkpoint started.
    commits: AtomicU64,
    /// Times the thread has woken to sync and checkpoint.
    rounds: AtomicU64,
    stop: AtomicBool,
    /// Held by the thread while it syncs; whoever holds it holds the
    /// thread before its next sync (the tests look at a relaxed commit
    /// before it is synced that way).
    busy: Mutex<()>,
}

/// How long a [`Durability::Normal`] commit stays off the disk at most
/// (plus, under load, the length of a checkpoint still running when it
/// was made), and how often committed frames are checkpointed into the
/// database while commits come.
pub const SYNC_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// A WAL this long (frames of a 4 KiB page: 16 MiB) is started over by
/// the next checkpoint, which holds the writer for its last frames (see
/// `Checkpointer`); a shorter one only when a checkpoint finds no commit
/// came while it ran. A commit waits for that hold at most once in this
/// many frames, and the WAL stays within about this length plus the
/// commits of one [`SYNC_EVERY`].
const WAL_RESTART_FRAMES: i64 = 4096;
/// Bytes a WAL that was started over is cut back to (`journal_size_limit`).
const WAL_SIZE_LIMIT: i64 = 64 << 20;

impl Checkpointer {
    fn start(conn: Connection, wal: Arc<WalSync>, writer: Arc<Mutex<Writer>>) -> Result<Checkpointer> {
        let shared = Arc::new(CheckpointState::default());
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tumbler-checkpoint".into())
            .spawn(move || {
                let mut retry_sync = false;
                while !state.stop.load(Ordering::SeqCst) {
                    let idle = state.commits.load(Ordering::SeqCst) == 0 && !wal.unsynced.load(Ordering::SeqCst);
                    if idle && !retry_sync {
                        // Until a commit wakes this thread (`committed`),
                        // or the store closes. A wake-up that came first
                        // is kept: park returns at once.
                        std::thread::park();
                        continue;
                    }
                    // The commits of the next SYNC_EVERY gather, then are
                    // synced and checkpointed together.
                    let until = std::time::Instant::now() + SYNC_EVERY;
                    loop {
                        let left = until.saturating_duration_since(std::time::Instant::now());
                        if left.is_zero() || state.stop.load(Ordering::SeqCst) {
                            break;
                        }
                        std::thread::park_timeout(left);
                    }
                    if state.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    state.rounds.fetch_add(1, Ordering::Relaxed);
                    let busy = state.busy.lock().unwrap_or_else(|p| p.into_inner());
                    retry_sync = match wal.sync() {
                        Ok(()) => false,
                        Err(e) => {
                            tracing::error!(error = %e.message(), "relaxed commits are not yet on disk; retrying");
                            true
                        }
                    };
                    drop(busy);
                    if state.commits.swap(0, Ordering::SeqCst) == 0 {
                        continue;
                    }
                    if let Err(e) = checkpoint(&conn, &writer, &state.commits) {
                        tracing::warn!(error = %e, "WAL checkpoint failed; retried with the next commits");
                    }
                }
            })
            .map_err(|e| Error::internal(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer { shared, thread: Some(thread) })
    }

    /// Counts a commit; the first since the last checkpoint wakes the thread.
    fn committed(&self) {
        if self.shared.commits.fetch_add(1, Ordering::SeqCst) == 0
            && let Some(thread) = &self.thread
        {
            thread.thread().unpark();
        }
    }
}

/// A passive checkpoint beside the writer; if the WAL is long and
/// `commits` shows that some came while it copied, a second one, with the
/// writer held so that none can add a frame, copies what they added (see
/// `Checkpointer`).
fn checkpoint(conn: &Connection, writer: &Mutex<Writer>, commits: &AtomicU64) -> rusqlite::Result<()> {
    // How many frames the WAL held when the checkpoint began.
    let passive = || conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
    if passive()? >= WAL_RESTART_FRAMES && commits.load(Ordering::SeqCst) > 0 {
        let _writer = writer.lock().unwrap_or_else(|p| p.into_inner());
        passive()?;
    }
    Ok(())
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // Room for every statement the server runs (see `Cached`), so none is parsed twice.
    conn.set_prepared_statement_cache_capacity(256);
    // Plans fixed when a statement is prepared. Otherwise SQLite marks a
    // statement to be planned again whenever a bound value might change its
    // plan (any `column = ?` in a join), and rusqlite's clearing of bindings
    // when a cached statement is put back sets that off on every use: the
    // value read parsed its SQL twice per request. Results never differ.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
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

    fn synchronous(tx: &rusqlite::Transaction<'_>) -> Result<i64> {
        Ok(tx.pragma_query_value(None, "synchronous", |r| r.get(0))?)
    }

    fn unsynced(store: &Store) -> bool {
        store.inner.wal.unsynced.load(Ordering::SeqCst)
    }

    /// Holds the checkpoint thread (which syncs the WAL) at its next wake
    /// until dropped, so a test sees a relaxed commit before it is synced.
    fn pause_checkpoints(store: &Store) -> std::sync::MutexGuard<'_, ()> {
        store.inner.checkpointer.shared.busy.lock().unwrap()
    }

    /// The value `read_value` gives for `name`'s current version.
    async fn current(store: &Store, name: &str) -> Result<String> {
        let name = SecretName::parse(name).unwrap();
        let read = store.read_value(name, Selector::Label(crate::model::Label::current())).await?;
        Ok(read.value.expose().to_owned())
    }

    #[tokio::test]
    async fn cached_reads_see_every_change_to_a_value_at_once_and_audit_commits_keep_them() {
        use crate::model::{Label, RecoveryDays, SecretValue};
        let (_dir, store) = test_store();
        let name = || SecretName::parse("app/db").unwrap();
        let value = |v: &str| SecretValue::parse(Zeroizing::new(v.to_owned())).unwrap();
        let first = store
            .write(move |tx, keys| secrets::create(tx, keys, secrets::NewSecret::new(name(), value("one"))))
            .await
            .unwrap()
            .version_id;
        assert_eq!(current(&store, "app/db").await.unwrap(), "one");
        assert_eq!(store.inner.values.len(), 1, "the first read is cached");
        let generation = store.inner.data_generation.load(Ordering::SeqCst);

        // Commits to other tables (the audit log's, a token's) keep the entry.
        store.write(|tx, _| Ok(tx.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')", [])?)).await.unwrap();
        store.write(|tx, _| Ok(tx.execute("DELETE FROM tokens", [])?)).await.unwrap();
        assert_eq!(store.inner.data_generation.load(Ordering::SeqCst), generation);
        assert_eq!(current(&store, "app/db").await.unwrap(), "one");

        // A new version, a label moved back, a deletion: each is seen by the next read.
        store
            .write(move |tx, keys| secrets::put_version(tx, keys, &name(), &value("two"), None, &[Label::current()]))
            .await
            .unwrap();
        assert_eq!(current(&store, "app/db").await.unwrap(), "two");
        store.write(move |tx, _| secrets::move_label(tx, &name(), &Label::current(), &first)).await.unwrap();
        assert_eq!(current(&store, "app/db").await.unwrap(), "one");
        let days = RecoveryDays::parse(Some(7)).unwrap();
        store.write(move |tx, _| secrets::soft_delete(tx, &name(), days)).await.unwrap();
        let refused = current(&store, "app/db").await.unwrap_err();
        assert!(refused.message().contains("scheduled for deletion"), "{}", refused.message());

        // A failed read caches nothing; an unknown secret is still unknown.
        assert!(current(&store, "app/none").await.is_err());
        assert_eq!(store.inner.values.len(), 0, "stale entries are dropped when met, errors never cached");
    }

    #[tokio::test]
    async fn the_value_cache_keeps_each_selector_of_each_secret_apart() {
        use crate::model::{Label, SecretValue};
        let (_dir, store) = test_store();
        let name = |n: &str| SecretName::parse(n).unwrap();
        let value = |v: &str| SecretValue::parse(Zeroizing::new(v.to_owned())).unwrap();
        let one = store
            .write(move |tx, keys| secrets::create(tx, keys, secrets::NewSecret::new(name("app/db"), value("one"))))
            .await
            .unwrap()
            .version_id;
        let two = store
            .write(move |tx, keys| {
                secrets::put_version(tx, keys, &name("app/db"), &value("two"), None, &[Label::current()])
            })
            .await
            .unwrap()
            .version_id;
        store
            .write(move |tx, keys| secrets::create(tx, keys, secrets::NewSecret::new(name("app/other"), value("x"))))
            .await
            .unwrap();
        let reads = [
            ("app/db", Selector::Label(Label::current()), "two"),
            ("app/db", Selector::Version(one.clone()), "one"),
            ("app/db", Selector::Label(Label::parse("previous").unwrap()), "one"),
            ("app/db", Selector::Version(two.clone()), "two"),
            ("app/other", Selector::Label(Label::current()), "x"),
        ];
        // Twice: the second time every read comes from the cache.
        for round in 0..2 {
            for (secret, selector, expected) in &reads {
                let read = store.read_value(name(secret), selector.clone()).await.unwrap();
                assert_eq!(read.value.expose(), *expected, "{secret} round {round}");
            }
            assert_eq!(store.inner.values.len(), reads.len(), "one entry per secret and selector");
        }
    }

    #[tokio::test]
    async fn a_normal_commit_is_unsynced_until_the_wal_is_synced() {
        let (_dir, store) = test_store();
        let paused = pause_checkpoints(&store);
        // 1 is NORMAL, 2 is FULL.
        assert_eq!(store.write_with(Durability::Normal, |tx, _| synchronous(tx)).await.unwrap(), 1);
        assert!(unsynced(&store));
        assert_eq!(store.write(|tx, _| synchronous(tx)).await.unwrap(), 2, "FULL again after NORMAL");
        store.sync_wal().unwrap();
        assert!(!unsynced(&store));

        // After a refused relaxed write too.
        let refused = store.write_with(Durability::Normal, |_, _| -> Result<()> { Err(Error::conflict("no")) }).await;
        assert!(refused.is_err());
        assert_eq!(store.write(|tx, _| synchronous(tx)).await.unwrap(), 2);
        drop(paused);
    }

    #[tokio::test]
    async fn the_store_syncs_a_relaxed_commit_by_itself_within_sync_every() {
        let (_dir, store) = test_store();
        let paused = pause_checkpoints(&store);
        store
            .write_with(Durability::Normal, |tx, _| {
                Ok(tx.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')", [])?)
            })
            .await
            .unwrap();
        assert!(unsynced(&store));
        drop(paused);
        let started = std::time::Instant::now();
        // Nobody calls sync_wal: the checkpoint thread does, within SYNC_EVERY
        // (checked on its next wake; slack for a loaded machine).
        while unsynced(&store) {
            assert!(
                started.elapsed() < SYNC_EVERY * 10,
                "a relaxed commit still unsynced after {:?}",
                started.elapsed()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn under_steady_commits_the_wal_is_started_over_instead_of_growing() {
        let (dir, store) = test_store();
        let wal = wal_path(&dir.path().join(DB_FILE));
        // Audit records, one a commit, as audited reads write them: each
        // commit adds at least two frames (the table's last page and the
        // chain's head in meta), and no pause lets a checkpoint catch up.
        // For several checkpoint rounds, however fast the machine commits.
        let rounds = || store.inner.checkpointer.shared.rounds.load(Ordering::Relaxed);
        let first_round = rounds();
        let (mut commits, mut largest) = (0, 0);
        while commits < 3 * WAL_RESTART_FRAMES as usize || rounds() < first_round + 6 {
            store
                .write_blocking_with(Durability::Normal, |tx, keys| {
                    let entry =
                        crate::audit::Entry::event(crate::audit::EntryKind::Request, "secret.read", "app/x", "ok")
                            .with_detail("n", commits);
                    crate::audit::append_offline(tx, keys, entry)
                })
                .unwrap();
            commits += 1;
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        }
        let written = (commits * 2 * (4096 + 24)) as u64;
        assert!(
            largest * 2 < written,
            "the WAL reached {largest} bytes while {written} bytes or more were committed: it was never started over"
        );
    }

    #[tokio::test]
    async fn the_checkpoint_thread_sleeps_while_nothing_is_committed() {
        let (_dir, store) = test_store();
        let rounds = || store.inner.checkpointer.shared.rounds.load(Ordering::Relaxed);
        let quiet = |what: &'static str| {
            let store = store.clone();
            async move {
                let rounds = || store.inner.checkpointer.shared.rounds.load(Ordering::Relaxed);
                // Room for a round the last commit started to end.
                tokio::time::sleep(SYNC_EVERY * 2).await;
                let before = rounds();
                tokio::time::sleep(SYNC_EVERY * 4).await;
                assert_eq!(rounds(), before, "the thread woke with nothing to do ({what})");
                before
            }
        };
        let at_start = quiet("after opening the store").await;
        store
            .write_with(Durability::Normal, |tx, _| {
                Ok(tx.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')", [])?)
            })
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while rounds() == at_start || unsynced(&store) {
            assert!(std::time::Instant::now() < deadline, "a commit did not wake the checkpoint thread");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        quiet("after the commit was synced and checkpointed").await;
    }

    #[tokio::test]
    async fn commits_are_checkpointed_off_the_commit_path_and_a_closed_store_leaves_no_wal() {
        let (dir, store) = test_store();
        let db = dir.path().join(DB_FILE);
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let autocheckpoint: i64 =
            store.write(|tx, _| Ok(tx.pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))?)).await.unwrap();
        assert_eq!(autocheckpoint, 0, "the writer never checkpoints inside a commit");
        let before = size(&db);
        // About 2 MiB in the WAL, more than SQLite's automatic threshold.
        store
            .write(|tx, _| {
                tx.execute_batch("CREATE TABLE filler (b BLOB)")?;
                for _ in 0..512 {
                    tx.execute("INSERT INTO filler (b) VALUES (zeroblob(4096))", [])?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while size(&db) < before + (2 << 20) {
            assert!(std::time::Instant::now() < deadline, "the checkpoint thread did not copy the commit in 5 s");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        drop(store);
        assert!(!wal_path(&db).exists(), "the last connection closed the WAL");
    }
}
