//! The HTTP API: routes, and the extractors that parse requests at the edge
//! (the caller's token, bounded and zeroized JSON bodies, query strings).
//! Handlers live one file per resource and stay thin.

mod audit;
mod health;
mod metrics;
mod openapi;
mod plugins;
mod policies;
mod request;
mod roles;
mod rotations;
mod secrets;
mod tokens;

use crate::auth::{self, Caller};
use crate::error::{Error, Result};
use crate::store::Store;
use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH};
use axum::http::request::Parts;
use axum::routing::{delete, get, post};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use zeroize::{Zeroize, Zeroizing};

/// Largest request body accepted (values are at most 64 KiB).
pub const MAX_BODY: usize = 1024 * 1024;

/// What every handler shares. Cloned for each request (and by each
/// extractor that takes it), so it is one `Arc`: a clone of the fields
/// themselves was eight reference counts up and down a request.
#[derive(Clone)]
pub struct AppState(std::sync::Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(std::sync::Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub store: Store,
    pub audit: crate::audit::AuditLog,
    pub plugins: std::sync::Arc<crate::plugins::registry::Registry>,
    pub rotation: std::sync::Arc<crate::rotation::Engine>,
    pub leases: std::sync::Arc<crate::leases::Leases>,
    /// Callers of recently seen tokens (see [`auth::TokenCache`]).
    pub tokens: std::sync::Arc<auth::TokenCache>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(health::health))
        .route("/metrics", get(metrics::serve))
        .route("/v1/audit", get(audit::list))
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/v1/secrets", get(secrets::list).post(secrets::create))
        .route(
            "/v1/secrets/{*path}",
            get(secrets::get_action)
                .post(secrets::post_action)
                .put(secrets::put_action)
                .patch(secrets::patch_action)
                .delete(secrets::delete_action),
        )
        .route("/v1/rotations/{id}", get(rotations::get))
        .route("/v1/roles", get(roles::list))
        .route("/v1/roles/{name}", get(roles::get).put(roles::put).delete(roles::delete).post(roles::post_action))
        .route("/v1/leases", get(roles::list_leases))
        .route("/v1/leases/{id}", post(roles::lease_action))
        .route("/v1/plugins", get(plugins::list))
        .route("/v1/plugins/{name}", get(plugins::describe).post(plugins::upload).delete(plugins::delete))
        .route("/v1/policies", get(policies::list))
        .route("/v1/policies/{name}", get(policies::get).put(policies::put).delete(policies::delete))
        .route("/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/v1/tokens/{id}", delete(tokens::revoke))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Last, so it wraps every route above and the fallbacks: request id,
        // span, metrics and the audit record of each request.
        .layer(axum::middleware::from_fn_with_state(state.clone(), request::track))
        .with_state(state)
}

async fn not_found() -> Error {
    Error::not_found("no such route; see GET /v1/openapi.json for the API")
}

async fn method_not_allowed() -> Error {
    Error::new(crate::error::Kind::Invalid, "this route does not accept that HTTP method; see GET /v1/openapi.json")
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            Error::unauthorized("missing token: send `Authorization: Bearer <token>` (the CLI reads TUMBLER_TOKEN)")
        })?;
        // Borrowed from the header and only hashed: no copy of the token to wipe.
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| Error::unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let caller = auth::authenticate_cached(&state.store, &state.tokens, token).await?;
        if let Some(audit) = parts.extensions.get::<crate::audit::RequestAudit>() {
            audit.set_caller(&caller.token_id, &caller.token_name);
        }
        Ok(caller)
    }
}

/// A JSON body read with a size cap, parsed, then wiped from memory.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(req: Request, _state: &S) -> Result<Self> {
        let bytes = read_body(req, MAX_BODY).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Reads a body into a buffer that is zeroized on drop, refusing more than
/// `limit` bytes before reading them when the length is announced.
pub async fn read_body(req: Request, limit: usize) -> Result<Zeroizing<Vec<u8>>> {
    let too_large = || Error::too_large(format!("the request body is over the {limit}-byte limit"));
    let announced =
        req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut out = Zeroizing::new(Vec::with_capacity(announced.unwrap_or(0)));
    let mut body: Body = req.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::invalid(format!("could not read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        if out.len() + data.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&data);
        if let Ok(mut unique) = data.try_into_mut() {
            unique.as_mut().zeroize();
        }
    }
    Ok(out)
}

/// Reads the body of an action that takes none, and accepts it only when
/// it is empty or `{}` (what many clients send with every POST). Read
/// before the action runs: left unread, it makes the server close the
/// connection after its answer, under a client that may already be sending
/// its next request on it.
pub async fn no_body(req: Request, action: &str) -> Result<()> {
    let bytes = read_body(req, MAX_BODY).await?;
    check_no_body(&bytes, action)
}

/// The check of [`no_body`] on a body already read.
pub fn check_no_body(bytes: &[u8], action: &str) -> Result<()> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match parse_json::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(fields)) if fields.is_empty() => Ok(()),
        _ => Err(Error::invalid(format!("{action} takes no request body: send none, or `{{}}`"))),
    }
}

/// Parses JSON; errors name the field and the problem but never echo input.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    if bytes.is_empty() {
        return Err(Error::invalid("the request body is empty; send a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        json_error(&path, e.into_inner())
    })?;
    de.end().map_err(|e| json_error(".", e))?;
    Ok(value)
}

fn json_error(path: &str, e: serde_json::Error) -> Error {
    use serde_json::error::Category;
    let (line, column) = (e.line(), e.column());
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            Error::invalid(format!("malformed JSON at line {line} column {column}; send a valid JSON object"))
        }
        Category::Data => {
            let full = e.to_string();
            let msg = full.strip_suffix(&format!(" at line {line} column {column}")).unwrap_or(&full);
            // serde's "invalid type/value" messages quote the input; keep only what was expected.
            let msg = match msg.split_once(", expected ") {
                Some((head, expected)) if head.starts_with("invalid ") => {
                    format!("wrong type or value, expected {expected}")
                }
                _ => msg.to_owned(),
            };
            if let Some(rule) = msg.strip_prefix(crate::model::TOO_LARGE_PREFIX) {
                return Error::too_large(format!("field `{path}`: {rule}"));
            }
            if path == "." || msg.starts_with("missing field") || msg.starts_with("unknown field") {
                Error::invalid(msg)
            } else {
                Error::invalid(format!("field `{path}`: {msg}"))
            }
        }
    }
}

/// A page size: `default` when absent, else 1..=`max`.
pub fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(Error::invalid(format!("limit is {n}; choose 1 to {max}"))),
    }
}

/// Page tokens are opaque to clients: the key to continue from, encoded.
pub fn encode_page_token(key: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

pub fn decode_page_token(token: Option<String>) -> Result<Option<String>> {
    use base64::Engine as _;
    token
        .map(|t| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| Error::invalid("page_token is not one this server issued; start again without it"))
        })
        .transpose()
}

/// Query string parsed into `T`, with a 400 naming the problem.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self> {
        parse_query(parts.uri.query()).map(Query)
    }
}

/// A query string parsed into `T`, for routes whose parameters depend on
/// the action (`/v1/secrets/{name}:verb`).
pub fn parse_query<T: DeserializeOwned>(query: Option<&str>) -> Result<T> {
    serde_urlencoded::from_str(query.unwrap_or("")).map_err(|e| Error::invalid(format!("query string: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SecretValue;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        value: SecretValue,
    }

    #[test]
    fn json_errors_never_echo_the_input() {
        let e = parse_json::<Body>(br#"{"name":"x","value":12345678}"#).unwrap_err();
        assert!(!e.message().contains("12345678"), "{}", e.message());
        assert!(e.message().contains("value"), "{}", e.message());
        let e = parse_json::<Body>(br#"{"name":"x","value":"#).unwrap_err();
        assert!(e.message().contains("malformed JSON"), "{}", e.message());
        let e = parse_json::<Body>(br#"{"name":"x","value":"s3cr3t","extra":1}"#).unwrap_err();
        assert!(e.message().contains("unknown field"), "{}", e.message());
        assert!(!e.message().contains("s3cr3t"));
        let e = parse_json::<Body>(br#"{"name":"x","value":""}"#).unwrap_err();
        assert!(e.message().contains("empty"), "{}", e.message());
    }
}
