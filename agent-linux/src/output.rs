//! Where a channel's output waits: read from its process or connection into a
//! queue here ([`Pending`], bounded by the reader's queue space), then handed to
//! its buffer in the engine ([`HeapBuf`]) as that has room. The engine sends it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use agent_core::session::{Agent, Buffer, ChannelHandle};
use agent_core::wire::Stream;
use tokio::sync::Semaphore;

use crate::process::CHUNK;
use crate::{MAX_CHANNELS, MAX_SESSIONS};

/// The engine as this agent sizes it.
pub type Engine = Agent<MAX_SESSIONS, MAX_CHANNELS, HeapBuf>;

/// A channel's output buffer in the engine: on the heap, made when the channel
/// opens and freed when it closes.
pub struct HeapBuf {
    bytes: Box<[u8]>,
    /// Bytes of it counted in [`LARGE_HELD`] (a session's or a forward's buffer).
    counted: usize,
}

/// Output a channel's buffer in the engine holds (more waits here, bounded by the
/// reader's queue space).
pub const CHANNEL_BUFFER: usize = 64 * 1024;
/// The same for a shell or exec session's channel: also its replay buffer when
/// the session is resumable (what may be unacknowledged: one round trip moves at
/// most this much). Its pages are taken as it fills (a zeroed allocation).
pub const SESSION_BUFFER: usize = 1024 * 1024;
/// The same for a resumable forward session's connection: a download through a
/// forward runs about twice as fast as an exec's output here, and with 1 MiB it
/// reached a median 0.94 of its speed not resumable, 0.99 with 2 MiB
/// (`docs/benchmarks.md`).
pub const FORWARD_BUFFER: usize = 2 * 1024 * 1024;
/// What the session and forward buffers together may hold at most. A stalled or
/// held channel fills its buffer, and 20 sessions of 64 resumable forwarded
/// connections would otherwise hold 2.5 GiB; past this a channel gets a
/// [`CHANNEL_BUFFER`] (a resumable one then moves less per round trip, and runs
/// slower).
pub const LARGE_BUFFERS_TOTAL: usize = 64 * 1024 * 1024;

/// Bytes of session and forward buffers held now.
static LARGE_HELD: AtomicUsize = AtomicUsize::new(0);

/// Take `size` bytes of `total` in `held`, if they are free.
fn take_large(held: &AtomicUsize, size: usize, total: usize) -> bool {
    held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        (n + size <= total).then_some(n + size)
    })
    .is_ok()
}

impl HeapBuf {
    /// `size` bytes if the total allows, else a channel's.
    fn large(size: usize) -> Self {
        if !take_large(&LARGE_HELD, size, LARGE_BUFFERS_TOTAL) {
            return Self::new();
        }
        HeapBuf {
            bytes: vec![0u8; size].into_boxed_slice(),
            counted: size,
        }
    }
}

impl Buffer for HeapBuf {
    fn new() -> Self {
        HeapBuf {
            bytes: vec![0u8; CHANNEL_BUFFER].into_boxed_slice(),
            counted: 0,
        }
    }
    fn for_session() -> Self {
        Self::large(SESSION_BUFFER)
    }
    fn for_forward() -> Self {
        Self::large(FORWARD_BUFFER)
    }
}

impl Drop for HeapBuf {
    fn drop(&mut self) {
        LARGE_HELD.fetch_sub(self.counted, Ordering::AcqRel);
    }
}

impl AsRef<[u8]> for HeapBuf {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsMut<[u8]> for HeapBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

/// A channel's output read but not yet taken by the engine (its buffer was full).
pub struct Pending {
    queue: VecDeque<(Stream, Vec<u8>, usize)>,
    /// Queue space shared with the task that reads the output.
    space: Arc<Semaphore>,
    /// The source ended: `finish` once the queue is empty.
    ended: bool,
}

impl Pending {
    /// An empty queue whose bytes count against `space`.
    pub fn new(space: Arc<Semaphore>) -> Self {
        Pending {
            queue: VecDeque::new(),
            space,
            ended: false,
        }
    }

    /// Output read (its queue space already reserved). Small reads merge into the
    /// previous chunk of the same stream, so trickling output does not turn into a
    /// flood of tiny frames.
    pub fn push(&mut self, stream: Stream, data: Vec<u8>) {
        match self.queue.back_mut() {
            Some((st, d, off)) if *st == stream && *off == 0 && d.len() + data.len() <= CHUNK => {
                d.extend_from_slice(&data)
            }
            _ => self.queue.push_back((stream, data, 0)),
        }
    }

    /// The source ended: the engine hears of it after the rest.
    pub fn end(&mut self) {
        self.ended = true;
    }

    /// Whether everything read is in the engine.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Nobody wants the output: its queue space goes back to the reader.
    pub fn drop_queue(&mut self) {
        let queued: usize = self.queue.drain(..).map(|(_, d, off)| d.len() - off).sum();
        self.space.add_permits(queued);
    }

    /// Hand what waits to the engine as the channel's buffer has room, then its end.
    pub fn pump(&mut self, engine: &mut Engine, channel: ChannelHandle) {
        while let Some((stream, data, off)) = self.queue.front_mut() {
            match engine.send_slice(channel, *stream, &data[*off..]) {
                Ok(0) => break,
                Ok(n) => {
                    *off += n;
                    self.space.add_permits(n);
                    if *off == data.len() {
                        self.queue.pop_front();
                    }
                }
                Err(_) => {
                    // The channel is gone: nobody wants its output.
                    self.drop_queue();
                    self.ended = false;
                }
            }
        }
        if self.queue.is_empty() && self.ended {
            self.ended = false;
            let _ = engine.finish(channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_buffers_stay_within_their_total_and_free_their_share() {
        let held = AtomicUsize::new(0);
        let (size, total) = (SESSION_BUFFER, 3 * SESSION_BUFFER);
        assert!((0..3).all(|_| take_large(&held, size, total)));
        assert!(!take_large(&held, size, total), "past the total");
        held.fetch_sub(size, Ordering::AcqRel);
        assert!(take_large(&held, size, total), "a freed one is taken again");
        // A session's or a forward's buffer is the large one while the total allows.
        for (b, size) in [
            (HeapBuf::for_session(), SESSION_BUFFER),
            (HeapBuf::for_forward(), FORWARD_BUFFER),
        ] {
            if b.counted > 0 {
                assert_eq!((b.bytes.len(), b.counted), (size, size));
            } else {
                assert_eq!(b.bytes.len(), CHANNEL_BUFFER);
            }
        }
    }
}
