//! The wire format: one [`Frame`] per WebSocket binary message.
//!
//! A frame is a postcard-encoded enum: a varint frame type followed by the fields of
//! that type in declaration order (varints for integers, a varint length then raw
//! bytes for byte strings and UTF-8 strings). `docs/protocol.md` gives every layout
//! byte by byte; `tests/vectors/frames.txt` holds the golden vectors.
//!
//! ## Panic contract
//! - [`Frame::decode`] never panics, whatever the input: it returns a [`DecodeError`].
//!   Payloads (`data`, strings) borrow from the input; nothing is copied.
//! - [`Frame::encode`] never panics: it writes into the caller's buffer and returns
//!   [`EncodeError::BufferTooSmall`] if [`Frame::buffer_len`] bytes do not fit.
//! - Codes that this version does not know (error codes, stream ids, signals) are
//!   newtypes over integers, so they survive a decode/encode round trip unchanged.
//!   An unknown *frame type* yields [`DecodeError::UnknownFrame`], which a receiver
//!   may skip: newer peers add frame types only behind feature bits.

mod bytes;
mod frame;
mod route;

pub use bytes::Bytes;
pub use frame::*;
pub use route::{has_sid, rewrite_sid, SidHeader, SID_HEADER_MAX};

use crate::error::{DecodeError, EncodeError};

/// Default largest frame, in bytes, a peer must accept (negotiated down in `Hello`).
pub const DEFAULT_MAX_FRAME: u32 = 32 * 1024;
/// Smallest `max_frame` a peer may announce.
pub const MIN_MAX_FRAME: u32 = 512;
/// Bytes of a `Data` frame that are not payload, at most (type, sid, ch, stream, len).
pub const DATA_OVERHEAD: usize = 1 + 5 + 3 + 1 + 5;
/// Bytes of a `DataAt` frame that are not payload, at most (its offset on top).
pub const DATA_AT_OVERHEAD: usize = DATA_OVERHEAD + 10;
/// Number of frame types this version knows.
pub const FRAME_TYPES: u32 = FRAME_NAMES.len() as u32;

/// The frame types, by number: the one table that [`Frame::frame_type`], the
/// decoder's "unknown frame type" and `docs/protocol.md` (checked by a test) agree
/// with. A new frame is appended here and to [`Frame`], never inserted.
pub const FRAME_NAMES: [&str; 27] = [
    "Hello",
    "Challenge",
    "Auth",
    "AuthOk",
    "Open",
    "Accept",
    "Reject",
    "Data",
    "Credit",
    "Resize",
    "Eof",
    "Close",
    "Signal",
    "Ping",
    "Pong",
    "Error",
    "ChannelOpen",
    "ChannelAccept",
    "ChannelReject",
    "ChannelClose",
    "Limit",
    "Notice",
    "Resumable",
    "Suspend",
    "Resume",
    "Ack",
    "DataAt",
];

impl<'a> Frame<'a> {
    /// The `Resume` for channel 0 of a session without one (a forward session's):
    /// it ends a side's answer to a `Suspend` (`docs/protocol.md`, section 8).
    pub fn end_of_resume(sid: u32) -> Frame<'static> {
        Frame::Resume {
            sid,
            ch: 0,
            offset: 0,
            limit: 0,
            eof: false,
            open: true,
        }
    }

    /// Decode one frame occupying all of `buf`.
    pub fn decode(buf: &'a [u8]) -> Result<Frame<'a>, DecodeError> {
        if buf.is_empty() {
            return Err(DecodeError::Empty);
        }
        let ty = read_varint_u32(buf).ok_or(DecodeError::Malformed)?;
        if ty >= FRAME_TYPES {
            return Err(DecodeError::UnknownFrame { frame_type: ty });
        }
        match postcard::take_from_bytes::<Frame<'a>>(buf) {
            Ok((frame, [])) => Ok(frame),
            // A newer peer's `Hello` may carry fields appended after ours.
            Ok((frame @ Frame::Hello(_), _)) => Ok(frame),
            Ok(_) => Err(DecodeError::TrailingBytes),
            Err(postcard::Error::DeserializeUnexpectedEnd) => Err(DecodeError::Truncated),
            Err(_) => Err(DecodeError::Malformed),
        }
    }

    /// Decode, refusing messages longer than `max` bytes before looking at them.
    pub fn decode_bounded(buf: &'a [u8], max: usize) -> Result<Frame<'a>, DecodeError> {
        if buf.len() > max {
            return Err(DecodeError::Oversized {
                len: buf.len(),
                max,
            });
        }
        Frame::decode(buf)
    }

    /// Exact number of bytes [`Frame::encode`] writes.
    pub fn buffer_len(&self) -> usize {
        postcard::serialize_with_flavor(self, postcard::ser_flavors::Size::default())
            .unwrap_or(usize::MAX)
    }

    /// Write the frame into `buf`; returns the number of bytes written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let needed = self.buffer_len();
        if buf.len() < needed {
            return Err(EncodeError::BufferTooSmall { needed });
        }
        postcard::to_slice(self, buf)
            .map(|s| s.len())
            .map_err(|_| EncodeError::BufferTooSmall { needed })
    }

    /// The frame type byte (the enum's discriminant), as in `docs/protocol.md`.
    pub fn frame_type(&self) -> u8 {
        match self {
            Frame::Hello(_) => 0,
            Frame::Challenge { .. } => 1,
            Frame::Auth(_) => 2,
            Frame::AuthOk { .. } => 3,
            Frame::Open { .. } => 4,
            Frame::Accept { .. } => 5,
            Frame::Reject { .. } => 6,
            Frame::Data { .. } => 7,
            Frame::Credit { .. } => 8,
            Frame::Resize { .. } => 9,
            Frame::Eof { .. } => 10,
            Frame::Close { .. } => 11,
            Frame::Signal { .. } => 12,
            Frame::Ping { .. } => 13,
            Frame::Pong { .. } => 14,
            Frame::Error { .. } => 15,
            Frame::ChannelOpen { .. } => 16,
            Frame::ChannelAccept { .. } => 17,
            Frame::ChannelReject { .. } => 18,
            Frame::ChannelClose { .. } => 19,
            Frame::Limit { .. } => 20,
            Frame::Notice { .. } => 21,
            Frame::Resumable { .. } => 22,
            Frame::Suspend { .. } => 23,
            Frame::Resume { .. } => 24,
            Frame::Ack { .. } => 25,
            Frame::DataAt { .. } => 26,
        }
    }

    /// The session a frame belongs to, for session-scoped frames.
    pub fn sid(&self) -> Option<u32> {
        match *self {
            Frame::Open { sid, .. }
            | Frame::Accept { sid, .. }
            | Frame::Reject { sid, .. }
            | Frame::Data { sid, .. }
            | Frame::Credit { sid, .. }
            | Frame::Resize { sid, .. }
            | Frame::Eof { sid, .. }
            | Frame::Close { sid, .. }
            | Frame::Signal { sid, .. }
            | Frame::ChannelOpen { sid, .. }
            | Frame::ChannelAccept { sid, .. }
            | Frame::ChannelReject { sid, .. }
            | Frame::ChannelClose { sid, .. }
            | Frame::Limit { sid, .. }
            | Frame::Notice { sid, .. }
            | Frame::Resumable { sid, .. }
            | Frame::Suspend { sid }
            | Frame::Resume { sid, .. }
            | Frame::Ack { sid, .. }
            | Frame::DataAt { sid, .. } => Some(sid),
            Frame::Error { sid, .. } if sid != 0 => Some(sid),
            _ => None,
        }
    }

    /// The same frame addressed to another session id (what the relay does when it
    /// routes a frame from a client stream to an agent connection and back).
    pub fn with_sid(self, new: u32) -> Frame<'a> {
        let mut f = self;
        match &mut f {
            Frame::Open { sid, .. }
            | Frame::Accept { sid, .. }
            | Frame::Reject { sid, .. }
            | Frame::Data { sid, .. }
            | Frame::Credit { sid, .. }
            | Frame::Resize { sid, .. }
            | Frame::Eof { sid, .. }
            | Frame::Close { sid, .. }
            | Frame::Signal { sid, .. }
            | Frame::Error { sid, .. }
            | Frame::ChannelOpen { sid, .. }
            | Frame::ChannelAccept { sid, .. }
            | Frame::ChannelReject { sid, .. }
            | Frame::ChannelClose { sid, .. }
            | Frame::Limit { sid, .. }
            | Frame::Notice { sid, .. }
            | Frame::Resumable { sid, .. }
            | Frame::Suspend { sid }
            | Frame::Resume { sid, .. }
            | Frame::Ack { sid, .. }
            | Frame::DataAt { sid, .. } => *sid = new,
            _ => {}
        }
        f
    }
}

/// Largest payload a `Data` frame may carry under a `max_frame` limit.
pub const fn max_data_len(max_frame: u32) -> usize {
    (max_frame as usize).saturating_sub(DATA_OVERHEAD)
}

/// The frame type and session id at the start of a session-scoped frame that does
/// not decode (a newer peer's `Kind` or `Exit`), so that only that session is
/// refused: `None` when even those cannot be read.
pub fn peek_session(buf: &[u8]) -> Option<(u32, u32)> {
    let ty = read_varint_u32(buf)?;
    let skip = buf.iter().take(5).position(|b| b & 0x80 == 0)? + 1;
    let sid = read_varint_u32(buf.get(skip..)?)?;
    Some((ty, sid))
}

fn read_varint_u32(buf: &[u8]) -> Option<u32> {
    let mut v: u32 = 0;
    for (i, b) in buf.iter().take(5).enumerate() {
        v |= u32::from(b & 0x7f).checked_shl(7 * i as u32)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Iterate over the arguments of an `Exec` argv: each argument is followed by one
/// NUL byte (`b"ls\0-l\0"`), so empty arguments are kept.
pub fn argv_iter(argv: &[u8]) -> impl Iterator<Item = &[u8]> {
    argv.split_inclusive(|b| *b == 0)
        .map(|a| a.strip_suffix(&[0]).unwrap_or(a))
}

/// Whether `argv` is well formed: at least one argument, each NUL-terminated.
pub fn argv_valid(argv: &[u8]) -> bool {
    argv.last() == Some(&0)
}

/// Longest account name an `Open` or `Auth` may carry, in bytes (Linux allows 32, the C
/// library's `LOGIN_NAME_MAX` more; no system uses longer ones).
pub const ACCOUNT_MAX: usize = 64;

/// Whether `account` may name an account in an `Open`: empty (the agent's default
/// account), or at most [`ACCOUNT_MAX`] bytes of ASCII letters, digits, `.`, `_`,
/// `-`, `@` and `$`, not starting with `-` and not `.` or `..` (the portable set
/// of POSIX plus what Samba and directory services use). An account name is never
/// clipped: a prefix may name another account. The default account an agent names
/// in `Auth` follows the same rule and may not be empty.
pub fn account_valid(account: &str) -> bool {
    let b = account.as_bytes();
    b.len() <= ACCOUNT_MAX
        && b.first() != Some(&b'-')
        && account != "."
        && account != ".."
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'@' | b'$'))
}

#[cfg(test)]
mod tests;
