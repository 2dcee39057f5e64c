//! The journal: where the records of read-only requests (and the other
//! [`Durability::Normal`] records) go first, so a read waits neither for a
//! thread hand-off nor for an SQLite commit before its body is sent.
//!
//! The request's own thread encodes its entry, MACs it and copies it into
//! `audit.journal`, a file mapped into memory: the bytes are in the
//! kernel's page cache when the copy ends, so a crash or kill of the
//! process loses none of them. A thread of its own folds what has gathered
//! into the chain in one transaction every [`FOLD_EVERY`] (sealing and
//! MACing each record as group commit does), and notes in `meta` how far it
//! got in the same transaction; once everything is folded the journal
//! starts over. At the next start, what a killed process left in the
//! journal and not in the table is folded first, before anything else is
//! recorded. A power cut may lose the last fraction of a second, as for
//! the WAL: what was folded is synced with the WAL, what was not yet folded
//! is at most [`FOLD_EVERY`] old.
//!
//! Fail closed: the journal is used only while the audit log is healthy.
//! After any failure to write a record (a fold, a mutation's record, a
//! group commit) records go through group commit again, which answers
//! only once they are committed, until a commit succeeds; a journal that is
//! full does the same.
//!
//! Layout: a 16-byte header (magic, generation), then entries: length
//! (u32), the encoded entry, and a MAC over the generation, the entry's
//! offset and its bytes under a key derived from the master key. Four
//! zero bytes follow the last entry. A generation that starts over cannot
//! be confused with the one before: its MACs differ.

use super::sink::FileSink;
use super::{Entry, EntryKind, Writer, chain};
use crate::crypto;
use crate::error::{Error, Kind, Result};
use crate::metrics::metrics;
use crate::store::{Cached, Durability, Store};
use rusqlite::{OptionalExtension, Transaction};
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

pub const FILE: &str = "audit.journal";
/// Size of the journal file: about 40,000 read records.
pub const SIZE: usize = 8 << 20;
/// How often the journal is folded into the chain while it holds records.
pub const FOLD_EVERY: Duration = Duration::from_millis(10);
const MAGIC: &[u8; 8] = b"TBLJRNL1";
const HEADER: usize = 16;
const MAC_LEN: usize = 32;
const MAC_PURPOSE: &str = "tumbler/v1/audit-journal-mac";
const LABEL: &[u8] = b"tumbler/v1/audit-journal-entry";
/// `meta` key: `GENERATION:OFFSET` folded so far.
const POSITION_KEY: &str = "audit_journal";

/// A shared, writable mapping of the journal file.
struct Map {
    ptr: *mut u8,
    len: usize,
    /// Kept open: it holds the lock that keeps a second writer out.
    _file: std::fs::File,
}

// SAFETY: the mapping is plain memory; every access goes through the
// journal's mutex (or happens before the journal is shared).
unsafe impl Send for Map {}
unsafe impl Sync for Map {}

impl Map {
    fn open(path: &Path) -> Result<Map> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| io_error(path, e))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(Error::conflict(format!(
                "the audit journal {} is in use by another tumbler process on this data dir",
                path.display()
            )));
        }
        let len = file.metadata().map_err(|e| io_error(path, e))?.len();
        if len != 0 && len != SIZE as u64 {
            return Err(Error::internal(format!(
                "{} is {len} bytes, not {SIZE}: it is not tumbler's audit journal. Move it away only if \
                 you know what it is; records it holds would be lost",
                path.display()
            )));
        }
        // Blocks reserved up front (this also sizes a new file): a write
        // into a mapped page that needed a block the disk no longer has
        // would kill the process (SIGBUS) instead of failing a request.
        // Cheap when they are reserved already.
        // SAFETY: on a descriptor we own.
        let reserved = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, SIZE as libc::off_t) };
        if reserved != 0 {
            return Err(io_error(path, std::io::Error::from_raw_os_error(reserved)));
        }
        // SAFETY: a fresh shared mapping of a file of SIZE bytes we opened;
        // unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io_error(path, std::io::Error::last_os_error()));
        }
        Ok(Map { ptr: ptr.cast(), len: SIZE, _file: file })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn write(&self, at: usize, data: &[u8]) {
        assert!(at + data.len() <= self.len, "journal write past its end");
        // SAFETY: in bounds (checked above); callers hold the journal's lock.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(at), data.len()) }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, not used after this.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::unavailable(format!("the audit journal {} cannot be used: {e}", path.display()))
}

pub struct Journal {
    map: Map,
    key: Zeroizing<[u8; 32]>,
    state: Mutex<State>,
    /// Held for a whole fold, so folds never interleave.
    folding: Mutex<()>,
}

struct State {
    generation: u64,
    /// Where the next entry goes.
    end: usize,
    /// Entries appended and not yet taken by a fold, in order.
    pending: Vec<Entry>,
    /// Where the first of `pending` is in the journal.
    pending_from: usize,
    /// Set by any failure to write a record; cleared by the next commit
    /// that succeeds. While set, `append` refuses (callers use group commit).
    stalled: bool,
    /// Set when the audit log closes: the journal takes nothing more.
    closed: bool,
}

/// What a fold takes: the entries, and where in the journal they are.
pub struct Taken {
    pub entries: Vec<Entry>,
    generation: u64,
    from: usize,
    end: usize,
}

impl Journal {
    /// Opens (creating) the journal in `data_dir` and returns it with the
    /// entries a previous process left that are not yet in the table: the
    /// caller folds them (see [`recover`]) before anything else is
    /// recorded. `position` is what `meta` says was folded.
    pub fn open(
        data_dir: &Path,
        key: Zeroizing<[u8; 32]>,
        position: Option<(u64, usize)>,
    ) -> Result<(Journal, Taken, Option<Damage>)> {
        let path = data_dir.join(FILE);
        let map = Map::open(&path)?;
        let scanned = scan(map.bytes(), &key, position, &path)?;
        let (generation, end, entries) = (scanned.generation, scanned.end, scanned.entries);
        let journal = Journal {
            map,
            key,
            state: Mutex::new(State {
                generation,
                end,
                pending: Vec::new(),
                pending_from: end,
                stalled: false,
                closed: false,
            }),
            folding: Mutex::new(()),
        };
        if scanned.fresh {
            journal.start_over(&mut journal.lock(), 0);
        }
        Ok((journal, Taken { entries, generation, from: scanned.from, end }, scanned.damage))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `entry` to the journal; hands it back if the journal cannot
    /// take it now (stalled or full), for group commit.
    pub fn append(&self, entry: Entry) -> std::result::Result<bool, Entry> {
        let payload = encode(&entry);
        let mut state = self.lock();
        let need = 4 + payload.len() + MAC_LEN;
        if state.stalled || state.closed || state.end + need + 4 > SIZE {
            return Err(entry);
        }
        let at = state.end;
        let mac = entry_mac(&self.key, state.generation, at, &payload);
        self.map.write(at + 4 + payload.len(), &mac);
        self.map.write(at + need, &[0; 4]);
        self.map.write(at + 4, &payload);
        // The length last: until it is there, the entry is not one.
        self.map.write(at, &(payload.len() as u32).to_le_bytes());
        state.end = at + need;
        let first = state.pending.is_empty();
        state.pending.push(entry);
        Ok(first)
    }

    /// Takes what is pending, for a fold.
    pub fn take(&self) -> Taken {
        let mut state = self.lock();
        let end = state.end;
        let from = std::mem::replace(&mut state.pending_from, end);
        // As many as came in since the last fold: records arrive at a
        // steady rate under load, and a list that starts empty is grown
        // (and copied) a dozen times before the next fold.
        let room = state.pending.len();
        let entries = std::mem::replace(&mut state.pending, Vec::with_capacity(room));
        Taken { entries, generation: state.generation, from, end }
    }

    /// Serializes folds: hold the returned guard from [`Journal::take`] to
    /// [`Journal::folded`] or [`Journal::unfolded`].
    pub fn fold_guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.folding.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// In the fold's transaction: notes how far the journal is folded.
    pub fn note_position(tx: &Transaction<'_>, generation: u64, end: usize) -> Result<()> {
        let value = format!("{generation}:{end}");
        tx.exec(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [POSITION_KEY, value.as_str()],
        )?;
        Ok(())
    }

    /// After the fold's commit: starts the journal over if nothing came
    /// in meanwhile.
    pub fn folded(&self, taken: &Taken) {
        let mut state = self.lock();
        state.stalled = false;
        if state.generation == taken.generation && state.end == taken.end && state.pending.is_empty() {
            let next = taken.generation + 1;
            self.start_over(&mut state, next);
        }
    }

    /// After a failed fold, whose commit consumed the entries: they are
    /// read back from the journal and go in front of what came in since,
    /// and the journal stalls. (No copy is kept for this: a fold that
    /// succeeds, nearly every one, would pay for it.)
    pub fn unfolded(&self, taken: Taken) {
        let mut state = self.lock();
        let mut entries = Vec::new();
        let mut at = taken.from;
        while at < taken.end {
            // This process wrote these bytes, under this key: they read back.
            match read_entry(self.map.bytes(), &self.key, taken.generation, at) {
                Ok(Some((entry, next))) => {
                    entries.push(entry);
                    at = next;
                }
                Ok(None) | Err(_) => break,
            }
        }
        entries.append(&mut state.pending);
        state.pending = entries;
        state.pending_from = taken.from;
        state.stalled = true;
    }

    /// A record failed, or one succeeded, somewhere else.
    pub fn set_stalled(&self, stalled: bool) {
        self.lock().stalled = stalled;
    }

    fn close(&self) {
        self.lock().closed = true;
    }

    pub fn has_pending(&self) -> bool {
        !self.lock().pending.is_empty()
    }

    fn start_over(&self, state: &mut State, generation: u64) {
        self.map.write(HEADER, &[0; 4]);
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&generation.to_le_bytes());
        self.map.write(0, &header);
        state.generation = generation;
        state.end = HEADER;
        state.pending_from = HEADER;
    }
}

/// Where a journal stopped making sense, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub at: usize,
    pub what: &'static str,
}

struct Scanned {
    fresh: bool,
    generation: u64,
    damage: Option<Damage>,
    /// Where the unfolded entries begin, and end.
    from: usize,
    end: usize,
    entries: Vec<Entry>,
}

/// Reads the journal's entries that `position` (from `meta`) says are not
/// folded yet, checking each one's MAC, up to the end mark or to the first
/// entry that does not check out (`damage`). A power cut leaves such
/// journals: its pages reach the disk when the kernel writes them back,
/// not in order, so the file can hold an older generation than the store
/// has folded (all of it folded then), or a newer one than the store
/// noted (the folds in between went with the WAL's unsynced tail), or
/// entries cut short. None of that stops a start.
fn scan(bytes: &[u8], key: &[u8; 32], position: Option<(u64, usize)>, path: &Path) -> Result<Scanned> {
    let fresh = bytes[..HEADER].iter().all(|b| *b == 0);
    if !fresh && &bytes[..8] != MAGIC {
        return Err(Error::internal(format!(
            "{} does not start like tumbler's audit journal; move it out of the data dir if you know what it is",
            path.display()
        )));
    }
    let generation = if fresh { 0 } else { u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) };
    let start = match position {
        _ if fresh => None,
        Some((g, offset)) if g == generation => Some(offset),
        // Started over since the last fold the store noted.
        Some((g, _)) if generation > g => Some(HEADER),
        // Older than what the store has folded: all of it is in the table.
        Some(_) => None,
        // Never folded: everything in it is new.
        None => Some(HEADER),
    };
    let mut entries = Vec::new();
    let from = start.unwrap_or(HEADER);
    let mut end = from;
    let mut damage = None;
    if start.is_some() {
        loop {
            match read_entry(bytes, key, generation, end) {
                Ok(Some((entry, next))) => {
                    entries.push(entry);
                    end = next;
                }
                Ok(None) => break,
                Err(what) => {
                    damage = Some(Damage { at: end, what });
                    break;
                }
            }
        }
    }
    Ok(Scanned { fresh, generation, damage, from, end, entries })
}

/// For `tumbler audit verify`, read-only: how many records the journal
/// holds that are not in the table yet (a stopped server's; they go in at
/// the next start). `None` while a server holds the journal: its entries
/// move under the reader's feet and are that server's to fold. An error if
/// the journal is damaged or edited.
pub fn unfolded(
    data_dir: &Path,
    master: &crate::crypto::MasterKey,
    conn: &rusqlite::Connection,
) -> Result<Option<usize>> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let path = data_dir.join(FILE);
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(0)),
        Err(e) => return Err(io_error(&path, e)),
    };
    // Shared: no server can start and take the journal while it is read.
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } != 0 {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(SIZE);
    file.read_to_end(&mut bytes).map_err(|e| io_error(&path, e))?;
    if bytes.len() != SIZE {
        return Err(Error::internal(format!("{} is {} bytes, not {SIZE}", path.display(), bytes.len())));
    }
    let scanned = scan(&bytes, &master.derive(MAC_PURPOSE), position(conn)?, &path)?;
    if let Some(damage) = scanned.damage {
        return Err(Error::internal(format!(
            "the audit journal {} is damaged at byte {} ({}): it was edited, or cut short by a power failure. \
             {} records before that point go into the chain at the next start, which records the damage",
            path.display(),
            damage.at,
            damage.what,
            scanned.entries.len()
        )));
    }
    Ok(Some(scanned.entries.len()))
}

/// Opens the store's journal and folds into the chain, in one transaction,
/// what a previous process left in it; the journal then starts over, in a
/// generation newer than any it or the store has seen (so bytes an old
/// generation left behind can never pass for entries). A journal that
/// stops making sense part way (edited, or cut by a power failure) does
/// not stop the start: what checked out before that point goes in, and
/// a `system` record `audit.journal_damaged` says where and why, in the
/// chain, where it cannot be quietly removed.
pub fn recover(store: &Store, sink: Option<&FileSink>) -> Result<Journal> {
    let key = mac_key(store);
    let dir = store.data_dir().to_path_buf();
    let mut opened = None;
    store.write_blocking_with(Durability::Full, |tx, keys| {
        let folded = position(tx)?;
        let (journal, taken, damage) = Journal::open(&dir, key, folded)?;
        let mut entries = taken.entries;
        let replayed = entries.len();
        if let Some(damage) = &damage {
            tracing::error!(
                at = damage.at,
                problem = damage.what,
                replayed,
                "the audit journal is damaged (edited, or cut by a power failure); recorded in the audit log"
            );
            entries.push(
                super::Entry::event(EntryKind::System, "audit.journal_damaged", FILE, "damaged")
                    .with_detail("at_byte", damage.at)
                    .with_detail("problem", damage.what)
                    .with_detail("records_recovered", replayed),
            );
        }
        if !entries.is_empty() {
            let records = chain::append(tx, &keys.audit, entries)?;
            if let Some(sink) = sink {
                sink.write(&records)?;
            }
            tracing::info!(records = replayed, "audit records left in the journal were added to the chain");
        }
        let next = taken.generation.max(folded.map_or(0, |(g, _)| g)) + 1;
        Journal::note_position(tx, next, HEADER)?;
        opened = Some((journal, next));
        Ok(())
    })?;
    let (journal, next) = opened.ok_or_else(|| Error::internal("the audit journal was not opened"))?;
    journal.start_over(&mut journal.lock(), next);
    Ok(journal)
}

/// Folds what is pending into the chain in one transaction.
pub(super) fn fold(writer: &Writer) -> Result<()> {
    let journal = &writer.journal;
    let _one_at_a_time = journal.fold_guard();
    let mut taken = journal.take();
    if taken.entries.is_empty() {
        return Ok(());
    }
    metrics().audit_batch_records.observe(&[], taken.entries.len() as f64);
    // Moved, not copied: a failed fold reads them back from the journal.
    let entries = std::mem::take(&mut taken.entries);
    let result = writer.store.write_blocking_with(Durability::Normal, |tx, keys| {
        Journal::note_position(tx, taken.generation, taken.end)?;
        writer.append_in(tx, keys, entries)
    });
    match result {
        Ok(()) => {
            journal.folded(&taken);
            Ok(())
        }
        Err(e) => {
            // append_in reported its own failures; a failed commit is reported here.
            let e = if e.kind == Kind::Unavailable { e } else { writer.failed(e) };
            journal.unfolded(taken);
            Err(e)
        }
    }
}

/// The thread that folds the journal: asleep while it is empty, woken by
/// the first entry, then folding every [`FOLD_EVERY`] while entries come.
pub struct Folder {
    signal: Arc<Signal>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct Signal {
    /// (woken, stopping)
    state: Mutex<(bool, bool)>,
    changed: Condvar,
}

/// How long a fold that failed waits before it tries again.
const RETRY_AFTER: Duration = Duration::from_millis(100);

impl Folder {
    pub(super) fn start(writer: Arc<Writer>) -> Folder {
        let signal = Arc::new(Signal::default());
        let theirs = signal.clone();
        let thread = std::thread::Builder::new()
            .name("tumbler-audit-fold".into())
            .spawn(move || {
                loop {
                    let stopping = {
                        let mut state = theirs.state.lock().unwrap_or_else(|p| p.into_inner());
                        while !state.0 && !state.1 {
                            state = theirs.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                        }
                        state.0 = false;
                        state.1
                    };
                    if stopping {
                        let _ = fold(&writer);
                        writer.journal.close();
                        // What came in between the fold and the close.
                        let _ = fold(&writer);
                        break;
                    }
                    // Let more gather: one transaction for all of them.
                    std::thread::sleep(FOLD_EVERY);
                    if let Err(e) = fold(&writer) {
                        tracing::error!(error = %e.message(), "the audit journal could not be folded; retrying");
                        std::thread::sleep(RETRY_AFTER);
                    }
                    if writer.journal.has_pending() {
                        theirs.state.lock().unwrap_or_else(|p| p.into_inner()).0 = true;
                    }
                }
            })
            .expect("the audit journal's thread could not be started");
        Folder { signal, thread: Mutex::new(Some(thread)) }
    }

    /// The journal went from empty to not.
    pub(super) fn wake(&self) {
        let mut state = self.signal.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 = true;
        self.signal.changed.notify_one();
    }

    fn signal_stop(&self) {
        self.signal.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.signal.changed.notify_one();
    }

    /// Folds what is left, closes the journal and ends the thread. Blocks.
    pub(super) fn stop(&self) {
        self.signal_stop();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        // Not joined: the last log may be dropped on an async thread.
        self.signal_stop();
    }
}

/// What `meta` says was folded, if anything.
pub fn position(conn: &rusqlite::Connection) -> Result<Option<(u64, usize)>> {
    let text: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([POSITION_KEY], |r| r.get(0))
        .optional()?;
    let Some(text) = text else { return Ok(None) };
    let parsed = text.split_once(':').and_then(|(g, o)| Some((g.parse().ok()?, o.parse().ok()?)));
    parsed
        .map(Some)
        .ok_or_else(|| Error::internal(format!("the audit journal position in meta is malformed ({text:?})")))
}

pub fn mac_key(store: &crate::store::Store) -> Zeroizing<[u8; 32]> {
    store.derive_key(MAC_PURPOSE)
}

fn entry_mac(key: &[u8; 32], generation: u64, at: usize, payload: &[u8]) -> Vec<u8> {
    crypto::mac(key, &[LABEL, &generation.to_be_bytes(), &(at as u64).to_be_bytes(), payload])
}

/// The entry at `at`, and where the next begins; `None` at the end mark.
/// An entry that does not check out (its MAC, its length, its encoding)
/// is refused with what is wrong: the journal was damaged or edited, and
/// what it says cannot be recorded as if it were true.
fn read_entry(
    bytes: &[u8],
    key: &[u8; 32],
    generation: u64,
    at: usize,
) -> std::result::Result<Option<(Entry, usize)>, &'static str> {
    if at + 4 > bytes.len() {
        return Err("no end mark");
    }
    let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
    if len == 0 {
        return Ok(None);
    }
    let next = at + 4 + len + MAC_LEN;
    if next + 4 > bytes.len() {
        return Err("a length past the end");
    }
    let payload = &bytes[at + 4..at + 4 + len];
    let mac = &bytes[at + 4 + len..next];
    if !bool::from(entry_mac(key, generation, at, payload).ct_eq(mac)) {
        return Err("a record whose MAC does not match");
    }
    let entry = decode(payload).ok_or("a record that does not decode")?;
    Ok(Some((entry, next)))
}

fn put(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn encode(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(&e.time.to_le_bytes());
    out.push(kind_code(e.kind));
    out.extend_from_slice(&e.status.map_or(u32::MAX, u32::from).to_le_bytes());
    for s in [&e.request_id, &e.token_id, &e.token_name, &e.client, &e.action, &e.resource, &e.outcome] {
        put(&mut out, s);
    }
    out.extend_from_slice(&(e.detail.len() as u32).to_le_bytes());
    for (k, v) in &e.detail {
        put(&mut out, k);
        put(&mut out, v);
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

fn decode(payload: &[u8]) -> Option<Entry> {
    let mut r = Reader(payload);
    let time = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let kind = kind_from(r.take(1)?[0])?;
    let status = match r.u32()? {
        u32::MAX => None,
        s => Some(u16::try_from(s).ok()?),
    };
    let mut strings = Vec::with_capacity(7);
    for _ in 0..7 {
        strings.push(r.string()?);
    }
    let mut detail = BTreeMap::new();
    for _ in 0..r.u32()? {
        let k = r.string()?;
        detail.insert(k, r.string()?);
    }
    if !r.0.is_empty() {
        return None;
    }
    let mut s = strings.into_iter();
    Some(Entry {
        time,
        kind,
        status,
        request_id: s.next()?,
        token_id: s.next()?,
        token_name: s.next()?,
        client: s.next()?,
        action: s.next()?,
        resource: s.next()?,
        outcome: s.next()?,
        detail,
    })
}

const KINDS: [EntryKind; 6] = [
    EntryKind::Request,
    EntryKind::Rotation,
    EntryKind::Lease,
    EntryKind::Plugin,
    EntryKind::Operator,
    EntryKind::System,
];

fn kind_code(kind: EntryKind) -> u8 {
    KINDS.iter().position(|k| *k == kind).expect("every kind is listed") as u8
}

fn kind_from(code: u8) -> Option<EntryKind> {
    KINDS.get(code as usize).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> Entry {
        let mut e = Entry::event(EntryKind::Request, "secret.read", &format!("app/db{i}"), "ok");
        e.request_id = format!("req-{i}");
        e.status = Some(200);
        e.with_detail("version_id", i)
    }

    fn key() -> Zeroizing<[u8; 32]> {
        Zeroizing::new([9; 32])
    }

    #[test]
    fn entries_encode_and_decode_unchanged() {
        let mut e = entry(3);
        e.kind = EntryKind::Plugin;
        e.status = None;
        e.client = "127.0.0.1:5000".into();
        let back = decode(&encode(&e)).unwrap();
        assert_eq!(format!("{back:?}"), format!("{e:?}"));
        assert!(decode(&encode(&e)[..10]).is_none());
    }

    #[test]
    fn a_reopened_journal_gives_back_what_was_not_folded() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, taken, _) = Journal::open(dir.path(), key(), None).unwrap();
        assert!(taken.entries.is_empty());
        for i in 0..3 {
            journal.append(entry(i)).unwrap();
        }
        // Folded up to here (as a fold would note in meta).
        let folded = journal.take();
        let position = Some((folded.generation, folded.end));
        for i in 3..5 {
            journal.append(entry(i)).unwrap();
        }
        drop(journal);
        let (_, taken, _) = Journal::open(dir.path(), key(), position).unwrap();
        let ids: Vec<_> = taken.entries.iter().map(|e| e.request_id.as_str()).collect();
        assert_eq!(ids, ["req-3", "req-4"]);
    }

    #[test]
    fn a_journal_started_over_does_not_give_back_the_last_generation() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _, _) = Journal::open(dir.path(), key(), None).unwrap();
        for i in 0..3 {
            journal.append(entry(i)).unwrap();
        }
        let taken = journal.take();
        let position = Some((taken.generation, taken.end));
        journal.folded(&taken);
        journal.append(entry(7)).unwrap();
        drop(journal);
        let (_, again, _) = Journal::open(dir.path(), key(), position).unwrap();
        let ids: Vec<_> = again.entries.iter().map(|e| e.request_id.as_str()).collect();
        assert_eq!(ids, ["req-7"]);
    }

    #[test]
    fn a_failed_fold_after_a_start_over_gets_its_entries_back() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _, _) = Journal::open(dir.path(), key(), None).unwrap();
        journal.append(entry(1)).unwrap();
        let first = journal.take();
        journal.folded(&first);
        journal.append(entry(2)).unwrap();
        let mut failed = journal.take();
        // The failed commit consumed them.
        failed.entries.clear();
        journal.unfolded(failed);
        assert!(journal.append(entry(9)).is_err(), "stalled by the failed fold");
        // A commit elsewhere succeeded.
        journal.set_stalled(false);
        journal.append(entry(3)).unwrap();
        let again = journal.take();
        let ids: Vec<_> = again.entries.iter().map(|e| e.request_id.as_str()).collect();
        assert_eq!(ids, ["req-2", "req-3"]);
        assert_eq!(again.from, HEADER, "from the start of the new generation");
    }

    #[test]
    fn an_edited_entry_or_a_wrong_key_stops_the_replay_there_and_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _, _) = Journal::open(dir.path(), key(), None).unwrap();
        for i in 1..=3 {
            journal.append(entry(i)).unwrap();
        }
        drop(journal);
        let (_, taken, damage) = Journal::open(dir.path(), Zeroizing::new([1; 32]), None).unwrap();
        assert!(taken.entries.is_empty());
        assert_eq!(damage, Some(Damage { at: HEADER, what: "a record whose MAC does not match" }));
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(5).position(|w| w == b"req-2").unwrap();
        bytes[at + 4] = b'7';
        std::fs::write(&path, &bytes).unwrap();
        let (_, taken, damage) = Journal::open(dir.path(), key(), None).unwrap();
        let ids: Vec<_> = taken.entries.iter().map(|e| e.request_id.as_str()).collect();
        assert_eq!(ids, ["req-1"], "what checked out before the edit");
        let damage = damage.expect("the edit is found");
        assert_eq!(damage.at, taken.end);
        assert_eq!(damage.what, "a record whose MAC does not match");
    }

    #[test]
    fn a_journal_a_power_cut_left_older_or_newer_than_the_store_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _, _) = Journal::open(dir.path(), key(), None).unwrap();
        journal.start_over(&mut journal.lock(), 5);
        journal.append(entry(1)).unwrap();
        drop(journal);
        // The store folded generations past the journal's pages on disk:
        // everything in it is in the table already.
        let (journal, taken, damage) = Journal::open(dir.path(), key(), Some((9, 300))).unwrap();
        assert!(taken.entries.is_empty() && damage.is_none());
        drop(journal);
        // The store's last noted folds were lost: the journal's generation
        // is read from its start.
        let (_, taken, damage) = Journal::open(dir.path(), key(), Some((2, 300))).unwrap();
        assert_eq!(taken.entries.len(), 1);
        assert!(damage.is_none());
    }

    #[test]
    fn the_journal_has_its_blocks_before_anything_is_written_into_it() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (_journal, _, _) = Journal::open(dir.path(), key(), None).unwrap();
        let meta = std::fs::metadata(dir.path().join(FILE)).unwrap();
        assert_eq!(meta.len(), SIZE as u64);
        // Not sparse: a full disk cannot fault a write into the mapping.
        assert!(meta.blocks() * 512 >= SIZE as u64, "{} blocks", meta.blocks());
        assert_eq!(meta.mode() & 0o777, 0o600);
    }

    #[test]
    fn a_second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _, _) = Journal::open(dir.path(), key(), None).unwrap();
        let err = Journal::open(dir.path(), key(), None).err().unwrap();
        assert!(err.message().contains("in use by another"), "{}", err.message());
        drop(journal);
        assert!(Journal::open(dir.path(), key(), None).is_ok());
    }

    #[test]
    fn a_full_or_stalled_journal_hands_the_entry_back() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _, _) = Journal::open(dir.path(), key(), None).unwrap();
        journal.set_stalled(true);
        assert!(journal.append(entry(1)).is_err());
        journal.set_stalled(false);
        let mut big = entry(2);
        big.detail.insert("x".into(), "y".repeat(SIZE));
        assert!(journal.append(big).is_err());
        assert!(matches!(journal.append(entry(3)), Ok(true)), "the first pending entry wakes the fold");
        assert!(matches!(journal.append(entry(4)), Ok(false)));
    }
}
