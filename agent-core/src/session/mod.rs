//! The agent's protocol engine: handshake, session table, flow control, keepalive.
//!
//! [`Agent`] is what both agents (Linux and embedded) drive. It holds up to `N`
//! sessions (a const generic: 20 on Linux, 4 on a microcontroller) and refuses the
//! next `Open` itself, with a `Reject` naming the limit, so the driver never spawns
//! anything for it.
//!
//! Driver loop, as in quinn-proto: feed every received message to
//! [`Agent::handle_frame`] and act on the returned [`Event`]; call
//! [`Agent::handle_timeout`] when the instant from [`Agent::poll_timeout`] passes;
//! after any input drain [`Agent::poll_transmit`], re-arm the timer from
//! [`Agent::poll_timeout`] and drain [`Agent::poll_event`].
//!
//! The engine owns every byte a session sends. The driver writes a channel's output
//! into it ([`Agent::send_slice`], which takes what fits in the channel's
//! [`Buffer`]), says when that output ends ([`Agent::finish`]) and when the
//! session's work is over ([`Agent::exited`]); `poll_transmit` sends the output
//! within credit and rate, round-robin across sessions and channels, then the
//! `Eof`, then the `ChannelClose` or `Close`. The engine decides when a channel and
//! a session are over. Sessions and channels are named by handles that carry a
//! generation: a stale handle (of a session that ended, whose place was reused)
//! is refused ([`UseError::Stale`]), never applied to the new one.

mod failure;
pub(crate) mod ring;
pub(crate) mod slot;

pub use failure::{Failure, MESSAGE_MAX};
pub use ring::Buffer;
use ring::Storage;

use core::fmt::Write as _;

use heapless::{Deque, String};

use crate::error::ProtocolError;
use crate::limits::TokenBucket;
use crate::time::{Duration, Instant};
use crate::wire::{self, Auth, Bytes, ErrorCode, Exit, Frame, Hello, Kind, Stream, AUTH_CONTEXT};
use slot::{ChanState, Channel, Slot, SlotState};

/// Longest reason string the engine stores for a `Reject` or `Close`.
pub const REASON_MAX: usize = 120;
/// Longest activation code the engine carries.
pub const ACTIVATION_MAX: usize = 64;
/// Length of the authentication challenge nonce.
pub const NONCE_LEN: usize = 32;
/// A rate-limited session is woken when this much output may go (or a whole bucket,
/// if smaller): frames stay large and wake-ups few.
const RATE_WAKE_BYTES: usize = 4096;

/// Tunables of an [`Agent`].
#[derive(Debug, Clone, Copy)]
pub struct AgentConfig {
    /// Largest frame this side accepts (announced in `Hello`).
    pub max_frame: u32,
    /// Receive window per channel, in bytes, announced when it opens.
    pub window: u32,
    /// The most a channel's receive window grows to, with the credit the engine
    /// returns as the driver writes input out ([`crate::flow::RecvWindow::growing`]);
    /// `window` or less (0, the default): it does not grow. What the peer may have in flight, and so
    /// what waits in the driver's input queues, per channel.
    pub max_window: u32,
    /// Send a `Ping` after this long without sending anything.
    pub keepalive: Duration,
    /// Declare the connection dead after this long without receiving anything.
    pub dead_after: Duration,
    /// Give up on a handshake that has not finished after this long.
    pub handshake_timeout: Duration,
    /// Feature bits announced in `Hello`.
    pub features: u32,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            max_frame: wire::DEFAULT_MAX_FRAME,
            window: 64 * 1024,
            max_window: 0,
            keepalive: Duration::from_secs(15),
            dead_after: Duration::from_secs(45),
            handshake_timeout: Duration::from_secs(20),
            features: wire::features::SHELL | wire::features::EXEC,
        }
    }
}

/// A session of this connection, as the driver names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionHandle {
    index: u16,
    gen: u32,
    sid: u32,
}

impl SessionHandle {
    /// The session id on the wire (for logs).
    pub fn sid(&self) -> u32 {
        self.sid
    }

    /// Channel 0, the one of a shell or exec session.
    pub fn main(self) -> ChannelHandle {
        ChannelHandle {
            session: self,
            ch: 0,
            gen: self.gen,
        }
    }
}

/// A channel of a session, as the driver names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelHandle {
    session: SessionHandle,
    ch: u16,
    gen: u32,
}

impl ChannelHandle {
    /// Its session.
    pub fn session(&self) -> SessionHandle {
        self.session
    }

    /// The channel id on the wire (for logs).
    pub fn ch(&self) -> u16 {
        self.ch
    }
}

/// A call the engine cannot act on: the driver's mistake, never the peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UseError {
    /// The session or channel is gone (it ended, and perhaps its place was reused).
    Stale,
    /// Not in a state that allows it (output before the session is accepted,
    /// accepting a session twice).
    NotNow,
    /// Output after [`Agent::finish`] or [`Agent::exited`].
    Finished,
    /// The buffer handed to [`Agent::poll_transmit`] cannot hold a largest frame.
    BufferTooSmall {
        /// Bytes it must hold.
        needed: usize,
    },
}

impl core::fmt::Display for UseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            UseError::Stale => f.write_str("the session or channel is gone"),
            UseError::NotNow => f.write_str("not allowed in the session's state"),
            UseError::Finished => f.write_str("output after its end"),
            UseError::BufferTooSmall { needed } => {
                write!(
                    f,
                    "transmit buffer too small (a frame may take {needed} bytes)"
                )
            }
        }
    }
}

/// What happened, as a result of a received frame or a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// The relay sent its challenge: sign [`auth_message`] and call [`Agent::authenticate`]
    /// with the agent's default account.
    Challenge {
        /// The nonce to sign.
        nonce: &'a [u8],
    },
    /// The relay accepted the agent.
    Authenticated {
        /// The agent's id.
        agent_id: &'a str,
    },
    /// A session was requested: start it, then [`Agent::accept`] or [`Agent::reject`].
    Open {
        /// The session.
        session: SessionHandle,
        /// What to run.
        kind: Kind<'a>,
        /// The account to run it as (empty: the driver's default account); already
        /// checked with [`wire::account_valid`]. The driver refuses an account it does
        /// not have (`NO_SUCH_USER`) or cannot switch to (`DENIED`), never falls back.
        account: &'a str,
    },
    /// Input for a channel; call [`Agent::consumed`] once written out.
    Data {
        /// The channel (its session's [`SessionHandle::main`] for shell and exec).
        channel: ChannelHandle,
        /// The bytes.
        data: &'a [u8],
    },
    /// The peer will send no more input on the channel.
    Eof {
        /// The channel.
        channel: ChannelHandle,
    },
    /// A forward session wants a connection to `host:port`: connect, then
    /// [`Agent::accept_channel`] or [`Agent::reject_channel`].
    ChannelOpen {
        /// The channel.
        channel: ChannelHandle,
        /// Destination host.
        host: &'a str,
        /// Destination port.
        port: u16,
    },
    /// The peer aborted a channel: drop its connection, then [`Agent::close_channel`].
    ChannelClose {
        /// The channel.
        channel: ChannelHandle,
    },
    /// The terminal was resized.
    Resize {
        /// The session.
        session: SessionHandle,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// Deliver a signal to the session's process group.
    Signal {
        /// The session.
        session: SessionHandle,
        /// Signal number.
        signal: u8,
    },
    /// The peer asked to end the session: stop its work, then [`Agent::exited`]. It
    /// may come for a session the driver has not answered yet (still starting it, e.g.
    /// on another thread): the driver drops what it was starting and calls
    /// [`Agent::reject`] (an [`Agent::accept`] then has no effect).
    Terminate {
        /// The session.
        session: SessionHandle,
    },
    /// The peer broke the protocol within one session: stop its work, then
    /// [`Agent::exited`]; the engine closes it as aborted, with the error's code.
    /// Other sessions are unaffected.
    Abort {
        /// The session.
        session: SessionHandle,
        /// What the peer did.
        error: ProtocolError,
    },
    /// The relay reported a connection-level error and will close the connection.
    PeerError {
        /// Code.
        code: ErrorCode,
        /// Message for a person.
        message: &'a str,
    },
    /// Nothing was received for too long, or the handshake timed out: reconnect.
    ConnectionLost,
}

/// Why [`Agent::authenticate`] sent nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// The default account is empty or not an account name
    /// ([`wire::account_valid`]); it is never clipped, since a prefix may name
    /// another account.
    Account,
    /// The challenge's nonce is not [`NONCE_LEN`] bytes ([`Agent::answer_challenge`]).
    Nonce,
}

impl core::fmt::Display for AuthError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AuthError::Account => write!(
                f,
                "the default account must be an account name (at most {} bytes of letters, digits, . _ - @ $)",
                wire::ACCOUNT_MAX
            ),
            AuthError::Nonce => write!(f, "the challenge's nonce is not {NONCE_LEN} bytes"),
        }
    }
}

/// The message an agent signs to answer a challenge: [`AUTH_CONTEXT`] then the nonce.
/// Returns `None` when the nonce does not have [`NONCE_LEN`] bytes.
pub fn auth_message<'b>(nonce: &[u8], buf: &'b mut [u8; 64]) -> Option<&'b [u8]> {
    if nonce.len() != NONCE_LEN {
        return None;
    }
    let n = AUTH_CONTEXT.len();
    buf[..n].copy_from_slice(AUTH_CONTEXT);
    buf[n..n + NONCE_LEN].copy_from_slice(nonce);
    Some(&buf[..n + NONCE_LEN])
}

/// Connection states, one struct each (rustls style); transitions consume the state.
/// One lives in each [`Agent`], in place (no allocation): holding the pending `Auth`
/// elsewhere would take the same bytes.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Conn {
    /// Waiting for the relay's `Hello`.
    AwaitHello,
    /// Hello exchanged; waiting for `Challenge`.
    AwaitChallenge { peer: Hello },
    /// Challenge handed to the driver; waiting for [`Agent::authenticate`].
    Signing { peer: Hello },
    /// `Auth` to transmit, then wait for `AuthOk`.
    AwaitAuthOk {
        peer: Hello,
        auth: Option<PendingAuth>,
    },
    /// Sessions may be opened.
    Ready { peer: Hello },
    /// The connection is over; the driver should drop it and reconnect.
    Closed,
}

#[derive(Debug)]
struct PendingAuth {
    key: [u8; 32],
    sig: [u8; 64],
    activation: String<ACTIVATION_MAX>,
    account: String<{ wire::ACCOUNT_MAX }>,
}

#[derive(Debug)]
enum Ctrl {
    Hello,
    Ping(u64),
    Pong(u64),
    Reject(u32, ErrorCode, String<REASON_MAX>),
    ChannelReject(u32, u16, ErrorCode, String<REASON_MAX>),
    Error(ErrorCode, &'static str),
    /// A `Suspend` for a session this agent does not have: its `Close`.
    Gone(u32),
}

/// The agent side of one relay connection, with up to `N` sessions of up to `C`
/// channels each, each channel's output waiting in a `B` (1 KiB by default).
#[derive(Debug)]
pub struct Agent<const N: usize, const C: usize = 1, B: Buffer = [u8; 1024]> {
    config: AgentConfig,
    conn: Conn,
    slots: [Option<Slot<C, B>>; N],
    /// The generation of the next session or channel.
    next_gen: u32,
    ctrl: Deque<Ctrl, 8>,
    events: Deque<Event<'static>, 2>,
    started: Instant,
    last_rx: Instant,
    last_tx: Instant,
    ping_seq: u64,
    /// Round-robin start for fairness among sessions in `poll_transmit`.
    cursor: usize,
    /// How the latest resumable sessions ended: their `Close` is sent again if the
    /// relay asks for one after a cut that may have lost it.
    ended: Deque<(u32, Exit), N>,
    /// `Resumable`s for sessions whose `Open` has not come yet (the relay sends
    /// each first, so that nothing of its session goes out before it is resumable).
    resumable_next: Deque<(u32, u32), N>,
}

impl<const N: usize, const C: usize, B: Buffer> Agent<N, C, B> {
    /// A new connection; its `Hello` is queued for `poll_transmit`.
    pub fn new(config: AgentConfig, now: Instant) -> Self {
        let mut ctrl = Deque::new();
        let _ = ctrl.push_back(Ctrl::Hello);
        Agent {
            config,
            conn: Conn::AwaitHello,
            slots: [const { None }; N],
            next_gen: 0,
            ctrl,
            events: Deque::new(),
            started: now,
            last_rx: now,
            last_tx: now,
            ping_seq: 0,
            cursor: 0,
            ended: Deque::new(),
            resumable_next: Deque::new(),
        }
    }

    /// Sessions currently in the table.
    pub fn session_count(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Whether authentication finished and sessions may be opened.
    pub fn is_ready(&self) -> bool {
        matches!(self.conn, Conn::Ready { .. })
    }

    /// Whether the connection is over (error or timeout): drop it and reconnect.
    pub fn is_closed(&self) -> bool {
        matches!(self.conn, Conn::Closed)
    }

    fn peer_max_frame(&self) -> u32 {
        match &self.conn {
            Conn::AwaitChallenge { peer }
            | Conn::Signing { peer }
            | Conn::AwaitAuthOk { peer, .. }
            | Conn::Ready { peer } => peer.max_frame,
            _ => wire::MIN_MAX_FRAME,
        }
    }

    /// Feed one received message. Connection-scoped violations return `Err`, after
    /// which the engine is closed and queues an `Error` frame for the peer.
    pub fn handle_frame<'a>(
        &mut self,
        now: Instant,
        msg: &'a [u8],
    ) -> Result<Option<Event<'a>>, ProtocolError> {
        self.last_rx = now;
        let frame = match Frame::decode_bounded(msg, self.config.max_frame as usize) {
            Ok(f) => f,
            // A newer peer may send frame types we do not know: skip them.
            Err(crate::DecodeError::UnknownFrame { .. }) => return Ok(None),
            // A session request or end we cannot read (a newer `Kind` or `Exit`):
            // only that session is refused or ended.
            Err(e @ (crate::DecodeError::Malformed | crate::DecodeError::Truncated))
                if self.is_ready() =>
            {
                return match wire::peek_session(msg) {
                    Some((4, sid)) if self.slot_mut(sid).is_none() => {
                        let mut why = String::new();
                        let _ = why.push_str(
                            "cannot read this session request (a newer kind of session?)",
                        );
                        self.push_ctrl(Ctrl::Reject(sid, ErrorCode::UNSUPPORTED, why))
                            .map(|()| None)
                            .map_err(|e| self.fail(e))
                    }
                    Some((11, sid)) => Ok(self.slot_mut(sid).and_then(|slot| {
                        (slot.accepts_input() || slot.state == SlotState::Requested).then(|| {
                            slot.state = SlotState::Terminating;
                            slot.end_suspension();
                            Event::Terminate {
                                session: slot.handle(),
                            }
                        })
                    })),
                    _ => Err(self.fail(e.into())),
                };
            }
            Err(e) => return Err(self.fail(e.into())),
        };
        match frame {
            Frame::Ping { nonce } => {
                return match self.push_ctrl(Ctrl::Pong(nonce)) {
                    Ok(()) => Ok(None),
                    Err(e) => Err(self.fail(e)),
                };
            }
            Frame::Pong { .. } => return Ok(None),
            Frame::Error {
                sid: 0,
                code,
                message,
            } => {
                self.conn = Conn::Closed;
                return Ok(Some(Event::PeerError { code, message }));
            }
            _ => {}
        }
        let conn = core::mem::replace(&mut self.conn, Conn::Closed);
        let (next, result) = match (conn, frame) {
            (Conn::AwaitHello, Frame::Hello(peer)) => {
                if peer.version != crate::PROTOCOL_VERSION {
                    return Err(self.fail(ProtocolError::Version { peer: peer.version }));
                }
                let mut peer = peer;
                peer.max_frame = peer.max_frame.max(wire::MIN_MAX_FRAME);
                (Conn::AwaitChallenge { peer }, Ok(None))
            }
            (Conn::AwaitChallenge { peer }, Frame::Challenge { nonce }) => {
                if nonce.0.len() != NONCE_LEN {
                    return Err(self.fail(ProtocolError::Decode(crate::DecodeError::Malformed)));
                }
                (
                    Conn::Signing { peer },
                    Ok(Some(Event::Challenge { nonce: nonce.0 })),
                )
            }
            (Conn::AwaitAuthOk { peer, auth: None }, Frame::AuthOk { agent_id }) => (
                Conn::Ready { peer },
                Ok(Some(Event::Authenticated { agent_id })),
            ),
            (Conn::Ready { peer }, f) => (Conn::Ready { peer }, self.session_frame(now, f)),
            (_, f) => {
                return Err(self.fail(ProtocolError::UnexpectedFrame {
                    frame_type: f.frame_type(),
                }))
            }
        };
        self.conn = next;
        match result {
            Err(e) => Err(self.fail(e)),
            ok => ok,
        }
    }

    fn fail(&mut self, e: ProtocolError) -> ProtocolError {
        self.conn = Conn::Closed;
        self.ctrl.clear();
        let _ = self
            .ctrl
            .push_back(Ctrl::Error(ErrorCode::PROTOCOL, "protocol violation"));
        e
    }

    fn push_ctrl(&mut self, c: Ctrl) -> Result<(), ProtocolError> {
        self.ctrl
            .push_back(c)
            .map_err(|_| ProtocolError::TooManyPending)
    }

    fn slot_mut(&mut self, sid: u32) -> Option<&mut Slot<C, B>> {
        self.slots.iter_mut().flatten().find(|s| s.sid == sid)
    }

    /// The session of a handle, if it is still the one the handle names.
    fn slot_of(&mut self, h: SessionHandle) -> Result<&mut Slot<C, B>, UseError> {
        self.slots
            .get_mut(h.index as usize)
            .and_then(Option::as_mut)
            .filter(|s| s.gen == h.gen)
            .ok_or(UseError::Stale)
    }

    /// The channel of a handle, if it is still the one the handle names.
    fn chan_of(&mut self, h: ChannelHandle) -> Result<&mut Channel<B>, UseError> {
        self.slot_of(h.session)?
            .chan(h.ch)
            .filter(|c| c.gen == h.gen)
            .ok_or(UseError::Stale)
    }

    fn gen(&mut self) -> u32 {
        self.next_gen = self.next_gen.wrapping_add(1);
        self.next_gen
    }

    fn open_session<'a>(
        &mut self,
        sid: u32,
        window: u32,
        kind: Kind<'a>,
        account: &'a str,
    ) -> Result<Option<Event<'a>>, ProtocolError> {
        if self.slot_mut(sid).is_some() {
            // A relay that lost track of a session this agent still holds (it may
            // be held for a resume): only the new one is refused, nothing else
            // on the link is harmed.
            let mut reason = String::new();
            let _ = write!(reason, "session {sid} is already open on this agent");
            self.push_ctrl(Ctrl::Reject(sid, ErrorCode::PROTOCOL, reason))?;
            return Ok(None);
        }
        // The id is in use again: the old session's end is no longer asked for.
        let _ = take_matching(&mut self.ended, sid);
        let needed = match kind {
            Kind::Shell { .. } => wire::features::SHELL,
            Kind::Exec { .. } => wire::features::EXEC,
            Kind::Forward => wire::features::FORWARD,
            Kind::SshKey { .. } => wire::features::SSH_KEY,
        };
        let forward = matches!(kind, Kind::Forward);
        let mut reason = String::new();
        let free = self.slots.iter().position(Option::is_none);
        let code = if self.config.features & needed == 0 || (forward && C < 2) {
            let _ = reason.push_str("this agent does not support this kind of session");
            ErrorCode::UNSUPPORTED
        } else if !wire::account_valid(account) {
            let _ = write!(
                reason,
                "not a valid account name (at most {} bytes of letters, digits, . _ - @ $)",
                wire::ACCOUNT_MAX
            );
            ErrorCode::NO_SUCH_USER
        } else if let Some(index) = free {
            let gen = self.gen();
            let (peer, ours) = (window, (self.config.window, self.config.max_window));
            let mut slot = Slot::new((sid, index as u16, gen), forward, peer, ours);
            if let Some(hold) = take_matching(&mut self.resumable_next, sid) {
                slot.make_resumable(hold);
            }
            let session = slot.handle();
            self.slots[index] = Some(slot);
            return Ok(Some(Event::Open {
                session,
                kind,
                account,
            }));
        } else {
            let _ = write!(
                reason,
                "agent session limit reached ({N} of {N} sessions in use)"
            );
            ErrorCode::SESSION_LIMIT
        };
        self.push_ctrl(Ctrl::Reject(sid, code, reason))?;
        Ok(None)
    }

    fn open_channel<'a>(
        &mut self,
        sid: u32,
        ch: u16,
        window: u32,
        host: &'a str,
        port: u16,
    ) -> Result<Option<Event<'a>>, ProtocolError> {
        let our_window = (self.config.window, self.config.max_window);
        let gen = self.gen();
        let Some(slot) = self.slot_mut(sid) else {
            return Ok(None);
        };
        let refused = match slot.state {
            SlotState::Requested => Some("the session is not open yet"),
            SlotState::Open if slot.exit.is_some() => Some("the session is ending"),
            _ => None,
        };
        if slot.suspended {
            // It came after this side said which channels it has (the relay had
            // it queued): not opened, so the client, not finding it named, sends
            // it again after the resume.
            return Ok(None);
        }
        let forward = slot.forward;
        if let Some(why) = refused.filter(|_| forward) {
            let code = ErrorCode::UNREACHABLE;
            self.push_ctrl(Ctrl::ChannelReject(sid, ch, code, truncate(why)))?;
            return Ok(None);
        }
        if !slot.accepts_input() {
            return Ok(None);
        }
        if !slot.forward || ch == 0 {
            return Ok(slot.abort(ProtocolError::UnknownChannel { sid, ch }));
        }
        if slot.chan(ch).is_some() {
            return Ok(slot.abort(ProtocolError::DuplicateChannel { sid, ch }));
        }
        let session = slot.handle();
        let resumable = slot.hold.is_some();
        slot.forget_tombstone(ch);
        if let Some(free) = slot.channels.iter_mut().find(|c| c.is_none()) {
            let windows = (window, our_window);
            let mut c = Channel::with_buffer(
                ch,
                gen,
                ChanState::Requested,
                windows,
                Storage::forward(resumable),
            );
            c.resumable = resumable;
            *free = Some(c);
            return Ok(Some(Event::ChannelOpen {
                channel: ChannelHandle { session, ch, gen },
                host,
                port,
            }));
        }
        let mut reason = String::new();
        let _ = write!(
            reason,
            "channel limit reached ({C} connections in this session)"
        );
        self.push_ctrl(Ctrl::ChannelReject(
            sid,
            ch,
            ErrorCode::CHANNEL_LIMIT,
            reason,
        ))?;
        Ok(None)
    }

    /// `Data` (no offset: it follows what came) or `DataAt` for a channel.
    fn data_frame<'a>(
        &mut self,
        sid: u32,
        ch: u16,
        offset: Option<u64>,
        data: &'a [u8],
    ) -> Option<Event<'a>> {
        // Late data for a session that already ended is dropped.
        let slot = self.slot_mut(sid)?;
        if !slot.accepts_input() {
            return None;
        }
        let (forward, session) = (slot.forward, slot.handle());
        let Some(chan) = slot.chan(ch) else {
            // A forward channel that just closed may still receive data.
            return if forward {
                None
            } else {
                slot.abort(ProtocolError::UnknownChannel { sid, ch })
            };
        };
        if !chan.accepts_input() {
            return None;
        }
        let past = offset.is_none_or(|o| {
            o.checked_add(data.len() as u64)
                .is_none_or(|end| end > chan.received)
        });
        if chan.peer_eof && past {
            return slot.abort(ProtocolError::DataAfterEof { sid });
        }
        match chan.receive(offset, data) {
            Ok(Some(data)) => {
                let gen = chan.gen;
                Some(Event::Data {
                    channel: ChannelHandle { session, ch, gen },
                    data,
                })
            }
            Ok(None) => None,
            Err(_) => slot.abort(ProtocolError::FlowControl { sid }),
        }
    }

    fn session_frame<'a>(
        &mut self,
        now: Instant,
        f: Frame<'a>,
    ) -> Result<Option<Event<'a>>, ProtocolError> {
        match f {
            Frame::Limit { sid, rate } => {
                if let Some(slot) = self.slot_mut(sid) {
                    let window = slot.chan(0).map_or(u32::MAX, |c| c.send.credit().max(1));
                    slot.bucket = (rate > 0)
                        .then(|| TokenBucket::new(rate, TokenBucket::burst_for(rate, window), now));
                    slot.rate_blocked = false;
                }
                Ok(None)
            }
            Frame::Open {
                sid,
                window,
                kind,
                account,
            } => self.open_session(sid, window, kind, account),
            Frame::ChannelOpen {
                sid,
                ch,
                window,
                host,
                port,
            } => self.open_channel(sid, ch, window, host, port),
            Frame::Data { sid, ch, data, .. } => Ok(self.data_frame(sid, ch, None, data.0)),
            Frame::DataAt {
                sid,
                ch,
                offset,
                data,
                ..
            } => Ok(self.data_frame(sid, ch, Some(offset), data.0)),
            Frame::Resumable { sid, hold, .. } => {
                match self.slot_mut(sid) {
                    Some(slot) => slot.make_resumable(hold),
                    None => {
                        if self.resumable_next.is_full() {
                            self.resumable_next.pop_front();
                        }
                        let _ = self.resumable_next.push_back((sid, hold));
                    }
                }
                Ok(None)
            }
            Frame::Suspend { sid } => {
                if !self.slot_mut(sid).is_some_and(|slot| slot.suspend(now)) {
                    // The relay remembers a session this agent no longer has (it
                    // ended while the link was down, or the agent restarted), or one
                    // that cannot be held: say it is over.
                    self.push_ctrl(Ctrl::Gone(sid))?;
                }
                Ok(None)
            }
            Frame::Resume {
                sid,
                ch,
                offset,
                limit,
                eof,
                ..
            } => Ok(self
                .slot_mut(sid)
                .and_then(|slot| slot.resume(ch, offset, limit, eof))),
            Frame::Ack { sid, ch, offset } => {
                let Some(slot) = self.slot_mut(sid).filter(|s| s.accepted) else {
                    return Ok(None);
                };
                match slot.chan(ch).map(|c| c.on_ack(offset)) {
                    Some(Err(())) => Ok(slot.abort(ProtocolError::ResumeOffset { sid })),
                    _ => Ok(None),
                }
            }
            Frame::Credit { sid, ch, bytes } => {
                // Credit matters to a session that runs (or ends); one being
                // refused or not yet answered sends nothing.
                let Some(slot) = self.slot_mut(sid).filter(|s| s.accepted) else {
                    return Ok(None);
                };
                let forward = slot.forward;
                let Some(chan) = slot.chan(ch) else {
                    return Ok(if forward {
                        None
                    } else {
                        slot.abort(ProtocolError::UnknownChannel { sid, ch })
                    });
                };
                if chan.send.grant(bytes).is_err() {
                    return Ok(slot.abort(ProtocolError::CreditOverflow { sid }));
                }
                Ok(None)
            }
            Frame::Eof { sid, ch } => match self.slot_mut(sid) {
                Some(slot) if slot.accepts_input() => {
                    let session = slot.handle();
                    match slot.chan(ch) {
                        Some(chan) if chan.accepts_input() && !chan.peer_eof => {
                            if chan.peer_ended().is_err() {
                                return Ok(slot.abort(ProtocolError::ResumeOffset { sid }));
                            }
                            let gen = chan.gen;
                            Ok(Some(Event::Eof {
                                channel: ChannelHandle { session, ch, gen },
                            }))
                        }
                        _ => Ok(None),
                    }
                }
                _ => Ok(None),
            },
            Frame::ChannelClose { sid, ch, .. } => match self.slot_mut(sid) {
                // Channel 0 is its session's: it ends with `Close`, never alone.
                Some(slot) if slot.accepts_input() && (ch == 0 || !slot.forward) => {
                    Ok(slot.abort(ProtocolError::UnknownChannel { sid, ch }))
                }
                Some(slot) if slot.accepts_input() => {
                    let session = slot.handle();
                    match slot.chan(ch) {
                        Some(chan)
                            if matches!(chan.state, ChanState::Open | ChanState::Requested) =>
                        {
                            chan.state = ChanState::Terminating;
                            chan.drop_output();
                            let gen = chan.gen;
                            Ok(Some(Event::ChannelClose {
                                channel: ChannelHandle { session, ch, gen },
                            }))
                        }
                        _ => Ok(None),
                    }
                }
                _ => Ok(None),
            },
            Frame::Resize { sid, cols, rows } => match self.slot_mut(sid) {
                Some(slot) if slot.accepts_input() => Ok(Some(Event::Resize {
                    session: slot.handle(),
                    cols,
                    rows,
                })),
                _ => Ok(None),
            },
            Frame::Signal { sid, signal } => match self.slot_mut(sid) {
                Some(slot) if slot.accepts_input() => Ok(Some(Event::Signal {
                    session: slot.handle(),
                    signal,
                })),
                _ => Ok(None),
            },
            // A session still being started is ended too: the driver must not go on
            // to start it once the peer has given up on it.
            Frame::Close { sid, .. } | Frame::Error { sid, .. } => match self.slot_mut(sid) {
                Some(slot) if slot.accepts_input() || slot.state == SlotState::Requested => {
                    slot.state = SlotState::Terminating;
                    slot.end_suspension();
                    Ok(Some(Event::Terminate {
                        session: slot.handle(),
                    }))
                }
                _ => Ok(None),
            },
            other => Err(ProtocolError::UnexpectedFrame {
                frame_type: other.frame_type(),
            }),
        }
    }

    /// Answer the challenge: the agent's public key, its signature of
    /// [`auth_message`], the activation code on first contact (else `""`), and the
    /// agent's default account, the account a session runs as when its `Open` names
    /// none (the relay's policies decide on it). An empty or invalid account
    /// ([`wire::account_valid`]) is refused with nothing sent and nothing changed.
    pub fn authenticate(
        &mut self,
        public_key: [u8; 32],
        signature: [u8; 64],
        activation: &str,
        account: &str,
    ) -> Result<(), AuthError> {
        let mut name = String::new();
        if account.is_empty() || !wire::account_valid(account) || name.push_str(account).is_err() {
            return Err(AuthError::Account);
        }
        if let Conn::Signing { peer } = core::mem::replace(&mut self.conn, Conn::Closed) {
            // A code longer than any the relay issues is clipped, and the relay then
            // refuses it as unknown; drivers check the length first to say so.
            let code = clip(activation);
            self.conn = Conn::AwaitAuthOk {
                peer,
                auth: Some(PendingAuth {
                    key: public_key,
                    sig: signature,
                    activation: code,
                    account: name,
                }),
            };
        }
        Ok(())
    }

    /// Answer [`Event::Challenge`]: `sign` signs [`auth_message`] of its `nonce` with
    /// the key whose public half is `public_key`, then [`Agent::authenticate`] as
    /// there. A nonce of another length is never signed ([`AuthError::Nonce`]).
    pub fn answer_challenge(
        &mut self,
        nonce: &[u8],
        public_key: [u8; 32],
        sign: impl FnOnce(&[u8]) -> [u8; 64],
        activation: &str,
        account: &str,
    ) -> Result<(), AuthError> {
        let mut buf = [0u8; 64];
        let message = auth_message(nonce, &mut buf).ok_or(AuthError::Nonce)?;
        self.authenticate(public_key, sign(message), activation, account)
    }

    /// The session started: tell the peer, announcing our receive window. A session
    /// the peer ended meanwhile ([`Event::Terminate`] came first) is not accepted:
    /// [`UseError::Finished`], and the driver stops what it started and
    /// [`Agent::reject`]s it.
    pub fn accept(&mut self, session: SessionHandle) -> Result<(), UseError> {
        let slot = self.slot_of(session)?;
        match slot.state {
            SlotState::Requested => {
                slot.state = SlotState::Open;
                slot.accepted = true;
                Ok(())
            }
            SlotState::Terminating if !slot.accepted => Err(UseError::Finished),
            _ => Err(UseError::NotNow),
        }
    }

    /// The session could not start: tell the peer why and free the slot.
    pub fn reject(
        &mut self,
        session: SessionHandle,
        code: ErrorCode,
        reason: &str,
    ) -> Result<(), UseError> {
        let slot = self.slot_of(session)?;
        if slot.accepted {
            return Err(UseError::NotNow);
        }
        slot.state = SlotState::Rejecting(code, truncate(reason));
        self.forget_detached(session);
        Ok(())
    }

    /// A session whose connection is gone for good frees its place as soon as its
    /// work is over: nobody hears of its end.
    fn forget_detached(&mut self, session: SessionHandle) {
        let place = &mut self.slots[session.index as usize];
        if place.as_ref().is_some_and(Slot::finished_detached) {
            *place = None;
        }
    }

    /// The session's work is over (its process exited, or it was stopped after
    /// [`Event::Terminate`] or [`Event::Abort`]), with `exit` and, for the peer,
    /// `reason` (may be empty). What waits is sent (unless the session was ended),
    /// then channel 0's `Eof`, then `Close`, and the session is gone. Ending a
    /// session that was never accepted rejects it instead.
    pub fn exited(
        &mut self,
        session: SessionHandle,
        exit: Exit,
        reason: &str,
    ) -> Result<(), UseError> {
        let slot = self.slot_of(session)?;
        if !slot.accepted {
            let why = if reason.is_empty() {
                "ended before it started"
            } else {
                reason
            };
            slot.state = SlotState::Rejecting(ErrorCode::SPAWN, truncate(why));
            self.forget_detached(session);
            return Ok(());
        }
        if slot.exit.is_some() {
            return Err(UseError::Finished);
        }
        slot.exit = Some((exit, truncate(reason)));
        self.forget_detached(session);
        Ok(())
    }

    /// The channel's connection is up: tell the peer, announcing our receive window.
    pub fn accept_channel(&mut self, channel: ChannelHandle) -> Result<(), UseError> {
        let chan = self.chan_of(channel)?;
        if chan.state != ChanState::Requested {
            return Err(UseError::NotNow);
        }
        chan.state = ChanState::Open;
        chan.accept_pending = true;
        Ok(())
    }

    /// The channel's connection failed: tell the peer why and free the channel.
    pub fn reject_channel(
        &mut self,
        channel: ChannelHandle,
        code: ErrorCode,
        reason: &str,
    ) -> Result<(), UseError> {
        let chan = self.chan_of(channel)?;
        if chan.state != ChanState::Requested {
            return Err(UseError::NotNow);
        }
        chan.state = ChanState::Rejecting(code, truncate(reason));
        Ok(())
    }

    /// The channel's connection is gone (it failed, or the peer aborted the channel
    /// with [`Event::ChannelClose`]): what waits is dropped and a `ChannelClose`
    /// with `reason` goes out. A channel that is over by itself (both directions
    /// ended) needs no call: the engine closes it. Closing one never accepted
    /// rejects it instead.
    pub fn close_channel(&mut self, channel: ChannelHandle, reason: &str) -> Result<(), UseError> {
        if channel.ch == 0 {
            return Err(UseError::NotNow);
        }
        let chan = self.chan_of(channel)?;
        match chan.state {
            ChanState::Requested => {
                chan.state = ChanState::Rejecting(ErrorCode::UNREACHABLE, truncate(reason))
            }
            ChanState::Open | ChanState::Terminating => chan.abort(truncate(reason)),
            _ => return Err(UseError::NotNow),
        }
        Ok(())
    }

    /// The driver wrote `n` bytes of a channel's input out; credit flows back.
    pub fn consumed(&mut self, channel: ChannelHandle, n: usize) -> Result<(), UseError> {
        self.chan_of(channel)?.recv.consume(n);
        Ok(())
    }

    /// Output of a channel: as much of `data` as its buffer holds now is taken
    /// (and sent by [`Agent::poll_transmit`]); returns how much. `0` means the
    /// buffer is full: write the rest after transmitting. Output of a channel whose
    /// peer is gone is taken and dropped.
    pub fn send_slice(
        &mut self,
        channel: ChannelHandle,
        stream: Stream,
        data: &[u8],
    ) -> Result<usize, UseError> {
        let slot = self.slot_of(channel.session)?;
        if slot.exit.is_some() {
            return Err(UseError::Finished);
        }
        let ended = slot.state == SlotState::Terminating;
        let chan = slot
            .chan(channel.ch)
            .filter(|c| c.gen == channel.gen)
            .ok_or(UseError::Stale)?;
        if chan.finished {
            return Err(UseError::Finished);
        }
        match chan.state {
            ChanState::Open if !ended => Ok(chan.out.write(stream, data)),
            ChanState::Requested => Err(UseError::NotNow),
            // The peer ended it: nobody wants the bytes any more.
            _ => Ok(data.len()),
        }
    }

    /// Whether the session of a handle is still in the table (once its `Close` or
    /// `Reject` went out it is not, and the driver forgets it).
    pub fn is_live(&self, session: SessionHandle) -> bool {
        self.slots
            .get(session.index as usize)
            .and_then(Option::as_ref)
            .is_some_and(|s| s.gen == session.gen)
    }

    /// Whether the channel of a handle is still open (a forward channel is gone once
    /// its `ChannelClose` or `ChannelReject` went out).
    pub fn is_channel_live(&self, channel: ChannelHandle) -> bool {
        self.slots
            .get(channel.session.index as usize)
            .and_then(Option::as_ref)
            .filter(|s| s.gen == channel.session.gen)
            .is_some_and(|s| {
                s.channels
                    .iter()
                    .flatten()
                    .any(|c| c.ch == channel.ch && c.gen == channel.gen)
            })
    }

    /// Room in a channel's buffer for [`Agent::send_slice`] now (0 for a channel
    /// that takes no more output).
    pub fn send_room(&mut self, channel: ChannelHandle) -> usize {
        match self.chan_of(channel) {
            Ok(c) if c.takes_output() => c.out.free(),
            _ => 0,
        }
    }

    /// The channel's output ended (its process closed the stream, its connection
    /// half-closed): `Eof` follows what waits.
    pub fn finish(&mut self, channel: ChannelHandle) -> Result<(), UseError> {
        if !self.slot_of(channel.session)?.accepted {
            return Err(UseError::NotNow);
        }
        let chan = self.chan_of(channel)?;
        if chan.finished {
            return Err(UseError::Finished);
        }
        chan.finished = true;
        Ok(())
    }

    /// The largest frame the engine may write: the peer's limit (or the smallest any
    /// peer has, before `Hello`).
    pub fn max_frame(&self) -> usize {
        self.peer_max_frame() as usize
    }

    /// The next frame to send, written into `out`. Frames are sized to `out` and to
    /// the peer's limit ([`Agent::max_frame`]): a device may send smaller frames
    /// than its peer accepts. `out` must hold at least [`wire::MIN_MAX_FRAME`] bytes,
    /// which every control frame fits (else nothing is taken and the error says so).
    /// `Ok(None)` when there is nothing to send now.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        out: &mut [u8],
    ) -> Result<Option<usize>, UseError> {
        let needed = wire::MIN_MAX_FRAME as usize;
        if out.len() < needed {
            return Err(UseError::BufferTooSmall { needed });
        }
        let size = out.len().min(self.max_frame().max(needed));
        let out = &mut out[..size];
        let len = self.next_frame(now, out);
        if len.is_some() {
            self.last_tx = now;
        }
        Ok(len)
    }

    fn next_frame(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        if let Some(c) = self.ctrl.pop_front() {
            let frame = match &c {
                Ctrl::Hello => Frame::Hello(Hello {
                    version: crate::PROTOCOL_VERSION,
                    max_frame: self.config.max_frame,
                    max_sessions: N.min(u16::MAX as usize) as u16,
                    features: self.config.features,
                }),
                Ctrl::Ping(n) => Frame::Ping { nonce: *n },
                Ctrl::Pong(n) => Frame::Pong { nonce: *n },
                Ctrl::Reject(sid, code, reason) => Frame::Reject {
                    sid: *sid,
                    code: *code,
                    reason: reason.as_str(),
                },
                Ctrl::ChannelReject(sid, ch, code, reason) => Frame::ChannelReject {
                    sid: *sid,
                    ch: *ch,
                    code: *code,
                    reason: reason.as_str(),
                },
                Ctrl::Error(code, message) => Frame::Error {
                    sid: 0,
                    code: *code,
                    message,
                },
                Ctrl::Gone(sid) => match self.ended.iter().find(|(s, _)| s == sid) {
                    Some(&(sid, exit)) => Frame::Close {
                        sid,
                        exit,
                        reason: "",
                    },
                    None => Frame::Close {
                        sid: *sid,
                        exit: Exit::Aborted(ErrorCode::AGENT_GONE),
                        reason: "the session is no longer on this agent",
                    },
                },
            };
            // Control frames are short: they always fit a largest frame.
            return frame.encode(out).ok();
        }
        if let Conn::AwaitAuthOk { auth, .. } = &mut self.conn {
            if let Some(a) = auth.take() {
                let frame = Frame::Auth(Auth {
                    public_key: Bytes(&a.key),
                    signature: Bytes(&a.sig),
                    activation: a.activation.as_str(),
                    account: a.account.as_str(),
                });
                return frame.encode(out).ok();
            }
        }
        if !self.is_ready() {
            return None;
        }
        let max_payload = wire::max_data_len(out.len() as u32);
        for i in 0..N {
            let idx = (self.cursor + i) % N;
            let Some(slot) = self.slots[idx].as_mut() else {
                continue;
            };
            if let Some((len, free)) = slot.next_frame(now, out, max_payload) {
                if free {
                    if let (Some(_), Some(exit)) = (slot.hold, slot.closed_with) {
                        if self.ended.is_full() {
                            self.ended.pop_front();
                        }
                        let _ = self.ended.push_back((slot.sid, exit));
                    }
                    self.slots[idx] = None;
                }
                self.cursor = (idx + 1) % N;
                return Some(len);
            }
        }
        None
    }

    /// When [`Agent::handle_timeout`] should be called next (keepalive, dead peer,
    /// handshake, rate-limited output that may go again, or the end of a suspended
    /// session's hold).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conn = match self.conn {
            Conn::Closed => None,
            Conn::Ready { .. } => {
                let keepalive = (self.last_tx + self.config.keepalive)
                    .min(self.last_rx + self.config.dead_after);
                let rate = self
                    .slots
                    .iter()
                    .flatten()
                    .filter(|s| s.rate_blocked)
                    .filter_map(|s| s.bucket.as_ref())
                    .map(|b| b.ready_at(RATE_WAKE_BYTES))
                    .min();
                Some(rate.map_or(keepalive, |r| r.min(keepalive)))
            }
            _ => Some(self.started + self.config.handshake_timeout),
        };
        let hold = self
            .slots
            .iter()
            .flatten()
            .filter_map(Slot::hold_until)
            .min();
        match (conn, hold) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: send keepalives, detect a dead connection, let rate-limited output
    /// go again (output waiting in a channel goes out with the next transmit), end
    /// the suspended sessions whose hold is over ([`Event::Terminate`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        let ready = self.is_ready();
        for place in self.slots.iter_mut() {
            let Some(slot) = place.as_mut() else {
                continue;
            };
            if slot.rate_blocked
                && slot
                    .bucket
                    .is_some_and(|b| b.ready_at(RATE_WAKE_BYTES) <= now)
            {
                slot.rate_blocked = false;
            }
            if slot.hold_until().is_some_and(|t| t <= now) {
                if ready {
                    // The relay is there (it was the client that stayed away): the
                    // session ends, and says so.
                    slot.expire();
                } else {
                    slot.detach();
                    if slot.finished_detached() {
                        *place = None;
                    }
                }
            }
        }
        match self.conn {
            Conn::Closed => {}
            Conn::Ready { .. } => {
                if now - self.last_rx >= self.config.dead_after {
                    self.lose();
                } else if now - self.last_tx >= self.config.keepalive {
                    self.ping_seq += 1;
                    let _ = self.ctrl.push_back(Ctrl::Ping(self.ping_seq));
                }
            }
            _ => {
                if now - self.started >= self.config.handshake_timeout {
                    self.lose();
                }
            }
        }
    }

    fn lose(&mut self) {
        self.conn = Conn::Closed;
        let _ = self.events.push_back(Event::ConnectionLost);
    }

    /// The connection is gone; a new one starts now, its `Hello` queued as by
    /// [`Agent::new`]. A resumable session stays, suspended, for its hold time: its
    /// output is kept (the driver may still write while there is room) and goes
    /// again from where the peer stands once the relay resumes it on the new
    /// connection. Every other session ends: [`Agent::poll_event`] says
    /// [`Event::Terminate`] for each one the driver runs, and its end goes nowhere.
    pub fn reconnect(&mut self, now: Instant) {
        self.conn = Conn::AwaitHello;
        self.ctrl.clear();
        let _ = self.ctrl.push_back(Ctrl::Hello);
        self.events.clear();
        self.resumable_next.clear();
        self.started = now;
        self.last_rx = now;
        self.last_tx = now;
        for place in self.slots.iter_mut() {
            let Some(slot) = place.as_mut() else {
                continue;
            };
            if slot.holds() {
                slot.suspend(now);
                // Its answer waits for the relay's own `Suspend` on the new link.
                slot.answer_due = 0;
                slot.answer_at = 0;
                slot.tombstones_at = 0;
            } else {
                slot.detach();
                if slot.finished_detached() {
                    *place = None;
                }
            }
        }
    }

    /// The next event not caused by a received frame (timeouts, a lost connection).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event<'static>> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        for slot in self.slots.iter_mut().flatten() {
            if slot.tell_terminate {
                slot.tell_terminate = false;
                return Some(Event::Terminate {
                    session: slot.handle(),
                });
            }
            let session = slot.handle();
            if let Some(c) = slot.channels.iter_mut().flatten().find(|c| c.tell_close) {
                c.tell_close = false;
                return Some(Event::ChannelClose {
                    channel: ChannelHandle {
                        session,
                        ch: c.ch,
                        gen: c.gen,
                    },
                });
            }
        }
        None
    }
}

/// Remove the entry for `sid` from `list`, if any, keeping the others in order.
fn take_matching<T: Copy, const K: usize>(list: &mut Deque<(u32, T), K>, sid: u32) -> Option<T> {
    let i = list.iter().position(|(s, _)| *s == sid)?;
    let mut kept = Deque::new();
    let mut found = None;
    for (j, &(s, v)) in list.iter().enumerate() {
        if j == i {
            found = Some(v);
        } else {
            let _ = kept.push_back((s, v));
        }
    }
    *list = kept;
    found
}

fn truncate(s: &str) -> String<REASON_MAX> {
    clip(s)
}

/// The longest prefix of `s` that fits in `N` bytes, cut on a character boundary
/// (slicing a `str` elsewhere panics, and every string here may come from a peer or
/// a user).
pub fn clip<const N: usize>(s: &str) -> String<N> {
    let mut end = s.len().min(N);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::new();
    let _ = out.push_str(&s[..end]);
    out
}

#[cfg(test)]
mod tests;
