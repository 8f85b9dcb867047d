//! The engine on the host: a board, a relay that speaks frames, and what the device
//! sent (host tests of the engine and of forwarding).

extern crate std;

use core::fmt::{self, Write};

use agent_core::provision::ForwardRules;
use agent_core::session::auth_message;
use agent_core::wire::{features, Bytes, Frame, Hello, Kind, Stream};
use agent_core::Instant;
use ed25519_dalek::{Signature, SigningKey, Verifier};
pub(crate) use std::string::String as S;
pub(crate) use std::vec::Vec as V;

use crate::console::{Board, Step};
use crate::engine::Failure;
use crate::engine::{Engine, ACCOUNT, MAX_FRAME};

#[derive(Default)]
pub(crate) struct TestBoard {
    pub log: V<S>,
    pub reboots: usize,
    /// Parts of `count` commands run, in all.
    pub parts: usize,
}

impl Board for TestBoard {
    fn uptime_ms(&self) -> u64 {
        61_500
    }
    fn memory(&self) -> (usize, usize) {
        (1000, 4000)
    }
    fn network(&self, out: &mut dyn Write) -> fmt::Result {
        out.write_str("lan9118 up")
    }
    fn sessions(&self) -> (usize, usize) {
        (99, 99) // the engine answers this itself
    }
    fn request_reboot(&mut self) {
        self.reboots += 1;
    }
    fn log(&mut self, line: fmt::Arguments<'_>) {
        self.log.push(std::format!("{line}"));
    }
    /// `count N`: N numbered lines, 40 to a part (440 bytes).
    fn command(&mut self, argv: &[&str], part: usize, out: &mut dyn Write) -> Option<Step> {
        (argv[0] == "count").then(|| {
            self.parts += 1;
            let n: usize = argv.get(1).and_then(|a| a.parse().ok()).unwrap_or(0);
            for i in part * 40..((part + 1) * 40).min(n) {
                let _ = writeln!(out, "line {i:04}");
            }
            if (part + 1) * 40 < n {
                Step::More
            } else {
                Step::Done(0)
            }
        })
    }
}

/// What `count n` prints.
pub(crate) fn counted(n: usize) -> S {
    (0..n).map(|i| std::format!("line {i:04}\r\n")).collect()
}

pub(crate) fn enc(f: Frame) -> V<u8> {
    let mut b = std::vec![0u8; f.buffer_len()];
    let n = f.encode(&mut b).unwrap();
    b.truncate(n);
    b
}

pub(crate) struct Rig {
    pub engine: Engine<'static, 4>,
    pub board: TestBoard,
    pub now: Instant,
}

/// What the device sent, as (frame debug text, raw bytes).
pub(crate) type Sent = V<(S, V<u8>)>;

impl Rig {
    pub fn key() -> &'static SigningKey {
        std::boxed::Box::leak(std::boxed::Box::new(SigningKey::from_bytes(&[5; 32])))
    }

    /// Connected, authenticated as `dev-1`.
    pub fn ready() -> Rig {
        Rig::ready_with(None)
    }

    /// Connected and authenticated, provisioned with forwarding `rules`.
    pub fn ready_with(rules: Option<ForwardRules<'static>>) -> Rig {
        let now = Instant(1000);
        let mut rig = Rig {
            engine: Engine::new(Self::key(), rules, now),
            board: TestBoard::default(),
            now,
        };
        assert!(
            rig.drain().is_empty(),
            "nothing goes out before a connection"
        );
        rig.connect();
        rig
    }

    /// The link drops: the engine hears of it at once.
    pub fn cut(&mut self) {
        self.engine.disconnected(self.now, &mut self.board);
        assert!(!self.engine.is_connected());
    }

    /// A new link is up: the handshake runs on it, as on the first one.
    pub fn connect(&mut self) {
        let key = Self::key();
        let forward = self.engine.forwarding().ports.enabled();
        self.engine.connected(self.now, &mut self.board);
        let hello = self.drain();
        match Frame::decode(&hello[0].1).unwrap() {
            Frame::Hello(h) => {
                assert_eq!((h.max_sessions, h.max_frame), (4, MAX_FRAME as u32));
                let forward = if forward { features::FORWARD } else { 0 };
                let want = features::SHELL | features::EXEC | features::RESUME | forward;
                assert_eq!(h.features, want);
            }
            f => panic!("expected Hello, got {f:?}"),
        }
        assert_eq!(hello.len(), 1, "Hello alone before the relay's: {hello:?}");
        self.feed(Frame::Hello(Hello {
            version: agent_core::PROTOCOL_VERSION,
            max_frame: 32 * 1024,
            max_sessions: 0,
            features: 0,
        }));
        let nonce = [9u8; 32];
        self.feed(Frame::Challenge {
            nonce: Bytes(&nonce),
        });
        let auth = self.drain();
        match Frame::decode(&auth[0].1).unwrap() {
            Frame::Auth(a) => {
                let mut buf = [0u8; 64];
                let m = auth_message(&nonce, &mut buf).unwrap();
                let sig = Signature::from_slice(a.signature.0).unwrap();
                key.verifying_key().verify(m, &sig).unwrap();
                assert_eq!(a.public_key.0, key.verifying_key().as_bytes());
                assert_eq!(a.activation, "");
                // The default account the relay's policies see: the console.
                assert_eq!(a.account, ACCOUNT);
            }
            f => panic!("expected Auth, got {f:?}"),
        }
        self.feed(Frame::AuthOk { agent_id: "dev-1" });
        assert_eq!(self.engine.agent_id(), Some("dev-1"));
    }

    pub fn feed(&mut self, f: Frame) {
        let msg = enc(f);
        self.engine.on_message(self.now, &msg, &mut self.board);
    }

    pub fn drain(&mut self) -> Sent {
        let mut out = V::new();
        let mut buf = [0u8; MAX_FRAME];
        while let Some(n) = self
            .engine
            .poll_transmit(self.now, &mut buf, &mut self.board)
        {
            let text = std::format!("{:?}", Frame::decode(&buf[..n]).unwrap());
            out.push((text, buf[..n].to_vec()));
        }
        let failure = self.engine.failure();
        assert!(
            !matches!(failure, Some(Failure::Internal(_))),
            "{failure:?}"
        );
        out
    }

    pub fn open(&mut self, sid: u32, kind: Kind) {
        self.open_as(sid, kind, "");
    }

    pub fn open_as(&mut self, sid: u32, kind: Kind, account: &str) {
        self.feed(Frame::Open {
            sid,
            window: 64 * 1024,
            kind,
            account,
        });
    }

    pub fn open_shell(&mut self, sid: u32) {
        self.open(
            sid,
            Kind::Shell {
                term: "dumb",
                cols: 80,
                rows: 24,
            },
        );
    }

    pub fn exec(&mut self, sid: u32, argv: &[u8]) -> (S, S) {
        self.open(sid, Kind::Exec { argv: Bytes(argv) });
        let sent = self.drain();
        (output(&sent, sid), last(&sent))
    }

    pub fn type_line(&mut self, sid: u32, line: &[u8]) -> S {
        self.feed(Frame::Data {
            sid,
            ch: 0,
            stream: Stream::OUT,
            data: Bytes(line),
        });
        output(&self.drain(), sid)
    }
}

/// The session's output bytes, as text.
pub(crate) fn output(sent: &Sent, sid: u32) -> S {
    let mut out = V::new();
    for (_, raw) in sent {
        if let Frame::Data { sid: s, data, .. } = Frame::decode(raw).unwrap() {
            if s == sid {
                out.extend_from_slice(data.0);
            }
        }
    }
    S::from_utf8(out).unwrap()
}

pub(crate) fn last(sent: &Sent) -> S {
    sent.last().map(|(t, _)| t.clone()).unwrap_or_default()
}
