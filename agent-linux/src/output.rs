//! Where a channel's output waits: read from its process or connection into a
//! queue here ([`Pending`], bounded by the reader's queue space), then handed to
//! its buffer in the engine ([`HeapBuf`]) as that has room. The engine sends it.

use std::collections::VecDeque;
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
pub struct HeapBuf(Box<[u8]>);

/// Output a channel's buffer in the engine holds (more waits here, bounded by the
/// reader's queue space).
pub const CHANNEL_BUFFER: usize = 64 * 1024;
/// The same for a shell or exec session's channel, and a resumable forward
/// session's channels: also their replay buffer (what may be unacknowledged: one
/// round trip moves at most this much). Its pages are taken as it fills (a zeroed
/// allocation).
pub const SESSION_BUFFER: usize = 1024 * 1024;

impl Buffer for HeapBuf {
    fn new() -> Self {
        HeapBuf(vec![0u8; CHANNEL_BUFFER].into_boxed_slice())
    }
    fn for_session() -> Self {
        HeapBuf(vec![0u8; SESSION_BUFFER].into_boxed_slice())
    }
}

impl AsRef<[u8]> for HeapBuf {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for HeapBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
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
