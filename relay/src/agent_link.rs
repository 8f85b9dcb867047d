//! The relay's side of an agent connection: challenge-response authentication,
//! then routing of session frames between the agent and client streams.

use std::sync::Arc;
use std::time::Duration;

use agent_core::session::{auth_message, NONCE_LEN};
use agent_core::wire::{self, Bytes, ErrorCode, Exit, Frame, Hello};
use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::api::AppState;
use crate::audit::Event;
use crate::hub::{AgentHandle, Routed, AGENT_QUEUE};
use crate::secret::{random_bytes, Secret};
use crate::store::AgentRow;

/// Sending the refusal of a failed handshake must finish within this.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// An agent silent for this long is dead (it pings every 15 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Frames written to an agent link at most before a flush.
const WRITE_BATCH: usize = 64;

/// What an agent's handshake established.
struct Authenticated {
    agent: AgentRow,
    /// Its session capacity, within the relay's limit per agent.
    max_sessions: u16,
    /// The largest frame it accepts, within the protocol's bounds.
    max_frame: u32,
    /// The features of its `Hello`.
    features: u32,
    /// The account its sessions run as when they name none (its `Auth`).
    default_account: String,
}

/// Encode a frame into a fresh buffer.
pub fn encode(f: &Frame) -> Vec<u8> {
    let mut buf = vec![0u8; f.buffer_len()];
    let n = f.encode(&mut buf).unwrap_or(0);
    buf.truncate(n);
    buf
}

/// The relay's `Hello`.
pub fn relay_hello() -> Frame<'static> {
    Frame::Hello(Hello {
        version: agent_core::PROTOCOL_VERSION,
        max_frame: wire::DEFAULT_MAX_FRAME,
        max_sessions: 0,
        features: wire::features::SHELL
            | wire::features::EXEC
            | wire::features::FORWARD
            | wire::features::SSH_KEY
            | wire::features::RESUME,
    })
}

async fn recv_binary(
    ws: &mut futures_util::stream::SplitStream<WebSocket>,
) -> Option<axum::body::Bytes> {
    loop {
        match ws.next().await? {
            Ok(Message::Binary(b)) => return Some(b),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Serve one agent connection until it ends.
pub async fn serve(
    socket: WebSocket,
    state: AppState,
    peer: std::net::SocketAddr,
    admitted: Option<crate::server::Admitted>,
) {
    let (mut sink, mut stream) = socket.split();
    let nonce: [u8; NONCE_LEN] = random_bytes();
    // The whole handshake, our writes included, has one deadline: a peer that
    // neither answers nor reads must not keep its connection (see `server`).
    let deadline = state.config.limits.connections.agent_handshake_timeout;
    let authed = tokio::time::timeout(deadline, async {
        let hello = encode(&relay_hello());
        let challenge = encode(&Frame::Challenge {
            nonce: Bytes(&nonce),
        });
        if sink.send(Message::Binary(hello.into())).await.is_err()
            || sink.send(Message::Binary(challenge.into())).await.is_err()
        {
            return Err(None);
        }
        let authed = handshake(&mut stream, &state, &nonce).await.map_err(Some)?;
        let ok = encode(&Frame::AuthOk {
            agent_id: &authed.agent.id,
        });
        if sink.send(Message::Binary(ok.into())).await.is_err() {
            return Err(None);
        }
        Ok(authed)
    })
    .await
    .unwrap_or_else(|_| Err(Some("authentication timed out".to_string())));
    let Authenticated {
        agent,
        max_sessions,
        max_frame,
        features,
        default_account,
    } = match authed {
        Ok(a) => {
            // Authenticated: the link no longer counts against the caps on
            // unauthenticated connections (it held its place until now).
            if let Some(admitted) = &admitted {
                admitted.authenticated();
            }
            drop(admitted);
            a
        }
        Err(None) => return,
        Err(Some(msg)) => {
            warn!(%peer, "agent refused: {msg}");
            let refused = Event::new("-", "auth.agent.refused", "-")
                .from(peer.ip())
                .detail(serde_json::json!({ "why": msg }));
            if let Err(e) = state.audit.record(refused).await {
                warn!("{e}");
            }
            let f = encode(&Frame::Error {
                sid: 0,
                code: ErrorCode::AUTH,
                message: &msg,
            });
            // Bounded too: the refused peer may not be reading.
            let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
                let _ = sink.send(Message::Binary(f.into())).await;
                let _ = sink.close().await;
            })
            .await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<axum::body::Bytes>(AGENT_QUEUE);
    let (handle, mut kicked) = state.hub.register(
        &agent.id,
        &agent.name,
        max_sessions,
        max_frame,
        features,
        &default_account,
        tx,
    );
    // Revoked while this connection was authenticating: the revocation kicked only
    // the connection registered then, so this one checks again now that it is in
    // the hub (a revocation from here on kicks it).
    if !matches!(state.store.agent_revoked(&agent.id).await, Ok(None)) {
        warn!(agent = %agent.name, %peer, "agent refused: agent '{}' was revoked", agent.name);
        let _ = state.hub.unregister(&handle);
        return;
    }
    let online = Event::new(
        format!("agent:{}", agent.name),
        "auth.agent",
        agent.name.clone(),
    )
    .from(peer.ip())
    .detail(serde_json::json!({ "id": agent.id, "default_account": default_account }));
    if let Err(e) = state.audit.record(online).await {
        // Fail closed: an agent whose connection is not in the log serves nothing.
        warn!(agent = %agent.name, "{e}");
        let _ = state.hub.unregister(&handle);
        return;
    }
    let _ = state.store.touch_agent(&agent.id).await;
    info!(agent = %agent.name, id = %agent.id, %peer, max_sessions, max_frame, %default_account, "agent online");

    let writer = tokio::spawn(async move {
        // What is queued goes out together, then one flush: frames that pile up while
        // the link is busy (credit, small data) cost no write of their own.
        'link: while let Some(frame) = rx.recv().await {
            if sink.feed(Message::Binary(frame)).await.is_err() {
                break;
            }
            for _ in 0..WRITE_BATCH {
                let Ok(frame) = rx.try_recv() else { break };
                if sink.feed(Message::Binary(frame)).await.is_err() {
                    break 'link;
                }
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let reason = loop {
        let msg = tokio::select! {
            m = tokio::time::timeout(IDLE_TIMEOUT, recv_binary(&mut stream)) => m,
            _ = kicked.changed() => {
                break kicked.borrow().clone().unwrap_or_else(|| "hung up".into());
            }
        };
        let msg = match msg {
            Err(_) => break "no traffic for 60 s".to_string(),
            Ok(None) => break "connection closed".to_string(),
            Ok(Some(m)) => m,
        };
        if let Err(e) = route_from_agent(&state, &handle, msg).await {
            let f = encode(&Frame::Error {
                sid: 0,
                code: ErrorCode::PROTOCOL,
                message: &e,
            });
            let _ = handle.tx.try_send(f.into());
            break e;
        }
    };
    info!(agent = %agent.name, "agent offline: {reason}");
    let offline = Event::new(
        format!("agent:{}", agent.name),
        "agent.offline",
        agent.name.clone(),
    )
    .from(peer.ip())
    .detail(serde_json::json!({ "why": reason }));
    if let Err(e) = state.audit.record(offline).await {
        warn!(agent = %agent.name, "{e}");
    }
    // Resumable sessions wait for the agent's next connection; the others end,
    // each end on record before the client hears of it.
    for route in state.hub.unregister(&handle) {
        let _ = state
            .store
            .end_session(&route.session_id, "agent disconnected")
            .await;
        let _ = route.push(&Frame::Close {
            sid: route.client_sid,
            exit: Exit::Aborted(ErrorCode::AGENT_GONE),
            reason: "the agent disconnected",
        });
    }
    let _ = state.store.touch_agent(&agent.id).await;
    drop(handle);
    writer.abort();
}

async fn handshake(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    state: &AppState,
    nonce: &[u8; NONCE_LEN],
) -> Result<Authenticated, String> {
    let msg = recv_binary(stream).await.ok_or("closed during handshake")?;
    let hello = match Frame::decode_bounded(&msg, wire::DEFAULT_MAX_FRAME as usize) {
        Ok(Frame::Hello(h)) => h,
        Ok(_) => return Err("expected Hello".into()),
        Err(e) => return Err(format!("bad Hello: {e}")),
    };
    if hello.version != agent_core::PROTOCOL_VERSION {
        return Err(format!(
            "agent speaks protocol version {}, relay speaks {}",
            hello.version,
            agent_core::PROTOCOL_VERSION
        ));
    }
    let msg = recv_binary(stream).await.ok_or("closed during handshake")?;
    let auth = match Frame::decode_bounded(&msg, wire::DEFAULT_MAX_FRAME as usize) {
        Ok(Frame::Auth(a)) => a,
        Ok(_) => return Err("expected Auth".into()),
        Err(e) => return Err(format!("bad Auth: {e}")),
    };
    let mut buf = [0u8; 64];
    let signed = auth_message(nonce, &mut buf).ok_or("bad nonce")?;
    let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, auth.public_key.0);
    if auth.public_key.0.len() != 32 || key.verify(signed, auth.signature.0).is_err() {
        return Err("agent key signature does not verify".into());
    }
    // Before the store: a refused agent must not use up its activation code.
    let default_account = default_account(auth.account)?;
    let agent = if auth.activation.is_empty() {
        state
            .store
            .agent_by_key(auth.public_key.0)
            .await
            .map_err(|e| format!("store error: {e}"))?
            .ok_or("unknown agent key: register this agent with --activate CODE")?
    } else {
        let code = Secret::from_string(auth.activation.to_string());
        state
            .store
            .activate(&code, auth.public_key.0)
            .await
            .map_err(|e| format!("store error: {e}"))?
            .map_err(|e| e.to_string())?
    };
    let max = hello
        .max_sessions
        .min(state.config.limits.max_sessions_per_agent);
    let max_frame = hello
        .max_frame
        .clamp(wire::MIN_MAX_FRAME, wire::DEFAULT_MAX_FRAME);
    if state
        .store
        .agent_revoked(&agent.id)
        .await
        .map_err(|e| format!("store error: {e}"))?
        .is_some()
    {
        return Err(format!("agent '{}' was revoked", agent.name));
    }
    Ok(Authenticated {
        agent,
        max_sessions: max,
        max_frame,
        features: hello.features,
        default_account,
    })
}

/// The default account of an agent's `Auth`: the account its sessions run as when
/// they name none, which the relay's policies decide on. An agent must name one (it
/// may not leave it to be guessed), whole and valid by `wire::account_valid`.
fn default_account(account: &str) -> Result<String, String> {
    let why = if account.is_empty() {
        "empty (an agent names the account its sessions run as when they name none)".into()
    } else if !wire::account_valid(account) {
        format!(
            "not an account name (at most {} bytes of letters, digits, . _ - @ $, \
             not starting with -)",
            wire::ACCOUNT_MAX
        )
    } else {
        return Ok(account.to_string());
    };
    Err(format!("agent sent an invalid default account: {why}"))
}

/// The session of a `Close` that does not decode (a newer `Exit` variant), if `msg`
/// is one.
fn unreadable_close(msg: &[u8]) -> Option<u32> {
    match wire::peek_session(msg) {
        Some((11, sid)) => Some(sid),
        _ => None,
    }
}

/// Route one frame from the agent. `Err` is a connection-level protocol violation.
async fn route_from_agent(
    state: &AppState,
    handle: &Arc<AgentHandle>,
    msg: axum::body::Bytes,
) -> Result<(), String> {
    let frame = match Frame::decode_bounded(&msg, wire::DEFAULT_MAX_FRAME as usize) {
        Ok(f) => f,
        Err(agent_core::DecodeError::UnknownFrame { frame_type }) => {
            debug!("skipping unknown frame type {frame_type}");
            return Ok(());
        }
        Err(e) => {
            // A newer agent's `Close` with an exit this relay cannot read ends that
            // session, with what can be said; anything else malformed ends the link.
            let Some(sid) = unreadable_close(&msg) else {
                return Err(format!("malformed frame from agent: {e}"));
            };
            if let Some(route) = handle.remove_route(sid) {
                let why = "the agent ended the session with an exit status this relay cannot read";
                let _ = state.store.end_session(&route.session_id, why).await;
                let close = Frame::Close {
                    sid,
                    exit: Exit::Aborted(ErrorCode::PROTOCOL),
                    reason: why,
                };
                let _ = route.push(&close);
            }
            return Ok(());
        }
    };
    match frame {
        Frame::Ping { nonce } => {
            let _ = handle.tx.try_send(encode(&Frame::Pong { nonce }).into());
            Ok(())
        }
        Frame::Pong { .. } => Ok(()),
        Frame::Error {
            sid: 0, message, ..
        } => {
            warn!(agent = %handle.name, "agent reported: {message}");
            Ok(())
        }
        Frame::Accept { sid, .. }
        | Frame::Data { sid, .. }
        | Frame::DataAt { sid, .. }
        | Frame::Ack { sid, .. }
        | Frame::Resume { sid, .. }
        | Frame::Credit { sid, .. }
        | Frame::Eof { sid, .. }
        | Frame::ChannelAccept { sid, .. }
        | Frame::ChannelReject { sid, .. }
        | Frame::ChannelClose { sid, .. }
        | Frame::Error { sid, .. } => {
            let Some(route) = handle.route(sid) else {
                return Ok(()); // the client is gone; the agent learns from our Close
            };
            // The frame goes on as it came, but for its session id.
            let routed = Routed::of(&frame).readdress(msg, route.client_sid);
            if !route.push_routed(routed) {
                // The client cannot keep up (or left): end only this session. Dropping
                // the route tells its stream task, which tells the client why.
                handle.remove_route(sid);
                let _ = handle.tx.try_send(
                    encode(&Frame::Close {
                        sid,
                        exit: Exit::Aborted(ErrorCode::TERMINATED),
                        reason: "client stream closed or too slow",
                    })
                    .into(),
                );
                let _ = state
                    .store
                    .end_session(&route.session_id, "client too slow: relay buffer full")
                    .await;
            }
            Ok(())
        }
        Frame::Close { sid, exit, reason } => {
            if let Some(route) = handle.remove_route(sid) {
                let outcome = crate::record::format::exit_line(exit, reason);
                // On record before the client hears of it.
                let _ = state.store.end_session(&route.session_id, &outcome).await;
                let _ = route.push(&frame);
            }
            Ok(())
        }
        Frame::Reject { sid, reason, .. } => {
            if let Some(route) = handle.remove_route(sid) {
                let _ = state
                    .store
                    .end_session(&route.session_id, &format!("rejected: {reason}"))
                    .await;
                let _ = route.push(&frame);
            }
            Ok(())
        }
        other => Err(format!(
            "agent sent frame type {} after authentication",
            other.frame_type()
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_close_with_an_unknown_exit_names_its_session() {
        // Close (11), sid 300, an exit variant this version does not know (7).
        assert_eq!(
            super::unreadable_close(&[0x0b, 0xac, 0x02, 0x07, 0x00]),
            Some(300)
        );
        // Another frame type, or no session id at all: not one.
        assert_eq!(super::unreadable_close(&[0x07, 0x01, 0x09]), None);
        assert_eq!(super::unreadable_close(&[0x0b]), None);
    }

    use super::*;

    #[test]
    fn an_agent_must_name_a_valid_default_account() {
        assert_eq!(default_account("sesame-user").unwrap(), "sesame-user");
        assert_eq!(default_account("root").unwrap(), "root");
        assert_eq!(
            default_account("").unwrap_err(),
            "agent sent an invalid default account: empty (an agent names the account its \
             sessions run as when they name none)"
        );
        let long = "a".repeat(wire::ACCOUNT_MAX + 1);
        for bad in [
            "-oProxyCommand=x",
            "../root",
            "a b",
            "root\n",
            long.as_str(),
        ] {
            assert_eq!(
                default_account(bad).unwrap_err(),
                "agent sent an invalid default account: not an account name (at most 64 \
                 bytes of letters, digits, . _ - @ $, not starting with -)",
                "{bad:?}"
            );
        }
        // Never clipped: the longest name is taken whole.
        assert_eq!(default_account(&long[1..]).unwrap(), &long[1..]);
    }
}
