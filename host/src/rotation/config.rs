//! A secret's rotation config: parsed at the edge into types that cannot
//! hold bad values (the plugin pinned by sha256, the schedule, the window,
//! params checked against the plugin's schema, grants), stored with the
//! next due time the scheduler sleeps towards.

use super::params;
use super::schedule::{Schedule, Window};
use super::state::{self, Pinned};
use crate::error::{Error, Result};
use crate::model::{SecretName, now_millis, rfc3339};
use crate::plugins::capabilities::GrantsSpec;
use crate::plugins::registry::Registry;
use crate::store::Cached;
use crate::store::secrets;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// Most attempts a step may be given.
pub const MAX_ATTEMPTS: u32 = 20;

/// `PUT /v1/secrets/{name}:rotation`, as sent.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigRequest {
    /// A registered plugin's name.
    pub plugin: String,
    /// Its version (default: the newest); the config pins that version's sha256.
    pub plugin_version: Option<i64>,
    /// Cron, 5 fields (`0 3 * * *`) or 6 with seconds first, UTC; or `rate(N minutes|hours|days)`.
    pub schedule: String,
    /// A duration (`30m`, `2h`): each start is spread at random over it.
    pub window: Option<String>,
    /// A JSON object for the plugin, checked against its schema.
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
    #[serde(default)]
    pub grants: GrantsSpec,
    /// Start a rotation as soon as the config is stored.
    #[serde(default)]
    pub rotate_now: bool,
    /// Attempts per step before the rotation fails (default: the server's, 5).
    pub max_attempts: Option<u32>,
}

/// A config that parsed: it can only hold valid values.
pub struct RotationConfig {
    pub pinned: Pinned,
    pub schedule: Schedule,
    pub window: Window,
    /// Secret names the grants hand to the plugin (the caller must be able
    /// to read each).
    pub granted_secrets: Vec<SecretName>,
    pub rotate_now: bool,
}

impl ConfigRequest {
    /// Parses and checks everything but authorization; errors name the field.
    pub async fn parse(self, registry: &Registry, default_max_attempts: u32) -> Result<RotationConfig> {
        let schedule = Schedule::parse(&self.schedule)?;
        let now = now_millis();
        let window = match &self.window {
            None => Window::default(),
            Some(w) => Window::parse(w, &schedule, now)?,
        };
        let grants = self.grants.parse()?;
        let params = self.params.unwrap_or_else(|| Value::Object(Default::default()));
        if !params.is_object() {
            return Err(Error::invalid("params: must be a JSON object"));
        }
        let max_attempts = match self.max_attempts {
            None => default_max_attempts,
            Some(n @ 1..=MAX_ATTEMPTS) => n,
            Some(n) => return Err(Error::invalid(format!("max_attempts: {n} is not within 1 to {MAX_ATTEMPTS}"))),
        };
        let (version, _) = registry.get(&self.plugin, self.plugin_version).await.map_err(|e| match e.kind {
            crate::error::Kind::NotFound => Error::invalid(format!("plugin: {}", e.message())),
            _ => e,
        })?;
        if let Some(schema) = &version.info.params_schema {
            params::check(&params, schema)?;
        }
        let grants_json = serde_json::to_string(&self.grants).map_err(|e| Error::internal(e.to_string()))?;
        Ok(RotationConfig {
            pinned: Pinned {
                plugin: version.name,
                plugin_version: version.version,
                plugin_sha256: version.sha256,
                params: params.to_string(),
                grants: grants_json,
                max_attempts,
            },
            schedule,
            window,
            granted_secrets: grants.secrets,
            rotate_now: self.rotate_now,
        })
    }
}

/// `GET /v1/secrets/{name}:rotation`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ConfigView {
    pub secret: String,
    pub plugin: String,
    pub plugin_version: i64,
    pub plugin_sha256: String,
    pub schedule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[schema(value_type = Object)]
    pub params: Value,
    pub grants: GrantsSpec,
    pub max_attempts: u32,
    /// When the next scheduled rotation starts; absent while one runs (it
    /// is computed when that one ends).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_due: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running_rotation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_rotation: Option<LastRotation>,
    pub created_at: String,
    pub updated_at: String,
}

/// The latest rotation, briefly (the full record is at GET /v1/rotations/{id}).
#[derive(Serialize, utoipa::ToSchema)]
pub struct LastRotation {
    pub id: String,
    pub status: state::Status,
    pub step: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// Stores `config` for `secret` (replacing any) with its first due time.
pub fn put(tx: &Transaction<'_>, secret: &SecretName, config: &RotationConfig) -> Result<ConfigView> {
    let s = secrets::live(tx, secret)?;
    let now = now_millis();
    let slot = config.schedule.next_slot(None, now);
    let due = slot.map(|t| config.window.due(t));
    let p = &config.pinned;
    tx.exec(
        "INSERT INTO rotation_configs (secret_id, plugin, plugin_version, plugin_sha256, schedule, window_ms, params,
             grants, max_attempts, next_slot, next_due, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)
         ON CONFLICT (secret_id) DO UPDATE SET plugin = excluded.plugin, plugin_version = excluded.plugin_version,
             plugin_sha256 = excluded.plugin_sha256, schedule = excluded.schedule, window_ms = excluded.window_ms,
             params = excluded.params, grants = excluded.grants, max_attempts = excluded.max_attempts,
             next_slot = excluded.next_slot, next_due = excluded.next_due, updated_at = excluded.updated_at",
        params![
            s.id,
            p.plugin,
            p.plugin_version,
            p.plugin_sha256,
            config.schedule.as_str(),
            config.window.millis(),
            p.params,
            p.grants,
            p.max_attempts,
            slot,
            due,
            now
        ],
    )?;
    view(tx, secret)
}

/// Removes the config: no rotation is scheduled any more. A rotation
/// already running ends normally (it carries its own copy of the config).
pub fn remove(tx: &Transaction<'_>, secret: &SecretName) -> Result<()> {
    let s = secrets::live(tx, secret)?;
    if tx.exec("DELETE FROM rotation_configs WHERE secret_id = ?1", [s.id])? == 0 {
        return Err(not_configured(secret));
    }
    Ok(())
}

pub fn not_configured(secret: &SecretName) -> Error {
    Error::not_found(format!(
        "secret '{secret}' has no rotation config; set one with PUT /v1/secrets/{secret}:rotation"
    ))
}

struct ConfigRow {
    pinned: Pinned,
    schedule: String,
    window_ms: i64,
    next_due: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

fn load(conn: &Connection, secret_id: i64) -> Result<Option<ConfigRow>> {
    Ok(conn
        .prepare_cached(
            "SELECT plugin, plugin_version, plugin_sha256, params, grants, max_attempts, schedule, window_ms,
                    next_due, created_at, updated_at
             FROM rotation_configs WHERE secret_id = ?1",
        )?
        .query_row([secret_id], |r| {
            Ok(ConfigRow {
                pinned: Pinned {
                    plugin: r.get(0)?,
                    plugin_version: r.get(1)?,
                    plugin_sha256: r.get(2)?,
                    params: r.get(3)?,
                    grants: r.get(4)?,
                    max_attempts: r.get(5)?,
                },
                schedule: r.get(6)?,
                window_ms: r.get(7)?,
                next_due: r.get(8)?,
                created_at: r.get(9)?,
                updated_at: r.get(10)?,
            })
        })
        .optional()?)
}

/// The stored config of `secret` with its status.
pub fn view(conn: &Connection, secret: &SecretName) -> Result<ConfigView> {
    let id = state::secret_id(conn, secret)?;
    let c = load(conn, id)?.ok_or_else(|| not_configured(secret))?;
    let latest = state::latest(conn, id)?;
    let running = latest.as_ref().filter(|r| r.status == state::Status::Running).map(|r| r.id.clone());
    Ok(ConfigView {
        secret: secret.to_string(),
        plugin: c.pinned.plugin,
        plugin_version: c.pinned.plugin_version,
        plugin_sha256: c.pinned.plugin_sha256,
        schedule: c.schedule,
        window: (c.window_ms > 0)
            .then(|| humantime::format_duration(Duration::from_millis(c.window_ms as u64)).to_string()),
        params: serde_json::from_str(&c.pinned.params).unwrap_or(Value::Null),
        grants: serde_json::from_str(&c.pinned.grants).unwrap_or_default(),
        max_attempts: c.pinned.max_attempts,
        next_due: c.next_due.map(rfc3339),
        running_rotation_id: running,
        last_rotation: latest.map(|r| LastRotation {
            id: r.id,
            status: r.status,
            step: r.step.as_str().into(),
            error_code: r.error_code,
            finished_at: r.finished_at.map(rfc3339),
        }),
        created_at: rfc3339(c.created_at),
        updated_at: rfc3339(c.updated_at),
    })
}

/// The config a manual rotation of `secret` starts from.
pub fn pinned(conn: &Connection, secret: &SecretName) -> Result<Pinned> {
    let id = state::secret_id(conn, secret)?;
    Ok(load(conn, id)?.ok_or_else(|| not_configured(secret))?.pinned)
}

/// After a rotation ends: the next due time from the slot that fired (a
/// manual rotation counts from now). Nothing when the config was removed.
pub fn schedule_after_rotation(tx: &Transaction<'_>, secret_id: i64, fired: Option<i64>, now: i64) -> Result<()> {
    let Some(c) = load(tx, secret_id)? else { return Ok(()) };
    let (slot, due) = next_due(&c.schedule, c.window_ms, fired, now);
    tx.exec(
        "UPDATE rotation_configs SET next_slot = ?1, next_due = ?2 WHERE secret_id = ?3",
        params![slot, due, secret_id],
    )?;
    Ok(())
}

fn next_due(schedule: &str, window_ms: i64, fired: Option<i64>, now: i64) -> (Option<i64>, Option<i64>) {
    // A stored schedule parsed when it was set; one that no longer parses
    // (a newer binary's syntax, a hand-edited row) stops being scheduled
    // rather than failing the rotation that just ended.
    let Ok(schedule) = Schedule::parse(schedule) else {
        tracing::error!(schedule, "a stored rotation schedule does not parse; it is not scheduled again");
        return (None, None);
    };
    let slot = schedule.next_slot(fired, now);
    let window = Window(Duration::from_millis(window_ms.max(0) as u64));
    (slot, slot.map(|s| window.due(s)))
}

/// A config that came due, claimed by the scheduler.
pub struct Claimed {
    pub rotation_id: String,
    pub secret: String,
}

/// Starts rotations for up to `limit` configs due at `now`, earliest
/// first. Each claimed config's due time is cleared (the next one is
/// computed when its rotation ends), so a secret overdue for many slots
/// rotates once. A config whose secret already has a rotation running is
/// cleared the same way and left to that rotation.
pub fn claim_due(tx: &Transaction<'_>, now: i64, limit: usize) -> Result<Vec<Claimed>> {
    let due: Vec<(i64, String, Option<i64>)> = tx
        .prepare_cached(
            "SELECT c.secret_id, s.name, c.next_slot FROM rotation_configs c JOIN secrets s ON s.id = c.secret_id
             WHERE c.next_due IS NOT NULL AND c.next_due <= ?1 ORDER BY c.next_due LIMIT ?2",
        )?
        .query_map(params![now, limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut claimed = Vec::with_capacity(due.len());
    for (secret_id, name, slot) in due {
        tx.exec("UPDATE rotation_configs SET next_slot = NULL, next_due = NULL WHERE secret_id = ?1", [secret_id])?;
        let Ok(secret) = SecretName::parse(&name) else { continue };
        let Some(c) = load(tx, secret_id)? else { continue };
        // A secret in its recovery window is not rotated; restoring it does
        // not reschedule it until its config is set again.
        match state::start(tx, &secret, &c.pinned, state::Trigger::Schedule, slot.or(Some(now))) {
            Ok(started) if !started.already_running => {
                claimed.push(Claimed { rotation_id: started.rotation_id, secret: name })
            }
            Ok(_) => {}
            Err(e) if e.kind == crate::error::Kind::Conflict => {}
            Err(e) => return Err(e),
        }
    }
    Ok(claimed)
}

/// The earliest due time, and how many configs are due at `now`.
pub fn earliest_due(conn: &Connection) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT min(next_due) FROM rotation_configs WHERE next_due IS NOT NULL")?
        .query_row([], |r| r.get(0))?)
}

pub fn due_count(conn: &Connection, now: i64) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT count(*) FROM rotation_configs WHERE next_due IS NOT NULL AND next_due <= ?1")?
        .query_row([now], |r| r.get(0))?)
}
