//! Rotation routes: a secret's rotation config (`:rotation`), starting a
//! rotation now (`:rotate`), its history (`:rotations`) and one record
//! (`/v1/rotations/{id}`). Plugin logs and error texts are shown only to
//! callers who may read the secret; everyone else sees error codes.

use super::AppState;
use super::Query;
use crate::audit::RequestAudit;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::model::{Capability, SecretName};
use crate::rotation::config::{self, ConfigRequest, ConfigView};
use crate::rotation::state::{self, RotationRecord, Started, Status, Trigger};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

#[utoipa::path(put, path = "/v1/secrets/{name}:rotation", tag = "rotation",
    params(("name" = String, Path)), request_body = ConfigRequest,
    responses((status = 200, body = ConfigView),
              (status = 400, description = "a field is invalid; the message names it", body = crate::error::ErrorBody),
              (status = 403, description = "needs `admin` on the secret and `read` on every granted secret", body = crate::error::ErrorBody)))]
pub async fn put_config(
    st: AppState,
    audit: RequestAudit,
    caller: Caller,
    name: SecretName,
    body: ConfigRequest,
) -> Result<Json<ConfigView>> {
    caller.require(Capability::Admin, name.as_str())?;
    let config = body.parse(&st.plugins, st.rotation.settings().max_attempts).await?;
    // Granting a secret to a plugin hands it to whoever wrote the plugin.
    for granted in &config.granted_secrets {
        caller.require(Capability::Read, granted.as_str()).map_err(|_| {
            Error::forbidden(format!(
                "grants.secrets names '{granted}', which token '{}' may not read; only someone who can read a \
                 secret may hand it to a plugin",
                caller.token_name
            ))
        })?;
    }
    let n = name.clone();
    let (view, started) = audit
        .write(move |tx, _| {
            config::put(tx, &n, &config)?;
            let started = match config.rotate_now {
                true => Some(state::start(tx, &n, &config.pinned, Trigger::Manual, None)?),
                false => None,
            };
            Ok((config::view(tx, &n)?, started))
        })
        .await?;
    if let Some(s) = started.filter(|s| !s.already_running) {
        st.rotation.drive(s.rotation_id);
    }
    st.rotation.wake();
    Ok(Json(view))
}

#[utoipa::path(get, path = "/v1/secrets/{name}:rotation", tag = "rotation",
    params(("name" = String, Path)),
    responses((status = 200, body = ConfigView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_config(st: AppState, caller: Caller, name: SecretName) -> Result<Json<ConfigView>> {
    caller.require(Capability::Rotate, name.as_str())?;
    st.store.read(move |conn, _| config::view(conn, &name)).await.map(Json)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ConfigRemoved {
    name: String,
    removed: bool,
}

#[utoipa::path(delete, path = "/v1/secrets/{name}:rotation", tag = "rotation",
    params(("name" = String, Path)),
    responses((status = 200, description = "no rotation is scheduled any more; one already running ends normally", body = ConfigRemoved),
              (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete_config(
    st: AppState,
    audit: RequestAudit,
    caller: Caller,
    name: SecretName,
) -> Result<Json<ConfigRemoved>> {
    caller.require(Capability::Admin, name.as_str())?;
    let n = name.clone();
    audit.write(move |tx, _| config::remove(tx, &n)).await?;
    st.rotation.wake();
    Ok(Json(ConfigRemoved { name: name.to_string(), removed: true }))
}

#[utoipa::path(post, path = "/v1/secrets/{name}:rotate", tag = "rotation",
    params(("name" = String, Path)),
    responses((status = 202, description = "started; or, when one is already running, that one's id with `already_running: true` (no second rotation starts)", body = Started),
              (status = 404, description = "no such secret, or it has no rotation config", body = crate::error::ErrorBody)))]
pub async fn rotate(
    st: AppState,
    audit: RequestAudit,
    caller: Caller,
    name: SecretName,
) -> Result<(StatusCode, Json<Started>)> {
    caller.require(Capability::Rotate, name.as_str())?;
    let n = name.clone();
    let started = audit
        .write_with_status(
            |_| StatusCode::ACCEPTED,
            move |tx, _| {
                let pinned = config::pinned(tx, &n)?;
                state::start(tx, &n, &pinned, Trigger::Manual, None)
            },
        )
        .await?;
    if !started.already_running {
        st.rotation.drive(started.rotation_id.clone());
    }
    Ok((StatusCode::ACCEPTED, Json(started)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// Page size, 1-100 (default 20).
    limit: Option<usize>,
    page_token: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct History {
    rotations: Vec<RotationRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/secrets/{name}:rotations", tag = "rotation",
    params(("name" = String, Path), HistoryParams),
    responses((status = 200, description = "newest first; `error` and each attempt's `log` only with `read` on the secret", body = History)))]
pub async fn history(st: AppState, caller: Caller, name: SecretName, q: HistoryParams) -> Result<Json<History>> {
    caller.require(Capability::Rotate, name.as_str())?;
    let limit = super::page_limit(q.limit, 20, 100)?;
    let before = super::decode_page_token(q.page_token)?;
    let reveal = caller.allows(Capability::Read, name.as_str());
    let (rotations, more) = st
        .store
        .read(move |conn, keys| {
            let id = state::secret_id(conn, &name)?;
            let mut rows = state::history(conn, id, before.as_deref(), limit + 1)?;
            let more = rows.len() > limit;
            rows.truncate(limit);
            let records = rows.into_iter().map(|r| state::record(conn, keys, r, reveal)).collect::<Result<Vec<_>>>()?;
            Ok((records, more))
        })
        .await?;
    let next_page_token = more.then(|| rotations.last().map(|r| super::encode_page_token(&r.id))).flatten();
    Ok(Json(History { rotations, next_page_token }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct GetParams {
    /// While the rotation runs, answer when it ends or after this long,
    /// whichever is first: a duration (`30s`) or seconds, at most 60 s.
    /// Default: answer at once.
    wait: Option<String>,
}

/// The longest `wait` of `GET /v1/rotations/{id}`.
const MAX_WAIT: Duration = Duration::from_secs(60);

fn parse_wait(wait: &str) -> Result<Duration> {
    let parsed = match wait.parse::<u64>() {
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(wait),
    };
    match parsed {
        Ok(d) if d <= MAX_WAIT => Ok(d),
        _ => Err(Error::invalid(format!("wait {wait:?}: give a duration up to 60s, such as 30s, or seconds"))),
    }
}

async fn load(st: &AppState, id: &str) -> Result<state::RotationRow> {
    let rid = id.to_owned();
    st.store.read(move |conn, _| state::load(conn, &rid)).await?.ok_or_else(|| state::error_for_missing(id))
}

#[utoipa::path(get, path = "/v1/rotations/{id}", tag = "rotation",
    params(("id" = String, Path), GetParams),
    responses((status = 200, description = "`error` and each attempt's `log` only with `read` on the secret; with `wait`, once the rotation is no longer running or the wait is over (then still `running`)", body = RotationRecord),
              (status = 400, description = "`wait` is not a duration up to 60 s", body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    State(st): State<AppState>,
    audit: RequestAudit,
    caller: Result<Caller>,
    Path(id): Path<String>,
    Query(q): Query<GetParams>,
) -> Result<Json<RotationRecord>> {
    audit.target("rotation.get", &id);
    let caller = caller?;
    let wait = q.wait.as_deref().map(parse_wait).transpose()?.unwrap_or_default();
    let deadline = Instant::now() + wait;
    // Before the first read, so an end between the read and the wait is seen.
    let mut stopped = st.rotation.watch_stopped();
    let mut row = load(&st, &id).await?;
    audit.target("rotation.get", &row.secret_name);
    caller.require(Capability::Rotate, &row.secret_name)?;
    while row.status == Status::Running {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        // Woken when any rotation stops being driven or is overtaken by a
        // break glass; the once-a-second re-read is a fallback.
        let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), stopped.changed()).await;
        row = load(&st, &id).await?;
    }
    let reveal = caller.allows(Capability::Read, &row.secret_name);
    st.store.read(move |conn, keys| state::record(conn, keys, row, reveal)).await.map(Json)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassRequest {
    /// Why (kept in the audit record and the rotation).
    reason: String,
}

#[utoipa::path(post, path = "/v1/secrets/{name}:revoke", tag = "rotation",
    params(("name" = String, Path)), request_body = BreakGlassRequest,
    responses((status = 202, description = "break glass started; or, when one is already running, that one's id with `already_running: true` (it is joined, never repeated)", body = Started),
              (status = 403, description = "needs `admin` on the secret", body = crate::error::ErrorBody),
              (status = 404, description = "no such secret, or it has no rotation config", body = crate::error::ErrorBody)))]
pub async fn break_glass(
    st: AppState,
    audit: RequestAudit,
    caller: Caller,
    name: SecretName,
    body: BreakGlassRequest,
) -> Result<(StatusCode, Json<Started>)> {
    caller.require(Capability::Admin, name.as_str())?;
    let reason = body.reason.trim().to_owned();
    if reason.is_empty() || reason.len() > 1_000 {
        return Err(Error::invalid("reason: say why, in 1 to 1000 characters (it goes into the audit log)"));
    }
    audit.detail("reason", &reason);
    let started = st.rotation.break_glass(name, reason, caller.token_name.to_string(), &audit).await?;
    Ok((StatusCode::ACCEPTED, Json(started)))
}
