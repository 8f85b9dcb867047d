//! A client's session stream: the first frame is `Open`; the relay checks it against
//! the session that the token was issued for, reserves a session id on the agent's
//! connection and from then on routes frames both ways.

use std::sync::Arc;
use std::time::Duration;

use agent_core::wire::{self, ErrorCode, Exit, Frame, Kind};
use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::agent_link::encode;
use crate::api::AppState;
use crate::hub::{AgentHandle, Route, CLIENT_QUEUE};
use crate::store::SessionRow;

/// The client must send `Open` within this.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Frames a client may send on its stream after `Open`.
fn client_may_send(f: &Frame) -> bool {
    matches!(
        f,
        Frame::Data { .. }
            | Frame::Credit { .. }
            | Frame::Resize { .. }
            | Frame::Eof { .. }
            | Frame::Close { .. }
            | Frame::Signal { .. }
            | Frame::ChannelOpen { .. }
            | Frame::ChannelClose { .. }
    )
}

/// The API's name of a session kind.
pub fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::Shell { .. } => "shell",
        Kind::Exec { .. } => "exec",
        Kind::Forward => "forward",
        Kind::SshKey { .. } => "ssh-key",
    }
}

/// Serve one client stream until the session ends or the client leaves.
pub async fn serve(
    socket: WebSocket,
    state: AppState,
    session: SessionRow,
    agent: Arc<AgentHandle>,
) {
    let (mut sink, mut stream) = socket.split();
    let reject =
        |sid: u32, code: ErrorCode, reason: &str| encode(&Frame::Reject { sid, code, reason });

    // 1. The Open frame.
    let first = tokio::time::timeout(OPEN_TIMEOUT, stream.next()).await;
    let msg = match first {
        Ok(Some(Ok(Message::Binary(b)))) => b,
        _ => {
            let _ = state
                .store
                .end_session(&session.id, "client sent no Open")
                .await;
            return;
        }
    };
    let open = Frame::decode_bounded(&msg, wire::DEFAULT_MAX_FRAME as usize);
    let (client_sid, refusal) = match open {
        Ok(Frame::Open { sid, kind, .. }) => {
            let bad_argv = matches!(kind, Kind::Exec { argv } if !wire::argv_valid(argv.0));
            if kind_name(&kind) != session.kind {
                (
                    sid,
                    Some(format!(
                        "this session was created for '{}', not '{}'",
                        session.kind,
                        kind_name(&kind)
                    )),
                )
            } else if bad_argv {
                (sid, Some("exec needs a command".to_string()))
            } else {
                (sid, None)
            }
        }
        Ok(_) => (0, Some("the first frame on a stream must be Open".into())),
        Err(e) => (0, Some(format!("malformed Open frame: {e}"))),
    };
    if let Some(reason) = refusal {
        let _ = sink
            .send(Message::Binary(
                reject(client_sid, ErrorCode::PROTOCOL, &reason).into(),
            ))
            .await;
        let _ = state.store.end_session(&session.id, &reason).await;
        return;
    }

    // 2. Reserve a slot on the agent, within its advertised capacity.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CLIENT_QUEUE);
    let route = Route {
        client_sid,
        session_id: session.id.clone(),
        tx,
    };
    let agent_sid = match agent.open_route(route) {
        Ok(sid) => sid,
        Err(limit) => {
            let reason = format!(
                "agent '{}' session limit reached ({} of {} sessions in use)",
                agent.name, limit.in_use, limit.max
            );
            let _ = sink
                .send(Message::Binary(
                    reject(client_sid, ErrorCode::SESSION_LIMIT, &reason).into(),
                ))
                .await;
            let _ = state.store.end_session(&session.id, &reason).await;
            return;
        }
    };
    let forward = |f: Frame| encode(&f.with_sid(agent_sid));
    if agent
        .tx
        .send(forward(Frame::decode(&msg).expect("decoded above")))
        .await
        .is_err()
    {
        agent.remove_route(agent_sid);
        let _ = sink
            .send(Message::Binary(
                reject(client_sid, ErrorCode::AGENT_GONE, "the agent disconnected").into(),
            ))
            .await;
        return;
    }
    info!(session = %session.id, agent = %agent.name, kind = %session.kind, "session started");

    // 3. Route until the session ends.
    let mut client_closed_session = false;
    let outcome = loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(bytes) = out else {
                    break "relay dropped the session (client too slow)";
                };
                let last = matches!(bytes.first(), Some(6 | 11)); // Reject, Close
                if sink.send(Message::Binary(bytes.into())).await.is_err() {
                    break "client went away";
                }
                if last {
                    break "ended";
                }
            }
            msg = stream.next() => {
                let bytes = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) | None => break "client went away",
                    Some(Err(e)) => {
                        // Oversized messages land here: say so before hanging up.
                        let e = format!("bad message on the session stream: {e}");
                        let _ = sink.send(Message::Binary(encode(&Frame::Close {
                            sid: client_sid, exit: Exit::Aborted(ErrorCode::PROTOCOL), reason: &e,
                        }).into())).await;
                        break "client protocol error";
                    }
                    Some(Ok(_)) => continue,
                };
                let frame = match Frame::decode_bounded(&bytes, wire::DEFAULT_MAX_FRAME as usize) {
                    Ok(f) if client_may_send(&f) => f,
                    Ok(f) => {
                        let e = format!("frame type {} is not allowed on a session stream", f.frame_type());
                        let _ = sink.send(Message::Binary(encode(&Frame::Close {
                            sid: client_sid, exit: Exit::Aborted(ErrorCode::PROTOCOL), reason: &e,
                        }).into())).await;
                        break "client protocol error";
                    }
                    Err(e) => {
                        let e = format!("malformed frame: {e}");
                        let _ = sink.send(Message::Binary(encode(&Frame::Close {
                            sid: client_sid, exit: Exit::Aborted(ErrorCode::PROTOCOL), reason: &e,
                        }).into())).await;
                        break "client protocol error";
                    }
                };
                if matches!(frame, Frame::Close { .. }) {
                    client_closed_session = true;
                }
                if agent.tx.send(forward(frame)).await.is_err() {
                    break "agent went away";
                }
            }
        }
    };
    if outcome != "ended" && !client_closed_session {
        // Ask the agent to stop the session; its Close frees the route.
        let _ = agent.tx.try_send(encode(&Frame::Close {
            sid: agent_sid,
            exit: Exit::Aborted(ErrorCode::TERMINATED),
            reason: outcome,
        }));
    }
    if outcome == "ended" {
        info!(session = %session.id, "session ended");
    } else {
        warn!(session = %session.id, "session stream ended: {outcome}");
    }
    let _ = sink.close().await;
}
