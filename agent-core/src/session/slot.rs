//! One entry of the session table, and the channels inside it.
//!
//! Shell and exec sessions have exactly channel 0, opened with the session. Forward
//! sessions start with no channel; each `ChannelOpen` adds one (ids 1..), up to the
//! table's capacity `C`. Every channel has its own credit in each direction, so one
//! stalled connection never blocks the others, and its own output ring: the engine
//! sends what the driver wrote into it, within credit and the session's rate, and
//! decides from the driver's `finish` and `exited` when a channel and a session are
//! over.

use heapless::{String, Vec};

use super::ring::{Buffer, Ring, Storage};
use super::{Event, REASON_MAX};
use crate::error::ProtocolError;
use crate::flow::{RecvWindow, SendWindow};
use crate::limits::TokenBucket;
use crate::time::Instant;
use crate::wire::{Bytes, ErrorCode, Exit, Frame};

/// A receiver acknowledges at once when this much is not acknowledged yet (else
/// with the peer's `Eof`, or when the peer asks): one `Ack` per 32-KiB frame cost
/// a tenth of forwarding's throughput. A sender asks only when this rule would
/// not answer in time: when half of its replay buffer waits for an `Ack` and that
/// is less than this (a small buffer, as the device's).
pub(crate) const ACK_EVERY: u64 = 256 * 1024;

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
    /// Output goes as `DataAt`, kept until the peer's `Ack`; received bytes are
    /// acknowledged (the session is resumable).
    pub resumable: bool,
    /// Offset of the oldest output kept (everything before it is acknowledged, or
    /// was not kept).
    pub acked: u64,
    /// Bytes received from the peer, in all.
    pub received: u64,
    /// The offset of the last `Ack` sent.
    ack_sent: u64,
    /// The peer acknowledged our `Eof` (an `Ack` one past our last byte, or its
    /// `Resume` saying it has it): a forward channel that ends by itself is freed
    /// only then, so a peer that does not find it after a resume knows it ended
    /// cleanly.
    pub eof_acked: bool,
    /// The peer's answer to the latest `Suspend` named this forward channel.
    pub listed: bool,
    /// The peer asked for an `Ack` (an empty `DataAt`: its replay buffer is half
    /// full of what we have not acknowledged).
    ack_asked: bool,
    /// We asked the peer for an `Ack` when we had sent up to this offset, and its
    /// answer (an `Ack` at least this far) has not come yet. Only then do we ask
    /// again: an ask renewed by every `Ack` (the peer also acknowledges by
    /// itself) would start one more chain of ask and answer with each of those,
    /// until an `Ack` went for nearly every frame.
    asked_peer: Option<u64>,
    /// Ask for an `Ack` whenever everything held is sent (once until answered):
    /// what this side holds unacknowledged is let go within a round trip of going
    /// quiet (see [`crate::client::Client::with_prompt_acks`]).
    pub ask_when_idle: bool,
    /// Bytes past a gap were dropped (a frame was lost): until a resume sends
    /// them again, the peer's `Eof` cannot be the end (see [`Channel::peer_ended`]).
    gap: bool,
    /// The driver has to hear [`super::Event::ChannelClose`] for it (the peer no
    /// longer has it after a resume).
    pub tell_close: bool,
}

impl<B: Buffer> Channel<B> {
    /// A shell or exec session's channel (`ch` 0), with a session's buffer.
    /// `our_window`: the window announced, and the most it may grow to.
    pub fn new(
        ch: u16,
        gen: u32,
        state: ChanState,
        peer_window: u32,
        our_window: (u32, u32),
    ) -> Self {
        let windows = (peer_window, our_window);
        Channel::with_buffer(ch, gen, state, windows, Storage::Session)
    }

    /// [`Channel::new`], with the buffer `storage` says: a resumable channel's
    /// output buffer is its replay buffer too (what is not acknowledged yet: one
    /// round trip moves at most that much).
    pub fn with_buffer(
        ch: u16,
        gen: u32,
        state: ChanState,
        (peer_window, our_window): (u32, (u32, u32)),
        storage: Storage,
    ) -> Self {
        Channel {
            ch,
            gen,
            state,
            send: SendWindow::new(peer_window),
            recv: RecvWindow::growing(our_window.0, our_window.1),
            out: Ring::with(storage.make()),
            peer_eof: false,
            finished: false,
            eof_sent: false,
            accept_pending: false,
            ends_itself: true,
            resumable: false,
            acked: 0,
            received: 0,
            ack_sent: 0,
            eof_acked: false,
            listed: false,
            ack_asked: false,
            asked_peer: None,
            ask_when_idle: false,
            gap: false,
            tell_close: false,
        }
    }

    /// A resumable channel taken up where another side's copy of it stood:
    /// `received` bytes came, the first `held` of them acknowledged by the peer
    /// at `acked` (`output`, from `acked`, counts as sent: the peer's `Resume` says
    /// which of it goes again). `false` if `output` does not fit.
    pub fn taken_up(&mut self, received: u64, eof: bool, acked: u64, output: &[u8]) -> bool {
        self.resumable = true;
        self.received = received;
        self.ack_sent = received;
        self.peer_eof = eof;
        self.acked = acked;
        let n = self.out.write(crate::wire::Stream::OUT, output);
        self.out.mark_sent(n);
        n == output.len()
    }

    /// Offset of the next output byte to send.
    pub fn send_offset(&self) -> u64 {
        self.acked + self.out.sent() as u64
    }

    /// Bytes of the peer's at `offset` (a `DataAt`; `None`: a `Data`, which follows
    /// what came before): the part not received yet, checked against the window.
    /// `None` for a duplicate, or for bytes past a gap (a frame was lost: the
    /// session resumes before anything more is delivered on this channel).
    pub fn receive<'d>(
        &mut self,
        offset: Option<u64>,
        data: &'d [u8],
    ) -> Result<Option<&'d [u8]>, crate::flow::FlowViolation> {
        let at = offset.unwrap_or(self.received);
        if offset.is_some() && data.is_empty() {
            // The sender asks for an `Ack`.
            self.ack_asked = true;
            return Ok(None);
        }
        let Some(skip) = self.received.checked_sub(at) else {
            self.gap = true;
            return Ok(None);
        };
        let Some(new) = usize::try_from(skip).ok().and_then(|s| data.get(s..)) else {
            return Ok(None);
        };
        if new.is_empty() && !data.is_empty() {
            return Ok(None);
        }
        self.recv.on_data(new.len())?;
        self.received += new.len() as u64;
        Ok(Some(new))
    }

    /// The peer received everything before `offset`: forget it. One past the last
    /// byte sent acknowledges our `Eof` too. `Err` if that is more than was sent.
    pub fn on_ack(&mut self, offset: u64) -> Result<(), ()> {
        let end = self.send_offset();
        if offset == end + 1 && self.eof_sent && self.out.unsent() == 0 {
            self.eof_acked = true;
            return self.on_ack(end);
        }
        if offset > end {
            return Err(());
        }
        if let Some(n) = offset.checked_sub(self.acked) {
            self.out.release(n as usize);
            self.acked = offset;
            if self.asked_peer.is_some_and(|at| offset >= at) {
                self.asked_peer = None;
            }
        }
        Ok(())
    }

    /// The peer's `Resume`: send again from `offset` (what it received), within
    /// `limit`, and its `Eof` again if it did not see it. `Err` if this side no
    /// longer holds the bytes from `offset`, never sent them, or `limit` is below.
    pub fn resume_from(&mut self, offset: u64, limit: u64, eof: bool) -> Result<(), ()> {
        if offset < self.acked || offset > self.send_offset() || limit < offset {
            return Err(());
        }
        self.out.release((offset - self.acked) as usize);
        self.acked = offset;
        self.out.rewind();
        self.gap = false;
        self.asked_peer = None;
        self.send = SendWindow::new(u32::try_from(limit - offset).unwrap_or(u32::MAX));
        if !eof {
            self.eof_sent = false;
        }
        self.eof_acked = eof;
        Ok(())
    }

    /// The peer's `Eof` came: `Err` if bytes before it were lost (a frame past a
    /// gap was dropped and no resume sent them again), which only a broken relay
    /// or peer causes; the end would otherwise cut the stream short unnoticed.
    pub fn peer_ended(&mut self) -> Result<(), ()> {
        if self.gap {
            return Err(());
        }
        self.peer_eof = true;
        Ok(())
    }

    /// This side's `Resume` for session `sid`: bytes received, the offset the peer
    /// may send up to, whether its `Eof` came, and whether the channel is open here
    /// (connected, for a forward channel).
    pub fn resume_frame(&self, sid: u32) -> Frame<'static> {
        Frame::Resume {
            sid,
            ch: self.ch,
            offset: self.received,
            limit: self.received + u64::from(self.recv.remaining()),
            eof: self.peer_eof,
            open: !matches!(self.state, ChanState::Requested | ChanState::Rejecting(..)),
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
        self.drop_output();
        self.state = ChanState::Closing(reason);
    }

    /// What waits to be sent, or to be acknowledged, is dropped: it counts as
    /// acknowledged, so that an `Ack` for it still on its way is no violation.
    pub fn drop_output(&mut self) {
        self.acked = self.send_offset();
        self.out.clear();
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
        // (The peer's `Eof` counts as one more: it is acknowledged as well.) Not
        // for every frame: see [`ACK_EVERY`].
        let received = self.received + u64::from(self.peer_eof);
        let due = received.saturating_sub(self.ack_sent);
        if self.resumable && due > 0 && (self.ack_asked || self.peer_eof || due >= ACK_EVERY) {
            self.ack_sent = received;
            self.ack_asked = false;
            let f = Frame::Ack {
                sid,
                ch,
                offset: received,
            };
            return f.encode(out).ok().map(|n| (n, false, 0));
        }
        // Half of the replay buffer waits for the peer's `Ack`, less than it
        // acknowledges by itself ([`ACK_EVERY`]), or every run of the buffer is
        // taken (output that alternates between stdout and stderr; only an `Ack`
        // frees a run): ask for it (an empty `DataAt`), once until its answer
        // comes.
        let waiting = self.out.sent();
        let half = waiting * 2 >= self.out.capacity() && (waiting as u64) < ACK_EVERY;
        let runs = self.out.runs_full() && waiting > 0;
        let idle = self.ask_when_idle && waiting > 0 && self.out.unsent() == 0;
        if self.resumable
            && self.asked_peer.is_none()
            && (half || runs || idle)
            && self.state != ChanState::Requested
        {
            self.asked_peer = Some(self.send_offset());
            let f = Frame::DataAt {
                sid,
                ch,
                stream: crate::wire::Stream::OUT,
                offset: self.send_offset(),
                data: Bytes(&[]),
            };
            return f.encode(out).ok().map(|n| (n, false, 0));
        }
        // A `DataAt` carries its offset too.
        let data = if self.resumable {
            data.min(out.len().saturating_sub(crate::wire::DATA_AT_OVERHEAD))
        } else {
            data
        };
        if data > 0 && !self.accept_pending {
            let offset = self.send_offset();
            if let Some((stream, bytes)) = self.out.front() {
                let n = self.send.take(bytes.len().min(data));
                if n > 0 {
                    let data = Bytes(&bytes[..n]);
                    let f = if self.resumable {
                        Frame::DataAt {
                            sid,
                            ch,
                            stream,
                            offset,
                            data,
                        }
                    } else {
                        Frame::Data {
                            sid,
                            ch,
                            stream,
                            data,
                        }
                    };
                    return match f.encode(out) {
                        Ok(len) => {
                            self.out.mark_sent(n);
                            if !self.resumable {
                                self.out.release(n);
                                self.acked += n as u64;
                            }
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
        // All sent (an `Eof` may follow); all acknowledged (the channel may end).
        let sent = self.out.unsent() == 0;
        let drained = self.out.is_empty();
        if self.state == ChanState::Open {
            if sent && self.finished && !self.eof_sent {
                self.eof_sent = true;
                let f = Frame::Eof { sid, ch };
                return f.encode(out).ok().map(|n| (n, false, 0));
            }
            // Both directions done: a forward channel is over (channel 0 ends with
            // its session).
            let eof_known = self.eof_acked || !self.resumable;
            if ch != 0 && self.ends_itself && drained && self.eof_sent && eof_known && self.peer_eof
            {
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

/// Forward channels a resumable session remembers after freeing them: their end
/// may have been lost in a cut, and is said again if the client still has them.
pub(super) const TOMBSTONES: usize = 4;

/// A forward channel freed in a resumable session: how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tombstone {
    ch: u16,
    /// Bytes the agent had received of it (where the client stands, at least).
    received: u64,
    /// Refused (`ChannelReject`) with this code, rather than closed.
    rejected: Option<ErrorCode>,
    /// Closed by itself (both directions done), not aborted.
    clean: bool,
    /// The client still has it (it named it after a cut): its end goes again.
    named: bool,
}

impl Tombstone {
    /// Its end, again, for session `sid`.
    fn frame(&self, sid: u32) -> Frame<'static> {
        match self.rejected {
            Some(code) => Frame::ChannelReject {
                sid,
                ch: self.ch,
                code,
                reason: "refused (the reason was lost in a cut)",
            },
            None => Frame::ChannelClose {
                sid,
                ch: self.ch,
                reason: if self.clean {
                    ""
                } else {
                    crate::client::LOST_CHANNEL
                },
            },
        }
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
    /// Seconds the session is held while its link (or its client) is away: it is
    /// resumable.
    pub hold: Option<u32>,
    /// Nothing goes out but the `Resume` answering the relay's `Suspend`, until
    /// the peer's `Resume` comes.
    pub suspended: bool,
    /// `Resume`s to send, one per `Suspend`.
    pub answer_due: u32,
    /// The place of the next forward channel to name in the answer being sent.
    pub answer_at: usize,
    /// Since when the link or the peer is away (the hold counts from here).
    pub away_since: Option<Instant>,
    /// Its connection is gone for good: it ends, and nobody hears of the end.
    pub detached: bool,
    /// The driver has to hear [`super::Event::Terminate`] for it.
    pub tell_terminate: bool,
    /// The exit its `Close` carried, once sent.
    pub closed_with: Option<Exit>,
    /// The forward channels it freed last (a resumable session's).
    tombstones: Vec<Tombstone, TOMBSTONES>,
    /// Places in `tombstones` already named in the answer being sent.
    pub tombstones_at: usize,
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
            hold: None,
            suspended: false,
            answer_due: 0,
            answer_at: 0,
            away_since: None,
            detached: false,
            tell_terminate: false,
            closed_with: None,
            tombstones: Vec::new(),
            tombstones_at: 0,
        }
    }

    /// The relay made the session resumable, held for `hold` seconds when away: its
    /// channels (a forward session's, as they come) keep their output until it is
    /// acknowledged.
    pub fn make_resumable(&mut self, hold: u32) {
        if self.detached {
            return;
        }
        self.hold = Some(hold);
        for c in self.channels.iter_mut().flatten() {
            c.resumable = true;
        }
    }

    /// Whether it stays through a lost connection: resumable, running, and its
    /// `Accept` went out (the relay knows it runs).
    pub fn holds(&self) -> bool {
        self.hold.is_some() && self.accept_sent && self.state == SlotState::Open && !self.detached
    }

    /// The relay's `Suspend`: hold on, and say where this side stands. `false` for
    /// a session that does not hold (not resumable, ending, or not running yet):
    /// it answers as one that is gone.
    pub fn suspend(&mut self, now: Instant) -> bool {
        if !self.holds() {
            return false;
        }
        self.suspended = true;
        self.answer_due = self.answer_due.saturating_add(1);
        self.away_since.get_or_insert(now);
        // A list the peer had begun to give is stale: a whole one comes again.
        for c in self.channels.iter_mut().flatten() {
            c.listed = false;
        }
        for t in self.tombstones.iter_mut() {
            t.named = false;
        }
        true
    }

    /// It ends while suspended (the peer asked, or broke the protocol): its end
    /// goes out as soon as it is over, not after the hold.
    pub fn end_suspension(&mut self) {
        self.suspended = false;
        self.answer_due = 0;
        self.away_since = None;
    }

    /// When its hold is over, while it is away.
    pub fn hold_until(&self) -> Option<Instant> {
        let hold = crate::time::Duration::from_secs(u64::from(self.hold?));
        self.away_since.filter(|_| !self.detached).map(|t| t + hold)
    }

    /// Its connection is gone for good (it was not resumable, or its hold is
    /// over): the driver stops it, and its end goes nowhere.
    pub fn detach(&mut self) {
        self.detached = true;
        self.suspended = false;
        self.away_since = None;
        if matches!(self.state, SlotState::Requested | SlotState::Open) && self.exit.is_none() {
            self.state = SlotState::Terminating;
            self.tell_terminate = true;
        }
    }

    /// Its hold ran out while its link is up (the peer stayed away): it ends like a
    /// session the peer ended ([`super::Event::Terminate`]), its `Close` sent.
    pub fn expire(&mut self) {
        self.end_suspension();
        if matches!(self.state, SlotState::Requested | SlotState::Open) && self.exit.is_none() {
            self.state = SlotState::Terminating;
            self.tell_terminate = true;
        }
    }

    /// Whether its place can go now (detached, and its work is over).
    pub fn finished_detached(&self) -> bool {
        self.detached && (matches!(self.state, SlotState::Rejecting(..)) || self.exit.is_some())
    }

    /// The peer's `Resume` for channel `ch`: send again from where it stands. In a
    /// forward session the peer names each of its channels, then channel 0, which
    /// ends its answer: the session goes on, and a channel the peer did not name
    /// (it never had it, or freed it) is dropped, the driver told.
    pub fn resume<'a>(&mut self, ch: u16, offset: u64, limit: u64, eof: bool) -> Option<Event<'a>> {
        if !self.suspended || self.answer_due > 0 {
            return None;
        }
        let sid = self.sid;
        if self.forward && ch != 0 {
            // A channel the client still has and this side no longer has (or never
            // had) goes on no further: the client learns from the end of our list.
            if let Some(t) = self.tombstones.iter_mut().find(|t| t.ch == ch) {
                if self.channels.iter().flatten().all(|c| c.ch != ch) {
                    t.named = true;
                    return None;
                }
            }
            let c = self.chan(ch)?;
            c.listed = true;
            // One ending here owes only its `ChannelClose` (an aborted one dropped
            // its output, so the client may have more of it than we still hold).
            let live = matches!(c.state, ChanState::Requested | ChanState::Open);
            if live && c.resume_from(offset, limit, eof).is_err() {
                return self.abort(ProtocolError::ResumeOffset { sid });
            }
            return None;
        }
        self.suspended = false;
        self.away_since = None;
        if self.forward {
            // Freed channels the client no longer has are over for both.
            self.tombstones.retain(|t| t.named);
            for c in self.channels.iter_mut().flatten() {
                let listed = core::mem::take(&mut c.listed);
                if !listed && matches!(c.state, ChanState::Requested | ChanState::Open) {
                    c.state = ChanState::Terminating;
                    c.drop_output();
                    c.tell_close = true;
                }
            }
            return None;
        }
        match self.chan(ch).map(|c| c.resume_from(offset, limit, eof)) {
            Some(Ok(())) => None,
            // A channel it does not have cannot go on from anywhere.
            _ => self.abort(ProtocolError::ResumeOffset { sid }),
        }
    }

    /// Whether frames from the peer are still delivered to the driver.
    pub fn accepts_input(&self) -> bool {
        self.state == SlotState::Open
    }

    /// Channel `ch` is opened again: an earlier one of that id is forgotten.
    pub fn forget_tombstone(&mut self, ch: u16) {
        self.tombstones.retain(|t| t.ch != ch);
    }

    /// A freed forward channel is remembered (the oldest forgotten).
    fn bury(&mut self, c: &Channel<B>) {
        if self.hold.is_none() || !self.forward {
            return;
        }
        let (rejected, clean) = match &c.state {
            ChanState::Rejecting(code, _) => (Some(*code), false),
            ChanState::Closing(reason) => (None, reason.is_empty()),
            _ => (None, false),
        };
        if self.tombstones.is_full() {
            self.tombstones.remove(0);
        }
        let _ = self.tombstones.push(Tombstone {
            ch: c.ch,
            received: c.received,
            rejected,
            clean,
            named: false,
        });
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
        self.end_suspension();
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
        if self.detached {
            return None;
        }
        if self.suspended {
            if self.answer_due == 0 {
                return None;
            }
            // One `Resume` per forward channel (those it freed last too: the client
            // may not know yet), then channel 0's, which ends it.
            while let Some(place) = self.channels.get(self.answer_at) {
                self.answer_at += 1;
                if let Some(c) = place.as_ref().filter(|c| c.ch != 0) {
                    return c.resume_frame(sid).encode(out).ok().map(|len| (len, false));
                }
            }
            if let Some(t) = self.tombstones.get(self.tombstones_at) {
                self.tombstones_at += 1;
                let f = Frame::Resume {
                    sid,
                    ch: t.ch,
                    offset: t.received,
                    limit: t.received,
                    eof: true,
                    open: t.rejected.is_none(),
                };
                return f.encode(out).ok().map(|len| (len, false));
            }
            self.tombstones_at = 0;
            let f = match self.chan(0) {
                Some(c) => c.resume_frame(sid),
                None => Frame::end_of_resume(sid),
            };
            self.answer_at = 0;
            self.answer_due -= 1;
            return f.encode(out).ok().map(|len| (len, false));
        }
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
        // The end of a channel freed before a cut that the client still has.
        if let Some(t) = self.tombstones.iter_mut().find(|t| t.named) {
            t.named = false;
            return t.frame(sid).encode(out).ok().map(|len| (len, false));
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
                    if let Some(c) = self.channels[idx].take() {
                        self.bury(&c);
                    }
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
        self.closed_with = Some(exit);
        f.encode(out).ok().map(|len| (len, true))
    }
}
