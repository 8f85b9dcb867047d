//! Error types of the core: small, `Copy`, no strings.

use core::fmt;

/// Why a byte string is not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message holds no bytes at all.
    Empty,
    /// The message is longer than the negotiated maximum frame size.
    Oversized {
        /// Length of the message.
        len: usize,
        /// Largest length allowed.
        max: usize,
    },
    /// The frame type is not one this version knows; the peer may be newer.
    UnknownFrame {
        /// The frame type found.
        frame_type: u32,
    },
    /// The message ended in the middle of the frame.
    Truncated,
    /// A field holds a value that is not allowed (bad varint, bad UTF-8, bad variant).
    Malformed,
    /// The frame was complete but bytes followed it.
    TrailingBytes,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => write!(f, "empty frame"),
            DecodeError::Oversized { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max}")
            }
            DecodeError::UnknownFrame { frame_type } => {
                write!(f, "unknown frame type {frame_type}")
            }
            DecodeError::Truncated => write!(f, "truncated frame"),
            DecodeError::Malformed => write!(f, "malformed frame"),
            DecodeError::TrailingBytes => write!(f, "trailing bytes after frame"),
        }
    }
}

/// Why a frame could not be written into the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The buffer is too small; `needed` bytes would fit the frame.
    BufferTooSmall {
        /// Bytes the frame needs.
        needed: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BufferTooSmall { needed } => {
                write!(f, "output buffer too small: frame needs {needed} bytes")
            }
        }
    }
}

/// The peer broke the protocol. Connection-scoped unless the variant names a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame could not be decoded.
    Decode(DecodeError),
    /// A frame arrived that is not allowed in the current state (e.g. `Open` before `AuthOk`).
    UnexpectedFrame {
        /// The frame type.
        frame_type: u8,
    },
    /// The peer's protocol version is not supported.
    Version {
        /// The version the peer announced.
        peer: u16,
    },
    /// The peer sent more data than it had credit for.
    FlowControl {
        /// The session.
        sid: u32,
    },
    /// The peer granted credit that overflows the window counter.
    CreditOverflow {
        /// The session.
        sid: u32,
    },
    /// The peer named a channel that does not exist in the session.
    UnknownChannel {
        /// The session.
        sid: u32,
        /// The channel.
        ch: u16,
    },
    /// The peer opened a channel id that is already in use in the session.
    DuplicateChannel {
        /// The session.
        sid: u32,
        /// The channel.
        ch: u16,
    },
    /// The peer sent data after its end-of-file on the channel.
    DataAfterEof {
        /// The session.
        sid: u32,
    },
    /// The peer queued more control replies than the engine can hold.
    TooManyPending,
    /// A resumable session's peer acknowledged bytes never sent, or resumes from
    /// an offset this side no longer holds (or never sent): the stream cannot go on
    /// without a gap.
    ResumeOffset {
        /// The session.
        sid: u32,
    },
}

impl ProtocolError {
    /// The code a session aborted for this error ends with (`Exit::Aborted`), the
    /// same on every agent.
    pub fn code(&self) -> crate::wire::ErrorCode {
        use crate::wire::ErrorCode;
        match self {
            ProtocolError::FlowControl { .. } | ProtocolError::CreditOverflow { .. } => {
                ErrorCode::FLOW_CONTROL
            }
            _ => ErrorCode::PROTOCOL,
        }
    }

    /// The session this error is scoped to, if it is not connection-wide.
    pub fn session(&self) -> Option<u32> {
        match *self {
            ProtocolError::FlowControl { sid }
            | ProtocolError::CreditOverflow { sid }
            | ProtocolError::UnknownChannel { sid, .. }
            | ProtocolError::DuplicateChannel { sid, .. }
            | ProtocolError::DataAfterEof { sid }
            | ProtocolError::ResumeOffset { sid } => Some(sid),
            _ => None,
        }
    }
}

impl From<DecodeError> for ProtocolError {
    fn from(e: DecodeError) -> Self {
        ProtocolError::Decode(e)
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Decode(e) => write!(f, "{e}"),
            ProtocolError::UnexpectedFrame { frame_type } => {
                write!(f, "frame type {frame_type} not allowed in this state")
            }
            ProtocolError::Version { peer } => write!(
                f,
                "peer speaks protocol version {peer}, this side speaks {}",
                crate::PROTOCOL_VERSION
            ),
            ProtocolError::FlowControl { sid } => {
                write!(f, "session {sid}: peer sent more data than its credit")
            }
            ProtocolError::CreditOverflow { sid } => {
                write!(f, "session {sid}: credit overflows the window")
            }
            ProtocolError::UnknownChannel { sid, ch } => {
                write!(f, "session {sid}: unknown channel {ch}")
            }
            ProtocolError::DuplicateChannel { sid, ch } => {
                write!(f, "session {sid}: channel {ch} is already open")
            }
            ProtocolError::DataAfterEof { sid } => {
                write!(f, "session {sid}: data after end-of-file")
            }
            ProtocolError::TooManyPending => write!(f, "too many unanswered requests"),
            ProtocolError::ResumeOffset { sid } => write!(
                f,
                "session {sid}: the peer acknowledged or resumed from bytes this side does not hold"
            ),
        }
    }
}
