//! One client stream's session at the relay, sans-IO: what the relay does with each
//! frame between a client and an agent, apart from moving it.
//!
//! The stream task (`crate::stream`) owns the sockets and the awaits; this owns the
//! decisions: it checks and readdresses the client's frames, clamps the windows they
//! announce, passes the client's credit through the [`CreditGate`], paces both
//! directions at the session's rate, runs the idle and maximum-duration timers, keeps
//! the forward channels' accounts for the audit log, and decides when and how the
//! session ends. Time is a parameter (`now`, never going backwards); nothing here
//! awaits, reads a clock or touches a socket, so tests drive it with a client and an
//! agent engine on a virtual clock (`tests.rs`).
//!
//! The contract, as quinn-proto's `Connection`: feed it what arrives
//! ([`Session::handle_client`], [`Session::handle_agent`], [`Session::handle_timeout`],
//! [`Session::decided`], [`Session::notice`], [`Session::abort`]); then drain
//! [`Session::poll_agent`] and [`Session::poll_client`] (frames to write, in order),
//! [`Session::poll_event`] (decisions to make, audit rows to write), check
//! [`Session::poll_end`], and sleep until [`Session::poll_timeout`], which is already
//! past when anything is ready to go (an answer to `decided`, credit released by a
//! delivery): so a driver that drains once and then sleeps misses nothing. Read from
//! a peer only while [`Session::wants_client_input`] / [`Session::wants_agent_input`]
//! say so: that is the backpressure (a paced or undelivered frame stops its source).
//! Frames the relay makes itself (credit the gate releases, notices, a channel's
//! refusal) go ahead of the peers' frames and are never paced.
//!
//! A resumable session (`Config::resume`, `docs/protocol.md` section 8) outlives
//! its sides' connections: the driver says when one goes ([`Session::agent_lost`],
//! [`Session::client_lost`]) and comes back ([`Session::agent_back`],
//! [`Session::client_back`]); the hub sends the `Suspend`s, drops what a side sent
//! before it answered, hands each side the other's `Resume` (the agent's limit within
//! the credit gate), and ends the session when a side stays away for the hold.
//!
//! Hooks: a forward channel is decided outside (policies and the audit log await), as
//! [`Event::Decide`] out and [`Session::decided`] in; a frame is recorded by the task
//! when it takes it from `poll_*`, before it writes it, so the record never lags
//! behind what a peer has.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use agent_core::limits::TokenBucket;
use agent_core::wire::{ErrorCode, Exit, Frame, DEFAULT_MAX_FRAME};
use axum::body::Bytes;

use super::{CreditGate, Routed, MAX_WINDOW};
use crate::store::Traffic;
use resume::{Resume, Side};

/// What the relay knows of a session when its stream starts.
#[derive(Debug, Clone)]
pub struct Config {
    /// The session id the client uses on its stream.
    pub client_sid: u32,
    /// The session id the relay reserved on the agent's link.
    pub agent_sid: u32,
    /// The largest frame the agent accepts (its `Hello`).
    pub agent_max_frame: u32,
    /// Bytes per second each way, if the session is rate limited.
    pub rate: Option<u32>,
    /// No input or output for this long ends the session.
    pub idle: Option<Duration>,
    /// The session ends this long after it started.
    pub max: Option<Duration>,
    /// The client asked to hear of observers joining (`Notice` frames).
    pub notices: bool,
    /// Resumable (the agent and the client both can): how long a side may be away,
    /// and the client's resume token (`docs/protocol.md`, section 8).
    pub resume: Option<(Duration, String)>,
}

/// What the stream task is asked to do besides writing frames.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Decide forward channel `ch` to `host:port` and answer with
    /// [`Session::decided`]; already `refused` when the relay knows the answer (the
    /// channel id is in use), which still goes on record as a denial. No client
    /// input is taken meanwhile.
    Decide {
        ch: u16,
        host: String,
        port: u16,
        refused: Option<String>,
    },
    /// A forward channel ended: its `forward.close` row for the audit log.
    ChannelClosed(ChannelRecord),
}

/// A forward channel's account, for its `forward.close` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRecord {
    pub ch: u16,
    pub host: String,
    pub port: u16,
    pub bytes_to_dest: u64,
    pub bytes_from_dest: u64,
    pub duration: Duration,
    /// Empty: closed cleanly.
    pub reason: String,
}

impl ChannelRecord {
    /// The row's detail.
    pub fn detail(&self) -> serde_json::Value {
        serde_json::json!({
            "channel": self.ch,
            "host": self.host,
            "port": self.port,
            "bytes_to_dest": self.bytes_to_dest,
            "bytes_from_dest": self.bytes_from_dest,
            "duration_ms": self.duration.as_millis() as u64,
            "reason": self.reason,
        })
    }
}

/// How a session ended, once [`Session::poll_end`] says so.
#[derive(Debug)]
pub struct End {
    /// `Ok`: the agent ended it (its `Close` or `Reject` is `last_frame`); `Err`:
    /// why the relay ended it.
    pub outcome: Result<(), String>,
    /// The agent's last frame, for the client once the end is on record.
    pub last_frame: Option<Bytes>,
    /// A `Close` to send the client now (best effort), naming why; `None` when the
    /// client is gone, or is told later (see [`Session::abort`]).
    pub tell_client: Option<Bytes>,
    /// A `Close` to send the agent when the relay ended the session (`None`: the
    /// agent did).
    pub tell_agent: Option<Bytes>,
}

/// A frame for the client, from [`Session::poll_client`].
#[derive(Debug)]
pub enum ToClient {
    /// The agent's: on record before the client has it.
    Agent(Routed),
    /// The relay's own (a notice, a channel's refusal): not the agent's words.
    Relay(Bytes),
}

/// One open forward channel (its host empty and port 0 when it was opened before
/// the relay restarted).
struct Channel {
    host: String,
    port: u16,
    opened: Instant,
    to_dest: u64,
    from_dest: u64,
}

/// A channel open waiting for its decision.
struct Deciding {
    ch: u16,
    window: u32,
    port: u16,
}

/// See the module docs.
pub struct Session {
    cfg: Config,
    gate: CreditGate,
    /// Pacing towards the agent and towards the client.
    pace_in: Option<TokenBucket>,
    pace_out: Option<TokenBucket>,
    /// When it started: the timers' and the buckets' clocks count from here.
    started: Instant,
    last_activity: Instant,
    /// The client's frames for the agent, in order, paced.
    to_agent: VecDeque<Routed>,
    /// The agent's frames for the client, in order, paced.
    to_client: VecDeque<Routed>,
    /// Frames the relay makes (gate credit; a notice, a channel's refusal): first.
    own_to_agent: VecDeque<Bytes>,
    own_to_client: VecDeque<Bytes>,
    channels: HashMap<u16, Channel>,
    deciding: Option<Deciding>,
    events: VecDeque<Event>,
    end: Option<End>,
    /// It ended (its [`End`] may have been taken).
    over: bool,
    traffic: Traffic,
    /// Where a resumable session stands in a resume.
    resume: Option<Resume>,
    /// Bytes counted of each channel's `DataAt`s, from the agent and from the
    /// client: what a side sends again after a resume is not counted twice.
    counted: (HashMap<u16, u64>, HashMap<u16, u64>),
    /// Taken up again by a restarted relay, until its first resume.
    revived: bool,
    /// Forward channels a restarted relay knows ended before the stop (from the
    /// audit log), their rows written: one both sides name at the first resume
    /// is not taken up (the end the agent sends again writes no second row).
    closed_before: Vec<u16>,
}

impl Session {
    /// A session whose client sent `open` (checked against what was authorised by
    /// the caller), to run as `account`: the agent's `Open`, with the window clamped
    /// to [`MAX_WINDOW`] and the account the policies allowed, and its rate, wait in
    /// [`Session::poll_agent`]. `Err`: a refusal for the client.
    pub fn new(cfg: Config, open: &Frame, account: &str, now: Instant) -> Result<Session, String> {
        let Frame::Open {
            sid, window, kind, ..
        } = *open
        else {
            return Err("the first frame on a stream must be Open".into());
        };
        let mut gate = CreditGate::default();
        let window = gate.open(0, window.min(MAX_WINDOW));
        let first = Routed::new(
            Frame::Open {
                sid,
                window,
                kind,
                account,
            },
            cfg.agent_sid,
        );
        if first.bytes.len() > cfg.agent_max_frame as usize {
            return Err(format!(
                "Open frame of {} bytes is larger than the agent accepts ({} bytes)",
                first.bytes.len(),
                cfg.agent_max_frame
            ));
        }
        let mut to_agent = VecDeque::from([first]);
        let mut own_to_client = VecDeque::new();
        let resume = cfg.resume.as_ref().map(|(hold, token)| {
            // Resumable from its first byte: the agent hears it before the `Open`,
            // the client before the agent's `Accept`.
            let secs = u32::try_from(hold.as_secs()).unwrap_or(u32::MAX);
            let to_agent_frame = Frame::Resumable {
                sid: cfg.agent_sid,
                hold: secs,
                token: "",
            };
            to_agent.push_front(Routed::new(to_agent_frame, cfg.agent_sid));
            let to_client_frame = Frame::Resumable {
                sid: cfg.client_sid,
                hold: secs,
                token,
            };
            own_to_client.push_back(Routed::new(to_client_frame, cfg.client_sid).bytes);
            Resume {
                hold: *hold,
                accepted: false,
                client: Side::connected(),
                agent: Side::connected(),
                suspended: None,
            }
        });
        if let Some(rate) = cfg.rate {
            // The agent paces its own output; the relay paces both directions.
            let sid = cfg.agent_sid;
            to_agent.push_back(Routed::new(Frame::Limit { sid, rate }, sid));
        }
        Ok(Session::build(
            cfg,
            gate,
            now,
            (to_agent, own_to_client),
            resume,
        ))
    }

    /// A resumable session the previous run of the relay left running, taken up
    /// again: both sides are away, and it goes on once both come back
    /// ([`Session::agent_back`], [`Session::client_back`]) within its hold, which
    /// counts from `away` ago (when the previous run stopped, or a side went away
    /// before that). It started `age` ago (its maximum duration counts from then).
    pub fn revived(cfg: Config, now: Instant, age: Duration, away: Duration) -> Session {
        let hold = cfg.resume.as_ref().map(|(h, _)| *h).unwrap_or_default();
        // (An `Instant` that cannot go back that far: from now.)
        let since = now.checked_sub(away).unwrap_or(now);
        let away = || Side {
            away_since: Some(since),
            ..Side::default()
        };
        let resume = Resume {
            hold,
            accepted: true,
            client: away(),
            agent: away(),
            suspended: Some(now),
        };
        let queues = (VecDeque::new(), VecDeque::new());
        let mut s = Session::build(cfg, CreditGate::default(), now, queues, Some(resume));
        // Its maximum duration counts from when it really started.
        s.started = now.checked_sub(age).unwrap_or(now);
        s.revived = true;
        s
    }

    /// A session taken up again ([`Session::revived`]) had the forward channels
    /// `open` when the previous run stopped, and those `closed` had ended (its
    /// audit log says so): each open one is counted and gets its `forward.close`
    /// row as usual, `opened` when its `forward.open` row was written.
    pub fn known_channels(
        &mut self,
        open: impl IntoIterator<Item = (u16, String, u16, Instant)>,
        closed: Vec<u16>,
    ) {
        for (ch, host, port, opened) in open {
            let c = Channel {
                host,
                port,
                opened,
                to_dest: 0,
                from_dest: 0,
            };
            self.channels.insert(ch, c);
        }
        self.closed_before = closed;
    }

    fn build(
        cfg: Config,
        gate: CreditGate,
        now: Instant,
        (to_agent, own_to_client): (VecDeque<Routed>, VecDeque<Bytes>),
        resume: Option<Resume>,
    ) -> Session {
        let bucket = |rate: u32| {
            let burst = TokenBucket::burst_for(rate, DEFAULT_MAX_FRAME);
            TokenBucket::new(rate, burst, agent_core::Instant(0))
        };
        Session {
            pace_in: cfg.rate.map(bucket),
            pace_out: cfg.rate.map(bucket),
            cfg,
            gate,
            started: now,
            last_activity: now,
            to_agent,
            to_client: VecDeque::new(),
            own_to_agent: VecDeque::new(),
            own_to_client,
            channels: HashMap::new(),
            deciding: None,
            events: VecDeque::new(),
            end: None,
            over: false,
            traffic: Traffic::default(),
            resume,
            counted: Default::default(),
            revived: false,
            closed_before: Vec::new(),
        }
    }

    /// The agent's connection bounds its frames at `max_frame` (a new connection's
    /// `Hello`).
    pub fn set_agent_max_frame(&mut self, max_frame: u32) {
        self.cfg.agent_max_frame = max_frame;
    }

    /// A message from the client's stream.
    pub fn handle_client(&mut self, bytes: Bytes, now: Instant) {
        debug_assert!(self.deciding.is_none(), "client input while deciding");
        if self.over {
            return;
        }
        let resumable = self.resume.is_some();
        let frame = match Frame::decode_bounded(&bytes, DEFAULT_MAX_FRAME as usize) {
            Ok(f) if client_may_send(&f) || (resumable && resume_frame(&f)) => f,
            // A newer client may send frame types we do not know: skip them.
            Err(agent_core::DecodeError::UnknownFrame { .. }) => return,
            Ok(f) => {
                let e = format!(
                    "frame type {} is not allowed on a session stream",
                    f.frame_type()
                );
                return self.protocol_error(e);
            }
            Err(e) => return self.protocol_error(format!("malformed frame: {e}")),
        };
        if let Some(r) = self.resume.as_mut() {
            if r.suspended.is_some() && matches!(frame, Frame::Close { .. }) {
                // The user gave up waiting.
                return self.abort("the client ended the session".into(), false);
            }
            if r.client.asked > 0 {
                // Sent before it knew of the `Suspend`: stale, but for its answer.
                if let Err(e) = r.client.take_answer(&frame) {
                    return self.protocol_error(e);
                }
                return self.exchange(now);
            } else if r.suspended.is_some() {
                return;
            } else if matches!(frame, Frame::Resume { .. }) {
                return self.protocol_error("a Resume that answers no Suspend".into());
            }
        }
        let out = match frame {
            Frame::ChannelOpen {
                ch,
                window,
                host,
                port,
                ..
            } => {
                let refused = (self.channels.contains_key(&ch))
                    .then(|| format!("channel {ch} is already open"));
                self.deciding = Some(Deciding { ch, window, port });
                let host = host.into();
                self.events.push_back(Event::Decide {
                    ch,
                    host,
                    port,
                    refused,
                });
                return;
            }
            // Through the gate; as it came when all of it passes.
            Frame::Credit {
                sid,
                ch,
                bytes: granted,
            } => match self.gate.credit(ch, granted) {
                0 => return,
                n if n == granted => Routed::of(&frame).readdress(bytes, self.cfg.agent_sid),
                n => Routed::new(Frame::Credit { sid, ch, bytes: n }, self.cfg.agent_sid),
            },
            // As it came, but for its session id.
            _ => Routed::of(&frame).readdress(bytes, self.cfg.agent_sid),
        };
        self.queue_for_agent(out, now);
    }

    /// The decision on the channel of the last [`Event::Decide`]: its host in
    /// canonical form (what the agent gets), or the refusal the client gets.
    pub fn decided(&mut self, decision: Result<String, String>, now: Instant) {
        let Some(d) = self.deciding.take() else {
            return;
        };
        if self.over {
            return;
        }
        if self.is_suspended() {
            // A side went away meanwhile: the client sends its `ChannelOpen` again
            // after the resume (the agent does not name the channel), and it is
            // decided again. This decision's row is closed.
            if let Ok(host) = decision {
                self.events.push_back(Event::ChannelClosed(ChannelRecord {
                    ch: d.ch,
                    host,
                    port: d.port,
                    bytes_to_dest: 0,
                    bytes_from_dest: 0,
                    duration: Duration::ZERO,
                    reason: "not opened: a side went away".into(),
                }));
            }
            return;
        }
        match decision {
            Ok(host) => {
                let window = self.gate.open(d.ch, d.window.min(MAX_WINDOW));
                let open = Routed::new(
                    Frame::ChannelOpen {
                        sid: self.cfg.agent_sid,
                        ch: d.ch,
                        window,
                        host: &host,
                        port: d.port,
                    },
                    self.cfg.agent_sid,
                );
                self.counted.0.remove(&d.ch);
                self.counted.1.remove(&d.ch);
                self.channels.insert(
                    d.ch,
                    Channel {
                        host,
                        port: d.port,
                        opened: now,
                        to_dest: 0,
                        from_dest: 0,
                    },
                );
                self.queue_for_agent(open, now);
            }
            Err(reason) => {
                let reject = Frame::ChannelReject {
                    sid: self.cfg.client_sid,
                    ch: d.ch,
                    code: ErrorCode::DENIED,
                    reason: &reason,
                };
                let reject = Routed::new(reject, self.cfg.client_sid);
                self.own_to_client.push_back(reject.bytes);
            }
        }
    }

    /// Queue a frame for the agent, unless it is over the agent's limit.
    fn queue_for_agent(&mut self, out: Routed, now: Instant) {
        if out.bytes.len() > self.cfg.agent_max_frame as usize {
            // A frame over the agent's announced limit (a small device's, or a full
            // frame made longer by the session id) would cost every session on the
            // link: end only this one.
            let e = format!(
                "frame too large for the agent ({} > {} bytes)",
                out.bytes.len(),
                self.cfg.agent_max_frame
            );
            return self.protocol_error(e);
        }
        let fresh = fresh(&mut self.counted.1, &out);
        self.traffic.bytes_in += fresh;
        if out.payload > 0 {
            if let Some(c) = self.channels.get_mut(&out.ch) {
                c.to_dest += fresh;
            }
            self.last_activity = now;
        }
        self.to_agent.push_back(out);
    }

    /// A frame from the agent for this session, addressed to the client already (see
    /// `agent_link`).
    pub fn handle_agent(&mut self, routed: Routed, now: Instant) {
        if self.over {
            return;
        }
        if let Some(r) = self.resume.as_mut() {
            // An agent's end stands whenever it comes (a `Close` may answer a
            // `Suspend`: the session ended while a side was away).
            if r.suspended.is_some() && !routed.last {
                if r.agent.asked > 0 {
                    if let Ok(f) = Frame::decode(&routed.bytes) {
                        if let Err(e) = r.agent.take_answer(&f) {
                            return self.abort(format!("the agent sent {e}"), true);
                        }
                    }
                    self.exchange(now);
                }
                return;
            }
            if r.suspended.is_some() && !r.client.connected {
                // Its end waits for nobody: on record now; the client hears it
                // when it comes back.
                return self.finish(Ok(()), None, Some(routed.bytes));
            }
        }
        if routed.bytes.first() == Some(&5) {
            if let Some(r) = self.resume.as_mut() {
                r.accepted = true;
            }
        }
        let fresh = fresh(&mut self.counted.0, &routed);
        self.traffic.bytes_out += fresh;
        if routed.payload > 0 {
            if let Some(c) = self.channels.get_mut(&routed.ch) {
                c.from_dest += fresh;
            }
            self.last_activity = now;
        } else if routed.ends_channel {
            // The agent's last word on the channel: nothing more in flight.
            self.gate.close(routed.ch);
            let reason = match Frame::decode(&routed.bytes) {
                Ok(Frame::ChannelClose { reason, .. }) => reason.to_string(),
                Ok(Frame::ChannelReject { reason, .. }) => {
                    format!("the agent refused: {reason}")
                }
                _ => String::new(),
            };
            self.channel_over(routed.ch, reason, now);
        }
        self.to_client.push_back(routed);
    }

    /// A forward channel is over: its account goes to the audit log.
    fn channel_over(&mut self, ch: u16, reason: String, now: Instant) {
        self.counted.0.remove(&ch);
        self.counted.1.remove(&ch);
        if let Some(c) = self.channels.remove(&ch) {
            self.events.push_back(Event::ChannelClosed(ChannelRecord {
                ch,
                host: c.host,
                port: c.port,
                bytes_to_dest: c.to_dest,
                bytes_from_dest: c.from_dest,
                duration: now.saturating_duration_since(c.opened),
                reason,
            }));
        }
    }

    /// Someone joined or left: the user hears of it, if its client knows the frame
    /// (an older one would take it for a protocol error).
    pub fn notice(&mut self, line: &str) {
        if self.cfg.notices && !self.over {
            let notice = Frame::Notice {
                sid: self.cfg.client_sid,
                message: line,
            };
            let notice = Routed::new(notice, self.cfg.client_sid);
            self.own_to_client.push_back(notice.bytes);
        }
    }

    /// The session's timers, as of `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.over && now >= self.timers_at() {
            let why = self.timer_reason();
            self.abort(why, true);
        }
    }

    /// End the session for `why` (the client went away, a write failed, the recording
    /// broke, someone ended it). `tell_client`: send the client a `Close` saying why
    /// now; else it is gone, or the caller tells it once the end is on record.
    pub fn abort(&mut self, why: String, tell_client: bool) {
        let code = ErrorCode::TERMINATED;
        self.finish(Err(why.clone()), tell_client.then_some((code, why)), None);
    }

    /// The client broke the protocol: it hears why, the record says so.
    pub fn protocol_error(&mut self, e: String) {
        let outcome = Err("client protocol error".to_string());
        self.finish(outcome, Some((ErrorCode::PROTOCOL, e)), None);
    }

    fn finish(
        &mut self,
        outcome: Result<(), String>,
        client: Option<(ErrorCode, String)>,
        last_frame: Option<Bytes>,
    ) {
        if self.over {
            return;
        }
        self.over = true;
        let close = |sid, code, reason: &str| -> Bytes {
            crate::agent_link::encode(&Frame::Close {
                sid,
                exit: Exit::Aborted(code),
                reason,
            })
            .into()
        };
        // Also when the client's `Close` was handed out: its write may have failed, and
        // the agent ignores a `Close` for a session it is already ending (ids on a link
        // are not reused, so it cannot reach another session).
        let tell_agent = outcome
            .as_ref()
            .err()
            .map(|why| close(self.cfg.agent_sid, ErrorCode::TERMINATED, why));
        let tell_client = client.map(|(code, why)| close(self.cfg.client_sid, code, &why));
        self.to_agent.clear();
        self.to_client.clear();
        self.own_to_agent.clear();
        self.own_to_client.clear();
        self.deciding = None;
        self.end = Some(End {
            outcome,
            last_frame,
            tell_client,
            tell_agent,
        });
    }

    /// The next frame for the agent, if any may go at `now`. A write that fails ends
    /// the session ([`Session::abort`]).
    #[must_use]
    pub fn poll_agent(&mut self, now: Instant) -> Option<Bytes> {
        if let Some(own) = self.own_to_agent.pop_front() {
            return Some(own);
        }
        let head = self.to_agent.front()?;
        if !ready(&mut self.pace_in, self.started, head.payload, now) {
            return None;
        }
        self.to_agent.pop_front().map(|r| r.bytes)
    }

    /// The next frame for the client, if any may go at `now`: the agent's (to record
    /// before it is written) or the relay's own. The agent's `Close` or `Reject` is not
    /// one: it ends the session ([`Session::poll_end`]).
    #[must_use]
    pub fn poll_client(&mut self, now: Instant) -> Option<ToClient> {
        if let Some(own) = self.own_to_client.pop_front() {
            return Some(ToClient::Relay(own));
        }
        let head = self.to_client.front()?;
        if !ready(&mut self.pace_out, self.started, head.payload, now) {
            return None;
        }
        let out = self.to_client.pop_front()?;
        if out.last {
            self.finish(Ok(()), None, Some(out.bytes));
            return None;
        }
        if out.payload > 0 {
            // Room for credit the client granted beyond the bounds, if any.
            self.gate.delivered(out.ch, out.payload);
            while let Some((ch, bytes)) = self.gate.poll_credit() {
                let sid = self.cfg.agent_sid;
                let credit = Routed::new(Frame::Credit { sid, ch, bytes }, sid);
                self.own_to_agent.push_back(credit.bytes);
            }
        }
        Some(ToClient::Agent(out))
    }

    /// A decision to make or a row to write.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// How the session ended, once it has (given once): then nothing more comes out
    /// of `poll_agent` and `poll_client`, and nothing goes in.
    #[must_use]
    pub fn poll_end(&mut self) -> Option<End> {
        self.end.take()
    }

    /// It has ended.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// When to call [`Session::handle_timeout`] or poll again: a paced frame's time,
    /// or already past (the session's start) when a frame, an event or the end is
    /// ready now.
    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        let unpaced = |q: &VecDeque<Routed>, b: &Option<TokenBucket>| {
            q.front().is_some_and(|r| r.payload == 0 || b.is_none())
        };
        if !self.own_to_agent.is_empty()
            || !self.own_to_client.is_empty()
            || !self.events.is_empty()
            || self.end.is_some()
            || unpaced(&self.to_agent, &self.pace_in)
            || unpaced(&self.to_client, &self.pace_out)
        {
            return self.started;
        }
        let mut at = self.timers_at();
        for (q, b) in [
            (&self.to_agent, &self.pace_in),
            (&self.to_client, &self.pace_out),
        ] {
            if let (Some(head), Some(b)) = (q.front(), b) {
                if head.payload > 0 {
                    at = at.min(self.started + Duration::from_millis(b.ready_at(1).0));
                }
            }
        }
        at
    }

    /// Take a message from the client now: none of its frames waits to go to the
    /// agent, and no channel is being decided.
    pub fn wants_client_input(&self) -> bool {
        !self.over && self.to_agent.is_empty() && self.deciding.is_none()
    }

    /// Take a frame from the agent now: none of its frames waits to go to the client.
    pub fn wants_agent_input(&self) -> bool {
        !self.over && self.to_client.is_empty()
    }

    /// When the timers fire, as things stand (the idle timer moves with traffic).
    pub fn timers_at(&self) -> Instant {
        let never = self.started + Duration::from_secs(100 * 365 * 86400);
        let idle_at = self.cfg.idle.map_or(never, |d| self.last_activity + d);
        let max_at = self.cfg.max.map_or(never, |d| self.started + d);
        idle_at.min(max_at).min(self.hold_at().unwrap_or(never))
    }

    /// Why the session ends when the timers fire.
    pub fn timer_reason(&self) -> String {
        if let (Some(at), Some(r)) = (self.hold_at(), self.resume.as_ref()) {
            if at <= self.timers_at() {
                // The side still away; else the one away first (a session a
                // restarted relay took up has both away since its stop).
                let who = match (r.agent.connected, r.client.connected) {
                    (true, false) => "the client was",
                    (false, true) => "the agent was",
                    _ => match r.agent.away_since {
                        Some(a) if r.client.away_since.is_none_or(|c| a <= c) => "the agent was",
                        _ => "the client was",
                    },
                };
                return format!("{who} unreachable for {}", human(r.hold));
            }
        }
        let (idle, max) = (self.cfg.idle, self.cfg.max);
        let idle_first = match (idle, max) {
            (Some(idle), Some(max)) => self.last_activity + idle <= self.started + max,
            (idle, _) => idle.is_some(),
        };
        if idle_first {
            let idle = human(idle.unwrap_or_default());
            format!("idle timeout: no input or output for {idle}")
        } else {
            let max = human(max.unwrap_or_default());
            format!("maximum session duration of {max} reached")
        }
    }

    /// Payload carried each way so far (counted as it arrives).
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// The channels still open end with the session, for `why`: their rows come out
    /// of [`Session::poll_event`].
    pub fn close_channels(&mut self, why: &str, now: Instant) {
        let open: Vec<u16> = self.channels.keys().copied().collect();
        for ch in open {
            self.channel_over(ch, why.to_string(), now);
        }
    }
}

/// Payload bytes of `r` not counted before, `counted` moved past them: all of a
/// `Data`, the part of a `DataAt` past what its channel's earlier ones carried.
fn fresh(counted: &mut HashMap<u16, u64>, r: &Routed) -> u64 {
    let n = r.payload as u64;
    let Some(offset) = r.offset else {
        return n;
    };
    let seen = counted.entry(r.ch).or_default();
    let end = offset.saturating_add(n);
    let new = end.saturating_sub(offset.max(*seen));
    *seen = end.max(*seen);
    new
}

/// Whether a frame of `payload` bytes may go through `bucket` at `now`; if so it is
/// spent. Frames without payload are never held.
fn ready(bucket: &mut Option<TokenBucket>, origin: Instant, payload: usize, now: Instant) -> bool {
    let Some(b) = bucket.as_mut().filter(|_| payload > 0) else {
        return true;
    };
    let t = agent_core::Instant(now.saturating_duration_since(origin).as_millis() as u64);
    if b.ready_at(1) > t {
        return false;
    }
    b.consume(payload, t);
    true
}

/// Frames a client may send on a resumable session's stream besides those of
/// [`client_may_send`].
fn resume_frame(f: &Frame) -> bool {
    matches!(
        f,
        Frame::Resume { .. } | Frame::Ack { .. } | Frame::DataAt { .. }
    )
}

/// Frames a client may send on its stream after `Open`.
fn client_may_send(f: &Frame) -> bool {
    matches!(
        f,
        Frame::Data { .. }
            | Frame::Credit { .. }
            | Frame::Resize { .. }
            | Frame::Eof { .. }
            | Frame::Close { .. }
            | Frame::Signal { .. }
            | Frame::ChannelOpen { .. }
            | Frame::ChannelClose { .. }
    )
}

/// `20m`, `2s`, `1h30m`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

mod resume;
#[cfg(test)]
mod tests;
