//! One relay connection's loop: the engine ([`AgentState`], which outlives the
//! connection) fed with what the relay sends, what sessions' tasks report and the
//! timer; what it transmits sent on this socket.
//!
//! What is here is the connection's own: its handshake (the challenge signed with
//! the agent's key, the activation code spent once the relay accepts it) and its
//! socket. The sessions, and what a lost link does to them, are
//! [`crate::state`]'s.

use std::time::Duration;

use agent_core::session::{AgentConfig, Event, Failure};
use agent_core::wire;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tracing::{error, info};

use crate::connect::RelaySocket;
use crate::identity::Identity;
use crate::state::AgentState;

/// The most a channel's input window grows to (it starts at 64 KiB).
pub const MAX_INPUT_WINDOW: u32 = 1 << 20;

/// How long a closing socket may take to say goodbye to the relay.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The engine's configuration on this agent.
pub(crate) fn engine_config() -> AgentConfig {
    AgentConfig {
        features: wire::features::SHELL
            | wire::features::EXEC
            | wire::features::FORWARD
            | wire::features::SSH_KEY
            | wire::features::RUN_AS
            | wire::features::RESUME,
        // A channel's input window grows with the credit returned (an upload through
        // a forward at the bandwidth-delay product); what a client may have in
        // flight, and so queue here, per channel.
        max_window: MAX_INPUT_WINDOW,
        ..AgentConfig::default()
    }
}

/// How a connection ended.
pub(crate) struct Outcome {
    /// The relay accepted the agent (the activation code, if any, is spent).
    pub(crate) authenticated: bool,
    /// Why it ended, for the log.
    pub(crate) reason: String,
}

type Sink = futures_util::stream::SplitSink<RelaySocket, Message>;

/// One connection: the state it borrows, and its handshake's part.
struct Conn<'s, 'a> {
    state: &'s mut AgentState<'a>,
    identity: &'s Identity,
    activation: &'s str,
    /// Where a pending activation code is kept; removed once the relay accepts us.
    code_file: &'s std::path::Path,
    authenticated: bool,
}

impl Conn<'_, '_> {
    /// Send everything the engine has to send, handing it more output as room
    /// frees, then forget the sessions and channels it is done with.
    async fn flush(&mut self, sink: &mut Sink) -> Result<(), String> {
        let mut sent = false;
        loop {
            self.state.pump();
            let mut any = false;
            while let Some(bytes) = self.state.poll_transmit().map_err(|e| e.to_string())? {
                feed(sink, bytes).await?;
                sent = true;
                any = true;
            }
            if !any {
                break;
            }
        }
        self.state.forget_ended();
        if sent {
            sink.flush().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn on_event(&mut self, ev: Event<'_>) -> Option<Failure> {
        match self.state.on_event(ev)? {
            Event::Challenge { nonce } => {
                let (id, account) = (self.identity, &self.state.ctx.default_account);
                let (key, sign) = (id.public_key(), |m: &[u8]| id.sign(m));
                let answer =
                    self.state
                        .engine
                        .answer_challenge(nonce, key, sign, self.activation, account);
                if let Err(e) = answer {
                    return Some(Failure::Auth(e));
                }
            }
            Event::Authenticated { agent_id } => {
                self.authenticated = true;
                if !self.activation.is_empty() {
                    let _ = std::fs::remove_file(self.code_file);
                }
                info!("connected to the relay as agent {agent_id}");
            }
            ev @ Event::PeerError { message, .. } => {
                error!("relay refused this agent: {message}");
                return Failure::of(&ev);
            }
            Event::ConnectionLost => return Some(Failure::Lost),
            // A session's: already acted on.
            _ => {}
        }
        None
    }
}

async fn feed(sink: &mut Sink, bytes: &[u8]) -> Result<(), String> {
    sink.feed(Message::Binary(bytes.to_vec().into()))
        .await
        .map_err(|e| e.to_string())
}

/// Serve one relay connection until it ends. The sessions go on in `state`: when
/// the connection ends, those the engine holds stay, the others are stopped.
pub(crate) async fn serve(
    ws: RelaySocket,
    state: &mut AgentState<'_>,
    identity: &Identity,
    activation: &str,
    code_file: &std::path::Path,
) -> Outcome {
    let (mut sink, mut stream) = ws.split();
    // Before the first flush: the new connection's `Hello` goes first on this socket.
    state.connected();
    let mut conn = Conn {
        state,
        identity,
        activation,
        code_file,
        authenticated: false,
    };
    let reason = loop {
        if let Err(e) = conn.flush(&mut sink).await {
            break format!("send failed: {e}");
        }
        if let Some(ev) = conn.state.engine.poll_event() {
            if let Some(f) = conn.on_event(ev) {
                break f.to_string();
            }
            continue;
        }
        if conn.state.engine.is_closed() {
            break "protocol error".into();
        }
        tokio::select! {
            m = stream.next() => {
                let bytes = match m {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) | None => break "relay closed the connection".into(),
                    Some(Err(e)) => break format!("read failed: {e}"),
                    Some(Ok(_)) => continue,
                };
                let now = conn.state.now();
                match conn.state.engine.handle_frame(now, &bytes) {
                    Ok(Some(ev)) => {
                        // The event borrows `bytes`; handle it before the next read.
                        if let Some(f) = conn.on_event(ev) {
                            break f.to_string();
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = conn.flush(&mut sink).await; // the Error frame
                        break Failure::Protocol(e).to_string();
                    }
                }
            }
            () = conn.state.step() => {}
        }
    };
    let authenticated = conn.authenticated;
    // At once, not when the next connection comes: the sessions the engine cannot
    // hold are stopped now (docs/protocol.md §8, "Holding").
    state.disconnected();
    // The sessions go on while the socket closes (its WebSocket `Close` is the last
    // thing sent on it).
    let _ = state
        .idle(tokio::time::timeout(CLOSE_WAIT, sink.close()))
        .await;
    Outcome {
        authenticated,
        reason,
    }
}
