//! `/v1/policies`: named rule sets; managing them needs `admin` on `sys/policies`.

use super::{AppState, JsonBody};
use crate::audit::RequestAudit;
use crate::auth::{self, Caller, Rule};
use crate::error::{Error, Result};
use crate::model::Capability;
use crate::store::policies;
use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

const RESOURCE: &str = "sys/policies";

#[derive(Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    rules: Vec<Rule>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Policy {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PolicyList {
    policies: Vec<String>,
}

#[utoipa::path(put, path = "/v1/policies/{name}", tag = "access", params(("name" = String, Path)),
    request_body = PolicyBody, responses((status = 200, body = Policy)))]
pub async fn put(
    audit: RequestAudit,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<PolicyBody>,
) -> Result<Json<Policy>> {
    audit.target("policy.put", &name);
    caller.require(Capability::Admin, RESOURCE)?;
    auth::validate_policy_name(&name)?;
    auth::validate_rules(&body.rules)?;
    let (n, rules) = (name.clone(), body.rules.clone());
    audit.write(move |tx, _| policies::put(tx, &n, &rules)).await?;
    Ok(Json(Policy { name, rules: body.rules }))
}

#[utoipa::path(get, path = "/v1/policies/{name}", tag = "access", params(("name" = String, Path)),
    responses((status = 200, body = Policy), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    State(st): State<AppState>,
    audit: RequestAudit,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Policy>> {
    audit.target("policy.read", &name);
    caller.require(Capability::Admin, RESOURCE)?;
    let n = name.clone();
    let rules = st
        .store
        .read(move |conn, _| policies::get(conn, &n))
        .await?
        .ok_or_else(|| Error::not_found(format!("policy '{name}' does not exist")))?;
    Ok(Json(Policy { name, rules }))
}

#[utoipa::path(get, path = "/v1/policies", tag = "access", responses((status = 200, body = PolicyList)))]
pub async fn list(State(st): State<AppState>, audit: RequestAudit, caller: Caller) -> Result<Json<PolicyList>> {
    audit.target("policy.list", RESOURCE);
    caller.require(Capability::Admin, RESOURCE)?;
    let policies = st.store.read(|conn, _| policies::list(conn)).await?;
    Ok(Json(PolicyList { policies }))
}

#[utoipa::path(delete, path = "/v1/policies/{name}", tag = "access", params(("name" = String, Path)),
    responses((status = 200, body = PolicyList)))]
pub async fn delete(
    State(st): State<AppState>,
    audit: RequestAudit,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<PolicyList>> {
    audit.target("policy.delete", &name);
    caller.require(Capability::Admin, RESOURCE)?;
    let (n, missing) = (name.clone(), format!("policy '{name}' does not exist"));
    // Deleting nothing is a 404 and must not commit an "ok" record.
    audit.write(move |tx, _| if policies::delete(tx, &n)? { Ok(()) } else { Err(Error::not_found(missing)) }).await?;
    let policies = st.store.read(|conn, _| policies::list(conn)).await?;
    Ok(Json(PolicyList { policies }))
}
