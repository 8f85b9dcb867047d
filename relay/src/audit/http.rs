//! The audit log over HTTP: `GET /v1/audit` (rows after a given one, since a
//! time, or the newest few) and `POST /v1/audit/checkpoint` (sign one now), both needing the
//! action `audit` on the relay.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::{checkpoint, Checkpoint, Row};
use crate::api::{authenticate, ApiError, AppState};
use crate::policy::{Action, Circumstances, Resource};

/// The routes (merged into the API's router).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/audit", get(rows))
        .route("/v1/audit/checkpoint", post(sign))
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize)]
pub struct Since {
    /// Rows after this one.
    after: Option<i64>,
    /// Rows at or after this time (unix milliseconds).
    since: Option<i64>,
    /// The newest this many rows.
    last: Option<i64>,
    /// At most this many (default 1000, at most 10000).
    limit: Option<i64>,
}

/// The caller may read the log (or sign a checkpoint). `note` says whether the
/// read is recorded: the first page of a tail or an export is, the follow-up pages
/// (`after=`) are not, or following the log would fill it with its own reads. A
/// refusal is always recorded.
async fn allowed(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    note: bool,
) -> Result<(), ApiError> {
    let caller = authenticate(state, headers, peer).await?;
    let c = Circumstances::new(peer.ip());
    if note {
        state
            .require(&caller.user, Action::Audit, &Resource::Relay, &c)
            .await?;
        return Ok(());
    }
    if state
        .decide(&caller.user, Action::Audit, &Resource::Relay, &c)
        .allow
    {
        return Ok(());
    }
    state
        .require(&caller.user, Action::Audit, &Resource::Relay, &c)
        .await
        .map(|_| ())
}

async fn rows(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<Since>,
    headers: HeaderMap,
) -> Result<Json<Vec<Row>>, ApiError> {
    allowed(&state, &headers, peer, q.after.is_none()).await?;
    let after = match (q.after, q.since, q.last) {
        (Some(a), _, _) => a,
        (None, Some(t), _) => match state.store.audit_seq_at(t).await? {
            Some(seq) => seq - 1,
            None => return Ok(Json(Vec::new())),
        },
        (None, None, Some(n)) => (state.store.audit_head().await?.0 - n.max(0)).max(0),
        (None, None, None) => 0,
    };
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    Ok(Json(state.store.audit_rows(after, limit).await?))
}

async fn sign(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<Checkpoint>, ApiError> {
    allowed(&state, &headers, peer, true).await?;
    checkpoint(&state.store, &state.audit_key)
        .await
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
