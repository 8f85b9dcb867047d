//! The browser console: the page (built from `relay/web` and embedded, see
//! `build.rs`), its logins, and the rules every response and browser request
//! follows.
//!
//! | method | path | auth | what |
//! |---|---|---|---|
//! | GET | `/`, `/login`, `/sessions`, `/recordings`, `/t/{target}`, `/watch/{id}`, `/play/{id}` | none (the page asks) | the page |
//! | GET | `/assets/{file}` | none | its scripts, styles, the WebAssembly client |
//! | POST | `/v1/web/links` | bearer API key | `{code, expires_at}`: a one-time login link's secret (`sesame web`) |
//! | POST | `/v1/web/login` | `{link}` or `{key}` | a browser session: the cookie |
//! | GET | `/v1/web/me` | cookie or key | `{user, expires_at}` |
//! | GET | `/v1/agents/{target}/accounts` | cookie or key | `{default, accounts}`: the accounts this user may open a shell as there, of those known |
//! | POST | `/v1/web/logout` | cookie | ends the browser session |
//!
//! - A browser session is a cookie (`__Host-sesame`: `HttpOnly`, `Secure`,
//!   `SameSite=Strict`, expiring with the session) whose secret is stored hashed;
//!   it acts with the API key it was opened with, under the same policies, so
//!   revoking the key or locking the user ends it (`store::web`).
//! - Every request that carries an `Origin` must come from this relay's own origin;
//!   a request authenticated by the cookie that changes anything, or upgrades to a
//!   WebSocket, must carry one ([`guard`]).
//! - Every response has a strict `Content-Security-Policy` (scripts and styles from
//!   the relay only, no `eval`; WebAssembly compiled), `nosniff`, no referrer, and no
//!   framing.
//! - Logins, refused logins, login links and logouts are in the audit log.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::api::{authenticate, ApiError, AppState};
use crate::audit::Event;
use crate::secret::Secret;

/// The browser session's cookie. `__Host-`: the browser keeps it only if it is
/// `Secure`, for `/`, and for this host alone.
pub const COOKIE: &str = "__Host-sesame";
/// How long a browser session lasts (it ends sooner with its key).
pub const SESSION_SECS: i64 = 12 * 3600;
/// How long a login link printed by `sesame web` can be used (once).
pub const LINK_SECS: i64 = 300;

/// What every response says about itself.
const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
    style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; \
    worker-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// A file of the page.
pub struct Asset {
    /// Its name under `/assets/`.
    pub name: &'static str,
    /// Its `Content-Type`.
    pub kind: &'static str,
    /// Its ETag (a hash of its bytes, made at build time).
    pub etag: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
    /// The same, gzipped.
    pub gzip: &'static [u8],
    /// Its ETag, gzipped.
    pub etag_gzip: &'static str,
}

/// Every file of the page (`build.rs`).
pub static ASSETS: &[Asset] = include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The page's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/login", get(page))
        .route("/sessions", get(page))
        .route("/recordings", get(page))
        .route("/t/{target}", get(page))
        .route("/watch/{id}", get(page))
        .route("/play/{id}", get(page))
        .route("/assets/{file}", get(asset))
        .route("/v1/web/links", post(add_link))
        .route("/v1/web/login", post(login))
        .route("/v1/web/logout", post(logout))
        .route("/v1/web/me", get(me))
        .route("/v1/agents/{target}/accounts", get(accounts))
}

async fn page(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    serve(&file, &headers)
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == name) else {
        return ApiError::new(StatusCode::NOT_FOUND, format!("no such file: {name}"))
            .into_response();
    };
    // Gzipped to a browser that takes it (all do): a quarter of the bytes. Each
    // form has its own ETag.
    let zipped = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|e| e.trim().split(';').next() == Some("gzip"))
        });
    let (body, etag) = if zipped {
        (a.gzip, a.etag_gzip)
    } else {
        (a.body, a.etag)
    };
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut r = Response::builder()
        .header(header::CONTENT_TYPE, a.kind)
        .header(header::ETAG, etag)
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::VARY, "accept-encoding");
    if zipped {
        r = r.header(header::CONTENT_ENCODING, "gzip");
    }
    let r = if cached {
        r.status(StatusCode::NOT_MODIFIED)
            .body(axum::body::Body::empty())
    } else {
        r.body(axum::body::Body::from(body))
    };
    r.unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The secret of the browser session cookie in `headers`, if there is one.
pub fn cookie(headers: &HeaderMap) -> Option<Secret> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| Secret::from_string(v.to_string()))
}

/// Whether `origin` is this relay's own (the `Host` it was reached by, over TLS).
fn same_origin(origin: &HeaderValue, headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin.to_str().ok(), host) {
        (Some(o), Some(h)) => o.strip_prefix("https://") == Some(h),
        _ => false,
    }
}

/// Refuses what a foreign page could make a browser send, and gives every
/// response its security headers.
pub async fn guard(req: Request, next: Next) -> Response {
    let h = req.headers();
    let upgrade = h.contains_key(header::UPGRADE);
    // An empty `Origin` is no origin: browsers send `null` for an opaque one, and
    // devices' WebSocket clients send an empty header (agent-embedded does).
    let refused = match h.get(header::ORIGIN).filter(|o| !o.is_empty()) {
        Some(o) if !same_origin(o, h) => Some(format!(
            "refused: a request from {} to this relay (cross-origin)",
            String::from_utf8_lossy(o.as_bytes())
        )),
        Some(_) => None,
        None => {
            let changes = !matches!(*req.method(), Method::GET | Method::HEAD) || upgrade;
            let by_cookie = cookie(h).is_some() && crate::api::bearer(h).is_none();
            (changes && by_cookie)
                .then(|| "refused: a browser request without its Origin".to_string())
        }
    };
    let mut resp = match refused {
        Some(why) => ApiError::new(StatusCode::FORBIDDEN, why).into_response(),
        None => next.run(req).await,
    };
    let h = resp.headers_mut();
    for (k, v) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// `POST /v1/web/links`: a one-time login link's secret, for the caller's key.
async fn add_link(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    // Made with an API key only: a browser session cannot prolong itself by
    // minting links.
    if crate::api::bearer(&headers).is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "login links are made with an API key (`sesame web`)",
        ));
    }
    let caller = authenticate(&state, &headers, peer).await?;
    let (code, expires_at) = state
        .store
        .add_login_link(&caller.key_id, LINK_SECS)
        .await?;
    let event = Event::new(caller.user.name.clone(), "web.link", caller.key_id.clone())
        .from(peer.ip())
        .detail(serde_json::json!({ "expires_at": expires_at }));
    state.record(event).await?;
    Ok(Json(
        serde_json::json!({ "code": code.expose(), "expires_at": expires_at }),
    ))
}

/// Body of `POST /v1/web/login`: a login link's secret, or an API key.
#[derive(Debug, Deserialize)]
struct Login {
    #[serde(default)]
    link: Option<String>,
    #[serde(default)]
    key: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<Login>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let req = crate::admin::body(body)?;
    let (how, key_id) = match (req.link, req.key) {
        (Some(link), None) => {
            let code = Secret::from_string(link.trim().to_string());
            match state.store.redeem_login_link(&code).await? {
                Ok(key_id) => ("link", Ok(key_id)),
                Err(e) => ("link", Err(e.to_string())),
            }
        }
        (None, Some(key)) => {
            let key = Secret::from_string(key.trim().to_string());
            match state.store.authenticate(&key).await? {
                Ok(c) => ("key", Ok(c.key_id)),
                Err(e) => ("key", Err(e.to_string())),
            }
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "give either a login link ('link') or an API key ('key')",
            ))
        }
    };
    let refuse = |state: AppState, why: String| async move {
        let now = crate::store::unix_now_ms();
        if let Some(unrecorded) = state.audit.refusals.take(peer.ip(), now) {
            let event = Event::new("-", "web.login.refused", "-")
                .from(peer.ip())
                .detail(
                    serde_json::json!({ "how": how, "why": why, "more_unrecorded": unrecorded }),
                );
            state.record(event).await?;
        }
        Err::<Response, _>(ApiError::new(StatusCode::UNAUTHORIZED, why))
    };
    let key_id = match key_id {
        Ok(k) => k,
        Err(why) => return refuse(state, why).await,
    };
    // The key's checks (revoked, expired, its user locked) as for any request.
    let caller = match state.store.authenticate_id(&key_id).await? {
        Ok(c) => c,
        Err(e) => return refuse(state, e.to_string()).await,
    };
    if let Some(why) = state.locked(&caller.user.id, None).await? {
        return refuse(state, why).await;
    }
    // A browser logged in already is logged out of that first (what it opened
    // would otherwise outlive every later logout).
    if let Some(old) = cookie(&headers) {
        if let Some(s) = state.store.web_session(&old).await? {
            log_out(&state, &s, peer, "logged in again").await?;
        }
    }
    let (secret, session) = state.store.add_web_session(&key_id, SESSION_SECS).await?;
    let event = Event::new(caller.user.name.clone(), "web.login", session.id.clone())
        .from(peer.ip())
        .detail(serde_json::json!({ "how": how, "key": key_id, "expires_at": session.expires_at }));
    state.record(event).await?;
    let cookie = format!(
        "{COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}",
        secret.expose()
    );
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(serde_json::json!({ "user": caller.user.name, "expires_at": session.expires_at })),
    )
        .into_response())
}

async fn logout(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let gone = format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Some(secret) = cookie(&headers) {
        if let Some(s) = state.store.web_session(&secret).await? {
            log_out(&state, &s, peer, "logged out").await?;
        }
    }
    Ok(([(header::SET_COOKIE, gone)], Json(serde_json::json!({}))).into_response())
}

/// Accounts on a target the caller may open a shell as, each decided by the
/// policies (`shell` with that `run_as`), of those known: the agent's default and
/// the accounts sessions there ran as. The console offers them (any other can be
/// typed, and is decided when asked for).
async fn accounts(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(target): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    use crate::policy::{Action, Circumstances, Resource};
    let caller = authenticate(&state, &headers, peer).await?;
    let agent = state.store.agent(&target).await?.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("unknown target '{target}'"))
    })?;
    let t = crate::api::target(&agent);
    let c = Circumstances::new(peer.ip());
    // Decided as a listing is, and each account as the shell would be, without
    // the log line of a real request (these are questions, not requests).
    let principal = caller.user.principal();
    let decide = |action, c: &Circumstances| {
        state
            .policies
            .authorize(&principal, action, &Resource::Agent(&t), c)
            .allow
    };
    if !decide(Action::List, &c) {
        // As if it did not exist: a listing would not show it either.
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown target '{target}'"),
        ));
    }
    let live = state.hub.get(&agent.id);
    let default = crate::api::account(None, live.as_deref(), &agent.name)?;
    let mut known = vec![default.clone()];
    for a in state.store.accounts_used(&agent.id).await? {
        if !known.contains(&a) {
            known.push(a);
        }
    }
    let allowed: Vec<String> = known
        .into_iter()
        .filter(|a| crate::api::account(Some(a), live.as_deref(), &agent.name).is_ok())
        .filter(|a| {
            let mut c = c.clone();
            c.run_as = a.clone();
            decide(Action::Shell, &c)
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "default": default, "accounts": allowed }),
    ))
}

/// Log the browser session `s` out, on record first (an action whose event
/// cannot be written is not done): it ends, and what it opened (shells, watches)
/// with it, held ones too, so that no other tab and no restored one takes them
/// up. What it asked for and had not opened yet is refused when it opens
/// (`stream`).
async fn log_out(
    state: &AppState,
    s: &crate::store::WebSession,
    peer: SocketAddr,
    why: &str,
) -> Result<(), ApiError> {
    let user = match state.store.authenticate_id(&s.key_id).await? {
        Ok(c) => c.user.name,
        Err(_) => "-".into(),
    };
    let event = Event::new(user, "web.logout", s.id.clone())
        .from(peer.ip())
        .detail(serde_json::json!({ "why": why }));
    state.record(event).await?;
    state.store.end_web_session(&s.id).await?;
    state.live.end_where(
        |o| o.web.as_deref() == Some(s.id.as_str()),
        "the browser session logged out",
    );
    Ok(())
}

async fn me(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    Ok(Json(serde_json::json!({
        "user": caller.user.name,
        "groups": caller.user.groups,
        "expires_at": caller.web.map(|w| w.expires_at),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower_service::Service;

    /// What `guard` answers a request to an endpoint that says "ok".
    async fn answer(method: &str, headers: &[(&str, &str)]) -> Response {
        let mut app: Router = Router::new()
            .route("/x", get(|| async { "ok" }).post(|| async { "ok" }))
            .layer(axum::middleware::from_fn(guard));
        let mut req = Request::builder().method(method).uri("/x");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        app.call(req.body(Body::empty()).unwrap()).await.unwrap()
    }

    async fn status(method: &str, headers: &[(&str, &str)]) -> StatusCode {
        answer(method, headers).await.status()
    }

    const HOST: (&str, &str) = ("host", "relay.test:8443");
    const COOKIE_SET: (&str, &str) = ("cookie", "a=b; __Host-sesame=wc_x");

    #[tokio::test]
    async fn every_answer_has_the_security_headers() {
        let r = answer("GET", &[HOST]).await;
        assert_eq!(r.status(), StatusCode::OK);
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self' 'wasm-unsafe-eval'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline") && !csp.contains("'unsafe-eval'"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    }

    #[tokio::test]
    async fn foreign_origins_are_refused_and_the_relays_own_is_not() {
        let own = ("origin", "https://relay.test:8443");
        assert_eq!(
            status("POST", &[HOST, own, COOKIE_SET]).await,
            StatusCode::OK
        );
        for foreign in [
            "https://evil.test",
            "null",
            "http://relay.test:8443",
            "https://relay.test",
        ] {
            let o = ("origin", foreign);
            assert_eq!(
                status("POST", &[HOST, o]).await,
                StatusCode::FORBIDDEN,
                "{foreign}"
            );
            assert_eq!(
                status("GET", &[HOST, o, COOKIE_SET]).await,
                StatusCode::FORBIDDEN
            );
        }
    }

    #[tokio::test]
    async fn a_cookie_needs_an_origin_to_change_anything_or_open_a_websocket() {
        assert_eq!(
            status("POST", &[HOST, COOKIE_SET]).await,
            StatusCode::FORBIDDEN
        );
        let upgrade = ("upgrade", "websocket");
        assert_eq!(
            status("GET", &[HOST, COOKIE_SET, upgrade]).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(status("GET", &[HOST, COOKIE_SET]).await, StatusCode::OK);
        // API keys and devices are no browsers: no Origin, or an empty one, is fine.
        let bearer = ("authorization", "Bearer sk_x");
        assert_eq!(
            status("POST", &[HOST, COOKIE_SET, bearer]).await,
            StatusCode::OK
        );
        assert_eq!(status("POST", &[HOST]).await, StatusCode::OK);
        assert_eq!(
            status("GET", &[HOST, ("origin", ""), upgrade]).await,
            StatusCode::OK
        );
    }

    #[test]
    fn files_go_gzipped_to_who_takes_it_each_form_with_its_etag() {
        use std::io::Read;
        let a = ASSETS.iter().find(|a| a.name == "xterm.mjs").unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip;q=1"),
        );
        let r = serve("xterm.mjs", &h);
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(r.headers()[header::ETAG], a.etag_gzip);
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(a.gzip)
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, a.body, "the gzipped form is the file");
        assert!(a.gzip.len() * 3 < a.body.len());
        let plain = serve("xterm.mjs", &HeaderMap::new());
        assert!(!plain.headers().contains_key(header::CONTENT_ENCODING));
        assert_eq!(plain.headers()[header::ETAG], a.etag);
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static(a.etag_gzip));
        assert_eq!(serve("xterm.mjs", &h).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(serve("nothing.js", &h).status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; __Host-sesame=wc_abc; y=2"),
        );
        assert_eq!(cookie(&h).unwrap().expose(), "wc_abc");
        h.insert(header::COOKIE, HeaderValue::from_static("__Host-sesamex=1"));
        assert!(cookie(&h).is_none());
    }
}
