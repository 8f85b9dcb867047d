//! # cli: `sesame`, the user's tool
//!
//! Lists targets, runs commands, opens interactive shells, forwards TCP ports and
//! pushes short-lived SSH keys through a Sesame relay, as the account the user asks
//! for (`--as`) when the relay's policies permit it; checks policies
//! (`sesame policy check`), lists and terminates sessions (`sesame sessions`),
//! watches a live one read-only (`sesame join`),
//! replays, exports and searches their recordings (`sesame replay`, `sesame
//! sessions export`, `sesame recordings grep`) and administers users, keys,
//! agents, policies and locks (`sesame admin`). Settings
//! come from flags, then `SESAME_RELAY` / `SESAME_API_KEY` / `SESAME_CA` /
//! `SESAME_BIND`, then `~/.config/sesame/config.toml`.
//!
//! ## Contract
//! - `sesame exec` and `sesame shell` exit with the remote exit code (128 + N for a
//!   signal), and with 255 when Sesame itself fails, after one `error:` line (a
//!   refusal reads `error: denied: ...`, word for word from the relay).
//! - `sesame policy check` exits with 0 when allowed, 1 when denied, 255 on errors.
//! - Secrets shown once (API keys, activation codes) are printed alone on stdout.
//! - The terminal is restored on every exit path.
//! - A shell, exec or forward session the relay made resumable survives a cut of its
//!   stream: the CLI opens a new one with the session's latest token for as long as
//!   the relay holds the session, showing one status line meanwhile (`resume`).
//! - Flow control: the CLI never sends more than the agent granted, and returns
//!   credit only for bytes it has written out.

pub mod admin;
pub mod audit;
pub mod client;
pub mod config;
pub mod forward;
pub mod join;
pub mod ls;
pub mod policy;
pub mod recordings;
pub mod replay;
pub mod resume;
pub mod session;
pub mod sessions;
pub mod ssh;
mod status;
pub mod table;
pub mod terminal;
pub mod when;
