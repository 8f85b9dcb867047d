//! The network side: embassy-net TCP, TLS 1.3 verified against the pinned CA
//! (embedded-tls), the WebSocket to `/v1/agent` (embedded-websocket), the
//! [`Engine`] behind them and the forwarded connections beside them
//! ([`crate::tcp`]); reconnects with backoff for ever. The forwarded connections
//! do not belong to a relay connection: their futures run beside the relay's for
//! as long as the link runs, so that a held forward session keeps its connections
//! across a cut.
//!
//! The engine is made once and outlives every connection: when one ends it is told
//! at once ([`Engine::disconnected`]: the sessions it cannot hold end then), and
//! again when the next WebSocket is up ([`Engine::connected`]: its `Hello` goes
//! first, with a fresh handshake timer). In between (the backoff, DNS, TCP, TLS
//! and the upgrade) `offline` keeps the held sessions going: their consoles write
//! into their buffers while they have room, and a hold that ends ends its session.
//! Nothing is transmitted without a connection.

use core::cell::RefCell;
use core::fmt::{self, Write as _};
use core::future::Future;
use core::net::Ipv4Addr;
use core::pin::{pin, Pin};

use agent_core::backoff::Backoff;
use agent_core::provision::Provision;
use embassy_futures::join::join_array;
use embassy_futures::select::{select, Either};
use embassy_net::tcp::{TcpReader, TcpSocket, TcpWriter};
use embassy_net::Stack;
use embassy_time::{with_timeout, Duration, Instant, Timer};
use embedded_io_async::{ErrorType, Read, Write};
use embedded_tls::pki::CertVerifier;
use embedded_tls::{
    Aes128GcmSha256, Certificate, CryptoProvider, NoClock, TlsConfig, TlsConnection, TlsContext,
    TlsError, TlsVerifier,
};
use embedded_websocket::{
    WebSocketClient, WebSocketOptions, WebSocketReceiveMessageType, WebSocketSendMessageType,
};
use heapless::String;
use rand_core::{CryptoRng, RngCore};

use crate::console::Board;
use crate::engine::{Engine, DEFAULT_SESSIONS, MAX_FRAME};
use crate::forward::PORTS;
use crate::tcp::{PortBuffers, Wakers};

/// TLS record buffer for reading: one record of the relay's 4 KiB maximum plus
/// header, tag and padding room (`relay::tls::MAX_RECORD`).
pub const TLS_READ: usize = 4096 + 256;
/// TLS record buffer for writing: one WebSocket message of a full frame.
pub const TLS_WRITE: usize = MAX_FRAME + 256;
/// The relay's leaf certificate, kept during the handshake to check its signature.
pub const CERT_SIZE: usize = 2048;
/// WebSocket header room around a frame.
const WS_HEADER: usize = 14;
/// Sockets the board's `StackResources` must hold: DHCP, DNS, the relay
/// connection and the forwarding pool's [`PORTS`].
pub const SOCKETS: usize = 3 + PORTS;

/// Everything the link needs, allocated once by the board (in a `static`): one
/// relay connection's buffers, reused by each, and the forwarded connections'
/// sockets, which outlive relay connections.
pub struct Buffers {
    relay: RelayBuffers,
    /// The forwarded connections' sockets.
    ports: [PortBuffers; PORTS],
}

/// One relay connection's buffers.
struct RelayBuffers {
    tcp_rx: [u8; 4096],
    tcp_tx: [u8; 2048],
    tls_rx: [u8; TLS_READ],
    tls_tx: [u8; TLS_WRITE],
    /// Decrypted bytes not yet parsed into WebSocket frames (and the HTTP response).
    ws_rx: [u8; 1024],
    /// One reassembled WebSocket message.
    msg: [u8; MAX_FRAME],
    /// One frame from the engine, then its WebSocket encoding.
    frame: [u8; MAX_FRAME],
    ws_tx: [u8; MAX_FRAME + WS_HEADER],
}

impl Buffers {
    /// Zeroed buffers (for a `static` or `StaticCell`).
    pub const fn new() -> Self {
        Buffers {
            relay: RelayBuffers {
                tcp_rx: [0; 4096],
                tcp_tx: [0; 2048],
                tls_rx: [0; TLS_READ],
                tls_tx: [0; TLS_WRITE],
                ws_rx: [0; 1024],
                msg: [0; MAX_FRAME],
                frame: [0; MAX_FRAME],
                ws_tx: [0; MAX_FRAME + WS_HEADER],
            },
            ports: [const { PortBuffers::new() }; PORTS],
        }
    }
}

impl Default for Buffers {
    fn default() -> Self {
        Self::new()
    }
}

/// Why one connection ended.
#[derive(Debug)]
pub enum LinkError {
    /// The relay's host name did not resolve.
    Dns,
    /// TCP connect failed or timed out.
    Connect,
    /// TLS failed: with `InvalidCertificate` the relay is not who the pinned CA says.
    Tls(TlsError),
    /// The WebSocket upgrade or framing failed.
    WebSocket(&'static str),
    /// The relay closed the connection.
    Closed,
    /// The session engine gave up (see [`crate::engine::Failure`]).
    Engine(crate::engine::Failure),
    /// A `reboot` command finished.
    Reboot,
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Dns => f.write_str("cannot resolve the relay's host name"),
            LinkError::Connect => f.write_str("cannot connect (TCP)"),
            LinkError::Tls(TlsError::InvalidCertificate) => f.write_str(
                "TLS: the relay's certificate is not signed by the pinned CA or does not name it",
            ),
            LinkError::Tls(e) => write!(f, "TLS: {e:?}"),
            LinkError::WebSocket(m) => write!(f, "WebSocket: {m}"),
            LinkError::Closed => f.write_str("the relay closed the connection"),
            LinkError::Engine(e) => write!(f, "{e}"),
            LinkError::Reboot => f.write_str("rebooting"),
        }
    }
}

impl From<TlsError> for LinkError {
    fn from(e: TlsError) -> Self {
        LinkError::Tls(e)
    }
}

/// Run the agent for ever: connect, serve sessions, and reconnect after the waits of
/// [`Backoff`] (0.5 s doubling to 30 s, jittered from `rng`; it starts over once the
/// relay accepts the device). `rng` must be a cryptographic RNG (TLS key shares,
/// WebSocket masks). The forwarded connections run beside the relay connections,
/// not within one: a held forward session's connections go on across a cut.
pub async fn run<B: Board, R: RngCore + CryptoRng>(
    stack: Stack<'_>,
    prov: &Provision<'_>,
    board: &mut B,
    rng: &mut R,
    bufs: &mut Buffers,
) -> ! {
    let key = ed25519_dalek::SigningKey::from_bytes(&prov.seed());
    match prov.forward {
        Some(rules) => board.log(format_args!(
            "forward: up to {PORTS} connections to [{}] except [{}]",
            rules.allow, rules.deny
        )),
        None => board.log(format_args!("forward: off (no rules in the image)")),
    }
    let engine = new_engine::<DEFAULT_SESSIONS>(&key, prov.forward);
    let wakers = Wakers::new();
    let sessions = Sessions {
        engine: &engine,
        wakers: &wakers,
    };
    let Buffers { relay, ports } = bufs;
    let mut i = 0;
    let ports = pin!(join_array(ports.each_mut().map(|bufs| {
        i += 1;
        crate::tcp::serve(i - 1, stack, bufs, &engine, &wakers)
    })));
    let relay = pin!(relay_for_ever(stack, prov, sessions, board, rng, relay));
    match select(relay, ports).await {
        Either::First(never) => match never {},
        Either::Second(never) => match never {},
    }
}

/// One relay connection after another, for ever.
async fn relay_for_ever<B: Board, R: RngCore + CryptoRng, const N: usize>(
    stack: Stack<'_>,
    prov: &Provision<'_>,
    sessions: Sessions<'_, '_, N>,
    board: &mut B,
    rng: &mut R,
    bufs: &mut RelayBuffers,
) -> ! {
    let mut backoff = Backoff::new();
    let engine = sessions.engine;
    loop {
        if !stack.is_config_up() {
            board.log(format_args!("net: waiting for an address"));
            offline(sessions, board, pin!(stack.wait_config_up())).await;
        }
        let mut authenticated = false;
        let end =
            connect_and_serve(stack, prov, sessions, board, rng, bufs, &mut authenticated).await;
        // At once, not when the next connection comes: the sessions that cannot be
        // held stop now (docs/protocol.md §8, "Holding"), their connections too.
        engine.borrow_mut().disconnected(now_ms(), board);
        sessions.wakers.news.wake();
        if matches!(end, LinkError::Reboot) {
            board.log(format_args!("relay: rebooting on request"));
            board.request_reboot();
        }
        if authenticated {
            backoff.reset();
        }
        let wait = backoff.next(rng.next_u32());
        let held = engine.borrow().open_sessions();
        board.log(format_args!(
            "relay: {end}; retrying in {} ms{}",
            wait.as_millis(),
            Held(held)
        ));
        let backoff_wait = Timer::after(Duration::from_millis(wait.as_millis()));
        offline(sessions, board, pin!(backoff_wait)).await;
    }
}

/// The engine and how the link's futures wake each other: what every relay
/// connection and the forwarded connections share.
#[derive(Clone, Copy)]
struct Sessions<'a, 'k, const N: usize> {
    engine: &'a RefCell<Engine<'k, N>>,
    wakers: &'a Wakers,
}

/// " (N sessions held)" after the reconnect line, when there are any.
struct Held(usize);

impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            1 => f.write_str(" (1 session held)"),
            n => write!(f, " ({n} sessions held)"),
        }
    }
}

/// Run `until` while there is no relay connection, and keep the sessions going
/// meanwhile: the consoles of held sessions write into their buffers while those
/// have room, and the engine's timer runs (a hold that ends ends its session).
/// Nothing is transmitted. `until` is pinned where it is made: a future passed by
/// value would be kept twice in this one's state (the TLS handshake's is 6 KiB,
/// static RAM).
async fn offline<F: Future, const N: usize>(
    sessions: Sessions<'_, '_, N>,
    board: &mut dyn Board,
    until: Pin<&mut F>,
) -> F::Output {
    match select(until, drive_offline(sessions, board)).await {
        Either::First(out) => out,
        Either::Second(never) => match never {},
    }
}

async fn drive_offline<const N: usize>(sessions: Sessions<'_, '_, N>, board: &mut dyn Board) -> ! {
    loop {
        let deadline = {
            let mut engine = sessions.engine.borrow_mut();
            engine.pump(board);
            engine.poll_timeout()
        };
        timer(deadline).await;
        sessions.engine.borrow_mut().on_timeout(now_ms(), board);
        // A hold that ended ends its forwarded connections.
        sessions.wakers.news.wake();
    }
}

/// A timer for the engine's next deadline (an hour without one).
fn timer(deadline: Option<agent_core::Instant>) -> Timer {
    match deadline {
        Some(at) => Timer::at(Instant::from_millis(at.0)),
        None => Timer::after(Duration::from_secs(3600)),
    }
}

async fn resolve(stack: Stack<'_>, host: &str) -> Result<embassy_net::IpAddress, LinkError> {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(embassy_net::IpAddress::Ipv4(ip));
    }
    let found = stack
        .dns_query(host, embassy_net::dns::DnsQueryType::A)
        .await
        .map_err(|_| LinkError::Dns)?;
    found.first().copied().ok_or(LinkError::Dns)
}

/// embedded-tls splits a connection into a reader and a writer that each need the
/// socket: this gives each its own half, behind a cell only it borrows.
#[derive(Clone, Copy)]
struct Duplex<'s, 'a> {
    r: &'s RefCell<TcpReader<'a>>,
    w: &'s RefCell<TcpWriter<'a>>,
}

#[derive(Debug)]
enum DuplexError {
    Tcp,
    /// A half was used by both sides of the split at once (a bug, reported not panicked).
    Busy,
}

impl fmt::Display for DuplexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DuplexError::Tcp => "TCP connection reset",
            DuplexError::Busy => "socket half used twice",
        })
    }
}

impl core::error::Error for DuplexError {}

impl embedded_io_async::Error for DuplexError {
    fn kind(&self) -> embedded_io_async::ErrorKind {
        match self {
            DuplexError::Tcp => embedded_io_async::ErrorKind::ConnectionReset,
            DuplexError::Busy => embedded_io_async::ErrorKind::Other,
        }
    }
}

impl ErrorType for Duplex<'_, '_> {
    type Error = DuplexError;
}

impl Read for Duplex<'_, '_> {
    #[allow(clippy::await_holding_refcell_ref)] // only the TLS reader uses `r`
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, DuplexError> {
        let mut r = self.r.try_borrow_mut().map_err(|_| DuplexError::Busy)?;
        r.read(buf).await.map_err(|_| DuplexError::Tcp)
    }
}

impl Write for Duplex<'_, '_> {
    #[allow(clippy::await_holding_refcell_ref)] // only the TLS writer uses `w`
    async fn write(&mut self, buf: &[u8]) -> Result<usize, DuplexError> {
        let mut w = self.w.try_borrow_mut().map_err(|_| DuplexError::Busy)?;
        w.write(buf).await.map_err(|_| DuplexError::Tcp)
    }

    #[allow(clippy::await_holding_refcell_ref)] // only the TLS writer uses `w`
    async fn flush(&mut self) -> Result<(), DuplexError> {
        let mut w = self.w.try_borrow_mut().map_err(|_| DuplexError::Busy)?;
        w.flush().await.map_err(|_| DuplexError::Tcp)
    }
}

/// TLS crypto: the board's RNG and a verifier pinned to the provisioned CA.
struct Provider<'a, R> {
    rng: &'a mut R,
    verifier: CertVerifier<'a, Aes128GcmSha256, NoClock, CERT_SIZE>,
}

impl<R: RngCore + CryptoRng> CryptoProvider for Provider<'_, R> {
    type CipherSuite = Aes128GcmSha256;
    type Signature = [u8; 64];

    fn rng(&mut self) -> impl embedded_tls::CryptoRngCore {
        &mut *self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Aes128GcmSha256>, TlsError> {
        Ok(&mut self.verifier)
    }
}

fn now_ms() -> agent_core::Instant {
    agent_core::Instant(Instant::now().as_millis())
}

/// One relay connection, from DNS to its end: the engine's sessions are served on
/// it once its WebSocket is up, and kept going ([`offline`]) until then.
async fn connect_and_serve<B: Board, R: RngCore + CryptoRng, const N: usize>(
    stack: Stack<'_>,
    prov: &Provision<'_>,
    sessions: Sessions<'_, '_, N>,
    board: &mut B,
    rng: &mut R,
    bufs: &mut RelayBuffers,
    authenticated: &mut bool,
) -> LinkError {
    let engine = sessions.engine;
    let RelayBuffers {
        tcp_rx,
        tcp_tx,
        tls_rx,
        tls_tx,
        ws_rx,
        msg,
        frame,
        ws_tx,
    } = bufs;
    let ip = match offline(sessions, board, pin!(resolve(stack, prov.relay_host))).await {
        Ok(ip) => ip,
        Err(e) => return e,
    };
    let mut socket = TcpSocket::new(stack, tcp_rx, tcp_tx);
    socket.set_timeout(Some(Duration::from_secs(60)));
    // Frames go out as they are ready (as the Linux agent's TCP_NODELAY): with Nagle,
    // a session's `Close` waited behind its output for the relay's delayed ACK, and
    // `sesame exec dev-1 -- uptime` took 115 ms instead of a few.
    socket.set_nagle_enabled(false);
    let connect = with_timeout(
        Duration::from_secs(10),
        socket.connect((ip, prov.relay_port)),
    );
    let connected = offline(sessions, board, pin!(connect)).await;
    if !matches!(connected, Ok(Ok(()))) {
        return LinkError::Connect;
    }
    let (r, w) = socket.split();
    let (r, w) = (RefCell::new(r), RefCell::new(w));
    let mut tls: TlsConnection<'_, _, Aes128GcmSha256> =
        TlsConnection::new(Duplex { r: &r, w: &w }, tls_rx, tls_tx);
    let alpn: [&[u8]; 1] = [b"http/1.1"];
    let config = TlsConfig::new()
        .with_server_name(prov.tls_name)
        .with_alpn(&alpn);
    let provider = Provider {
        rng: &mut *rng,
        verifier: CertVerifier::new(Certificate::X509(prov.ca_der.0)),
    };
    let open = with_timeout(
        Duration::from_secs(20),
        tls.open(TlsContext::new(&config, provider)),
    );
    match offline(sessions, board, pin!(open)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return LinkError::Tls(e),
        Err(_) => return LinkError::Tls(TlsError::Io(embedded_io_async::ErrorKind::TimedOut)),
    }
    let (mut reader, mut writer) = tls.split();

    // The WebSocket upgrade.
    let mut ws = WebSocketClient::new_client(&mut *rng);
    let mut host: String<72> = String::new();
    let _ = write!(host, "{}:{}", prov.tls_name, prov.relay_port);
    let options = WebSocketOptions {
        path: "/v1/agent",
        host: &host,
        origin: "",
        sub_protocols: None,
        additional_headers: None,
    };
    let mut request = [0u8; 1024];
    let Ok((len, ws_key)) = ws.client_connect(&options, &mut request) else {
        return LinkError::WebSocket("cannot build the upgrade request");
    };
    let upgrade = write_flush(&mut writer, &request[..len]);
    if let Err(e) = offline(sessions, board, pin!(upgrade)).await {
        return e;
    }
    let mut fill = 0;
    loop {
        if fill == ws_rx.len() {
            return LinkError::WebSocket("upgrade response too long");
        }
        let read = with_timeout(Duration::from_secs(20), reader.read(&mut ws_rx[fill..]));
        match offline(sessions, board, pin!(read)).await {
            Ok(Ok(0)) => return LinkError::Closed,
            Ok(Ok(n)) => fill += n,
            Ok(Err(e)) => return LinkError::Tls(e),
            Err(_) => return LinkError::WebSocket("no upgrade response"),
        }
        match ws.client_accept(&ws_key, &ws_rx[..fill]) {
            Ok((used, _)) => {
                ws_rx.copy_within(used..fill, 0);
                fill -= used;
                break;
            }
            Err(embedded_websocket::Error::HttpHeaderIncomplete) => {}
            Err(_) => return LinkError::WebSocket("the relay refused the upgrade"),
        }
    }

    // Sessions.
    struct Shared<'w, B, R: RngCore> {
        board: &'w mut B,
        ws: WebSocketClient<&'w mut R>,
        /// A Ping's payload to answer.
        pong: Option<heapless::Vec<u8, 125>>,
        closing: bool,
    }
    // The WebSocket is up: the engine's connection starts on it, `Hello` first.
    {
        let mut engine = engine.borrow_mut();
        engine.connected(now_ms(), board);
        if let Some(cfg) = stack.config_v4() {
            let _ = write!(
                engine.net,
                "ip {}, relay {}:{}",
                cfg.address, prov.relay_host, prov.relay_port
            );
        }
    }
    let shared = RefCell::new(Shared {
        board,
        ws,
        pong: None,
        closing: false,
    });
    let wakers = sessions.wakers;
    let wake = &wakers.transmit;

    let receive = async {
        let mut msg_len = 0;
        loop {
            // Parse what is buffered, then read more.
            loop {
                let step = {
                    let mut guard = shared.borrow_mut();
                    let st = &mut *guard;
                    match st.ws.read(&ws_rx[..fill], &mut msg[msg_len..]) {
                        Err(embedded_websocket::Error::ReadFrameIncomplete) => Step::NeedMore,
                        Err(_) => {
                            Step::Fail(LinkError::WebSocket("malformed frame from the relay"))
                        }
                        Ok(res) => {
                            ws_rx.copy_within(res.len_from..fill, 0);
                            fill -= res.len_from;
                            msg_len += res.len_to;
                            if !res.end_of_message {
                                if msg_len == msg.len() {
                                    Step::Fail(LinkError::WebSocket(
                                        "message larger than max_frame",
                                    ))
                                } else if res.len_from == 0 {
                                    Step::NeedMore
                                } else {
                                    Step::Again
                                }
                            } else {
                                let len = core::mem::take(&mut msg_len);
                                match res.message_type {
                                    WebSocketReceiveMessageType::Binary => {
                                        let mut engine = engine.borrow_mut();
                                        engine.on_message(now_ms(), &msg[..len], &mut *st.board);
                                        if engine.agent_id().is_some() {
                                            *authenticated = true;
                                        }
                                        wakers.news.wake();
                                        Step::Wake
                                    }
                                    WebSocketReceiveMessageType::Ping => {
                                        st.pong =
                                            heapless::Vec::from_slice(&msg[..len.min(125)]).ok();
                                        Step::Wake
                                    }
                                    WebSocketReceiveMessageType::Pong => Step::Again,
                                    WebSocketReceiveMessageType::Text => {
                                        Step::Fail(LinkError::WebSocket("unexpected text message"))
                                    }
                                    WebSocketReceiveMessageType::CloseMustReply
                                    | WebSocketReceiveMessageType::CloseCompleted => {
                                        st.closing = true;
                                        Step::Close
                                    }
                                }
                            }
                        }
                    }
                };
                match step {
                    Step::NeedMore => break,
                    Step::Again => {}
                    Step::Wake => wake.signal(()),
                    Step::Fail(e) => return e,
                    Step::Close => {
                        wake.signal(());
                        // Give the writer a moment to answer the close.
                        Timer::after(Duration::from_millis(100)).await;
                        return LinkError::Closed;
                    }
                }
            }
            if fill == ws_rx.len() {
                return LinkError::WebSocket("frame header larger than the buffer");
            }
            match reader.read(&mut ws_rx[fill..]).await {
                Ok(0) => return LinkError::Closed,
                Ok(n) => fill += n,
                Err(e) => return LinkError::Tls(e),
            }
        }
    };

    let send = async {
        loop {
            // Send everything queued.
            loop {
                let (len, closing) = {
                    let mut guard = shared.borrow_mut();
                    let st = &mut *guard;
                    if st.closing {
                        let reply = WebSocketSendMessageType::CloseReply;
                        (st.ws.write(reply, true, &[], &mut ws_tx[..]).ok(), true)
                    } else if let Some(p) = st.pong.take() {
                        let pong = WebSocketSendMessageType::Pong;
                        (st.ws.write(pong, true, &p, &mut ws_tx[..]).ok(), false)
                    } else if let Some(n) =
                        engine
                            .borrow_mut()
                            .poll_transmit(now_ms(), &mut frame[..], &mut *st.board)
                    {
                        // A channel's buffer may have room again.
                        wakers.news.wake();
                        let binary = WebSocketSendMessageType::Binary;
                        (
                            st.ws.write(binary, true, &frame[..n], &mut ws_tx[..]).ok(),
                            false,
                        )
                    } else {
                        (None, false)
                    }
                };
                if closing {
                    if let Some(n) = len {
                        let _ = write_flush(&mut writer, &ws_tx[..n]).await;
                    }
                    return LinkError::Closed;
                }
                let Some(len) = len else { break };
                if let Err(e) = writer.write_all(&ws_tx[..len]).await {
                    return LinkError::Tls(e);
                }
            }
            if let Err(e) = writer.flush().await {
                return LinkError::Tls(e);
            }
            let (deadline, reboot) = {
                let mut engine = engine.borrow_mut();
                if let Some(f) = engine.failure() {
                    return LinkError::Engine(f.clone());
                }
                (engine.poll_timeout(), engine.take_reboot())
            };
            if reboot {
                // Let the answer reach the relay before the reset.
                Timer::after(Duration::from_millis(200)).await;
                return LinkError::Reboot;
            }
            if let Either::Second(()) = select(wake.wait(), timer(deadline)).await {
                let mut st = shared.borrow_mut();
                engine.borrow_mut().on_timeout(now_ms(), &mut *st.board);
                wakers.news.wake();
            }
        }
    };

    match select(receive, send).await {
        Either::First(e) | Either::Second(e) => e,
    }
}

/// The engine in its cell, made by a function of its own so that it is built in its
/// place in [`run`]'s future, where it outlives every connection. Built inline
/// (with `RefCell::new(Engine::new(..))`) it took its ~17 KiB twice in the future,
/// which is static RAM, and once more in the future's stack frame, which every path
/// through the connection (the TLS handshake's deepest) pays.
#[inline(never)]
fn new_engine<'k, const N: usize>(
    key: &'k ed25519_dalek::SigningKey,
    rules: Option<agent_core::provision::ForwardRules<'k>>,
) -> RefCell<Engine<'k, N>> {
    RefCell::new(Engine::new(key, rules, now_ms()))
}

/// What parsing one buffered WebSocket frame asks of the receive loop.
enum Step {
    NeedMore,
    Again,
    Wake,
    Close,
    Fail(LinkError),
}

async fn write_flush<W: Write<Error = TlsError>>(w: &mut W, data: &[u8]) -> Result<(), LinkError> {
    w.write_all(data).await?;
    w.flush().await?;
    Ok(())
}
