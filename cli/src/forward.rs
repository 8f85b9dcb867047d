//! `sesame forward` and `sesame proxy`: one `forward` session, one channel per local
//! connection (or one channel on stdin/stdout), each with its own credit in both
//! directions, so a stalled connection never holds up the others.
//!
//! The session speaks through agent-core's client ([`Client`]): it holds each
//! connection's input until the agent's credit lets it go, checks what the agent
//! sends against our windows and grows them. This module moves bytes between the
//! local sockets and it, a task reading and one writing each connection.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use agent_core::client::{Client, ClientEvent};
use agent_core::wire::{self, Exit, Kind};
use anyhow::{bail, Context};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};

use crate::client::Relay;
use crate::resume::Link;
use crate::session::{self, InputBuf, Pooled, SID};

/// Bytes a channel can take from the agent before returning credit, at first (the
/// relay clamps larger ones).
const CH_WINDOW: u32 = 256 * 1024;
/// What a channel's window grows to as its data is consumed (`RecvWindow::growing`):
/// throughput of one connection is about window / round trip, and a bulk transfer
/// needs its bandwidth-delay product. The relay lets one channel have this much in
/// flight (`hub::MAX_GROWN_WINDOW`) and holds back what a client grants beyond it; it
/// is also the most this process holds of one connection's data when the local
/// program reads slowly.
pub const CH_MAX_WINDOW: u32 = 4 * 1024 * 1024;
/// What the windows of all of a session's channels may grow to together: what the
/// relay lets a stream have in flight (`hub::SESSION_WINDOW`, 64 channels at its
/// 256 KiB clamp). Growth stops there, but a channel opened later still gets its
/// initial window, so grown windows plus many new channels may reach about twice this
/// (a few channels at 4 MiB, the rest at 256 KiB); the relay's credit gate keeps
/// what is in flight within `hub::SESSION_WINDOW` whatever the client grants. A
/// reserve for every free place would stop a lone connection from growing at all.
const SESSION_MAX_WINDOW: u32 = 64 * CH_WINDOW;
/// Connections one session carries at once: a Linux agent's channel table holds as
/// many (`agent_linux::MAX_CHANNELS`), and the relay's bound on a stream counts them.
const CHANNELS: usize = 64;
/// Largest read from a local connection: a full `Data` frame.
const CHUNK: usize = wire::max_data_len(wire::DEFAULT_MAX_FRAME);
/// Bytes of a local connection's input the session holds for the agent's credit,
/// and, the session being resumable, until the agent acknowledges them: 32 whole
/// reads (about 1 MiB, a round trip's worth at full speed; its pages taken as it
/// fills), so that the reads of a bulk transfer wrap with the buffer, not inside
/// it, and each goes out as one full frame.
const INPUT: usize = 32 * CHUNK;
/// Bytes read from a local connection ahead of what the session holds.
const READ_AHEAD: usize = 2 * CHUNK;
/// The forward session: up to [`CHANNELS`] connections, each one's input waiting in
/// [`INPUT`] bytes.
type Session = Client<CHANNELS, InputBuf<INPUT>>;

/// `[BIND:]LPORT:HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Local address to listen on.
    pub bind: SocketAddr,
    /// Destination host as seen from the agent.
    pub host: String,
    /// Destination port.
    pub port: u16,
}

/// Split on ':' outside of brackets.
fn fields(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ':' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

impl std::str::FromStr for Spec {
    type Err = String;
    fn from_str(s: &str) -> Result<Spec, String> {
        let bad = |why: &str| format!("invalid forward '{s}': {why} (use [BIND:]LPORT:HOST:PORT)");
        let f = fields(s);
        let (bind, lport, host, port) = match f.as_slice() {
            [lport, host, port] => ("127.0.0.1", *lport, *host, *port),
            [bind, lport, host, port] => (*bind, *lport, *host, *port),
            _ => return Err(bad("wrong number of fields")),
        };
        let lport: u16 = lport.parse().map_err(|_| bad("bad local port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("bad port"))?;
        let bind = bind.trim_start_matches('[').trim_end_matches(']');
        let bind = if bind == "localhost" {
            "127.0.0.1"
        } else {
            bind
        };
        let ip: std::net::IpAddr = bind.parse().map_err(|_| bad("bad bind address"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        if host.len() > 255 {
            return Err(bad("host name longer than 255 bytes"));
        }
        Ok(Spec {
            bind: SocketAddr::new(ip, lport),
            host: host.to_string(),
            port,
        })
    }
}

enum WriteCmd {
    Data(Pooled),
    Eof,
}

/// A local connection's channel id and serial: ids are reused (after 65 535 opens,
/// or as soon as a channel is free), so events from a connection's tasks, which may
/// come after its channel closed, name the connection too.
type Conn = (u16, u64);

enum Ev {
    Accepted(usize, tokio::net::TcpStream, SocketAddr),
    Read(Conn, Pooled),
    ReadEnd(Conn),
    Written(Conn, usize),
    Failed(Conn, String),
}

/// The local side of a channel: its connection's tasks and the input read ahead.
struct Chan {
    label: String,
    /// Which connection this is (see [`Conn`]).
    serial: u64,
    /// We asked the agent to drop it; waiting for its `ChannelClose`.
    closing: bool,
    /// Input read, not yet taken by the session (at most [`READ_AHEAD`] bytes).
    pending: VecDeque<(Pooled, usize)>,
    space: Arc<Semaphore>,
    writer: Option<mpsc::UnboundedSender<WriteCmd>>,
    writer_task: JoinHandle<()>,
    reader_task: AbortHandle,
    /// The local connection's input ended.
    local_eof: bool,
}

impl Chan {
    fn abort(&mut self) {
        self.reader_task.abort();
        self.writer_task.abort();
        self.pending.clear();
    }

    /// Hand the input read so far to the session, as far as channel `ch`'s buffer
    /// there takes it; then its end, once all of it is there.
    fn feed(&mut self, session: &mut Session, ch: u16) {
        while let Some((data, off)) = self.pending.front_mut() {
            let n = match session.send_slice(ch, &data.0[*off..]) {
                Ok(0) => return,
                Ok(n) => n,
                // The channel is ending: what it did not send no longer matters.
                Err(_) => {
                    self.pending.clear();
                    return;
                }
            };
            *off += n;
            self.space.add_permits(n);
            if *off == data.0.len() {
                self.pending.pop_front();
            }
        }
        if self.local_eof {
            let _ = session.finish(ch);
        }
    }
}

fn start_chan(
    (ch, serial): Conn,
    label: String,
    mut rd: impl AsyncRead + Unpin + Send + 'static,
    mut wr: impl AsyncWrite + Unpin + Send + 'static,
    ev: &mpsc::UnboundedSender<Ev>,
) -> Chan {
    let space = Arc::new(Semaphore::new(READ_AHEAD));
    let (wtx, mut wrx) = mpsc::unbounded_channel::<WriteCmd>();
    let evw = ev.clone();
    let writer_task = tokio::spawn(async move {
        while let Some(cmd) = wrx.recv().await {
            match cmd {
                WriteCmd::Data(d) => {
                    let r = async {
                        wr.write_all(&d.0).await?;
                        wr.flush().await
                    };
                    if let Err(e) = r.await {
                        let e = format!("local write failed: {e}");
                        let _ = evw.send(Ev::Failed((ch, serial), e));
                        return;
                    }
                    let _ = evw.send(Ev::Written((ch, serial), d.0.len()));
                }
                WriteCmd::Eof => {
                    let _ = wr.shutdown().await;
                }
            }
        }
    });
    let sp = space.clone();
    let evr = ev.clone();
    let reader = tokio::spawn(async move {
        loop {
            let Ok(permit) = sp.acquire_many(CHUNK as u32).await else {
                return;
            };
            permit.forget();
            // Read straight into the buffer that travels on (no zeroing).
            let mut buf = Pooled::take();
            buf.0.clear();
            match (&mut rd).take(CHUNK as u64).read_buf(&mut buf.0).await {
                Ok(0) => {
                    sp.add_permits(CHUNK);
                    let _ = evr.send(Ev::ReadEnd((ch, serial)));
                    return;
                }
                Ok(n) => {
                    sp.add_permits(CHUNK - n);
                    let _ = evr.send(Ev::Read((ch, serial), buf));
                }
                Err(e) => {
                    let e = format!("local read failed: {e}");
                    let _ = evr.send(Ev::Failed((ch, serial), e));
                    return;
                }
            }
        }
    });
    Chan {
        label,
        serial,
        closing: false,
        pending: VecDeque::new(),
        space,
        writer: Some(wtx),
        writer_task,
        reader_task: reader.abort_handle(),
        local_eof: false,
    }
}

/// What the session serves.
pub enum Mode {
    /// Listen on each spec's bind address.
    Listen(Vec<Spec>),
    /// One channel on stdin/stdout to host:port.
    Stdio {
        /// Destination host.
        host: String,
        /// Destination port.
        port: u16,
    },
}

/// Run a forward session as `run_as` until Ctrl-C (listen mode) or until the single
/// channel ends (stdio mode). Returns the exit code.
pub async fn run(
    relay: &Relay,
    target: &str,
    run_as: Option<&str>,
    mode: Mode,
) -> anyhow::Result<i32> {
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Ev>();
    let mut specs = Vec::new();
    if let Mode::Listen(list) = &mode {
        // Bind first: a busy port is an error before anything is asked of the relay.
        for spec in list {
            let l = TcpListener::bind(spec.bind)
                .await
                .with_context(|| format!("cannot listen on {}", spec.bind))?;
            specs.push((spec.clone(), l));
        }
    }
    let mut session = Session::new(SID, CH_WINDOW)
        .growing(CH_MAX_WINDOW)
        .sharing(SESSION_MAX_WINDOW);
    let mut out = vec![0u8; wire::DEFAULT_MAX_FRAME as usize];
    let kind = (Kind::Forward, true);
    let (ws, url) = session::start(relay, (target, run_as), kind, &mut session, &mut out).await?;
    // The stream, replaced if it fails (the session is resumable when the relay and
    // the agent can: its connections go on across a cut).
    let mut link = Link::new(relay, target, url, ws);
    accepted(&mut link, &mut session, target).await?;
    let mut chans: HashMap<u16, Chan> = HashMap::new();
    // The last connection's serial (see [`Conn`]).
    let mut serial: u64 = 0;

    let mut dests = Vec::new();
    for (idx, (spec, listener)) in specs.into_iter().enumerate() {
        let local = listener.local_addr()?;
        println!(
            "forwarding {local} -> {}:{} on {target}",
            spec.host, spec.port
        );
        dests.push(spec);
        let ev = ev_tx.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((s, peer)) => {
                        let _ = s.set_nodelay(true);
                        if ev.send(Ev::Accepted(idx, s, peer)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // Out of descriptors and the like: say so, back off, go on.
                        eprintln!("error: cannot accept on {local}: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
            }
        });
    }
    let stdio = matches!(mode, Mode::Stdio { .. });
    if let Mode::Stdio { host, port } = &mode {
        if host.len() > 255 {
            bail!("cannot forward to {host}:{port}: the host name is longer than 255 bytes");
        }
        let ch = session
            .open_channel(host, *port)
            .map_err(|e| anyhow::anyhow!("cannot forward to {host}:{port}: {e}"))?;
        let (rd, wr) = (tokio::io::stdin(), tokio::io::stdout());
        serial += 1;
        let label = format!("{host}:{port}");
        chans.insert(ch, start_chan((ch, serial), label, rd, wr, &ev_tx));
    }
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    let result: anyhow::Result<i32> = async {
        loop {
            // Input goes in as room comes free, until nothing more moves.
            loop {
                for (&ch, c) in chans.iter_mut().filter(|(_, c)| !c.closing) {
                    c.feed(&mut session, ch);
                }
                let sent = link.transmit(&mut session).await?;
                if !sent || chans.values().all(|c| c.closing || c.pending.is_empty()) {
                    break;
                }
            }
            tokio::select! {
                msg = link.recv(&mut session) => {
                    let bytes = msg?;
                    let ev = session.handle_frame(&bytes).map_err(session::protocol_error)?;
                    if let Some(ev) = ev {
                        if let Some(code) = on_event(ev, &mut chans, &mut link, stdio, target).await? {
                            return Ok(code);
                        }
                    }
                    // Connections a resume found gone at the agent.
                    while let Some(ev) = session.poll_event() {
                        if let Some(code) = on_event(ev, &mut chans, &mut link, stdio, target).await? {
                            return Ok(code);
                        }
                    }
                }
                ev = ev_rx.recv() => {
                    let Some(ev) = ev else { continue };
                    local_event(ev, &mut session, &mut chans, (&dests, &mut serial), (&ev_tx, target));
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
            }
        }
        if link.is_down() {
            return Err(link.abandoned("stopped"));
        }
        link.end(&mut session, "client stopped forwarding").await;
        Ok(0)
    }
    .await;
    if result.is_err() && !session.is_over() && !link.is_down() {
        // Leaving for a reason of our own: the session ends now, rather than
        // waiting for a resume that will not come.
        link.end(&mut session, "client went away").await;
    }
    result
}

/// Wait for the agent's `Accept` (the relay may make the session resumable first).
async fn accepted(link: &mut Link<'_>, session: &mut Session, target: &str) -> anyhow::Result<()> {
    loop {
        let bytes = link.recv(session).await?;
        match session
            .handle_frame(&bytes)
            .map_err(session::protocol_error)?
        {
            Some(ClientEvent::Accepted) => {
                link.accepted(false);
                return Ok(());
            }
            Some(ClientEvent::Resumable { hold, token }) => link.resumable(hold, token),
            Some(ClientEvent::Rejected { reason, .. } | ClientEvent::Closed { reason, .. }) => {
                bail!("{target}: {reason}")
            }
            _ => {}
        }
    }
}

/// What the agent (or the relay) said: `Some(code)` when the session is over for
/// this process (stdio mode: its one connection ended).
async fn on_event(
    ev: ClientEvent<'_>,
    chans: &mut HashMap<u16, Chan>,
    link: &mut Link<'_>,
    stdio: bool,
    target: &str,
) -> anyhow::Result<Option<i32>> {
    match ev {
        ClientEvent::Data { ch, data, .. } => {
            if let Some(w) = chans.get(&ch).and_then(|c| c.writer.as_ref()) {
                // A copy: a slice of the message would keep the WebSocket reader
                // from reusing its buffer.
                let mut copy = Pooled::take();
                copy.0.clear();
                copy.0.extend_from_slice(data);
                let _ = w.send(WriteCmd::Data(copy));
            }
        }
        ClientEvent::Eof { ch } => {
            if let Some(w) = chans.get(&ch).and_then(|c| c.writer.as_ref()) {
                let _ = w.send(WriteCmd::Eof);
            }
        }
        ClientEvent::ChannelRejected { ch, code, reason } => {
            if let Some(mut c) = chans.remove(&ch) {
                c.abort();
                let why = if reason.is_empty() {
                    session::describe(code)
                } else {
                    reason.to_string()
                };
                if stdio {
                    bail!("{}: {why}", c.label);
                }
                eprintln!("error: {} via {target}: {why}", c.label);
            }
        }
        ClientEvent::ChannelClosed { ch, reason } => {
            if let Some(mut c) = chans.remove(&ch) {
                c.reader_task.abort();
                // Let the writer deliver what it holds, then close the socket.
                c.writer = None;
                if !reason.is_empty() && !c.closing {
                    eprintln!("error: {} via {target}: {reason}", c.label);
                }
                if stdio {
                    let _ = c.writer_task.await;
                    return Ok(Some(if reason.is_empty() { 0 } else { 255 }));
                }
            }
        }
        ClientEvent::Closed { exit, reason } => {
            link.close().await;
            let why = match exit {
                Exit::Aborted(code) if reason.is_empty() => session::describe(code),
                _ => reason.to_string(),
            };
            bail!("session ended: {why}");
        }
        ClientEvent::Rejected { reason, .. } => bail!("{target}: {reason}"),
        ClientEvent::Resumable { hold, token } => link.resumable(hold, token),
        ClientEvent::Suspended => link.suspended(),
        ClientEvent::Resumed => link.resumed(),
        ClientEvent::Notice { message } => {
            link.output(b"\n");
            eprintln!("sesame: {}", crate::terminal::printable(message));
        }
        ClientEvent::Accepted | ClientEvent::ChannelAccepted { .. } => {}
    }
    Ok(None)
}

/// A local connection came, sent, ended or failed.
fn local_event(
    ev: Ev,
    session: &mut Session,
    chans: &mut HashMap<u16, Chan>,
    (dests, serial): (&[Spec], &mut u64),
    (ev_tx, target): (&mpsc::UnboundedSender<Ev>, &str),
) {
    match ev {
        Ev::Accepted(idx, stream, peer) => {
            let dest = &dests[idx];
            let label = format!("{peer} -> {}:{}", dest.host, dest.port);
            match session.open_channel(&dest.host, dest.port) {
                Ok(ch) => {
                    let (rd, wr) = stream.into_split();
                    *serial += 1;
                    chans.insert(ch, start_chan((ch, *serial), label, rd, wr, ev_tx));
                }
                // Every place is taken: the connection is closed at once.
                Err(_) => eprintln!(
                    "error: {label} via {target}: channel limit reached ({CHANNELS} connections in this session)"
                ),
            }
        }
        Ev::Read((ch, n), data) => {
            if let Some(c) = chans.get_mut(&ch).filter(|c| c.serial == n && !c.closing) {
                c.pending.push_back((data, 0));
            }
        }
        Ev::ReadEnd((ch, n)) => {
            if let Some(c) = chans.get_mut(&ch).filter(|c| c.serial == n) {
                c.local_eof = true;
            }
        }
        // Credit goes back (the window grows, within the session's total); not for
        // a connection whose channel closed (its id may be another's).
        Ev::Written((ch, n), bytes) => {
            if chans.get(&ch).is_some_and(|c| c.serial == n) {
                session.consumed(ch, bytes);
            }
        }
        Ev::Failed((ch, n), error) => {
            if let Some(c) = chans.get_mut(&ch).filter(|c| c.serial == n && !c.closing) {
                c.closing = true;
                c.abort();
                let _ = session.close_channel(ch, &error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let s: Spec = "8080:127.0.0.1:80".parse().unwrap();
        assert_eq!(s.bind, "127.0.0.1:8080".parse().unwrap());
        assert_eq!((s.host.as_str(), s.port), ("127.0.0.1", 80));
        let s: Spec = "0.0.0.0:0:db.internal:5432".parse().unwrap();
        assert_eq!(s.bind, "0.0.0.0:0".parse().unwrap());
        assert_eq!(s.host, "db.internal");
        let s: Spec = "[::1]:9000:[fd00::5]:22".parse().unwrap();
        assert_eq!(s.bind, "[::1]:9000".parse().unwrap());
        assert_eq!(s.host, "fd00::5");
        assert!("8080:host".parse::<Spec>().is_err());
        assert!("x:host:80".parse::<Spec>().is_err());
        assert!("80:host:0".parse::<Spec>().is_err());
        assert!(format!("80:{}:80", "h".repeat(256))
            .parse::<Spec>()
            .is_err());
    }
}
