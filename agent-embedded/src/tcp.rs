//! Forwarded connections over embassy-net TCP: one future per port of the pool
//! ([`crate::forward`]), each with its own socket buffers ([`PortBuffers`]). A port
//! takes the next connection the engine asks for, resolves its host (DNS for a
//! name), has the engine check the address against the rules, connects, then polls
//! its socket and the engine without waiting on either ([`Conn`]) until the
//! connection is over, closes it and takes the next.
//!
//! The ports, the relay's reader and its writer are futures of one task: a port
//! registers the task's waker with its socket and with the engine's news
//! (`Wakers::news`), which the link wakes after every message from the relay, every
//! frame sent and every change the engine makes without a connection (a cut, a
//! hold that ends). The ports outlive relay connections: a held session's
//! connection goes on while the link is down, and one whose session ended is
//! dropped.

use core::cell::RefCell;
use core::fmt::Write as _;
use core::future::{poll_fn, Future};
use core::net::Ipv4Addr;
use core::pin::pin;
use core::task::{Context, Poll};

use agent_core::session::REASON_MAX;
use agent_core::wire::ErrorCode;
use embassy_net::tcp::{ConnectError, TcpSocket};
use embassy_net::Stack;
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::signal::Signal;
use embassy_sync::waitqueue::GenericAtomicWaker;
use embassy_time::{with_timeout, Duration};
use heapless::String;

use crate::engine::Engine;
use crate::forward::{Conn, Pumped, Recv, Reset, HOST_MAX};

/// Receive buffer of a forwarded connection (the TCP window it offers).
pub const PORT_RX: usize = 1024;
/// Send buffer of a forwarded connection.
pub const PORT_TX: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DNS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closed connection may take to deliver its last bytes and FIN.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection is probed after this long without traffic, and reset after
/// [`IDLE_TIMEOUT`] without an answer: an idle one that answers stays.
const KEEPALIVE: Duration = Duration::from_secs(30);
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// One port's socket buffers, allocated once with the link's [`crate::link::Buffers`].
pub struct PortBuffers {
    rx: [u8; PORT_RX],
    tx: [u8; PORT_TX],
}

impl PortBuffers {
    /// Zeroed buffers.
    pub const fn new() -> Self {
        PortBuffers {
            rx: [0; PORT_RX],
            tx: [0; PORT_TX],
        }
    }
}

impl Default for PortBuffers {
    fn default() -> Self {
        Self::new()
    }
}

/// How the link's futures (the relay connection's and the ports') wake each other.
pub(crate) struct Wakers {
    /// The engine has something to send: wakes the relay writer.
    pub transmit: Signal<NoopRawMutex, ()>,
    /// The engine changed (a request, input, room, an end): wakes the ports.
    pub news: GenericAtomicWaker<NoopRawMutex>,
}

impl Wakers {
    pub fn new() -> Self {
        Wakers {
            transmit: Signal::new(),
            news: GenericAtomicWaker::new(NoopRawMutex::new()),
        }
    }
}

/// Serve port `i` of the pool, for ever (across relay connections).
pub(crate) async fn serve<const N: usize>(
    i: usize,
    stack: Stack<'_>,
    bufs: &mut PortBuffers,
    engine: &RefCell<Engine<'_, N>>,
    wakers: &Wakers,
) -> ! {
    loop {
        let host = poll_fn(|cx| match engine.borrow_mut().forwarding().dial(i) {
            Some(host) => Poll::Ready(agent_core::session::clip::<HOST_MAX>(host)),
            None => {
                wakers.news.register(cx.waker());
                Poll::Pending
            }
        })
        .await;
        let addr = match host.parse::<Ipv4Addr>() {
            Ok(a) => Some(a),
            Err(_) => resolve(stack, &host).await,
        };
        let dest = engine.borrow_mut().forwarding().resolved(i, addr);
        wakers.transmit.signal(());
        let Some((addr, port)) = dest else { continue };

        let mut socket = TcpSocket::new(stack, &mut bufs.rx, &mut bufs.tx);
        socket.set_keep_alive(Some(KEEPALIVE));
        socket.set_timeout(Some(IDLE_TIMEOUT));
        let result = connect(&mut socket, addr, port).await;
        let result = result
            .as_ref()
            .map(|_| ())
            .map_err(|(c, w)| (*c, w.as_str()));
        let go = engine.borrow_mut().forwarding().connected(i, result);
        wakers.transmit.signal(());
        let abort = !go
            || poll_fn(|cx| {
                let pumped = engine.borrow_mut().forwarding().pump(
                    i,
                    &mut Polled {
                        socket: &mut socket,
                        cx,
                    },
                );
                if pumped != Pumped::Idle {
                    wakers.transmit.signal(());
                }
                match pumped {
                    Pumped::Over { abort } => Poll::Ready(abort),
                    Pumped::Idle | Pumped::Moved => {
                        wakers.news.register(cx.waker());
                        Poll::Pending
                    }
                }
            })
            .await;
        if abort {
            socket.abort();
        }
        // What was written goes out, then the FIN (or the RST), within a bound.
        let _ = with_timeout(CLOSE_TIMEOUT, socket.flush()).await;
        drop(socket);
        engine.borrow_mut().forwarding().free(i);
    }
}

/// The first IPv4 address of `host`, if it resolves in time.
async fn resolve(stack: Stack<'_>, host: &str) -> Option<Ipv4Addr> {
    let query = stack.dns_query(host, embassy_net::dns::DnsQueryType::A);
    let found = with_timeout(DNS_TIMEOUT, query).await.ok()?.ok()?;
    // The stack speaks IPv4 only, so every address is one.
    found.first().map(|&embassy_net::IpAddress::Ipv4(a)| a)
}

async fn connect(
    socket: &mut TcpSocket<'_>,
    addr: Ipv4Addr,
    port: u16,
) -> Result<(), (ErrorCode, String<REASON_MAX>)> {
    let connected = with_timeout(CONNECT_TIMEOUT, socket.connect((addr, port))).await;
    let mut why = String::new();
    let code = match connected {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(ConnectError::ConnectionReset)) => {
            let _ = write!(why, "cannot connect to {addr}:{port}: connection refused");
            ErrorCode::REFUSED
        }
        Ok(Err(ConnectError::NoRoute)) => {
            let _ = write!(why, "cannot connect to {addr}:{port}: no route");
            ErrorCode::UNREACHABLE
        }
        Ok(Err(_)) | Err(_) => {
            let _ = write!(why, "timed out connecting to {addr}:{port}");
            ErrorCode::UNREACHABLE
        }
    };
    Err((code, why))
}

/// A socket polled once per call with the task's context: what is possible now is
/// done, and otherwise the socket wakes the task when it becomes possible.
struct Polled<'s, 'a, 'c> {
    socket: &'s mut TcpSocket<'a>,
    cx: &'s mut Context<'c>,
}

impl Conn for Polled<'_, '_, '_> {
    fn send(&mut self, data: &[u8]) -> Result<usize, Reset> {
        match pin!(self.socket.write(data)).poll(self.cx) {
            Poll::Ready(Ok(n)) => Ok(n),
            Poll::Ready(Err(_)) => Err(Reset),
            Poll::Pending => Ok(0),
        }
    }

    fn recv(&mut self, take: &mut dyn FnMut(&[u8]) -> usize) -> Recv {
        let got = pin!(self.socket.read_with(|buf| {
            let n = take(buf);
            (n, n)
        }))
        .poll(self.cx);
        match got {
            Poll::Ready(Ok(n)) => Recv::Took(n),
            Poll::Pending => Recv::Nothing,
            // Nothing buffered and the receive half closed: embassy-net reads a FIN
            // as the end (0 bytes) and a reset as an error.
            Poll::Ready(Err(_)) => {
                let mut one = [0u8; 1];
                let end = pin!(self.socket.read(&mut one)).poll(self.cx);
                if matches!(end, Poll::Ready(Ok(0))) {
                    Recv::End
                } else {
                    Recv::Reset
                }
            }
        }
    }

    fn finish(&mut self) {
        self.socket.close();
    }
}
