//! Test support (feature `testing`, and this crate's own tests): an agent engine
//! brought through its handshake, so that a test starts where sessions begin.

use crate::session::{Agent, AgentConfig, Buffer};
use crate::wire::{self, Frame};
use crate::Instant;

/// An engine with `config`, connected and authenticated at `now` (the relay's
/// `Hello` announces 32 KiB frames), with nothing left to send.
///
/// # Panics
/// If the engine does not take the handshake: a test's setup is wrong.
pub fn authenticated<const N: usize, const C: usize, B: Buffer>(
    config: AgentConfig,
    now: Instant,
) -> Agent<N, C, B> {
    let mut agent = Agent::new(config, now);
    handshake(&mut agent, now);
    agent
}

/// Bring `agent` (new, or after [`Agent::reconnect`]) through the handshake at
/// `now`, with nothing left to send but what its sessions have.
///
/// # Panics
/// If the engine does not take the handshake.
pub fn handshake<const N: usize, const C: usize, B: Buffer>(
    agent: &mut Agent<N, C, B>,
    now: Instant,
) {
    let mut out = [0u8; 1024];
    let mut drain = |agent: &mut Agent<N, C, B>| {
        while agent.poll_transmit(now, &mut out).unwrap().is_some() {}
    };
    drain(agent);
    let feed = |agent: &mut Agent<N, C, B>, f: Frame| {
        let mut buf = [0u8; 256];
        let n = f.encode(&mut buf).unwrap();
        agent.handle_frame(now, &buf[..n]).unwrap();
    };
    feed(
        agent,
        Frame::Hello(wire::Hello {
            version: crate::PROTOCOL_VERSION,
            max_frame: 32 * 1024,
            max_sessions: 0,
            features: 0,
        }),
    );
    let nonce = [1u8; 32];
    feed(
        agent,
        Frame::Challenge {
            nonce: wire::Bytes(&nonce),
        },
    );
    agent
        .answer_challenge(&nonce, [0; 32], |_| [0; 64], "", "root")
        .unwrap();
    drain(agent);
    feed(agent, Frame::AuthOk { agent_id: "a" });
}
