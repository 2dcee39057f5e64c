//! `/v1/secrets`: create, list, describe, patch, versions, labels, values,
//! soft delete, restore. A name's actions are a `:verb` suffix on its path.

use super::{AppState, JsonBody, Query, no_body, parse_query, rotations};
use crate::audit::RequestAudit;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::model::{Capability, ClientToken, Label, RecoveryDays, SecretName, SecretValue};
use crate::store::secrets::{
    self, ListQuery, NewSecret, SecretDescription, SecretSummary, Selector, Tags, ValueRead, VersionInfo, Written,
};
use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use zeroize::Zeroize;

/// What follows the name in `/v1/secrets/{name}:{action}`.
enum Action {
    None,
    Value,
    Versions,
    Restore,
    Label(Label),
    /// `:rotation`, `:rotate`, `:rotations` (handlers in rotations.rs).
    Rotation,
    Rotate,
    Rotations,
    /// `:revoke`, break glass.
    Revoke,
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
        Some("rotation") => Action::Rotation,
        Some("rotate") => Action::Rotate,
        Some("rotations") => Action::Rotations,
        Some("revoke") => Action::Revoke,
        Some(a) => match a.strip_prefix("labels/") {
            Some(label) => Action::Label(Label::parse(label)?),
            None => {
                return Err(Error::not_found(format!(
                    "unknown action ':{a}'; secrets have :value, :versions, :labels/LABEL, :restore, \
                     :rotation, :rotate, :rotations and :revoke"
                )));
            }
        },
    };
    Ok((name, action))
}

fn wrong_method(verb: &str, action: &str) -> Error {
    Error::invalid(format!("use {verb} for {action}"))
}

// The dispatchers name the action for the audit record before checking
// the token (`Result<Caller>` defers its refusal), so a refused request is
// recorded with the action and secret it was aimed at.

pub async fn get_action(
    State(st): State<AppState>,
    audit: RequestAudit,
    caller: Result<Caller>,
    Path(path): Path<String>,
    uri: axum::http::Uri,
) -> Result<Response> {
    let parsed = parse_path(&path);
    target(&audit, &parsed, |action| match action {
        Action::None => Some("secret.describe"),
        Action::Value => Some("secret.read"),
        Action::Versions => Some("secret.versions"),
        Action::Rotation => Some("rotation.config.get"),
        Action::Rotations => Some("rotation.history"),
        Action::Restore | Action::Label(_) | Action::Rotate | Action::Revoke => None,
    });
    let caller = caller?;
    let (name, action) = parsed?;
    // Each action has its own query parameters.
    let query = uri.query();
    match action {
        Action::None => describe(st, caller, name).await.map(IntoResponse::into_response),
        Action::Value => read_value(st, caller, name, parse_query(query)?).await.map(IntoResponse::into_response),
        Action::Versions => list_versions(st, caller, name).await.map(IntoResponse::into_response),
        Action::Rotation => rotations::get_config(st, caller, name).await.map(IntoResponse::into_response),
        Action::Rotations => {
            rotations::history(st, caller, name, parse_query(query)?).await.map(IntoResponse::into_response)
        }
        Action::Restore | Action::Rotate | Action::Revoke => Err(wrong_method("POST", "this action")),
        Action::Label(_) => Err(wrong_method("PUT", ":labels/LABEL")),
    }
}

pub async fn post_action(
    State(st): State<AppState>,
    audit: RequestAudit,
    caller: Result<Caller>,
    Path(path): Path<String>,
    req: Request,
) -> Result<Response> {
    let parsed = parse_path(&path);
    target(&audit, &parsed, |action| match action {
        Action::Versions => Some("secret.put"),
        Action::Restore => Some("secret.restore"),
        Action::Rotate => Some("rotation.start"),
        Action::Revoke => Some("secret.break_glass"),
        Action::None | Action::Value | Action::Label(_) | Action::Rotation | Action::Rotations => None,
    });
    let caller = caller?;
    let (name, action) = parsed?;
    match action {
        Action::Versions => {
            let JsonBody(body) = JsonBody::from_request(req, &()).await?;
            new_version(audit, caller, name, body).await
        }
        Action::Restore => {
            no_body(req, "POST :restore").await?;
            restore(audit, caller, name).await.map(IntoResponse::into_response)
        }
        Action::Rotate => {
            no_body(req, "POST :rotate").await?;
            rotations::rotate(st, audit, caller, name).await.map(IntoResponse::into_response)
        }
        Action::Revoke => {
            let JsonBody(body) = JsonBody::from_request(req, &()).await?;
            rotations::break_glass(st, audit, caller, name, body).await.map(IntoResponse::into_response)
        }
        Action::Rotation => Err(wrong_method("PUT", ":rotation")),
        Action::Rotations => Err(wrong_method("GET", ":rotations")),
        Action::None => {
            Err(Error::invalid("create a secret with POST /v1/secrets, or add a version with POST :versions"))
        }
        Action::Value => Err(Error::invalid("to write a value use POST :versions")),
        Action::Label(_) => Err(wrong_method("PUT", ":labels/LABEL")),
    }
}

pub async fn put_action(
    State(st): State<AppState>,
    audit: RequestAudit,
    caller: Result<Caller>,
    Path(path): Path<String>,
    req: Request,
) -> Result<Response> {
    let parsed = parse_path(&path);
    target(&audit, &parsed, |action| match action {
        Action::Label(_) => Some("secret.label"),
        Action::Rotation => Some("rotation.config.set"),
        _ => None,
    });
    let caller = caller?;
    match parsed? {
        (name, Action::Label(label)) => {
            let JsonBody(body) = JsonBody::from_request(req, &()).await?;
            move_label(audit, caller, name, label, body).await.map(IntoResponse::into_response)
        }
        (name, Action::Rotation) => {
            let JsonBody(body) = JsonBody::from_request(req, &()).await?;
            rotations::put_config(st, audit, caller, name, body).await.map(IntoResponse::into_response)
        }
        _ => Err(Error::invalid("PUT applies to :labels/LABEL and :rotation only")),
    }
}

pub async fn patch_action(
    audit: RequestAudit,
    caller: Result<Caller>,
    Path(path): Path<String>,
    req: Request,
) -> Result<Response> {
    let parsed = parse_path(&path);
    target(&audit, &parsed, |action| matches!(action, Action::None).then_some("secret.patch"));
    let caller = caller?;
    match parsed? {
        (name, Action::None) => {
            let JsonBody(body) = JsonBody::from_request(req, &()).await?;
            patch(audit, caller, name, body).await.map(IntoResponse::into_response)
        }
        _ => Err(Error::invalid("PATCH applies to the secret itself, without an action")),
    }
}

pub async fn delete_action(
    State(st): State<AppState>,
    audit: RequestAudit,
    caller: Result<Caller>,
    Path(path): Path<String>,
    uri: axum::http::Uri,
) -> Result<Response> {
    let parsed = parse_path(&path);
    target(&audit, &parsed, |action| match action {
        Action::None => Some("secret.delete"),
        Action::Rotation => Some("rotation.config.delete"),
        _ => None,
    });
    let caller = caller?;
    match parsed? {
        (name, Action::None) => {
            delete(audit, caller, name, parse_query(uri.query())?).await.map(IntoResponse::into_response)
        }
        (name, Action::Rotation) => {
            rotations::delete_config(st, audit, caller, name).await.map(IntoResponse::into_response)
        }
        _ => Err(Error::invalid("DELETE applies to the secret itself or its :rotation")),
    }
}

/// Names the request's action (if `name_of` knows it) and secret for its audit record.
fn target(
    audit: &RequestAudit,
    parsed: &Result<(SecretName, Action)>,
    name_of: impl Fn(&Action) -> Option<&'static str>,
) {
    if let Ok((name, action)) = parsed {
        if let Some(action) = name_of(action) {
            audit.target(action, name.as_str());
        }
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
pub async fn create(audit: RequestAudit, caller: Caller, JsonBody(body): JsonBody<CreateSecret>) -> Result<Response> {
    let name = SecretName::parse(&body.name);
    audit.target("secret.create", name.as_ref().map_or("", |n| n.as_str()));
    let name = name?;
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
    let written = audit.write_with_status(write_status, move |tx, keys| secrets::create(tx, keys, new)).await?;
    let status = write_status(&written);
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
    audit: RequestAudit,
    caller: Caller,
    Query(p): Query<ListParams>,
) -> Result<Json<SecretList>> {
    audit.target("secret.list", &p.prefix);
    let limit = super::page_limit(p.limit, 100, 1000)?;
    let after = super::decode_page_token(p.page_token)?;
    let q = ListQuery { prefix: p.prefix, after, include_deleted: p.include_deleted, limit };
    let caller = Arc::new(caller);
    let (secrets, last) =
        st.store.read(move |conn, _| secrets::list(conn, &q, |name| caller.allows(Capability::List, name))).await?;
    Ok(Json(SecretList { secrets, next_page_token: last.map(|n| super::encode_page_token(&n)) }))
}

// --- one secret -----------------------------------------------------------

#[derive(Serialize, utoipa::ToSchema)]
pub struct Described {
    #[serde(flatten)]
    secret: SecretDescription,
    /// The rotation config and status (as `GET :rotation`), for a token
    /// that may also `rotate` the secret and when it has a config.
    #[serde(skip_serializing_if = "Option::is_none")]
    rotation: Option<crate::rotation::config::ConfigView>,
}

#[utoipa::path(get, path = "/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "secret name; may contain '/'")),
    responses((status = 200, body = Described), (status = 404, body = crate::error::ErrorBody)))]
pub async fn describe(st: AppState, caller: Caller, name: SecretName) -> Result<Json<Described>> {
    caller.require(Capability::Read, name.as_str())?;
    let with_rotation = caller.allows(Capability::Rotate, name.as_str());
    st.store
        .read(move |conn, _| {
            let secret = secrets::describe(conn, &name)?;
            let rotation = match with_rotation && secret.summary.deleted_at.is_none() {
                true => match crate::rotation::config::view(conn, &name) {
                    Ok(view) => Some(view),
                    Err(e) if e.kind == crate::error::Kind::NotFound => None,
                    Err(e) => return Err(e),
                },
                false => None,
            };
            Ok(Described { secret, rotation })
        })
        .await
        .map(Json)
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
pub async fn read_value(st: AppState, caller: Caller, name: SecretName, q: ValueQuery) -> Result<Response> {
    caller.require(Capability::Read, name.as_str())?;
    let selector = match (q.label, q.version_id) {
        (Some(_), Some(_)) => return Err(Error::invalid("give label or version_id, not both")),
        (None, Some(v)) => Selector::Version(v),
        (Some(l), None) => Selector::Label(Label::parse(&l)?),
        (None, None) => Selector::Label(Label::current()),
    };
    st.store.read_value(name, selector).await.map(value_response)
}

/// The body of a value read, serialized into one buffer sized for it: a
/// buffer that grows copies what it held so far (part of the value) into
/// a new one and frees the old, unwiped. JSON escapes a byte into at most
/// six (`\u001f`); the rest of the object is under 256 bytes but for the
/// name, version id, labels and time.
fn value_response(read: ValueRead) -> Response {
    let fields = read.name.len() + read.version_id.len() + read.created_at.len();
    let labels: usize = read.labels.iter().map(|l| l.len() + 3).sum();
    let capacity = 256 + 6 * read.value.expose().len() + 2 * fields + labels;
    let mut body = Vec::with_capacity(capacity);
    match serde_json::to_writer(&mut body, &read) {
        Ok(()) => ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response(),
        // The serializer's message is not passed on: it could quote what it
        // was writing.
        Err(_) => {
            body.zeroize();
            Error::internal("the value read could not be written as JSON; the read was not answered").into_response()
        }
    }
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
pub async fn new_version(audit: RequestAudit, caller: Caller, name: SecretName, body: NewVersion) -> Result<Response> {
    caller.require(Capability::Write, name.as_str())?;
    let labels = match body.labels {
        None => vec![Label::current()],
        Some(ls) => ls.iter().map(|l| Label::parse(l)).collect::<Result<_>>()?,
    };
    let client_token = body.client_token.as_deref().map(ClientToken::parse).transpose()?;
    let value = body.value;
    let n = name.clone();
    let written = audit
        .write_with_status(write_status, move |tx, keys| {
            secrets::put_version(tx, keys, &n, &value, client_token.as_ref(), &labels)
        })
        .await?;
    let status = write_status(&written);
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
    audit: RequestAudit,
    caller: Caller,
    name: SecretName,
    label: Label,
    body: MoveLabel,
) -> Result<Json<LabelMoved>> {
    caller.require(Capability::Write, name.as_str())?;
    let (n, l, v) = (name.clone(), label.clone(), body.version_id.clone());
    audit.write(move |tx, _| secrets::move_label(tx, &n, &l, &v)).await?;
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
pub async fn patch(
    audit: RequestAudit,
    caller: Caller,
    name: SecretName,
    body: PatchSecret,
) -> Result<Json<SecretDescription>> {
    caller.require(Capability::Write, name.as_str())?;
    if let Some(d) = &body.description {
        secrets::validate_description(d)?;
    }
    if let Some(t) = &body.tags {
        secrets::validate_tags(t)?;
    }
    audit
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
pub async fn delete(audit: RequestAudit, caller: Caller, name: SecretName, q: DeleteQuery) -> Result<Json<Deleted>> {
    caller.require(Capability::Delete, name.as_str())?;
    if q.force && q.recovery_days.is_some() {
        return Err(Error::invalid("give recovery_days or force=true, not both"));
    }
    let n = name.clone();
    if q.force {
        audit.write(move |tx, _| secrets::force_delete(tx, &n)).await?;
        return Ok(Json(Deleted { name: name.to_string(), purge_at: None, purged: true }));
    }
    let days = RecoveryDays::parse(q.recovery_days)?;
    let purge_at = audit.write(move |tx, _| secrets::soft_delete(tx, &n, days)).await?;
    Ok(Json(Deleted { name: name.to_string(), purge_at: Some(purge_at), purged: false }))
}

#[utoipa::path(post, path = "/v1/secrets/{name}:restore", tag = "secrets",
    params(("name" = String, Path)), responses((status = 200, body = SecretDescription)))]
pub async fn restore(audit: RequestAudit, caller: Caller, name: SecretName) -> Result<Json<SecretDescription>> {
    caller.require(Capability::Delete, name.as_str())?;
    audit
        .write(move |tx, _| {
            secrets::restore(tx, &name)?;
            secrets::describe(tx, &name)
        })
        .await
        .map(Json)
}

/// 201 for a new version, 200 for a retry that matched an earlier write.
fn write_status(written: &Written) -> StatusCode {
    if written.created { StatusCode::CREATED } else { StatusCode::OK }
}
