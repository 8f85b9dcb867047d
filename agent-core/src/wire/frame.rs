//! The frames and their field types.

use super::Bytes;
use serde::{Deserialize, Serialize};

/// One protocol message. The variant order is the wire frame type (0..=26).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame<'a> {
    /// 0: first frame in each direction: version and capabilities.
    Hello(Hello),
    /// 1: relay -> agent: a random nonce the agent must sign.
    Challenge {
        /// 32 random bytes.
        #[serde(borrow)]
        nonce: Bytes<'a>,
    },
    /// 2: agent -> relay: the agent's key and its signature of the challenge.
    #[serde(borrow)]
    Auth(Auth<'a>),
    /// 3: relay -> agent: authentication succeeded.
    AuthOk {
        /// The agent's id in the relay's store.
        agent_id: &'a str,
    },
    /// 4: open a session (relay -> agent; client -> relay on a stream).
    Open {
        /// Session id, chosen by the opener; unique on the connection while open.
        sid: u32,
        /// Bytes the opener can receive on channel 0 before it returns credit.
        window: u32,
        /// What to run.
        #[serde(borrow)]
        kind: Kind<'a>,
        /// The account on the target the session runs as; empty: the agent's default
        /// account, the one its [`Auth`] announced (protocol version 2). See
        /// [`super::account_valid`].
        account: &'a str,
    },
    /// 5: the session is running.
    Accept {
        /// Session id.
        sid: u32,
        /// Bytes the accepter can receive on channel 0 before it returns credit.
        window: u32,
    },
    /// 6: the session could not be opened.
    Reject {
        /// Session id.
        sid: u32,
        /// Why, as a code.
        code: ErrorCode,
        /// Why, for a person.
        reason: &'a str,
    },
    /// 7: bytes of a channel's stream.
    Data {
        /// Session id.
        sid: u32,
        /// Channel within the session (0 for shell and exec).
        ch: u16,
        /// Which stream of the channel (stdout or stderr from the agent).
        stream: Stream,
        /// The bytes.
        #[serde(borrow)]
        data: Bytes<'a>,
    },
    /// 8: the receiver consumed bytes; the sender may send that many more.
    Credit {
        /// Session id.
        sid: u32,
        /// Channel.
        ch: u16,
        /// Bytes granted.
        bytes: u32,
    },
    /// 9: the terminal changed size (shell sessions).
    Resize {
        /// Session id.
        sid: u32,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// 10: the sender will send no more data on the channel (half-close).
    Eof {
        /// Session id.
        sid: u32,
        /// Channel.
        ch: u16,
    },
    /// 11: the session ended (agent -> peer, with the exit status), or the peer asks
    /// the agent to end it (peer -> agent; the agent answers with its own `Close`).
    Close {
        /// Session id.
        sid: u32,
        /// How it ended.
        exit: Exit,
        /// Why, for a person (may be empty).
        reason: &'a str,
    },
    /// 12: deliver a signal to the session's process group.
    Signal {
        /// Session id.
        sid: u32,
        /// POSIX signal number.
        signal: u8,
    },
    /// 13: keepalive request.
    Ping {
        /// Echoed in the `Pong`.
        nonce: u64,
    },
    /// 14: keepalive answer.
    Pong {
        /// The `Ping`'s nonce.
        nonce: u64,
    },
    /// 15: an error; `sid` 0 means the whole connection (which then closes).
    Error {
        /// Session id, or 0.
        sid: u32,
        /// What went wrong, as a code.
        code: ErrorCode,
        /// What went wrong, for a person.
        message: &'a str,
    },
    /// 16: open a channel in a `forward` session: a TCP connection to `host:port` as
    /// seen from the agent (client -> relay -> agent).
    ChannelOpen {
        /// Session id.
        sid: u32,
        /// Channel id, chosen by the opener (not 0), unique in the session while open.
        ch: u16,
        /// Bytes the opener can receive on this channel before it returns credit.
        window: u32,
        /// Destination host name or address.
        host: &'a str,
        /// Destination port.
        port: u16,
    },
    /// 17: the channel is connected.
    ChannelAccept {
        /// Session id.
        sid: u32,
        /// Channel id.
        ch: u16,
        /// Bytes the agent can receive on this channel before it returns credit.
        window: u32,
    },
    /// 18: the channel could not be opened (refused, unreachable, denied); the session
    /// goes on.
    ChannelReject {
        /// Session id.
        sid: u32,
        /// Channel id.
        ch: u16,
        /// Why, as a code.
        code: ErrorCode,
        /// Why, for a person.
        reason: &'a str,
    },
    /// 19: the channel is over (agent -> peer), or the peer aborts it (peer -> agent;
    /// the agent answers with its own `ChannelClose`).
    ChannelClose {
        /// Session id.
        sid: u32,
        /// Channel id.
        ch: u16,
        /// Why, if it did not end cleanly (empty otherwise).
        reason: &'a str,
    },
    /// 20: the rate limit of a session, in bytes per second in each direction
    /// (0: unlimited); relay -> agent right after `Open`.
    Limit {
        /// Session id.
        sid: u32,
        /// Bytes per second.
        rate: u32,
    },
    /// 21: relay -> client: a line for the session's user, not part of its output
    /// (someone joined the session, or left it). Agents never see it.
    Notice {
        /// Session id.
        sid: u32,
        /// The line.
        message: &'a str,
    },
    /// 22: relay -> agent and client: the session survives a cut of either link (or
    /// a restart of the relay) for `hold` seconds, and its channel 0 carries
    /// [`Frame::DataAt`] and [`Frame::Ack`] instead of `Data` (feature
    /// [`features::RESUME`]). To a client, `token` resumes the session on a new
    /// stream (it changes with every resume); to an agent it is empty.
    Resumable {
        /// Session id.
        sid: u32,
        /// Seconds a side may be away before the session ends.
        hold: u32,
        /// The resume token (client only).
        token: &'a str,
    },
    /// 23: relay -> agent or client: the other side is away, or this side came back
    /// on a new connection. Send nothing more on the session and answer with
    /// [`Frame::Resume`]; go on when the peer's `Resume` arrives.
    Suspend {
        /// Session id.
        sid: u32,
    },
    /// 24: where this side stands on a channel, answering a `Suspend`; the relay
    /// passes it to the peer once both sides answered. The peer sends again from
    /// `offset`, within `limit`. A side answers with one per forward channel it
    /// has, then one for channel 0, which ends its answer.
    Resume {
        /// Session id.
        sid: u32,
        /// Channel.
        ch: u16,
        /// Bytes of the channel received from the peer, in all.
        offset: u64,
        /// The peer may send up to this offset (received plus the credit left).
        limit: u64,
        /// The peer's `Eof` was received.
        eof: bool,
        /// The channel is open at this side: for a forward channel, the agent
        /// connected it (a client that missed its `ChannelAccept` takes this for
        /// it); `false` while the agent still connects. Always `true` for channel 0.
        open: bool,
    },
    /// 25: the sender has received `offset` bytes of the channel in all: the peer
    /// may forget them (it keeps what is not acknowledged, to send again after a
    /// resume). Cumulative; the relay passes it on, never makes one.
    Ack {
        /// Session id.
        sid: u32,
        /// Channel.
        ch: u16,
        /// Bytes received in all.
        offset: u64,
    },
    /// 26: `Data` of a resumable session: the bytes at `offset` of the channel's
    /// stream in this direction (both streams of a channel count together).
    DataAt {
        /// Session id.
        sid: u32,
        /// Channel.
        ch: u16,
        /// Which stream of the channel.
        stream: Stream,
        /// Where in the channel's bytes `data` starts.
        offset: u64,
        /// The bytes.
        #[serde(borrow)]
        data: Bytes<'a>,
    },
}

/// Version and capabilities, sent first by each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version ([`crate::PROTOCOL_VERSION`]).
    pub version: u16,
    /// Largest frame this side accepts, in bytes.
    pub max_frame: u32,
    /// Most sessions this side runs at once.
    pub max_sessions: u16,
    /// Feature bits ([`features`]).
    pub features: u32,
}

/// Feature bits carried in [`Hello::features`].
pub mod features {
    /// Shell sessions with a PTY.
    pub const SHELL: u32 = 1 << 0;
    /// Exec sessions.
    pub const EXEC: u32 = 1 << 1;
    /// Forward sessions and channel frames (types 16-19).
    pub const FORWARD: u32 = 1 << 2;
    /// SSH key sessions.
    pub const SSH_KEY: u32 = 1 << 3;
    /// Sessions run as the account named in `Open` ("run-as accounts"); an agent
    /// without it has no accounts of its own to choose from.
    pub const RUN_AS: u32 = 1 << 4;
    /// Resumable sessions (frames 22-26): the agent keeps a session whose link
    /// drops, and resends what was not acknowledged when it comes back. (Bit 5,
    /// 32, announced a draft of them that no longer works with this one: `Resume`
    /// without `open`, no `Ack` of an `Eof`; a relay makes no session of such an
    /// agent resumable.)
    pub const RESUME: u32 = 1 << 6;
}

/// Agent authentication: Ed25519 over `AUTH_CONTEXT || nonce`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth<'a> {
    /// The agent's Ed25519 public key (32 bytes).
    #[serde(borrow)]
    pub public_key: Bytes<'a>,
    /// Signature (64 bytes) of [`AUTH_CONTEXT`] followed by the challenge nonce.
    #[serde(borrow)]
    pub signature: Bytes<'a>,
    /// One-time activation code on first contact, else empty.
    pub activation: &'a str,
    /// The agent's default account: the account a session runs as when its `Open`
    /// names none (protocol version 2). Never empty, and valid by
    /// [`super::account_valid`]: the relay refuses the agent otherwise, since its
    /// policies decide on the account a session really runs as.
    pub account: &'a str,
}

/// Domain separation prefix of the signed authentication message.
pub const AUTH_CONTEXT: &[u8] = b"sesame-agent-auth-v1:";

/// What a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind<'a> {
    /// 0: the login shell, on a PTY of `cols` x `rows`; with `cols == rows == 0`
    /// ([`Kind::PIPE_SHELL`]) on pipes instead, stdout and stderr apart, and `Eof`
    /// closes its stdin (as `ssh -T` does).
    Shell {
        /// `TERM` value.
        term: &'a str,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// 1: a command run directly (no shell), stdout and stderr apart.
    Exec {
        /// Arguments, each followed by a NUL byte ([`super::argv_iter`]).
        #[serde(borrow)]
        argv: Bytes<'a>,
    },
    /// 2: TCP forwarding: one channel per connection, opened with `ChannelOpen`.
    Forward,
    /// 3: make an SSH public key valid for a user for `ttl` seconds.
    SshKey {
        /// The account on the target.
        user: &'a str,
        /// One `authorized_keys` line: `type base64 [comment]`.
        key: &'a str,
        /// Seconds the key stays valid.
        ttl: u32,
    },
}

impl Kind<'static> {
    /// A login shell without a terminal (see [`Kind::Shell`]).
    pub const PIPE_SHELL: Kind<'static> = Kind::Shell {
        term: "",
        cols: 0,
        rows: 0,
    };
}

/// A stream within a channel. Unknown values survive a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream(pub u8);

impl Stream {
    /// Standard output from the agent; standard input towards it.
    pub const OUT: Stream = Stream(0);
    /// Standard error from the agent.
    pub const ERR: Stream = Stream(1);
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Exit {
    /// 0: the process exited with this code.
    Code(i32),
    /// 1: the process was killed by this signal.
    Signal(u8),
    /// 2: the session ended without a process status (error, terminate request).
    Aborted(ErrorCode),
}

/// An error code. Unknown values survive a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// Malformed or unexpected frame.
    pub const PROTOCOL: ErrorCode = ErrorCode(1);
    /// Authentication failed.
    pub const AUTH: ErrorCode = ErrorCode(2);
    /// Too many sessions (agent or relay limit).
    pub const SESSION_LIMIT: ErrorCode = ErrorCode(3);
    /// The session kind is not supported here.
    pub const UNSUPPORTED: ErrorCode = ErrorCode(4);
    /// The process could not be started.
    pub const SPAWN: ErrorCode = ErrorCode(5);
    /// The peer asked for the session to end.
    pub const TERMINATED: ErrorCode = ErrorCode(6);
    /// Flow control was violated.
    pub const FLOW_CONTROL: ErrorCode = ErrorCode(7);
    /// The agent went away.
    pub const AGENT_GONE: ErrorCode = ErrorCode(8);
    /// Internal error on the sender.
    pub const INTERNAL: ErrorCode = ErrorCode(9);
    /// Not allowed by policy.
    pub const DENIED: ErrorCode = ErrorCode(10);
    /// The destination refused the connection.
    pub const REFUSED: ErrorCode = ErrorCode(11);
    /// The destination could not be reached (no route, no such host, timeout).
    pub const UNREACHABLE: ErrorCode = ErrorCode(12);
    /// Too many channels in the session.
    pub const CHANNEL_LIMIT: ErrorCode = ErrorCode(13);
    /// The user does not exist on the target.
    pub const NO_SUCH_USER: ErrorCode = ErrorCode(14);

    /// Words for a person, for the codes a client shows when a session or a
    /// connection ends without a reason of its own (`None`: say the number).
    pub const fn words(self) -> Option<&'static str> {
        Some(match self {
            ErrorCode::AGENT_GONE => "the agent disconnected",
            ErrorCode::TERMINATED => "terminated",
            ErrorCode::FLOW_CONTROL => "flow control violated",
            ErrorCode::REFUSED => "connection refused",
            ErrorCode::UNREACHABLE => "destination unreachable",
            ErrorCode::DENIED => "denied",
            _ => return None,
        })
    }
}
