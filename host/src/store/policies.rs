//! Policy rows: a name and its rules as JSON.

use super::Cached;
use crate::auth::Rule;
use crate::error::{Error, Result};
use crate::model::now_millis;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

pub fn put(tx: &Transaction<'_>, name: &str, rules: &[Rule]) -> Result<()> {
    let json = serde_json::to_string(rules).map_err(|e| Error::internal(e.to_string()))?;
    tx.exec(
        "INSERT INTO policies (name, rules, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET rules = excluded.rules, updated_at = excluded.updated_at",
        params![name, json, now_millis()],
    )?;
    Ok(())
}

pub fn get(conn: &Connection, name: &str) -> Result<Option<Vec<Rule>>> {
    let json: Option<String> = conn
        .prepare_cached("SELECT rules FROM policies WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?;
    json.map(|j| serde_json::from_str(&j).map_err(|e| Error::internal(format!("policy '{name}' is unreadable: {e}"))))
        .transpose()
}

pub fn list(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name FROM policies ORDER BY name")?;
    let names = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(names)
}

pub fn delete(tx: &Transaction<'_>, name: &str) -> Result<bool> {
    Ok(tx.exec("DELETE FROM policies WHERE name = ?1", [name])? == 1)
}
