//! The hash chain: each record's MAC covers a canonical encoding of its
//! contents and the previous record's MAC, under a key derived from the
//! master key; the head (last seq and MAC) is kept in `meta`, outside the
//! table, and moves in the same transaction as the records it covers.

use super::Entry;
use crate::crypto;
use crate::error::{Error, Result};
use crate::model::rfc3339;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;

/// The `prev_mac` of the first record.
pub const GENESIS: [u8; 32] = [0; 32];
/// Names the encoding, so a future change of layout cannot be confused with this one.
const ENCODING: &[u8] = b"tumbler/v1/audit-record";
const HEAD_KEY: &str = "audit_head";

/// A record as stored: an entry, its place in the chain and its MACs.
#[derive(Clone, Debug)]
pub struct Record {
    pub seq: i64,
    pub time: i64,
    pub kind: String,
    pub request_id: String,
    pub token_id: String,
    pub token_name: String,
    pub client: String,
    pub action: String,
    pub resource: String,
    pub status: Option<u16>,
    pub outcome: String,
    /// A JSON object of strings, MAC'd exactly as stored.
    pub detail: String,
    pub prev_mac: Vec<u8>,
    pub mac: Vec<u8>,
}

impl Record {
    /// Places `entry` after `prev_mac` at `seq` and computes its MAC.
    fn seal(key: &[u8; 32], seq: i64, entry: Entry, prev_mac: &[u8]) -> Record {
        let mut record = Record {
            seq,
            time: entry.time,
            kind: entry.kind.as_str().to_owned(),
            request_id: entry.request_id,
            token_id: entry.token_id,
            token_name: entry.token_name,
            client: entry.client,
            action: entry.action,
            resource: entry.resource,
            status: entry.status,
            outcome: entry.outcome,
            // A map of strings always serializes; the fallback is unreachable.
            detail: serde_json::to_string(&entry.detail).unwrap_or_else(|_| "{}".into()),
            prev_mac: prev_mac.to_vec(),
            mac: Vec::new(),
        };
        record.mac = record.expected_mac(key, prev_mac);
        record
    }

    /// The MAC this record should carry if it follows `prev_mac`: every
    /// field length-prefixed (crypto::mac), in a fixed order.
    pub fn expected_mac(&self, key: &[u8; 32], prev_mac: &[u8]) -> Vec<u8> {
        let status = self.status.map(|s| s.to_string()).unwrap_or_default();
        crypto::mac(
            key,
            &[
                ENCODING,
                &self.seq.to_be_bytes(),
                &self.time.to_be_bytes(),
                self.kind.as_bytes(),
                self.request_id.as_bytes(),
                self.token_id.as_bytes(),
                self.token_name.as_bytes(),
                self.client.as_bytes(),
                self.action.as_bytes(),
                self.resource.as_bytes(),
                status.as_bytes(),
                self.outcome.as_bytes(),
                self.detail.as_bytes(),
                prev_mac,
            ],
        )
    }

    /// The record as JSON (the API and the file sink): times in RFC 3339,
    /// MACs in hex, so a copy can be checked against the store.
    pub fn to_json(&self) -> RecordJson {
        RecordJson {
            seq: self.seq,
            time: rfc3339(self.time),
            kind: self.kind.clone(),
            request_id: self.request_id.clone(),
            token_id: self.token_id.clone(),
            token_name: self.token_name.clone(),
            client: self.client.clone(),
            action: self.action.clone(),
            resource: self.resource.clone(),
            status: self.status,
            outcome: self.outcome.clone(),
            detail: serde_json::from_str(&self.detail).unwrap_or(serde_json::Value::String(self.detail.clone())),
            prev_mac: hex::encode(&self.prev_mac),
            mac: hex::encode(&self.mac),
        }
    }
}

/// One audit record on the wire. Never holds a secret value or a token.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RecordJson {
    pub seq: i64,
    pub time: String,
    /// `request`, `rotation`, `lease`, `plugin`, `operator` or `system`.
    pub kind: String,
    pub request_id: String,
    pub token_id: String,
    pub token_name: String,
    /// Client address and port, for requests.
    pub client: String,
    /// What was done, e.g. `secret.read`, `token.create`, `rotation.step`.
    pub action: String,
    /// The secret or `sys/...` resource it was done to.
    pub resource: String,
    /// HTTP status, for requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `ok` or an error code.
    pub outcome: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    pub prev_mac: String,
    pub mac: String,
}

/// The head kept outside the table: the last record's seq and MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub mac: Vec<u8>,
}

impl Head {
    fn encode(&self) -> String {
        format!("{}:{}", self.seq, hex::encode(&self.mac))
    }

    fn decode(text: &str) -> Option<Head> {
        let (seq, mac) = text.split_once(':')?;
        let seq = seq.parse().ok().filter(|s| *s >= 0)?;
        let mac = if seq == 0 && mac.is_empty() { GENESIS.to_vec() } else { hex::decode(mac).ok()? };
        Some(Head { seq, mac })
    }
}

/// Reads the head; `None` if it is missing (the store predates the audit
/// log, or someone removed it).
pub fn head(conn: &Connection) -> Result<Option<Head>> {
    let text: Option<String> =
        conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?.query_row([HEAD_KEY], |r| r.get(0)).optional()?;
    match text {
        None => Ok(None),
        Some(t) => Head::decode(&t)
            .map(Some)
            .ok_or_else(|| Error::internal(format!("the audit chain head in meta is malformed ({t:?})"))),
    }
}

fn set_head(tx: &Transaction<'_>, head: &Head) -> Result<()> {
    tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = ?2")?.execute(params![head.encode(), HEAD_KEY])?;
    Ok(())
}

/// Appends `entries` in the caller's transaction and moves the head. The
/// next seq comes from the head, not the table, so rows cut off the end
/// leave a gap that `audit verify` reports instead of being papered over.
pub fn append(tx: &Transaction<'_>, key: &[u8; 32], entries: Vec<Entry>) -> Result<Vec<Record>> {
    let head = head(tx)?.ok_or_else(|| Error::internal("the audit chain head is missing from meta"))?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO audit (seq, time, kind, request_id, token_id, token_name, client, action,
                            resource, status, outcome, detail, prev_mac, mac)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    let (mut seq, mut prev) = (head.seq, head.mac);
    let mut records = Vec::with_capacity(entries.len());
    for entry in entries {
        seq += 1;
        let r = Record::seal(key, seq, entry, &prev);
        insert.execute(params![
            r.seq,
            r.time,
            r.kind,
            r.request_id,
            r.token_id,
            r.token_name,
            r.client,
            r.action,
            r.resource,
            r.status,
            r.outcome,
            r.detail,
            r.prev_mac,
            r.mac
        ])?;
        prev = r.mac.clone();
        records.push(r);
    }
    set_head(tx, &Head { seq, mac: prev })?;
    Ok(records)
}

const COLUMNS: &str = "seq, time, kind, request_id, token_id, token_name, client, action, resource, \
                       status, outcome, detail, prev_mac, mac";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        seq: r.get(0)?,
        time: r.get(1)?,
        kind: r.get(2)?,
        request_id: r.get(3)?,
        token_id: r.get(4)?,
        token_name: r.get(5)?,
        client: r.get(6)?,
        action: r.get(7)?,
        resource: r.get(8)?,
        status: r.get(9)?,
        outcome: r.get(10)?,
        detail: r.get(11)?,
        prev_mac: r.get(12)?,
        mac: r.get(13)?,
    })
}

/// Up to `limit` records with seq greater than `after`, in order.
pub fn list(conn: &Connection, after: i64, limit: usize) -> Result<Vec<Record>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"))?;
    let rows = stmt.query_map(params![after, limit as i64], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Calls `f` on every record in seq order, without holding them all in memory.
pub fn for_each(conn: &Connection, mut f: impl FnMut(Record) -> Result<()>) -> Result<()> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"))?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        f(from_row(row)?)?;
    }
    Ok(())
}

/// Re-MACs the whole chain under `new_key` after checking it under
/// `old_key` (a master key rotation changes the derived MAC key). A chain
/// that does not verify is refused, so a rotation can never launder an edit.
pub fn rekey(tx: &Transaction<'_>, old_key: &[u8; 32], new_key: &[u8; 32]) -> Result<i64> {
    let head = head(tx)?.ok_or_else(|| Error::internal("the audit chain head is missing from meta"))?;
    let mut check = super::verify::ChainCheck::new(old_key);
    let mut rewritten: Vec<(i64, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut new_prev = GENESIS.to_vec();
    for_each(tx, |mut record| {
        check.next(&record).map_err(|b| refuse_rekey(&b))?;
        record.prev_mac = new_prev.clone();
        let mac = record.expected_mac(new_key, &new_prev);
        new_prev = mac.clone();
        rewritten.push((record.seq, record.prev_mac, mac));
        Ok(())
    })?;
    check.finish(Some(&head)).map_err(|b| refuse_rekey(&b))?;
    let mut update = tx.prepare("UPDATE audit SET prev_mac = ?1, mac = ?2 WHERE seq = ?3")?;
    for (seq, prev, mac) in &rewritten {
        update.execute(params![prev, mac, seq])?;
    }
    set_head(tx, &Head { seq: head.seq, mac: new_prev })?;
    Ok(head.seq)
}

fn refuse_rekey(b: &super::verify::Break) -> Error {
    Error::conflict(format!(
        "the audit log does not verify under the current key (record {}: {}); nothing was changed. \
         Investigate with `tumbler audit verify` before rotating the master key",
        b.seq, b.problem
    ))
}
