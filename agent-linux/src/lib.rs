//! # agent-linux: `sesame-agent`, the tokio driver of `agent-core` on Linux
//!
//! Holds one TLS WebSocket to the relay, authenticated with an Ed25519 key kept in
//! the state directory, and runs the sessions the relay opens: login shells on a real
//! PTY and commands run directly with stdout and stderr apart, each as the account the
//! relay names ([`account`]; `sesame-user` by default, never root unless asked). All protocol decisions
//! (handshake, session limit, flow control, keepalive) are made by
//! [`agent_core::session::Agent`]; this crate only moves bytes and processes.
//!
//! ## Contract
//! - Never exits because the relay is away: reconnects with jittered exponential
//!   backoff (0.5 s doubling to 30 s).
//! - Output of a session waits for the client's credit; a slow client slows only its
//!   own session (its process blocks on a full pipe).
//! - Ending a session (client request, protocol violation, lost connection, past its
//!   hold for a resumable one) kills the session's whole process group.
//! - Sessions live across relay connections ([`state`]): when the link drops, a
//!   resumable session is held for its hold time (its process runs, its output
//!   waits in the engine until it is full), to go on once the relay resumes it on the
//!   next connection (`docs/protocol.md` §8); any other session ends at once.
//!
//! - Forward sessions reach only destinations the [`policy::DestPolicy`] allows; each
//!   connection is a channel with its own credit.
//! - SSH keys pushed through `ssh-key` sessions carry OpenSSH's `expiry-time=` and are
//!   also removed by the agent when they expire.

pub mod account;
pub mod agent;
pub mod connect;
pub mod driver;
pub mod forward;
pub mod identity;
pub mod install;
pub mod output;
pub mod passwd;
pub mod policy;
pub mod process;
pub mod pty;
pub mod session;
pub mod sshkey;
pub mod state;

pub use agent::{run, AgentOptions};

/// Sessions this agent runs at once (advertised to the relay in `Hello`).
pub const MAX_SESSIONS: usize = 20;
/// Connections one forward session may hold at once.
pub const MAX_CHANNELS: usize = 64;

/// `sesame-agent 0.1.0 (x86_64-unknown-linux-musl, protocol 2)`.
pub fn version() -> String {
    format!(
        "sesame-agent {} ({}, protocol {})",
        env!("CARGO_PKG_VERSION"),
        env!("SESAME_TARGET"),
        agent_core::PROTOCOL_VERSION
    )
}
