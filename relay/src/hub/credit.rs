//! The relay's bound on what an agent may have in flight towards one client stream.

use std::collections::{HashMap, VecDeque};

use super::{MAX_GROWN_WINDOW, SESSION_WINDOW};

/// Held credit is passed on once this much of it (or all of it) has room, so that a
/// draining channel does not cost a `Credit` frame for every `Data` frame.
const RELEASE_MIN: u32 = 32 * 1024;

/// The credit the relay passes on to the agent for one client stream, so that what
/// the agent may have in flight towards the client stays within
/// [`MAX_GROWN_WINDOW`] on each channel and [`SESSION_WINDOW`] in all, however much
/// the client grants: so a client whose windows grow never makes the relay hold more
/// for it than [`CLIENT_QUEUE_BYTES`](super::CLIENT_QUEUE_BYTES) allows.
///
/// Sans-IO: the stream task tells it the windows and credit the client sends
/// ([`CreditGate::open`], [`CreditGate::credit`]) and the payload it delivers to the
/// client ([`CreditGate::delivered`]); what the client granted beyond the bounds is
/// held (a count, no bytes) and comes out of [`CreditGate::poll_credit`] as payload
/// drains, the channels waiting in turn. To both peers this is ordinary credit: the
/// agent is granted less, later; the client sees its data arrive later.
#[derive(Debug, Default)]
pub struct CreditGate {
    chans: HashMap<u16, Gated>,
    /// Sum of the channels' `in_flight`.
    in_flight: usize,
    /// Channels holding credit, in the order they get room.
    waiting: VecDeque<u16>,
}

/// One channel in a [`CreditGate`].
#[derive(Debug, Default, Clone, Copy)]
struct Gated {
    /// Granted to the agent and not yet delivered to the client.
    in_flight: u32,
    /// Granted by the client and not yet passed to the agent.
    held: u32,
}

impl CreditGate {
    /// The client opened channel `ch` (0: a shell's or a command's) with a receive
    /// window of `window` bytes: the window to announce to the agent. A reused id
    /// starts afresh.
    pub fn open(&mut self, ch: u16, window: u32) -> u32 {
        self.close(ch);
        self.chans.insert(
            ch,
            Gated {
                in_flight: 0,
                held: window,
            },
        );
        self.pass(ch, 0)
    }

    /// The client granted `bytes` on channel `ch`: the credit to pass to the agent
    /// now (0: none; the rest comes out of [`CreditGate::poll_credit`]). Credit for a
    /// channel that is not open goes nowhere.
    pub fn credit(&mut self, ch: u16, bytes: u32) -> u32 {
        let Some(g) = self.chans.get_mut(&ch) else {
            return 0;
        };
        g.held = g.held.saturating_add(bytes);
        self.pass(ch, 0)
    }

    /// `n` payload bytes of channel `ch` went to the client.
    pub fn delivered(&mut self, ch: u16, n: usize) {
        if let Some(g) = self.chans.get_mut(&ch) {
            let n = g.in_flight.min(u32::try_from(n).unwrap_or(u32::MAX));
            g.in_flight -= n;
            self.in_flight -= n as usize;
        }
    }

    /// The agent ended channel `ch` (`ChannelClose`, `ChannelReject`): nothing more
    /// of it is in flight.
    pub fn close(&mut self, ch: u16) {
        if let Some(g) = self.chans.remove(&ch) {
            self.in_flight -= g.in_flight as usize;
            self.waiting.retain(|w| *w != ch);
        }
    }

    /// Every channel starts again (a resume: nothing is in flight any more).
    pub fn close_all(&mut self) {
        *self = CreditGate::default();
    }

    /// Held credit that has room now, to send to the agent as `Credit`: channel and
    /// bytes. Call until `None` after [`CreditGate::delivered`].
    #[must_use]
    pub fn poll_credit(&mut self) -> Option<(u16, u32)> {
        for _ in 0..self.waiting.len() {
            let ch = self.waiting.pop_front()?;
            let n = self.pass(ch, RELEASE_MIN);
            if n > 0 {
                return Some((ch, n));
            }
        }
        None
    }

    /// Pass on as much of `ch`'s held credit as has room, if that is all of it or at
    /// least `min`; else leave it waiting.
    fn pass(&mut self, ch: u16, min: u32) -> u32 {
        let total_room = SESSION_WINDOW - self.in_flight;
        let Some(g) = self.chans.get_mut(&ch) else {
            return 0;
        };
        let room =
            (MAX_GROWN_WINDOW - g.in_flight).min(u32::try_from(total_room).unwrap_or(u32::MAX));
        let n = g.held.min(room);
        let n = if n == g.held || n >= min { n } else { 0 };
        g.held -= n;
        g.in_flight += n;
        self.in_flight += n as usize;
        if g.held > 0 && !self.waiting.contains(&ch) {
            self.waiting.push_back(ch);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::super::MAX_WINDOW;
    use super::*;

    const K: u32 = 1024;

    #[test]
    fn credit_within_the_bounds_passes_as_it_is() {
        let mut g = CreditGate::default();
        assert_eq!(g.open(1, 256 * K), 256 * K);
        assert_eq!(g.credit(1, 64 * K), 64 * K);
        assert_eq!(g.credit(1, 128 * K), 128 * K, "a client growing its window");
        assert_eq!(g.poll_credit(), None);
        assert_eq!(g.credit(9, 64 * K), 0, "no such channel");
    }

    #[test]
    fn a_channel_never_has_more_than_the_grown_maximum_in_flight() {
        let mut g = CreditGate::default();
        g.open(1, MAX_WINDOW);
        let mut granted = MAX_WINDOW;
        while granted < MAX_GROWN_WINDOW {
            granted += g.credit(1, MAX_WINDOW);
        }
        assert_eq!(granted, MAX_GROWN_WINDOW);
        // Beyond it, the client's credit is held...
        assert_eq!(g.credit(1, 100 * K), 0);
        assert_eq!(g.poll_credit(), None);
        // ...and passed on as the agent's data reaches the client, in batches.
        g.delivered(1, 16 * 1024);
        assert_eq!(
            g.poll_credit(),
            None,
            "16 KiB of room: too little to bother"
        );
        g.delivered(1, 16 * 1024);
        assert_eq!(g.poll_credit(), Some((1, 32 * K)));
        assert_eq!(g.poll_credit(), None);
        g.delivered(1, 500 * 1024);
        assert_eq!(g.poll_credit(), Some((1, 68 * K)), "all that was held");
        assert_eq!(g.poll_credit(), None);
    }

    #[test]
    fn a_stream_never_has_more_than_the_session_window_in_flight() {
        let mut g = CreditGate::default();
        let per = (SESSION_WINDOW / MAX_GROWN_WINDOW as usize) as u16;
        // Enough channels grown to the maximum fill the session's window.
        for ch in 1..=per {
            g.open(ch, MAX_WINDOW);
            g.credit(ch, MAX_GROWN_WINDOW - MAX_WINDOW);
        }
        assert_eq!(g.in_flight, SESSION_WINDOW);
        // A new channel starts with no window at all, then gets room as data drains.
        assert_eq!(g.open(100, MAX_WINDOW), 0);
        assert_eq!(g.credit(1, 64 * K), 0);
        g.delivered(1, 64 * 1024);
        // Channel 100 waited first: it gets the room.
        assert_eq!(g.poll_credit(), Some((100, 64 * K)));
        assert_eq!(g.poll_credit(), None);
        g.delivered(2, 64 * 1024);
        assert_eq!(g.poll_credit(), Some((1, 64 * K)));
        // A channel's end frees its share.
        g.close(3);
        assert_eq!(g.poll_credit(), Some((100, MAX_WINDOW - 64 * K)));
        let left = SESSION_WINDOW - MAX_GROWN_WINDOW as usize + MAX_WINDOW as usize - 64 * 1024;
        assert_eq!(g.in_flight, left);
    }

    #[test]
    fn no_sequence_of_frames_breaks_the_bounds() {
        // A small deterministic generator: opens, grants, deliveries and closes.
        let mut g = CreditGate::default();
        let mut agent_credit: HashMap<u16, u64> = HashMap::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ch = (x % 80) as u16;
            let n = ((x >> 8) % (2 * MAX_WINDOW as u64)) as u32;
            match (x >> 40) % 8 {
                0 => {
                    agent_credit.insert(ch, u64::from(g.open(ch, n.min(MAX_WINDOW))));
                }
                1 => {
                    g.close(ch);
                    agent_credit.remove(&ch);
                }
                2..=4 => {
                    let passed = g.credit(ch, n);
                    if let Some(c) = agent_credit.get_mut(&ch) {
                        *c += u64::from(passed);
                    }
                }
                _ => {
                    // The agent sends what it may; it reaches the client.
                    if let Some(c) = agent_credit.get_mut(&ch) {
                        let sent = (*c).min(u64::from(n));
                        *c -= sent;
                        g.delivered(ch, sent as usize);
                    }
                }
            }
            while let Some((ch, n)) = g.poll_credit() {
                *agent_credit
                    .get_mut(&ch)
                    .expect("credit for an open channel") += u64::from(n);
            }
            let total: u64 = agent_credit.values().sum();
            assert!(agent_credit
                .values()
                .all(|c| *c <= u64::from(MAX_GROWN_WINDOW)));
            assert!(total <= SESSION_WINDOW as u64);
            assert_eq!(total, g.in_flight as u64);
        }
    }
}
