//! Dynamic roles (`/v1/roles`) and their leases (`/v1/leases`). Actions are
//! `:verb` suffixes like the secrets routes: `:issue`, `:revoke-all` on a
//! role; `:renew`, `:revoke` on a lease.

use super::{AppState, JsonBody, Query, check_no_body, decode_page_token, encode_page_token, page_limit, parse_json};
use crate::audit::RequestAudit;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::leases::Issued;
use crate::leases::lease::{self, LeaseView};
use crate::leases::roles::{self, RoleRequest, RoleView};
use crate::model::{Capability, Ttl};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// Splits `NAME:verb`.
fn split_verb(raw: &str) -> (&str, Option<&str>) {
    match raw.split_once(':') {
        Some((name, verb)) => (name, Some(verb)),
        None => (raw, None),
    }
}

#[utoipa::path(put, path = "/v1/roles/{name}", tag = "leases", params(("name" = String, Path)),
    request_body = RoleRequest,
    responses((status = 200, body = RoleView),
              (status = 400, description = "a field is invalid, or the plugin refused the params; the message names it", body = crate::error::ErrorBody),
              (status = 403, description = "needs `admin` on sys/roles/NAME and `read` on the admin secret and every granted secret", body = crate::error::ErrorBody)))]
pub async fn put(
    State(st): State<AppState>,
    audit: RequestAudit,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<RoleRequest>,
) -> Result<Json<RoleView>> {
    let resource = roles::resource(&name);
    audit.target("role.put", &resource);
    caller.require(Capability::Admin, &resource)?;
    let role = body.parse(&name, &st.plugins).await?;
    for granted in &role.granted_secrets {
        caller.require(Capability::Read, granted.as_str()).map_err(|_| {
            Error::forbidden(format!(
                "the role hands '{granted}' to its plugin, and token '{}' may not read it; only someone who can \
                 read a secret may hand it to a plugin",
                caller.token_name
            ))
        })?;
    }
    let view = audit.write(move |tx, keys| roles::view(tx, &roles::put(tx, keys, &role)?)).await?;
    Ok(Json(view))
}

#[utoipa::path(get, path = "/v1/roles/{name}", tag = "leases", params(("name" = String, Path)),
    responses((status = 200, body = RoleView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    State(st): State<AppState>,
    audit: RequestAudit,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<RoleView>> {
    let resource = roles::resource(&name);
    audit.target("role.read", &resource);
    caller.require(Capability::Read, &resource)?;
    st.store.read(move |c, _| roles::view(c, &roles::get(c, &name)?)).await.map(Json)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Removed {
    name: String,
    removed: bool,
}

#[utoipa::path(delete, path = "/v1/roles/{name}", tag = "leases", params(("name" = String, Path)),
    responses((status = 200, body = Removed),
              (status = 409, description = "the role has leases not yet revoked", body = crate::error::ErrorBody)))]
pub async fn delete(audit: RequestAudit, caller: Caller, Path(name): Path<String>) -> Result<Json<Removed>> {
    let resource = roles::resource(&name);
    audit.target("role.delete", &resource);
    caller.require(Capability::Admin, &resource)?;
    let n = name.clone();
    audit.write(move |tx, _| roles::delete(tx, &n)).await?;
    Ok(Json(Removed { name, removed: true }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    limit: Option<usize>,
    page_token: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RoleList {
    roles: Vec<RoleView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/roles", tag = "leases", params(ListParams),
    responses((status = 200, description = "the roles the token may read", body = RoleList)))]
pub async fn list(
    State(st): State<AppState>,
    audit: RequestAudit,
    caller: Caller,
    Query(p): Query<ListParams>,
) -> Result<Json<RoleList>> {
    audit.target("role.list", "sys/roles");
    let limit = page_limit(p.limit, 100, 1000)?;
    let after = decode_page_token(p.page_token)?;
    let (roles, next_page_token) = st
        .store
        .read(move |c, _| {
            let visible = |r: &roles::RoleRow| caller.allows(Capability::Read, &roles::resource(&r.name));
            let (rows, next) = visible_page(after, limit, |a, n| roles::list(c, a, n), |r| r.name.clone(), visible)?;
            let views = rows.iter().map(|r| roles::view(c, r)).collect::<Result<_>>()?;
            Ok((views, next))
        })
        .await?;
    Ok(Json(RoleList { roles, next_page_token }))
}

/// One page of the rows the caller may see, paging after that filter:
/// fetches batches of rows ordered by `key` after the cursor until `limit`
/// pass `visible`; the next page token is the key of the last one kept.
fn visible_page<R>(
    mut after: Option<String>,
    limit: usize,
    mut fetch: impl FnMut(Option<&str>, usize) -> Result<Vec<R>>,
    key: impl Fn(&R) -> String,
    visible: impl Fn(&R) -> bool,
) -> Result<(Vec<R>, Option<String>)> {
    const BATCH: usize = 500;
    let mut out = Vec::new();
    loop {
        let batch = fetch(after.as_deref(), BATCH)?;
        let done = batch.len() < BATCH;
        for row in batch {
            after = Some(key(&row));
            if visible(&row) {
                out.push(row);
                if out.len() == limit {
                    return Ok((out, after.as_deref().map(encode_page_token)));
                }
            }
        }
        if done {
            return Ok((out, None));
        }
    }
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TtlBody {
    /// A duration (`15m`) or seconds; default: the role's `default_ttl`.
    #[schema(value_type = Option<String>)]
    ttl: Option<Ttl>,
}

fn ttl_body(body: &Bytes) -> Result<Option<std::time::Duration>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let parsed: TtlBody = parse_json(body)?;
    parsed.ttl.map(|t| t.parse("ttl")).transpose()
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RevokingAll {
    role: String,
    /// Leases marked for revocation; the sweeper revokes them at the target.
    revoking: usize,
}

#[utoipa::path(post, path = "/v1/roles/{name}:issue", tag = "leases", params(("name" = String, Path)),
    request_body = TtlBody,
    responses((status = 201, description = "the credential is shown only in this response", body = Issued),
              (status = 409, description = "a lease quota is reached", body = crate::error::ErrorBody),
              (status = 422, description = "the plugin could not issue", body = crate::error::ErrorBody)))]
pub async fn post_action(
    State(st): State<AppState>,
    audit: RequestAudit,
    caller: Caller,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let (name, verb) = split_verb(&raw);
    let resource = roles::resource(name);
    match verb {
        Some("issue") => {
            audit.target("lease.issue", &resource);
            caller.require(Capability::Read, &resource)?;
            let ttl = ttl_body(&body)?;
            let issued = st.leases.issue(&caller, name, ttl, &audit).await?;
            Ok((StatusCode::CREATED, Json(issued)).into_response())
        }
        Some("revoke-all") => {
            audit.target("lease.revoke_all", &resource);
            caller.require(Capability::Admin, &resource)?;
            check_no_body(&body, "POST :revoke-all")?;
            let revoking = st.leases.revoke_all(name, &audit).await?;
            Ok((StatusCode::ACCEPTED, Json(RevokingAll { role: name.to_owned(), revoking })).into_response())
        }
        Some(other) => Err(Error::not_found(format!("roles have no action ':{other}'; use :issue or :revoke-all"))),
        None => Err(Error::invalid("POST a role's action: /v1/roles/NAME:issue or /v1/roles/NAME:revoke-all")),
    }
}

#[utoipa::path(post, path = "/v1/leases/{id}:renew", tag = "leases", params(("id" = String, Path)),
    request_body = TtlBody,
    responses((status = 200, body = LeaseView),
              (status = 409, description = "the lease is not active, or already at its max TTL", body = crate::error::ErrorBody)))]
pub async fn lease_action(
    State(st): State<AppState>,
    audit: RequestAudit,
    caller: Caller,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Json<LeaseView>> {
    let (id, verb) = split_verb(&raw);
    match verb {
        Some("renew") => {
            audit.target("lease.renew", id);
            let ttl = ttl_body(&body)?;
            st.leases.renew(&caller, id, ttl, &audit).await.map(Json)
        }
        Some("revoke") => {
            audit.target("lease.revoke", id);
            check_no_body(&body, "POST :revoke")?;
            st.leases.revoke(&caller, id, &audit).await.map(Json)
        }
        Some(other) => Err(Error::not_found(format!("leases have no action ':{other}'; use :renew or :revoke"))),
        None => Err(Error::invalid("POST a lease's action: /v1/leases/ID:renew or /v1/leases/ID:revoke")),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LeaseListParams {
    /// Only this role's leases.
    role: Option<String>,
    limit: Option<usize>,
    page_token: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LeaseList {
    leases: Vec<LeaseView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/leases", tag = "leases", params(LeaseListParams),
    responses((status = 200, description = "leases of roles the token may read; never credentials", body = LeaseList)))]
pub async fn list_leases(
    State(st): State<AppState>,
    audit: RequestAudit,
    caller: Caller,
    Query(p): Query<LeaseListParams>,
) -> Result<Json<LeaseList>> {
    audit.target("lease.list", p.role.as_deref().map(roles::resource).as_deref().unwrap_or("sys/roles"));
    let limit = page_limit(p.limit, 100, 1000)?;
    if let Some(role) = &p.role {
        caller.require(Capability::Read, &roles::resource(role))?;
    }
    let after = decode_page_token(p.page_token)?;
    let role = p.role;
    let (rows, next_page_token) = st
        .store
        .read(move |c, _| {
            let visible = |l: &lease::LeaseRow| caller.allows(Capability::Read, &roles::resource(&l.role));
            visible_page(after, limit, |a, n| lease::list(c, role.as_deref(), a, n), |l| l.id.clone(), visible)
        })
        .await?;
    Ok(Json(LeaseList { leases: rows.iter().map(LeaseView::from).collect(), next_page_token }))
}
