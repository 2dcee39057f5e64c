//! Group commit of rotation transitions. Every step of every rotation
//! commits its state before the plugin runs, so a busy engine commits far
//! more often than the disk can flush one at a time. Transitions queue
//! here; one task runs whatever has queued in one write transaction, each
//! in its own savepoint (a transition that fails rolls back alone), and
//! answers each caller once the whole batch is on disk.

use super::state::Next;
use crate::error::{Error, Result};
use crate::store::{Keys, Store};
use rusqlite::Transaction;
use tokio::sync::{mpsc, oneshot};

/// Most transitions in one transaction.
const MAX_BATCH: usize = 256;

type Transition = Box<dyn FnOnce(&Transaction<'_>, &Keys) -> Result<Next> + Send>;

struct Job {
    transition: Transition,
    done: oneshot::Sender<Result<Next>>,
}

#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Job>,
}

impl Committer {
    pub fn start(store: Store) -> Committer {
        let (queue, receiver) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(run(store, receiver));
        Committer { queue }
    }

    /// Runs `transition` in the next batch; returns once it is committed.
    pub async fn commit<F>(&self, transition: F) -> Result<Next>
    where
        F: FnOnce(&Transaction<'_>, &Keys) -> Result<Next> + Send + 'static,
    {
        let (done, wait) = oneshot::channel();
        let gone = || Error::unavailable("the rotation engine is shutting down");
        self.queue.send(Job { transition: Box::new(transition), done }).await.map_err(|_| gone())?;
        wait.await.map_err(|_| gone())?
    }
}

async fn run(store: Store, mut queue: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let (transitions, replies): (Vec<Transition>, Vec<_>) = jobs.drain(..).map(|j| (j.transition, j.done)).unzip();
        let outcome = store
            .write(move |tx, keys| {
                let mut results = Vec::with_capacity(transitions.len());
                for transition in transitions {
                    tx.execute_batch("SAVEPOINT transition")?;
                    let result = transition(tx, keys);
                    let undo = if result.is_ok() { "RELEASE transition" } else { "ROLLBACK TO transition; RELEASE transition" };
                    tx.execute_batch(undo)?;
                    results.push(result);
                }
                Ok(results)
            })
            .await;
        match outcome {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    // A caller that went away needs no answer.
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(Error::new(e.kind, e.message())));
                }
            }
        }
    }
}
