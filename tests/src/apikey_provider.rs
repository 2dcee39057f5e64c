//! A small API-key provider for the `apikey` rotator's tests, on a
//! loopback port: it issues keys to its admin token, says whether a key is
//! live, deletes keys, and can be told to fail.
//!
//! - `POST /v1/keys` (`Authorization: Bearer ADMIN`, body `{"name": ...}`)
//!   → 201 `{"data": {"id": "key-N", "secret": "...", "name": ...}}`
//! - `GET /v1/whoami` (`X-Api-Key: KEY`) → 200 `{"id": ...}` for a live key, else 401
//! - `DELETE /v1/keys/{id}` (`Authorization: Bearer ADMIN`) → 204, or 404 when unknown
//!
//! Keys are base64 with `+`, `/` and `=`, so a key in a URL must be encoded.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use base64::Engine as _;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
struct Keys {
    /// id → key, for the live keys.
    live: BTreeMap<String, String>,
    issued: u64,
    /// Every request, `METHOD /path`, in order.
    requests: Vec<String>,
    failing: bool,
}

#[derive(Clone)]
struct Shared {
    admin_token: String,
    keys: Arc<Mutex<Keys>>,
}

impl Shared {
    fn keys(&self) -> MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_admin(&self, headers: &HeaderMap) -> bool {
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {}", self.admin_token))
    }

    /// Records the request; `Some(503)` when told to fail.
    fn enter(&self, request: String) -> Option<Response> {
        let mut keys = self.keys();
        keys.requests.push(request);
        keys.failing.then(|| (StatusCode::SERVICE_UNAVAILABLE, "told to fail").into_response())
    }

    fn issue(&self) -> (String, String) {
        let mut keys = self.keys();
        keys.issued += 1;
        let id = format!("key-{}", keys.issued);
        let secret = base64::engine::general_purpose::STANDARD.encode(crate::random_bytes(24));
        let secret = format!("ak_{secret}+/=");
        keys.live.insert(id.clone(), secret.clone());
        (id, secret)
    }
}

pub struct ApiKeyProvider {
    pub addr: SocketAddr,
    /// What `POST /v1/keys` and `DELETE` want as a bearer token.
    pub admin_token: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl ApiKeyProvider {
    /// Starts on 127.0.0.1 on a free port, on the current tokio runtime.
    pub async fn start() -> ApiKeyProvider {
        let shared = Shared { admin_token: crate::random_string(32), keys: Arc::default() };
        let app = Router::new()
            .route("/v1/keys", post(create))
            .route("/v1/keys/{id}", delete(remove))
            .route("/v1/whoami", get(whoami))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ApiKeyProvider { addr, admin_token: shared.admin_token.clone(), shared, task }
    }

    /// `http://127.0.0.1:PORT/v1`: the URL prefix to grant.
    pub fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Issues a key directly (the one an operator starts with): `(id, key)`.
    pub fn issue(&self) -> (String, String) {
        self.shared.issue()
    }

    pub fn is_live(&self, key: &str) -> bool {
        self.shared.keys().live.values().any(|k| k == key)
    }

    pub fn live_count(&self) -> usize {
        self.shared.keys().live.len()
    }

    /// From now on every request is answered 503 (or normally again).
    pub fn fail(&self, failing: bool) {
        self.shared.keys().failing = failing;
    }

    /// Every request so far, `METHOD /path`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.keys().requests.clone()
    }
}

impl Drop for ApiKeyProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn create(State(shared): State<Shared>, headers: HeaderMap, body: String) -> Response {
    if let Some(failed) = shared.enter("POST /v1/keys".into()) {
        return failed;
    }
    if !shared.is_admin(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "the body is not JSON").into_response();
    };
    let (id, secret) = shared.issue();
    let data = json!({"id": id, "secret": secret, "name": request["name"]});
    (StatusCode::CREATED, axum::Json(json!({"data": data}))).into_response()
}

async fn remove(State(shared): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(failed) = shared.enter(format!("DELETE /v1/keys/{id}")) {
        return failed;
    }
    if !shared.is_admin(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match shared.keys().live.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn whoami(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(failed) = shared.enter("GET /v1/whoami".into()) {
        return failed;
    }
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let keys = shared.keys();
    match keys.live.iter().find(|(_, k)| k.as_str() == key) {
        Some((id, _)) => axum::Json(json!({"id": id})).into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}
