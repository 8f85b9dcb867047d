//! A channel's output waiting to be sent: a byte ring over storage the caller
//! chooses ([`Buffer`]), with the stream (stdout or stderr) of each run of bytes.
//!
//! The ring holds, from its head, the bytes sent but not yet acknowledged (a
//! resumable channel keeps them to send again after a resume; any other channel
//! releases them as they go), then the bytes not sent yet.

use heapless::Deque;

use crate::wire::Stream;

/// Storage for one channel's output. `[u8; N]` is one (no allocation; `N` is the
/// channel's capacity); a driver with a heap may bring its own, allocated when a
/// channel opens and freed when it closes.
pub trait Buffer: AsRef<[u8]> + AsMut<[u8]> {
    /// Fresh storage for a channel that opens.
    fn new() -> Self;
    /// Fresh storage for a shell or exec session's channel (channel 0). It is also
    /// the channel's replay buffer when the session is resumable: what may be in
    /// flight unacknowledged, so one round trip moves at most this much. A driver
    /// that can afford it gives more here than to a (not resumable) forward
    /// session's many channels.
    fn for_session() -> Self
    where
        Self: Sized,
    {
        Self::new()
    }
    /// Fresh storage for a resumable forward session's channel: its replay buffer
    /// too, as [`Buffer::for_session`]'s. A forwarded connection may move faster
    /// than a program's output, and so want more in flight.
    fn for_forward() -> Self
    where
        Self: Sized,
    {
        Self::for_session()
    }
}

/// Which of a [`Buffer`]'s kinds a channel takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Storage {
    /// [`Buffer::new`].
    Channel,
    /// [`Buffer::for_session`].
    Session,
    /// [`Buffer::for_forward`].
    Forward,
}

impl Storage {
    /// A forward channel's: the replay buffer's if `resumable`.
    pub fn forward(resumable: bool) -> Storage {
        if resumable {
            Storage::Forward
        } else {
            Storage::Channel
        }
    }

    pub fn make<B: Buffer>(self) -> B {
        match self {
            Storage::Channel => B::new(),
            Storage::Session => B::for_session(),
            Storage::Forward => B::for_forward(),
        }
    }
}

impl<const N: usize> Buffer for [u8; N] {
    fn new() -> Self {
        [0; N]
    }
}

/// Runs of one stream the ring tells apart: output alternating between stdout and
/// stderr faster than it is sent waits when they are all in use.
const RUNS: usize = 8;

/// Bytes in arrival order, each run tagged with its stream.
#[derive(Debug)]
pub(crate) struct Ring<B> {
    buf: B,
    head: usize,
    len: usize,
    /// Of the `len` bytes from `head`, how many went out (waiting for their
    /// acknowledgement).
    sent: usize,
    runs: Deque<(Stream, usize), RUNS>,
}

impl<B: Buffer> Ring<B> {
    #[cfg(test)]
    pub fn new() -> Self {
        Ring::with(B::new())
    }

    /// A ring over `buf`.
    pub fn with(buf: B) -> Self {
        Ring {
            buf,
            head: 0,
            len: 0,
            sent: 0,
            runs: Deque::new(),
        }
    }

    /// Bytes it holds at most.
    pub fn capacity(&self) -> usize {
        self.buf.as_ref().len()
    }

    /// Nothing waits, sent or not.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes not sent yet.
    pub fn unsent(&self) -> usize {
        self.len - self.sent
    }

    /// Bytes sent and not yet released.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// Every run is taken: output of the other stream waits, however much room
    /// there is, until the oldest run is released.
    pub fn runs_full(&self) -> bool {
        self.runs.is_full()
    }

    /// Room for more.
    pub fn free(&self) -> usize {
        self.capacity() - self.len
    }

    /// Append as much of `data` as fits; returns how much.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> usize {
        let n = data.len().min(self.free());
        if n == 0 {
            return 0;
        }
        match self.runs.back_mut() {
            Some((s, len)) if *s == stream => *len += n,
            _ => {
                if self.runs.push_back((stream, n)).is_err() {
                    return 0;
                }
            }
        }
        let cap = self.capacity();
        let tail = (self.head + self.len) % cap;
        let first = n.min(cap - tail);
        let buf = self.buf.as_mut();
        buf[tail..tail + first].copy_from_slice(&data[..first]);
        buf[..n - first].copy_from_slice(&data[first..n]);
        self.len += n;
        n
    }

    /// The stream of the oldest bytes not sent yet, and as many of them as are
    /// contiguous in storage and of that one stream (the rest follows on the next
    /// call once these are marked sent).
    pub fn front(&self) -> Option<(Stream, &[u8])> {
        let mut skip = self.sent;
        let (stream, left) = self.runs.iter().find_map(|&(s, run)| {
            if skip < run {
                Some((s, run - skip))
            } else {
                skip -= run;
                None
            }
        })?;
        let cap = self.capacity();
        let start = (self.head + self.sent) % cap;
        let n = left.min(cap - start);
        Some((stream, &self.buf.as_ref()[start..start + n]))
    }

    /// Everything it holds, sent or not, oldest first (in two parts: the ring may
    /// wrap).
    pub fn held(&self) -> (&[u8], &[u8]) {
        let cap = self.capacity();
        let buf = self.buf.as_ref();
        let first = self.len.min(cap - self.head);
        (&buf[self.head..self.head + first], &buf[..self.len - first])
    }

    /// `n` bytes from [`Ring::front`] went out; they stay until released.
    pub fn mark_sent(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.len);
    }

    /// The oldest `n` sent bytes are done with (acknowledged, or not kept): their
    /// room is free again. At most what was sent is released.
    pub fn release(&mut self, n: usize) {
        let mut n = n.min(self.sent);
        self.sent -= n;
        self.len -= n;
        self.head = if self.len == 0 {
            0
        } else {
            (self.head + n) % self.capacity()
        };
        while n > 0 {
            let Some((_, run)) = self.runs.front_mut() else {
                break;
            };
            let k = n.min(*run);
            *run -= k;
            n -= k;
            if *run == 0 {
                self.runs.pop_front();
            }
        }
    }

    /// Everything sent and not released is to go again (a resume).
    pub fn rewind(&mut self) {
        self.sent = 0;
    }

    /// Forget what waits (the channel ended abruptly).
    pub fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
        self.sent = 0;
        self.runs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::vec::Vec;

    fn drain(r: &mut Ring<[u8; 8]>, max: usize) -> Vec<(Stream, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((s, b)) = r.front() {
            let n = b.len().min(max);
            out.push((s, b[..n].to_vec()));
            r.mark_sent(n);
            r.release(n);
        }
        out
    }

    #[test]
    fn bytes_come_out_in_order_with_their_stream_across_the_wrap() {
        let mut r: Ring<[u8; 8]> = Ring::new();
        assert_eq!(r.write(Stream::OUT, b"abcdef"), 6);
        assert_eq!(drain(&mut r, 4)[0], (Stream::OUT, b"abcd".to_vec()));
        let mut r: Ring<[u8; 8]> = Ring::new();
        r.write(Stream::OUT, b"abcdef");
        let (_, b) = r.front().unwrap();
        assert_eq!(b, b"abcdef");
        r.mark_sent(5);
        r.release(5);
        // Wraps: 3 free at the end, then the start.
        assert_eq!(r.write(Stream::ERR, b"0123456"), 7);
        assert_eq!(r.free(), 0);
        assert_eq!(r.write(Stream::ERR, b"x"), 0);
        let got = drain(&mut r, 100);
        assert_eq!(
            got,
            [
                (Stream::OUT, b"f".to_vec()),
                (Stream::ERR, b"01".to_vec()),
                (Stream::ERR, b"23456".to_vec()),
            ]
        );
        assert!(r.is_empty());
    }

    #[test]
    fn too_many_alternating_runs_wait_and_a_clear_forgets_all() {
        let mut r: Ring<[u8; 64]> = Ring::new();
        for i in 0..RUNS {
            let s = if i % 2 == 0 { Stream::OUT } else { Stream::ERR };
            assert_eq!(r.write(s, b"x"), 1);
        }
        let s = if RUNS.is_multiple_of(2) {
            Stream::OUT
        } else {
            Stream::ERR
        };
        assert_eq!(r.write(s, b"y"), 0, "no run left");
        // The same stream as the last run still fits.
        let last = if RUNS.is_multiple_of(2) {
            Stream::ERR
        } else {
            Stream::OUT
        };
        assert_eq!(r.write(last, b"z"), 1);
        r.clear();
        assert!(r.is_empty() && r.front().is_none() && r.free() == 64);
    }

    #[test]
    fn sent_bytes_stay_until_released_and_go_again_after_a_rewind() {
        let mut r: Ring<[u8; 8]> = Ring::new();
        r.write(Stream::OUT, b"abc");
        r.write(Stream::ERR, b"de");
        r.mark_sent(3);
        assert_eq!(r.front(), Some((Stream::ERR, &b"de"[..])));
        r.mark_sent(2);
        assert_eq!((r.front(), r.sent(), r.unsent(), r.free()), (None, 5, 0, 3));
        // The peer had only "ab": "c" then "de" go again, with their streams.
        r.release(2);
        r.rewind();
        assert_eq!(r.front(), Some((Stream::OUT, &b"c"[..])));
        r.mark_sent(1);
        assert_eq!(r.front(), Some((Stream::ERR, &b"de"[..])));
        // A release across runs, then wrapping writes.
        r.mark_sent(2);
        r.release(3);
        assert!(r.is_empty());
        assert_eq!(r.write(Stream::OUT, b"12345678"), 8);
        r.mark_sent(6);
        r.release(4);
        r.rewind();
        assert_eq!(drain(&mut r, 100), [(Stream::OUT, b"5678".to_vec())]);
    }
}
