//! Recordings over HTTP, each read authorised with `replay` on its session and
//! recorded in the audit log, with who read it, before any of it is sent.
//!
//! | method | path | action, resource | audit event |
//! |---|---|---|---|
//! | GET | `/v1/sessions/{id}/recording` | `replay`, the session | `recording.read` |
//! | GET | `/v1/recordings/grep?text=...&target=&user=&since=&ignore_case=&limit=` | `replay`, each session searched | `recording.grep` |
//!
//! A recording is served uncompressed: asciicast v2 for a shell
//! (`application/x-asciicast`), JSON lines for an exec or forward session
//! (`application/x-ndjson`); a live one up to its last whole line
//! (`x-sesame-recording: live`).

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::grep::{self, Needle};
use crate::api::{authenticate, ApiError, AppState};
use crate::audit::Event;
use crate::policy::{Action, Circumstances};
use crate::sessions::Subjects;
use crate::store::SessionListed;

/// Matches a search returns when it names no `limit`.
pub const DEFAULT_HITS: usize = 100;
/// The largest `limit`.
pub const MAX_HITS: usize = 1000;
/// Sessions a search looks at, at most (newest first); narrow it with `since`,
/// `target` or `user` to reach older ones.
pub const MAX_SEARCHED: usize = 5000;
/// The longest search text, in characters.
pub const MAX_TEXT: usize = 200;
/// Sessions read from the store per page while searching.
const PAGE: u32 = 200;

/// The recording routes (merged into the API's router).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/sessions/{id}/recording", get(read))
        .route("/v1/recordings/grep", get(search))
        .route("/v1/sessions/{id}/join", get(super::join::join))
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, m)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    warn!("recordings: {e}");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "cannot read the recording; see the relay's log",
    )
}

/// `GET /v1/sessions/{id}/recording`.
async fn read(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    let s = crate::sessions::session_for(&state, &caller, peer, &id, Action::Replay).await?;
    let recordings = state.recordings.clone();
    let sid = s.id.clone();
    let opened = tokio::task::spawn_blocking(move || recordings.open(&sid))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    let Some(opened) = opened else {
        let why = match s.kind.as_str() {
            "ssh-key" => " (SSH key pushes are not recorded: the audit log has them)",
            _ => "",
        };
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("session {} has no recording{why}", s.id),
        ));
    };
    // On record, with who reads it, before a byte of it is sent.
    let event = Event::new(caller.user.name.clone(), "recording.read", s.id.clone())
        .from(peer.ip())
        .detail(serde_json::json!({ "file": opened.file, "live": opened.live }));
    state.record(event).await?;
    let content_type = if opened.suffix == super::CAST {
        "application/x-asciicast"
    } else {
        "application/x-ndjson"
    };
    let live = if opened.live { "live" } else { "complete" };
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header("x-sesame-recording", live)
        .body(stream(opened.reader))
        .map_err(internal)
}

/// A body read from `reader` on a blocking thread, a chunk at a time.
fn stream(mut reader: Box<dyn std::io::BufRead + Send>) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let chunk = match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => Ok(Bytes::copy_from_slice(&buf[..n])),
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            // The client left: stop reading.
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (c, rx))
    }))
}

/// Query of `GET /v1/recordings/grep`.
#[derive(Debug, Deserialize)]
pub struct GrepQuery {
    /// The text to find in the output.
    pub text: String,
    /// Only sessions on this target (by name).
    pub target: Option<String>,
    /// Only this user's sessions (by name).
    pub user: Option<String>,
    /// Only sessions created at or after this time (unix seconds).
    pub since: Option<i64>,
    /// Match in any case.
    #[serde(default)]
    pub ignore_case: bool,
    /// At most this many matches, 1 to [`MAX_HITS`] [default: [`DEFAULT_HITS`]].
    pub limit: Option<usize>,
}

/// One matching line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrepHit {
    /// Session id.
    pub session: String,
    /// Its user.
    pub user: String,
    /// Its target.
    pub target: String,
    /// `shell` or `exec`.
    pub kind: String,
    /// Seconds from the start of the session to the line.
    pub offset: f64,
    /// The line, terminal escape sequences stripped.
    pub line: String,
}

/// `GET /v1/recordings/grep`: the sessions with output, newest first, that the
/// caller may `replay` and the filters keep, searched one by one off the runtime's
/// threads until `limit` lines matched or [`MAX_SEARCHED`] sessions were searched.
async fn search(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<GrepQuery>, QueryRejection>,
) -> Result<Json<Vec<GrepHit>>, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    let Query(q) = query.map_err(|e| bad(e.body_text()))?;
    if q.text.is_empty() || q.text.chars().count() > MAX_TEXT {
        return Err(bad(format!("text must be 1 to {MAX_TEXT} characters")));
    }
    if q.text.chars().any(char::is_control) {
        return Err(bad("text must be one line"));
    }
    let limit = q.limit.unwrap_or(DEFAULT_HITS);
    if !(1..=MAX_HITS).contains(&limit) {
        return Err(bad(format!("limit must be 1 to {MAX_HITS}, not {limit}")));
    }
    let needle = Needle::new(&q.text, q.ignore_case);
    let c = Circumstances::new(peer.ip());
    let mut subjects = Subjects::default();
    let (mut hits, mut searched, mut matched) = (Vec::new(), 0usize, Vec::<String>::new());
    let mut after = None;
    'pages: loop {
        let page = state.store.sessions_page(None, after, PAGE).await?;
        let exhausted = page.len() < PAGE as usize;
        after = page.last().map(|(cursor, _)| *cursor);
        let mut older = false;
        let mut candidates = Vec::new();
        for (_, s) in page {
            if q.since.is_some_and(|since| s.created_at < since) {
                // Newest first: the rest are older still.
                older = true;
                break;
            }
            let kept = matches!(s.kind.as_str(), "shell" | "exec")
                && q.target.as_ref().is_none_or(|t| *t == s.target)
                && q.user.as_ref().is_none_or(|u| *u == s.user)
                && s.started_at.is_some();
            if kept {
                subjects
                    .learn(&state.store, &s.user_id, &s.agent_id)
                    .await?;
                candidates.push(s);
            }
        }
        let (decider, user, circ) = (state.clone(), caller.user.clone(), c.clone());
        let (allowed, known) = tokio::task::spawn_blocking(move || {
            let allowed: Vec<SessionListed> = candidates
                .into_iter()
                .filter(|s| {
                    let r = subjects.resource(&s.id, &s.user_id, &s.agent_id, &s.kind, &s.run_as);
                    decider.decide(&user, Action::Replay, &r, &circ).allow
                })
                .collect();
            (allowed, subjects)
        })
        .await
        .map_err(internal)?;
        subjects = known;
        for s in allowed {
            if searched == MAX_SEARCHED || hits.len() == limit {
                break 'pages;
            }
            searched += 1;
            let (recordings, n, needle) =
                (state.recordings.clone(), limit - hits.len(), needle.clone());
            let id = s.id.clone();
            let found = tokio::task::spawn_blocking(move || match recordings.open(&id)? {
                Some(o) => grep::scan(o.reader, &needle, n),
                None => Ok(Vec::new()),
            })
            .await
            .map_err(internal)?;
            let found = match found {
                Ok(f) => f,
                Err(e) => {
                    // One unreadable recording does not hide the others' matches.
                    warn!(session = %s.id, "cannot search the recording: {e}");
                    continue;
                }
            };
            if !found.is_empty() {
                matched.push(s.id.clone());
            }
            hits.extend(found.into_iter().map(|h| GrepHit {
                session: s.id.clone(),
                user: s.user.clone(),
                target: s.target.clone(),
                kind: s.kind.clone(),
                offset: h.offset,
                line: h.line,
            }));
        }
        if exhausted || older {
            break;
        }
    }
    // Who searched for what, and where it was found: on record before the answer.
    let event = Event::new(caller.user.name.clone(), "recording.grep", "recordings")
        .from(peer.ip())
        .detail(serde_json::json!({
            "text": q.text,
            "ignore_case": q.ignore_case,
            "target": q.target,
            "user": q.user,
            "since": q.since,
            "searched": searched,
            "sessions": matched,
        }));
    state.record(event).await?;
    Ok(Json(hits))
}
