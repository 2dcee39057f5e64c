//! The rotation engine: per-secret rotation configs, the persisted
//! four-step state machine, and the scheduler that starts rotations when
//! they come due.
//!
//! - `schedule.rs`: cron and `rate(...)` schedules, the start window.
//! - `params.rs`: plugin parameters checked against the plugin's schema.
//! - `config.rs`: a rotation config parsed at the edge, stored, and due.
//! - `state.rs`: the persisted state machine (one transaction per transition).
//! - `machine.rs`: the task that runs a rotation's steps.
//! - `scheduler.rs`: one timer to the earliest due config.

mod commit;
pub mod config;
pub mod machine;
pub mod params;
pub mod schedule;
pub mod scheduler;
pub mod state;

#[cfg(test)]
mod tests;

use crate::alerts::Alerts;
use crate::audit::AuditLog;
use crate::model::SecretName;
use crate::plugins::Runtime;
use crate::plugins::registry::Registry;
use crate::store::Store;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// Rotations whose steps may run at once by default. A step mostly waits
/// on its target (a database, a host, an API) or on a commit, so a low
/// limit leaves the machine idle: 10,000 due `noop` rotations ran at
/// 341/s with 4 and 506/s with 16 (BENCHMARKS.md).
pub const DEFAULT_CONCURRENCY: usize = 16;

/// How the engine runs; `serve` flags set these.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Rotations whose steps may run at once, across all secrets.
    pub concurrency: usize,
    /// Attempts per step when a config does not say.
    pub max_attempts: u32,
    pub backoff: state::Backoff,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            concurrency: DEFAULT_CONCURRENCY,
            max_attempts: 5,
            backoff: state::Backoff { base_ms: 1_000, max_ms: 300_000 },
        }
    }
}

impl Settings {
    pub fn with_retry(mut self, base: Duration, max: Duration) -> Self {
        self.backoff = state::Backoff { base_ms: base.as_millis() as i64, max_ms: max.as_millis().max(1) as i64 };
        self
    }
}

pub struct Engine {
    store: Store,
    audit: AuditLog,
    registry: Arc<Registry>,
    runtime: Arc<Runtime>,
    /// A break glass revokes the leases issued with the secret.
    leases: Arc<crate::leases::Leases>,
    alerts: Alerts,
    settings: Settings,
    /// The global concurrency limit: a rotation holds a slot from its
    /// first step until its plugin's last step returns, except while it
    /// waits to retry.
    slots: Arc<Semaphore>,
    /// Wakes the scheduler: a config changed or a rotation ended.
    wake: Notify,
    /// Group commit of the state machine's transitions.
    committer: commit::Committer,
    /// Rotations this process is driving, so none is driven twice.
    driving: Mutex<HashSet<String>>,
    /// Moves each time a rotation stops being driven (it ended, or waits
    /// to retry), for requests waiting on one (`GET /v1/rotations/ID?wait=`).
    stopped: tokio::sync::watch::Sender<u64>,
}

impl Engine {
    /// Builds the engine, resumes every rotation left running (after a
    /// crash, from its recorded step) and starts the scheduler.
    pub async fn start(
        store: Store,
        audit: AuditLog,
        registry: Arc<Registry>,
        leases: Arc<crate::leases::Leases>,
        alerts: Alerts,
        settings: Settings,
    ) -> crate::error::Result<Arc<Engine>> {
        let engine = Arc::new(Engine {
            runtime: registry.runtime(),
            slots: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            committer: commit::Committer::start(store.clone()),
            store,
            audit,
            registry,
            leases,
            alerts,
            settings,
            wake: Notify::new(),
            stopped: tokio::sync::watch::Sender::new(0),
            driving: Mutex::new(HashSet::new()),
        });
        let unfinished = engine.store.read(|c, _| state::running(c)).await?;
        if !unfinished.is_empty() {
            tracing::info!(count = unfinished.len(), "resuming rotations left running");
        }
        for id in unfinished {
            engine.drive(id);
        }
        tokio::spawn(scheduler::run(engine.clone()));
        Ok(engine)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Runs rotation `id` in the background unless it already runs here.
    pub fn drive(self: &Arc<Self>, id: String) {
        self.drive_with(id, None, None);
    }

    /// [`Engine::drive`] with a slot already taken and the first step
    /// already begun (by the scheduler).
    fn drive_with(
        self: &Arc<Self>,
        id: String,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
        first: Option<state::Next>,
    ) {
        let fresh = self.driving.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
        if fresh {
            tokio::spawn(machine::drive(self.clone(), id, slot, first));
        }
    }

    fn finished_driving(&self, id: &str) {
        self.driving.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.wake.notify_one();
        self.rotation_stopped();
    }

    /// Tells whoever waits on [`Engine::watch_stopped`] to read again.
    fn rotation_stopped(&self) {
        self.stopped.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes whenever a rotation stops being driven; subscribe before
    /// reading a rotation's row, then wait for a change to read it again.
    pub fn watch_stopped(&self) -> tokio::sync::watch::Receiver<u64> {
        self.stopped.subscribe()
    }

    /// Tells the scheduler to look again (a config was set or removed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Break glass on `name`: rotate now (overtaking a running rotation),
    /// invalidate every older credential in `finish`, revoke the leases of
    /// roles that log in with this secret, alert. Joins one in progress.
    pub async fn break_glass(
        self: &Arc<Self>,
        name: SecretName,
        reason: String,
        token_name: String,
        audit: &crate::audit::RequestAudit,
    ) -> crate::error::Result<state::Started> {
        let (n, log) = (name.clone(), self.audit.clone());
        let broken = audit
            .write_with_status(
                |_| axum::http::StatusCode::ACCEPTED,
                move |tx, keys| {
                    let pinned = config::pinned(tx, &n)?;
                    let broken = state::start_break_glass(tx, keys, &log, &n, &pinned, &reason)?;
                    if !broken.started.already_running {
                        let now = crate::model::now_millis();
                        for role in crate::leases::roles::using_admin_secret(tx, n.as_str())? {
                            crate::leases::lease::mark_role(
                                tx,
                                role.id,
                                "break glass on the role's admin secret",
                                now,
                            )?;
                        }
                    }
                    Ok(broken)
                },
            )
            .await?;
        if broken.started.already_running {
            return Ok(broken.started);
        }
        if broken.overtaken.is_some() {
            // Ended in that transaction, while its executor may still be
            // inside a plugin step: waiters hear now, not when it returns.
            self.rotation_stopped();
        }
        self.alerts.raise(crate::alerts::Alert::break_glass(name.as_str(), &token_name));
        self.leases.wake();
        let engine = self.clone();
        let id = broken.started.rotation_id.clone();
        tokio::spawn(async move {
            // The overtaken rotation's executor may be inside a plugin step
            // at the target: let that call return (its result is then
            // refused) before the break glass touches the target.
            if let Some(old) = broken.overtaken {
                let deadline = tokio::time::Instant::now() + engine.runtime.limits().step_timeout * 2;
                while engine.driving.lock().unwrap_or_else(|p| p.into_inner()).contains(&old)
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            engine.drive(id);
        });
        Ok(broken.started)
    }

    /// How many rotations this process is driving.
    pub fn active(&self) -> usize {
        self.driving.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
