//! One entry of the session table, and the channels inside it.
//!
//! Shell and exec sessions have exactly channel 0, opened with the session. Forward
//! sessions start with no channel; each `ChannelOpen` adds one (ids 1..), up to the
//! table's capacity `C`. Every channel has its own credit in each direction, so one
//! stalled connection never blocks the others.

use heapless::String;

use super::{Event, REASON_MAX};
use crate::error::ProtocolError;
use crate::flow::{RecvWindow, SendWindow};
use crate::limits::TokenBucket;
use crate::wire::{ErrorCode, Exit, Frame};

/// Life of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SlotState {
    /// `Open` received, the driver has not decided yet.
    Requested,
    /// Accepted and running (the `Accept` frame may still be pending).
    Open,
    /// The peer asked to end it (or it was aborted); waiting for the driver's `close`
    /// (its `reject` if it was ended before the driver accepted it).
    Terminating,
    /// `Reject` to send, then free.
    Rejecting(ErrorCode, String<REASON_MAX>),
    /// `Close` to send (after every pending channel frame), then free.
    Closing(Exit, String<REASON_MAX>),
}

/// Life of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ChanState {
    /// `ChannelOpen` received, the driver is connecting.
    Requested,
    /// Connected (its `ChannelAccept` may still be pending).
    Open,
    /// The peer aborted it; waiting for the driver's `close_channel`.
    Terminating,
    /// `ChannelReject` to send, then free.
    Rejecting(ErrorCode, String<REASON_MAX>),
    /// `ChannelClose` to send (after pending credit and `Eof`), then free.
    Closing(String<REASON_MAX>),
}

/// One direction-pair of flow control and half-close state.
#[derive(Debug)]
pub(super) struct Channel {
    pub ch: u16,
    pub state: ChanState,
    pub send: SendWindow,
    pub recv: RecvWindow,
    pub peer_eof: bool,
    pub eof_sent: bool,
    pub eof_pending: bool,
    /// The `ChannelAccept` still has to go out (forward channels only).
    pub accept_pending: bool,
}

impl Channel {
    pub fn new(ch: u16, state: ChanState, peer_window: u32, our_window: u32) -> Self {
        Channel {
            ch,
            state,
            send: SendWindow::new(peer_window),
            recv: RecvWindow::new(our_window),
            peer_eof: false,
            eof_sent: false,
            eof_pending: false,
            accept_pending: false,
        }
    }

    /// Whether frames from the peer are still delivered to the driver.
    pub fn accepts_input(&self) -> bool {
        self.state == ChanState::Open
    }

    /// Whether output may be sent now.
    pub fn may_send(&self) -> bool {
        matches!(self.state, ChanState::Open | ChanState::Terminating) && !self.accept_pending
    }

    /// The next frame of this channel, and whether the channel is free after it.
    fn next_frame(&mut self, sid: u32, out: &mut [u8]) -> Option<(usize, bool)> {
        let ch = self.ch;
        if self.accept_pending && self.state != ChanState::Requested {
            self.accept_pending = false;
            let f = Frame::ChannelAccept {
                sid,
                ch,
                window: self.recv.window(),
            };
            return f.encode(out).ok().map(|n| (n, false));
        }
        let (frame, free) = match &self.state {
            ChanState::Requested => return None,
            ChanState::Rejecting(code, reason) => (
                Frame::ChannelReject {
                    sid,
                    ch,
                    code: *code,
                    reason: reason.as_str(),
                },
                true,
            ),
            state => {
                if let Some(bytes) = self.recv.credit_due() {
                    (Frame::Credit { sid, ch, bytes }, false)
                } else if self.eof_pending {
                    self.eof_pending = false;
                    (Frame::Eof { sid, ch }, false)
                } else if let ChanState::Closing(reason) = state {
                    (
                        Frame::ChannelClose {
                            sid,
                            ch,
                            reason: reason.as_str(),
                        },
                        true,
                    )
                } else {
                    return None;
                }
            }
        };
        frame.encode(out).ok().map(|n| (n, free))
    }
}

/// A session and its channels.
#[derive(Debug)]
pub(super) struct Slot<const C: usize> {
    pub sid: u32,
    pub state: SlotState,
    /// A forward session (channels come and go) rather than shell/exec (channel 0).
    pub forward: bool,
    /// The driver accepted the session.
    pub accepted: bool,
    /// The `Accept` frame went out; data may follow it.
    pub accept_sent: bool,
    pub channels: [Option<Channel>; C],
    /// The session's output rate limit, if any (set by a `Limit` frame).
    pub bucket: Option<TokenBucket>,
    /// Output is waiting for the bucket to refill.
    pub rate_blocked: bool,
    /// Round-robin start among channels.
    cursor: usize,
}

impl<const C: usize> Slot<C> {
    pub fn new(sid: u32, forward: bool, peer_window: u32, our_window: u32) -> Self {
        let mut channels = [const { None }; C];
        if !forward {
            if let Some(first) = channels.first_mut() {
                *first = Some(Channel::new(0, ChanState::Open, peer_window, our_window));
            }
        }
        Slot {
            sid,
            state: SlotState::Requested,
            forward,
            accepted: false,
            accept_sent: false,
            channels,
            bucket: None,
            rate_blocked: false,
            cursor: 0,
        }
    }

    /// Whether frames from the peer are still delivered to the driver.
    pub fn accepts_input(&self) -> bool {
        self.state == SlotState::Open
    }

    pub fn chan(&mut self, ch: u16) -> Option<&mut Channel> {
        self.channels.iter_mut().flatten().find(|c| c.ch == ch)
    }

    pub fn chan_ref(&self, ch: u16) -> Option<&Channel> {
        self.channels.iter().flatten().find(|c| c.ch == ch)
    }

    pub fn abort<'a>(&mut self, error: ProtocolError) -> Option<Event<'a>> {
        self.state = SlotState::Terminating;
        Some(Event::Abort {
            sid: self.sid,
            error,
        })
    }

    /// The next frame of this session, and whether the slot is free after it.
    pub fn next_frame(&mut self, out: &mut [u8]) -> Option<(usize, bool)> {
        let sid = self.sid;
        if self.accepted && !self.accept_sent {
            self.accept_sent = true;
            let window = self.chan_ref(0).map_or(0, |c| c.recv.window());
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
        for i in 0..C {
            let idx = (self.cursor + i) % C;
            let Some(chan) = self.channels[idx].as_mut() else {
                continue;
            };
            if let Some((len, free)) = chan.next_frame(sid, out) {
                if free {
                    self.channels[idx] = None;
                }
                self.cursor = (idx + 1) % C;
                return Some((len, false));
            }
        }
        if let SlotState::Closing(exit, reason) = &self.state {
            let f = Frame::Close {
                sid,
                exit: *exit,
                reason: reason.as_str(),
            };
            return f.encode(out).ok().map(|len| (len, true));
        }
        None
    }
}
