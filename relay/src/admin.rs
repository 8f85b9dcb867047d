//! The admin HTTP API: users and groups, API keys, agents, policies and locks,
//! authorised by the same policies as sessions (`admin_*` actions).
//!
//! | method | path | action, resource |
//! |---|---|---|
//! | GET, POST | `/v1/admin/users` | `admin_users`, the relay |
//! | POST | `/v1/admin/users/{name}/groups`, `/attrs` | `admin_users`, the relay |
//! | GET, POST | `/v1/admin/keys`, `/v1/admin/keys/revoke` | `admin_keys`, the key's user |
//! | GET, POST | `/v1/admin/agents` | `admin_agents`, the relay |
//! | POST | `/v1/admin/agents/{name}/revoke` | `admin_agents`, the agent |
//! | GET | `/v1/admin/policies` | `admin_policies`, the relay |
//! | PUT, DELETE | `/v1/admin/policies/{file}` | `admin_policies`, the relay |
//! | POST | `/v1/admin/policies/reload` | `admin_policies`, the relay |
//! | GET, POST | `/v1/admin/locks` | `admin_locks`, the user or agent |
//! | DELETE | `/v1/admin/locks/{id or name}` | `admin_locks`, the user or agent |
//!
//! Revoking a key ends the sessions opened with it; locking a user or an agent ends
//! theirs; revoking an agent also disconnects it. Within a second: the sessions'
//! tasks are told at once (`live`).
//!
//! Every change is in the audit log before it is made (`admin.*`; a change whose
//! row cannot be written is not made), and then whether it was ([`RESULT`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::warn;

use crate::api::{authenticate, target, AgentInfo, ApiError, AppState};
use crate::audit::Event;
use crate::policy::{Action, Circumstances, Resource};
use crate::store::{unix_now, Caller, KeyRow, LockRow, LockTarget, UserRow};

type Answer = Result<Json<Value>, ApiError>;

/// The admin routes (merged into the API's router).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/users", get(users).post(add_user))
        .route("/v1/admin/users/{name}/groups", post(set_groups))
        .route("/v1/admin/users/{name}/attrs", post(set_attr))
        .route("/v1/admin/keys", get(keys).post(add_key))
        .route("/v1/admin/keys/revoke", post(revoke_key))
        .route("/v1/admin/agents", get(agents).post(add_agent))
        .route("/v1/admin/agents/{name}/revoke", post(revoke_agent))
        .route("/v1/admin/policies", get(policies))
        .route("/v1/admin/policies/reload", post(reload))
        .route("/v1/admin/policies/{file}", put(put_policy))
        .route("/v1/admin/policies/{file}", delete(delete_policy))
        .route("/v1/admin/locks", get(locks).post(add_lock))
        .route("/v1/admin/locks/{what}", delete(remove_lock))
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, m)
}

fn not_found(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, m)
}

pub(crate) fn body<T>(
    b: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    b.map(|Json(t)| t).map_err(|e| bad(e.body_text()))
}

/// The caller, allowed `action` on `resource`.
async fn allowed(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    action: Action,
    resource: &Resource<'_>,
) -> Result<Caller, ApiError> {
    let caller = authenticate(state, headers, peer).await?;
    state
        .require(
            &caller.user,
            action,
            resource,
            &Circumstances::new(peer.ip()),
        )
        .await?;
    Ok(caller)
}

/// The caller, allowed `action` on the relay itself.
async fn on_relay(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    action: Action,
) -> Result<Caller, ApiError> {
    allowed(state, headers, peer, action, &Resource::Relay).await
}

/// The audit event that follows each administrative change, saying how it went.
pub const RESULT: &str = "admin.result";

/// An administrative change's row: `caller` from `peer` asks for `event` on `target`.
fn intent(caller: &Caller, peer: SocketAddr, event: &str, target: &str, detail: Value) -> Event {
    Event::new(caller.user.name.clone(), event, target)
        .from(peer.ip())
        .detail(detail)
}

/// Make an administrative change: its `intent` in the audit log first (a change
/// whose row cannot be written is not made), then the change, then its outcome
/// ([`RESULT`] by the same actor on the same target, detail `{of: EVENT, ok,
/// error}`). The outcome is best effort: a change made stays made when its outcome
/// cannot be written (that is logged).
async fn change<T>(
    state: &AppState,
    intent: Event,
    work: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let (of, target) = (intent.event.clone(), intent.target.clone());
    let mut outcome = intent.clone();
    state.record(intent).await?;
    let done = match work.await {
        Ok(t) => Ok(t),
        Err(e) => Err(message(e).await),
    };
    outcome.event = RESULT.into();
    outcome.detail = match &done {
        Ok(_) => json!({ "of": of, "ok": true }),
        Err((_, m)) => json!({ "of": of, "ok": false, "error": m }),
    };
    if let Err(e) = state.audit.record(outcome).await {
        warn!("the outcome of {of} on '{target}' is not in the audit log: {e}");
    }
    done.map_err(|(e, _)| e)
}

/// The error line `e` gives its caller, and `e` as it was. (`ApiError` keeps its
/// message to itself: it is read back from the answer it makes.)
async fn message(e: ApiError) -> (ApiError, String) {
    let answer = e.into_response();
    let status = answer.status();
    let body = axum::body::to_bytes(answer.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let m = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(String::from))
        .unwrap_or_else(|| status.to_string());
    (ApiError::new(status, m.clone()), m)
}

async fn user_named(state: &AppState, name: &str) -> Result<UserRow, ApiError> {
    state
        .store
        .user(name)
        .await?
        .ok_or_else(|| not_found(format!("unknown user '{name}'")))
}

fn user_json(u: &UserRow) -> Value {
    json!({
        "id": u.id,
        "name": u.name,
        "groups": u.groups,
        "attrs": u.attrs,
        "created_at": u.created_at,
    })
}

async fn users(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Answer {
    on_relay(&state, &headers, peer, Action::AdminUsers).await?;
    let users = state.store.users().await?;
    Ok(Json(Value::Array(users.iter().map(user_json).collect())))
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
    #[serde(default)]
    groups: Vec<String>,
}

async fn add_user(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    b: Result<Json<NewUser>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    let caller = on_relay(&state, &headers, peer, Action::AdminUsers).await?;
    let req = body(b)?;
    may_change_groups(&state, &caller, peer, &req.groups).await?;
    let detail = json!({ "groups": req.groups });
    let add = async {
        state
            .store
            .add_user(&req.name, &req.groups)
            .await
            .map_err(invalid)
    };
    let asked = intent(&caller, peer, "admin.user.add", &req.name, detail);
    let (user, secret) = change(&state, asked, add).await?;
    let key = state.store.keys(Some(&user)).await?;
    Ok(Json(json!({
        "user": user_json(&user),
        "key_id": key.first().map(|k| k.id.clone()),
        "secret": secret.expose(),
    })))
}

/// Putting users into `groups` or taking them out is decided on each group
/// (`admin_users` on `Group::"g"`), so that managing users does not by itself
/// allow making admins.
async fn may_change_groups(
    state: &AppState,
    caller: &Caller,
    peer: SocketAddr,
    groups: &[String],
) -> Result<(), ApiError> {
    let c = Circumstances::new(peer.ip());
    for g in groups {
        state
            .require(&caller.user, Action::AdminUsers, &Resource::Group(g), &c)
            .await?;
    }
    Ok(())
}

/// A store error that is the caller's fault (a bad name, a duplicate) is a 400.
fn invalid(e: crate::Error) -> ApiError {
    match e {
        crate::Error::Invalid(m) => bad(m),
        e => e.into(),
    }
}

#[derive(Deserialize)]
struct Groups {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

async fn set_groups(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    b: Result<Json<Groups>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    let caller = authenticate(&state, &headers, peer).await?;
    let req = body(b)?;
    let changed: Vec<String> = req.add.iter().chain(&req.remove).cloned().collect();
    may_change_groups(&state, &caller, peer, &changed).await?;
    let user = user_named(&state, &name).await?;
    let detail = json!({ "add": req.add, "remove": req.remove });
    let set = async {
        let set = state.store.set_groups(&user, &req.add, &req.remove).await;
        set.map_err(invalid)
    };
    let asked = intent(&caller, peer, "admin.user.groups", &name, detail);
    change(&state, asked, set).await?;
    Ok(Json(user_json(&user_named(&state, &name).await?)))
}

#[derive(Deserialize)]
struct Attr {
    key: String,
    value: Option<String>,
}

async fn set_attr(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    b: Result<Json<Attr>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    let caller = on_relay(&state, &headers, peer, Action::AdminUsers).await?;
    let req = body(b)?;
    let user = user_named(&state, &name).await?;
    let detail = json!({ "key": req.key, "value": req.value });
    let set = async {
        let set = state
            .store
            .set_attr(&user, &req.key, req.value.as_deref())
            .await;
        set.map_err(invalid)
    };
    let asked = intent(&caller, peer, "admin.user.attr", &name, detail);
    change(&state, asked, set).await?;
    Ok(Json(user_json(&user_named(&state, &name).await?)))
}

/// The user a key request is about (the caller's own when not named), with
/// `admin_keys` on them checked.
async fn key_owner(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    user: Option<&str>,
) -> Result<(Caller, UserRow), ApiError> {
    let caller = authenticate(state, headers, peer).await?;
    let owner = match user {
        Some(name) if name != caller.user.name => user_named(state, name).await?,
        _ => caller.user.clone(),
    };
    let p = owner.principal();
    state
        .require(
            &caller.user,
            Action::AdminKeys,
            &Resource::User(&p),
            &Circumstances::new(peer.ip()),
        )
        .await?;
    Ok((caller, owner))
}

#[derive(Deserialize)]
struct KeysQuery {
    user: Option<String>,
}

async fn keys(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<KeysQuery>,
    headers: HeaderMap,
) -> Result<Json<Vec<KeyRow>>, ApiError> {
    let (_, owner) = key_owner(&state, &headers, peer, q.user.as_deref()).await?;
    Ok(Json(state.store.keys(Some(&owner)).await?))
}

#[derive(Deserialize)]
struct NewKey {
    user: Option<String>,
    name: String,
    expires_in: Option<String>,
}

async fn add_key(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    b: Result<Json<NewKey>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    let req = body(b)?;
    let (caller, owner) = key_owner(&state, &headers, peer, req.user.as_deref()).await?;
    let detail = json!({ "name": req.name, "expires_in": req.expires_in });
    let add = async {
        let expires_at = match &req.expires_in {
            Some(d) => crate::config::parse_duration(d)
                .map_err(bad)?
                .map(|d| unix_now() + d.as_secs() as i64),
            None => None,
        };
        let added = state.store.add_key(&owner, &req.name, expires_at).await;
        added.map_err(invalid)
    };
    let asked = intent(&caller, peer, "admin.key.add", &owner.name, detail);
    let (key, secret) = change(&state, asked, add).await?;
    Ok(Json(json!({ "key": key, "secret": secret.expose() })))
}

#[derive(Deserialize)]
struct RevokeKey {
    user: Option<String>,
    key: String,
}

async fn revoke_key(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    b: Result<Json<RevokeKey>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    let req = body(b)?;
    let (caller, owner) = key_owner(&state, &headers, peer, req.user.as_deref()).await?;
    let detail = json!({ "key": req.key });
    let revoke = async {
        let key = state
            .store
            .revoke_key(&owner, &req.key)
            .await
            .map_err(invalid)?;
        let why = format!("API key '{}' of {} was revoked", key.name, owner.name);
        let ended = state
            .live
            .end_where(|o| o.key_id.as_deref() == Some(key.id.as_str()), &why);
        Ok(Json(json!({ "key": key, "ended_sessions": ended })))
    };
    let asked = intent(&caller, peer, "admin.key.revoke", &owner.name, detail);
    change(&state, asked, revoke).await
}

async fn agents(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Answer {
    on_relay(&state, &headers, peer, Action::AdminAgents).await?;
    let mut out = Vec::new();
    for a in state.store.agents().await? {
        let revoked_at = state.store.agent_revoked(&a.id).await?;
        let live = state.hub.get(&a.id);
        let info = AgentInfo {
            online: live.is_some(),
            sessions: live.map_or(0, |h| h.session_count()),
            id: a.id,
            name: a.name,
            tags: a.tags,
            last_seen: a.last_seen,
        };
        let mut v = serde_json::to_value(info).unwrap_or_default();
        v["revoked_at"] = json!(revoked_at);
        out.push(v);
    }
    Ok(Json(Value::Array(out)))
}

#[derive(Deserialize)]
struct NewAgent {
    name: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

async fn add_agent(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    b: Result<Json<NewAgent>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    let caller = on_relay(&state, &headers, peer, Action::AdminAgents).await?;
    let req = body(b)?;
    let detail = json!({ "tags": req.tags });
    let add = async {
        state
            .store
            .add_agent(&req.name, &req.tags)
            .await
            .map_err(invalid)
    };
    let asked = intent(&caller, peer, "admin.agent.add", &req.name, detail);
    let (id, code) = change(&state, asked, add).await?;
    Ok(Json(json!({ "id": id, "activation_code": code.expose() })))
}

async fn revoke_agent(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let caller = authenticate(&state, &headers, peer).await?;
    let agent = state
        .store
        .agent(&name)
        .await?
        .ok_or_else(|| not_found(format!("unknown target '{name}'")))?;
    let t = target(&agent);
    let c = Circumstances::new(peer.ip());
    state
        .require(&caller.user, Action::AdminAgents, &Resource::Agent(&t), &c)
        .await?;
    let revoke = async {
        state.store.revoke_agent(&agent.id).await?;
        let why = format!("agent {} was revoked by {}", agent.name, caller.user.name);
        let ended = state.live.end_where(|o| o.agent_id == agent.id, &why);
        let disconnected = match state.hub.get(&agent.id) {
            Some(h) => {
                h.kick.send_replace(Some(why));
                true
            }
            None => false,
        };
        Ok(Json(
            json!({ "ended_sessions": ended, "disconnected": disconnected }),
        ))
    };
    let asked = intent(&caller, peer, "admin.agent.revoke", &agent.name, json!({}));
    change(&state, asked, revoke).await
}

fn policy_json(state: &AppState) -> Value {
    let p = state.policies.current();
    json!({
        "version": p.version,
        "hash": p.hash,
        "loaded_at": p.loaded_at,
        "dir": state.policies.dir().display().to_string(),
        "ids": p.ids,
        "files": p.files,
    })
}

async fn policies(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Answer {
    on_relay(&state, &headers, peer, Action::AdminPolicies).await?;
    Ok(Json(policy_json(&state)))
}

async fn reload_as(state: &AppState, by: &str) -> Answer {
    crate::server::reload_policies(state, by)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let p = state.policies.current();
    Ok(Json(json!({ "version": p.version, "hash": p.hash })))
}

async fn reload(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Answer {
    let caller = on_relay(&state, &headers, peer, Action::AdminPolicies).await?;
    let reload = reload_as(&state, &caller.user.name);
    let asked = intent(&caller, peer, "admin.policy.reload", "policies", json!({}));
    change(&state, asked, reload).await
}

/// A policy file name: `NAME.cedar`, NAME of letters, digits, `-_.`.
fn policy_file(name: &str) -> Result<&str, ApiError> {
    let stem = name.strip_suffix(".cedar").unwrap_or("");
    let ok = !stem.is_empty()
        && !stem.starts_with('.')
        && stem.len() <= 64
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(name)
    } else {
        Err(bad(format!(
            "invalid policy file name '{name}': use NAME.cedar (letters, digits, '-', '_', '.')"
        )))
    }
}

/// Change one file: the whole prospective set (the directory as it is now, with
/// this change) is validated first, so a refused change touches nothing; then the
/// file is written (atomically) and the directory reloaded. Changes are made one
/// at a time; should the reload still refuse (the directory changed meanwhile by
/// hand), the file is put back as it was, so that a restart finds what ran.
async fn change_file(state: &AppState, by: &str, file: &str, text: Option<String>) -> Answer {
    static EDITING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = EDITING.lock().await;
    let policies = state.policies.clone();
    let mut files = tokio::task::spawn_blocking(move || policies.on_disk())
        .await
        .map_err(|e| bad(format!("reading the policies failed: {e}")))?
        .map_err(|e| bad(e.to_string()))?;
    let before = files.get(file).cloned();
    match &text {
        Some(t) => {
            files.insert(file.to_string(), t.clone());
        }
        None => {
            if files.remove(file).is_none() {
                return Err(not_found(format!("no policy file '{file}'")));
            }
        }
    }
    let policies = state.policies.clone();
    tokio::task::spawn_blocking(move || policies.check(files))
        .await
        .map_err(|e| bad(format!("check failed: {e}")))?
        .map_err(|e| bad(e.to_string()))?;
    let dir = state.policies.dir().to_path_buf();
    write_or_remove(&dir, file, text.as_deref())?;
    match reload_as(state, by).await {
        Ok(answer) => Ok(answer),
        Err(refused) => {
            write_or_remove(&dir, file, before.as_deref())?;
            Err(refused)
        }
    }
}

/// Write `dir/file` atomically (`Some`) or remove it (`None`).
fn write_or_remove(dir: &std::path::Path, file: &str, text: Option<&str>) -> Result<(), ApiError> {
    let path = dir.join(file);
    match text {
        Some(t) => {
            std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
            let tmp = dir.join(format!(".{file}.tmp"));
            std::fs::write(&tmp, t).map_err(|e| crate::Error::io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| crate::Error::io(&path, e))?;
        }
        None => match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(crate::Error::io(&path, e).into()),
        },
    }
    Ok(())
}

async fn put_policy(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(file): Path<String>,
    headers: HeaderMap,
    text: String,
) -> Answer {
    let caller = on_relay(&state, &headers, peer, Action::AdminPolicies).await?;
    let file = policy_file(&file)?;
    let sha256 = crate::secret::hash_hex(text.as_bytes());
    let detail = json!({ "bytes": text.len(), "sha256": sha256 });
    let put = change_file(&state, &caller.user.name, file, Some(text));
    let asked = intent(&caller, peer, "admin.policy.put", file, detail);
    change(&state, asked, put).await
}

async fn delete_policy(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let caller = on_relay(&state, &headers, peer, Action::AdminPolicies).await?;
    let file = policy_file(&file)?;
    let remove = change_file(&state, &caller.user.name, file, None);
    let asked = intent(&caller, peer, "admin.policy.remove", file, json!({}));
    change(&state, asked, remove).await
}

/// `admin_locks` on the user or agent a lock is about.
async fn lock_allowed(
    state: &AppState,
    caller: &Caller,
    peer: SocketAddr,
    kind: LockTarget,
    name: &str,
) -> Result<String, ApiError> {
    let c = Circumstances::new(peer.ip());
    match kind {
        LockTarget::User => {
            let u = user_named(state, name).await?;
            let p = u.principal();
            state
                .require(&caller.user, Action::AdminLocks, &Resource::User(&p), &c)
                .await?;
            Ok(u.id)
        }
        LockTarget::Agent => {
            let a = state
                .store
                .agent(name)
                .await?
                .ok_or_else(|| not_found(format!("unknown target '{name}'")))?;
            let t = target(&a);
            state
                .require(&caller.user, Action::AdminLocks, &Resource::Agent(&t), &c)
                .await?;
            Ok(a.id)
        }
    }
}

async fn locks(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<Vec<LockRow>>, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    let mut out = Vec::new();
    for l in state.store.locks().await? {
        if lock_allowed(&state, &caller, peer, l.target, &l.name)
            .await
            .is_ok()
        {
            out.push(l);
        }
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
struct NewLock {
    user: Option<String>,
    agent: Option<String>,
    reason: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    until: Option<i64>,
}

#[derive(Serialize)]
struct LockAdded {
    lock: LockRow,
    ended_sessions: usize,
}

async fn add_lock(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    b: Result<Json<NewLock>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<LockAdded>, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    let req = body(b)?;
    let (kind, name) = match (&req.user, &req.agent) {
        (Some(u), None) => (LockTarget::User, u.as_str()),
        (None, Some(a)) => (LockTarget::Agent, a.as_str()),
        _ => return Err(bad("lock either a user or an agent")),
    };
    if req.reason.trim().is_empty() {
        return Err(bad(
            "a lock needs a reason (it is shown to whoever it stops)",
        ));
    }
    let expires_at = match (&req.for_, req.until) {
        (Some(d), None) => crate::config::parse_duration(d)
            .map_err(bad)?
            .map(|d| unix_now() + d.as_secs() as i64),
        (None, Some(t)) if t > unix_now() => Some(t),
        (None, Some(_)) => return Err(bad("the lock's end is in the past")),
        (None, None) => None,
        _ => return Err(bad("give either 'for' or 'until'")),
    };
    let id = lock_allowed(&state, &caller, peer, kind, name).await?;
    let detail = json!({ "kind": kind, "reason": req.reason, "expires_at": expires_at });
    let add = async {
        let lock = state
            .store
            .add_lock(
                kind,
                &id,
                name,
                req.reason.trim(),
                &caller.user.name,
                expires_at,
            )
            .await?;
        let why = lock.describe();
        let ended = match kind {
            LockTarget::User => state.live.end_where(|o| o.user_id == id, &why),
            LockTarget::Agent => state.live.end_where(|o| o.agent_id == id, &why),
        };
        Ok(Json(LockAdded {
            lock,
            ended_sessions: ended,
        }))
    };
    let asked = intent(&caller, peer, "admin.lock.add", name, detail);
    change(&state, asked, add).await
}

async fn remove_lock(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(what): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let caller = authenticate(&state, &headers, peer).await?;
    let matching: Vec<LockRow> = state
        .store
        .locks()
        .await?
        .into_iter()
        .filter(|l| l.id == what || l.name == what)
        .collect();
    if matching.is_empty() {
        return Err(not_found(format!("no lock '{what}' in force")));
    }
    for l in &matching {
        lock_allowed(&state, &caller, peer, l.target, &l.name).await?;
    }
    let remove = async { Ok(state.store.remove_locks(&what).await?) };
    let asked = intent(&caller, peer, "admin.lock.remove", &what, json!({}));
    let removed = change(&state, asked, remove).await?;
    Ok(Json(json!({ "removed": removed })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_error_is_read_back_as_its_caller_reads_it_and_given_back_as_it_was() {
        let (e, m) = message(ApiError::new(StatusCode::CONFLICT, "no lock 'x' in force")).await;
        assert_eq!(m, "no lock 'x' in force");
        let (e, again) = message(e).await;
        assert_eq!(again, m);
        assert_eq!(e.into_response().status(), StatusCode::CONFLICT);
    }
}
