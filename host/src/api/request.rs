//! What wraps every request: a request id (taken from a sane `X-Request-Id`
//! or made here, returned in `x-request-id`), a tracing span, metrics by
//! route template, and the audit record — a response whose record cannot
//! be written is replaced by 503 and never sent. A response to a request
//! whose body was not read to its end says `Connection: close`.

use super::AppState;
use crate::audit::RequestAudit;
use crate::error::{Error, ErrorCode, Result};
use crate::metrics::metrics;
use crate::store::Durability;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tracing::{Instrument, Level};

pub const REQUEST_ID: &str = "x-request-id";

/// Routes that are not audited: liveness probes and scrapes carry no token
/// and touch no secret, and auditing them would drown the log.
const UNAUDITED: &[&str] = &["/v1/health", "/metrics"];

pub async fn track(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = request_id(req.headers());
    let method = req.method().clone();
    // The template, never the path: a path holds a secret name, and label
    // values from input would grow without bound.
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let body_read = (req.version() <= axum::http::Version::HTTP_11 && carries_body(req.headers())).then(|| {
        let ended = Arc::new(AtomicBool::new(false));
        let watched = ended.clone();
        req = std::mem::take(&mut req).map(|inner| Body::new(ReadToEnd { inner, ended: watched }));
        ended
    });
    let client = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| client_address(c.0)).unwrap_or_default();
    let audit = (!UNAUDITED.contains(&route.as_str()))
        .then(|| RequestAudit::new(st.audit.clone(), &request_id, &client, format!("{method} {route}")));
    if let Some(audit) = &audit {
        req.extensions_mut().insert(audit.clone());
    }
    // The request id only: a span's fields are formatted when it is made,
    // for every request, and the request's last line names the method and
    // route (see `log_finished`). A line logged inside the request carries
    // the id, which the audit record and that last line also carry.
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = tracing::field::Empty,
        route = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    async move {
        let name = SpanName { method: &method, route: &route, added: AtomicBool::new(false) };
        let mut response = next.run(req).await;
        if let Some(audit) = audit {
            response = finish_audit(&audit, &method, &name, response).await;
        }
        let status = response.status();
        let latency = started.elapsed();
        metrics().http_requests.inc(&[&route, method.as_str(), status.as_str()]);
        metrics().http_duration.observe(&[&route, method.as_str()], latency.as_secs_f64());
        log_finished(&name, status, latency);
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        // A response may hold a secret value or a token: no browser, proxy
        // or client cache may keep a copy of it.
        response.headers_mut().insert(axum::http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if body_read.is_some_and(|ended| !ended.load(Ordering::Acquire)) {
            // The rest of the body is still on the wire (a refusal before
            // an upload was read, a body sent to a route that takes none):
            // the connection cannot carry another request, and saying so
            // keeps a client from sending its next one on it as the
            // server closes it.
            response.headers_mut().insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
    .instrument(span)
    .await
}

/// The request's last log line: at `info` when it was refused or failed, at
/// `debug` when it succeeded. Every request is in the audit log (request id,
/// caller, action, status), so a line per success only repeated it, and at
/// tens of thousands of reads a second writing it took a tenth of the
/// server's time.
fn log_finished(name: &SpanName<'_>, status: StatusCode, latency: Duration) {
    let failed = status.is_client_error() || status.is_server_error();
    if !failed && !tracing::enabled!(Level::DEBUG) {
        return;
    }
    let span = name.add();
    span.record("status", status.as_u16());
    span.record("latency_ms", latency.as_secs_f64() * 1000.0);
    if failed {
        tracing::info!("request finished");
    } else {
        tracing::debug!("request finished");
    }
}

/// The request's method and route, added to its span just before the
/// first line that shows them (they are not formatted for requests that
/// log none), and only once: a field recorded twice is written twice.
struct SpanName<'a> {
    method: &'a Method,
    route: &'a str,
    added: AtomicBool,
}

impl SpanName<'_> {
    fn add(&self) -> tracing::Span {
        let span = tracing::Span::current();
        if !self.added.swap(true, Ordering::Relaxed) {
            span.record("method", tracing::field::display(self.method));
            span.record("route", tracing::field::display(self.route));
        }
        span
    }
}

/// Writes the record of a request whose handler did not write it with a
/// mutation; until it is on disk the response (a read's body) is held back.
async fn finish_audit(audit: &RequestAudit, method: &Method, name: &SpanName<'_>, response: Response) -> Response {
    let status = response.status();
    let code = response.extensions().get::<ErrorCode>().map(|c| c.0);
    let mutating = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if mutating && status.is_success() && !audit.written() {
        // The change committed without its record: a handler that should
        // use `RequestAudit::write`. The record still goes in, after it.
        name.add();
        tracing::warn!("a successful mutating request did not write its audit record in its transaction");
    }
    // A read-only request changed nothing that a power cut could leave
    // without its record; see the audit module for the guarantee.
    let durability = if mutating { Durability::Full } else { Durability::Normal };
    match audit.finish(status, code, durability).await {
        Ok(()) => response,
        Err(e) => e.into_response(),
    }
}

/// A request body that notes when it has been read to its end.
struct ReadToEnd {
    inner: Body,
    ended: Arc<AtomicBool>,
}

impl HttpBody for ReadToEnd {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.ended.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether an HTTP/1 request has a body on the wire after its head.
fn carries_body(headers: &HeaderMap) -> bool {
    use axum::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    headers.contains_key(TRANSFER_ENCODING) || headers.get(CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0")
}

/// The caller's `X-Request-Id` if it is 1-64 characters of `[A-Za-z0-9._:-]`
/// (so it is safe in logs and records), else a fresh random one.
fn request_id(headers: &HeaderMap) -> String {
    let given = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=64).contains(&v.len()) && v.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c)));
    match given {
        Some(id) => id.to_owned(),
        None => {
            let mut raw = [0u8; 12];
            rand::thread_rng().fill_bytes(&mut raw);
            let mut id = *b"req_000000000000000000000000";
            hex::encode_to_slice(raw, &mut id[4..]).expect("24 hex digits for 12 bytes");
            String::from_utf8_lossy(&id).into_owned()
        }
    }
}

/// `ip:port`, as `SocketAddr`'s `Display` writes it; an IPv4 address
/// without the formatting machinery, which padding support makes slow for
/// something done on every request.
fn client_address(addr: SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else {
        return addr.to_string();
    };
    let mut out = String::with_capacity(21);
    let mut digits = itoa::Buffer::new();
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(digits.format(octet));
    }
    out.push(':');
    out.push_str(digits.format(v4.port()));
    out
}

/// Handlers take the request's audit record as an argument.
impl<S: Send + Sync> FromRequestParts<S> for RequestAudit {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self> {
        parts
            .extensions
            .get::<RequestAudit>()
            .cloned()
            .ok_or_else(|| Error::internal("this route is not audited, so it cannot change anything"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_request_ids_are_kept_others_replaced() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123.x:y_z"));
        assert_eq!(request_id(&h), "abc-123.x:y_z");
        for bad in ["has space", "new\u{7f}line", ""] {
            if let Ok(v) = HeaderValue::from_str(bad) {
                h.insert(REQUEST_ID, v);
                assert!(request_id(&h).starts_with("req_"), "{bad:?}");
            }
        }
        h.insert(REQUEST_ID, HeaderValue::from_str(&"a".repeat(65)).unwrap());
        assert!(request_id(&h).starts_with("req_"));
        assert!(request_id(&HeaderMap::new()).starts_with("req_"));
        let made = request_id(&HeaderMap::new());
        assert_eq!(made.len(), 28);
        assert!(made[4..].chars().all(|c| c.is_ascii_hexdigit()), "{made}");
    }

    #[test]
    fn a_requests_method_and_route_are_added_to_its_span_once() {
        #[derive(Clone, Default)]
        struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(Level::DEBUG)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                request_id = %"req_1",
                method = tracing::field::Empty,
                route = tracing::field::Empty,
                status = tracing::field::Empty,
                latency_ms = tracing::field::Empty,
            );
            let _entered = span.enter();
            let name = SpanName { method: &Method::POST, route: "/v1/tokens", added: AtomicBool::new(false) };
            name.add();
            tracing::warn!("first line");
            log_finished(&name, StatusCode::NOT_FOUND, Duration::from_millis(3));
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let last = text.lines().find(|l| l.contains("request finished")).unwrap_or_else(|| panic!("{text}"));
        assert!(last.contains("request_id=req_1 method=POST route=/v1/tokens status=404"), "{last}");
        assert_eq!(last.matches("method=").count(), 1, "{last}");
        assert_eq!(last.matches("route=").count(), 1, "{last}");
    }

    #[test]
    fn client_addresses_read_as_display_writes_them() {
        for addr in ["127.0.0.1:1", "10.200.0.255:65535", "0.0.0.0:0", "[::1]:8080", "[fe80::1]:443"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(client_address(addr), addr.to_string());
        }
    }
}
