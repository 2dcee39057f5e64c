//! `/v1/tokens`: mint (a subset of the caller's policies, no longer-lived),
//! list and revoke; all need `admin` on `sys/tokens`.

use super::{AppState, JsonBody};
use crate::audit::RequestAudit;
use crate::auth::{self, Caller, MintRequest, Minted};
use crate::error::{Error, Result};
use crate::model::{Capability, now_millis};
use crate::store::tokens::{self, TokenInfo};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

const RESOURCE: &str = "sys/tokens";

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    name: String,
    policies: Vec<String>,
    /// A duration such as `1h` or `30d`, or seconds as a number (default 32 days).
    #[schema(value_type = Option<String>)]
    ttl: Option<crate::model::Ttl>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenList {
    tokens: Vec<TokenInfo>,
}

#[utoipa::path(post, path = "/v1/tokens", tag = "access", request_body = CreateToken,
    responses((status = 201, description = "the token is shown only in this response", body = Minted),
              (status = 403, body = crate::error::ErrorBody)))]
pub async fn create(
    audit: RequestAudit,
    caller: Caller,
    JsonBody(body): JsonBody<CreateToken>,
) -> Result<(StatusCode, Json<Minted>)> {
    audit.target("token.create", &body.name);
    caller.require(Capability::Admin, RESOURCE)?;
    let req =
        MintRequest { name: body.name, policies: body.policies, ttl: body.ttl.map(|t| t.parse("ttl")).transpose()? };
    let minted =
        audit.write_with_status(|_| StatusCode::CREATED, move |tx, _| auth::mint(tx, Some(&caller), req)).await?;
    Ok((StatusCode::CREATED, Json(minted)))
}

#[utoipa::path(get, path = "/v1/tokens", tag = "access", responses((status = 200, body = TokenList)))]
pub async fn list(State(st): State<AppState>, audit: RequestAudit, caller: Caller) -> Result<Json<TokenList>> {
    audit.target("token.list", RESOURCE);
    caller.require(Capability::Admin, RESOURCE)?;
    let tokens = st.store.read(|conn, _| tokens::list(conn)).await?;
    Ok(Json(TokenList { tokens }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Revoked {
    id: String,
    /// This token and the tokens minted from it.
    revoked: usize,
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "access", params(("id" = String, Path)),
    responses((status = 200, body = Revoked), (status = 404, body = crate::error::ErrorBody)))]
pub async fn revoke(audit: RequestAudit, caller: Caller, Path(id): Path<String>) -> Result<Json<Revoked>> {
    audit.target("token.revoke", &id);
    caller.require(Capability::Admin, RESOURCE)?;
    let (i, missing) = (id.clone(), format!("no token has id '{id}'"));
    // An unknown id is a 404 and must not commit an "ok" record.
    let revoked = audit
        .write(move |tx, _| tokens::revoke_tree(tx, &i, now_millis())?.ok_or_else(|| Error::not_found(missing)))
        .await?;
    Ok(Json(Revoked { id, revoked }))
}
