//! `GET /v1/openapi.json`: the API as OpenAPI 3, generated from the handlers'
//! annotations so it cannot drift from the code.

use super::{audit, health, metrics, plugins, policies, roles, rotations, secrets, tokens};
use crate::auth::Caller;
use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "tumbler", description = "Self-hosted secrets manager with sandboxed WebAssembly rotators"),
    paths(
        health::health, metrics::serve, audit::list,
        secrets::create, secrets::list, secrets::describe, secrets::read_value, secrets::list_versions,
        secrets::new_version, secrets::move_label, secrets::patch, secrets::delete, secrets::restore,
        policies::put, policies::get, policies::list, policies::delete,
        tokens::create, tokens::list, tokens::revoke,
        plugins::upload, plugins::list, plugins::describe, plugins::delete,
        rotations::put_config, rotations::get_config, rotations::delete_config, rotations::rotate,
        rotations::history, rotations::get,
        roles::put, roles::get, roles::delete, roles::list, roles::post_action, roles::lease_action,
        roles::list_leases,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

pub async fn serve(_caller: Caller) -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
