//! Group commit of rotation transitions. Every step of every rotation
//! commits its state before the plugin runs, so a busy engine commits far
//! more often than the disk can flush one at a time. Transitions queue
//! here; one task runs whatever has queued in one write transaction, each
//! in its own savepoint (a transition that fails rolls back alone), and
//! answers each caller once the whole batch is on disk.

use crate::error::{Error, Result};
use crate::store::{Keys, Store};
use rusqlite::Transaction;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Most transitions in one transaction.
const MAX_BATCH: usize = 256;

/// Told whether the batch committed (`None`) or why not; answers the caller.
type Reply = Box<dyn FnOnce(Option<&Error>) + Send>;
/// Runs one transition in the batch's transaction.
type Transition = Box<dyn FnOnce(&Transaction<'_>, &Keys) -> Reply + Send>;

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

    /// Runs `f` in the next batch; returns its result once it is committed.
    pub async fn commit<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &Keys) -> Result<T> + Send + 'static,
    {
        let (done, wait) = oneshot::channel::<Result<T>>();
        let transition: Transition = Box::new(move |tx, keys| {
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
        self.queue.send(transition).await.map_err(|_| gone())?;
        wait.await.map_err(|_| gone())?
    }
}

/// Runs `f` so that its changes are undone alone if it fails.
fn in_savepoint<T>(tx: &Transaction<'_>, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
    tx.execute_batch("SAVEPOINT transition")?;
    let result = f(tx);
    let end = if result.is_ok() { "RELEASE transition" } else { "ROLLBACK TO transition; RELEASE transition" };
    tx.execute_batch(end)?;
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
        let outcome = store
            .write(move |tx, keys| {
                let mut made = made.lock().unwrap_or_else(|p| p.into_inner());
                made.extend(transitions.into_iter().map(|t| t(tx, keys)));
                Ok(())
            })
            .await;
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
