//! `/v1/secrets`: create, list, describe, patch, versions, labels, values,
//! soft delete, restore. A name's actions are a `:verb` suffix on its path.

use super::{AppState, JsonBody, Query};
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::model::{Capability, ClientToken, Label, RecoveryDays, SecretName, SecretValue};
use crate::store::secrets::{
    self, ListQuery, NewSecret, SecretDescription, SecretSummary, Selector, Tags, ValueRead, VersionInfo,
};
use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What follows the name in `/v1/secrets/{name}:{action}`.
enum Action {
    None,
    Value,
    Versions,
    Restore,
    Label(Label),
}

fn parse_path(path: &str) -> Result<(SecretName, Action)> {
    let (name, action) = match path.split_once(':') {
        Some((name, action)) => (name, Some(action)),
        None => (path, None),
    };
    let name = SecretName::parse(name)?;
    let action = match action {
        None => Action::None,
        Some("value") => Action::Value,
        Some("versions") => Action::Versions,
        Some("restore") => Action::Restore,
        Some(a) => match a.strip_prefix("labels/") {
            Some(label) => Action::Label(Label::parse(label)?),
            None => {
                return Err(Error::not_found(format!(
                    "unknown action ':{a}'; secrets have :value, :versions, :labels/LABEL and :restore"
                )));
            }
        },
    };
    Ok((name, action))
}

fn wrong_method(verb: &str, action: &str) -> Error {
    Error::invalid(format!("use {verb} for {action}"))
}

pub async fn get_action(
    State(st): State<AppState>,
    caller: Caller,
    Path(path): Path<String>,
    Query(q): Query<ValueQuery>,
) -> Result<Response> {
    let (name, action) = parse_path(&path)?;
    match action {
        Action::None => describe(st, caller, name).await.map(IntoResponse::into_response),
        Action::Value => read_value(st, caller, name, q).await.map(IntoResponse::into_response),
        Action::Versions => list_versions(st, caller, name).await.map(IntoResponse::into_response),
        Action::Restore => Err(wrong_method("POST", ":restore")),
        Action::Label(_) => Err(wrong_method("PUT", ":labels/LABEL")),
    }
}

pub async fn post_action(
    State(st): State<AppState>,
    caller: Caller,
    Path(path): Path<String>,
    req: Request,
) -> Result<Response> {
    let (name, action) = parse_path(&path)?;
    match action {
        Action::Versions => {
            let JsonBody(body) = JsonBody::from_request(req, &()).await?;
            new_version(st, caller, name, body).await
        }
        Action::Restore => restore(st, caller, name).await.map(IntoResponse::into_response),
        Action::None => Err(Error::invalid("create a secret with POST /v1/secrets, or add a version with POST :versions")),
        Action::Value => Err(Error::invalid("to write a value use POST :versions")),
        Action::Label(_) => Err(wrong_method("PUT", ":labels/LABEL")),
    }
}

pub async fn put_action(
    State(st): State<AppState>,
    caller: Caller,
    Path(path): Path<String>,
    req: Request,
) -> Result<Response> {
    let (name, action) = parse_path(&path)?;
    match action {
        Action::Label(label) => {
            let JsonBody(body) = JsonBody::from_request(req, &()).await?;
            move_label(st, caller, name, label, body).await.map(IntoResponse::into_response)
        }
        _ => Err(Error::invalid("PUT applies to :labels/LABEL only")),
    }
}

pub async fn patch_action(
    State(st): State<AppState>,
    caller: Caller,
    Path(path): Path<String>,
    req: Request,
) -> Result<Response> {
    match parse_path(&path)? {
        (name, Action::None) => {
            let JsonBody(body) = JsonBody::from_request(req, &()).await?;
            patch(st, caller, name, body).await.map(IntoResponse::into_response)
        }
        _ => Err(Error::invalid("PATCH applies to the secret itself, without an action")),
    }
}

pub async fn delete_action(
    State(st): State<AppState>,
    caller: Caller,
    Path(path): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Response> {
    match parse_path(&path)? {
        (name, Action::None) => delete(st, caller, name, q).await.map(IntoResponse::into_response),
        _ => Err(Error::invalid("DELETE applies to the secret itself, without an action")),
    }
}

// --- create and list -------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSecret {
    name: String,
    #[schema(value_type = String)]
    value: SecretValue,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Tags,
    client_token: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct VersionCreated {
    name: String,
    version_id: String,
}

#[utoipa::path(post, path = "/v1/secrets", tag = "secrets", request_body = CreateSecret,
    responses((status = 201, body = VersionCreated), (status = 200, description = "a retry with the same client_token and value", body = VersionCreated),
              (status = 409, body = crate::error::ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateSecret>,
) -> Result<Response> {
    let name = SecretName::parse(&body.name)?;
    caller.require(Capability::Write, name.as_str())?;
    secrets::validate_tags(&body.tags)?;
    secrets::validate_description(&body.description)?;
    let new = NewSecret {
        client_token: body.client_token.as_deref().map(ClientToken::parse).transpose()?,
        name: name.clone(),
        value: body.value,
        description: body.description,
        tags: body.tags,
    };
    let written = st.store.write(move |tx, keys| secrets::create(tx, keys, new)).await?;
    let status = if written.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(VersionCreated { name: name.to_string(), version_id: written.version_id })).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only names starting with this.
    #[serde(default)]
    prefix: String,
    /// Page size, 1-1000 (default 100).
    limit: Option<usize>,
    page_token: Option<String>,
    #[serde(default)]
    include_deleted: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SecretList {
    secrets: Vec<SecretSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/secrets", tag = "secrets", params(ListParams),
    responses((status = 200, description = "names the token may list, never values", body = SecretList)))]
pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    Query(p): Query<ListParams>,
) -> Result<Json<SecretList>> {
    let limit = match p.limit {
        None => 100,
        Some(n @ 1..=1000) => n,
        Some(n) => return Err(Error::invalid(format!("limit is {n}; choose 1 to 1000"))),
    };
    let after = p
        .page_token
        .map(|t| {
            URL_SAFE_NO_PAD
                .decode(&t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| Error::invalid("page_token is not one this server issued; start again without it"))
        })
        .transpose()?;
    let q = ListQuery { prefix: p.prefix, after, include_deleted: p.include_deleted, limit };
    let caller = Arc::new(caller);
    let (secrets, last) = st
        .store
        .read(move |conn, _| secrets::list(conn, &q, |name| caller.allows(Capability::List, name)))
        .await?;
    Ok(Json(SecretList { secrets, next_page_token: last.map(|n| URL_SAFE_NO_PAD.encode(n)) }))
}

// --- one secret -----------------------------------------------------------

#[utoipa::path(get, path = "/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "secret name; may contain '/'")),
    responses((status = 200, body = SecretDescription), (status = 404, body = crate::error::ErrorBody)))]
pub async fn describe(st: AppState, caller: Caller, name: SecretName) -> Result<Json<SecretDescription>> {
    caller.require(Capability::Read, name.as_str())?;
    st.store.read(move |conn, _| secrets::describe(conn, &name)).await.map(Json)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ValueQuery {
    /// Staging label to read (default `current`).
    label: Option<String>,
    /// A version id; excludes `label`.
    version_id: Option<String>,
}

#[utoipa::path(get, path = "/v1/secrets/{name}:value", tag = "secrets",
    params(("name" = String, Path), ValueQuery),
    responses((status = 200, body = ValueRead), (status = 404, body = crate::error::ErrorBody)))]
pub async fn read_value(st: AppState, caller: Caller, name: SecretName, q: ValueQuery) -> Result<Json<ValueRead>> {
    caller.require(Capability::Read, name.as_str())?;
    let selector = match (q.label, q.version_id) {
        (Some(_), Some(_)) => return Err(Error::invalid("give label or version_id, not both")),
        (None, Some(v)) => Selector::Version(v),
        (Some(l), None) => Selector::Label(Label::parse(&l)?),
        (None, None) => Selector::Label(Label::current()),
    };
    st.store.read(move |conn, keys| secrets::read_value(conn, keys, &name, &selector)).await.map(Json)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct VersionList {
    versions: Vec<VersionInfo>,
}

#[utoipa::path(get, path = "/v1/secrets/{name}:versions", tag = "secrets",
    params(("name" = String, Path)), responses((status = 200, body = VersionList)))]
pub async fn list_versions(st: AppState, caller: Caller, name: SecretName) -> Result<Json<VersionList>> {
    caller.require(Capability::Read, name.as_str())?;
    let versions = st.store.read(move |conn, _| secrets::versions(conn, &name)).await?;
    Ok(Json(VersionList { versions }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVersion {
    #[schema(value_type = String)]
    value: SecretValue,
    client_token: Option<String>,
    /// Labels for the new version; default `["current"]` (the old current becomes `previous`).
    labels: Option<Vec<String>>,
}

#[utoipa::path(post, path = "/v1/secrets/{name}:versions", tag = "secrets",
    params(("name" = String, Path)), request_body = NewVersion,
    responses((status = 201, body = VersionCreated), (status = 200, description = "a retry with the same client_token and value", body = VersionCreated),
              (status = 409, body = crate::error::ErrorBody)))]
pub async fn new_version(st: AppState, caller: Caller, name: SecretName, body: NewVersion) -> Result<Response> {
    caller.require(Capability::Write, name.as_str())?;
    let labels = match body.labels {
        None => vec![Label::current()],
        Some(ls) => ls.iter().map(|l| Label::parse(l)).collect::<Result<_>>()?,
    };
    let client_token = body.client_token.as_deref().map(ClientToken::parse).transpose()?;
    let value = body.value;
    let n = name.clone();
    let written = st
        .store
        .write(move |tx, keys| secrets::put_version(tx, keys, &n, &value, client_token.as_ref(), &labels))
        .await?;
    let status = if written.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(VersionCreated { name: name.to_string(), version_id: written.version_id })).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveLabel {
    version_id: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LabelMoved {
    name: String,
    label: String,
    version_id: String,
}

#[utoipa::path(put, path = "/v1/secrets/{name}:labels/{label}", tag = "secrets",
    params(("name" = String, Path), ("label" = String, Path)), request_body = MoveLabel,
    responses((status = 200, body = LabelMoved), (status = 404, body = crate::error::ErrorBody)))]
pub async fn move_label(
    st: AppState,
    caller: Caller,
    name: SecretName,
    label: Label,
    body: MoveLabel,
) -> Result<Json<LabelMoved>> {
    caller.require(Capability::Write, name.as_str())?;
    let (n, l, v) = (name.clone(), label.clone(), body.version_id.clone());
    st.store.write(move |tx, _| secrets::move_label(tx, &n, &l, &v)).await?;
    Ok(Json(LabelMoved { name: name.to_string(), label: label.as_str().into(), version_id: body.version_id }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchSecret {
    description: Option<String>,
    tags: Option<Tags>,
}

#[utoipa::path(patch, path = "/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path)), request_body = PatchSecret,
    responses((status = 200, body = SecretDescription)))]
pub async fn patch(st: AppState, caller: Caller, name: SecretName, body: PatchSecret) -> Result<Json<SecretDescription>> {
    caller.require(Capability::Write, name.as_str())?;
    if let Some(d) = &body.description {
        secrets::validate_description(d)?;
    }
    if let Some(t) = &body.tags {
        secrets::validate_tags(t)?;
    }
    st.store
        .write(move |tx, _| {
            secrets::patch(tx, &name, body.description, body.tags)?;
            secrets::describe(tx, &name)
        })
        .await
        .map(Json)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Days before the secret is purged (7-30, default 30).
    recovery_days: Option<u32>,
    /// Purge now, with no recovery window.
    #[serde(default)]
    force: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Deleted {
    name: String,
    /// When the secret will be purged; absent when it already was.
    #[serde(skip_serializing_if = "Option::is_none")]
    purge_at: Option<String>,
    purged: bool,
}

#[utoipa::path(delete, path = "/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path), DeleteQuery), responses((status = 200, body = Deleted)))]
pub async fn delete(st: AppState, caller: Caller, name: SecretName, q: DeleteQuery) -> Result<Json<Deleted>> {
    caller.require(Capability::Delete, name.as_str())?;
    if q.force && q.recovery_days.is_some() {
        return Err(Error::invalid("give recovery_days or force=true, not both"));
    }
    let n = name.clone();
    if q.force {
        st.store.write(move |tx, _| secrets::force_delete(tx, &n)).await?;
        return Ok(Json(Deleted { name: name.to_string(), purge_at: None, purged: true }));
    }
    let days = RecoveryDays::parse(q.recovery_days)?;
    let purge_at = st.store.write(move |tx, _| secrets::soft_delete(tx, &n, days)).await?;
    Ok(Json(Deleted { name: name.to_string(), purge_at: Some(purge_at), purged: false }))
}

#[utoipa::path(post, path = "/v1/secrets/{name}:restore", tag = "secrets",
    params(("name" = String, Path)), responses((status = 200, body = SecretDescription)))]
pub async fn restore(st: AppState, caller: Caller, name: SecretName) -> Result<Json<SecretDescription>> {
    caller.require(Capability::Delete, name.as_str())?;
    st.store
        .write(move |tx, _| {
            secrets::restore(tx, &name)?;
            secrets::describe(tx, &name)
        })
        .await
        .map(Json)
}
