//! One HTTP request to a URL under a prefix granted to the rotation
//! (`https://host[:port]/prefix`). No redirects leave the grant, no proxy
//! is used, and `Host`/`Proxy-*` headers are refused.
//!
//! ```text
//! use tumbler_sdk::http::{self, Request};
//! let response = http::send(&Request::post("https://api.example.com/v1/keys")
//!     .header("Authorization", format!("Bearer {token}"))
//!     .json(&serde_json::json!({"name": "app"})))?
//!     .check()?;
//! ```

use core::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::StepError;
use crate::redact::Redacted;

pub use crate::bindings::tumbler::rotator::http::send;

/// A request. `Debug` shows header names but no header value or body.
#[derive(Clone)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

/// A response. `Debug` shows no header value or body (either may hold the
/// credential the request created).
#[derive(Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// `headers` as `[(name, <redacted>)]`.
fn header_names(headers: &[(String, String)]) -> Vec<(&str, Redacted)> {
    headers.iter().map(|(name, _)| (name.as_str(), Redacted)).collect()
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &header_names(&self.headers))
            .field("body", &self.body.as_ref().map(|_| Redacted))
            .finish()
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &header_names(&self.headers))
            .field("body", &Redacted)
            .finish()
    }
}

impl Request {
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Request { method: method.into(), url: url.into(), headers: Vec::new(), body: None }
    }

    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    pub fn post(url: impl Into<String>) -> Self {
        Self::new("POST", url)
    }

    pub fn put(url: impl Into<String>) -> Self {
        Self::new("PUT", url)
    }

    pub fn delete(url: impl Into<String>) -> Self {
        Self::new("DELETE", url)
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// A JSON body, with its `Content-Type`.
    pub fn json(self, body: &impl Serialize) -> Self {
        // Serialising a value to a Vec only fails for maps with non-string
        // keys, which JSON cannot express: send `null` rather than panic.
        let body = serde_json::to_vec(body).unwrap_or_else(|_| b"null".to_vec());
        self.header("Content-Type", "application/json").body(body)
    }
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header called `name`, ignoring case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON into `T`; a body that does not parse is a
    /// retryable error (the service may be answering with an error page).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, StepError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            StepError::retryable(format!(
                "the response (status {}) is not the JSON expected: line {}, column {}",
                self.status,
                e.line(),
                e.column()
            ))
        })
    }

    /// The response when its status is 2xx. Otherwise an error naming the
    /// status (not the body, which may echo a credential): retryable for
    /// 5xx, 401, 403, 408 and 429, where waiting may help (a new key not yet
    /// propagated, a rate limit); fatal for other statuses.
    pub fn check(self) -> Result<Response, StepError> {
        let message = || format!("the service answered status {}", self.status);
        match self.status {
            200..=299 => Ok(self),
            401 | 403 | 408 | 429 | 500..=599 => Err(StepError::retryable(message())),
            _ => Err(StepError::fatal(message())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16) -> Response {
        Response { status, headers: vec![("Content-Type".into(), "text/plain".into())], body: b"KEY-123".to_vec() }
    }

    #[test]
    fn debug_hides_header_values_and_bodies() {
        let request = Request::post("https://api/x").header("Authorization", "Bearer TOKEN").body("BODY");
        let shown = format!("{request:?} {:?}", response(200));
        assert!(shown.contains("Authorization"), "{shown}");
        for secret in ["TOKEN", "BODY", "KEY-123"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn json_bodies_carry_their_content_type() {
        let request = Request::put("https://api/x").json(&serde_json::json!({"a": 1}));
        assert_eq!(request.body.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(request.headers, [("Content-Type".to_owned(), "application/json".to_owned())]);
    }

    #[test]
    fn statuses_map_to_retryable_or_fatal() {
        assert!(response(204).check().is_ok());
        assert!(response(503).check().unwrap_err().is_retryable());
        assert!(response(429).check().unwrap_err().is_retryable());
        assert!(!response(404).check().unwrap_err().is_retryable());
        assert_eq!(response(200).header("content-type"), Some("text/plain"));
    }
}
