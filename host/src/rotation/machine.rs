//! Where a rotation's steps happen: one task per running rotation walks it
//! through `create`, `set`, `test` and `finish`, calling the plugin between
//! transitions that `state.rs` commits. A rotation holds a slot of the
//! global concurrency limit while its steps run back to back; it gives the
//! slot up to wait for a retry, and once its plugin's last step returned.

use super::Engine;
use super::state::{self, Cursor, Ended, Failure, Next, Outcome, Prepared, Status, Trigger};
use crate::alerts::Alert;
use crate::error::Result;
use crate::metrics::metrics;
use crate::model::{SecretName, SecretValue, now_millis};
use crate::plugins::bindings::tumbler::rotator::types::{StepInput, Version};
use crate::plugins::capabilities::GrantsSpec;
use crate::plugins::{CallContext, PluginError, PluginErrorKind, Step};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use zeroize::Zeroizing;

/// Drives rotation `id` from where its row says it stands until it ends,
/// waits to retry, or turns out to belong to someone else.
/// `slot` and `first` come from the scheduler, which starts a claimed
/// rotation's first step in the transaction that claims it.
pub async fn drive(engine: Arc<Engine>, id: String, slot: Option<OwnedSemaphorePermit>, first: Option<Next>) {
    if let Err(e) = drive_inner(&engine, &id, slot, first).await {
        // A storage error leaves the row as it was: the scheduler's next
        // tick drives it again from its recorded step.
        tracing::error!(rotation_id = %id, error = %e, "rotation paused by a storage error; the scheduler resumes it");
    }
    engine.finished_driving(&id);
}

async fn drive_inner(
    engine: &Arc<Engine>,
    id: &str,
    mut slot: Option<OwnedSemaphorePermit>,
    mut first: Option<Next>,
) -> Result<()> {
    let (mut cursor, mut wait_until) = match first {
        // Set from the prepared step before it is used.
        Some(_) => (Cursor { step: Step::Create, attempt: 0 }, None),
        None => {
            let rid = id.to_owned();
            let Some(row) = engine.store.read(move |c, _| state::load(c, &rid)).await? else { return Ok(()) };
            if row.status != Status::Running {
                return Ok(());
            }
            (row.cursor(), row.retry_at)
        }
    };
    loop {
        if let Some(at) = wait_until.take() {
            let wait = at - now_millis();
            if wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            }
        }
        let mut held = Some(match slot.take() {
            Some(s) => s,
            None => engine
                .slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| crate::error::Error::internal("rotation slots closed"))?,
        });
        let mut next = match first.take() {
            Some(next) => next,
            None => {
                let (audit, rid) = (engine.audit.clone(), id.to_owned());
                // Only records that a step starts: a restart redoes it.
                engine.committer.commit_relaxed(move |tx, keys| state::begin(tx, keys, &audit, &rid, cursor)).await?
            }
        };
        // Steps run back to back while they succeed; the slot is held until
        // the plugin's last step is done (recording it needs no slot).
        loop {
            match next {
                Next::Run(prepared) => {
                    cursor = prepared.cursor;
                    let (outcome, log) = run_step(engine, &prepared).await;
                    if cursor.step == Step::Finish && matches!(outcome, Outcome::Done) {
                        held = None;
                        // The scheduler may claim the next rotation in the
                        // batch that records this one's end.
                        engine.wake();
                    }
                    let (audit, rid, backoff) = (engine.audit.clone(), id.to_owned(), engine.settings.backoff);
                    // The new version must be on disk before `set` gives it
                    // to the target; every other transition a restart redoes.
                    let durable = matches!(outcome, Outcome::Created(_));
                    let advance = move |tx: &rusqlite::Transaction<'_>, keys: &crate::store::Keys| {
                        state::advance(tx, keys, &audit, &rid, cursor, outcome, &log, backoff)
                    };
                    next = if durable {
                        engine.committer.commit(advance).await?
                    } else {
                        engine.committer.commit_relaxed(advance).await?
                    };
                }
                Next::RetryAt(at) => {
                    wait_until = Some(at);
                    drop(held.take());
                    break;
                }
                Next::Ended(ended) => {
                    if ended.emergency && ended.status == Status::Succeeded {
                        // Idle database sessions may have logged in with a
                        // password this break glass just invalidated (an
                        // admin secret's): close them rather than let them
                        // live out their idle time.
                        crate::plugins::capabilities::sql::close_idle_sessions();
                    }
                    report(engine, &ended);
                    return Ok(());
                }
                Next::Stale => return Ok(()),
            }
        }
    }
}

/// Runs one step of the pinned plugin; never fails (a failure is an outcome).
async fn run_step(engine: &Engine, p: &Prepared) -> (Outcome, String) {
    let row = &p.row;
    let step = p.cursor.step;
    let plugin = match engine.registry.get_pinned(&row.plugin, &row.plugin_sha256).await {
        Ok((_, loaded)) => loaded,
        Err(e) => {
            let f = Failure::host(
                "plugin_missing",
                format!(
                    "plugin '{}' version {} (sha256 {}) pinned by this rotation is no longer registered ({}); \
                     upload it again or set the rotation config with another plugin",
                    row.plugin,
                    row.plugin_version,
                    row.plugin_sha256,
                    e.message()
                ),
            );
            return (Outcome::Failed(f), String::new());
        }
    };
    let grants = match serde_json::from_str::<GrantsSpec>(&row.grants)
        .map_err(|e| e.to_string())
        .and_then(|g| g.parse().map_err(|e| e.message().to_owned()))
    {
        Ok(g) => g,
        Err(e) => {
            return (
                Outcome::Failed(Failure::host("invalid_config", format!("the stored grants no longer parse: {e}"))),
                String::new(),
            );
        }
    };
    let secret = SecretName::parse(&row.secret_name).ok();
    let ctx = CallContext {
        plugin: row.plugin.clone(),
        secret,
        grants: Arc::new(grants),
        store: Some(engine.store.clone()),
        current_value: state::shared_value(&p.current),
        pending_value: state::shared_value(&p.pending),
        audit: Some(engine.audit.clone()),
    };
    let input = StepInput {
        secret_name: row.secret_name.clone(),
        params: row.params.clone(),
        current: state::wit_version(&p.current),
        // In `finish` the version rotated in is current already; it is
        // still the one this rotation made, so the plugin sees it as such.
        pending: state::wit_version(&p.pending),
        previous: state::wit_version(&p.previous),
        fell_off: state::wit_version(&p.fell_off),
        emergency: row.trigger == Trigger::BreakGlass.as_str(),
        older: p.older.iter().map(|v| Version { id: v.id.clone(), value: v.value.expose().to_owned() }).collect(),
    };
    let outcome = engine.runtime.run_step(&plugin, step, input, ctx).await;
    let m = metrics();
    m.rotation_step_duration.observe(&[&row.plugin, step.as_str()], outcome.duration.as_secs_f64());
    let result = match outcome.result {
        Ok(value) => match (step, value) {
            (Step::Create, Some(v)) => created(v),
            (Step::Create, None) => Outcome::Failed(Failure::host("invalid_value", "create returned no value")),
            _ => Outcome::Done,
        },
        Err(e) => {
            match e.kind {
                PluginErrorKind::Trap => m.plugin_traps.inc(&[&row.plugin]),
                PluginErrorKind::Timeout => m.plugin_timeouts.inc(&[&row.plugin]),
                _ => {}
            }
            Outcome::Failed(plugin_failure(&e))
        }
    };
    (result, outcome.log)
}

fn created(v: Zeroizing<String>) -> Outcome {
    // The message names the rule broken, never the value.
    match SecretValue::parse(v) {
        Ok(value) => Outcome::Created(value),
        Err(e) => Outcome::Failed(Failure::host(
            "invalid_value",
            format!("create returned a value tumbler cannot store: {}", e.message()),
        )),
    }
}

/// Which plugin failures are worth another attempt: the plugin said so, the
/// step ran out of time (a slow target), or the host failed. A trap, a
/// fatal error, an invalid component or a memory blow-up will do the same
/// again.
fn plugin_failure(e: &PluginError) -> Failure {
    let retryable = matches!(e.kind, PluginErrorKind::Retryable | PluginErrorKind::Timeout | PluginErrorKind::Host);
    Failure { code: e.code().to_owned(), message: e.message.clone(), retryable }
}

/// After a rotation ended: metrics, and an alert when it failed (the
/// secret, the rotation, the step and an error code; never plugin text).
fn report(engine: &Engine, ended: &Ended) {
    let outcome = if ended.status == Status::Succeeded { "succeeded" } else { "failed" };
    metrics().rotations.inc(&[&ended.plugin, outcome]);
    if ended.status == Status::Failed {
        let code = ended.error_code.as_deref().unwrap_or("failed");
        tracing::warn!(rotation_id = %ended.rotation_id, secret = %ended.secret, step = ended.step.as_str(), code, "rotation failed");
        engine.alerts.raise(Alert::rotation_failed(&ended.secret, &ended.rotation_id, ended.step.as_str(), code));
    } else {
        tracing::info!(rotation_id = %ended.rotation_id, secret = %ended.secret, "rotation succeeded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_that_may_pass_are_retried() {
        let f = |kind| plugin_failure(&PluginError { kind, message: "m".into() });
        assert!(f(PluginErrorKind::Retryable).retryable);
        assert!(f(PluginErrorKind::Timeout).retryable);
        assert!(!f(PluginErrorKind::Fatal).retryable);
        assert!(!f(PluginErrorKind::Trap).retryable);
        assert_eq!(f(PluginErrorKind::Fatal).code, "plugin_fatal");
    }

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        let b = state::Backoff { base_ms: 1000, max_ms: 10_000 };
        for attempt in 1..=10 {
            let d = b.delay_ms(attempt);
            let full = (1000i64 << (attempt - 1)).min(10_000);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d}");
        }
    }
}
