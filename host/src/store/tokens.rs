//! Token rows. Only the SHA-256 of a token is stored.

use super::Cached;
use crate::error::Result;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;

pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub hash: Vec<u8>,
    pub policies: Vec<String>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub policies: Vec<String>,
    pub parent_id: Option<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked: bool,
}

pub struct NewToken<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub hash: &'a [u8],
    pub policies: &'a [String],
    pub parent_id: Option<&'a str>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

pub fn insert(tx: &Transaction<'_>, t: &NewToken<'_>) -> Result<()> {
    tx.exec(
        "INSERT INTO tokens (id, name, hash, policies, parent_id, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            t.id,
            t.name,
            t.hash,
            serde_json::to_string(t.policies).unwrap_or_else(|_| "[]".into()),
            t.parent_id,
            t.created_at,
            t.expires_at
        ],
    )?;
    Ok(())
}

pub fn by_hash(conn: &Connection, hash: &[u8]) -> Result<Option<TokenRow>> {
    Ok(conn
        .prepare_cached("SELECT id, name, hash, policies, expires_at, revoked_at FROM tokens WHERE hash = ?1")?
        .query_row([hash], |r| {
            let policies: String = r.get(3)?;
            Ok(TokenRow {
                id: r.get(0)?,
                name: r.get(1)?,
                hash: r.get(2)?,
                policies: serde_json::from_str(&policies).unwrap_or_default(),
                expires_at: r.get(4)?,
                revoked_at: r.get(5)?,
            })
        })
        .optional()?)
}

/// Revokes a token and every token minted from it. Returns how many rows changed,
/// or `None` if no token has that id.
pub fn revoke_tree(tx: &Transaction<'_>, id: &str, now: i64) -> Result<Option<usize>> {
    let exists: Option<i64> = tx.row("SELECT 1 FROM tokens WHERE id = ?1", [id], |r| r.get(0)).optional()?;
    if exists.is_none() {
        return Ok(None);
    }
    let tree: Vec<String> = tx
        .prepare(
            "WITH RECURSIVE tree(id) AS (
                 SELECT ?1 UNION SELECT tokens.id FROM tokens JOIN tree ON tokens.parent_id = tree.id)
             SELECT id FROM tree",
        )?
        .query_map([id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut n = 0;
    for t in &tree {
        n += tx.exec("UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL", params![t, now])?;
    }
    // A revoked token's leases go with it (the sweeper revokes them at the target).
    crate::leases::lease::mark_tokens(tx, &tree, now)?;
    Ok(Some(n))
}

pub fn list(conn: &Connection) -> Result<Vec<TokenInfo>> {
    let mut stmt = conn.prepare(
        "SELECT id, name, policies, parent_id, created_at, expires_at, revoked_at FROM tokens ORDER BY created_at",
    )?;
    let rows = stmt
        .query_map([], |r| {
            let policies: String = r.get(2)?;
            Ok(TokenInfo {
                id: r.get(0)?,
                name: r.get(1)?,
                policies: serde_json::from_str(&policies).unwrap_or_default(),
                parent_id: r.get(3)?,
                created_at: crate::model::rfc3339(r.get(4)?),
                expires_at: r.get::<_, Option<i64>>(5)?.map(crate::model::rfc3339),
                revoked: r.get::<_, Option<i64>>(6)?.is_some(),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}
