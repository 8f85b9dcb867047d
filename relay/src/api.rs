//! The HTTP JSON API and the WebSocket endpoints.
//!
//! | method | path | auth | what |
//! |---|---|---|---|
//! | GET | `/v1/agents` | bearer API key | targets with online state |
//! | POST | `/v1/sessions` | bearer API key | `{target, kind}` -> `{session_id, stream_url, token, expires_at}` |
//! | GET | `/v1/stream/{id}?token=` | one-use token | WebSocket: the session's frames |
//! | GET | `/v1/agent` | Ed25519 in-band | WebSocket: an agent's connection |
//! | GET | `/v1/sessions/{id}/join` | bearer API key | WebSocket: watch a live shell, read-only (`record/join.rs`) |
//!
//! Sessions, recordings, the audit log, policies and administration have their own
//! routers (`sessions.rs`, `record/http.rs`, `audit/http.rs`, `admin.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agent_core::wire::features as wire_features;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::audit::Event;
use crate::hub::{AgentHandle, Hub};
use crate::live::Live;
use crate::policy::{self, Action, Circumstances, Decision, Policies, Resource, Target};
use crate::secret::Secret;
use crate::store::{
    unix_now, AgentRow, Caller, LockTarget, NewSession, SessionSpec, Store, TokenError, UserRow,
};

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
    /// The policies in force.
    pub policies: Arc<Policies>,
    /// The sessions being served.
    pub live: Arc<Live>,
    /// The audit log's writer.
    pub audit: crate::audit::Audit,
    /// The key that signs audit checkpoints.
    pub audit_key: Arc<ring::signature::Ed25519KeyPair>,
    /// Session recordings: where, and how.
    pub recordings: Arc<crate::record::Recordings>,
}

impl AppState {
    /// Append an event to the audit log; an action whose event cannot be written
    /// is refused (503), never done unrecorded.
    pub async fn record(&self, event: crate::audit::Event) -> Result<i64, ApiError> {
        self.audit.record(event).await.map_err(|e| {
            warn!("{e}");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        })
    }

    /// Decide a request, and log the decision with the policies that made it.
    pub fn decide(
        &self,
        user: &UserRow,
        action: Action,
        resource: &Resource,
        c: &Circumstances,
    ) -> Decision {
        let d = self
            .policies
            .authorize(&user.principal(), action, resource, c);
        for e in &d.errors {
            warn!(user = %user.name, %action, "policy error (the policy was skipped): {e}");
        }
        if action != Action::List {
            info!(
                user = %user.name,
                %action,
                source_ip = %c.source_ip,
                run_as = %c.run_as,
                allow = d.allow,
                policies = ?d.policies,
                version = d.version,
                "decision"
            );
        }
        d
    }

    /// Decide, and turn a denial into the user's refusal line (403).
    pub async fn require(
        &self,
        user: &UserRow,
        action: Action,
        resource: &Resource<'_>,
        c: &Circumstances,
    ) -> Result<Decision, ApiError> {
        let d = self.decide(user, action, resource, c);
        // Every such decision is in the audit log, with the policies that made it.
        let event = Event::new(user.name.clone(), "authz.decision", resource.name())
            .from(c.source_ip)
            .detail(serde_json::json!({
                "action": action.name(),
                "allow": d.allow,
                "policies": d.policies,
                "policy_version": d.version,
            }));
        self.record(event).await?;
        if d.allow {
            Ok(d)
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                policy::refusal(&user.name, action, resource, c, &d),
            ))
        }
    }

    /// The refusal of a locked user, or a locked or revoked agent, if one is.
    pub async fn locked(
        &self,
        user_id: &str,
        agent_id: Option<&str>,
    ) -> Result<Option<String>, ApiError> {
        if let Some(l) = self.store.lock_on(LockTarget::User, user_id).await? {
            return Ok(Some(l.describe()));
        }
        if let Some(agent) = agent_id {
            if let Some(l) = self.store.lock_on(LockTarget::Agent, agent).await? {
                return Ok(Some(l.describe()));
            }
            if self.store.agent_revoked(agent).await?.is_some() {
                return Ok(Some("the target was revoked".into()));
            }
        }
        Ok(None)
    }
}

/// An agent as policies see it.
pub fn target(a: &AgentRow) -> Target {
    Target {
        name: a.name.clone(),
        id: a.id.clone(),
        tags: a.tags.clone(),
    }
}

/// An error answered as `{"error": "..."}` with a status code.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    /// An error with its status.
    pub fn new(status: StatusCode, msg: impl Into<String>) -> Self {
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
        .route("/v1/policy/check", post(check_policy))
        .merge(crate::admin::router())
        .merge(crate::sessions::router())
        .merge(crate::audit::http::router())
        .merge(crate::record::http::router())
        .merge(crate::web::router())
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::from_fn(crate::web::guard))
        .with_state(state)
}

/// The API key a request carries (`Authorization: Bearer KEY`), if it does: such a
/// request is not authenticated by a browser session's cookie.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// The caller of a request: the user and key of its bearer API key. A refused key
/// is recorded in the audit log with the address it came from, and so is a key's
/// use, once a minute per key (every request would bury the log, and the key's
/// `last_used` moves at that pace too).
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Caller, ApiError> {
    let outcome = match (bearer(headers), crate::web::cookie(headers)) {
        (Some(v), _) => {
            let key = Secret::from_string(v.trim().to_string());
            state.store.authenticate(&key).await?
        }
        // A browser session acts with the key it was opened with.
        (None, Some(secret)) => match state.store.web_session(&secret).await? {
            Some(s) => state
                .store
                .authenticate_id(&s.key_id)
                .await?
                .map(|c| Caller { web: Some(s), ..c }),
            None => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "this browser session has ended or expired: log in again",
                ))
            }
        },
        (None, None) => Err(crate::store::KeyRefused::Unknown),
    };
    let caller = match outcome {
        Ok(c) => c,
        Err(refused) => {
            let why = refused.to_string();
            let now = crate::store::unix_now_ms();
            if let Some(unrecorded) = state.audit.refusals.take(peer.ip(), now) {
                let event = Event::new("-", "auth.api.refused", "-")
                    .from(peer.ip())
                    .detail(serde_json::json!({ "why": why, "more_unrecorded": unrecorded }));
                state.record(event).await?;
            }
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, why));
        }
    };
    if caller.noted {
        let event =
            Event::new(caller.user.name.clone(), "auth.api", caller.key_id.clone()).from(peer.ip());
        state.record(event).await?;
    }
    // A locked user can do nothing at all, administration included (or it could
    // remove its own lock).
    if let Some(lock) = state
        .store
        .lock_on(LockTarget::User, &caller.user.id)
        .await?
    {
        return Err(ApiError::new(StatusCode::FORBIDDEN, lock.describe()));
    }
    Ok(caller)
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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<Vec<AgentInfo>>, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    let agents = state.store.agents().await?;
    let c = Circumstances::new(peer.ip());
    // A decision per agent (~0.1 ms each with a hundred policies): off the
    // runtime's threads, so a large fleet's listing does not hold up sessions.
    let decider = state.clone();
    let visible = tokio::task::spawn_blocking(move || {
        agents
            .into_iter()
            .filter(|a| {
                let t = target(a);
                decider
                    .decide(&caller.user, Action::List, &Resource::Agent(&t), &c)
                    .allow
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| {
        warn!("listing failed: {e}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "listing failed")
    })?;
    Ok(Json(
        visible
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
    /// The account on the target; absent: the agent's default account.
    #[serde(default)]
    pub run_as: Option<String>,
    /// Exec: the argv (the stream's `Open` must carry the same).
    #[serde(default)]
    pub command: Vec<String>,
    /// SSH key push: the account the key is for (also the session's account).
    #[serde(default)]
    pub ssh_user: Option<String>,
    /// SSH key push: seconds the key stays valid.
    #[serde(default)]
    pub ttl: Option<u32>,
}

/// The default account of a Linux agent (it creates it on first use); what a
/// policy check about an offline target assumes. A connected agent names its own
/// default when it authenticates (`AgentHandle::default_account`).
pub const DEFAULT_ACCOUNT: &str = "sesame-user";
/// The one account of an agent without accounts (a device's console).
pub const CONSOLE: &str = "console";

/// The account a session on `live` runs as: the one asked for, else the agent's
/// default, as the agent announced it (its `--default-account`, or the agent's own
/// user when it does not run as root, or a device's `console`). An agent that does
/// not announce run-as has no other account.
pub(crate) fn account(
    asked: Option<&str>,
    live: Option<&AgentHandle>,
    agent: &str,
) -> Result<String, ApiError> {
    let accounts = live.is_none_or(|h| h.features & agent_core::wire::features::RUN_AS != 0);
    let default = match live {
        Some(h) => h.default_account.as_str(),
        None if accounts => DEFAULT_ACCOUNT,
        None => CONSOLE,
    };
    match asked {
        None => Ok(default.into()),
        Some(a) if !accounts && a != default => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{agent} has no accounts: its sessions run as '{default}', not '{a}'"),
        )),
        Some(a) if agent_core::wire::account_valid(a) => Ok(a.to_string()),
        Some(a) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid account name '{a}'"),
        )),
    }
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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<CreateSession>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<SessionCreated>, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    let user = &caller.user;
    let Json(req) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let Some(action) = Action::of_kind(&req.kind) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown session kind '{}' (use shell, exec, forward or ssh-key)",
                req.kind
            ),
        ));
    };
    let agent = state.store.agent(&req.target).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown target '{}'", req.target),
        )
    })?;
    let live = state.hub.get(&agent.id);
    let mut c = Circumstances::new(peer.ip());
    let mut spec = SessionSpec::default();
    match action {
        Action::Exec => {
            if req.command.is_empty() || req.command[0].is_empty() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "exec needs a command",
                ));
            }
            c.command = req.command.clone();
            spec.command = req.command.clone();
        }
        Action::SshKeyPush => {
            let (Some(ssh_user), Some(ttl)) = (&req.ssh_user, req.ttl) else {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "an ssh-key session needs ssh_user and ttl",
                ));
            };
            c.ttl = ttl;
            spec.ssh = Some((ssh_user.clone(), ttl));
        }
        _ => {}
    }
    let asked = match action {
        Action::SshKeyPush => req.ssh_user.as_deref(),
        _ => req.run_as.as_deref(),
    };
    if asked == Some("") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "an empty account name (leave it out for the target's default account)",
        ));
    }
    c.run_as = account(asked, live.as_deref(), &agent.name)?;
    let t = target(&agent);
    let r = Resource::Agent(&t);
    let decision = state.decide(user, action, &r, &c);
    state
        .record(
            Event::new(user.name.clone(), "authz.decision", agent.name.clone())
                .from(peer.ip())
                .detail(serde_json::json!({
                    "action": action.name(),
                    "allow": decision.allow,
                    "policies": decision.policies,
                    "policy_version": decision.version,
                    "run_as": c.run_as,
                    "command": c.command,
                    "ttl": (action == Action::SshKeyPush).then_some(c.ttl),
                })),
        )
        .await?;
    if !decision.allow {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            policy::refusal(&user.name, action, &r, &c, &decision),
        ));
    }
    if state.store.agent_revoked(&agent.id).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("target '{}' was revoked", agent.name),
        ));
    }
    if let Some(why) = state.locked(&user.id, Some(&agent.id)).await? {
        return Err(ApiError::new(StatusCode::FORBIDDEN, why));
    }
    let Some(live) = live else {
        let when = agent.last_seen.map_or("never connected".to_string(), |t| {
            format!("last seen {}", ago(t))
        });
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("target '{}' is offline ({when})", agent.name),
        ));
    };
    // A kind the agent did not announce in its `Hello` (a device without forwarding,
    // an agent that never pushes keys) is refused here, with a line of its own.
    let needed = match req.kind.as_str() {
        "shell" => wire_features::SHELL,
        "exec" => wire_features::EXEC,
        "forward" => wire_features::FORWARD,
        _ => wire_features::SSH_KEY,
    };
    if live.features & needed == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "target '{}' does not offer {} sessions",
                agent.name, req.kind
            ),
        ));
    }
    // Refuse before anything is spawned (the stream checks again, atomically).
    if let Err(limit) = live.check_capacity(state.config.limits.max_sessions) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            limit.to_string(),
        ));
    }
    let rate = state.config.limits.rate_for(&agent.name, &user.name);
    // A permit may ask for its sessions' resume window (`@resume_window`).
    spec.resume_secs = state
        .policies
        .current()
        .resume_window(&decision.policies)
        .map(|w| w.map_or(0, |d| d.as_secs().max(1)));
    let decided_by = format!("v{}: {}", decision.version, decision.policies.join(", "));
    let (session_id, token, expires_at) = state
        .store
        .create_session(&NewSession {
            agent_id: &agent.id,
            user_id: &user.id,
            key_id: &caller.key_id,
            web_session: caller.web.as_ref().map(|w| w.id.as_str()),
            kind: &req.kind,
            rate,
            ttl: state.config.token_ttl,
            run_as: &c.run_as,
            spec: &spec,
            source_ip: &peer.ip().to_string(),
            decided_by: &decided_by,
        })
        .await?;
    // Recorded before the token is handed out: a session the log does not know of
    // never starts.
    state
        .record(
            Event::new(user.name.clone(), "session.create", session_id.clone())
                .from(peer.ip())
                .detail(serde_json::json!({
                    "agent": agent.name,
                    "kind": req.kind,
                    "run_as": c.run_as,
                    "command": spec.command,
                    "ssh": spec.ssh,
                    "key": caller.key_id,
                    "policies": decision.policies,
                    "policy_version": decision.version,
                })),
        )
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

/// Body of `POST /v1/policy/check`: a request to decide, as if `user` made it.
#[derive(Debug, Deserialize)]
pub struct PolicyCheck {
    /// User name.
    pub user: String,
    /// Action name (`shell`, `exec`, `list`, ...).
    pub action: String,
    /// Agent name (agent actions, `admin_agents`, `admin_locks`), user name
    /// (`admin_keys`, `admin_locks --user`), session id (session actions), or
    /// nothing (the relay).
    #[serde(default)]
    pub target: Option<String>,
    /// The account; absent: the agent's default.
    #[serde(default)]
    pub run_as: Option<String>,
    /// The client's address [default: the caller's].
    #[serde(default)]
    pub source_ip: Option<String>,
    /// Exec: the argv.
    #[serde(default)]
    pub command: Vec<String>,
    /// Forward: the destination host and port.
    #[serde(default)]
    pub dest_host: Option<String>,
    /// Forward: the destination port.
    #[serde(default)]
    pub dest_port: Option<u16>,
    /// SSH key push: the key's lifetime.
    #[serde(default)]
    pub ttl: Option<u32>,
}

/// Answer of `POST /v1/policy/check`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyChecked {
    /// `allow` or `deny`.
    pub decision: String,
    /// The policies that decided it.
    pub policies: Vec<String>,
    /// Policies skipped because they failed to evaluate.
    pub errors: Vec<String>,
    /// The refusal line a user would see (deny only).
    pub refusal: Option<String>,
    /// Version of the policy set.
    pub version: u64,
}

/// Decide a hypothetical request. A user may check their own requests; checking
/// another user's needs `admin_policies`.
async fn check_policy(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<PolicyCheck>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<PolicyChecked>, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    let Json(req) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    if req.user != caller.user.name {
        let c = Circumstances::new(peer.ip());
        state
            .require(&caller.user, Action::AdminPolicies, &Resource::Relay, &c)
            .await?;
    }
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let not_found = |m: String| ApiError::new(StatusCode::NOT_FOUND, m);
    let action: Action = req.action.parse().map_err(bad)?;
    let user = state
        .store
        .user(&req.user)
        .await?
        .ok_or_else(|| not_found(format!("unknown user '{}'", req.user)))?;
    let source_ip = match &req.source_ip {
        Some(ip) => ip
            .parse()
            .map_err(|_| bad(format!("invalid source address '{ip}'")))?,
        None => peer.ip(),
    };
    let mut c = Circumstances::new(source_ip);
    c.command = req.command.clone();
    c.ttl = req.ttl.unwrap_or(60);
    // As a real forward channel is decided: for the canonical host.
    c.dest = match (req.dest_host.as_deref(), req.dest_port) {
        (Some(h), Some(p)) => Some((policy::canonical_host(h).map_err(bad)?, p)),
        (None, None) => None,
        _ => return Err(bad("give both --dest-host and --dest-port".into())),
    };
    let name = || {
        req.target
            .clone()
            .ok_or_else(|| bad(format!("action {action} needs --target")))
    };
    let store = &state.store;
    let agent = |n: String| async move {
        store
            .agent(&n)
            .await?
            .ok_or_else(|| not_found(format!("unknown target '{n}'")))
    };
    let decision = match action {
        Action::List
        | Action::Shell
        | Action::Exec
        | Action::Forward
        | Action::SshKeyPush
        | Action::AdminAgents
        | Action::AdminLocks
            if req.target.is_some() || !matches!(action, Action::AdminAgents) =>
        {
            // A lock on a user: the target names a user (users first).
            let n = name()?;
            if action == Action::AdminLocks {
                if let Some(u) = state.store.user(&n).await? {
                    let p = u.principal();
                    let r = Resource::User(&p);
                    return Ok(Json(judged(&state, &user, action, &r, &c)));
                }
            }
            let a = agent(n).await?;
            let live = state.hub.get(&a.id);
            c.run_as = account(req.run_as.as_deref(), live.as_deref(), &a.name)?;
            let t = target(&a);
            let r = Resource::Agent(&t);
            judged(&state, &user, action, &r, &c)
        }
        Action::AdminKeys => {
            let n = name()?;
            let u = state
                .store
                .user(&n)
                .await?
                .ok_or_else(|| not_found(format!("unknown user '{n}'")))?;
            let p = u.principal();
            let r = Resource::User(&p);
            judged(&state, &user, action, &r, &c)
        }
        Action::SessionsList
        | Action::Terminate
        | Action::Observe
        | Action::Replay
        | Action::RecordInput => {
            let id = name()?;
            let s = state
                .store
                .session_info(&id)
                .await?
                .ok_or_else(|| not_found(format!("unknown session '{id}'")))?;
            let owner = state
                .store
                .user(&s.user_id)
                .await?
                .map(|u| u.principal())
                .unwrap_or_default();
            if action == Action::RecordInput && owner.name != user.name {
                // Decided for the session's owner only (it is their input).
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "record_input is decided for the session's owner: ask as {}",
                        owner.name
                    ),
                ));
            }
            let a = agent(s.agent_id.clone()).await?;
            let t = target(&a);
            let r = Resource::Session {
                id: &s.id,
                owner: &owner,
                agent: &t,
                kind: &s.kind,
                run_as: &s.run_as,
            };
            judged(&state, &user, action, &r, &c)
        }
        _ => {
            let r = Resource::Relay;
            judged(&state, &user, action, &r, &c)
        }
    };
    Ok(Json(decision))
}

/// A decision with the refusal line a user would see.
fn judged(
    state: &AppState,
    user: &UserRow,
    action: Action,
    r: &Resource,
    c: &Circumstances,
) -> PolicyChecked {
    let d = state.decide(user, action, r, c);
    let refusal = (!d.allow).then(|| policy::refusal(&user.name, action, r, c, &d));
    PolicyChecked {
        decision: if d.allow { "allow" } else { "deny" }.into(),
        policies: d.policies,
        errors: d.errors,
        refusal,
        version: d.version,
    }
}

/// The `resume` a client that can resume its session asks for on its stream.
pub const RESUME_VERSION: &str = "2";

/// Query of the stream endpoint.
#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    token: Option<String>,
    /// The client knows `Notice` frames (someone joined or left its session).
    #[serde(default)]
    notices: bool,
    /// The client can resume its session (`docs/protocol.md`, section 8): `2`
    /// (a client of the draft said `true`, and gets no resumable session).
    resume: Option<String>,
    /// It comes back to a resumable session with its latest resume token.
    resume_token: Option<String>,
}

async fn open_stream(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if let Some(token) = q.resume_token {
        return resume_stream(state, peer, &id, Secret::from_string(token), ws).await;
    }
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
                TokenError::Used | TokenError::Expired | TokenError::Ended(_) => StatusCode::GONE,
            };
            return Err(ApiError::new(status, e.to_string()));
        }
    };
    // The key may have been revoked, or the user or agent locked, since the token
    // was issued.
    let key_refused = match &session.key_id {
        Some(k) => state.store.key_refusal(k).await?.map(|e| e.to_string()),
        None => None,
    };
    if let Some(why) = key_refused.or(state
        .locked(&session.user_id, Some(&session.agent_id))
        .await?)
    {
        let _ = state.store.end_session(&session.id, &why).await;
        return Err(ApiError::new(StatusCode::FORBIDDEN, why));
    }
    let Some(agent) = state.hub.get(&session.agent_id) else {
        let _ = state.store.end_session(&session.id, "agent offline").await;
        return Err(ApiError::new(StatusCode::CONFLICT, "target went offline"));
    };
    Ok(ws
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(WS_BUFFER)
        .on_upgrade(move |socket| {
            let resumable = q.resume.as_deref() == Some(RESUME_VERSION);
            let client = (peer.ip(), q.notices, resumable);
            crate::stream::serve(socket, state, session, agent, client)
        }))
}

/// A client comes back to a resumable session with its resume token: the new stream
/// goes to the session's task, which spends the token.
async fn resume_stream(
    state: AppState,
    peer: SocketAddr,
    id: &str,
    token: Secret,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let (owner, to) =
        match state.live.resume(id, &token) {
            Ok(found) => found,
            Err(crate::live::ResumeRefused::BadToken) => return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "not this session's resume token (it was used, or the session is not resumable)",
            )),
            Err(crate::live::ResumeRefused::NotLive) => {
                // How it ended is told to the holder of its latest token, or of
                // the one before while that is still good, only (a client that
                // was away when it ended).
                let why = match state.store.session_end_for_token(id, &token.hash()).await {
                    Ok(Some(exit)) => format!("the session ended: {exit}"),
                    _ => "the session is over".to_string(),
                };
                return Err(ApiError::new(StatusCode::GONE, why));
            }
        };
    // Locked or revoked meanwhile: the session ends with that reason anyway.
    let key_refused = match &owner.key_id {
        Some(k) => state.store.key_refusal(k).await?.map(|e| e.to_string()),
        None => None,
    };
    if let Some(why) = key_refused.or(state.locked(&owner.user_id, Some(&owner.agent_id)).await?) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, why));
    }
    let peer = peer.ip();
    Ok(ws
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(WS_BUFFER)
        .on_upgrade(move |socket| async move {
            let presented = token.hash();
            let _ = to.send(crate::live::Resumed {
                socket,
                peer,
                presented,
            });
        }))
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
        .on_upgrade(move |socket| crate::agent_link::serve(socket, state, peer, admitted))
}
