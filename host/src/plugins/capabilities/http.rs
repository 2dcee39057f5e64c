//! `http`: one request to a granted URL prefix. The URL is normalised
//! before the check, the name resolved once and the checked address used,
//! no redirect is followed, no proxy is consulted, and the body is capped.

use super::{HostPort, denied, host_error, resolve_checked, url_target};
use crate::plugins::bindings::tumbler::rotator::http::{Host, Request, Response};
use crate::plugins::bindings::tumbler::rotator::types::{ErrorKind, HostError};
use crate::plugins::runtime::PluginState;

/// Largest response body handed to a plugin.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

impl Host for PluginState {
    async fn send(&mut self, request: Request) -> wasmtime::Result<Result<Response, HostError>> {
        // The audit names scheme, host and path, never a query string (it may carry a key).
        let target = reqwest::Url::parse(&request.url)
            .map(|u| format!("{}://{}{}", u.scheme(), u.host_str().unwrap_or(""), u.path()))
            .unwrap_or_else(|_| "(invalid URL)".into());
        let result = self.http_send(request).await;
        Ok(self.audited("http", &target, result).await)
    }
}

impl PluginState {
    async fn http_send(&mut self, request: Request) -> Result<Response, HostError> {
        self.budget.take_http_request()?;
        let url = reqwest::Url::parse(&request.url)
            .map_err(|e| host_error(ErrorKind::Invalid, format!("{:?} is not a URL: {e}", request.url)))?;
        let (scheme, target) = url_target(&url).map_err(denied)?;
        let Some(grant) = self.call.grants.http.iter().find(|g| g.covers(&scheme, &target, url.path())) else {
            return Err(denied(format!(
                "{scheme}://{}:{}{} is not granted: it is under no prefix in grants.http",
                target.host,
                target.port,
                url.path()
            )));
        };
        for (name, _) in &request.headers {
            let lower = name.to_ascii_lowercase();
            if lower == "host" || lower.starts_with("proxy-") {
                return Err(denied(format!("the {name} header may not be set by a plugin")));
            }
        }
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| host_error(ErrorKind::Invalid, format!("{:?} is not an HTTP method", request.method)))?;
        let checked = HostPort { ip: grant.target.ip, ..target.clone() };
        let addr = resolve_checked(&checked).await?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .resolve(&target.host, addr)
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| host_error(ErrorKind::Host, format!("http client: {e}")))?;
        let mut builder = client.request(method, url);
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        let mut response = builder.send().await.map_err(|e| {
            host_error(ErrorKind::Unreachable, format!("request to {}:{} failed: {e}", target.host, target.port))
        })?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| host_error(ErrorKind::Unreachable, format!("reading the response failed: {e}")))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(host_error(
                    ErrorKind::Limit,
                    format!("the response body is over the {MAX_RESPONSE_BYTES}-byte cap"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response { status, headers, body })
    }
}
