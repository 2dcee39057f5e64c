//! Group commit: records that do not ride in a mutation's transaction nor
//! go through the journal (refused mutating requests, events, and read
//! records while the journal is stalled or full) queue here; one thread of its own writes
//! whatever has queued in one transaction while the next batch gathers,
//! and each waiter hears
//! back only when its own record is committed with the durability it asked
//! for. A batch of read-only requests' records commits to the WAL without
//! an fsync ([`Durability::Normal`]); a batch holding any other record is
//! fsynced ([`Durability::Full`]), and so is everything before it.

//!
//! A thread rather than a task: a task handed each batch to the blocking
//! pool and was woken again for its result, two thread hand-offs a batch
//! on the path of every read. The thread blocks on the queue and on the
//! writer, and answers each waiter directly.

use super::{Entry, Writer};
use crate::error::{Error, Kind, Result};
use crate::metrics::metrics;
use crate::store::Durability;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Duration;
use tokio::sync::oneshot;

/// Most records in one transaction (bounds how long a batch holds the writer).
const MAX_BATCH: usize = 512;
/// Records waiting beyond this make callers wait to enqueue (backpressure).
pub const QUEUE: usize = 8192;

/// How long a batch waits for more records once it sees it is not alone.
const LINGER: Duration = Duration::from_micros(100);

pub enum Job {
    Append(Pending),
    /// Commit what is queued, sync and end (see `AuditLog::close`).
    Close,
}

pub struct Pending {
    pub entry: Entry,
    pub durability: Durability,
    pub done: oneshot::Sender<Result<()>>,
}

/// Writes batches until closed or every `AuditLog` is gone, then syncs
/// what is left. Relaxed commits are synced meanwhile by the store's own
/// thread (within [`crate::store::SYNC_EVERY`]), never on this one: a
/// sync here held up every read waiting for its record.
pub fn run(writer: Arc<Writer>, queue: Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closing = false;
    // The last batch held more than one record.
    let mut busy = false;
    while !closing {
        let Ok(first) = queue.recv() else { break };
        take(first, &mut batch, &mut closing);
        let mut more = queue.try_iter().take(MAX_BATCH - 1).peekable();
        if more.peek().is_some() || busy {
            // Several writers are waiting: give the rest of them a moment
            // to queue, so one commit serves them all (fewer, larger
            // transactions: less CPU a record). A lone writer never waits.
            more.for_each(|job| take(job, &mut batch, &mut closing));
            std::thread::sleep(LINGER);
        }
        for job in queue.try_iter().take(MAX_BATCH.saturating_sub(batch.len())) {
            take(job, &mut batch, &mut closing);
        }
        busy = batch.len() > 1;
        if !batch.is_empty() {
            commit(&writer, &mut batch);
        }
    }
    sync(&writer);
}

fn take(job: Job, batch: &mut Vec<Pending>, closing: &mut bool) {
    match job {
        Job::Append(pending) => batch.push(pending),
        Job::Close => *closing = true,
    }
}

fn sync(writer: &Writer) {
    if let Err(e) = writer.store.sync_wal() {
        tracing::error!(error = %e.message(), "relaxed commits are not yet on disk");
    }
}

/// Commits `batch` in one transaction and tells each waiter how it went.
fn commit(writer: &Writer, batch: &mut Vec<Pending>) {
    let entries: Vec<Entry> = batch.iter_mut().map(|p| std::mem::take(&mut p.entry)).collect();
    metrics().audit_batch_records.observe(&[], entries.len() as f64);
    let durability = batch_durability(batch);
    let result = writer.store.write_blocking_with(durability, |tx, keys| writer.append_in(tx, keys, entries));
    let failure = match result {
        Ok(()) => {
            // Healthy again: read records may go through the journal.
            writer.journal.set_stalled(false);
            None
        }
        // append_in reported its own failures; a failed commit is reported here.
        Err(e) if e.kind == Kind::Unavailable => Some(e),
        Err(e) => Some(writer.failed(e)),
    };
    for pending in batch.drain(..) {
        let reply = match &failure {
            None => Ok(()),
            Some(e) => Err(Error::unavailable(e.message())),
        };
        // A waiter that went away (its client hung up) needs no answer.
        let _ = pending.done.send(reply);
    }
}

/// Relaxed only if every record in the batch asked for it.
fn batch_durability(batch: &[Pending]) -> Durability {
    match batch.iter().all(|p| p.durability == Durability::Normal) {
        true => Durability::Normal,
        false => Durability::Full,
    }
}
