//! Lease rows: every function runs in the caller's transaction or on its
//! connection. A lease is `issuing` while its plugin call runs (so quotas
//! count it), `active` once the credential exists, `revoke_pending` from
//! the moment it must go until the target confirms, then `revoked`.

use super::roles::{self, RoleRow};
use crate::error::{Error, Result};
use crate::model::rfc3339;
use crate::store::Cached;
use crate::store::Keys;
use rand::RngCore;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;
use zeroize::Zeroizing;

#[derive(Clone, Debug)]
pub struct LeaseRow {
    pub id: String,
    pub role_id: i64,
    pub role: String,
    pub token_id: String,
    pub token_name: String,
    pub plugin: String,
    pub plugin_sha256: String,
    pub params: String,
    pub grants: String,
    pub state: String,
    pub issued_at: i64,
    pub expires_at: i64,
    pub max_expires_at: i64,
    pub revoke_reason: Option<String>,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    pub revoked_at: Option<i64>,
}

const COLS: &str = "l.id, l.role_id, r.name, l.token_id, l.token_name, l.plugin, l.plugin_sha256, l.params, l.grants,
    l.state, l.issued_at, l.expires_at, l.max_expires_at, l.revoke_reason, l.attempts, l.next_attempt_at,
    l.last_error, l.revoked_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LeaseRow> {
    Ok(LeaseRow {
        id: r.get(0)?,
        role_id: r.get(1)?,
        role: r.get(2)?,
        token_id: r.get(3)?,
        token_name: r.get(4)?,
        plugin: r.get(5)?,
        plugin_sha256: r.get(6)?,
        params: r.get(7)?,
        grants: r.get(8)?,
        state: r.get(9)?,
        issued_at: r.get(10)?,
        expires_at: r.get(11)?,
        max_expires_at: r.get(12)?,
        revoke_reason: r.get(13)?,
        attempts: r.get(14)?,
        next_attempt_at: r.get(15)?,
        last_error: r.get(16)?,
        revoked_at: r.get(17)?,
    })
}

pub fn not_found(id: &str) -> Error {
    Error::not_found(format!("no lease with id '{id}'"))
}

pub fn get(conn: &Connection, id: &str) -> Result<LeaseRow> {
    conn.prepare_cached(&format!("SELECT {COLS} FROM leases l JOIN roles r ON r.id = l.role_id WHERE l.id = ?1"))?
        .query_row([id], row)
        .optional()?
        .ok_or_else(|| not_found(id))
}

/// Who asks for a lease, and until when their token lives.
pub struct Holder<'a> {
    pub token_id: &'a str,
    pub token_name: &'a str,
    pub token_expires_at: Option<i64>,
    /// Leases one token may hold at once.
    pub token_quota: u32,
}

/// Reserves a lease (state `issuing`) within the role's and the token's
/// quotas; its end never passes the role's max TTL nor the token's expiry.
pub fn reserve(tx: &Transaction<'_>, role: &RoleRow, holder: &Holder<'_>, ttl_ms: i64, now: i64) -> Result<LeaseRow> {
    let role_open: i64 =
        tx.row("SELECT count(*) FROM leases WHERE role_id = ?1 AND state IN ('issuing', 'active')", [role.id], |r| {
            r.get(0)
        })?;
    if role_open >= i64::from(role.max_leases) {
        return Err(Error::conflict(format!(
            "role '{}' has {role_open} open leases, its limit (max_leases {}); revoke some or raise the limit",
            role.name, role.max_leases
        )));
    }
    let token_open: i64 = tx.row(
        "SELECT count(*) FROM leases WHERE token_id = ?1 AND state IN ('issuing', 'active')",
        [holder.token_id],
        |r| r.get(0),
    )?;
    if token_open >= i64::from(holder.token_quota) {
        return Err(Error::conflict(format!(
            "token '{}' holds {token_open} open leases, the most one token may hold; revoke some first",
            holder.token_name
        )));
    }
    let mut max_expires_at = now + role.max_ttl_ms;
    if let Some(t) = holder.token_expires_at {
        max_expires_at = max_expires_at.min(t);
    }
    if max_expires_at <= now + 1_000 {
        return Err(Error::invalid(
            "the token expires within a second; a lease cannot outlive the token that holds it",
        ));
    }
    let expires_at = (now + ttl_ms).min(max_expires_at);
    let mut raw = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let id = format!("lease_{}", hex::encode(raw));
    tx.exec(
        "INSERT INTO leases (id, role_id, token_id, token_name, plugin, plugin_sha256, params, grants, state,
             issued_at, expires_at, max_expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'issuing', ?9, ?10, ?11)",
        params![
            id,
            role.id,
            holder.token_id,
            holder.token_name,
            role.plugin,
            role.plugin_sha256,
            role.params,
            role.grants,
            now,
            expires_at,
            max_expires_at
        ],
    )?;
    get(tx, &id)
}

fn aad(id: &str) -> String {
    format!("lease:{id}")
}

/// The credential exists: seal what revoking it needs, and make it active.
pub fn activate(tx: &Transaction<'_>, keys: &Keys, lease: &LeaseRow, handle: &str) -> Result<()> {
    let dek = roles::data_key(tx, keys, lease.role_id)?;
    let (nonce, sealed) = dek.encrypt(lease.role_id, &aad(&lease.id), handle.as_bytes());
    let n = tx.exec(
        "UPDATE leases SET state = 'active', handle_nonce = ?2, handle_sealed = ?3 WHERE id = ?1 AND state = 'issuing'",
        params![lease.id, nonce, sealed],
    )?;
    if n != 1 {
        return Err(Error::conflict(format!("lease '{}' was revoked while it was being issued", lease.id)));
    }
    Ok(())
}

/// The issue failed: nothing exists at the target, forget the reservation.
pub fn abandon(tx: &Transaction<'_>, id: &str) -> Result<()> {
    tx.exec("DELETE FROM leases WHERE id = ?1 AND state = 'issuing'", [id])?;
    Ok(())
}

/// Reservations a crash interrupted: the plugin may or may not have made a
/// credential, but no handle was stored, so there is nothing to revoke it
/// with. Removed at start; returns their ids (for the audit log).
pub fn clear_interrupted(tx: &Transaction<'_>) -> Result<Vec<(String, String)>> {
    let rows: Vec<(String, String)> = tx
        .prepare("SELECT l.id, r.name FROM leases l JOIN roles r ON r.id = l.role_id WHERE l.state = 'issuing'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    tx.exec("DELETE FROM leases WHERE state = 'issuing'", [])?;
    Ok(rows)
}

pub fn handle(conn: &Connection, keys: &Keys, lease: &LeaseRow) -> Result<Zeroizing<String>> {
    let (nonce, sealed): (Option<Vec<u8>>, Option<Vec<u8>>) = conn
        .prepare_cached("SELECT handle_nonce, handle_sealed FROM leases WHERE id = ?1")?
        .query_row([&lease.id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (Some(nonce), Some(sealed)) = (nonce, sealed) else {
        return Err(Error::internal(format!("lease '{}' has no revoke handle", lease.id)));
    };
    let dek = roles::data_key(conn, keys, lease.role_id)?;
    let plain = dek
        .decrypt(lease.role_id, &aad(&lease.id), &nonce, &sealed)
        .map_err(|e| Error::internal(format!("revoke handle of lease '{}': {e}", lease.id)))?;
    String::from_utf8(plain.to_vec())
        .map(Zeroizing::new)
        .map_err(|_| Error::internal(format!("revoke handle of lease '{}' is not text", lease.id)))
}

pub fn set_expiry(tx: &Transaction<'_>, id: &str, expires_at: i64) -> Result<()> {
    let n = tx.exec("UPDATE leases SET expires_at = ?2 WHERE id = ?1 AND state = 'active'", params![id, expires_at])?;
    if n != 1 {
        return Err(Error::conflict(format!("lease '{id}' is no longer active")));
    }
    Ok(())
}

/// Marks leases to be revoked now (the sweeper or the caller does it).
/// Returns how many changed.
pub fn mark_revoke(tx: &Transaction<'_>, ids: &[String], reason: &str, now: i64) -> Result<usize> {
    let mut stmt = tx.prepare_cached(
        "UPDATE leases SET state = 'revoke_pending', revoke_reason = ?2, next_attempt_at = ?3
         WHERE id = ?1 AND state = 'active'",
    )?;
    let mut n = 0;
    for id in ids {
        n += stmt.execute(params![id, reason, now])?;
    }
    Ok(n)
}

/// Marks every active lease of a role; returns their ids.
pub fn mark_role(tx: &Transaction<'_>, role_id: i64, reason: &str, now: i64) -> Result<Vec<String>> {
    let ids: Vec<String> = tx
        .prepare_cached("SELECT id FROM leases WHERE role_id = ?1 AND state = 'active'")?
        .query_map([role_id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    mark_revoke(tx, &ids, reason, now)?;
    Ok(ids)
}

/// Marks every active lease held by these tokens (a revoked token's leases go with it).
pub fn mark_tokens(tx: &Transaction<'_>, token_ids: &[String], now: i64) -> Result<usize> {
    let mut n = 0;
    for t in token_ids {
        let ids: Vec<String> = tx
            .prepare_cached("SELECT id FROM leases WHERE token_id = ?1 AND state = 'active'")?
            .query_map([t], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        n += mark_revoke(tx, &ids, "token revoked", now)?;
    }
    Ok(n)
}

/// Active leases past their end become `revoke_pending`; returns how many.
pub fn expire_due(tx: &Transaction<'_>, now: i64) -> Result<usize> {
    Ok(tx.exec(
        "UPDATE leases SET state = 'revoke_pending', revoke_reason = 'expired', next_attempt_at = ?1
         WHERE state = 'active' AND expires_at <= ?1",
        [now],
    )?)
}

/// Leases whose revocation is due now, oldest first.
pub fn revocations_due(conn: &Connection, now: i64, limit: usize) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM leases WHERE state = 'revoke_pending' AND next_attempt_at <= ?1
         ORDER BY next_attempt_at LIMIT ?2",
    )?;
    Ok(stmt.query_map(params![now, limit as i64], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?)
}

/// When the sweeper next has something to do.
pub fn next_due(conn: &Connection) -> Result<Option<i64>> {
    Ok(conn.row(
        "SELECT min(t) FROM (
             SELECT min(expires_at) AS t FROM leases WHERE state = 'active'
             UNION ALL SELECT min(next_attempt_at) FROM leases WHERE state = 'revoke_pending')",
        [],
        |r| r.get(0),
    )?)
}

pub fn revoked(tx: &Transaction<'_>, id: &str, now: i64) -> Result<bool> {
    Ok(tx.exec(
        "UPDATE leases SET state = 'revoked', revoked_at = ?2, next_attempt_at = NULL, last_error = NULL,
             handle_nonce = NULL, handle_sealed = NULL
         WHERE id = ?1 AND state = 'revoke_pending'",
        params![id, now],
    )? == 1)
}

pub fn revoke_failed(tx: &Transaction<'_>, id: &str, next_attempt_at: i64, error: &str) -> Result<()> {
    tx.exec(
        "UPDATE leases SET attempts = attempts + 1, next_attempt_at = ?2, last_error = ?3
         WHERE id = ?1 AND state = 'revoke_pending'",
        params![id, next_attempt_at, error],
    )?;
    Ok(())
}

/// Revoked leases are kept this long for `GET /v1/leases`, then pruned.
pub const KEEP_REVOKED_MS: i64 = 7 * 24 * 3600 * 1000;

pub fn prune(tx: &Transaction<'_>, now: i64) -> Result<usize> {
    Ok(tx.exec("DELETE FROM leases WHERE state = 'revoked' AND revoked_at < ?1", [now - KEEP_REVOKED_MS])?)
}

pub fn counts(conn: &Connection) -> Result<(i64, i64)> {
    Ok(conn.row(
        "SELECT count(*) FILTER (WHERE state = 'active'), count(*) FILTER (WHERE state = 'revoke_pending') FROM leases",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

pub fn list(conn: &Connection, role: Option<&str>, after: Option<&str>, limit: usize) -> Result<Vec<LeaseRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLS} FROM leases l JOIN roles r ON r.id = l.role_id
         WHERE (?1 IS NULL OR r.name = ?1) AND (?2 IS NULL OR l.id > ?2) AND l.state != 'issuing'
         ORDER BY l.id LIMIT ?3"
    ))?;
    Ok(stmt.query_map(params![role, after, limit as i64], row)?.collect::<rusqlite::Result<_>>()?)
}

/// A lease as shown: never its credential nor its handle.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LeaseView {
    pub lease_id: String,
    pub role: String,
    pub state: String,
    pub token_id: String,
    pub token_name: String,
    pub issued_at: String,
    pub expires_at: String,
    pub max_expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoke_reason: Option<String>,
    pub revoke_attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// The error code of the last failed revocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

impl From<&LeaseRow> for LeaseView {
    fn from(l: &LeaseRow) -> Self {
        LeaseView {
            lease_id: l.id.clone(),
            role: l.role.clone(),
            state: l.state.clone(),
            token_id: l.token_id.clone(),
            token_name: l.token_name.clone(),
            issued_at: rfc3339(l.issued_at),
            expires_at: rfc3339(l.expires_at),
            max_expires_at: rfc3339(l.max_expires_at),
            revoke_reason: l.revoke_reason.clone(),
            revoke_attempts: l.attempts,
            next_attempt_at: l.next_attempt_at.filter(|_| l.state == "revoke_pending").map(rfc3339),
            last_error: l.last_error.clone(),
            revoked_at: l.revoked_at.map(rfc3339),
        }
    }
}
