//! The scheduler: one timer to the earliest due config (indexed in
//! SQLite), never a scan of every config per tick. When it fires it starts
//! as many due rotations as there are free slots and sleeps again; a
//! finished rotation or a changed config wakes it early.

use super::{Engine, config};
use crate::metrics::metrics;
use crate::model::now_millis;
use std::sync::Arc;
use std::time::Duration;

/// The longest sleep: a bound on how long a jump of the wall clock can go
/// unnoticed. One indexed lookup a minute costs nothing.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Pause after a storage error before trying again.
const ERROR_PAUSE: Duration = Duration::from_secs(5);

pub async fn run(engine: Arc<Engine>) {
    loop {
        let sleep = match tick(&engine).await {
            Ok(sleep) => sleep,
            Err(e) => {
                tracing::error!(error = %e, "the rotation scheduler could not read its queue; retrying");
                ERROR_PAUSE
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = engine.wake.notified() => {}
        }
    }
}

/// Starts what is due and free to run; returns how long to sleep.
async fn tick(engine: &Arc<Engine>) -> crate::error::Result<Duration> {
    let now = now_millis();
    // Slots are taken before claiming and handed to the rotations claimed,
    // so the scheduler never starts more than the limit lets run.
    let mut permits = Vec::new();
    while let Ok(p) = engine.slots.clone().try_acquire_owned() {
        permits.push(p);
    }
    let free = permits.len();
    if free > 0 {
        let audit = engine.audit.clone();
        // A claim lost in a power cut leaves the configs due: claimed again.
        let claimed = engine
            .committer
            .commit_relaxed(move |tx, keys| {
                let claimed = config::claim_due(tx, now, free)?;
                let entries: Vec<_> = claimed
                    .iter()
                    .map(|c| {
                        crate::audit::Entry::event(crate::audit::EntryKind::Rotation, "rotation.start", &c.secret, "ok")
                            .with_detail("rotation_id", &c.rotation_id)
                            .with_detail("trigger", "schedule")
                    })
                    .collect();
                if !entries.is_empty() {
                    audit.append_in(tx, keys, entries)?;
                }
                // Each claimed rotation's first step starts in this same
                // transaction: one commit fewer per rotation.
                let create = super::state::Cursor { step: crate::plugins::Step::Create, attempt: 0 };
                claimed
                    .into_iter()
                    .map(|c| {
                        let first = super::state::begin(tx, keys, &audit, &c.rotation_id, create)?;
                        Ok((c.rotation_id, first))
                    })
                    .collect::<crate::error::Result<Vec<_>>>()
            })
            .await?;
        for ((id, first), permit) in claimed.into_iter().zip(permits.drain(..)) {
            engine.drive_with(id, Some(permit), Some(first));
        }
        drop(permits);
    }
    // A rotation whose task stopped on a storage error is picked up again.
    let running = engine.store.read(|c, _| super::state::running(c)).await?;
    for id in running {
        engine.drive(id);
    }
    let (earliest, due) =
        engine.store.read(move |c, _| Ok((config::earliest_due(c)?, config::due_count(c, now_millis())?))).await?;
    let m = metrics();
    m.scheduler_queue_depth.set(&[], due as f64);
    m.scheduler_next_due.set(&[], earliest.map_or(0.0, |t| t as f64 / 1000.0));
    Ok(match earliest {
        // Due but no slot free: a finishing rotation wakes us.
        Some(t) if t <= now_millis() => {
            if engine.slots.available_permits() > 0 {
                Duration::ZERO
            } else {
                MAX_SLEEP
            }
        }
        Some(t) => Duration::from_millis((t - now_millis()).max(0) as u64).min(MAX_SLEEP),
        None => MAX_SLEEP,
    })
}
