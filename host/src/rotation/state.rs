//! The persisted rotation state machine: one row per rotation (the step
//! reached, its attempt, the pending version, the secret generation it last
//! wrote) and one row per step attempt (timings, outcome, sealed plugin log
//! and error). Every function here runs inside the caller's write
//! transaction, so a transition and its audit record commit together.
//!
//! | status    | step    | what happens next                                        |
//! |-----------|---------|----------------------------------------------------------|
//! | running   | create  | plugin returns a value → stored as `pending` → `set`     |
//! | running   | set     | plugin makes the target accept `pending` → `test`        |
//! | running   | test    | plugin proves `pending` works → `finish`                 |
//! | running   | finish  | host moves `current`/`previous` (once), plugin cleans up |
//! | succeeded | finish  | done; next due time computed                             |
//! | failed    | any     | pending dropped (if labels not moved), alert, next due   |
//!
//! A step's start (its attempt number) is committed before the plugin runs,
//! in the same transaction as the previous step's result. After a crash the
//! recorded step runs again (steps are idempotent; the interrupted attempt
//! is recorded as such). Each transition is a compare-and-set twice over:
//! on the rotation row (the step and attempt its executor expects, so a
//! stale executor changes nothing) and on the secret's generation (the
//! value the rotation recorded at its last write; if someone else changed
//! the secret since, the rotation goes on only if `current` and `pending`
//! are still where it left them, and stops as `superseded` otherwise).

use crate::audit::{AuditLog, Entry, EntryKind};
use crate::crypto::DataKey;
use crate::error::{Error, Result};
use crate::model::{Label, SecretName, SecretValue, now_millis, rfc3339};
use crate::plugins::Step;
use crate::store::Cached;
use crate::store::Keys;
use crate::store::secrets::{self, SecretRow, Selector};
use rand::RngCore;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;
use zeroize::Zeroizing;

/// Finished rotations kept per secret; older records are pruned.
pub const KEEP_HISTORY: i64 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Succeeded,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "running" => Status::Running,
            "succeeded" => Status::Succeeded,
            _ => Status::Failed,
        }
    }
}

/// What started a rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Manual,
    /// `:revoke`: rotate now, overtaking a running rotation, and have
    /// `finish` invalidate every older credential.
    BreakGlass,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::BreakGlass => "break_glass",
        }
    }
}

/// What a break glass did.
pub struct BrokenGlass {
    pub started: Started,
    /// The rotation it overtook (stopped, its pending version dropped).
    pub overtaken: Option<String>,
}

/// Starts a break-glass rotation of `secret`. A break glass already
/// running is joined (never a second one: it would revoke the credential
/// the first just made). Any other running rotation is overtaken in this
/// transaction: it ends as `overtaken`, its pending version is dropped and
/// the secret's generation moves, so every later step of its executor
/// fails its compare-and-set and it can never promote its own version.
pub fn start_break_glass(
    tx: &Transaction<'_>,
    keys: &Keys,
    audit: &AuditLog,
    secret: &SecretName,
    pinned: &Pinned,
    reason: &str,
) -> Result<BrokenGlass> {
    let s = secrets::live(tx, secret)?;
    let mut overtaken = None;
    if let Some(running) = crate::store::rotations::running_id(tx, s.id)? {
        let row = load(tx, &running)?.ok_or_else(|| error_for_missing(&running))?;
        if row.trigger == Trigger::BreakGlass.as_str() {
            return Ok(BrokenGlass { started: Started { rotation_id: running, already_running: true }, overtaken });
        }
        let f = Failure::host("overtaken", "a break glass on the secret overtook this rotation");
        fail(tx, keys, audit, row, f)?;
        overtaken = Some(running);
    }
    let started = start(tx, secret, pinned, Trigger::BreakGlass, None)?;
    tx.exec("UPDATE rotations SET reason = ?1 WHERE id = ?2", params![reason, started.rotation_id])?;
    Ok(BrokenGlass { started, overtaken })
}

pub fn parse_step(s: &str) -> Step {
    match s {
        "set" => Step::Set,
        "test" => Step::Test,
        "finish" => Step::Finish,
        _ => Step::Create,
    }
}

fn next_step(step: Step) -> Option<Step> {
    match step {
        Step::Create => Some(Step::Set),
        Step::Set => Some(Step::Test),
        Step::Test => Some(Step::Finish),
        Step::Finish => None,
    }
}

/// Where an executor believes the rotation stands; every transition checks
/// the row still says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub step: Step,
    pub attempt: u32,
}

/// One rotation as stored.
#[derive(Clone, Debug)]
pub struct RotationRow {
    pub id: String,
    pub secret_id: i64,
    pub secret_name: String,
    pub trigger: String,
    pub status: Status,
    pub step: Step,
    pub attempt: u32,
    pub retry_at: Option<i64>,
    pub generation: i64,
    pub from_version: Option<String>,
    pub pending_version: Option<String>,
    pub fell_off: Option<String>,
    pub labels_moved: bool,
    pub plugin: String,
    pub plugin_version: i64,
    pub plugin_sha256: String,
    pub params: String,
    pub grants: String,
    pub max_attempts: u32,
    pub scheduled_for: Option<i64>,
    pub error_code: Option<String>,
    error_sealed: Option<(Vec<u8>, Vec<u8>)>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

impl RotationRow {
    pub fn cursor(&self) -> Cursor {
        Cursor { step: self.step, attempt: self.attempt }
    }
}

const ROW_COLS: &str = "r.id, r.secret_id, s.name, r.trigger, r.status, r.step, r.attempt, r.retry_at, r.generation,
    r.from_version, r.pending_version, r.fell_off, r.labels_moved, r.plugin, r.plugin_version, r.plugin_sha256,
    r.params, r.grants, r.max_attempts, r.scheduled_for, r.error_code, r.error_nonce, r.error_sealed,
    r.created_at, r.updated_at, r.finished_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RotationRow> {
    let status: String = r.get(4)?;
    let step: String = r.get(5)?;
    let nonce: Option<Vec<u8>> = r.get(21)?;
    let sealed: Option<Vec<u8>> = r.get(22)?;
    Ok(RotationRow {
        id: r.get(0)?,
        secret_id: r.get(1)?,
        secret_name: r.get(2)?,
        trigger: r.get(3)?,
        status: Status::parse(&status),
        step: parse_step(&step),
        attempt: r.get(6)?,
        retry_at: r.get(7)?,
        generation: r.get(8)?,
        from_version: r.get(9)?,
        pending_version: r.get(10)?,
        fell_off: r.get(11)?,
        labels_moved: r.get(12)?,
        plugin: r.get(13)?,
        plugin_version: r.get(14)?,
        plugin_sha256: r.get(15)?,
        params: r.get(16)?,
        grants: r.get(17)?,
        max_attempts: r.get(18)?,
        scheduled_for: r.get(19)?,
        error_code: r.get(20)?,
        error_sealed: nonce.zip(sealed),
        created_at: r.get(23)?,
        updated_at: r.get(24)?,
        finished_at: r.get(25)?,
    })
}

pub fn load(conn: &Connection, id: &str) -> Result<Option<RotationRow>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {ROW_COLS} FROM rotations r JOIN secrets s ON s.id = r.secret_id WHERE r.id = ?1"
        ))?
        .query_row([id], row)
        .optional()?)
}

/// Every rotation left running (to resume at start), oldest first.
pub fn running(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT id FROM rotations WHERE status = 'running' ORDER BY created_at")?;
    let ids = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(ids)
}

/// The rotation config a rotation is started from (the pinned plugin and
/// what it runs with).
pub struct Pinned {
    pub plugin: String,
    pub plugin_version: i64,
    pub plugin_sha256: String,
    pub params: String,
    pub grants: String,
    pub max_attempts: u32,
}

/// What starting a rotation gave.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Started {
    pub rotation_id: String,
    /// True when a rotation was already running on the secret: no second
    /// one was started, and this is the running one's id.
    pub already_running: bool,
}

/// Starts a rotation of `secret` from `pinned`, or returns the one
/// already running (one rotation per secret at a time).
pub fn start(
    tx: &Transaction<'_>,
    secret: &SecretName,
    pinned: &Pinned,
    trigger: Trigger,
    scheduled_for: Option<i64>,
) -> Result<Started> {
    let s = secrets::live(tx, secret)?;
    if let Some(rotation_id) = crate::store::rotations::running_id(tx, s.id)? {
        return Ok(Started { rotation_id, already_running: true });
    }
    let now = now_millis();
    let mut raw = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let id = format!("rot_{}", hex::encode(raw));
    let from_version = secrets::labeled(tx, s.id, Label::CURRENT)?;
    // Taking ownership of `pending` is a change of the secret's state.
    secrets::bump_generation(tx, &s, now)?;
    tx.exec(
        "INSERT INTO rotations (id, secret_id, trigger, status, step, attempt, generation, from_version,
             plugin, plugin_version, plugin_sha256, params, grants, max_attempts, scheduled_for, created_at, updated_at)
         VALUES (?1, ?2, ?3, 'running', 'create', 0, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13)",
        params![
            id,
            s.id,
            trigger.as_str(),
            s.generation + 1,
            from_version,
            pinned.plugin,
            pinned.plugin_version,
            pinned.plugin_sha256,
            pinned.params,
            pinned.grants,
            pinned.max_attempts,
            scheduled_for,
            now
        ],
    )?;
    Ok(Started { rotation_id: id, already_running: false })
}

/// A version handed to a step: its id and value.
pub struct StepVersion {
    pub id: String,
    pub value: SecretValue,
}

/// A step that has been committed as started and may now run.
pub struct Prepared {
    pub row: RotationRow,
    pub cursor: Cursor,
    pub current: Option<StepVersion>,
    pub pending: Option<StepVersion>,
    pub previous: Option<StepVersion>,
    pub fell_off: Option<StepVersion>,
    /// In a break glass's `finish`: every other version held, newest first.
    pub older: Vec<StepVersion>,
}

/// What a transition decided.
pub enum Next {
    /// The next step (or the next attempt of this one) is committed as
    /// started: run it.
    Run(Box<Prepared>),
    /// The step failed and will be tried again at this time.
    RetryAt(i64),
    /// The rotation ended; the caller reports it (metrics, alert).
    Ended(Ended),
    /// The row no longer says what this executor expected (another
    /// executor moved it, or the secret was purged): change nothing.
    Stale,
}

#[derive(Debug, Clone)]
pub struct Ended {
    pub rotation_id: String,
    pub secret: String,
    pub plugin: String,
    pub step: Step,
    pub status: Status,
    pub error_code: Option<String>,
    /// A break glass: every older credential is invalid now.
    pub emergency: bool,
}

/// How a step attempt ended.
pub enum Outcome {
    /// `create` returned this value.
    Created(SecretValue),
    /// `set`, `test` or `finish` succeeded.
    Done,
    Failed(Failure),
}

/// A failed step: a code safe to show anyone, and a message that may hold
/// plugin text (sealed, shown only to readers of the secret).
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

impl Failure {
    pub fn host(code: &str, message: impl Into<String>) -> Failure {
        Failure { code: code.into(), message: message.into(), retryable: false }
    }
}

/// Retry timing (exponential backoff with jitter).
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base_ms: i64,
    pub max_ms: i64,
}

impl Backoff {
    /// The wait after failed attempt `attempt` (1-based): base·2^(n-1),
    /// capped, then drawn from its upper half so retries of many secrets
    /// failing together spread out.
    pub fn delay_ms(&self, attempt: u32) -> i64 {
        let exp = self.base_ms.saturating_mul(1i64 << attempt.saturating_sub(1).min(30));
        let full = exp.min(self.max_ms).max(1);
        full / 2 + (rand::random::<u64>() % (full as u64 / 2 + 1)) as i64
    }
}

/// The transaction's view of the rotation and its secret, after both
/// compare-and-sets passed.
struct Checked {
    row: RotationRow,
    secret: SecretRow,
    name: SecretName,
}

enum Check {
    Ok(Checked),
    Stale,
    /// The secret changed under the rotation; it must stop.
    Stop(RotationRow, Failure),
}

fn check(tx: &Transaction<'_>, id: &str, cursor: Cursor) -> Result<Check> {
    let Some(row) = load(tx, id)? else { return Ok(Check::Stale) };
    if row.status != Status::Running || row.cursor() != cursor {
        return Ok(Check::Stale);
    }
    let name = SecretName::parse(&row.secret_name)?;
    let secret = match secrets::live(tx, &name) {
        Ok(s) => s,
        Err(e) if e.kind == crate::error::Kind::Conflict => {
            let f = Failure::host("secret_deleted", "the secret was deleted while it rotated");
            return Ok(Check::Stop(row, f));
        }
        Err(e) => return Err(e),
    };
    if secret.generation != row.generation && !labels_where_left(tx, &row)? {
        let f = Failure::host(
            "superseded",
            format!(
                "the secret's labels changed while it rotated (generation {} → {}); the rotation stopped \
                 without touching current",
                row.generation, secret.generation
            ),
        );
        return Ok(Check::Stop(row, f));
    }
    Ok(Check::Ok(Checked { row, secret, name }))
}

/// Whether `current` and `pending` are where this rotation left them (a
/// newer generation from a description or tag change is no conflict).
fn labels_where_left(conn: &Connection, row: &RotationRow) -> Result<bool> {
    let current = secrets::labeled(conn, row.secret_id, Label::CURRENT)?;
    if row.labels_moved {
        return Ok(current == row.pending_version);
    }
    let pending_ok = match &row.pending_version {
        None => true,
        Some(p) => secrets::labeled(conn, row.secret_id, Label::PENDING)?.as_ref() == Some(p),
    };
    Ok(current == row.from_version && pending_ok)
}

/// Commits the start of the step at `cursor` (its next attempt) and
/// returns what the plugin is to be given.
pub fn begin(tx: &Transaction<'_>, keys: &Keys, audit: &AuditLog, id: &str, cursor: Cursor) -> Result<Next> {
    let checked = match check(tx, id, cursor)? {
        Check::Ok(c) => c,
        Check::Stale => return Ok(Next::Stale),
        Check::Stop(row, failure) => return fail(tx, keys, audit, row, failure),
    };
    begin_checked(tx, keys, audit, checked)
}

fn begin_checked(tx: &Transaction<'_>, keys: &Keys, audit: &AuditLog, checked: Checked) -> Result<Next> {
    let Checked { mut row, secret, name } = checked;
    let now = now_millis();
    // An attempt that never finished was cut short by a crash.
    let interrupted = tx.exec(
        "UPDATE rotation_attempts SET finished_at = ?1, outcome = 'interrupted'
         WHERE rotation_id = ?2 AND finished_at IS NULL",
        params![now, row.id],
    )?;
    if interrupted > 0 {
        let entry =
            Entry::rotation_step(&row.secret_name, &row.id, &row.plugin, row.step.as_str(), row.attempt, "interrupted");
        audit.append_in(tx, keys, vec![entry])?;
    }
    if row.attempt >= row.max_attempts {
        let f = Failure::host("interrupted", format!("step {} was interrupted on its last attempt", row.step.as_str()));
        return fail(tx, keys, audit, row, f);
    }
    if row.step == Step::Finish && !row.labels_moved {
        let Some(pending) = row.pending_version.clone() else {
            let f = Failure::host("no_pending_version", "the rotation reached finish without a pending version");
            return fail(tx, keys, audit, row, f);
        };
        // The one transaction in which readers switch from the old value
        // to the new one: `current` moves, `previous` follows, `pending` goes.
        let old_previous = secrets::labeled(tx, row.secret_id, Label::PREVIOUS)?;
        secrets::assign_label(tx, row.secret_id, &Label::current(), &pending)?;
        secrets::remove_label(tx, row.secret_id, Label::PENDING, &pending)?;
        let fell_off = match old_previous {
            Some(v) if v != pending && !has_labels(tx, &v)? => Some(v),
            _ => None,
        };
        row.labels_moved = true;
        row.fell_off = fell_off;
        secrets::prune_unlabeled(tx, row.secret_id)?;
    }
    row.attempt += 1;
    row.retry_at = None;
    secrets::bump_generation(tx, &secret, now)?;
    row.generation = secret.generation + 1;
    tx.exec(
        "UPDATE rotations SET attempt = ?1, retry_at = NULL, generation = ?2, labels_moved = ?3, fell_off = ?4,
             updated_at = ?5 WHERE id = ?6",
        params![row.attempt, row.generation, row.labels_moved, row.fell_off, now, row.id],
    )?;
    tx.exec(
        "INSERT INTO rotation_attempts (rotation_id, seq, step, attempt, started_at)
         VALUES (?1, (SELECT coalesce(max(seq), 0) + 1 FROM rotation_attempts WHERE rotation_id = ?1), ?2, ?3, ?4)",
        params![row.id, row.step.as_str(), row.attempt, now],
    )?;
    let read = |sel: Selector| -> Result<Option<StepVersion>> {
        match secrets::read_value(tx, keys, &name, &sel) {
            Ok(v) => Ok(Some(StepVersion { id: v.version_id, value: v.value })),
            Err(e) if e.kind == crate::error::Kind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    };
    let current = read(Selector::Label(Label::current()))?;
    let previous = read(Selector::Label(Label::parse(Label::PREVIOUS)?))?;
    let pending = match &row.pending_version {
        Some(v) => read(Selector::Version(v.clone()))?,
        None => None,
    };
    let fell_off = match &row.fell_off {
        Some(v) if row.step == Step::Finish => read(Selector::Version(v.clone()))?,
        _ => None,
    };
    let mut older = Vec::new();
    if row.step == Step::Finish && row.trigger == Trigger::BreakGlass.as_str() {
        let keep = current.as_ref().map(|v| v.id.clone());
        let mut all = secrets::versions(tx, &name)?;
        all.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        for v in all.into_iter().filter(|v| Some(&v.version_id) != keep.as_ref()) {
            if let Some(version) = read(Selector::Version(v.version_id))? {
                older.push(version);
            }
        }
    }
    let cursor = row.cursor();
    Ok(Next::Run(Box::new(Prepared { row, cursor, current, pending, previous, fell_off, older })))
}

fn has_labels(conn: &Connection, version_id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM labels WHERE version_id = ?1 LIMIT 1")?
        .query_row([version_id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Records how the attempt at `cursor` ended and moves the rotation on:
/// to the next step (begun in this same transaction), a retry, or its end.
#[allow(clippy::too_many_arguments)]
pub fn advance(
    tx: &Transaction<'_>,
    keys: &Keys,
    audit: &AuditLog,
    id: &str,
    cursor: Cursor,
    outcome: Outcome,
    log: &str,
    backoff: Backoff,
) -> Result<Next> {
    let checked = match check(tx, id, cursor)? {
        Check::Ok(c) => c,
        Check::Stale => return Ok(Next::Stale),
        Check::Stop(row, failure) => {
            record_attempt(tx, keys, &row, &failure.code, log, Some(&failure.message))?;
            return fail(tx, keys, audit, row, failure);
        }
    };
    let Checked { mut row, secret, name } = checked;
    let now = now_millis();
    let outcome = match outcome {
        Outcome::Created(value) if row.step == Step::Create => {
            let dek = secrets::unwrap_dek(tx, keys, row.secret_id)?;
            let version_id = secrets::insert_version(tx, keys, row.secret_id, &dek, &value, None, now)?;
            secrets::assign_label(tx, row.secret_id, &Label::parse(Label::PENDING)?, &version_id)?;
            secrets::prune_unlabeled(tx, row.secret_id)?;
            tx.exec("UPDATE rotations SET pending_version = ?1 WHERE id = ?2", params![version_id, row.id])?;
            row.pending_version = Some(version_id);
            Ok(())
        }
        Outcome::Created(_) | Outcome::Done => Ok(()),
        Outcome::Failed(f) => Err(f),
    };
    let code = match &outcome {
        Ok(()) => "ok".to_owned(),
        Err(f) => f.code.clone(),
    };
    record_attempt(tx, keys, &row, &code, log, outcome.as_ref().err().map(|f| f.message.as_str()))?;
    let entry = Entry::rotation_step(&row.secret_name, &row.id, &row.plugin, row.step.as_str(), row.attempt, &code);
    audit.append_in(tx, keys, vec![entry])?;
    match outcome {
        Ok(()) => match next_step(row.step) {
            Some(step) => {
                row.step = step;
                row.attempt = 0;
                tx.exec(
                    "UPDATE rotations SET step = ?1, attempt = 0, updated_at = ?2 WHERE id = ?3",
                    params![step.as_str(), now, row.id],
                )?;
                begin_checked(tx, keys, audit, Checked { row, secret, name })
            }
            None => end(tx, keys, audit, row, Status::Succeeded, None),
        },
        Err(f) if f.retryable && row.attempt < row.max_attempts => {
            let retry_at = now + backoff.delay_ms(row.attempt);
            store_error(tx, keys, &row, &f)?;
            tx.exec(
                "UPDATE rotations SET retry_at = ?1, updated_at = ?2 WHERE id = ?3",
                params![retry_at, now, row.id],
            )?;
            Ok(Next::RetryAt(retry_at))
        }
        Err(f) => fail(tx, keys, audit, row, f),
    }
}

/// Ends the rotation as failed: its pending version is dropped unless the
/// labels already moved (then the new value is current and stays).
fn fail(tx: &Transaction<'_>, keys: &Keys, audit: &AuditLog, row: RotationRow, failure: Failure) -> Result<Next> {
    if let (false, Some(pending)) = (row.labels_moved, &row.pending_version) {
        secrets::remove_label(tx, row.secret_id, Label::PENDING, pending)?;
        secrets::drop_unlabeled_version(tx, row.secret_id, pending)?;
        // A deleted secret keeps its generation: nobody can write it anyway.
        if let Ok(s) = secrets::live(tx, &SecretName::parse(&row.secret_name)?) {
            secrets::bump_generation(tx, &s, now_millis())?;
        }
    }
    store_error(tx, keys, &row, &failure)?;
    end(tx, keys, audit, row, Status::Failed, Some(failure.code))
}

fn end(
    tx: &Transaction<'_>,
    keys: &Keys,
    audit: &AuditLog,
    row: RotationRow,
    status: Status,
    error_code: Option<String>,
) -> Result<Next> {
    let now = now_millis();
    tx.exec(
        "UPDATE rotations SET status = ?1, error_code = coalesce(?2, error_code), retry_at = NULL,
             finished_at = ?3, updated_at = ?3 WHERE id = ?4",
        params![status.as_str(), error_code, now, row.id],
    )?;
    super::config::schedule_after_rotation(tx, row.secret_id, row.scheduled_for, now)?;
    tx.exec(
        "DELETE FROM rotations WHERE secret_id = ?1 AND status != 'running' AND id NOT IN
            (SELECT id FROM rotations WHERE secret_id = ?1 ORDER BY created_at DESC LIMIT ?2)",
        params![row.secret_id, KEEP_HISTORY],
    )?;
    let outcome = error_code.clone().unwrap_or_else(|| status.as_str().to_owned());
    let entry = Entry::event(EntryKind::Rotation, "rotation.end", &row.secret_name, &outcome)
        .with_detail("rotation_id", &row.id)
        .with_detail("plugin", &row.plugin)
        .with_detail("step", row.step.as_str())
        .with_detail("status", status.as_str());
    audit.append_in(tx, keys, vec![entry])?;
    Ok(Next::Ended(Ended {
        emergency: row.trigger == Trigger::BreakGlass.as_str(),
        rotation_id: row.id,
        secret: row.secret_name,
        plugin: row.plugin,
        step: row.step,
        status,
        error_code,
    }))
}

/// Seals `text` under the secret's data key, bound to this rotation and
/// what the text is (`what`), so it cannot be moved to another row.
fn seal(tx: &Connection, keys: &Keys, secret_id: i64, aad: &str, text: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    let dek = secrets::unwrap_dek(tx, keys, secret_id)?;
    Ok(dek.encrypt(secret_id, aad, text.as_bytes()))
}

fn open(dek: &DataKey, secret_id: i64, aad: &str, sealed: &(Vec<u8>, Vec<u8>)) -> Option<String> {
    let plain = dek.decrypt(secret_id, aad, &sealed.0, &sealed.1).ok()?;
    Some(String::from_utf8_lossy(&plain).into_owned())
}

fn record_attempt(
    tx: &Transaction<'_>,
    keys: &Keys,
    row: &RotationRow,
    outcome: &str,
    log: &str,
    error: Option<&str>,
) -> Result<()> {
    let seq: Option<i64> = tx
        .query_row(
            "SELECT max(seq) FROM rotation_attempts WHERE rotation_id = ?1 AND finished_at IS NULL",
            [&row.id],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    let Some(seq) = seq else { return Ok(()) };
    let log_sealed = (!log.is_empty())
        .then(|| seal(tx, keys, row.secret_id, &format!("rotation:{}:{seq}:log", row.id), log))
        .transpose()?;
    let error_sealed =
        error.map(|e| seal(tx, keys, row.secret_id, &format!("rotation:{}:{seq}:error", row.id), e)).transpose()?;
    let (ln, ls) = log_sealed.unzip();
    let (en, es) = error_sealed.unzip();
    tx.exec(
        "UPDATE rotation_attempts SET finished_at = ?1, outcome = ?2, log_nonce = ?3, log_sealed = ?4,
             error_nonce = ?5, error_sealed = ?6 WHERE rotation_id = ?7 AND seq = ?8",
        params![now_millis(), outcome, ln, ls, en, es, row.id, seq],
    )?;
    Ok(())
}

fn store_error(tx: &Transaction<'_>, keys: &Keys, row: &RotationRow, f: &Failure) -> Result<()> {
    let (nonce, sealed) = seal(tx, keys, row.secret_id, &format!("rotation:{}:error", row.id), &f.message)?;
    tx.exec(
        "UPDATE rotations SET error_code = ?1, error_nonce = ?2, error_sealed = ?3 WHERE id = ?4",
        params![f.code, nonce, sealed, row.id],
    )?;
    Ok(())
}

// --- reading records ---------------------------------------------------------

/// One attempt of one step, as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AttemptRecord {
    pub step: String,
    pub attempt: u32,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// `ok`, an error code, `interrupted`, or absent while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The error text (may quote the plugin); only with `read` on the secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the plugin logged, values redacted; only with `read` on the secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

/// A rotation as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RotationRecord {
    pub id: String,
    pub secret: String,
    pub trigger: String,
    pub status: Status,
    /// The step reached.
    pub step: String,
    /// Attempts of the step reached.
    pub attempt: u32,
    pub attempts_total: u32,
    pub plugin: String,
    pub plugin_version: i64,
    pub plugin_sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_version_id: Option<String>,
    /// True once `current` moved to the new version.
    pub labels_moved: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Only with `read` on the secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    pub attempts: Vec<AttemptRecord>,
}

/// The record of `row`; error texts and plugin logs are opened only when
/// `reveal` (the caller may read the secret).
pub fn record(conn: &Connection, keys: &Keys, row: RotationRow, reveal: bool) -> Result<RotationRecord> {
    let dek = if reveal { Some(secrets::unwrap_dek(conn, keys, row.secret_id)?) } else { None };
    let mut stmt = conn.prepare_cached(
        "SELECT seq, step, attempt, started_at, finished_at, outcome, log_nonce, log_sealed, error_nonce, error_sealed
         FROM rotation_attempts WHERE rotation_id = ?1 ORDER BY seq",
    )?;
    let attempts = stmt
        .query_map([&row.id], |r| {
            let seq: i64 = r.get(0)?;
            let started: i64 = r.get(3)?;
            let finished: Option<i64> = r.get(4)?;
            let log: Option<(Vec<u8>, Vec<u8>)> = r.get::<_, Option<Vec<u8>>>(6)?.zip(r.get::<_, Option<Vec<u8>>>(7)?);
            let error: Option<(Vec<u8>, Vec<u8>)> =
                r.get::<_, Option<Vec<u8>>>(8)?.zip(r.get::<_, Option<Vec<u8>>>(9)?);
            let opened = |what: &str, sealed: Option<(Vec<u8>, Vec<u8>)>| -> Option<String> {
                let (dek, sealed) = (dek.as_ref()?, sealed?);
                open(dek, row.secret_id, &format!("rotation:{}:{seq}:{what}", row.id), &sealed)
            };
            Ok(AttemptRecord {
                step: r.get(1)?,
                attempt: r.get(2)?,
                started_at: rfc3339(started),
                finished_at: finished.map(rfc3339),
                duration_ms: finished.map(|f| f - started),
                outcome: r.get(5)?,
                log: opened("log", log),
                error: opened("error", error),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let error = match (&dek, &row.error_sealed) {
        (Some(dek), Some(sealed)) => open(dek, row.secret_id, &format!("rotation:{}:error", row.id), sealed),
        _ => None,
    };
    Ok(RotationRecord {
        attempts_total: attempts.len() as u32,
        attempts,
        id: row.id,
        secret: row.secret_name,
        trigger: row.trigger,
        status: row.status,
        step: row.step.as_str().into(),
        attempt: row.attempt,
        plugin: row.plugin,
        plugin_version: row.plugin_version,
        plugin_sha256: row.plugin_sha256,
        pending_version_id: row.pending_version,
        labels_moved: row.labels_moved,
        scheduled_for: row.scheduled_for.map(rfc3339),
        retry_at: row.retry_at.map(rfc3339),
        error_code: row.error_code,
        error,
        created_at: rfc3339(row.created_at),
        updated_at: rfc3339(row.updated_at),
        duration_ms: row.finished_at.map(|f| f - row.created_at),
        finished_at: row.finished_at.map(rfc3339),
    })
}

/// The rotations of a secret, newest first: `limit` of them, before the
/// rotation `before` (a page token) when given.
pub fn history(conn: &Connection, secret_id: i64, before: Option<&str>, limit: usize) -> Result<Vec<RotationRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ROW_COLS} FROM rotations r JOIN secrets s ON s.id = r.secret_id
         WHERE r.secret_id = ?1
           AND (?2 IS NULL OR (r.created_at, r.id) < (SELECT created_at, id FROM rotations WHERE id = ?2))
         ORDER BY r.created_at DESC, r.id DESC LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![secret_id, before, limit as i64], row)?.collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// The latest rotation of a secret (running or not).
pub fn latest(conn: &Connection, secret_id: i64) -> Result<Option<RotationRow>> {
    Ok(history(conn, secret_id, None, 1)?.into_iter().next())
}

/// The plugin's `step-input` versions for a prepared step.
pub fn wit_version(v: &Option<StepVersion>) -> Option<crate::plugins::bindings::tumbler::rotator::types::Version> {
    v.as_ref().map(|v| crate::plugins::bindings::tumbler::rotator::types::Version {
        id: v.id.clone(),
        value: v.value.expose().to_owned(),
    })
}

/// A plain copy of a value for the capabilities' `secret-ref`.
pub fn shared_value(v: &Option<StepVersion>) -> Option<std::sync::Arc<Zeroizing<String>>> {
    v.as_ref().map(|v| std::sync::Arc::new(Zeroizing::new(v.value.expose().to_owned())))
}

/// Fails with a clear error when `secret` is missing or deleted.
pub fn secret_id(conn: &Connection, secret: &SecretName) -> Result<i64> {
    Ok(secrets::live(conn, secret)?.id)
}

pub fn error_for_missing(id: &str) -> Error {
    Error::not_found(format!(
        "no rotation has id '{id}'; list a secret's rotations with GET /v1/secrets/NAME:rotations"
    ))
}
