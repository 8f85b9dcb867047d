//! A channel's output waiting to be sent: a byte ring over storage the caller
//! chooses ([`Buffer`]), with the stream (stdout or stderr) of each run of bytes.

use heapless::Deque;

use crate::wire::Stream;

/// Storage for one channel's output. `[u8; N]` is one (no allocation; `N` is the
/// channel's capacity); a driver with a heap may bring its own, allocated when a
/// channel opens and freed when it closes.
pub trait Buffer: AsRef<[u8]> + AsMut<[u8]> {
    /// Fresh storage for a channel that opens.
    fn new() -> Self;
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
    runs: Deque<(Stream, usize), RUNS>,
}

impl<B: Buffer> Ring<B> {
    pub fn new() -> Self {
        Ring {
            buf: B::new(),
            head: 0,
            len: 0,
            runs: Deque::new(),
        }
    }

    fn capacity(&self) -> usize {
        self.buf.as_ref().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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

    /// The oldest run's stream and its bytes that are contiguous in storage (the
    /// rest follows on the next call once these are consumed).
    pub fn front(&self) -> Option<(Stream, &[u8])> {
        let &(stream, run) = self.runs.front()?;
        let cap = self.capacity();
        let n = run.min(cap - self.head);
        Some((stream, &self.buf.as_ref()[self.head..self.head + n]))
    }

    /// `n` bytes of the oldest run were sent.
    pub fn consume(&mut self, n: usize) {
        let Some((_, run)) = self.runs.front_mut() else {
            return;
        };
        let n = n.min(*run);
        *run -= n;
        if *run == 0 {
            self.runs.pop_front();
        }
        self.len -= n;
        self.head = if self.len == 0 {
            0
        } else {
            (self.head + n) % self.capacity()
        };
    }

    /// Forget what waits (the channel ended abruptly).
    pub fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
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
            r.consume(n);
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
        r.consume(5);
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
}
