//! # web-client: the browser console's protocol client
//!
//! agent-core's [`Client`] for `wasm32-unknown-unknown`, so the page speaks the
//! same frames as the CLI through the same code (no second encoder in
//! JavaScript). One shell session per module instance; the page
//! (`relay/web/src/client.js`) instantiates one per terminal.
//!
//! ## Contract (the ABI `client.js` uses)
//! - Memory: [`input`] is where the page writes what it hands over (a WebSocket
//!   message received, or bytes typed), [`output`] where a frame to send is
//!   encoded, [`event`] eight words (`u32` in WebAssembly) describing the last event. Every length is
//!   a byte count in those areas; a pointer in [`event`] is an address in the
//!   module's memory, valid until the next call.
//! - Calls return a non-negative count or event kind, or [`ERROR`] with the
//!   message at `event[2..4]` (pointer, length). A protocol error ends the
//!   session (as in the CLI); nothing here panics on bad input.
//! - The exports are unmangled in WebAssembly only: on the host (tests) names such
//!   as `close` and `send` would shadow the C library's.
//! - No allocation, no clock: timers (keepalive, reconnect backoff) are the
//!   page's, as they are the CLI's.

#![cfg_attr(target_arch = "wasm32", no_std)]

use core::cell::UnsafeCell;
use core::fmt::Write as _;
use core::mem::MaybeUninit;

use agent_core::client::{Client, ClientEvent, Place};
use agent_core::wire::{self, Exit, Frame, Kind};

/// The session's id on the stream (the relay rewrites it).
pub const SID: u32 = 1;
/// Output the page can take before returning credit, at first.
pub const WINDOW: u32 = 256 * 1024;
/// What that grows to for bulk output (as the CLI's).
pub const MAX_WINDOW: u32 = 4 * 1024 * 1024;
/// Typed bytes held until the agent acknowledges them (the replay buffer).
pub const INPUT: usize = 64 * 1024;
/// A WebSocket message, at most (the relay's limit).
pub const MESSAGE: usize = wire::DEFAULT_MAX_FRAME as usize + 1024;
/// A frame sent, at most.
pub const FRAME: usize = wire::DEFAULT_MAX_FRAME as usize;
/// Where a session stands, saved ([`save`]): the [`Place`] (21 bytes) and the
/// input not acknowledged.
pub const SAVED: usize = PLACE + INPUT;
const PLACE: usize = 4 + 8 + 1 + 8;
/// Returned when a call failed: the message is at `event[2..4]`.
pub const ERROR: i32 = -1;

type Session = Client<1, [u8; INPUT]>;

/// Event kinds [`handle`] returns (`event` holds the rest).
pub mod kind {
    /// Nothing for the page.
    pub const NONE: i32 = 0;
    /// The session runs.
    pub const ACCEPTED: i32 = 1;
    /// Refused: `event[2..4]` the reason.
    pub const REJECTED: i32 = 2;
    /// Output: `event[0]` the stream (0 stdout, 1 stderr), `event[2..4]` the bytes.
    pub const DATA: i32 = 3;
    /// The output ended.
    pub const EOF: i32 = 4;
    /// Resumable: `event[0]` the hold in seconds, `event[2..4]` the token.
    pub const RESUMABLE: i32 = 5;
    /// A side is away: nothing goes until [`RESUMED`].
    pub const SUSPENDED: i32 = 6;
    /// The session goes on.
    pub const RESUMED: i32 = 7;
    /// A line from the relay: `event[2..4]`.
    pub const NOTICE: i32 = 8;
    /// Over: `event[0]` 0 exit code, 1 signal, 2 aborted; `event[1]` the value;
    /// `event[2..4]` the reason (or words for the code).
    pub const CLOSED: i32 = 9;
    /// (From [`super::decode`]) the terminal's size: `event[0]` columns, `event[1]` rows.
    pub const RESIZE: i32 = 10;
}

/// The module's session, if it has one (`live`): all zeros when it has none (see
/// `STATE`).
struct Held {
    live: bool,
    session: MaybeUninit<Session>,
}

impl Held {
    fn as_ref(&self) -> Option<&Session> {
        // SAFETY: `live` says it was written (`insert`).
        self.live.then(|| unsafe { self.session.assume_init_ref() })
    }

    fn as_mut(&mut self) -> Option<&mut Session> {
        // SAFETY: as above.
        self.live.then(|| unsafe { self.session.assume_init_mut() })
    }

    fn insert(&mut self, s: Session) -> &mut Session {
        if self.live {
            // SAFETY: as above; it is replaced at once.
            unsafe { self.session.assume_init_drop() };
        }
        self.live = true;
        self.session.write(s)
    }
}

struct State {
    session: Held,
    input: [u8; MESSAGE],
    output: [u8; FRAME],
    event: [usize; 8],
    text: [u8; 256],
    saved: [u8; SAVED],
}

/// The module's one state. WebAssembly without threads runs one call at a time.
struct Cell(UnsafeCell<State>);
// SAFETY: wasm32-unknown-unknown has no threads; on the host (tests) each test
// takes `LOCK` before touching the state.
unsafe impl Sync for Cell {}

// SAFETY: all zeros is a `State`: no session (`live` false), empty buffers. As
// one zeroed image it lands in zeroed memory, not in the module's data section
// (whose bytes every page would download: 133 KB of them when the buffers were
// written out, 332 KB with an `Option` of the session).
static STATE: Cell = Cell(UnsafeCell::new(unsafe {
    MaybeUninit::zeroed().assume_init()
}));

fn state() -> &'static mut State {
    // SAFETY: see `Cell`: one call at a time, and no call keeps a reference past
    // its return.
    unsafe { &mut *STATE.0.get() }
}

/// Where the page writes a message received, or bytes typed.
#[cfg_attr(target_arch = "wasm32", no_mangle)]
pub extern "C" fn input() -> *mut u8 {
    state().input.as_mut_ptr()
}

/// How much [`input`] holds.
#[cfg_attr(target_arch = "wasm32", no_mangle)]
pub extern "C" fn input_capacity() -> usize {
    MESSAGE
}

/// Where a frame to send is.
#[cfg_attr(target_arch = "wasm32", no_mangle)]
pub extern "C" fn output() -> *const u8 {
    state().output.as_ptr()
}

/// The last event's eight words.
#[cfg_attr(target_arch = "wasm32", no_mangle)]
pub extern "C" fn event() -> *const usize {
    state().event.as_ptr()
}

/// Describe `s` (in memory that outlives the call) at `event[2..4]`.
fn point(ev: &mut [usize; 8], s: &[u8]) {
    ev[2] = s.as_ptr() as usize;
    ev[3] = s.len();
}

/// An error's words in `text`, described at `event[2..4]`; returns [`ERROR`].
fn fail(st: &mut State, args: core::fmt::Arguments<'_>) -> i32 {
    struct W<'a>(&'a mut [u8], usize);
    impl core::fmt::Write for W<'_> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let room = self.0.len() - self.1;
            // Cut at a character boundary.
            let mut n = s.len().min(room);
            while !s.is_char_boundary(n) {
                n -= 1;
            }
            self.0[self.1..self.1 + n].copy_from_slice(&s.as_bytes()[..n]);
            self.1 += n;
            Ok(())
        }
    }
    let mut w = W(&mut st.text, 0);
    let _ = w.write_fmt(args);
    let n = w.1;
    let State { text, event, .. } = st;
    point(event, &text[..n]);
    ERROR
}

/// Start a shell session of `cols` x `rows`: its `Open` frame is at [`output`]
/// (returns its length).
#[cfg_attr(target_arch = "wasm32", no_mangle)]
pub extern "C" fn open_shell(cols: u16, rows: u16) -> i32 {
    let st = state();
    let session = st.session.insert(
        Session::new(SID, WINDOW)
            .growing(MAX_WINDOW)
            .with_prompt_acks(),
    );
    let kind = Kind::Shell {
        term: "xterm-256color",
        cols,
        rows,
    };
    match session.open(kind, "", &mut st.output) {
        Ok(n) => n as i32,
        Err(e) => fail(st, format_args!("cannot open the session: {e:?}")),
    }
}

/// Hand over the message of `len` bytes at [`input`]: returns what it means for
/// the page (a [`kind`]), or [`ERROR`].
#[cfg_attr(target_arch = "wasm32", no_mangle)]
pub extern "C" fn handle(len: usize) -> i32 {
    let st = state();
    let Some(session) = st.session.as_mut() else {
        return fail(st, format_args!("no session"));
    };
    let msg = &st.input[..len.min(MESSAGE)];
    let ev = &mut st.event;
    let event = match session.handle_frame(msg) {
        Ok(e) => e,
        Err(e) => {
            // The session cannot go on: say so, as the CLI does.
            session.close("the browser's client saw a protocol error");
            return fail(st, format_args!("protocol error: {e:?}"));
        }
    };
    *ev = [0; 8];
    match event {
        None => kind::NONE,
        Some(ClientEvent::Accepted) => kind::ACCEPTED,
        Some(ClientEvent::Rejected { reason, code }) => {
            let words = code.words().unwrap_or("refused");
            point(
                ev,
                if reason.is_empty() { words } else { reason }.as_bytes(),
            );
            kind::REJECTED
        }
        Some(ClientEvent::Data { stream, data, .. }) => {
            ev[0] = usize::from(stream.0);
            point(ev, data);
            kind::DATA
        }
        Some(ClientEvent::Eof { .. }) => kind::EOF,
        Some(ClientEvent::Resumable { hold, token }) => {
            ev[0] = hold as usize;
            point(ev, token.as_bytes());
            kind::RESUMABLE
        }
        Some(ClientEvent::Suspended) => kind::SUSPENDED,
        Some(ClientEvent::Resumed) => kind::RESUMED,
        Some(ClientEvent::Notice { message }) => {
            point(ev, message.as_bytes());
            kind::NOTICE
        }
        Some(ClientEvent::Closed { exit, reason }) => {
            exit_words(ev, exit, reason);
            kind::CLOSED
        }
        // A shell has no forward channels.
        Some(
            ClientEvent::ChannelAccepted { .. }
            | ClientEvent::ChannelRejected { .. }
            | ClientEvent::ChannelClosed { .. },
        ) => kind::NONE,
    }
}

fn exit_words(ev: &mut [usize; 8], exit: Exit, reason: &str) {
    let (how, value, words) = match exit {
        Exit::Code(c) => (0, c as u32 as usize, ""),
        Exit::Signal(s) => (1, usize::from(s), ""),
        Exit::Aborted(code) => (2, usize::from(code.0), code.words().unwrap_or("")),
    };
    ev[0] = how;
    ev[1] = value;
    point(
        ev,
        if reason.is_empty() { words } else { reason }.as_bytes(),
    );
}

/// The next frame to send, at [`output`]: its length, 0 when there is none.
#[cfg_attr(target_arch = "wasm32", no_mangle)]
pub extern "C" fn transmit() -> i32 {
    let st = state();
    let Some(session) = st.session.as_mut() else {
        return 0;
    };
    match session.poll_transmit(&mut st.output) {
        Ok(Some(n)) => n as i32,
        Ok(None) => 0,
        Err(e) => fail(st, format_args!("cannot send: {e:?}")),
    }
}

/// Typed bytes, `len` of them at [`input`]: returns how many were taken (the
/// rest waits for room: call again after [`transmit`]).
#[cfg_attr(target_arch = "wasm32", no_mangle)]
pub extern "C" fn send(len: usize) -> i32 {
    let st = state();
    let Some(session) = st.session.as_mut() else {
        return fail(st, format_args!("no session"));
    };
    match session.send_slice(0, &st.input[..len.min(MESSAGE)]) {
        Ok(n) => n as i32,
        Err(e) => fail(st, format_args!("cannot send: {e:?}")),
    }
}

/// `n` bytes of output were written to the screen (credit goes back).
#[cfg_attr(target_arch = "wasm32", no_mangle)]
pub extern "C" fn consumed(n: usize) {
    if let Some(s) = state().session.as_mut() {
        s.consumed(0, n);
    }
}

/// The terminal's new size.
#[cfg_attr(target_arch = "wasm32", no_mangle)]
pub extern "C" fn resize(cols: u16, rows: u16) {
    if let Some(s) = state().session.as_mut() {
        s.resize(cols, rows);
    }
}

/// End the session (the user closed it); its `Close` goes with [`transmit`].
#[cfg_attr(target_arch = "wasm32", no_mangle)]
pub extern "C" fn close() {
    if let Some(s) = state().session.as_mut() {
        s.close("ended from the browser console");
    }
}

/// A new stream replaces a lost one: returns 0, or [`ERROR`] if the session
/// cannot resume (not resumable, not accepted yet, over).
#[cfg_attr(target_arch = "wasm32", no_mangle)]
pub extern "C" fn reattach() -> i32 {
    let st = state();
    let Some(session) = st.session.as_mut() else {
        return fail(st, format_args!("no session"));
    };
    match session.reattach() {
        Ok(()) => 0,
        Err(e) => fail(st, format_args!("the session cannot resume: {e:?}")),
    }
}

/// Whether the session is over (1) or not (0).
#[cfg_attr(target_arch = "wasm32", no_mangle)]
pub extern "C" fn over() -> i32 {
    state().session.as_ref().is_none_or(|s| s.is_over()) as i32
}

/// Where saved state is: what [`save`] writes, what [`take_up`] reads.
#[cfg_attr(target_arch = "wasm32", no_mangle)]
pub extern "C" fn saved() -> *mut u8 {
    state().saved.as_mut_ptr()
}

/// Save where the session stands at [`saved`] (returns its length) for a page
/// that replaces this one (a reload) to [`take_up`]; [`ERROR`] if it cannot be
/// taken up (not resumable, not running).
#[cfg_attr(target_arch = "wasm32", no_mangle)]
pub extern "C" fn save() -> i32 {
    let st = state();
    let Some((place, a, b)) = st.session.as_ref().and_then(|s| s.place_now()) else {
        return fail(st, format_args!("the session cannot be taken up"));
    };
    let out = &mut st.saved;
    out[..4].copy_from_slice(&place.hold.to_le_bytes());
    out[4..12].copy_from_slice(&place.received.to_le_bytes());
    out[12] = u8::from(place.eof);
    out[13..21].copy_from_slice(&place.acked.to_le_bytes());
    out[PLACE..PLACE + a.len()].copy_from_slice(a);
    out[PLACE + a.len()..PLACE + a.len() + b.len()].copy_from_slice(b);
    (PLACE + a.len() + b.len()) as i32
}

/// Take up a session saved by another page ([`save`], `len` bytes at [`saved`]):
/// it waits for a new stream's `Suspend`, as after [`reattach`].
#[cfg_attr(target_arch = "wasm32", no_mangle)]
pub extern "C" fn take_up(len: usize) -> i32 {
    let st = state();
    if !(PLACE..=SAVED).contains(&len) {
        return fail(
            st,
            format_args!("saved state of {len} bytes is not a session's"),
        );
    }
    let s = &st.saved;
    let word = |r: core::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&s[r]);
        u64::from_le_bytes(b)
    };
    let place = Place {
        hold: word(0..4) as u32,
        received: word(4..12),
        eof: s[12] != 0,
        acked: word(13..21),
    };
    match Session::take_up(SID, (WINDOW, MAX_WINDOW), place, &s[PLACE..len]) {
        Ok(session) => {
            st.session.insert(session.with_prompt_acks());
            0
        }
        Err(e) => fail(st, format_args!("cannot take the session up: {e:?}")),
    }
}

/// Decode a message of a read-only watch (`/v1/sessions/{id}/join`): the
/// terminal's size, output, or the end; [`kind::NONE`] for anything else.
#[cfg_attr(target_arch = "wasm32", no_mangle)]
pub extern "C" fn decode(len: usize) -> i32 {
    let st = state();
    let frame = match Frame::decode(&st.input[..len.min(MESSAGE)]) {
        Ok(f) => f,
        Err(e) => return fail(st, format_args!("bad frame: {e:?}")),
    };
    let ev = &mut st.event;
    *ev = [0; 8];
    match frame {
        Frame::Resize { cols, rows, .. } => {
            ev[0] = usize::from(cols);
            ev[1] = usize::from(rows);
            kind::RESIZE
        }
        Frame::Data { stream, data, .. } => {
            ev[0] = usize::from(stream.0);
            point(ev, data.0);
            kind::DATA
        }
        Frame::Close { exit, reason, .. } => {
            exit_words(ev, exit, reason);
            kind::CLOSED
        }
        _ => kind::NONE,
    }
}

#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(test)]
mod tests;
