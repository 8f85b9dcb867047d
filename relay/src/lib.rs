//! # relay: the Sesame relay (`sesame-relay`)
//!
//! Agents dial in and hold one TLS WebSocket each (`/v1/agent`), authenticated by an
//! Ed25519 key bound once with a one-time activation code. Users call the HTTP JSON
//! API with a bearer API key (`/v1/agents`, `/v1/sessions`) and then open a session
//! stream (`/v1/stream/{id}?token=...`) with a one-use, short-lived token; the relay
//! routes that stream's frames to the agent's connection, rewriting session ids.
//!
//! What the relay decides about a session's frames (checks, window clamping, credit,
//! pacing, idle and maximum-duration timers, when and how it ends) is sans-IO, in
//! `hub::session`, tested with a client and an agent engine on a virtual clock; the
//! stream task (`stream`) moves bytes and awaits policies, recordings and the audit log.
//!
//! ## Contract
//! - Every secret (API keys, activation codes, session tokens) is stored as a SHA-256
//!   hash and never logged.
//! - Bad input from one peer (malformed frame, bad token, unknown key) gets one clear
//!   error and closes only what it belongs to: a client stream, or that agent's link.
//! - Every queue is bounded; a client that cannot keep up loses its own session, not
//!   the agent's other sessions.
//!
//! - Limits (`config`): a per-session rate in each direction (default 200 kbit/s; the
//!   agent paces itself and the relay paces what it forwards, so neither side can
//!   exceed it), sessions per agent and per relay, idle timeout and maximum duration.
//! - Connections that have not authenticated are capped in total and per source, and
//!   each phase before authentication has a deadline (`server`), so half-open or
//!   half-sent connections cannot exhaust file descriptors or lock anyone out.
//! - Sessions the relay was serving when it stopped are recorded ended ("relay
//!   restarted") at the next start, but for resumable ones, which it takes up again
//!   (`stream::revive`); ended sessions past the retention are deleted.
//! - Authorisation (`policy`): nothing is allowed unless a Cedar policy permits it,
//!   and a `forbid` wins. Every session (its kind, account, command or key push),
//!   every forward channel (its destination, before the agent hears of it), every
//!   listed agent and every admin request (`admin`) is decided; a denial names the
//!   action, the target and the deciding policies. A policy set that fails to parse
//!   or validate against `docs/sesame.cedarschema` never takes effect.
//! - A revoked or expired API key is refused on its next request and on any stream
//!   its tokens would open; revoking it, or locking its user or the agent, ends the
//!   live sessions at once (`live`). A revoked agent is disconnected and refused.
//! - Sessions are listed (`GET /v1/sessions`) and ended (`terminate`) as the
//!   policies allow on each one (`sessions`); a session's end is on record (its
//!   exit, its bytes each way, who ended it and why) before its client hears of it.
//!
//! - Shell, exec and forward sessions are recorded by the relay as it routes them
//!   (`record`, `docs/recordings.md`): strict by default (a session that cannot
//!   be recorded is refused or ended, with the reason), compressed at the end with
//!   the file's SHA-256 in the audit log; read with `replay` on the session, each
//!   read audited.
//!
//! - The browser console (`web`, built from `relay/web` by `build.rs` and embedded):
//!   a one-time login link (`sesame web`) or an API key opens a browser session, a
//!   hashed cookie acting with that key under the same policies; every browser
//!   request from another origin is refused, and every response carries a strict
//!   Content-Security-Policy.
//!
//! ## Non-goals (for now)
//! Several relays sharing one store (there is no epoch fencing between relays).

pub mod admin;
pub mod agent_link;
pub mod api;
pub mod audit;
pub mod config;
pub mod error;
pub mod hub;
pub mod live;
pub mod policy;
pub mod provision;
pub mod record;
pub mod secret;
pub mod server;
pub mod sessions;
pub mod store;
pub mod stream;
pub mod tls;
pub mod web;

pub use error::Error;
pub use server::{Server, ServerConfig};
