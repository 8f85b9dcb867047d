//! Why a relay connection ends, in the words every agent logs it with.

use heapless::String;

use super::{AuthError, Event, UseError};
use crate::error::ProtocolError;
use crate::wire::ErrorCode;

/// Longest relay message a [`Failure`] keeps.
pub const MESSAGE_MAX: usize = 128;

/// Why the connection has to end: the driver drops it and reconnects.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// Nothing received for too long, or the handshake did not finish in time.
    Lost,
    /// The relay reported an error (wrong key, unknown agent, ...) and hangs up.
    Refused {
        /// Its code.
        code: ErrorCode,
        /// Its message, clipped.
        message: String<MESSAGE_MAX>,
    },
    /// The relay broke the protocol ([`super::Agent::handle_frame`] said how).
    Protocol(ProtocolError),
    /// The challenge could not be answered.
    Auth(AuthError),
    /// The driver misused the engine (a bug of the driver).
    Internal(UseError),
}

impl Failure {
    /// The failure an event announces ([`Event::PeerError`], [`Event::ConnectionLost`]);
    /// `None` for every other event.
    pub fn of(ev: &Event<'_>) -> Option<Failure> {
        match *ev {
            Event::PeerError { code, message } => Some(Failure::Refused {
                code,
                message: super::clip(message),
            }),
            Event::ConnectionLost => Some(Failure::Lost),
            _ => None,
        }
    }
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Failure::Lost => f.write_str("relay connection lost (no answer in time)"),
            Failure::Refused { message, .. } => write!(f, "relay refused: {message}"),
            Failure::Protocol(e) => write!(f, "relay broke the protocol: {e}"),
            Failure::Auth(e) => write!(f, "cannot answer the relay's challenge: {e}"),
            Failure::Internal(e) => write!(f, "internal error: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::super::{Agent, AgentConfig, Event};
    use super::*;
    use crate::wire::{Bytes, Frame, Hello};
    use crate::Instant;
    use std::string::ToString;
    use std::vec;

    fn enc(f: Frame) -> std::vec::Vec<u8> {
        let mut buf = vec![0u8; f.buffer_len()];
        f.encode(&mut buf).unwrap();
        buf
    }

    /// An engine whose relay has sent its `Hello` and challenge `nonce`.
    fn challenged(agent: &mut Agent<1>, nonce: &[u8]) -> Option<Event<'static>> {
        let now = Instant(0);
        let mut out = [0u8; 4096];
        while agent.poll_transmit(now, &mut out).unwrap().is_some() {}
        let hello = enc(Frame::Hello(Hello {
            version: crate::PROTOCOL_VERSION,
            max_frame: 4096,
            max_sessions: 0,
            features: 0,
        }));
        assert_eq!(agent.handle_frame(now, &hello), Ok(None));
        let challenge = enc(Frame::Challenge {
            nonce: Bytes(nonce),
        });
        let leaked: &'static [u8] = std::boxed::Box::leak(challenge.into_boxed_slice());
        agent.handle_frame(now, leaked).unwrap()
    }

    #[test]
    fn a_challenge_is_answered_with_the_signed_auth_message() {
        let mut agent: Agent<1> = Agent::new(AgentConfig::default(), Instant(0));
        let nonce = [7u8; 32];
        let Some(Event::Challenge { nonce: got }) = challenged(&mut agent, &nonce) else {
            panic!("no challenge");
        };
        let mut signed = std::vec::Vec::new();
        let sign = |m: &[u8]| {
            signed = m.to_vec();
            [2u8; 64]
        };
        agent
            .answer_challenge(got, [1; 32], sign, "CODE", "console")
            .unwrap();
        let mut want = crate::wire::AUTH_CONTEXT.to_vec();
        want.extend_from_slice(&nonce);
        assert_eq!(
            signed, want,
            "the signed message is the context, then the nonce"
        );
        let mut out = [0u8; 4096];
        let n = agent.poll_transmit(Instant(0), &mut out).unwrap().unwrap();
        match Frame::decode(&out[..n]).unwrap() {
            Frame::Auth(a) => {
                assert_eq!(a.public_key.0, &[1; 32]);
                assert_eq!(a.signature.0, &[2; 64]);
                assert_eq!((a.activation, a.account), ("CODE", "console"));
            }
            f => panic!("expected Auth, got {f:?}"),
        }
        // A nonce of another length is never signed.
        let mut asked = false;
        let r = agent.answer_challenge(
            &[1; 8],
            [1; 32],
            |_| {
                asked = true;
                [0; 64]
            },
            "",
            "console",
        );
        assert_eq!(r, Err(AuthError::Nonce));
        assert!(!asked);
    }

    #[test]
    fn relay_errors_and_silence_are_failures_other_events_are_not() {
        let refused = Failure::of(&Event::PeerError {
            code: ErrorCode::AUTH,
            message: "unknown agent key",
        })
        .unwrap();
        assert_eq!(refused.to_string(), "relay refused: unknown agent key");
        assert_eq!(Failure::of(&Event::ConnectionLost), Some(Failure::Lost));
        assert_eq!(Failure::of(&Event::Authenticated { agent_id: "a1" }), None);
        let long = "x".repeat(300);
        let Some(Failure::Refused { message, .. }) = Failure::of(&Event::PeerError {
            code: ErrorCode::AUTH,
            message: &long,
        }) else {
            panic!("not refused");
        };
        assert_eq!(message.len(), MESSAGE_MAX);
    }
}
