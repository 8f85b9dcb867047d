//! One entry of the session table, and the channels inside it.
//!
//! Shell and exec sessions have exactly channel 0, opened with the session. Forward
//! sessions start with no channel; each `ChannelOpen` adds one (ids 1..), up to the
//! table's capacity `C`. Every channel has its own credit in each direction, so one
//! stalled connection never blocks the others, and its own output ring: the engine
//! sends what the driver wrote into it, within credit and the session's rate, and
//! decides from the driver's `finish` and `exited` when a channel and a session are
//! over.

use heapless::String;

use super::ring::{Buffer, Ring};
use super::{Event, REASON_MAX};
use crate::error::ProtocolError;
use crate::flow::{RecvWindow, SendWindow};
use crate::limits::TokenBucket;
use crate::time::Instant;
use crate::wire::{Bytes, ErrorCode, Exit, Frame};

/// Life of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SlotState {
    /// `Open` received, the driver has not decided yet.
    Requested,
    /// Accepted and running (the `Accept` frame may still be pending).
    Open,
    /// The peer asked to end it (or it was aborted); waiting for the driver's
    /// `exited` (its `reject` if it was ended before the driver accepted it).
    Terminating,
    /// `Reject` to send, then free.
    Rejecting(ErrorCode, String<REASON_MAX>),
}

/// Life of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChanState {
    /// `ChannelOpen` received, the driver is connecting.
    Requested,
    /// Connected (its `ChannelAccept` may still be pending).
    Open,
    /// The peer aborted it; waiting for the driver's `close_channel`.
    Terminating,
    /// `ChannelReject` to send, then free.
    Rejecting(ErrorCode, String<REASON_MAX>),
    /// `ChannelClose` to send (after pending credit, output and `Eof`), then free.
    Closing(String<REASON_MAX>),
}

/// One direction-pair of flow control, half-close state and waiting output.
#[derive(Debug)]
pub(crate) struct Channel<B> {
    pub ch: u16,
    /// Generation: a handle of an earlier channel in this place does not match.
    pub gen: u32,
    pub state: ChanState,
    pub send: SendWindow,
    pub recv: RecvWindow,
    pub out: Ring<B>,
    pub peer_eof: bool,
    /// The driver's output ended: `Eof` follows what waits.
    pub finished: bool,
    pub eof_sent: bool,
    /// The `ChannelAccept` still has to go out (forward channels only).
    pub accept_pending: bool,
    /// This side ends the channel once both directions are done (the agent); the
    /// other (a client) waits for its `ChannelClose`.
    pub ends_itself: bool,
}

impl<B: Buffer> Channel<B> {
    /// `our_window`: the window announced, and the most it may grow to.
    pub fn new(
        ch: u16,
        gen: u32,
        state: ChanState,
        peer_window: u32,
        our_window: (u32, u32),
    ) -> Self {
        Channel {
            ch,
            gen,
            state,
            send: SendWindow::new(peer_window),
            recv: RecvWindow::growing(our_window.0, our_window.1),
            out: Ring::new(),
            peer_eof: false,
            finished: false,
            eof_sent: false,
            accept_pending: false,
            ends_itself: true,
        }
    }

    /// Whether frames from the peer are still delivered to the driver.
    pub fn accepts_input(&self) -> bool {
        self.state == ChanState::Open
    }

    /// Whether the driver may still write output into it.
    pub fn takes_output(&self) -> bool {
        matches!(self.state, ChanState::Open) && !self.finished
    }

    /// The channel ends now, for `reason`, dropping what waits to be sent.
    pub fn abort(&mut self, reason: String<REASON_MAX>) {
        self.out.clear();
        self.state = ChanState::Closing(reason);
    }

    /// The next frame of this channel, and whether the channel is free after it.
    /// `data` says whether output may go now (the session is accepted and within
    /// its rate), and how much at most.
    pub(crate) fn next_frame(
        &mut self,
        sid: u32,
        out: &mut [u8],
        data: usize,
    ) -> Option<(usize, bool, usize)> {
        let ch = self.ch;
        if self.accept_pending && self.state != ChanState::Requested {
            self.accept_pending = false;
            let f = Frame::ChannelAccept {
                sid,
                ch,
                window: self.recv.window(),
            };
            return f.encode(out).ok().map(|n| (n, false, 0));
        }
        if let ChanState::Rejecting(code, reason) = &self.state {
            let f = Frame::ChannelReject {
                sid,
                ch,
                code: *code,
                reason: reason.as_str(),
            };
            return f.encode(out).ok().map(|n| (n, true, 0));
        }
        if self.state == ChanState::Requested {
            return None;
        }
        if let Some(bytes) = self.recv.credit_due() {
            let f = Frame::Credit { sid, ch, bytes };
            return f.encode(out).ok().map(|n| (n, false, 0));
        }
        if data > 0 && !self.accept_pending {
            if let Some((stream, bytes)) = self.out.front() {
                let n = self.send.take(bytes.len().min(data));
                if n > 0 {
                    let f = Frame::Data {
                        sid,
                        ch,
                        stream,
                        data: Bytes(&bytes[..n]),
                    };
                    return match f.encode(out) {
                        Ok(len) => {
                            self.out.consume(n);
                            Some((len, false, n))
                        }
                        Err(_) => {
                            self.send.give_back(n);
                            None
                        }
                    };
                }
            }
        }
        let drained = self.out.is_empty();
        if self.state == ChanState::Open {
            if drained && self.finished && !self.eof_sent {
                self.eof_sent = true;
                let f = Frame::Eof { sid, ch };
                return f.encode(out).ok().map(|n| (n, false, 0));
            }
            // Both directions done: a forward channel is over (channel 0 ends with
            // its session).
            if ch != 0 && self.ends_itself && drained && self.eof_sent && self.peer_eof {
                self.state = ChanState::Closing(String::new());
            }
        }
        if let ChanState::Closing(reason) = &self.state {
            if drained {
                let f = Frame::ChannelClose {
                    sid,
                    ch,
                    reason: reason.as_str(),
                };
                return f.encode(out).ok().map(|n| (n, true, 0));
            }
        }
        None
    }
}

/// A session and its channels.
#[derive(Debug)]
pub(super) struct Slot<const C: usize, B> {
    pub sid: u32,
    /// Its place in the table.
    pub index: u16,
    /// Generation: a handle of an earlier session in this place does not match.
    pub gen: u32,
    pub state: SlotState,
    /// A forward session (channels come and go) rather than shell/exec (channel 0).
    pub forward: bool,
    /// The driver accepted the session.
    pub accepted: bool,
    /// The `Accept` frame went out; data may follow it.
    pub accept_sent: bool,
    pub channels: [Option<Channel<B>>; C],
    /// The session's output rate limit, if any (set by a `Limit` frame).
    pub bucket: Option<TokenBucket>,
    /// Output is waiting for the bucket to refill.
    pub rate_blocked: bool,
    /// How the session ended, with the driver's words, once its work is over.
    pub exit: Option<(Exit, String<REASON_MAX>)>,
    /// The peer broke the protocol in this session: it closes as aborted.
    pub aborted: Option<ProtocolError>,
    /// Round-robin start among channels.
    cursor: usize,
}

impl<const C: usize, B: Buffer> Slot<C, B> {
    pub fn new(
        (sid, index, gen): (u32, u16, u32),
        forward: bool,
        peer_window: u32,
        our_window: (u32, u32),
    ) -> Self {
        let mut channels = [const { None }; C];
        if !forward {
            if let Some(first) = channels.first_mut() {
                *first = Some(Channel::new(
                    0,
                    gen,
                    ChanState::Open,
                    peer_window,
                    our_window,
                ));
            }
        }
        Slot {
            sid,
            index,
            gen,
            state: SlotState::Requested,
            forward,
            accepted: false,
            accept_sent: false,
            channels,
            bucket: None,
            rate_blocked: false,
            exit: None,
            aborted: None,
            cursor: 0,
        }
    }

    /// Whether frames from the peer are still delivered to the driver.
    pub fn accepts_input(&self) -> bool {
        self.state == SlotState::Open
    }

    pub fn chan(&mut self, ch: u16) -> Option<&mut Channel<B>> {
        self.channels.iter_mut().flatten().find(|c| c.ch == ch)
    }

    /// Its handle.
    pub fn handle(&self) -> super::SessionHandle {
        super::SessionHandle {
            index: self.index,
            gen: self.gen,
            sid: self.sid,
        }
    }

    /// The peer broke the protocol in this session: it ends, as aborted.
    /// The driver hears of it once: later violations, or one on a session being
    /// refused (whose driver has forgotten it), change nothing.
    pub fn abort<'a>(&mut self, error: ProtocolError) -> Option<Event<'a>> {
        if self.aborted.is_some() || matches!(self.state, SlotState::Rejecting(..)) {
            return None;
        }
        self.aborted = Some(error);
        self.state = SlotState::Terminating;
        Some(Event::Abort {
            session: self.handle(),
            error,
        })
    }

    /// Payload bytes that may go now under the rate limit (all of `max` without one).
    fn allowance(&mut self, now: Instant, max: usize) -> usize {
        match self.bucket.as_mut() {
            Some(b) => {
                let avail = b.available(now).min(max);
                if avail == 0 {
                    self.rate_blocked = true;
                }
                avail
            }
            None => max,
        }
    }

    /// The next frame of this session, and whether the slot is free after it.
    pub fn next_frame(
        &mut self,
        now: Instant,
        out: &mut [u8],
        max_payload: usize,
    ) -> Option<(usize, bool)> {
        let sid = self.sid;
        if self.accepted && !self.accept_sent {
            self.accept_sent = true;
            let window = self
                .channels
                .iter()
                .flatten()
                .find(|c| c.ch == 0)
                .map_or(0, |c| c.recv.window());
            let frame = Frame::Accept { sid, window };
            return frame.encode(out).ok().map(|len| (len, false));
        }
        match &self.state {
            SlotState::Requested => return None,
            SlotState::Rejecting(code, reason) => {
                let f = Frame::Reject {
                    sid,
                    code: *code,
                    reason: reason.as_str(),
                };
                return f.encode(out).ok().map(|len| (len, true));
            }
            _ => {}
        }
        self.prepare_end();
        let data = if self.accept_sent && !self.rate_blocked {
            self.allowance(now, max_payload)
        } else {
            0
        };
        for i in 0..C {
            let idx = (self.cursor + i) % C;
            let Some(chan) = self.channels[idx].as_mut() else {
                continue;
            };
            if let Some((len, free, sent)) = chan.next_frame(sid, out, data) {
                if free {
                    self.channels[idx] = None;
                }
                if sent > 0 {
                    if let Some(b) = self.bucket.as_mut() {
                        b.consume(sent, now);
                    }
                }
                self.cursor = (idx + 1) % C;
                return Some((len, false));
            }
        }
        self.close_frame(out)
    }

    /// Once the driver said the work is over: a session that was ended drops its
    /// channels (nothing more goes out but the `Close`); one whose process ended
    /// by itself sends what waits, then channel 0's `Eof`, and ends its forward
    /// channels.
    fn prepare_end(&mut self) {
        if self.exit.is_none() {
            return;
        }
        if self.state == SlotState::Terminating {
            self.channels.iter_mut().for_each(|c| *c = None);
            return;
        }
        for c in self.channels.iter_mut().flatten() {
            if c.ch == 0 {
                c.finished = true;
            } else if !matches!(c.state, ChanState::Closing(_) | ChanState::Rejecting(..)) {
                c.abort(super::truncate("the session ended"));
            }
        }
    }

    /// The session's `Close`, once every channel is gone but a drained channel 0
    /// whose `Eof` went out.
    fn close_frame(&mut self, out: &mut [u8]) -> Option<(usize, bool)> {
        let (exit, reason) = self.exit.as_ref()?;
        let done = self
            .channels
            .iter()
            .flatten()
            .all(|c| c.ch == 0 && c.out.is_empty() && c.eof_sent);
        if !done {
            return None;
        }
        let mut why: String<REASON_MAX> = String::new();
        let exit = match self.aborted {
            Some(e) => {
                let _ = core::fmt::write(&mut why, format_args!("protocol violation: {e}"));
                Exit::Aborted(e.code())
            }
            None => {
                why = reason.clone();
                *exit
            }
        };
        let f = Frame::Close {
            sid: self.sid,
            exit,
            reason: why.as_str(),
        };
        f.encode(out).ok().map(|len| (len, true))
    }
}
