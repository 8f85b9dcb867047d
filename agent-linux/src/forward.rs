//! TCP channels of `forward` sessions: resolve, check the destination policy, dial,
//! then move bytes in both directions under the same queue-space discipline as
//! process output (a stalled client stalls only its own connection).

use std::sync::Arc;
use std::time::Duration;

use agent_core::session::ChannelHandle;
use agent_core::wire::{ErrorCode, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::AbortHandle;

use crate::policy::DestPolicy;
use crate::process::{reserve, Input, Msg, CHUNK, QUEUE_SPACE};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected channel, as seen by the driver.
#[derive(Debug)]
pub struct TcpChannel {
    /// Data and EOF for the connection.
    pub input: mpsc::UnboundedSender<Input>,
    /// Queue space for its output.
    pub space: Arc<Semaphore>,
    tasks: Vec<AbortHandle>,
}

impl TcpChannel {
    /// Drop the connection at once (the peer aborted the channel).
    pub fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A forward channel: connecting, or connected.
pub enum Chan {
    /// Resolving and connecting.
    Dialing(AbortHandle),
    /// Connected: bytes flow.
    Connected(TcpChannel),
}

impl Chan {
    /// Drop the attempt or the connection at once.
    pub fn abort(&self) {
        match self {
            Chan::Dialing(h) => h.abort(),
            Chan::Connected(c) => c.abort(),
        }
    }
}

/// Resolve, check and dial `host:port` in the background; the outcome arrives as
/// [`Msg::Dialed`].
pub fn dial(
    channel: ChannelHandle,
    host: String,
    port: u16,
    policy: Arc<DestPolicy>,
    tx: mpsc::UnboundedSender<Msg>,
) -> AbortHandle {
    let task = tokio::spawn(async move {
        let result = connect(&host, port, &policy)
            .await
            .map(|stream| start(channel, stream, tx.clone()));
        let _ = tx.send(Msg::Dialed { channel, result });
    });
    task.abort_handle()
}

async fn connect(
    host: &str,
    port: u16,
    policy: &DestPolicy,
) -> Result<TcpStream, (ErrorCode, String)> {
    let addrs: Vec<_> =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => {
                return Err((
                    ErrorCode::UNREACHABLE,
                    format!("cannot resolve '{host}': {e}"),
                ))
            }
            Err(_) => {
                return Err((
                    ErrorCode::UNREACHABLE,
                    format!("timed out resolving '{host}'"),
                ))
            }
        };
    let allowed: Vec<_> = addrs
        .iter()
        .filter(|a| policy.allows(a.ip(), a.port()))
        .collect();
    if allowed.is_empty() {
        let shown = addrs
            .first()
            .map_or(format!("{host}:{port}"), |a| a.to_string());
        return Err((
            ErrorCode::DENIED,
            format!("destination {shown} is denied by the agent's forwarding policy"),
        ));
    }
    let mut last = None;
    for addr in allowed {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = Some((addr, e)),
            Err(_) => {
                return Err((
                    ErrorCode::UNREACHABLE,
                    format!("timed out connecting to {addr}"),
                ))
            }
        }
    }
    let (addr, e) = last.expect("at least one address was tried");
    let code = if e.kind() == std::io::ErrorKind::ConnectionRefused {
        ErrorCode::REFUSED
    } else {
        ErrorCode::UNREACHABLE
    };
    Err((code, format!("cannot connect to {addr}: {e}")))
}

fn start(channel: ChannelHandle, stream: TcpStream, tx: mpsc::UnboundedSender<Msg>) -> TcpChannel {
    let (mut rd, mut wr) = stream.into_split();
    let space = Arc::new(Semaphore::new(QUEUE_SPACE));
    let (input, mut input_rx) = mpsc::unbounded_channel();
    let txw = tx.clone();
    let writer = tokio::spawn(async move {
        while let Some(msg) = input_rx.recv().await {
            match msg {
                Input::Data(d) => {
                    if let Err(e) = wr.write_all(&d).await {
                        let _ = txw.send(Msg::ChannelFailed {
                            channel,
                            error: format!("write failed: {e}"),
                        });
                        return;
                    }
                    let _ = txw.send(Msg::Consumed {
                        channel,
                        n: d.len(),
                    });
                }
                Input::Eof => {
                    let _ = wr.shutdown().await;
                }
                Input::Resize(..) => {}
            }
        }
    });
    let sp = space.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let Some(reserved) = reserve(&sp).await else {
                return;
            };
            match rd.read(&mut buf[..reserved]).await {
                Ok(0) => {
                    sp.add_permits(reserved);
                    let _ = tx.send(Msg::OutputEnd { channel });
                    return;
                }
                Ok(n) => {
                    sp.add_permits(reserved - n);
                    let _ = tx.send(Msg::Output {
                        channel,
                        stream: Stream::OUT,
                        data: buf[..n].to_vec(),
                    });
                }
                Err(e) => {
                    sp.add_permits(reserved);
                    let _ = tx.send(Msg::ChannelFailed {
                        channel,
                        error: format!("read failed: {e}"),
                    });
                    return;
                }
            }
        }
    });
    TcpChannel {
        input,
        space,
        tasks: vec![writer.abort_handle(), reader.abort_handle()],
    }
}
