//! `/v1/plugins`: upload a component (checked to implement the world),
//! list, describe, delete. Uploading or deleting needs `admin` on
//! `sys/plugins/NAME`; reading needs `read` (listing: `list`) there.

use super::{AppState, Query, read_body};
use crate::audit::RequestAudit;
use crate::auth::Caller;
use crate::error::Result;
use crate::model::Capability;
use crate::plugins::registry::{self, MAX_PLUGIN_BYTES, PluginDescription, PluginVersion};
use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

fn resource(name: &str) -> String {
    format!("sys/plugins/{name}")
}

#[utoipa::path(post, path = "/v1/plugins/{name}", tag = "plugins",
    params(("name" = String, Path), ("X-Tumbler-Sha256" = Option<String>, Header, description = "expected sha256 of the body")),
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses((status = 201, body = PluginVersion), (status = 200, description = "these bytes were already registered under this name", body = PluginVersion),
              (status = 400, description = "not a component implementing tumbler:rotator", body = crate::error::ErrorBody),
              (status = 413, body = crate::error::ErrorBody)))]
pub async fn upload(
    State(st): State<AppState>,
    audit: RequestAudit,
    caller: Caller,
    Path(name): Path<String>,
    req: Request,
) -> Result<(StatusCode, Json<PluginVersion>)> {
    audit.target("plugin.upload", &resource(&name));
    registry::validate_name(&name)?;
    caller.require(Capability::Admin, &resource(&name))?;
    let expected = req.headers().get("x-tumbler-sha256").and_then(|v| v.to_str().ok()).map(|v| v.trim().to_owned());
    let wasm = read_body(req, MAX_PLUGIN_BYTES).await?;
    let (version, created) = st.plugins.upload(&name, wasm.to_vec(), expected.as_deref(), &audit).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(version)))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PluginList {
    plugins: Vec<PluginVersion>,
}

#[utoipa::path(get, path = "/v1/plugins", tag = "plugins", responses((status = 200, body = PluginList)))]
pub async fn list(State(st): State<AppState>, audit: RequestAudit, caller: Caller) -> Result<Json<PluginList>> {
    audit.target("plugin.list", "sys/plugins");
    let plugins =
        st.plugins.list().await?.into_iter().filter(|p| caller.allows(Capability::List, &resource(&p.name))).collect();
    Ok(Json(PluginList { plugins }))
}

#[utoipa::path(get, path = "/v1/plugins/{name}", tag = "plugins", params(("name" = String, Path)),
    responses((status = 200, body = PluginDescription), (status = 404, body = crate::error::ErrorBody)))]
pub async fn describe(
    State(st): State<AppState>,
    audit: RequestAudit,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<PluginDescription>> {
    audit.target("plugin.describe", &resource(&name));
    caller.require(Capability::Read, &resource(&name))?;
    st.plugins.describe(&name).await.map(Json)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    /// Remove only this version (default: all versions).
    version: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PluginDeleted {
    name: String,
    versions_removed: usize,
}

#[utoipa::path(delete, path = "/v1/plugins/{name}", tag = "plugins", params(("name" = String, Path), DeleteParams),
    responses((status = 200, body = PluginDeleted), (status = 409, body = crate::error::ErrorBody)))]
pub async fn delete(
    State(st): State<AppState>,
    audit: RequestAudit,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<DeleteParams>,
) -> Result<Json<PluginDeleted>> {
    audit.target("plugin.delete", &resource(&name));
    caller.require(Capability::Admin, &resource(&name))?;
    let versions_removed = st.plugins.delete(&name, q.version, &audit).await?;
    Ok(Json(PluginDeleted { name, versions_removed }))
}
