//! The HTTP JSON API and the WebSocket endpoints.
//!
//! | method | path | auth | what |
//! |---|---|---|---|
//! | GET | `/v1/agents` | bearer API key | targets with online state |
//! | POST | `/v1/sessions` | bearer API key | `{target, kind}` -> `{session_id, stream_url, token, expires_at}` |
//! | GET | `/v1/stream/{id}?token=` | one-use token | WebSocket: the session's frames |
//! | GET | `/v1/agent` | Ed25519 in-band | WebSocket: an agent's connection |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::hub::Hub;
use crate::secret::Secret;
use crate::store::{unix_now, Store, TokenError, UserRow};

/// Largest WebSocket message accepted, a little above the largest frame.
pub const MAX_MESSAGE: usize = agent_core::wire::DEFAULT_MAX_FRAME as usize + 1024;
/// WebSocket read and write buffer sizes. tungstenite's defaults (128 KiB each) cost
/// a quarter of a megabyte per connection; a relay holds thousands.
pub const WS_BUFFER: usize = 16 * 1024;

/// Settings the API needs.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// How long a session token stays valid.
    pub token_ttl: Duration,
    /// Session limits (rates, counts, timeouts).
    pub limits: crate::config::Limits,
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// Online agents.
    pub hub: Arc<Hub>,
    /// Settings.
    pub config: Arc<ApiConfig>,
}

/// An error answered as `{"error": "..."}` with a status code.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        ApiError(status, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        warn!("internal error: {e}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the relay's log",
        )
    }
}

/// The router of all endpoints.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/agents", get(list_agents))
        .route("/v1/sessions", post(create_session))
        .route("/v1/stream/{id}", get(open_stream))
        .route("/v1/agent", get(agent_socket))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<UserRow, ApiError> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid API key (set SESAME_API_KEY or api_key in ~/.config/sesame/config.toml)",
        )
    };
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    let key = Secret::from_string(value.trim().to_string());
    state
        .store
        .user_by_key(&key)
        .await?
        .ok_or_else(unauthorized)
}

/// One target, as listed.
#[derive(Debug, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Agent id.
    pub id: String,
    /// Agent name.
    pub name: String,
    /// Tags.
    pub tags: std::collections::BTreeMap<String, String>,
    /// Connected now.
    pub online: bool,
    /// Last connect or disconnect, unix seconds.
    pub last_seen: Option<i64>,
    /// Sessions running now.
    pub sessions: usize,
}

async fn list_agents(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<AgentInfo>>, ApiError> {
    authenticate(&state, &headers).await?;
    let agents = state.store.agents().await?;
    Ok(Json(
        agents
            .into_iter()
            .map(|a| {
                let live = state.hub.get(&a.id);
                AgentInfo {
                    online: live.is_some(),
                    sessions: live.map_or(0, |h| h.session_count()),
                    id: a.id,
                    name: a.name,
                    tags: a.tags,
                    last_seen: a.last_seen,
                }
            })
            .collect(),
    ))
}

/// Body of `POST /v1/sessions`.
#[derive(Debug, Deserialize)]
pub struct CreateSession {
    /// Agent name or id.
    pub target: String,
    /// `shell`, `exec`, `forward` or `ssh-key`.
    pub kind: String,
}

/// Answer of `POST /v1/sessions`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionCreated {
    /// Session id.
    pub session_id: String,
    /// WebSocket URL to open with the token.
    pub stream_url: String,
    /// One-use token.
    pub token: String,
    /// Token expiry, unix seconds.
    pub expires_at: i64,
}

/// "3m ago" and friends.
pub fn ago(then: i64) -> String {
    let s = (unix_now() - then).max(0);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

async fn create_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<CreateSession>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<SessionCreated>, ApiError> {
    let user = authenticate(&state, &headers).await?;
    let Json(req) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let action = match req.kind.as_str() {
        "shell" => "session:shell",
        "exec" => "session:exec",
        "forward" => "session:forward",
        "ssh-key" => "ssh:push-key",
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown session kind '{other}' (use shell, exec, forward or ssh-key)"),
            ))
        }
    };
    let agent = state.store.agent(&req.target).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown target '{}'", req.target),
        )
    })?;
    if !user.admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "no policy allows user '{}' {action} on '{}'",
                user.name, agent.name
            ),
        ));
    }
    let Some(live) = state.hub.get(&agent.id) else {
        let when = agent.last_seen.map_or("never connected".to_string(), |t| {
            format!("last seen {}", ago(t))
        });
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("target '{}' is offline ({when})", agent.name),
        ));
    };
    // Refuse before anything is spawned (the stream checks again, atomically).
    if let Err(limit) = live.check_capacity(state.config.limits.max_sessions) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            limit.to_string(),
        ));
    }
    let rate = state.config.limits.rate_for(&agent.name, &user.name);
    let (session_id, token, expires_at) = state
        .store
        .create_session(&agent.id, &user.id, &req.kind, rate, state.config.token_ttl)
        .await?;
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    Ok(Json(SessionCreated {
        stream_url: format!("wss://{host}/v1/stream/{session_id}"),
        session_id,
        token: token.expose().to_string(),
        expires_at,
    }))
}

/// Query of the stream endpoint.
#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    token: Option<String>,
}

async fn open_stream(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let token = q
        .token
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "missing session token"))?;
    // Check the upgrade before spending the one-use token on a request that is not one.
    let ws = ws.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let session = match state
        .store
        .redeem_token(&id, &Secret::from_string(token))
        .await?
    {
        Ok(s) => s,
        Err(e) => {
            let status = match e {
                TokenError::Invalid => StatusCode::UNAUTHORIZED,
                TokenError::Used | TokenError::Expired => StatusCode::GONE,
            };
            return Err(ApiError::new(status, e.to_string()));
        }
    };
    let Some(agent) = state.hub.get(&session.agent_id) else {
        let _ = state.store.end_session(&session.id, "agent offline").await;
        return Err(ApiError::new(StatusCode::CONFLICT, "target went offline"));
    };
    Ok(ws
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(WS_BUFFER)
        .on_upgrade(move |socket| crate::stream::serve(socket, state, session, agent)))
}

async fn agent_socket(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    admitted: Option<axum::Extension<crate::server::Admitted>>,
    ws: WebSocketUpgrade,
) -> Response {
    let admitted = admitted.map(|axum::Extension(a)| a);
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(WS_BUFFER)
        .on_upgrade(move |socket| {
            crate::agent_link::serve(socket, state, peer.to_string(), admitted)
        })
}
