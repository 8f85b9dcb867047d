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
//! (`session.leave`); the session's user is told of both (`Notice`).
//!
//! Joining needs the session's recording: a session not being recorded
//! (recordings off, or broken in best-effort mode) cannot be joined. An observer
//! that does not keep up is dropped (the session never waits for one).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use agent_core::wire::{self, Bytes, ErrorCode, Exit, Frame, Stream};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::{Joined, Seen};
use crate::agent_link::encode;
use crate::api::{authenticate, ApiError, AppState};
use crate::audit::Event;
use crate::policy::Action;

/// The session id on an observer's stream.
const SID: u32 = 1;
/// Longest the goodbyes to an observer may take.
const GRACE: std::time::Duration = std::time::Duration::from_secs(5);

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
    // On record before the observer sees anything.
    let event = Event::new(caller.user.name.clone(), "session.join", s.id.clone())
        .from(peer.ip())
        .detail(json!({ "owner": owner, "read_only": true }));
    state.record(event).await?;
    let who = caller.user.name.clone();
    info!(session = %s.id, observer = %who, "joined (read-only)");
    state
        .live
        .notify(&s.id, &format!("{who} joined this session (read-only)"));
    let max = crate::api::MAX_MESSAGE;
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let started = Instant::now();
            let why = observe(socket, joined).await;
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

/// Serve one observer until the session ends, it leaves or it falls behind;
/// returns why it stopped.
async fn observe(socket: WebSocket, joined: Joined) -> String {
    let (mut sink, mut stream) = socket.split();
    let Joined {
        path,
        upto,
        mut feed,
    } = joined;
    let screen = tokio::task::spawn_blocking(move || screen(&path, upto))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    let (cols, rows, drawn) = match screen {
        Ok(s) => s,
        Err(e) => {
            let why = format!("cannot rebuild the session's screen: {e}");
            warn!("{why}");
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
    let drawn = format!("\x1bc{drawn}");
    for chunk in drawn
        .as_bytes()
        .chunks(wire::max_data_len(wire::DEFAULT_MAX_FRAME))
    {
        first.push(data(chunk));
    }
    for f in first {
        if sink.send(Message::Binary(f.into())).await.is_err() {
            return "the observer went away".into();
        }
    }
    loop {
        tokio::select! {
            seen = feed.recv() => {
                let f = match seen {
                    Some(Seen::Output(bytes)) => {
                        // Within a frame's payload each (the agent's frames are).
                        let mut out = Vec::new();
                        for chunk in bytes.chunks(wire::max_data_len(wire::DEFAULT_MAX_FRAME)) {
                            out.push(data(chunk));
                        }
                        out
                    }
                    Some(Seen::Resize(cols, rows)) => vec![encode(&Frame::Resize { sid: SID, cols, rows })],
                    Some(Seen::End(why)) => {
                        let exit = if why.starts_with("exit ") { Exit::Code(0) } else { Exit::Aborted(ErrorCode::TERMINATED) };
                        let line = format!("the session ended: {why}");
                        close(&mut sink, exit, &line).await;
                        return line;
                    }
                    None => {
                        let why = "you fell behind the session's output (join again)";
                        close(&mut sink, Exit::Aborted(ErrorCode::TERMINATED), why).await;
                        return why.into();
                    }
                };
                for b in f {
                    let send = sink.send(Message::Binary(b.into()));
                    match tokio::time::timeout(GRACE * 2, send).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return "the observer went away".into(),
                        Err(_) => return "the observer read nothing for 10s".into(),
                    }
                }
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if matches!(Frame::decode(&b), Ok(Frame::Close { .. })) {
                        let _ = tokio::time::timeout(GRACE, sink.close()).await;
                        return "the observer left".into();
                    }
                    // Read-only: anything else is not passed on.
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return "the observer left".into(),
                Some(Ok(_)) => {}
            },
        }
    }
}

fn data(chunk: &[u8]) -> Vec<u8> {
    encode(&Frame::Data {
        sid: SID,
        ch: 0,
        stream: Stream::OUT,
        data: Bytes(chunk),
    })
}

async fn close(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    exit: Exit,
    why: &str,
) {
    let f = encode(&Frame::Close {
        sid: SID,
        exit,
        reason: why,
    });
    let _ = tokio::time::timeout(GRACE, sink.send(Message::Binary(f.into()))).await;
    let _ = tokio::time::timeout(GRACE, sink.close()).await;
}

/// The screen of a shell recording (asciicast v2) after its first `upto` bytes:
/// its size and the escape sequences that draw it on a fresh terminal.
pub fn screen(path: &Path, upto: u64) -> std::io::Result<(u16, u16, String)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let file = std::fs::File::open(path)?;
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
    let mut vt = avt::Terminal::new(cols as usize, rows as usize)
        .map_err(|_| bad("the recording's terminal size is invalid"))?;
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
                    vt.resize(c as usize, r as usize);
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
        let (cols, rows, drawn) = screen(&path, upto).unwrap();
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
    fn sizes_parse_strictly() {
        assert_eq!(parse_size("80x24"), Some((80, 24)));
        assert_eq!(parse_size("0x24"), None);
        assert_eq!(parse_size("80"), None);
        assert_eq!(parse_size("80x24x1"), None);
    }
}
