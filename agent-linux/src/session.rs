//! A running session's I/O: its process or its forward connections, and each
//! channel's output waiting for room in the engine ([`Pending`]). The driver routes
//! the engine's events and the tasks' messages here.

use std::collections::HashMap;
use std::sync::Arc;

use agent_core::session::{ChannelHandle, SessionHandle};
use agent_core::wire::{ErrorCode, Exit, Stream};
use tokio::sync::mpsc;
use tracing::debug;

use crate::forward::{self, Chan, TcpChannel};
use crate::output::{Engine, Pending};
use crate::policy::DestPolicy;
use crate::process::{Input, Msg, Process};

/// What a session runs.
pub enum Work {
    /// A shell or a command.
    Process(Process),
    /// A forward session's connections.
    Forward(HashMap<ChannelHandle, Chan>),
}

/// A running session: its work, and output waiting for room in the engine.
pub struct Session {
    work: Work,
    pending: HashMap<ChannelHandle, Pending>,
    /// The work is over: the engine hears of it once every pending output is in.
    exit: Option<(Exit, &'static str)>,
    /// The driver stopped the work (the peer ended the session).
    stopped: bool,
    /// The process was reaped: its process group id may name another now.
    reaped: bool,
}

impl Session {
    /// Session `h` runs `work`.
    pub fn new(h: SessionHandle, work: Work) -> Session {
        let mut pending = HashMap::new();
        if let Work::Process(p) = &work {
            pending.insert(h.main(), Pending::new(p.space.clone()));
        }
        Session {
            work,
            pending,
            exit: None,
            stopped: false,
            reaped: false,
        }
    }

    /// Input for a channel: the process's, or a connected channel's.
    pub fn input(&self, channel: ChannelHandle, input: Input) {
        match &self.work {
            Work::Process(p) if channel.ch() == 0 => {
                let _ = p.input.send(input);
            }
            Work::Forward(chans) => {
                if let Some(Chan::Connected(c)) = chans.get(&channel) {
                    let _ = c.input.send(input);
                }
            }
            _ => {}
        }
    }

    /// A signal for the process group, while it is ours.
    pub fn signal(&self, signal: u8) {
        if let (Work::Process(p), false) = (&self.work, self.reaped) {
            p.signal(signal as i32);
        }
    }

    /// Stop the work: output is no longer wanted; the engine closes the session
    /// once the process is gone (a forward session has none to wait for).
    pub fn stop(&mut self) {
        self.stopped = true;
        for p in self.pending.values_mut() {
            p.drop_queue();
        }
        self.pending.clear();
        match &mut self.work {
            Work::Process(_) if self.reaped => {}
            Work::Process(p) => p.terminate(),
            Work::Forward(chans) => {
                for (_, c) in chans.drain() {
                    c.abort();
                }
                self.exit = Some((Exit::Aborted(ErrorCode::TERMINATED), "terminated"));
            }
        }
    }

    /// A forward channel asks for `host:port`: dial it in the background.
    pub fn dial(
        &mut self,
        channel: ChannelHandle,
        host: &str,
        port: u16,
        policy: Arc<DestPolicy>,
        tx: mpsc::UnboundedSender<Msg>,
    ) {
        if let Work::Forward(chans) = &mut self.work {
            let (sid, ch) = (channel.session().sid(), channel.ch());
            debug!(sid, ch, "connecting to {host}:{port}");
            let h = forward::dial(channel, host.into(), port, policy, tx);
            chans.insert(channel, Chan::Dialing(h));
        }
    }

    /// A channel's connection is dropped (the peer aborted it, or it failed).
    pub fn drop_channel(&mut self, channel: ChannelHandle) {
        if let Work::Forward(chans) = &mut self.work {
            if let Some(c) = chans.remove(&channel) {
                c.abort();
            }
        }
        if let Some(mut p) = self.pending.remove(&channel) {
            p.drop_queue();
        }
    }

    /// A dial finished: the channel is accepted with its connection, or refused.
    pub fn dialed(
        &mut self,
        engine: &mut Engine,
        channel: ChannelHandle,
        result: Result<TcpChannel, (ErrorCode, String)>,
    ) {
        let dialing = match &mut self.work {
            Work::Forward(chans) if matches!(chans.get(&channel), Some(Chan::Dialing(_))) => chans,
            _ => {
                if let Ok(c) = result {
                    c.abort(); // the channel went away meanwhile
                }
                return;
            }
        };
        match result {
            Ok(c) => {
                self.pending.insert(channel, Pending::new(c.space.clone()));
                dialing.insert(channel, Chan::Connected(c));
                let _ = engine.accept_channel(channel);
            }
            Err((code, reason)) => {
                debug!(sid = channel.session().sid(), ch = channel.ch(), "{reason}");
                dialing.remove(&channel);
                let _ = engine.reject_channel(channel, code, &reason);
            }
        }
    }

    /// Output read from a channel's process or connection. Gone or stopped: the
    /// output is not wanted (its queue space was closed, or went with the channel).
    pub fn output(&mut self, channel: ChannelHandle, stream: Stream, data: Vec<u8>) {
        if let Some(p) = self.pending.get_mut(&channel) {
            p.push(stream, data);
        }
    }

    /// A channel's output ended.
    pub fn output_end(&mut self, channel: ChannelHandle) {
        if let Some(p) = self.pending.get_mut(&channel) {
            p.end();
        }
    }

    /// The process was reaped, all its output read.
    pub fn exited(&mut self, exit: Exit) {
        let why = if self.stopped { "terminated" } else { "" };
        self.exit = Some((exit, why));
        self.reaped = true;
    }

    /// Hand pending output to the engine as its buffers have room; tell it of ends
    /// once everything before them is in.
    pub fn pump(&mut self, engine: &mut Engine, h: SessionHandle) {
        for (&channel, p) in self.pending.iter_mut() {
            p.pump(engine, channel);
        }
        if self.pending.values().all(Pending::is_empty) {
            if let Some((exit, why)) = self.exit.take() {
                if engine.exited(h, exit, why).is_ok() {
                    debug!(sid = h.sid(), ?exit, "session ended");
                }
                self.pending.clear();
            }
        }
    }

    /// Forget the channels the engine is done with.
    pub fn forget_closed(&mut self, engine: &Engine) {
        if let Work::Forward(chans) = &mut self.work {
            chans.retain(|&c, _| engine.is_channel_live(c));
            self.pending.retain(|&c, _| engine.is_channel_live(c));
        }
    }
}
