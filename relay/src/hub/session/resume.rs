//! A resumable session's sides going and coming back (`docs/protocol.md`, section
//! 8): the `Suspend`s, their answers, the exchange of the two `Resume`s, the hold.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use agent_core::wire::Frame;
use axum::body::Bytes;

use super::{Channel, Routed, Session};

/// A resumable session's sides, and whether it waits for them (section 8).
pub(super) struct Resume {
    pub(super) hold: Duration,
    /// The agent's `Accept` went to the client: only from then on does a cut wait
    /// for a resume (before, the session ends as any other).
    pub(super) accepted: bool,
    pub(super) client: Side,
    pub(super) agent: Side,
    /// Since when a side is away, or the two have not exchanged their `Resume`s.
    pub(super) suspended: Option<Instant>,
}

/// Where a side stands on one channel: `offset`, `limit`, `eof`, `open` of its
/// `Resume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stand {
    pub(super) ch: u16,
    pub(super) offset: u64,
    pub(super) limit: u64,
    pub(super) eof: bool,
    pub(super) open: bool,
}

impl Stand {
    fn frame(&self, sid: u32) -> Bytes {
        let f = Frame::Resume {
            sid,
            ch: self.ch,
            offset: self.offset,
            limit: self.limit,
            eof: self.eof,
            open: self.open,
        };
        Routed::new(f, sid).bytes
    }
}

/// The most forward channels one answer may name (a client holds 64, the Linux
/// agent 64): a side naming more breaks the protocol.
const MAX_LISTED: usize = 1024;

/// One side of a resume.
#[derive(Default)]
pub(super) struct Side {
    /// Its connection is up.
    pub(super) connected: bool,
    /// `Suspend`s sent to it, not answered yet.
    pub(super) asked: u32,
    /// The forward channels named so far in the answer it is giving.
    pub(super) partial: Vec<Stand>,
    /// Its answer to the latest `Suspend`: its forward channels, then channel 0.
    pub(super) answer: Option<Vec<Stand>>,
    /// Since when it is away.
    pub(super) away_since: Option<Instant>,
}

impl Side {
    pub(super) fn connected() -> Side {
        Side {
            connected: true,
            ..Side::default()
        }
    }

    /// What it says while asked where it stands: its `Resume`s answer, one per
    /// forward channel, then channel 0's, which ends the answer. `Err` for a side
    /// that names more channels than any peer holds.
    pub(super) fn take_answer(&mut self, f: &Frame) -> Result<(), String> {
        let Frame::Resume {
            ch,
            offset,
            limit,
            eof,
            open,
            ..
        } = *f
        else {
            return Ok(());
        };
        let stand = Stand {
            ch,
            offset,
            limit,
            eof,
            open,
        };
        if ch != 0 {
            if self.partial.len() >= MAX_LISTED {
                return Err(format!("a resume naming over {MAX_LISTED} channels"));
            }
            self.partial.push(stand);
            return Ok(());
        }
        self.asked -= 1;
        let mut list = std::mem::take(&mut self.partial);
        if self.asked == 0 {
            list.push(stand);
            self.answer = Some(list);
        }
        Ok(())
    }
}

impl Session {
    /// Whether the session survives its sides going away for a while (from its
    /// agent's `Accept` on).
    pub fn is_resumable(&self) -> bool {
        self.resume.as_ref().is_some_and(|r| r.accepted)
    }

    /// Whether it waits for a side to come back or to say where it stands.
    pub fn is_suspended(&self) -> bool {
        self.resume.as_ref().is_some_and(|r| r.suspended.is_some())
    }

    /// The agent's link dropped. A resumable session waits for it (its client is
    /// asked where it stands); any other ends.
    pub fn agent_lost(&mut self, now: Instant) {
        if self.over {
            return;
        }
        let Some(r) = self.resume.as_mut().filter(|r| r.accepted) else {
            return self.abort("the agent disconnected".into(), true);
        };
        r.agent = Side::default();
        r.agent.away_since = Some(now);
        r.suspended.get_or_insert(now);
        // What waited for the old link is sent again by the client after the resume.
        self.to_agent.clear();
        self.own_to_agent.clear();
        Self::ask(&mut r.client, &mut self.own_to_client, self.cfg.client_sid);
    }

    /// The client's stream dropped: the agent is asked where it stands, and the
    /// session waits for the client to come back with its token.
    pub fn client_lost(&mut self, now: Instant) {
        if self.over {
            return;
        }
        let Some(r) = self.resume.as_mut().filter(|r| r.accepted) else {
            return self.abort("client went away".into(), false);
        };
        r.client = Side::default();
        r.client.away_since = Some(now);
        r.suspended.get_or_insert(now);
        self.to_client.clear();
        self.own_to_client.clear();
        // What it sent that waits for the agent is sent again after the resume (so
        // a channel's `ChannelOpen` cannot reach the agent after its list); its
        // `Close` (it left on purpose, then the stream went) still goes.
        self.to_agent.retain(|r| r.last);
        Self::ask(&mut r.agent, &mut self.own_to_agent, self.cfg.agent_sid);
    }

    /// The agent is back on a new link (the route is on it again): it is asked
    /// where it stands.
    pub fn agent_back(&mut self) {
        if let Some(r) = self.resume.as_mut().filter(|r| !r.agent.connected) {
            // Its hold counts on until the resume is done.
            let away = r.agent.away_since;
            r.agent = Side::connected();
            r.agent.away_since = away;
            Self::ask(&mut r.agent, &mut self.own_to_agent, self.cfg.agent_sid);
        }
    }

    /// The client is back on a new stream, with the session's token: it is asked
    /// where it stands. `token` is the new one it is given (the old one is spent).
    pub fn client_back(&mut self, token: &str) {
        let sid = self.cfg.client_sid;
        if let Some(r) = self.resume.as_mut().filter(|r| !r.client.connected) {
            let away = r.client.away_since;
            r.client = Side::connected();
            r.client.away_since = away;
            let secs = u32::try_from(r.hold.as_secs()).unwrap_or(u32::MAX);
            let resumable = Frame::Resumable {
                sid,
                hold: secs,
                token,
            };
            self.own_to_client
                .push_back(Routed::new(resumable, sid).bytes);
            Self::ask(&mut r.client, &mut self.own_to_client, sid);
        }
    }

    /// A `Suspend` to a side that is connected.
    fn ask(side: &mut Side, queue: &mut VecDeque<Bytes>, sid: u32) {
        if side.connected {
            side.asked += 1;
            side.answer = None;
            queue.push_back(Routed::new(Frame::Suspend { sid }, sid).bytes);
        }
    }

    /// Both sides are there and said where they stand: each hears the other, the
    /// agent within the bounds of the credit gate, which starts again on each
    /// channel both name (one only the client names is gone at the agent, and
    /// nothing of it comes any more). A forward channel the agent did not name is
    /// over (its row goes to the audit log); after a restart of the relay, one
    /// both name is counted from the offsets they give.
    pub(super) fn exchange(&mut self, now: Instant) {
        let Some(r) = self.resume.as_mut().filter(|r| r.suspended.is_some()) else {
            return;
        };
        if !(r.agent.connected && r.client.connected && r.agent.asked == 0 && r.client.asked == 0) {
            return;
        }
        let (Some(a), Some(c)) = (r.agent.answer.take(), r.client.answer.take()) else {
            return;
        };
        r.suspended = None;
        r.agent.away_since = None;
        r.client.away_since = None;
        let (client_sid, agent_sid) = (self.cfg.client_sid, self.cfg.agent_sid);
        // Nothing of the agent's is in flight any more: the gate starts again, on
        // each channel, from what the client can take.
        self.gate.close_all();
        for stand in &c {
            let limit = if a.iter().any(|s| s.ch == stand.ch) {
                let room = u32::try_from(stand.limit.saturating_sub(stand.offset));
                let passed = self.gate.open(stand.ch, room.unwrap_or(u32::MAX));
                stand.offset.saturating_add(u64::from(passed))
            } else {
                stand.limit
            };
            let to_agent = Stand { limit, ..*stand };
            self.own_to_agent.push_back(to_agent.frame(agent_sid));
        }
        for stand in &a {
            self.own_to_client.push_back(stand.frame(client_sid));
        }
        let gone: Vec<u16> = (self.channels.keys())
            .filter(|ch| !a.iter().any(|s| s.ch == **ch))
            .copied()
            .collect();
        for ch in gone {
            self.channel_over(ch, "ended while a side was away".into(), now);
        }
        // (Only at the first resume after a restart, and only those both name:
        // otherwise one the relay does not know is one the agent freed, its row
        // on record already.) Offsets count from each channel's first byte: what
        // the agent received is what went to the destination (or the program),
        // what the client received what came from it, and what is sent again past
        // those is counted once, as new.
        if !std::mem::take(&mut self.revived) {
            return;
        }
        for stand in &a {
            let Some(theirs) = c.iter().find(|s| s.ch == stand.ch) else {
                continue;
            };
            if self.counted.1.contains_key(&stand.ch) {
                continue; // named twice: the first counts
            }
            let known = self.channels.contains_key(&stand.ch);
            if !known && self.closed_before.contains(&stand.ch) {
                // Closed before the stop (the agent names the channels it freed
                // last): its row is written, and the end it sends again is not
                // a second one.
                continue;
            }
            let (to_agent, to_client) = (stand.offset, theirs.offset);
            let t = &mut self.traffic;
            t.bytes_in = t.bytes_in.saturating_add(to_agent);
            t.bytes_out = t.bytes_out.saturating_add(to_client);
            self.counted.1.insert(stand.ch, to_agent);
            self.counted.0.insert(stand.ch, to_client);
            if stand.ch != 0 {
                let c = self.channels.entry(stand.ch).or_insert_with(|| Channel {
                    host: String::new(),
                    port: 0,
                    opened: now,
                    to_dest: 0,
                    from_dest: 0,
                });
                c.to_dest = to_agent;
                c.from_dest = to_client;
            }
        }
    }

    /// When the side that is away has been away for the hold.
    pub(super) fn hold_at(&self) -> Option<Instant> {
        let r = self.resume.as_ref()?;
        self.away_since().map(|t| t + r.hold)
    }

    /// Since when a side has been away (the earlier, when both are), until the
    /// resume is done: its hold counts from there.
    pub fn away_since(&self) -> Option<Instant> {
        let r = self.resume.as_ref()?;
        [&r.agent, &r.client]
            .iter()
            .filter_map(|s| s.away_since)
            .min()
    }
}
