//! # agent-embedded: Sesame on a microcontroller
//!
//! The embedded driver of `agent-core` on embassy: no heap, no global allocator,
//! every buffer static and sized by consts and const generics, no chip or HAL
//! imports (boards under `boards/` bring the network driver, time driver and RNG).
//!
//! ## Contract
//! - [`link::run`] never returns: it dials the relay from the provisioning image
//!   ([`agent_core::provision`]) over embassy-net TCP, speaks TLS 1.3 with
//!   embedded-tls verifying the relay's certificate chain and name against the
//!   pinned CA, upgrades to a WebSocket on `/v1/agent`, authenticates with the
//!   device's Ed25519 key, serves sessions, and reconnects with the backoff of
//!   every agent ([`agent_core::backoff::Backoff`]: 0.5 s doubling to 30 s,
//!   jittered from the board's RNG) when the relay or the network goes away.
//!   Each failure is one log line through [`console::Board::log`].
//! - [`engine::Engine`] is the sans-I/O part: agent-core's `Agent` with a terminal
//!   per shell or exec session (`terminals`) and the forwarding pool ([`forward`]),
//!   [`engine::DEFAULT_SESSIONS`] (4) sessions, announced in `Hello`
//!   with `max_frame` [`engine::MAX_FRAME`], which the relay keeps to. agent-core
//!   holds each channel's output ([`engine::RING`] bytes) and decides when it ends;
//!   a console writes into it a step at a time, so long output streams.
//! - Sessions outlive a relay connection when the relay makes them resumable
//!   (docs/protocol.md §8; `Hello` announces `features::RESUME`): the engine and the
//!   forwarding pool's sockets are made once, and a held session goes on while the
//!   link is down (a shell or exec runs, a forwarded connection stays connected and
//!   carries what the client sent before the cut; output waits in its channel's
//!   buffer until the client acknowledges it, and is sent again from where the
//!   client stands once the relay resumes it on the next connection) until its hold
//!   passes (so its connections keep their ports of the pool for as long). Every
//!   other session ends when the link drops.
//! - `shell` runs [`console::Console`]: a line editor with built-in commands
//!   (`help`, `uptime`, `mem`, `net`, `sessions`, `echo`, `reboot`) and the
//!   board's own ([`console::Board`]); `exec` runs one line and returns its output
//!   and exit status (127 for an unknown command).
//! - `forward` sessions are served when the provisioning image has forwarding rules
//!   ([`agent_core::provision::ForwardRules`]; then `Hello` announces them): each
//!   connection is an embassy-net TCP connection from a pool of
//!   [`forward::PORTS`] (2) with static buffers ([`tcp::PortBuffers`]), at most
//!   [`engine::CHANNELS`] per session. A destination the rules deny is refused with
//!   `ChannelReject(DENIED, "destination HOST:PORT is denied by the device's
//!   forwarding policy")`, one beyond the pool with `CHANNEL_LIMIT`. Bytes go through
//!   agent-core's channels both ways, within its credit ([`forward`]). Without rules,
//!   forward sessions are refused at the relay (not announced); ssh-key sessions
//!   always are. A device has no accounts:
//!   sessions run as [`engine::ACCOUNT`] (`console`), the default account it names
//!   in `Auth`, and an `Open` naming another account is refused (`DENIED`).
//! - The relay must cap TLS records at 4 KiB ([`link::TLS_READ`]); the Sesame
//!   relay does. A board's embassy-net `StackResources` holds [`link::SOCKETS`].
//! - Nothing panics on input from the network; a bad frame ends at most its session,
//!   a protocol violation ends the connection (then it reconnects).
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod console;
pub mod engine;
pub mod forward;
pub mod link;
pub mod tcp;
mod terminals;

#[cfg(test)]
mod resume_tests;
#[cfg(test)]
mod rig;
