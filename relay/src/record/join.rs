//! Joining a live shell session, read-only: `GET /v1/sessions/{id}/join`, a
//! WebSocket, with the API key (action `observe` on the session).
//!
//! The observer gets the session's terminal size (`Resize`), then its screen as it
//! is now, rebuilt from the recording so far by a terminal emulator (`avt`, the one
//! asciinema uses) and sent as the escape sequences that draw it (`Data`), then
//! each output and resize as the session's user gets them, until the session ends
//! (`Close`, with how it ended). The observer's own frames are not passed on: only
//! its `Close` (or leaving) is heard. The join is in the audit log before the
//! observer sees anything (`session.join`, fail closed), as is the leave
//! (`session.leave`); the session's user is told of both (`Notice`, when its client
//! asked for notices). An observer is live in its own right: locking its user or
//! revoking its key ends the watch.
//!
//! Joining needs the session's recording: a session not being recorded
//! (recordings off, or broken in best-effort mode) cannot be joined. An observer
//! that does not keep up is dropped (the session never waits for one); a session
//! has [`super::writer::MAX_OBSERVERS`] at most, and screens are rebuilt two at a
//! time, at most [`MAX_COLS`] x [`MAX_ROWS`] (a larger terminal is cut to that).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_core::wire::{self, Bytes, ErrorCode, Exit, Frame, Stream};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use super::{Joined, Seen};
use crate::agent_link::encode;
use crate::api::{authenticate, ApiError, AppState};
use crate::audit::Event;
use crate::live::Owner;
use crate::policy::Action;

/// The session id on an observer's stream.
const SID: u32 = 1;
/// Longest one write to an observer may take before it counts as gone.
const WRITE_WAIT: Duration = Duration::from_secs(10);
/// Longest the goodbyes to an observer may take.
const GRACE: Duration = Duration::from_secs(5);
/// The widest screen rebuilt (a terminal emulator's memory is columns x rows).
pub const MAX_COLS: u16 = 1000;
/// The tallest screen rebuilt.
pub const MAX_ROWS: u16 = 500;
/// Output that may wait, per observer, while its screen is rebuilt.
const MAX_BACKLOG: usize = 8 << 20;

/// Screens being rebuilt at once (each reads a whole recording).
static REBUILDS: Semaphore = Semaphore::const_new(2);
/// Numbers observers among the live entries.
static OBSERVERS: AtomicU64 = AtomicU64::new(0);

type Sink = SplitSink<WebSocket, Message>;

fn conflict(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, m)
}

/// `GET /v1/sessions/{id}/join`.
pub async fn join(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    let ws = ws.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("joining is a WebSocket: {}", e.body_text()),
        )
    })?;
    let s = crate::sessions::session_for(&state, &caller, peer, &id, Action::Observe).await?;
    if s.kind != "shell" {
        return Err(conflict(format!(
            "session {} is a {} session; only shell sessions can be joined",
            s.id, s.kind
        )));
    }
    let Some((_, watch)) = state.live.watch(&s.id) else {
        return Err(conflict(format!("session {} is not running", s.id)));
    };
    let Some(watch) = watch else {
        return Err(conflict(format!(
            "session {} is not being recorded, and joining needs its recording",
            s.id
        )));
    };
    let joined = watch.join().await.map_err(conflict)?;
    let owner = match state.store.user(&s.user_id).await {
        Ok(Some(u)) => u.name,
        _ => s.user_id.clone(),
    };
    let max = crate::api::MAX_MESSAGE;
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let (mut sink, stream) = socket.split();
            let who = caller.user.name.clone();
            // On record before the observer sees anything (fail closed).
            let event = Event::new(who.clone(), "session.join", s.id.clone())
                .from(peer.ip())
                .detail(json!({ "owner": owner, "read_only": true }));
            if let Err(e) = state.audit.record(event).await {
                close(
                    &mut sink,
                    Exit::Aborted(ErrorCode::INTERNAL),
                    &e.to_string(),
                )
                .await;
                return;
            }
            let n = OBSERVERS.fetch_add(1, Ordering::Relaxed);
            let registration = state.live.register(
                &format!("{}~observer-{n}", s.id),
                Owner {
                    user_id: caller.user.id.clone(),
                    key_id: Some(caller.key_id.clone()),
                    web: caller.web.as_ref().map(|w| w.id.clone()),
                    agent_id: s.agent_id.clone(),
                },
            );
            // A logout between the request's check and the registration above.
            if let Some(w) = &caller.web {
                if !state.store.web_session_live(&w.id).await.unwrap_or(false) {
                    let why = "the browser session logged out";
                    close(&mut sink, Exit::Aborted(ErrorCode::DENIED), why).await;
                    return;
                }
            }
            info!(session = %s.id, observer = %who, "joined (read-only)");
            state
                .live
                .notify(&s.id, &format!("{who} joined this session (read-only)"));
            let started = Instant::now();
            let watching = Watching {
                state: &state,
                session: &s.id,
                ended: registration.ended.clone(),
            };
            let why = watching.serve(sink, stream, joined).await;
            drop(registration);
            state
                .live
                .notify(&s.id, &format!("{who} left this session"));
            let event = Event::new(who, "session.leave", s.id.clone())
                .from(peer.ip())
                .detail(json!({
                    "seconds": started.elapsed().as_secs(),
                    "why": why,
                }));
            if let Err(e) = state.audit.record(event).await {
                warn!(session = %s.id, "an observer's leave is not in the audit log: {e}");
            }
        }))
}

/// One observer of a session.
struct Watching<'a> {
    state: &'a AppState,
    session: &'a str,
    /// The observer's own end (its key revoked, its user locked).
    ended: watch::Receiver<Option<String>>,
}

/// What an observer gets next, as frames; or the end, with how and why.
enum Next {
    Frames(Vec<Vec<u8>>),
    End(Exit, String),
}

impl Watching<'_> {
    /// Serve the observer until the session ends, it leaves or falls behind, or is
    /// ended; returns why it stopped.
    async fn serve(
        mut self,
        mut sink: Sink,
        mut stream: SplitStream<WebSocket>,
        joined: Joined,
    ) -> String {
        let Joined {
            file,
            upto,
            mut feed,
        } = joined;
        // The screen so far, rebuilt off the runtime's threads while what follows
        // waits here (bounded: past it, the feed fills and the observer falls behind).
        let rebuild = async {
            let _turn = REBUILDS.acquire().await;
            tokio::task::spawn_blocking(move || screen(file, upto))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        };
        tokio::pin!(rebuild);
        let (mut backlog, mut waiting, mut feed_open) = (VecDeque::new(), 0usize, true);
        let rebuilt = loop {
            tokio::select! {
                r = &mut rebuild => break r,
                seen = feed.recv(), if feed_open && waiting <= MAX_BACKLOG => match seen {
                    Some(seen) => {
                        waiting += size(&seen);
                        backlog.push_back(seen);
                    }
                    None => feed_open = false,
                },
            }
        };
        let (cols, rows, drawn) = match rebuilt {
            Ok(s) => s,
            Err(e) => {
                let why = format!("cannot rebuild the session's screen: {e}");
                warn!(session = %self.session, "{why}");
                close(&mut sink, Exit::Aborted(ErrorCode::INTERNAL), &why).await;
                return why;
            }
        };
        let mut first = vec![encode(&Frame::Resize {
            sid: SID,
            cols,
            rows,
        })];
        // A full reset first: the screen is drawn on a terminal as new.
        first.extend(data(format!("\x1bc{drawn}").as_bytes()));
        if let Err(why) = self.send(&mut sink, first).await {
            return why;
        }
        loop {
            let seen = match backlog.pop_front() {
                Some(seen) => Some(seen),
                None => tokio::select! {
                    seen = feed.recv() => seen,
                    msg = stream.next() => match msg {
                        Some(Ok(Message::Binary(b))) => {
                            if matches!(Frame::decode(&b), Ok(Frame::Close { .. })) {
                                let _ = tokio::time::timeout(GRACE, sink.close()).await;
                                return "the observer left".into();
                            }
                            continue; // read-only: anything else goes nowhere
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                            return "the observer left".into()
                        }
                        Some(Ok(_)) => continue,
                    },
                    why = ended(&mut self.ended) => {
                        close(&mut sink, Exit::Aborted(ErrorCode::DENIED), &why).await;
                        return why;
                    }
                },
            };
            match self.next(seen) {
                Next::Frames(frames) => {
                    if let Err(why) = self.send(&mut sink, frames).await {
                        return why;
                    }
                }
                Next::End(exit, why) => {
                    close(&mut sink, exit, &why).await;
                    return why;
                }
            }
        }
    }

    /// What `seen` (`None`: the feed closed) means for the observer.
    fn next(&self, seen: Option<Seen>) -> Next {
        match seen {
            Some(Seen::Output(bytes)) => Next::Frames(data(&bytes)),
            Some(Seen::Resize(cols, rows)) => Next::Frames(vec![encode(&Frame::Resize {
                sid: SID,
                cols,
                rows,
            })]),
            Some(Seen::End(exit, why)) => Next::End(
                exit.unwrap_or(Exit::Aborted(ErrorCode::TERMINATED)),
                format!("the session ended: {why}"),
            ),
            // Closed without an end: the session ended while the feed was full,
            // or the observer fell behind.
            None if !self.state.live.contains(self.session) => Next::End(
                Exit::Aborted(ErrorCode::TERMINATED),
                "the session ended".into(),
            ),
            None => Next::End(
                Exit::Aborted(ErrorCode::TERMINATED),
                "you fell behind the session's output (join again)".into(),
            ),
        }
    }

    /// Send `frames`, each within [`WRITE_WAIT`]; the reason to stop otherwise.
    async fn send(&mut self, sink: &mut Sink, frames: Vec<Vec<u8>>) -> Result<(), String> {
        for f in frames {
            match tokio::time::timeout(WRITE_WAIT, sink.send(Message::Binary(f.into()))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err("the observer went away".into()),
                Err(_) => {
                    return Err(format!(
                        "the observer read nothing for {}s",
                        WRITE_WAIT.as_secs()
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Why the observer was ended (its key revoked, its user locked), once it is.
async fn ended(rx: &mut watch::Receiver<Option<String>>) -> String {
    let why = rx
        .wait_for(Option::is_some)
        .await
        .ok()
        .map(|why| why.clone().unwrap_or_default());
    match why {
        Some(why) => why,
        None => std::future::pending().await,
    }
}

/// What an event costs while it waits.
fn size(seen: &Seen) -> usize {
    match seen {
        Seen::Output(b) => b.len() + 64,
        Seen::Resize(..) => 64,
        Seen::End(_, why) => why.len() + 64,
    }
}

/// `bytes` as `Data` frames, each within a frame's payload.
fn data(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .chunks(wire::max_data_len(wire::DEFAULT_MAX_FRAME))
        .map(|chunk| {
            encode(&Frame::Data {
                sid: SID,
                ch: 0,
                stream: Stream::OUT,
                data: Bytes(chunk),
            })
        })
        .collect()
}

async fn close(sink: &mut Sink, exit: Exit, why: &str) {
    let f = encode(&Frame::Close {
        sid: SID,
        exit,
        reason: why,
    });
    let _ = tokio::time::timeout(GRACE, sink.send(Message::Binary(f.into()))).await;
    let _ = tokio::time::timeout(GRACE, sink.close()).await;
}

/// The screen of a shell recording (asciicast v2) after its first `upto` bytes:
/// its size and the escape sequences that draw it on a fresh terminal. Sizes are
/// cut to [`MAX_COLS`] x [`MAX_ROWS`].
pub fn screen(file: impl Read, upto: u64) -> std::io::Result<(u16, u16, String)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut lines = BufReader::new(file.take(upto)).lines();
    let header: Value = serde_json::from_str(&lines.next().ok_or_else(|| bad("empty recording"))??)
        .map_err(|_| bad("the recording's header is not JSON"))?;
    let size = |k: &str| {
        header[k]
            .as_u64()
            .filter(|n| (1..=u16::MAX as u64).contains(n))
    };
    let (Some(cols), Some(rows)) = (size("width"), size("height")) else {
        return Err(bad("the recording's header has no terminal size"));
    };
    let fit = |c: u64, r: u64| {
        (
            c.min(MAX_COLS as u64) as usize,
            r.min(MAX_ROWS as u64) as usize,
        )
    };
    let (c, r) = fit(cols, rows);
    let mut vt =
        avt::Terminal::new(c, r).map_err(|_| bad("the recording's terminal size is invalid"))?;
    for line in lines {
        let line = line?;
        let Ok(Value::Array(e)) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        match (
            e.get(1).and_then(Value::as_str),
            e.get(2).and_then(Value::as_str),
        ) {
            (Some("o"), Some(text)) => vt.feed(text),
            (Some("r"), Some(size)) => {
                if let Some((c, r)) = parse_size(size) {
                    let (c, r) = fit(c as u64, r as u64);
                    vt.resize(c, r);
                }
            }
            _ => {}
        }
    }
    let (c, r) = vt.size();
    Ok((c as u16, r as u16, vt.dump()))
}

/// `COLSxROWS`, both 1 to 65535.
fn parse_size(s: &str) -> Option<(u16, u16)> {
    let (c, r) = s.split_once('x')?;
    let (c, r) = (c.parse::<u16>().ok()?, r.parse::<u16>().ok()?);
    (c > 0 && r > 0).then_some((c, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_screen_is_rebuilt_from_the_recording_up_to_the_join() {
        let dir = crate::record::tests::Dir::new("join");
        let path = dir.0.join("s.cast");
        let lines = [
            r#"{"version":2,"width":20,"height":3}"#,
            r#"[0.1,"o","one\r\ntwo\r\n"]"#,
            r#"[0.2,"r","30x4"]"#,
            r#"[0.3,"o","\u001b[31mred\u001b[0m"]"#,
            r#"[0.4,"o","after the join"]"#,
        ];
        let text = lines.join("\n") + "\n";
        std::fs::write(&path, &text).unwrap();
        let upto = text.find("[0.4").unwrap() as u64;
        let (cols, rows, drawn) = screen(std::fs::File::open(&path).unwrap(), upto).unwrap();
        assert_eq!((cols, rows), (30, 4));
        // Drawn on a fresh terminal of that size, it shows what the user saw.
        let mut vt = avt::Terminal::new(30, 4).unwrap();
        vt.feed(drawn.as_str());
        let shown: Vec<String> = vt.screen().text();
        assert_eq!(shown[0].trim_end(), "one");
        assert_eq!(shown[1].trim_end(), "two");
        assert_eq!(shown[2].trim_end(), "red");
        assert!(!drawn.contains("after the join"));
    }

    #[test]
    fn a_huge_terminal_is_rebuilt_cut_to_the_bounds() {
        let cast = "{\"version\":2,\"width\":65535,\"height\":65535}\n[0.1,\"o\",\"hi\"]\n[0.2,\"r\",\"65535x65535\"]\n";
        let (cols, rows, drawn) = screen(cast.as_bytes(), cast.len() as u64).unwrap();
        assert_eq!((cols, rows), (MAX_COLS, MAX_ROWS));
        assert!(drawn.contains("hi"));
        let bad = screen(&b"not json\n"[..], 9).unwrap_err();
        assert_eq!(bad.to_string(), "the recording's header is not JSON");
    }

    #[test]
    fn sizes_parse_strictly() {
        assert_eq!(parse_size("80x24"), Some((80, 24)));
        assert_eq!(parse_size("0x24"), None);
        assert_eq!(parse_size("80"), None);
        assert_eq!(parse_size("80x24x1"), None);
    }
}
