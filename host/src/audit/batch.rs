//! Group commit: records that do not ride in a mutation's transaction (reads,
//! refused requests, events) queue here; one task writes whatever has queued
//! in one transaction while the next batch gathers, and each waiter hears
//! back only when its own record is committed with the durability it asked
//! for. A batch of read-only requests' records commits to the WAL without
//! an fsync ([`Durability::Normal`]); a batch holding any other record is
//! fsynced ([`Durability::Full`]), and so is everything before it.

use super::{Entry, Writer};
use crate::error::{Error, Kind, Result};
use crate::metrics::metrics;
use crate::store::Durability;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most records in one transaction (bounds how long a batch holds the writer).
const MAX_BATCH: usize = 512;
/// Records waiting beyond this make callers wait to enqueue (backpressure).
pub const QUEUE: usize = 8192;

/// Longest time a [`Durability::Normal`] commit stays off the disk: the
/// WAL is synced this often while there is something to sync (as "fsync
/// every second" in other logs).
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

pub struct Pending {
    pub entry: Entry,
    pub durability: Durability,
    pub done: oneshot::Sender<Result<()>>,
}

/// Writes batches until every `AuditLog` is gone, and between them syncs
/// the WAL every [`SYNC_EVERY`] while relaxed commits (any writer's) wait
/// for it. A failed sync is logged and retried: those commits are made,
/// only their survival of a power cut is in doubt.
pub async fn run(writer: Arc<Writer>, mut queue: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut sync = tokio::time::interval(SYNC_EVERY);
    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // recv_many is cancel-safe: a tick loses no queued record.
        let received = tokio::select! {
            n = queue.recv_many(&mut batch, MAX_BATCH) => n,
            _ = sync.tick() => {
                if let Err(e) = writer.store.sync_wal().await {
                    tracing::error!(error = %e.message(), "relaxed commits are not yet on disk");
                }
                continue;
            }
        };
        if received == 0 {
            break;
        }
        let entries: Vec<Entry> = batch.iter_mut().map(|p| std::mem::take(&mut p.entry)).collect();
        metrics().audit_batch_records.observe(&[], entries.len() as f64);
        let durability = batch_durability(&batch);
        let w = writer.clone();
        let result = writer.store.write_with(durability, move |tx, keys| w.append_in(tx, keys, &entries)).await;
        let failure = match result {
            Ok(()) => None,
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
}

/// Relaxed only if every record in the batch asked for it.
fn batch_durability(batch: &[Pending]) -> Durability {
    match batch.iter().all(|p| p.durability == Durability::Normal) {
        true => Durability::Normal,
        false => Durability::Full,
    }
}
