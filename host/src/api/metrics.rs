//! `GET /metrics`: Prometheus text. No token, as scrapers usually have none:
//! it holds counts and latencies by route template, never a secret name,
//! a value or a token. Keep the listener private if traffic volumes matter.

use crate::metrics::metrics;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain")))]
pub async fn serve() -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics().render())
}
