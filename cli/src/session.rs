//! One interactive or exec session: create it through the API, open its stream,
//! and pump stdin/stdout/stderr with credit-based flow control until it closes.

use std::io::{IsTerminal, Read};
use std::sync::Mutex;

use agent_core::client::{Client, ClientEvent};
use agent_core::session::Buffer;
use agent_core::wire::{self, Bytes, ErrorCode, Exit, Frame, Kind, Stream};
use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::client::Relay;
use crate::resume::Link;
use crate::terminal;

/// Bytes the CLI can take from the agent before returning credit.
pub const WINDOW: u32 = 256 * 1024;
/// Session id the CLI uses on its stream (the relay maps it).
pub const SID: u32 = 1;

/// What to run.
pub enum Request {
    /// The login shell, on a terminal if `pty`, else on pipes.
    Shell {
        /// Ask the agent for a terminal.
        pty: bool,
    },
    /// A command.
    Exec(Vec<String>),
}

/// Answer of `POST /v1/sessions`.
#[derive(Deserialize)]
struct Created {
    stream_url: String,
    token: String,
}

/// A frame as a WebSocket message.
pub fn encode(f: &Frame) -> Message {
    let mut buf = vec![0u8; f.buffer_len()];
    let n = f.encode(&mut buf).unwrap_or(0);
    buf.truncate(n);
    Message::Binary(buf.into())
}

/// Exit code for the local process from the remote outcome.
pub fn exit_code(exit: Exit) -> i32 {
    match exit {
        Exit::Code(c) => c & 0xff,
        Exit::Signal(s) => 128 + s as i32,
        Exit::Aborted(_) => 255,
    }
}

/// Standard input, read on a thread of its own, in chunks.
pub fn stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    // A plain thread: blocking stdin reads never hold up the runtime, and the
    // channel bound is the only buffering.
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// The API's name of a session kind.
pub fn kind_name(kind: &Kind<'_>) -> &'static str {
    match kind {
        Kind::Shell { .. } => "shell",
        Kind::Exec { .. } => "exec",
        Kind::Forward => "forward",
        Kind::SshKey { .. } => "ssh-key",
    }
}

/// Body of `POST /v1/sessions` for the `Open` of `kind`, derived from the frame
/// itself: the relay authorises the command, key user and ttl given here and checks
/// that the frame carries the same.
pub fn create_body(target: &str, run_as: Option<&str>, kind: &Kind<'_>) -> serde_json::Value {
    let mut body = serde_json::json!({ "target": target, "kind": kind_name(kind) });
    if let Some(account) = run_as {
        body["run_as"] = account.into();
    }
    match kind {
        Kind::Exec { argv } => {
            let command: Vec<String> = wire::argv_iter(argv.0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            body["command"] = command.into();
        }
        Kind::SshKey { user, ttl, .. } => {
            body["ssh_user"] = (*user).into();
            body["ttl"] = (*ttl).into();
        }
        Kind::Shell { .. } | Kind::Forward => {}
    }
    body
}

/// Create a session of `kind` on `target` as `run_as` (`None`: the agent's default
/// account) and open its stream, resumable if `resume` and the relay can; returns
/// the stream and its URL (which resumes the session too).
async fn create(
    relay: &Relay,
    target: &str,
    run_as: Option<&str>,
    (kind, resume): (&Kind<'_>, bool),
) -> anyhow::Result<(crate::client::Stream, String)> {
    let body = create_body(target, run_as, kind);
    let created: Created = relay.call("POST", "/v1/sessions", Some(body)).await?;
    let (url, token) = (&created.stream_url, &created.token);
    let ws = if resume {
        relay.open_resumable_stream(url, token).await?
    } else {
        relay.open_stream(url, token).await?
    };
    Ok((ws, created.stream_url))
}

/// Create a session of `kind` (asking for it to be resumable if `resume`) and send
/// its `Open` as `session`'s; returns the stream and its URL.
pub(crate) async fn start<const C: usize, B: Buffer>(
    relay: &Relay,
    (target, run_as): (&str, Option<&str>),
    (kind, resume): (Kind<'_>, bool),
    session: &mut Client<C, B>,
    out: &mut [u8],
) -> anyhow::Result<(crate::client::Stream, String)> {
    let (mut ws, url) = create(relay, target, run_as, (&kind, resume)).await?;
    // The relay puts in the account it authorised.
    let n = session
        .open(kind, "", out)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ws.send(Message::Binary(out[..n].to_vec().into()))
        .await
        .context("cannot send the session request")?;
    Ok((ws, url))
}

/// Create a session of `kind` on `target` as `run_as` (`None`: the agent's default
/// account), send its `Open` as `session`'s and wait for the agent's `Accept`;
/// returns the stream of the running session.
pub async fn open<const C: usize, B: Buffer>(
    relay: &Relay,
    (target, run_as): (&str, Option<&str>),
    kind: Kind<'_>,
    session: &mut Client<C, B>,
) -> anyhow::Result<crate::client::Stream> {
    let mut out = vec![0u8; wire::DEFAULT_MAX_FRAME as usize];
    let (mut ws, _) = start(relay, (target, run_as), (kind, false), session, &mut out).await?;
    loop {
        let bytes = match ws.next().await {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Close(_))) | None => bail!("the relay closed the session stream"),
            Some(Err(e)) => bail!("session stream failed: {e}"),
            Some(Ok(_)) => continue,
        };
        match session.handle_frame(&bytes).map_err(protocol_error)? {
            Some(ClientEvent::Accepted) => return Ok(ws),
            Some(ClientEvent::Rejected { reason, .. } | ClientEvent::Closed { reason, .. }) => {
                bail!("{target}: {reason}")
            }
            _ => continue,
        }
    }
}

/// What the agent (or the relay) did wrong on a session stream, in the user's words.
pub fn protocol_error(e: agent_core::ProtocolError) -> anyhow::Error {
    use agent_core::ProtocolError;
    match e {
        ProtocolError::Decode(e) => anyhow::anyhow!("malformed frame from the relay: {e}"),
        ProtocolError::FlowControl { .. } => {
            anyhow::anyhow!("the agent sent more than its credit")
        }
        e => anyhow::anyhow!("the agent broke the protocol: {e}"),
    }
}

/// The client side of a shell or exec session, on agent-core's client: input waits
/// in its channel buffer (the agent's credit decides what goes), output is checked
/// against our window.
type Session = Client<1, InputBuf<{ 64 * 1024 }>>;

/// Input of a channel waiting for the agent's credit (a typed line, a paste, a piped
/// file, a forwarded connection's bytes): `N` bytes on the heap, for as long as the
/// channel lives.
pub struct InputBuf<const N: usize>(Box<[u8]>);

impl<const N: usize> Buffer for InputBuf<N> {
    fn new() -> Self {
        InputBuf(vec![0u8; N].into_boxed_slice())
    }
}

impl<const N: usize> AsRef<[u8]> for InputBuf<N> {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl<const N: usize> AsMut<[u8]> for InputBuf<N> {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// Largest frame sent.
pub(crate) const FRAME: usize = wire::DEFAULT_MAX_FRAME as usize;
/// Buffers kept for reuse, at most (4 MiB of full frames).
const POOLED_BUFFERS: usize = 128;

/// Buffers of connection data and frames for reuse (at most [`POOLED_BUFFERS`]).
/// Allocating one for each frame is not free: when a channel's queue drains, the
/// allocator hands the memory back to the kernel and the next burst faults every page
/// in again (measured: 40 000 page faults a second at 300 MB/s, more time than the
/// copies themselves).
static BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer from [`BUFFERS`] with room for a largest frame, back to it when
/// dropped. Its length and bytes are what its last user left (clear it, or resize
/// it: only bytes beyond its length are zeroed).
pub(crate) struct Pooled(pub(crate) Vec<u8>);

impl Pooled {
    /// A buffer, reused if there is one.
    pub(crate) fn take() -> Pooled {
        let reused = BUFFERS.lock().ok().and_then(|mut p| p.pop());
        Pooled(reused.unwrap_or_else(|| Vec::with_capacity(FRAME)))
    }
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        if buf.capacity() != FRAME {
            return;
        }
        if let Ok(mut pool) = BUFFERS.lock() {
            if pool.len() < POOLED_BUFFERS {
                pool.push(buf);
            }
        }
    }
}

/// Send what a session has to send, each frame written straight into a pooled
/// buffer that the WebSocket message then owns; then flush. `Ok(Ok(true))`:
/// something went, so its buffers have room again (input waiting for room must be
/// offered again before the caller sleeps: the agent returns credit only for a
/// quarter of its window, or when the window is used up, so input left waiting can
/// stall both). A failed stream is told apart (`Ok(Err(..))`) from a misused
/// session: a resumable session survives the first.
pub(crate) async fn send_pending<const N: usize, B: Buffer>(
    session: &mut Client<N, B>,
    ws: &mut crate::client::Stream,
) -> anyhow::Result<Result<bool, WsError>> {
    let mut sent = false;
    loop {
        let mut buf = Pooled::take();
        buf.0.resize(FRAME, 0);
        let Some(n) = session
            .poll_transmit(&mut buf.0)
            .map_err(|e| anyhow::anyhow!("{e}"))?
        else {
            break;
        };
        buf.0.truncate(n);
        let msg = Message::Binary(tokio_tungstenite::tungstenite::Bytes::from_owner(buf));
        if let Err(e) = ws.feed(msg).await {
            return Ok(Err(e));
        }
        sent = true;
    }
    if sent {
        if let Err(e) = ws.flush().await {
            return Ok(Err(e));
        }
    }
    Ok(Ok(sent))
}

/// Run a shell or exec session as `run_as`; returns the exit code for this process.
/// If the relay made the session resumable, a failed stream is replaced and the
/// session goes on ([`Link`]).
pub async fn run(
    relay: &Relay,
    target: &str,
    run_as: Option<&str>,
    req: Request,
) -> anyhow::Result<i32> {
    let interactive = matches!(req, Request::Shell { pty: true }) && std::io::stdin().is_terminal();
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
    let (cols, rows) = terminal::size().unwrap_or((80, 24));
    let argv: Vec<u8> = match &req {
        Request::Exec(args) => args.iter().flat_map(|a| a.bytes().chain([0])).collect(),
        Request::Shell { .. } => Vec::new(),
    };
    let kind = match req {
        Request::Shell { pty: true } => Kind::Shell {
            term: &term,
            cols,
            rows,
        },
        Request::Shell { pty: false } => Kind::PIPE_SHELL,
        Request::Exec(_) => Kind::Exec { argv: Bytes(&argv) },
    };
    let mut session = Session::new(SID, WINDOW).growing(crate::forward::CH_MAX_WINDOW);
    let mut out = vec![0u8; wire::DEFAULT_MAX_FRAME as usize];
    let (ws, url) = start(
        relay,
        (target, run_as),
        (kind, true),
        &mut session,
        &mut out,
    )
    .await?;
    // The stream, replaced if it fails and the session is resumable.
    let mut link = Link::new(relay, target, url, ws);

    // The terminal goes raw once the agent accepted (stdin is read from then on).
    let mut accepted = false;
    let mut raw = None;
    let mut stdin = stdin_reader();
    let mut stdin_open = true;
    // `~.` at the start of a line leaves (a terminal only).
    let mut escape = terminal::Escape::default();
    // Input the session's buffer could not take yet.
    let mut pending: Option<(Vec<u8>, usize)> = None;
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    use tokio::signal::unix::{signal, SignalKind};
    let mut winch = signal(SignalKind::window_change())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;

    let result: anyhow::Result<i32> = async {
    loop {
        loop {
            if let Some((data, off)) = pending.as_mut() {
                *off += session.send_slice(0, &data[*off..]).unwrap_or(data.len());
                if *off == data.len() {
                    pending = None;
                }
            }
            let sent = link.transmit(&mut session).await?;
            if !sent || pending.is_none() {
                break;
            }
        }
        let want_stdin = stdin_open && pending.is_none() && accepted;
        tokio::select! {
            msg = link.recv(&mut session) => {
                let bytes = msg?;
                let ev = session.handle_frame(&bytes).map_err(protocol_error)?;
                match ev {
                    Some(ClientEvent::Accepted) => {
                        accepted = true;
                        if interactive {
                            raw = Some(terminal::RawMode::enable().context("cannot put the terminal in raw mode")?);
                        }
                        link.accepted(raw.is_some());
                    }
                    Some(ClientEvent::Rejected { reason, .. }) => bail!("{target}: {reason}"),
                    Some(ClientEvent::Resumable { hold, token }) => link.resumable(hold, token),
                    Some(ClientEvent::Suspended) => link.suspended(),
                    Some(ClientEvent::Resumed) => {
                        link.resumed();
                        // A resize in the outage may have been lost with the stream.
                        if let Some((cols, rows)) = terminal::size() {
                            session.resize(cols, rows);
                        }
                    }
                    Some(ClientEvent::Data { stream, data, .. }) => {
                        link.output(data);
                        if stream == Stream::ERR {
                            stderr.write_all(data).await?;
                            stderr.flush().await?;
                        } else {
                            stdout.write_all(data).await?;
                            stdout.flush().await?;
                        }
                        session.consumed(0, data.len());
                    }
                    Some(ClientEvent::Notice { message }) => {
                        // Not the session's output: a line of its own, on stderr.
                        let line = format!("\r\nsesame: {}\r\n", crate::terminal::printable(message));
                        link.output(b"\n");
                        stderr.write_all(line.as_bytes()).await?;
                        stderr.flush().await?;
                    }
                    Some(ClientEvent::Closed { exit, reason }) => {
                        stdout.flush().await?;
                        link.close().await;
                        drop(raw);
                        if !accepted {
                            // Ended by the relay before the agent answered.
                            bail!("{target}: {reason}");
                        }
                        if let Exit::Aborted(code) = exit {
                            let why = if reason.is_empty() { describe(code) } else { reason.to_string() };
                            bail!("session ended: {why}");
                        }
                        return Ok(exit_code(exit));
                    }
                    _ => {}
                }
            }
            chunk = stdin.recv(), if want_stdin => {
                match chunk {
                    Some(typed) => {
                        let mut data = typed;
                        if interactive {
                            let mut sent = Vec::with_capacity(data.len());
                            if escape.filter(&data, &mut sent) {
                                // `~.`: the user leaves; the session ends.
                                if link.is_down() {
                                    return Err(link.abandoned("left with ~."));
                                }
                                session.close("the user left (~.)");
                            }
                            data = sent;
                        }
                        if !data.is_empty() {
                            if link.is_down() || session.is_suspended() {
                                link.typed(data.len());
                            }
                            pending = Some((data, 0));
                        }
                    }
                    None => {
                        stdin_open = false;
                        let _ = session.finish(0);
                    }
                }
            }
            _ = winch.recv() => {
                if let Some((cols, rows)) = terminal::size() {
                    session.resize(cols, rows);
                }
            }
            _ = sigint.recv() => {
                // Only reaches us when the terminal is not raw (exec, or piped input).
                let _ = session.signal(2);
            }
            // While the stream is down the session's end cannot be sent: the relay
            // ends it after its hold.
            _ = sigterm.recv() => {
                if link.is_down() {
                    return Err(link.abandoned("terminated"));
                }
                session.close("client terminated");
            }
            _ = sighup.recv() => {
                if link.is_down() {
                    return Err(link.abandoned("hung up"));
                }
                session.close("client hung up");
            }
        }
    }
    }
    .await;
    if result.is_err() && !session.is_over() && !link.is_down() {
        // Leaving for a reason of our own (stdout closed, a bad frame): the session
        // ends now, rather than waiting for a resume that will not come.
        link.end(&mut session, "client went away").await;
    }
    result
}

/// The relay went away in the middle of the session on `target` (`e` says how, if
/// it did not close the stream properly), in the user's words.
pub fn lost_relay(
    target: &str,
    e: Option<&tokio_tungstenite::tungstenite::Error>,
) -> anyhow::Error {
    use tokio_tungstenite::tungstenite::Error;
    let how = match e {
        None => "it closed the connection",
        Some(Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => "connection timed out",
        Some(
            Error::Io(_) | Error::Protocol(_) | Error::ConnectionClosed | Error::AlreadyClosed,
        ) => "connection reset",
        Some(Error::Tls(_)) => "TLS error",
        Some(_) => "bad message",
    };
    anyhow::anyhow!("lost the relay ({how}); the session on {target} ended")
}

/// Words for an error code.
pub fn describe(code: ErrorCode) -> String {
    code.words()
        .map_or_else(|| format!("error code {}", code.0), Into::into)
}

/// `sesame ssh-key push`: make `key` valid for `user` on `target` for `ttl` seconds;
/// returns the agent's confirmation.
pub async fn push_key(
    relay: &Relay,
    target: &str,
    user: &str,
    key: &str,
    ttl: u32,
) -> anyhow::Result<String> {
    let key = key.trim();
    if key.lines().count() != 1 {
        bail!("the key file must hold exactly one public key line");
    }
    // The key's user is the session's account.
    let kind = Kind::SshKey { user, key, ttl };
    let mut session = Session::new(SID, WINDOW);
    let mut out = vec![0u8; wire::DEFAULT_MAX_FRAME as usize];
    let (mut ws, _) = start(relay, (target, None), (kind, false), &mut session, &mut out).await?;
    loop {
        let bytes = match ws.next().await {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(_)) => continue,
            _ => bail!("the relay closed the session stream before the agent answered"),
        };
        match session.handle_frame(&bytes) {
            Ok(Some(ClientEvent::Closed {
                exit: Exit::Code(0),
                reason,
            })) => return Ok(reason.to_string()),
            Ok(Some(ClientEvent::Closed { reason, .. } | ClientEvent::Rejected { reason, .. })) => {
                bail!("{target}: {reason}")
            }
            Ok(_) => continue,
            Err(e) => bail!("malformed frame from the relay: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_request_carries_what_the_open_frame_carries() {
        let argv = b"systemctl\0status\0\0nginx\0";
        let exec = Kind::Exec { argv: Bytes(argv) };
        assert_eq!(
            create_body("db-01", Some("deploy"), &exec),
            serde_json::json!({
                "target": "db-01", "kind": "exec", "run_as": "deploy",
                "command": ["systemctl", "status", "", "nginx"],
            })
        );
        let key = Kind::SshKey {
            user: "root",
            key: "ssh-ed25519 AAAA",
            ttl: 60,
        };
        assert_eq!(
            create_body("gw-01", None, &key),
            serde_json::json!({"target": "gw-01", "kind": "ssh-key", "ssh_user": "root", "ttl": 60})
        );
        assert_eq!(
            create_body("gw-01", None, &Kind::PIPE_SHELL),
            serde_json::json!({"target": "gw-01", "kind": "shell"})
        );
        assert_eq!(
            create_body("gw-01", Some("root"), &Kind::Forward),
            serde_json::json!({"target": "gw-01", "kind": "forward", "run_as": "root"})
        );
    }
}
