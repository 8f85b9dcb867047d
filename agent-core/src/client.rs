//! The client side of one session, sans I/O: what the CLI (and later the browser,
//! compiled to WebAssembly) speaks on a session stream.
//!
//! A [`Client`] is one session on one stream: it writes the `Open`, then holds the
//! session's channels with the same machinery as the agent's engine (a [`Buffer`]
//! of output per channel, credit each way, `Eof`), so that what the user types or a
//! local connection sends goes out within the agent's credit, and what the agent
//! sends is checked against ours. Same contract as [`crate::session::Agent`]: feed
//! received messages to [`Client::handle_frame`], act on the event, drain
//! [`Client::poll_transmit`]; write input with [`Client::send_slice`], report what
//! was written out with [`Client::consumed`].
//!
//! Receive windows may grow with the credit returned ([`Client::growing`]), each up
//! to a maximum and, if the driver says so, all of a session's channels together up
//! to a total ([`Client::sharing`]): what the driver can afford to hold of data it
//! has not written out yet.

use core::fmt::Write as _;

use heapless::{Deque, String};

use crate::error::ProtocolError;
use crate::session::ring::{Buffer, Storage};
use crate::session::slot::{ChanState, Channel};
use crate::session::{clip, UseError, REASON_MAX};
use crate::wire::{self, ErrorCode, Exit, Frame, Kind, Stream};

/// What the agent (or the relay) said, for the driver to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEvent<'a> {
    /// The session runs.
    Accepted,
    /// The session was refused; nothing more comes.
    Rejected {
        /// Why, as a code.
        code: ErrorCode,
        /// Why, for a person.
        reason: &'a str,
    },
    /// Output of a channel; call [`Client::consumed`] once written out.
    Data {
        /// Channel (0 for shell and exec).
        ch: u16,
        /// stdout or stderr.
        stream: Stream,
        /// The bytes.
        data: &'a [u8],
    },
    /// The agent's output on a channel ended.
    Eof {
        /// Channel.
        ch: u16,
    },
    /// A forward channel is connected.
    ChannelAccepted {
        /// Channel.
        ch: u16,
    },
    /// A forward channel could not be connected; it is gone.
    ChannelRejected {
        /// Channel.
        ch: u16,
        /// Why, as a code.
        code: ErrorCode,
        /// Why, for a person.
        reason: &'a str,
    },
    /// A forward channel is over (empty reason: cleanly), or the agent answered our
    /// [`Client::close_channel`]; it is gone.
    ChannelClosed {
        /// Channel.
        ch: u16,
        /// Why, if not cleanly.
        reason: &'a str,
    },
    /// The session is resumable: it survives a cut of the stream (reconnect with
    /// `token` within `hold` seconds and call [`Client::reattach`]) or of the
    /// agent's link. A new token comes after every resume.
    Resumable {
        /// Seconds a side may be away before the session ends.
        hold: u32,
        /// What resumes it on a new stream.
        token: &'a str,
    },
    /// The relay asked where this side stands: the agent's link is away, or this
    /// is a new stream. Nothing is sent until [`ClientEvent::Resumed`].
    Suspended,
    /// The session goes on: what was lost is being sent again, both ways.
    Resumed,
    /// A line for the user from the relay (someone joined the session).
    Notice {
        /// The line.
        message: &'a str,
    },
    /// The session ended; nothing more comes.
    Closed {
        /// How.
        exit: Exit,
        /// Why, for a person (may be empty).
        reason: &'a str,
    },
}

/// Why a forward channel ended at the agent, when its end was lost in a cut and
/// its reason with it: the agent says it again (it remembers the last few channels
/// it freed), or the client finds it gone without its `Eof` (see
/// [`Client::poll_event`]).
pub const LOST_CHANNEL: &str = "the connection ended at the agent while the link was down";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `Open` written, no answer yet.
    Opening,
    /// Accepted.
    Open,
    /// Over (closed, rejected, or we asked to end it).
    Over,
}

/// Where a resumable shell or exec session stands on this side, for another
/// client to take it up ([`Client::take_up`]): a page reloaded in a browser keeps
/// its shell this way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// Seconds the relay holds the session while a side is away.
    pub hold: u32,
    /// Output bytes received: where the output goes on from.
    pub received: u64,
    /// The output ended.
    pub eof: bool,
    /// Offset of the oldest input byte the agent has not acknowledged.
    pub acked: u64,
}

/// A forward channel's destination, kept until the agent answers: its
/// `ChannelOpen` goes again if a cut lost it.
#[derive(Debug)]
struct OpenReq {
    host: String<255>,
    port: u16,
    /// Its `ChannelOpen` went out (and was not lost, as far as we know).
    sent: bool,
}

/// One session, as its client sees it: up to `C` channels, each one's input
/// waiting in a `B`.
#[derive(Debug)]
pub struct Client<const C: usize, B: Buffer> {
    sid: u32,
    window: u32,
    /// The most a channel's receive window grows to.
    max_window: u32,
    /// The most all channels' receive windows grow to together, if bounded.
    total_window: Option<u32>,
    state: State,
    channels: [Option<Channel<B>>; C],
    /// The destination of the channel in the same place, until the agent answers.
    opens: [Option<OpenReq>; C],
    /// A forward session (channels come and go; channel 0 only ends an answer).
    forward: bool,
    /// Channels a resume found gone at the agent, and whether they had ended
    /// cleanly as far as we know: [`Client::poll_event`] says so.
    gone: Deque<(u16, bool), C>,
    /// The latest terminal size, not sent yet (sizes in between do not matter).
    resize: Option<(u16, u16)>,
    signals: Deque<u8, 4>,
    /// We ask the agent to end the session, for this reason.
    close: Option<String<REASON_MAX>>,
    next_ch: u16,
    cursor: usize,
    /// Resumable, held this many seconds by the relay.
    hold: Option<u32>,
    /// Nothing goes but our `Resume`, until the agent's comes.
    suspended: bool,
    /// Our `Resume`s to send, one per `Suspend`.
    answer_due: u32,
    /// The place of the next forward channel to name in the answer being sent.
    answer_at: usize,
    /// Ask for the `Ack` of input as soon as it is all sent
    /// ([`Client::with_prompt_acks`]).
    prompt_acks: bool,
}

impl<const C: usize, B: Buffer> Client<C, B> {
    /// A session with id `sid` on its stream, receiving up to `window` bytes per
    /// channel before it returns credit. Write its `Open` with [`Client::open`].
    pub fn new(sid: u32, window: u32) -> Self {
        Client {
            sid,
            window,
            max_window: window,
            total_window: None,
            state: State::Opening,
            channels: core::array::from_fn(|_| None),
            opens: core::array::from_fn(|_| None),
            forward: false,
            gone: Deque::new(),
            resize: None,
            signals: Deque::new(),
            close: None,
            next_ch: 1,
            cursor: 0,
            prompt_acks: false,
            hold: None,
            suspended: false,
            answer_due: 0,
            answer_at: 0,
        }
    }

    /// Where a resumable shell or exec session that runs stands, and its input
    /// not acknowledged yet (from [`Place::acked`], in two parts): what
    /// [`Client::take_up`] needs. `None` for a forward session, or one not
    /// resumable, not accepted or over.
    pub fn place_now(&self) -> Option<(Place, &[u8], &[u8])> {
        if self.forward || self.state != State::Open {
            return None;
        }
        let hold = self.hold?;
        let c = self.channels.iter().flatten().find(|c| c.ch == 0)?;
        let (a, b) = c.out.held();
        let place = Place {
            hold,
            received: c.received,
            eof: c.peer_eof,
            acked: c.acked,
        };
        Some((place, a, b))
    }

    /// A session another client ran, taken up where it stood ([`Client::place_now`]):
    /// resumable, and waiting, as after [`Client::reattach`], for the relay's
    /// `Suspend` on a new stream; `input` (what the agent had not acknowledged,
    /// from `place.acked`) goes again from where the agent's `Resume` says.
    /// `window` and `max_window` as [`Client::new`] and [`Client::growing`].
    pub fn take_up(
        sid: u32,
        (window, max_window): (u32, u32),
        place: Place,
        input: &[u8],
    ) -> Result<Self, UseError> {
        let mut client = Client::new(sid, window).growing(max_window);
        let mut c = Channel::new(0, 0, ChanState::Open, 0, (window, max_window));
        if !c.taken_up(place.received, place.eof, place.acked, input) {
            return Err(UseError::BufferTooSmall {
                needed: input.len(),
            });
        }
        client.channels[0] = Some(c);
        client.state = State::Open;
        client.hold = Some(place.hold);
        client.suspended = true;
        Ok(client)
    }

    /// Whether the relay made the session resumable.
    pub fn is_resumable(&self) -> bool {
        self.hold.is_some()
    }

    /// Whether the session waits for a resume (nothing is sent meanwhile; input
    /// still waits in the channel buffers while they have room).
    pub fn is_suspended(&self) -> bool {
        self.suspended
    }

    /// The stream is new (the old one was cut): the session waits for the relay's
    /// `Suspend`, answers where it stands, and goes on once the agent's `Resume`
    /// comes. [`UseError::NotNow`] if the session is not resumable.
    pub fn reattach(&mut self) -> Result<(), UseError> {
        if self.hold.is_none() || self.state != State::Open {
            return Err(UseError::NotNow);
        }
        self.suspended = true;
        self.answer_due = 0;
        self.answer_at = 0;
        Ok(())
    }

    /// Let each channel's receive window grow, with the credit returned, up to
    /// `max` bytes (see [`crate::flow::RecvWindow::growing`]).
    pub fn growing(mut self, max: u32) -> Self {
        self.max_window = max;
        self
    }

    /// Have a resumable session's input acknowledged as soon as the agent has it:
    /// each time all of it is sent, the client asks for an `Ack` (once until it
    /// comes: two small frames per burst of typing). Otherwise the agent
    /// acknowledges input only each 256 KiB, or when half of the input buffer
    /// waits, and up to that much stays here unacknowledged. For a client that
    /// keeps that input where it outlives the session's page: the browser console
    /// saves it in the tab's storage at a reload ([`Client::place_now`]), and what
    /// was typed (a password at a prompt) should not wait there.
    pub fn with_prompt_acks(mut self) -> Self {
        self.prompt_acks = true;
        for c in self.channels.iter_mut().flatten() {
            c.ask_when_idle = true;
        }
        self
    }

    /// Let the receive windows of all channels grow to `total` bytes together at
    /// most: a channel's window grows only into what the others leave (it never
    /// shrinks; a window of `window` bytes is always granted, so a session with many
    /// channels may hold more than `total` without growing).
    pub fn sharing(mut self, total: u32) -> Self {
        self.total_window = Some(total);
        self
    }

    /// Write the session's `Open` for `kind` as `account` (empty: the agent's default)
    /// into `out`; returns its length. Shell and exec sessions get channel 0.
    pub fn open(
        &mut self,
        kind: Kind<'_>,
        account: &str,
        out: &mut [u8],
    ) -> Result<usize, UseError> {
        let f = Frame::Open {
            sid: self.sid,
            window: self.window,
            kind,
            account,
        };
        let n = f
            .encode(out)
            .map_err(
                |crate::EncodeError::BufferTooSmall { needed }| UseError::BufferTooSmall { needed },
            )?;
        self.forward = matches!(kind, Kind::Forward);
        if !self.forward {
            // Its send window comes with the `Accept`.
            let ours = (self.window, self.max_window);
            let mut c = Channel::new(0, 0, ChanState::Requested, 0, ours);
            c.ask_when_idle = self.prompt_acks;
            self.channels[0] = Some(c);
        }
        Ok(n)
    }

    /// Whether the session is over (closed or refused).
    pub fn is_over(&self) -> bool {
        self.state == State::Over
    }

    fn chan(&mut self, ch: u16) -> Option<&mut Channel<B>> {
        self.channels.iter_mut().flatten().find(|c| c.ch == ch)
    }

    /// The place of channel `ch`, if we have it.
    fn place(&self, ch: u16) -> Option<usize> {
        self.channels
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.ch == ch))
    }

    fn free(&mut self, ch: u16) {
        if let Some(i) = self.place(ch) {
            self.channels[i] = None;
            self.opens[i] = None;
        }
    }

    /// The agent answered channel `ch`'s `ChannelOpen`: it needs no sending again.
    fn answered(&mut self, ch: u16) {
        if let Some(i) = self.place(ch) {
            self.opens[i] = None;
        }
    }

    /// An event that no frame carried: a forward channel that a resume found gone
    /// at the agent (it ended while the link was down, its `ChannelClose` lost), as
    /// [`ClientEvent::ChannelClosed`]: with no reason if the agent's `Eof` had come
    /// (it ended cleanly, all of its output here), else with [`LOST_CHANNEL`] (the
    /// agent may have aborted it, its output cut short). Call after each
    /// [`Client::handle_frame`] until `None`.
    pub fn poll_event(&mut self) -> Option<ClientEvent<'static>> {
        let (ch, clean) = self.gone.pop_front()?;
        let reason = if clean { "" } else { LOST_CHANNEL };
        Some(ClientEvent::ChannelClosed { ch, reason })
    }

    /// Feed one message from the stream.
    pub fn handle_frame<'a>(
        &mut self,
        msg: &'a [u8],
    ) -> Result<Option<ClientEvent<'a>>, ProtocolError> {
        let frame = match Frame::decode(msg) {
            Ok(f) => f,
            // A newer relay may send frame types this client does not know.
            Err(crate::DecodeError::UnknownFrame { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let sid = self.sid;
        Ok(match frame {
            Frame::Accept { window, .. } if self.state == State::Opening => {
                self.state = State::Open;
                if let Some(c) = self.chan(0) {
                    c.state = ChanState::Open;
                    c.send = crate::flow::SendWindow::new(window);
                }
                Some(ClientEvent::Accepted)
            }
            Frame::Reject { code, reason, .. } => {
                self.state = State::Over;
                Some(ClientEvent::Rejected { code, reason })
            }
            Frame::Close { exit, reason, .. } => {
                self.state = State::Over;
                Some(ClientEvent::Closed { exit, reason })
            }
            Frame::Data {
                ch, stream, data, ..
            } => self.data(ch, stream, None, data.0)?,
            Frame::DataAt {
                ch,
                stream,
                offset,
                data,
                ..
            } => self.data(ch, stream, Some(offset), data.0)?,
            Frame::Resumable { hold, token, .. } if self.state != State::Over => {
                if !self.forward && self.chan(0).is_none() {
                    return Ok(None);
                }
                for c in self.channels.iter_mut().flatten() {
                    c.resumable = true;
                }
                self.hold = Some(hold);
                Some(ClientEvent::Resumable { hold, token })
            }
            Frame::Suspend { .. } if self.hold.is_some() && self.state == State::Open => {
                self.suspended = true;
                self.answer_due = self.answer_due.saturating_add(1);
                // A list the agent had begun to give is stale: a whole one comes.
                for c in self.channels.iter_mut().flatten() {
                    c.listed = false;
                }
                Some(ClientEvent::Suspended)
            }
            Frame::Resume {
                ch,
                offset,
                limit,
                eof,
                open,
                ..
            } if self.suspended && self.answer_due == 0 => {
                if self.forward && ch != 0 {
                    return self.resume_channel(ch, (offset, limit, eof), open);
                }
                self.suspended = false;
                if self.forward {
                    self.resume_end();
                } else {
                    self.chan(ch)
                        .ok_or(())
                        .and_then(|c| c.resume_from(offset, limit, eof))
                        .map_err(|()| ProtocolError::ResumeOffset { sid })?;
                }
                Some(ClientEvent::Resumed)
            }
            Frame::Ack { ch, offset, .. } => {
                if let Some(c) = self.chan(ch) {
                    c.on_ack(offset)
                        .map_err(|()| ProtocolError::ResumeOffset { sid })?;
                }
                None
            }
            Frame::Credit { ch, bytes, .. } => {
                if let Some(c) = self.chan(ch) {
                    c.send
                        .grant(bytes)
                        .map_err(|_| ProtocolError::CreditOverflow { sid })?;
                }
                None
            }
            Frame::Eof { ch, .. } => {
                let c = self
                    .chan(ch)
                    .filter(|c| c.state == ChanState::Open && !c.peer_eof);
                match c.map(Channel::peer_ended) {
                    Some(Ok(())) => Some(ClientEvent::Eof { ch }),
                    Some(Err(())) => return Err(ProtocolError::ResumeOffset { sid }),
                    None => None,
                }
            }
            Frame::ChannelAccept { ch, window, .. } => match self.chan(ch) {
                Some(c) if c.state == ChanState::Requested => {
                    c.state = ChanState::Open;
                    c.send = crate::flow::SendWindow::new(window);
                    self.answered(ch);
                    Some(ClientEvent::ChannelAccepted { ch })
                }
                _ => None,
            },
            Frame::ChannelReject {
                ch, code, reason, ..
            } => {
                if self.chan(ch).is_none() {
                    return Ok(None);
                }
                self.free(ch);
                Some(ClientEvent::ChannelRejected { ch, code, reason })
            }
            Frame::ChannelClose { ch, reason, .. } => {
                // The agent's end of a channel, or its answer to our abort (our own
                // `ChannelClose` may still wait to go: the channel is over anyway).
                if self.chan(ch).is_none() {
                    return Ok(None);
                }
                self.free(ch);
                Some(ClientEvent::ChannelClosed { ch, reason })
            }
            Frame::Notice { message, .. } => Some(ClientEvent::Notice { message }),
            Frame::Error { message, .. } => {
                self.state = State::Over;
                Some(ClientEvent::Closed {
                    exit: Exit::Aborted(ErrorCode::PROTOCOL),
                    reason: message,
                })
            }
            _ => None,
        })
    }

    /// The agent's `Resume` for forward channel `ch` (one of the list that ends with
    /// channel 0's): it goes on from where the agent stands, connected if `open`
    /// (its `ChannelAccept` may have been lost); an abort of ours the agent may not
    /// have seen goes again.
    fn resume_channel(
        &mut self,
        ch: u16,
        (offset, limit, eof): (u64, u64, bool),
        open: bool,
    ) -> Result<Option<ClientEvent<'static>>, ProtocolError> {
        let sid = self.sid;
        let Some(c) = self.chan(ch) else {
            return Ok(None);
        };
        c.listed = true;
        let bad = ProtocolError::ResumeOffset { sid };
        match c.state {
            ChanState::Requested if open => {
                c.state = ChanState::Open;
                c.resume_from(offset, limit, eof).map_err(|()| bad)?;
                self.answered(ch);
                Ok(Some(ClientEvent::ChannelAccepted { ch }))
            }
            // Still connecting: its `ChannelAccept` (or refusal) comes.
            ChanState::Requested => Ok(None),
            ChanState::Open => {
                c.resume_from(offset, limit, eof).map_err(|()| bad)?;
                Ok(None)
            }
            // Our `ChannelClose` went and its answer has not come: it goes again.
            ChanState::Terminating => {
                c.state = ChanState::Closing(String::new());
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// The end of the agent's answer (forward sessions): a channel it did not name
    /// is gone there. One connecting has its `ChannelOpen` sent again (the agent
    /// never had it, or refused it and the refusal was lost); any other ended at
    /// the agent, its `ChannelClose` lost: cleanly if its `Eof` came (the agent
    /// frees a channel that ends by itself only once its output is acknowledged),
    /// else perhaps aborted; or it answered our own abort.
    fn resume_end(&mut self) {
        for (place, open) in self.channels.iter_mut().zip(self.opens.iter_mut()) {
            let Some(c) = place.as_mut() else {
                continue;
            };
            if core::mem::take(&mut c.listed) {
                continue;
            }
            if c.state == ChanState::Requested {
                if let Some(o) = open.as_mut() {
                    o.sent = false;
                }
                continue;
            }
            let clean = c.peer_eof || c.state != ChanState::Open;
            let _ = self.gone.push_back((c.ch, clean));
            *place = None;
            *open = None;
        }
    }

    /// Output of a channel, as `Data` (no offset) or `DataAt`: what was not received
    /// before, checked against our window.
    fn data<'a>(
        &mut self,
        ch: u16,
        stream: Stream,
        offset: Option<u64>,
        data: &'a [u8],
    ) -> Result<Option<ClientEvent<'a>>, ProtocolError> {
        let sid = self.sid;
        // A channel that just ended, or that we aborted: dropped.
        let Some(c) = self.chan(ch).filter(|c| c.state == ChanState::Open) else {
            return Ok(None);
        };
        match c.receive(offset, data) {
            Ok(Some(data)) => Ok(Some(ClientEvent::Data { ch, stream, data })),
            Ok(None) => Ok(None),
            Err(_) => Err(ProtocolError::FlowControl { sid }),
        }
    }

    /// Open a forward channel to `host:port` once the session is accepted; returns
    /// its id (`ChannelOpen` goes out with the next transmit). [`UseError::NotNow`]
    /// before the `Accept` or when every place is taken.
    pub fn open_channel(&mut self, host: &str, port: u16) -> Result<u16, UseError> {
        match self.state {
            State::Over => return Err(UseError::Finished),
            State::Opening => return Err(UseError::NotNow),
            State::Open => {}
        }
        let mut name = String::new();
        name.push_str(host).map_err(|_| UseError::NotNow)?;
        let free = self
            .channels
            .iter()
            .position(Option::is_none)
            .ok_or(UseError::NotNow)?;
        // The next id not in use (ids wrap; 0 is the session's own channel).
        let mut ch = self.next_ch;
        while ch == 0 || self.channels.iter().flatten().any(|c| c.ch == ch) {
            ch = ch.wrapping_add(1);
        }
        self.next_ch = ch.wrapping_add(1);
        self.opens[free] = Some(OpenReq {
            host: name,
            port,
            sent: false,
        });
        let ours = (self.window, self.max_window);
        let resumable = self.hold.is_some();
        let mut c = Channel::with_buffer(
            ch,
            0,
            ChanState::Requested,
            (0, ours),
            Storage::forward(resumable),
        );
        c.ends_itself = false;
        c.resumable = resumable;
        self.channels[free] = Some(c);
        Ok(ch)
    }

    /// Input for a channel: as much of `data` as its buffer holds is taken; `0`
    /// means full (write the rest after transmitting).
    pub fn send_slice(&mut self, ch: u16, data: &[u8]) -> Result<usize, UseError> {
        if self.state == State::Over {
            return Err(UseError::Finished);
        }
        let c = self.chan(ch).ok_or(UseError::Stale)?;
        if c.finished || !matches!(c.state, ChanState::Open | ChanState::Requested) {
            return Err(UseError::Finished);
        }
        Ok(c.out.write(Stream::OUT, data))
    }

    /// The channel's input ended: `Eof` follows what waits.
    pub fn finish(&mut self, ch: u16) -> Result<(), UseError> {
        let c = self.chan(ch).ok_or(UseError::Stale)?;
        if !matches!(c.state, ChanState::Open | ChanState::Requested) {
            return Err(UseError::Finished);
        }
        c.finished = true;
        Ok(())
    }

    /// The local side of a channel failed: it is aborted (`ChannelClose` with the
    /// reason), what waits dropped, nothing more delivered; the agent's answer frees
    /// it ([`ClientEvent::ChannelClosed`]), so that its id is not reused before the
    /// agent is done with it.
    pub fn close_channel(&mut self, ch: u16, reason: &str) -> Result<(), UseError> {
        if ch == 0 {
            // Channel 0 is the session's: end it with [`Client::close`].
            return Err(UseError::NotNow);
        }
        let c = self.chan(ch).ok_or(UseError::Stale)?;
        if !matches!(c.state, ChanState::Open | ChanState::Requested) {
            // Aborted already (or ending): one `ChannelClose` is enough.
            return Err(UseError::Finished);
        }
        c.abort(clip(reason));
        Ok(())
    }

    /// `n` bytes of a channel's output were written out: credit flows back (none
    /// for a channel that is ending).
    pub fn consumed(&mut self, ch: u16, n: usize) {
        if let Some(c) = self.chan(ch).filter(|c| c.state == ChanState::Open) {
            c.recv.consume(n);
        }
    }

    /// The terminal changed size (only the latest size not yet sent goes).
    pub fn resize(&mut self, cols: u16, rows: u16) {
        self.resize = Some((cols, rows));
    }

    /// Deliver `signal` to the session's processes; [`UseError::NotNow`] when four
    /// are waiting to be sent already.
    pub fn signal(&mut self, signal: u8) -> Result<(), UseError> {
        self.signals.push_back(signal).map_err(|_| UseError::NotNow)
    }

    /// Ask the agent to end the session, for `reason`; its `Close` answers.
    pub fn close(&mut self, reason: &str) {
        let mut why: String<REASON_MAX> = String::new();
        let _ = write!(why, "{}", clip::<REASON_MAX>(reason));
        self.close = Some(why);
    }

    /// The next frame to send, written into `out`: frames are sized to it, up to a
    /// largest frame of the stream ([`wire::DEFAULT_MAX_FRAME`]); it must hold at
    /// least [`wire::MIN_MAX_FRAME`] bytes.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Result<Option<usize>, UseError> {
        let needed = wire::MIN_MAX_FRAME as usize;
        if out.len() < needed {
            return Err(UseError::BufferTooSmall { needed });
        }
        let size = out.len().min(wire::DEFAULT_MAX_FRAME as usize);
        let out = &mut out[..size];
        let sid = self.sid;
        if let Some(reason) = self.close.take() {
            self.state = State::Over;
            let f = Frame::Close {
                sid,
                exit: Exit::Aborted(ErrorCode::TERMINATED),
                reason: reason.as_str(),
            };
            return Ok(f.encode(out).ok());
        }
        if self.state == State::Over {
            return Ok(None); // nothing more after the end
        }
        if self.suspended {
            if self.answer_due == 0 {
                return Ok(None);
            }
            // One `Resume` per forward channel, then channel 0's, which ends it.
            while let Some(place) = self.channels.get(self.answer_at) {
                self.answer_at += 1;
                if let Some(c) = place.as_ref().filter(|c| c.ch != 0) {
                    return Ok(c.resume_frame(sid).encode(out).ok());
                }
            }
            self.answer_at = 0;
            self.answer_due -= 1;
            let forward = self.forward;
            let f = match self.chan(0) {
                Some(c) => c.resume_frame(sid),
                None if forward => Frame::end_of_resume(sid),
                None => return Ok(None),
            };
            return Ok(f.encode(out).ok());
        }
        let f = if let Some((cols, rows)) = self.resize.take() {
            Some(Frame::Resize { sid, cols, rows })
        } else {
            self.signals
                .pop_front()
                .map(|signal| Frame::Signal { sid, signal })
        };
        if let Some(f) = f {
            return Ok(f.encode(out).ok());
        }
        let due = self.opens.iter_mut().zip(self.channels.iter());
        for (open, c) in due {
            let (Some(o), Some(c)) = (open.as_mut().filter(|o| !o.sent), c.as_ref()) else {
                continue;
            };
            // (One aborted before it went goes too: the agent answers its
            // `ChannelClose`, which frees it.)
            o.sent = true;
            let f = Frame::ChannelOpen {
                sid,
                ch: c.ch,
                window: self.window,
                host: o.host.as_str(),
                port: o.port,
            };
            return Ok(f.encode(out).ok());
        }
        let max = wire::max_data_len(out.len() as u32);
        // One frame goes per call, so at most one window grows: the others' sum
        // taken once holds for each channel visited.
        let all: u64 = match self.total_window {
            Some(_) => self
                .channels
                .iter()
                .flatten()
                .map(|c| u64::from(c.recv.window()))
                .sum(),
            None => 0,
        };
        for i in 0..C {
            let idx = (self.cursor + i) % C;
            let Some(c) = self.channels[idx].as_mut() else {
                continue;
            };
            if let Some(total) = self.total_window {
                let others = all - u64::from(c.recv.window());
                let room = u64::from(total).saturating_sub(others);
                c.recv.set_max(self.max_window.min(room as u32));
            }
            if let Some((len, free, _)) = c.next_frame(sid, out, max) {
                if free {
                    // Our `ChannelClose` went: the channel waits, silent, for the
                    // agent's answer (a client never ends a channel otherwise).
                    c.state = ChanState::Terminating;
                }
                self.cursor = (idx + 1) % C;
                return Ok(Some(len));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
