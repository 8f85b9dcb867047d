//! # cli: `sesame`, the user's tool
//!
//! Lists targets, runs commands, opens interactive shells, forwards TCP ports and
//! pushes short-lived SSH keys through a Sesame relay. Settings come from flags, then `SESAME_RELAY` / `SESAME_API_KEY` /
//! `SESAME_CA`, then `~/.config/sesame/config.toml`.
//!
//! ## Contract
//! - `sesame exec` and `sesame shell` exit with the remote exit code (128 + N for a
//!   signal), and with 255 when Sesame itself fails, after one `error:` line.
//! - The terminal is restored on every exit path.
//! - Flow control: the CLI never sends more than the agent granted, and returns
//!   credit only for bytes it has written out.

pub mod client;
pub mod config;
pub mod forward;
pub mod ls;
pub mod session;
pub mod ssh;
pub mod terminal;
