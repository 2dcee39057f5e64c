//! One API request's audit record. The request middleware opens it (request
//! id, client address), the token extractor adds who is calling, the handler
//! says what it does and to what; a mutation appends it in its own
//! transaction ([`RequestAudit::write`]), every other request through group
//! commit when the response is ready ([`RequestAudit::finish`]).

use super::{AuditLog, Entry, EntryKind};
use crate::error::{Kind, Result};
use crate::model::now_millis;
use crate::store::{Durability, Keys};
use axum::http::StatusCode;
use rusqlite::Transaction;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Clone)]
pub struct RequestAudit {
    log: AuditLog,
    state: Arc<Mutex<State>>,
}

struct State {
    entry: Entry,
    /// The record went in with a mutation: nothing is left to write.
    written: bool,
    /// Writing it failed: the response already says so.
    failed: bool,
}

impl RequestAudit {
    /// `fallback_action` names requests refused before their handler said
    /// what they do (no token, a malformed body, an unknown route).
    pub fn new(log: AuditLog, request_id: &str, client: &str, fallback_action: String) -> Self {
        let entry = Entry {
            kind: EntryKind::Request,
            request_id: request_id.into(),
            client: client.into(),
            action: fallback_action,
            ..Entry::default()
        };
        RequestAudit { log, state: Arc::new(Mutex::new(State { entry, written: false, failed: false })) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the request does (`secret.read`) and to which resource.
    pub fn target(&self, action: &str, resource: &str) {
        let mut state = self.state();
        state.entry.action = action.into();
        state.entry.resource = resource.into();
    }

    /// Adds a detail to the record (e.g. a break glass's reason).
    pub fn detail(&self, key: &str, value: &str) {
        let mut state = self.state();
        state.entry.detail.insert(key.into(), value.into());
    }

    /// The authenticated caller (never the token itself).
    pub fn set_caller(&self, token_id: &str, token_name: &str) {
        let mut state = self.state();
        state.entry.token_id = token_id.into();
        state.entry.token_name = token_name.into();
    }

    /// Runs a mutation and appends this request's record (status 200) in
    /// the same transaction: both commit, or neither does.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &Keys) -> Result<T> + Send + 'static,
    {
        self.write_with_status(|_| StatusCode::OK, f).await
    }

    /// [`RequestAudit::write`] for a mutation whose success status depends
    /// on what it did (201 for a new version, 200 for an idempotent retry).
    pub async fn write_with_status<T, F, S>(&self, status: S, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &Keys) -> Result<T> + Send + 'static,
        S: FnOnce(&T) -> StatusCode + Send + 'static,
    {
        let mut entry = self.state().entry.clone();
        let log = self.log.clone();
        let result = self
            .log
            .store()
            .write(move |tx, keys| {
                let out = f(tx, keys)?;
                entry.time = now_millis();
                entry.status = Some(status(&out).as_u16());
                entry.outcome = "ok".into();
                log.append_in(tx, keys, vec![entry])?;
                Ok(out)
            })
            .await;
        let mut state = self.state();
        match &result {
            Ok(_) => state.written = true,
            Err(e) if e.kind == Kind::Unavailable => state.failed = true,
            Err(_) => {}
        }
        result
    }

    /// Writes the record of a request that did not write it with a
    /// mutation, through group commit; the response waits for it, committed
    /// with `durability` ([`Durability::Normal`] only for read-only
    /// requests). An error means the response must not be sent.
    pub async fn finish(&self, status: StatusCode, error_code: Option<&str>, durability: Durability) -> Result<()> {
        let entry = {
            let mut state = self.state();
            if state.written || state.failed {
                return Ok(());
            }
            // The last use of the record: taken, not copied (a second
            // finish has nothing left to write).
            state.written = true;
            let mut entry = std::mem::take(&mut state.entry);
            entry.time = now_millis();
            entry.status = Some(status.as_u16());
            entry.outcome = match error_code {
                Some(code) => code.into(),
                None if status.is_success() => "ok".into(),
                None => format!("http_{}", status.as_u16()),
            };
            entry
        };
        self.log.append_with(entry, durability).await
    }

    /// Whether a mutation wrote the record (the middleware warns about a
    /// successful mutating request that did not).
    pub fn written(&self) -> bool {
        self.state().written
    }
}
