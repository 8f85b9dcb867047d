//! One entry of the session table.

use heapless::String;

use super::{Event, REASON_MAX};
use crate::error::ProtocolError;
use crate::flow::{RecvWindow, SendWindow};
use crate::wire::{ErrorCode, Exit, Frame};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SlotState {
    /// `Open` received, the driver has not decided yet.
    Requested,
    /// Accepted and running (the `Accept` frame may still be pending).
    Open,
    /// The peer asked to end it (or it was aborted); waiting for the driver's `close`.
    Terminating,
    /// `Reject` to send, then free.
    Rejecting(ErrorCode, String<REASON_MAX>),
    /// `Close` to send (after any pending credit/EOF), then free.
    Closing(Exit, String<REASON_MAX>),
}

#[derive(Debug)]
pub(super) struct Slot {
    pub sid: u32,
    pub state: SlotState,
    pub send: SendWindow,
    pub recv: RecvWindow,
    pub peer_eof: bool,
    /// The driver accepted the session.
    pub accepted: bool,
    /// The `Accept` frame went out; data may follow it.
    pub accept_sent: bool,
    pub eof_sent: bool,
    pub eof_pending: bool,
}

impl Slot {
    pub fn new(sid: u32, peer_window: u32, our_window: u32) -> Self {
        Slot {
            sid,
            state: SlotState::Requested,
            send: SendWindow::new(peer_window),
            recv: RecvWindow::new(our_window),
            peer_eof: false,
            accepted: false,
            accept_sent: false,
            eof_sent: false,
            eof_pending: false,
        }
    }

    /// Whether frames from the peer are still delivered to the driver.
    pub fn accepts_input(&self) -> bool {
        self.state == SlotState::Open
    }

    pub fn abort<'a>(&mut self, error: ProtocolError) -> Option<Event<'a>> {
        self.state = SlotState::Terminating;
        Some(Event::Abort {
            sid: self.sid,
            error,
        })
    }

    /// The next control frame of this session, and whether the slot is free after it.
    pub fn next_frame(&mut self, out: &mut [u8]) -> Option<(usize, bool)> {
        let sid = self.sid;
        if self.accepted && !self.accept_sent {
            self.accept_sent = true;
            let frame = Frame::Accept {
                sid,
                window: self.recv.window(),
            };
            return frame.encode(out).ok().map(|len| (len, false));
        }
        let (frame, free) = match &self.state {
            SlotState::Rejecting(code, reason) => (
                Frame::Reject {
                    sid,
                    code: *code,
                    reason: reason.as_str(),
                },
                true,
            ),
            SlotState::Requested => return None,
            _ => {
                if let Some(bytes) = self.recv.credit_due() {
                    (Frame::Credit { sid, ch: 0, bytes }, false)
                } else if self.eof_pending {
                    self.eof_pending = false;
                    (Frame::Eof { sid, ch: 0 }, false)
                } else if let SlotState::Closing(exit, reason) = &self.state {
                    (
                        Frame::Close {
                            sid,
                            exit: *exit,
                            reason: reason.as_str(),
                        },
                        true,
                    )
                } else {
                    return None;
                }
            }
        };
        frame.encode(out).ok().map(|len| (len, free))
    }
}
