//! `GET /v1/audit`: the audit records in order, paged by seq; needs `admin`
//! on `sys/audit`.

use super::{AppState, Query};
use crate::audit::{RecordJson, RequestAudit, chain};
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::model::Capability;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

const RESOURCE: &str = "sys/audit";

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Records with a greater seq (default 0: from the start).
    #[serde(default)]
    after_seq: i64,
    /// Page size, 1-1000 (default 100).
    limit: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    records: Vec<RecordJson>,
    /// Pass as `after_seq` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after_seq: Option<i64>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "operations", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 403, body = crate::error::ErrorBody)))]
pub async fn list(
    State(st): State<AppState>,
    audit: RequestAudit,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<AuditPage>> {
    audit.target("audit.read", RESOURCE);
    caller.require(Capability::Admin, RESOURCE)?;
    let limit = match q.limit {
        None => 100,
        Some(n @ 1..=1000) => n,
        Some(n) => return Err(Error::invalid(format!("limit is {n}; choose 1 to 1000"))),
    };
    let after = q.after_seq.max(0);
    // Every request answered so far is in the table, this one's excepted.
    st.audit.flush().await?;
    // One more than asked tells whether another page follows.
    let mut records = st.store.read(move |conn, _| chain::list(conn, after, limit + 1)).await?;
    let more = records.len() > limit;
    records.truncate(limit);
    let next_after_seq = if more { records.last().map(|r| r.seq) } else { None };
    Ok(Json(AuditPage { records: records.iter().map(|r| r.to_json()).collect(), next_after_seq }))
}
