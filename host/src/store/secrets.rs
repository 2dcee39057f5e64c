//! Secrets, versions and labels: queries and the rules that go with them
//! (labels are unique per secret, `current` pushes the old one to
//! `previous`, unlabeled versions beyond 100 are pruned, client tokens make
//! writes idempotent). Values are sealed here and nowhere else.

use super::Cached;
use super::Keys;
use crate::crypto::{self, DataKey};
use crate::error::{Error, Result};
use crate::model::{ClientToken, Label, RecoveryDays, SecretName, SecretValue, now_millis, rfc3339};
use rand::RngCore;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;
use std::collections::BTreeMap;

/// Unlabeled versions kept per secret; older ones are pruned.
pub const KEEP_UNLABELED: i64 = 100;

pub type Tags = BTreeMap<String, String>;

#[derive(Serialize, utoipa::ToSchema)]
pub struct VersionInfo {
    pub version_id: String,
    pub labels: Vec<String>,
    pub created_at: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SecretSummary {
    pub name: String,
    pub description: String,
    pub tags: Tags,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purge_at: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SecretDescription {
    #[serde(flatten)]
    pub summary: SecretSummary,
    /// Incremented by every change; each change is a compare-and-set on it.
    pub generation: i64,
    pub versions: Vec<VersionInfo>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ValueRead {
    pub name: String,
    pub version_id: String,
    pub labels: Vec<String>,
    #[schema(value_type = String)]
    pub value: SecretValue,
    pub created_at: String,
}

/// The outcome of a write that may be a retry.
pub struct Written {
    pub version_id: String,
    /// False when a client token matched an earlier write with the same value.
    pub created: bool,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Selector {
    Label(Label),
    Version(String),
}

pub struct NewSecret {
    pub name: SecretName,
    pub value: SecretValue,
    pub description: String,
    pub tags: Tags,
    pub client_token: Option<ClientToken>,
}

impl NewSecret {
    /// A secret with just a name and a value: no description, tags or
    /// client token.
    pub fn new(name: SecretName, value: SecretValue) -> NewSecret {
        NewSecret { name, value, description: String::new(), tags: Tags::new(), client_token: None }
    }
}

pub(crate) struct SecretRow {
    pub(crate) id: i64,
    pub(crate) generation: i64,
    deleted_at: Option<i64>,
    purge_at: Option<i64>,
}

pub fn validate_tags(tags: &Tags) -> Result<()> {
    if tags.len() > 50 {
        return Err(Error::invalid(format!("{} tags given; at most 50 are allowed", tags.len())));
    }
    for (k, v) in tags {
        if k.is_empty() || k.len() > 128 || v.len() > 256 {
            return Err(Error::invalid(format!("tag {k:?}: keys need 1-128 characters and values at most 256")));
        }
    }
    Ok(())
}

pub fn validate_description(d: &str) -> Result<()> {
    if d.len() > 2048 {
        return Err(Error::invalid("description is longer than 2048 bytes"));
    }
    Ok(())
}

pub fn create(tx: &Transaction<'_>, keys: &Keys, new: NewSecret) -> Result<Written> {
    let name = new.name.as_str();
    if let Some(existing) = find(tx, name)? {
        // A retry of this very create is answered with what it made the first time.
        if let Some(token) = &new.client_token {
            if let Some(w) = replay(tx, keys, existing.id, token, &new.value)? {
                return Ok(w);
            }
        }
        return Err(match existing.deleted_at {
            Some(_) => Error::conflict(format!(
                "secret '{name}' exists and is scheduled for deletion; restore it \
                 (POST /v1/secrets/{name}:restore) or delete it with force=true first"
            )),
            None => Error::conflict(format!(
                "secret '{name}' already exists; add a version with POST /v1/secrets/{name}:versions"
            )),
        });
    }
    let now = now_millis();
    let dek = DataKey::generate();
    // The row id is needed in the wrapping AAD: insert, then seal the key.
    tx.exec(
        "INSERT INTO secrets (name, description, tags, dek_wrapped, dek_kek_id, created_at, updated_at)
         VALUES (?1, ?2, ?3, x'', '', ?4, ?4)",
        params![name, new.description, tags_json(&new.tags), now],
    )?;
    let id = tx.last_insert_rowid();
    tx.exec(
        "UPDATE secrets SET dek_wrapped = ?1, dek_kek_id = ?2 WHERE id = ?3",
        params![keys.master.wrap(id, &dek), keys.master.id(), id],
    )?;
    let version_id = insert_version(tx, keys, id, &dek, &new.value, new.client_token.as_ref(), now)?;
    assign_label(tx, id, &Label::current(), &version_id)?;
    Ok(Written { version_id, created: true })
}

pub fn put_version(
    tx: &Transaction<'_>,
    keys: &Keys,
    name: &SecretName,
    value: &SecretValue,
    client_token: Option<&ClientToken>,
    labels: &[Label],
) -> Result<Written> {
    let row = live(tx, name)?;
    if let Some(token) = client_token {
        if let Some(w) = replay(tx, keys, row.id, token, value)? {
            return Ok(w);
        }
    }
    if labels.iter().any(|l| l.as_str() == Label::PENDING) {
        refuse_if_rotation_owns_pending(tx, &row, name)?;
    }
    let dek = unwrap_dek(tx, keys, row.id)?;
    let now = now_millis();
    let version_id = insert_version(tx, keys, row.id, &dek, value, client_token, now)?;
    for label in labels {
        assign_label(tx, row.id, label, &version_id)?;
    }
    prune_unlabeled(tx, row.id)?;
    bump_generation(tx, &row, now)?;
    Ok(Written { version_id, created: true })
}

pub fn move_label(tx: &Transaction<'_>, name: &SecretName, label: &Label, version_id: &str) -> Result<()> {
    let row = live(tx, name)?;
    version_exists(tx, row.id, name, version_id)?;
    let owned = super::rotations::running_pending(tx, row.id)?;
    let touches_pending = label.as_str() == Label::PENDING || owned.as_deref() == Some(version_id);
    if touches_pending {
        refuse_if_rotation_owns_pending(tx, &row, name)?;
    }
    assign_label(tx, row.id, label, version_id)?;
    prune_unlabeled(tx, row.id)?;
    bump_generation(tx, &row, now_millis())
}

pub fn patch(tx: &Transaction<'_>, name: &SecretName, description: Option<String>, tags: Option<Tags>) -> Result<()> {
    let row = live(tx, name)?;
    if let Some(d) = description {
        tx.exec("UPDATE secrets SET description = ?1 WHERE id = ?2", params![d, row.id])?;
    }
    if let Some(t) = tags {
        tx.exec("UPDATE secrets SET tags = ?1 WHERE id = ?2", params![tags_json(&t), row.id])?;
    }
    bump_generation(tx, &row, now_millis())
}

const VALUE_BY_LABEL: &str = "SELECT v.id, v.nonce, v.ciphertext, v.created_at,
        (SELECT group_concat(label, ',') FROM labels WHERE version_id = v.id)
     FROM labels l JOIN versions v ON v.id = l.version_id
     WHERE l.secret_id = ?1 AND l.label = ?2";
const VALUE_BY_VERSION: &str = "SELECT id, nonce, ciphertext, created_at,
        (SELECT group_concat(label, ',') FROM labels WHERE version_id = versions.id)
     FROM versions WHERE secret_id = ?1 AND id = ?2";

pub fn read_value(conn: &Connection, keys: &Keys, name: &SecretName, sel: &Selector) -> Result<ValueRead> {
    open(keys, name, &locate(conn, name, sel)?)
}

/// A version as it is stored: what [`locate`] finds and [`open`] decrypts.
/// Nothing here is secret (the value is sealed, its data key wrapped), so
/// it may be kept in memory ([`super::values`]).
pub struct Sealed {
    secret_id: i64,
    version_id: String,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
    /// RFC 3339, formatted once rather than at every read of a cached version.
    created_at: String,
    /// Sorted.
    labels: Vec<String>,
    dek_wrapped: Vec<u8>,
    dek_kek_id: String,
}

impl Sealed {
    /// Bytes held, roughly (for the cache's bound).
    pub fn size(&self) -> usize {
        self.ciphertext.len() + self.dek_wrapped.len() + self.nonce.len() + 64 * (self.labels.len() + 2)
    }
}

/// Finds the version `sel` picks of a live secret, sealed.
pub fn locate(conn: &Connection, name: &SecretName, sel: &Selector) -> Result<Sealed> {
    let row = live(conn, name)?;
    let found = match sel {
        // Cached statements: a read is a few index lookups, and parsing the
        // SQL again would cost more than running it.
        Selector::Label(label) => {
            conn.prepare_cached(VALUE_BY_LABEL)?.query_row(params![row.id, label.as_str()], version_cols).optional()?
        }
        Selector::Version(id) => {
            conn.prepare_cached(VALUE_BY_VERSION)?.query_row(params![row.id, id], version_cols).optional()?
        }
    };
    let (version_id, nonce, ciphertext, created_at, labels) = found.ok_or_else(|| match sel {
        Selector::Label(l) => Error::not_found(format!(
            "secret '{name}' has no version labeled '{}'; list labels with GET /v1/secrets/{name}:versions",
            l.as_str()
        )),
        Selector::Version(v) => Error::not_found(format!(
            "secret '{name}' has no version '{v}'; list versions with GET /v1/secrets/{name}:versions"
        )),
    })?;
    let (dek_wrapped, dek_kek_id) = data_key_row(conn, row.id)?;
    // The labels come from the statement that found the version: a reader
    // sees them as they were at that instant, not after a later label move.
    let mut labels: Vec<String> = labels.map(|l| l.split(',').map(str::to_owned).collect()).unwrap_or_default();
    labels.sort();
    let created_at = rfc3339(created_at);
    Ok(Sealed { secret_id: row.id, version_id, nonce, ciphertext, created_at, labels, dek_wrapped, dek_kek_id })
}

/// Decrypts a located version.
pub fn open(keys: &Keys, name: &SecretName, sealed: &Sealed) -> Result<ValueRead> {
    let dek = unwrap_data_key(keys, sealed.secret_id, &sealed.dek_wrapped, &sealed.dek_kek_id)?;
    let version_id = &sealed.version_id;
    let plain = dek
        .decrypt(sealed.secret_id, version_id, &sealed.nonce, &sealed.ciphertext)
        .map_err(|e| Error::internal(format!("version {version_id} of secret '{name}' failed to decrypt: {e}")))?;
    Ok(ValueRead {
        name: name.to_string(),
        labels: sealed.labels.clone(),
        version_id: version_id.clone(),
        value: SecretValue::from_plaintext(plain)?,
        created_at: sealed.created_at.clone(),
    })
}

pub fn versions(conn: &Connection, name: &SecretName) -> Result<Vec<VersionInfo>> {
    let row = find(conn, name.as_str())?.ok_or_else(|| not_found(name))?;
    version_list(conn, row.id)
}

pub fn describe(conn: &Connection, name: &SecretName) -> Result<SecretDescription> {
    let (summary, id, generation) = conn
        .query_row(
            &format!("SELECT {SUMMARY_COLS}, id, generation FROM secrets WHERE name = ?1"),
            [name.as_str()],
            |r| Ok((summary_cols(r)?, r.get::<_, i64>(7)?, r.get::<_, i64>(8)?)),
        )
        .optional()?
        .ok_or_else(|| not_found(name))?;
    Ok(SecretDescription { summary, generation, versions: version_list(conn, id)? })
}

pub struct ListQuery {
    pub prefix: String,
    pub after: Option<String>,
    pub include_deleted: bool,
    pub limit: usize,
}

/// Lists names in order, keeping only those `visible` accepts; paging
/// counts after that filter. Returns the page and, when there is more, the
/// last name on it (the caller turns that into a page token).
pub fn list(
    conn: &Connection,
    q: &ListQuery,
    visible: impl Fn(&str) -> bool,
) -> Result<(Vec<SecretSummary>, Option<String>)> {
    const BATCH: usize = 512;
    // Names are ASCII below 0x7f, so this bounds the prefix range.
    let upper = format!("{}\u{7f}", q.prefix);
    let mut after = q.after.clone().unwrap_or_default();
    let mut page = Vec::with_capacity(q.limit.min(1000));
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SUMMARY_COLS} FROM secrets
         WHERE name > ?1 AND name >= ?2 AND name < ?3 AND (?4 OR deleted_at IS NULL)
         ORDER BY name LIMIT ?5"
    ))?;
    loop {
        let batch: Vec<SecretSummary> = stmt
            .query_map(params![after, q.prefix, upper, q.include_deleted, BATCH as i64], summary_cols)?
            .collect::<rusqlite::Result<_>>()?;
        let exhausted = batch.len() < BATCH;
        for s in batch {
            after = s.name.clone();
            if !visible(&s.name) {
                continue;
            }
            if page.len() == q.limit {
                let last = page.last().map(|p: &SecretSummary| p.name.clone());
                return Ok((page, last));
            }
            page.push(s);
        }
        if exhausted {
            return Ok((page, None));
        }
    }
}

pub fn soft_delete(tx: &Transaction<'_>, name: &SecretName, days: RecoveryDays) -> Result<String> {
    let row = live(tx, name)?;
    let now = now_millis();
    let purge_at = now + days.millis();
    tx.exec("UPDATE secrets SET deleted_at = ?1, purge_at = ?2 WHERE id = ?3", params![now, purge_at, row.id])?;
    bump_generation(tx, &row, now)?;
    Ok(rfc3339(purge_at))
}

pub fn force_delete(tx: &Transaction<'_>, name: &SecretName) -> Result<()> {
    let row = find(tx, name.as_str())?.ok_or_else(|| not_found(name))?;
    tx.exec("DELETE FROM secrets WHERE id = ?1", [row.id])?;
    Ok(())
}

pub fn restore(tx: &Transaction<'_>, name: &SecretName) -> Result<()> {
    let row = find(tx, name.as_str())?.ok_or_else(|| not_found(name))?;
    if row.deleted_at.is_none() {
        return Err(Error::conflict(format!("secret '{name}' is not deleted; nothing to restore")));
    }
    tx.exec("UPDATE secrets SET deleted_at = NULL, purge_at = NULL WHERE id = ?1", [row.id])?;
    bump_generation(tx, &row, now_millis())
}

/// Removes secrets whose recovery window has ended. Returns how many.
pub fn purge_expired(tx: &Transaction<'_>, now: i64) -> Result<usize> {
    Ok(tx.exec("DELETE FROM secrets WHERE purge_at IS NOT NULL AND purge_at <= ?1", [now])?)
}

/// Rewraps every data key under `new` in the caller's transaction.
pub fn rewrap_all(tx: &Transaction<'_>, old: &crypto::MasterKey, new: &crypto::MasterKey) -> Result<usize> {
    let rows: Vec<(i64, Vec<u8>, String)> = tx
        .prepare("SELECT id, dek_wrapped, dek_kek_id FROM secrets")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update = tx.prepare("UPDATE secrets SET dek_wrapped = ?1, dek_kek_id = ?2 WHERE id = ?3")?;
    for (id, wrapped, kek_id) in &rows {
        if kek_id != old.id() {
            return Err(Error::internal(format!(
                "secret row {id} is wrapped by key {kek_id}, not the current key {}; nothing was changed",
                old.id()
            )));
        }
        let dek = old
            .unwrap(*id, wrapped)
            .map_err(|e| Error::internal(format!("data key of secret row {id}: {e}; nothing was changed")))?;
        update.execute(params![new.wrap(*id, &dek), new.id(), id])?;
    }
    Ok(rows.len())
}

// --- helpers ---------------------------------------------------------------

const SUMMARY_COLS: &str = "name, description, tags, created_at, updated_at, deleted_at, purge_at";

fn summary_cols(r: &rusqlite::Row<'_>) -> rusqlite::Result<SecretSummary> {
    let tags: String = r.get(2)?;
    Ok(SecretSummary {
        name: r.get(0)?,
        description: r.get(1)?,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        created_at: rfc3339(r.get(3)?),
        updated_at: rfc3339(r.get(4)?),
        deleted_at: r.get::<_, Option<i64>>(5)?.map(rfc3339),
        purge_at: r.get::<_, Option<i64>>(6)?.map(rfc3339),
    })
}

type VersionCols = (String, Vec<u8>, Vec<u8>, i64, Option<String>);

fn version_cols(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionCols> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn tags_json(tags: &Tags) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "{}".into())
}

fn not_found(name: &SecretName) -> Error {
    Error::not_found(format!("secret '{name}' does not exist"))
}

const FIND: &str = "SELECT id, generation, deleted_at, purge_at FROM secrets WHERE name = ?1";
const DATA_KEY: &str = "SELECT dek_wrapped, dek_kek_id FROM secrets WHERE id = ?1";

fn find(conn: &Connection, name: &str) -> Result<Option<SecretRow>> {
    Ok(conn
        .prepare_cached(FIND)?
        .query_row([name], |r| {
            Ok(SecretRow { id: r.get(0)?, generation: r.get(1)?, deleted_at: r.get(2)?, purge_at: r.get(3)? })
        })
        .optional()?)
}

/// A running rotation owns `pending` from its start to its label move: a
/// write that would move `pending`, or put another label on the version
/// being rotated in, is refused rather than mixed into the rotation.
fn refuse_if_rotation_owns_pending(conn: &Connection, row: &SecretRow, name: &SecretName) -> Result<()> {
    match super::rotations::running_id(conn, row.id)? {
        Some(rotation_id) => Err(Error::conflict(format!(
            "rotation {rotation_id} of secret '{name}' owns the pending label until it ends; \
             wait for it (GET /v1/rotations/{rotation_id}) and retry"
        ))),
        None => Ok(()),
    }
}

/// The secret, if it exists and is not scheduled for deletion.
pub(crate) fn live(conn: &Connection, name: &SecretName) -> Result<SecretRow> {
    let row = find(conn, name.as_str())?.ok_or_else(|| not_found(name))?;
    if row.deleted_at.is_some() {
        return Err(Error::conflict(format!(
            "secret '{name}' is scheduled for deletion at {}; restore it with POST /v1/secrets/{name}:restore first",
            row.purge_at.map(rfc3339).unwrap_or_default()
        )));
    }
    Ok(row)
}

pub(crate) fn unwrap_dek(conn: &Connection, keys: &Keys, secret_id: i64) -> Result<DataKey> {
    let (wrapped, kek_id) = data_key_row(conn, secret_id)?;
    unwrap_data_key(keys, secret_id, &wrapped, &kek_id)
}

fn data_key_row(conn: &Connection, secret_id: i64) -> Result<(Vec<u8>, String)> {
    Ok(conn.prepare_cached(DATA_KEY)?.query_row([secret_id], |r| Ok((r.get(0)?, r.get(1)?)))?)
}

fn unwrap_data_key(keys: &Keys, secret_id: i64, wrapped: &[u8], kek_id: &str) -> Result<DataKey> {
    if kek_id != keys.master.id() {
        return Err(Error::internal(format!(
            "the data key of secret row {secret_id} is wrapped by master key {kek_id}, not the loaded key {}",
            keys.master.id()
        )));
    }
    keys.master
        .unwrap(secret_id, wrapped)
        .map_err(|e| Error::internal(format!("data key of secret row {secret_id}: {e}")))
}

pub(crate) fn insert_version(
    tx: &Transaction<'_>,
    keys: &Keys,
    secret_id: i64,
    dek: &DataKey,
    value: &SecretValue,
    client_token: Option<&ClientToken>,
    now: i64,
) -> Result<String> {
    let mut raw = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let version_id = hex::encode(raw);
    let (nonce, ciphertext) = dek.encrypt(secret_id, &version_id, value.expose().as_bytes());
    let (token_mac, value_mac) = match client_token {
        Some(t) => (Some(token_mac(keys, secret_id, t)), Some(value_mac(keys, secret_id, value))),
        None => (None, None),
    };
    let seq: i64 =
        tx.row("UPDATE secrets SET next_seq = next_seq + 1 WHERE id = ?1 RETURNING next_seq - 1", [secret_id], |r| {
            r.get(0)
        })?;
    tx.exec(
        "INSERT INTO versions (id, secret_id, seq, nonce, ciphertext, client_token_mac, value_mac, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![version_id, secret_id, seq, nonce, ciphertext, token_mac, value_mac, now],
    )?;
    Ok(version_id)
}

fn token_mac(keys: &Keys, secret_id: i64, token: &ClientToken) -> Vec<u8> {
    crypto::mac(&keys.client_token, &[b"client-token", &secret_id.to_be_bytes(), token.as_bytes()])
}

fn value_mac(keys: &Keys, secret_id: i64, value: &SecretValue) -> Vec<u8> {
    crypto::mac(&keys.client_token, &[b"value", &secret_id.to_be_bytes(), value.expose().as_bytes()])
}

/// A write carrying a client token seen before: the same value returns the
/// earlier version; another value is a conflict.
fn replay(
    conn: &Connection,
    keys: &Keys,
    secret_id: i64,
    token: &ClientToken,
    value: &SecretValue,
) -> Result<Option<Written>> {
    let earlier: Option<(String, Vec<u8>)> = conn
        .query_row(
            "SELECT id, value_mac FROM versions WHERE secret_id = ?1 AND client_token_mac = ?2",
            params![secret_id, token_mac(keys, secret_id, token)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match earlier {
        None => Ok(None),
        Some((version_id, mac)) => {
            use subtle::ConstantTimeEq;
            if bool::from(mac.ct_eq(&value_mac(keys, secret_id, value))) {
                Ok(Some(Written { version_id, created: false }))
            } else {
                Err(Error::conflict(
                    "this client_token was already used with a different value; use a new client_token for a new value",
                ))
            }
        }
    }
}

fn version_exists(conn: &Connection, secret_id: i64, name: &SecretName, version_id: &str) -> Result<()> {
    let found: Option<i64> = conn
        .query_row("SELECT 1 FROM versions WHERE secret_id = ?1 AND id = ?2", params![secret_id, version_id], |r| {
            r.get(0)
        })
        .optional()?;
    found.map(|_| ()).ok_or_else(|| {
        Error::not_found(format!(
            "secret '{name}' has no version '{version_id}'; list versions with GET /v1/secrets/{name}:versions"
        ))
    })
}

/// Points `label` at `version_id`. Moving `current` hands `previous` to the
/// version that was current, as AWS does.
pub(crate) fn assign_label(tx: &Transaction<'_>, secret_id: i64, label: &Label, version_id: &str) -> Result<()> {
    if label.as_str() == Label::CURRENT {
        let old = labeled(tx, secret_id, Label::CURRENT)?;
        if let Some(old) = old.filter(|old| old != version_id) {
            set_label(tx, secret_id, Label::PREVIOUS, &old)?;
        }
    }
    set_label(tx, secret_id, label.as_str(), version_id)
}

fn set_label(tx: &Transaction<'_>, secret_id: i64, label: &str, version_id: &str) -> Result<()> {
    tx.exec(
        "INSERT INTO labels (secret_id, label, version_id) VALUES (?1, ?2, ?3)
         ON CONFLICT (secret_id, label) DO UPDATE SET version_id = excluded.version_id",
        params![secret_id, label, version_id],
    )?;
    Ok(())
}

pub(crate) fn prune_unlabeled(tx: &Transaction<'_>, secret_id: i64) -> Result<()> {
    tx.exec(
        "DELETE FROM versions WHERE id IN (
            SELECT v.id FROM versions v
            WHERE v.secret_id = ?1
              AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.version_id = v.id)
            ORDER BY v.seq DESC LIMIT -1 OFFSET ?2)",
        params![secret_id, KEEP_UNLABELED],
    )?;
    Ok(())
}

/// The compare-and-set every change ends with: it fails if anyone changed
/// the secret since `row` was read.
pub(crate) fn bump_generation(tx: &Transaction<'_>, row: &SecretRow, now: i64) -> Result<()> {
    let n = tx.exec(
        "UPDATE secrets SET generation = generation + 1, updated_at = ?1 WHERE id = ?2 AND generation = ?3",
        params![now, row.id, row.generation],
    )?;
    if n != 1 {
        return Err(Error::conflict("the secret changed while this request ran; retry it"));
    }
    Ok(())
}

/// Removes `label` from the secret if it points at `version_id`.
pub(crate) fn remove_label(tx: &Transaction<'_>, secret_id: i64, label: &str, version_id: &str) -> Result<()> {
    tx.exec(
        "DELETE FROM labels WHERE secret_id = ?1 AND label = ?2 AND version_id = ?3",
        params![secret_id, label, version_id],
    )?;
    Ok(())
}

/// Deletes a version that no label points at any more (a failed
/// rotation's pending value); a labeled one is left alone.
pub(crate) fn drop_unlabeled_version(tx: &Transaction<'_>, secret_id: i64, version_id: &str) -> Result<bool> {
    let n = tx.exec(
        "DELETE FROM versions WHERE secret_id = ?1 AND id = ?2
           AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.version_id = versions.id)",
        params![secret_id, version_id],
    )?;
    Ok(n == 1)
}

/// The id of the version `label` points at.
pub(crate) fn labeled(conn: &Connection, secret_id: i64, label: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT version_id FROM labels WHERE secret_id = ?1 AND label = ?2")?
        .query_row(params![secret_id, label], |r| r.get(0))
        .optional()?)
}

fn version_list(conn: &Connection, secret_id: i64) -> Result<Vec<VersionInfo>> {
    let mut stmt = conn.prepare_cached(
        "SELECT v.id, v.created_at, group_concat(l.label, ',') FROM versions v
         LEFT JOIN labels l ON l.version_id = v.id
         WHERE v.secret_id = ?1 GROUP BY v.id ORDER BY v.seq DESC",
    )?;
    let rows = stmt
        .query_map([secret_id], |r| {
            let labels: Option<String> = r.get(2)?;
            let mut labels: Vec<String> = labels.map(|l| l.split(',').map(str::to_owned).collect()).unwrap_or_default();
            labels.sort();
            Ok(VersionInfo { version_id: r.get(0)?, created_at: rfc3339(r.get(1)?), labels })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_store;
    use zeroize::Zeroizing;

    fn value(s: &str) -> SecretValue {
        SecretValue::parse(Zeroizing::new(s.to_owned())).unwrap()
    }

    fn name(s: &str) -> SecretName {
        SecretName::parse(s).unwrap()
    }

    #[tokio::test]
    async fn reading_a_value_reuses_its_prepared_statements() {
        let (_dir, store) = test_store();
        let version = store
            .write(|tx, k| {
                let new = NewSecret::new(name("app/db"), value("v0"));
                create(tx, k, new)?;
                put_version(tx, k, &name("app/db"), &value("v1"), None, &[Label::current()])
            })
            .await
            .unwrap()
            .version_id;
        let reprepared = store
            .read(move |conn, keys| {
                for _ in 0..3 {
                    read_value(conn, keys, &name("app/db"), &Selector::Label(Label::current()))?;
                    read_value(conn, keys, &name("app/db"), &Selector::Version(version.clone()))?;
                }
                // Statements whose plan depends on a bound value are parsed
                // again at each new binding; none of these may be.
                let status = |sql| -> Result<(&str, i32)> {
                    Ok((sql, conn.prepare_cached(sql)?.get_status(rusqlite::StatementStatus::RePrepare)))
                };
                [FIND, DATA_KEY, VALUE_BY_LABEL, VALUE_BY_VERSION].into_iter().map(status).collect::<Result<Vec<_>>>()
            })
            .await
            .unwrap();
        assert!(reprepared.iter().all(|(_, n)| *n == 0), "{reprepared:?}");
    }

    #[tokio::test]
    async fn unlabeled_versions_beyond_the_limit_are_pruned() {
        let (_dir, store) = test_store();
        store
            .write(|tx, k| {
                let new = NewSecret::new(name("p"), value("v0"));
                create(tx, k, new)?;
                for i in 0..150 {
                    put_version(tx, k, &name("p"), &value(&format!("v{i}")), None, &[])?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let versions = store.read(|c, _| versions(c, &name("p"))).await.unwrap();
        assert_eq!(versions.len() as i64, KEEP_UNLABELED + 1, "100 unlabeled + current");
        assert!(versions.iter().any(|v| v.labels == ["current"]));
    }

    #[tokio::test]
    async fn moving_current_makes_the_old_current_previous() {
        let (_dir, store) = test_store();
        let (first, second) = store
            .write(|tx, k| {
                let new = NewSecret::new(name("m"), value("one"));
                let a = create(tx, k, new)?.version_id;
                let b = put_version(tx, k, &name("m"), &value("two"), None, &[Label::current()])?.version_id;
                Ok((a, b))
            })
            .await
            .unwrap();
        let f = first.clone();
        store.write(move |tx, _| move_label(tx, &name("m"), &Label::current(), &f)).await.unwrap();
        let read =
            store.read(|c, k| read_value(c, k, &name("m"), &Selector::Label(Label::parse("previous")?))).await.unwrap();
        assert_eq!(read.version_id, second);
        assert_eq!(read.value.expose(), "two");
    }
}
