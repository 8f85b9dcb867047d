//! # agent-embedded: Sesame on a microcontroller
//!
//! The embedded driver of `agent-core`: no heap, no global allocator, every buffer
//! sized by const generics, no chip or HAL imports (boards under `boards/` bring those).
//!
//! ## Contract
//! - [`console::Console`] is what a `shell` session runs: a line editor with built-in
//!   commands (`help`, `uptime`, `mem`, `net`, `sessions`, `echo`, `reboot`) and the
//!   board's own ([`console::Board`]). An `exec` session runs one line through
//!   [`console::Console::run_line`] and returns its output and exit status.
//! - Input is bytes from the session, output goes into a fixed buffer the caller
//!   drains; nothing blocks and nothing allocates.
//!
//! ## Status
//! The network side (embassy-net TCP, embedded-tls, WebSocket framing, the session
//! engine loop) and the QEMU and STM32 boards are not written yet (issue 3).
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod console;
pub mod engine;
pub mod link;
