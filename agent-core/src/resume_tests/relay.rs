//! The simulated relay both resume simulations run through: two links (the agent's
//! and the client's), each a queue each way, cut with what is in flight on them
//! lost; a `Suspend` to each side that stays or comes back; a side's frames dropped
//! until its answer (its forward channels' `Resume`s, then channel 0's, or an
//! agent's `Close`); the two answers exchanged once both are there.

extern crate std;

use std::collections::VecDeque;
use std::vec::Vec;

use super::encode;
use crate::wire::Frame;

/// One side of the relay: its link, and where it stands in a resume.
#[derive(Default)]
pub(super) struct Side {
    /// Frames towards the relay, and from it.
    pub up: VecDeque<Vec<u8>>,
    pub down: VecDeque<Vec<u8>>,
    pub connected: bool,
    /// `Suspend`s sent on this link not answered yet.
    asked: u32,
    /// The answer being given (forward channels' `Resume`s), and the complete
    /// latest one.
    partial: Vec<Vec<u8>>,
    answer: Option<Vec<Vec<u8>>>,
}

impl Side {
    fn connected() -> Side {
        Side {
            connected: true,
            ..Side::default()
        }
    }
}

/// The two links and the resume between them, for session 1.
pub(super) struct Relay {
    pub a: Side,
    pub c: Side,
    /// Waiting for both sides' answers.
    suspended: bool,
}

impl Relay {
    /// Both links up.
    pub fn new() -> Relay {
        Relay {
            a: Side::connected(),
            c: Side::connected(),
            suspended: false,
        }
    }

    /// The relay takes one frame from a side.
    pub fn step(&mut self, from_agent: bool) {
        let (from, to) = if from_agent {
            (&mut self.a, &mut self.c)
        } else {
            (&mut self.c, &mut self.a)
        };
        let Some(msg) = from.up.pop_front() else {
            return;
        };
        if from.asked > 0 {
            // Until it answers the latest `Suspend`, what it sent is stale. An
            // agent that ended the session meanwhile answers with its `Close`.
            let ends = match Frame::decode(&msg) {
                Ok(Frame::Resume { ch, .. }) if ch != 0 => {
                    from.partial.push(msg);
                    return;
                }
                Ok(Frame::Resume { .. }) => true,
                Ok(Frame::Close { .. }) => from_agent,
                _ => false,
            };
            if ends {
                from.asked -= 1;
                let mut list = core::mem::take(&mut from.partial);
                if from.asked == 0 {
                    list.push(msg);
                    from.answer = Some(list);
                }
            }
        } else if !self.suspended && to.connected {
            to.down.push_back(msg);
        }
        self.exchange();
    }

    /// Both sides answered: each gets the other's answer.
    fn exchange(&mut self) {
        if !(self.suspended && self.a.connected && self.c.connected) {
            return;
        }
        if self.a.answer.is_some() && self.c.answer.is_some() {
            let (a, c) = (self.a.answer.take(), self.c.answer.take());
            self.c.down.extend(a.unwrap_or_default());
            self.a.down.extend(c.unwrap_or_default());
            self.suspended = false;
        }
    }

    /// Ask `side` where it stands.
    pub fn suspend(side: &mut Side) {
        if side.connected {
            side.down.push_back(encode(Frame::Suspend { sid: 1 }));
            side.asked += 1;
            side.answer = None;
        }
    }

    /// A link is cut: what was in flight on it is lost; the other side is told.
    /// `false` if it was down already.
    pub fn cut(&mut self, agent: bool) -> bool {
        let (gone, other) = if agent {
            (&mut self.a, &mut self.c)
        } else {
            (&mut self.c, &mut self.a)
        };
        if !gone.connected {
            return false;
        }
        *gone = Side::default();
        self.suspended = true;
        Self::suspend(other);
        true
    }

    /// A side is back on a new link (its engine reattached by the caller), and is
    /// asked where it stands.
    pub fn back(&mut self, agent: bool) {
        let side = if agent { &mut self.a } else { &mut self.c };
        side.connected = true;
        Self::suspend(side);
    }
}
