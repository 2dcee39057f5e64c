//! Group commit of rotation transitions. Every step of every rotation
//! commits its state before the plugin runs, so a busy engine commits far
//! more often than the disk can flush one at a time. Transitions queue
//! here; one task runs whatever has queued in one write transaction, each
//! in its own savepoint (a transition that fails rolls back alone), and
//! answers each caller once the whole batch is committed.
//!
//! Durability: a transition that stores what the target is about to
//! accept (the new version, before `set` runs) must survive a power cut,
//! or the store could lose a password the database already uses; such a
//! batch commits with `synchronous=FULL`. Every other transition only
//! records progress that a restart redoes safely (steps are idempotent:
//! after a lost `set → test` the rotation resumes at `set`), so a batch of
//! only those commits relaxed — in the WAL at once, on disk with the next
//! full commit. That is one fsync per rotation instead of four.

use crate::error::{Error, Result};
use crate::store::{Cached, Durability, Keys, Store};
use rusqlite::Transaction;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Most transitions in one transaction.
const MAX_BATCH: usize = 256;

/// Told whether the batch committed (`None`) or why not; answers the caller.
type Reply = Box<dyn FnOnce(Option<&Error>) + Send>;
/// Runs one transition in the batch's transaction.
type Run = Box<dyn FnOnce(&Transaction<'_>, &Keys) -> Reply + Send>;

struct Transition {
    run: Run,
    /// Must be on disk before its caller goes on.
    durable: bool,
}

#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Transition>,
}

impl Committer {
    pub fn start(store: Store) -> Committer {
        let (queue, receiver) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(run(store, receiver));
        Committer { queue }
    }

    /// Runs `f` in the next batch; returns its result once it is on disk.
    pub async fn commit<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &Keys) -> Result<T> + Send + 'static,
    {
        self.commit_with(true, f).await
    }

    /// Runs `f` in the next batch; returns once it is committed to the WAL
    /// (on disk with the next full commit). Only for transitions a restart
    /// redoes safely.
    pub async fn commit_relaxed<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &Keys) -> Result<T> + Send + 'static,
    {
        self.commit_with(false, f).await
    }

    async fn commit_with<T, F>(&self, durable: bool, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &Keys) -> Result<T> + Send + 'static,
    {
        let (done, wait) = oneshot::channel::<Result<T>>();
        let run: Run = Box::new(move |tx, keys| {
            let result = in_savepoint(tx, |tx| f(tx, keys));
            Box::new(move |failed: Option<&Error>| {
                let answer = match failed {
                    None => result,
                    Some(e) => Err(Error::new(e.kind, e.message())),
                };
                // A caller that went away needs no answer.
                let _ = done.send(answer);
            })
        });
        let gone = || Error::unavailable("the rotation engine is shutting down");
        self.queue.send(Transition { run, durable }).await.map_err(|_| gone())?;
        wait.await.map_err(|_| gone())?
    }
}

/// Runs `f` so that its changes are undone alone if it fails.
fn in_savepoint<T>(tx: &Transaction<'_>, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
    tx.exec("SAVEPOINT transition", [])?;
    let result = f(tx);
    if result.is_err() {
        tx.exec("ROLLBACK TO transition", [])?;
    }
    tx.exec("RELEASE transition", [])?;
    result
}

async fn run(store: Store, mut queue: mpsc::Receiver<Transition>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let transitions: Vec<Transition> = std::mem::take(&mut batch);
        // Kept outside the transaction, so that a failed commit still
        // reaches every caller.
        let replies: Arc<Mutex<Vec<Reply>>> = Arc::default();
        let made = replies.clone();
        let durable = transitions.iter().any(|t| t.durable);
        let work = move |tx: &Transaction<'_>, keys: &Keys| {
            let mut made = made.lock().unwrap_or_else(|p| p.into_inner());
            made.extend(transitions.into_iter().map(|t| (t.run)(tx, keys)));
            Ok(())
        };
        let durability = if durable { Durability::Full } else { Durability::Normal };
        let outcome = store.write_with(durability, work).await;
        let replies = std::mem::take(&mut *replies.lock().unwrap_or_else(|p| p.into_inner()));
        let failed = outcome.err();
        for reply in replies {
            reply(failed.as_ref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_store;

    #[tokio::test]
    async fn a_failing_transition_is_undone_alone_and_the_others_commit() {
        let (_dir, store) = test_store();
        let committer = Committer::start(store.clone());
        let write = |key: &'static str, fail: bool| {
            let c = committer.clone();
            async move {
                c.commit(move |tx, _| {
                    tx.execute("INSERT INTO meta (key, value) VALUES (?1, 'x')", [key])?;
                    if fail { Err(Error::conflict("refused")) } else { Ok(key) }
                })
                .await
            }
        };
        let (a, b, c) = tokio::join!(write("a", false), write("b", true), write("c", false));
        assert_eq!((a.unwrap(), c.unwrap()), ("a", "c"));
        assert_eq!(b.unwrap_err().kind, crate::error::Kind::Conflict);
        let keys: Vec<String> = store
            .read(|c, _| {
                let mut s = c.prepare("SELECT key FROM meta WHERE key IN ('a', 'b', 'c') ORDER BY key")?;
                let rows = s.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
                Ok(rows)
            })
            .await
            .unwrap();
        assert_eq!(keys, ["a", "c"]);
    }
}
