//! The agent engine fed an arbitrary sequence of messages and driver calls: it never
//! panics, never sends data beyond the peer's credit, and never holds more sessions
//! than its capacity.
#![no_main]

use std::collections::HashMap;

use agent_core::session::{Agent, AgentConfig, Event, SessionHandle};
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
    // The sessions opened, by wire id, and the credit the peer granted each (a
    // model: data sent beyond it is a bug).
    let mut handles: HashMap<u32, SessionHandle> = HashMap::new();
    let mut credit: HashMap<u32, i64> = HashMap::new();
    let mut rest = data;
    while let [op, arg, tail @ ..] = rest {
        rest = tail;
        let sid = u32::from(*arg % 5);
        let h = handles.get(&sid).copied();
        match op % 8 {
            0 => {
                let len = (*arg as usize).min(rest.len());
                let (msg, tail) = rest.split_at(len);
                rest = tail;
                let granted = match Frame::decode(msg) {
                    Ok(Frame::Credit { sid, ch: 0, bytes }) => Some((sid, i64::from(bytes))),
                    _ => None,
                };
                let window = match Frame::decode(msg) {
                    Ok(Frame::Open { window, .. }) => i64::from(window),
                    _ => 0,
                };
                match agent.handle_frame(now, msg) {
                    Ok(Some(Event::Open { session, .. })) => {
                        handles.insert(session.sid(), session);
                        credit.insert(session.sid(), window);
                        let _ = if arg % 2 == 0 {
                            agent.accept(session)
                        } else {
                            agent.reject(session, agent_core::wire::ErrorCode::SPAWN, "no")
                        };
                    }
                    Ok(_) => {
                        if let Some((sid, n)) = granted {
                            *credit.entry(sid).or_default() += n;
                        }
                    }
                    Err(_) => {}
                }
            }
            1 => {
                if let Some(h) = h {
                    let _ = agent.send_slice(h.main(), Stream::OUT, &[0u8; 5000]);
                }
            }
            2 => {
                if let Some(h) = h {
                    let _ = agent.consumed(h.main(), *arg as usize * 100);
                }
            }
            3 => {
                if let Some(h) = h {
                    let _ = agent.finish(h.main());
                }
            }
            4 => {
                if let Some(h) = h {
                    let _ = agent.exited(h, Exit::Code(i32::from(*arg)), "done");
                }
            }
            5 => {
                now = Instant(now.0 + u64::from(*arg) * 1000);
                agent.handle_timeout(now);
            }
            _ => {}
        }
        while let Ok(Some(n)) = agent.poll_transmit(now, &mut out) {
            if let Ok(Frame::Data { sid, ch: 0, data, .. }) = Frame::decode(&out[..n]) {
                let c = credit.entry(sid).or_default();
                *c -= data.0.len() as i64;
                assert!(*c >= 0, "session {sid} sent beyond its credit");
            }
        }
        while agent.poll_event().is_some() {}
        assert!(agent.session_count() <= 3);
    }
});
