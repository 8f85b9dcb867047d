//! The agent engine fed an arbitrary sequence of messages and driver calls: it never
//! panics, never sends data beyond the peer's credit, and never holds more sessions
//! than its capacity.
#![no_main]

use agent_core::session::{Agent, AgentConfig, Event};
use agent_core::wire::{Exit, Frame, Hello, Stream};
use agent_core::Instant;
use libfuzzer_sys::fuzz_target;

fn enc(f: Frame) -> Vec<u8> {
    let mut b = vec![0u8; f.buffer_len()];
    f.encode(&mut b).unwrap();
    b
}

fuzz_target!(|data: &[u8]| {
    let mut now = Instant(0);
    let mut agent: Agent<3> = Agent::new(AgentConfig::default(), now);
    let mut out = vec![0u8; 32 * 1024];
    // Get through the handshake so that session frames are reachable.
    let _ = agent.handle_frame(
        now,
        &enc(Frame::Hello(Hello {
            version: agent_core::PROTOCOL_VERSION,
            max_frame: 4096,
            max_sessions: 0,
            features: 0,
        })),
    );
    let _ = agent.handle_frame(
        now,
        &enc(Frame::Challenge {
            nonce: agent_core::wire::Bytes(&[0; 32]),
        }),
    );
    agent.authenticate([0; 32], [0; 64], "", "root").unwrap();
    let _ = agent.handle_frame(now, &enc(Frame::AuthOk { agent_id: "a" }));
    let mut rest = data;
    while let [op, arg, tail @ ..] = rest {
        rest = tail;
        let sid = u32::from(*arg % 5);
        match op % 8 {
            0 => {
                let len = (*arg as usize).min(rest.len());
                let (msg, tail) = rest.split_at(len);
                rest = tail;
                if let Ok(Some(Event::Open { sid, .. })) = agent.handle_frame(now, msg) {
                    if arg % 2 == 0 {
                        agent.accept(sid)
                    } else {
                        agent.reject(sid, agent_core::wire::ErrorCode::SPAWN, "no")
                    }
                }
            }
            1 => {
                let before = agent.send_credit(sid, 0);
                if let Ok((n, _)) =
                    agent.send_data(now, sid, 0, Stream::OUT, &[0u8; 5000], &mut out)
                {
                    assert!(n as u32 <= before, "sent beyond credit");
                }
            }
            2 => agent.consumed(sid, 0, *arg as usize * 100),
            3 => agent.eof(sid, 0),
            4 => agent.close(sid, Exit::Code(i32::from(*arg)), "done"),
            5 => {
                now = Instant(now.0 + u64::from(*arg) * 1000);
                agent.handle_timeout(now);
            }
            _ => {}
        }
        while agent.poll_transmit(now, &mut out).is_some() {}
        while agent.poll_event().is_some() {}
        assert!(agent.session_count() <= 3);
    }
});
