//! # agent-core: the Sesame protocol, sans I/O
//!
//! The wire format, the session table, flow control and keepalive timers of the
//! Sesame protocol (`docs/protocol.md`), written once and shared by the Linux agent,
//! the embedded agent, the relay and the CLI.
//!
//! ## Contract
//! - `no_std`, no `alloc`, no I/O, no clock, no async. Every buffer is fixed-size:
//!   capacities are const generics, output goes into buffers the caller hands in.
//! - Time is a parameter ([`Instant`]) and must never go backwards.
//! - The engine ([`session::Agent`]) follows the quinn-proto contract: inputs are
//!   `handle_*` methods; outputs are `poll_*` methods. **After any input the driver
//!   drains [`session::Agent::poll_transmit`] until it returns `None`, then reads
//!   [`session::Agent::poll_timeout`] and arms a timer for it, then drains
//!   [`session::Agent::poll_event`].** Events caused by a received frame are returned
//!   by `handle_frame` itself, so that payloads stay borrowed from the receive buffer
//!   and are never copied by the core.
//! - Nothing here panics on any input from the network (see [`wire`]).
//! - The engine owns every byte a session sends: drivers write output into a
//!   channel's [`session::Buffer`] and report ends (`finish`, `exited`); the engine
//!   decides what goes out and when a channel or session is over. The client side
//!   of a session ([`client::Client`]) uses the same channel machinery.
//! - Shared by every agent: the reconnect [`backoff::Backoff`], the error codes of
//!   [`ProtocolError::code`], the authentication message ([`session::auth_message`],
//!   [`session::Agent::answer_challenge`]), why a connection ends ([`session::Failure`]),
//!   the destination rules of forward sessions ([`dest`]).
//!
//! ## Non-goals
//! Cryptography (the driver signs the authentication challenge), TLS, WebSocket
//! framing, process management and scheduling all belong to drivers.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backoff;
pub mod client;
pub mod dest;
pub mod error;
pub mod flow;
pub mod limits;
pub mod provision;
pub mod session;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod resume_tests;
pub mod time;
pub mod wire;

pub use error::{DecodeError, EncodeError, ProtocolError};
pub use time::{Duration, Instant};

/// The protocol version this crate speaks (carried in `Hello`). Version 2 added the
/// `account` of `Open`; peers of different versions refuse each other at `Hello`.
pub const PROTOCOL_VERSION: u16 = 2;
