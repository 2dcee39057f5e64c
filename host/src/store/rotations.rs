//! The rotation tables as the rest of the store sees them: which rotation
//! owns a secret's `pending` label, and which secrets a plugin version is
//! pinned by. The rotation engine's own queries live in `rotation/`.

use crate::error::Result;
use rusqlite::{Connection, OptionalExtension, params};

/// The id of the rotation running on the secret, if any.
pub fn running_id(conn: &Connection, secret_id: i64) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT id FROM rotations WHERE secret_id = ?1 AND status = 'running'")?
        .query_row([secret_id], |r| r.get(0))
        .optional()?)
}

/// The version a running rotation is rotating in, once `create` made it.
pub fn running_pending(conn: &Connection, secret_id: i64) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT pending_version FROM rotations
             WHERE secret_id = ?1 AND status = 'running' AND pending_version IS NOT NULL AND labels_moved = 0",
        )?
        .query_row([secret_id], |r| r.get(0))
        .optional()?)
}

/// Names of the secrets whose rotation config pins `plugin` (one version,
/// or any), at most `limit` of them.
pub fn plugin_users(conn: &Connection, plugin: &str, version: Option<i64>, limit: usize) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.name FROM rotation_configs c JOIN secrets s ON s.id = c.secret_id
         WHERE c.plugin = ?1 AND (?2 IS NULL OR c.plugin_version = ?2)
         ORDER BY s.name LIMIT ?3",
    )?;
    let names =
        stmt.query_map(params![plugin, version, limit as i64], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(names)
}
