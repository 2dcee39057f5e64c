//! The audit log: one record per API request, rotation step, lease event and
//! plugin capability call, chained with an HMAC so an edit, a deletion, a
//! reorder or a recomputed chain is detectable (`tumbler audit verify`).
//!
//! Fail closed: a mutation's record is appended in the mutation's own
//! transaction ([`RequestAudit::write`]). A record of what has already
//! happened and cannot be taken back ([`Durability::Normal`]: a read-only
//! request's, GET, HEAD, OPTIONS, whose body is sent only after; a plugin
//! capability call's, whose result the plugin sees only after; those of
//! rotation transitions a restart redoes) goes into the [`journal`] on the
//! caller's own thread, and is folded into the chain within milliseconds.
//! Any other record, and these too while the journal is stalled by a
//! failure or full, goes through group commit and the caller waits for
//! its commit. If a record cannot be written, the caller gets
//! `unavailable` (503) and nothing else changes.
//!
//! Durability: a mutation's record (in the mutation's transaction) and the
//! record of a refused mutating request are on disk (fsynced) before the
//! caller hears back. The others are in the kernel before the caller goes
//! on (in the journal's mapped pages, or committed to the WAL with
//! `synchronous=NORMAL`); a crash or kill of the process loses none of
//! them. They reach the disk within [`crate::store::SYNC_EVERY`] of their
//! fold or with the next fsynced commit, whichever is first, so a power cut
//! or kernel crash can lose at most the last fraction of a second of them,
//! never a mutation's, and what it loses is a suffix of the chain, so
//! `audit verify` still passes on what remains.
//!
//! Records never hold a secret value or a token: only names, ids, the
//! action, the outcome and short non-secret details.

mod batch;
pub mod chain;
pub mod journal;
mod request;
pub mod sink;
pub mod verify;

pub use chain::{Record, RecordJson};
pub use request::RequestAudit;

use crate::alerts::{Alert, Alerts};
use crate::error::{Error, Kind, Result};
use crate::metrics::metrics;
use crate::model::now_millis;
use crate::store::{Durability, Keys, Store};
use journal::Journal;
use rusqlite::Transaction;
use sink::FileSink;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc;
use tokio::sync::oneshot;

/// An audit failure raises at most one alert per this many milliseconds.
const ALERT_EVERY_MS: i64 = 60_000;

/// Who or what a record is about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EntryKind {
    #[default]
    Request,
    Rotation,
    Lease,
    Plugin,
    Operator,
    System,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Request => "request",
            EntryKind::Rotation => "rotation",
            EntryKind::Lease => "lease",
            EntryKind::Plugin => "plugin",
            EntryKind::Operator => "operator",
            EntryKind::System => "system",
        }
    }
}

/// What a record says, before it has a place in the chain.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    pub time: i64,
    pub kind: EntryKind,
    pub request_id: String,
    pub token_id: String,
    pub token_name: String,
    pub client: String,
    pub action: String,
    pub resource: String,
    pub status: Option<u16>,
    /// `ok` or an error code (`forbidden`, `plugin_failed`, `timeout`...).
    pub outcome: String,
    /// Short, non-secret facts: ids, step names, attempt numbers, hosts.
    pub detail: BTreeMap<String, String>,
}

impl Entry {
    /// An event that is not an API request.
    pub fn event(kind: EntryKind, action: &str, resource: &str, outcome: &str) -> Entry {
        Entry {
            time: now_millis(),
            kind,
            action: action.into(),
            resource: resource.into(),
            outcome: outcome.into(),
            ..Entry::default()
        }
    }

    pub fn with_detail(mut self, key: &str, value: impl ToString) -> Entry {
        self.detail.insert(key.into(), value.to_string());
        self
    }
}

// Hooks for the subsystems that land later (rotation engine, leases, plugin
// capabilities): one constructor each, so their records share one shape.
impl Entry {
    /// One step of a rotation (`create`, `set`, `test`, `finish`): which
    /// plugin, which attempt, and how it ended (an error code, never plugin text).
    pub fn rotation_step(
        secret: &str,
        rotation_id: &str,
        plugin: &str,
        step: &str,
        attempt: u32,
        outcome: &str,
    ) -> Entry {
        Entry::event(EntryKind::Rotation, "rotation.step", secret, outcome)
            .with_detail("rotation_id", rotation_id)
            .with_detail("plugin", plugin)
            .with_detail("step", step)
            .with_detail("attempt", attempt)
    }

    /// A lease event: `lease.issue`, `lease.renew`, `lease.revoke`,
    /// `lease.expire`, `lease.revoke_failed`...
    pub fn lease(action: &str, role: &str, lease_id: &str, outcome: &str) -> Entry {
        Entry::event(EntryKind::Lease, action, role, outcome).with_detail("lease_id", lease_id)
    }

    /// A plugin's call of a host capability (`sql`, `ssh`, `http`,
    /// `secrets`), with the target it asked for and whether the grant allowed it.
    pub fn plugin_call(secret: &str, plugin: &str, capability: &str, target: &str, outcome: &str) -> Entry {
        Entry::event(EntryKind::Plugin, "plugin.call", secret, outcome)
            .with_detail("plugin", plugin)
            .with_detail("capability", capability)
            .with_detail("target", target)
    }
}

/// Appends one entry in the caller's transaction, without the file sink:
/// for offline commands (`init`, the master key rotation) and the dev
/// server's start, which run without a server's [`AuditLog`].
pub fn append_offline(tx: &Transaction<'_>, keys: &Keys, entry: Entry) -> Result<()> {
    chain::append(tx, &keys.audit, vec![entry]).map(|_| ())
}

/// The audit log of a running server: appends records in callers'
/// transactions or through group commit, mirrors them to the file sink,
/// and raises an alert when it cannot.
#[derive(Clone)]
pub struct AuditLog {
    writer: Arc<Writer>,
    queue: mpsc::SyncSender<batch::Job>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// Ends the fold thread when the last clone is dropped.
    folder: Arc<journal::Folder>,
}

/// What appending needs; shared with the group-commit and fold threads,
/// which do not hold the queue's sender or the folder, so they end when
/// the last `AuditLog` is dropped.
struct Writer {
    store: Store,
    sink: Option<FileSink>,
    alerts: Alerts,
    last_alert: AtomicI64,
    journal: Journal,
}

impl AuditLog {
    /// Opens the journal, folds into the chain what a previous process
    /// left in it, and starts the group-commit and fold threads, which end
    /// at [`AuditLog::close`] or when the last clone of the returned log is
    /// dropped. Fails if the journal cannot be opened or folded: records
    /// would be lost or out of order.
    pub fn start(store: Store, sink: Option<FileSink>, alerts: Alerts) -> Result<AuditLog> {
        let journal = journal::recover(&store, sink.as_ref())?;
        let (queue, receiver) = mpsc::sync_channel(batch::QUEUE);
        let writer = Arc::new(Writer { store, sink, alerts, last_alert: AtomicI64::new(i64::MIN), journal });
        let batches = writer.clone();
        let thread = std::thread::Builder::new()
            .name("tumbler-audit".into())
            .spawn(move || batch::run(batches, receiver))
            .expect("the audit log's thread could not be started");
        let folder = journal::Folder::start(writer.clone());
        Ok(AuditLog { writer, queue, thread: Arc::new(std::sync::Mutex::new(Some(thread))), folder: Arc::new(folder) })
    }

    /// Folds what the journal holds into the chain now, so a reader of
    /// the table sees every record of what has been answered. Always
    /// through the fold's lock, even with nothing pending: the fold thread
    /// may have taken the last entries and not yet committed them.
    pub async fn flush(&self) -> Result<()> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || journal::fold(&writer))
            .await
            .map_err(|_| Error::unavailable("the audit journal could not be folded"))?
    }

    /// Commits what is queued, syncs the WAL and ends the group-commit
    /// thread, so its store connection is closed before the process exits
    /// (a clean close checkpoints the WAL). Appends after this fail with
    /// `unavailable`.
    pub async fn close(&self) {
        let folder = self.folder.clone();
        if tokio::task::spawn_blocking(move || folder.stop()).await.is_err() {
            tracing::error!("the audit journal's thread did not end cleanly");
        }
        let queue = self.queue.clone();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        let joined = tokio::task::spawn_blocking(move || {
            // Fails only if the thread is gone already.
            let _ = queue.send(batch::Job::Close);
            thread.map(|t| t.join())
        })
        .await;
        if !matches!(joined, Ok(None | Some(Ok(())))) {
            tracing::error!("the audit log's thread did not end cleanly");
        }
    }

    pub fn store(&self) -> &Store {
        &self.writer.store
    }

    /// Appends `entries` in the caller's write transaction: they commit or
    /// roll back with the caller's changes. An error here must fail the
    /// transaction (it comes back as `unavailable`).
    pub fn append_in(&self, tx: &Transaction<'_>, keys: &Keys, entries: Vec<Entry>) -> Result<()> {
        self.writer.append_in(tx, keys, entries)
    }

    /// Appends one entry through group commit; returns once it is on disk.
    pub async fn append(&self, entry: Entry) -> Result<()> {
        self.append_with(entry, Durability::Full).await
    }

    /// Appends one entry through group commit; returns once it is
    /// committed with `durability` (see the module's doc for which records
    /// may be [`Durability::Normal`]).
    pub async fn append_with(&self, entry: Entry, durability: Durability) -> Result<()> {
        let entry = match durability {
            Durability::Normal => match self.writer.journal.append(entry) {
                Ok(first) => {
                    if first {
                        self.folder.wake();
                    }
                    return Ok(());
                }
                // Stalled or full: group commit answers once it is committed.
                Err(entry) => entry,
            },
            Durability::Full => entry,
        };
        let (done, wait) = oneshot::channel();
        let gone = || Error::unavailable("the audit log is shutting down; the request was not carried out");
        match self.queue.try_send(batch::Job::Append(batch::Pending { entry, durability, done })) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(pending)) => {
                // Backpressure: wait for room off the async threads.
                let queue = self.queue.clone();
                let sent = tokio::task::spawn_blocking(move || queue.send(pending)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return Err(gone());
                }
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(gone()),
        }
        wait.await.map_err(|_| gone())?
    }
}

impl Writer {
    fn append_in(&self, tx: &Transaction<'_>, keys: &Keys, entries: Vec<Entry>) -> Result<()> {
        let written = chain::append(tx, &keys.audit, entries).and_then(|records| {
            if let Some(sink) = &self.sink {
                sink.write(&records)?;
            }
            Ok(records.len())
        });
        match written {
            // Counted before the commit: a transaction that then fails to
            // commit over-counts, which a counter of attempts can bear.
            Ok(n) => {
                metrics().audit_records.add(&[], n as u64);
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Counts the failure, raises an alert (at most one a minute) and turns
    /// the error into `unavailable`.
    fn failed(&self, e: Error) -> Error {
        metrics().audit_failures.inc(&[]);
        // Until a commit succeeds again, no record is answered before it is committed.
        self.journal.set_stalled(true);
        let now = now_millis();
        let last = self.last_alert.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= ALERT_EVERY_MS
            && self.last_alert.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.alerts.raise(Alert::audit_unavailable());
        }
        if e.kind == Kind::Unavailable {
            return e;
        }
        Error::unavailable(format!(
            "the audit log cannot be written ({}); the request was refused and nothing was changed",
            e.message()
        ))
    }
}

#[cfg(test)]
mod tests;
