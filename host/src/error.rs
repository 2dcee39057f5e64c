//! The one domain error, mapped to the API's error shape in one place
//! (`IntoResponse` below). Messages say what to fix and never hold a value.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Invalid,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    TooLarge,
    /// A plugin call the request depended on failed (422 `plugin_failed`).
    PluginFailed,
    Internal,
    /// The server cannot do this now, e.g. the audit log cannot be written
    /// (fail closed: nothing else was changed).
    Unavailable,
}

#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into() }
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(Kind::Invalid, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(Kind::Unauthorized, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(Kind::Forbidden, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(Kind::Conflict, m)
    }
    pub fn too_large(m: impl Into<String>) -> Self {
        Self::new(Kind::TooLarge, m)
    }
    pub fn plugin_failed(m: impl Into<String>) -> Self {
        Self::new(Kind::PluginFailed, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(Kind::Internal, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(Kind::Unavailable, m)
    }
    pub fn message(&self) -> &str {
        &self.message
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self.kind {
            Kind::Invalid => (StatusCode::BAD_REQUEST, "invalid_request"),
            Kind::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Kind::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Kind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Kind::Conflict => (StatusCode::CONFLICT, "conflict"),
            Kind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Kind::PluginFailed => (StatusCode::UNPROCESSABLE_ENTITY, "plugin_failed"),
            Kind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            Kind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        // Values are always bound parameters, so SQLite's message holds none.
        Error::internal(format!("storage error: {e}"))
    }
}

/// The wire shape: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// The error code of a response, left in its extensions so the request
/// middleware can put it in the audit record without parsing the body.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if matches!(self.kind, Kind::Internal | Kind::Unavailable) {
            tracing::error!(message = %self.message, "request failed");
        }
        let body = ErrorBody { error: ErrorDetail { code: code.into(), message: self.message } };
        let mut response = (status, Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(code));
        response
    }
}
