//! Group commit: records that do not ride in a mutation's transaction (reads,
//! refused requests, events) queue here; one task writes whatever has queued
//! in one transaction while the next batch gathers, and each waiter hears
//! back only when its own record is on disk. Auditing every read thus costs
//! one fsync per batch, not per read.

use super::{Entry, Writer};
use crate::error::{Error, Kind, Result};
use crate::metrics::metrics;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most records in one transaction (bounds how long a batch holds the writer).
const MAX_BATCH: usize = 512;
/// Records waiting beyond this make callers wait to enqueue (backpressure).
pub const QUEUE: usize = 8192;

pub struct Pending {
    pub entry: Entry,
    pub done: oneshot::Sender<Result<()>>,
}

pub async fn run(writer: Arc<Writer>, mut queue: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let entries: Vec<Entry> = batch.iter_mut().map(|p| std::mem::take(&mut p.entry)).collect();
        metrics().audit_batch_records.observe(&[], entries.len() as f64);
        let w = writer.clone();
        let result = writer.store.write(move |tx, keys| w.append_in(tx, keys, &entries)).await;
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
