//! Keeping a shell, exec or forward session through a cut of its stream (docs/protocol.md
//! §8). The relay made the session resumable and gave a token; when the stream
//! fails, [`Link`] opens a new one with the latest token (with a backoff, for as long
//! as the relay holds the session) and reattaches the session to it, while the user
//! sees one status line that goes once the session goes on. What is sent again and
//! what was received already is agent-core's [`Client`]'s business; this moves
//! streams and draws the line.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use agent_core::backoff::Backoff;
use agent_core::client::Client;
use agent_core::session::Buffer;
use anyhow::anyhow;
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};

use crate::client::{Relay, Stream, StreamError};
use crate::session::{lost_relay, send_pending};
use crate::status::{draw, Mode, StatusLine, Why};
use crate::terminal;

/// The longest wait between two attempts: agents back off to 30 s, but a person is
/// waiting here.
const MAX_WAIT: Duration = Duration::from_secs(5);
/// The longest one attempt may take: connecting (15 s at most), TLS and the upgrade.
const ATTEMPT: Duration = Duration::from_secs(20);
/// A WebSocket ping goes after this long without hearing from the relay; the
/// relay answers each one.
const PING_AFTER: Duration = Duration::from_secs(15);
/// A stream that brought nothing (not even a pong) for this long is dead: a
/// silent cut (a laptop that slept, a network that changed) is found in this time,
/// not in TCP's many minutes.
const DEAD_AFTER: Duration = Duration::from_secs(45);

/// A resume token: a secret, kept out of `Debug` output.
struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<hidden>)")
    }
}

/// Opening a new stream: its wait first, then the upgrade.
type Attempt<'r> = Pin<Box<dyn Future<Output = Result<Stream, StreamError>> + 'r>>;

/// The stream is down and a new one is being opened.
struct Outage<'r> {
    /// When the relay's hold has passed, counted from the cut.
    deadline: Instant,
    /// The attempt under way.
    attempt: Attempt<'r>,
    /// Why the last attempt failed, for the final error.
    last: Option<String>,
}

/// The stream of a session, replaced when it fails if the session is
/// resumable. Every method is cancel-safe (they run in the arms of a `select!`).
pub struct Link<'r> {
    relay: &'r Relay,
    target: String,
    /// The session's stream URL (`wss://HOST/v1/stream/ID`), which resumes it too.
    url: String,
    ws: Option<Stream>,
    /// The latest resume token, once the relay made the session resumable.
    token: Option<Token>,
    /// Seconds the relay holds the session while a side is away.
    hold: u32,
    /// The agent accepted the session (only an accepted session can be resumed).
    accepted: bool,
    /// From a cut until the session goes on: the relay's `Suspend` on a new stream is
    /// expected, not news of the agent.
    resuming: bool,
    outage: Option<Outage<'r>>,
    backoff: Backoff,
    status: StatusLine,
    /// The news on the status line, if it is up, before what is added to it.
    news: Option<(Why, String)>,
    /// Bytes typed since the status line went up (sent once the session goes on).
    typed: usize,
    /// The terminal is raw: `~.` leaves (see [`crate::terminal::Escape`]).
    raw: bool,
    /// When the relay was last heard from on the current stream.
    heard: Instant,
}

impl<'r> Link<'r> {
    /// The session on `target` runs on `ws`, opened at `url`.
    pub fn new(relay: &'r Relay, target: &str, url: String, ws: Stream) -> Self {
        Link {
            relay,
            target: target.to_string(),
            url,
            ws: Some(ws),
            token: None,
            hold: 0,
            accepted: false,
            resuming: false,
            outage: None,
            backoff: Backoff::new(),
            status: StatusLine::new(Mode::Log),
            news: None,
            typed: 0,
            raw: false,
            heard: Instant::now(),
        }
    }

    /// The agent accepted the session; `raw`: the terminal is in raw mode now (the
    /// status line is drawn for it).
    pub fn accepted(&mut self, raw: bool) {
        self.accepted = true;
        self.raw = raw;
        self.status = StatusLine::new(Mode::detect(raw));
    }

    /// The relay made the session resumable (again, after a resume): `token`
    /// resumes it within `hold` seconds of a cut.
    pub fn resumable(&mut self, hold: u32, token: &str) {
        self.hold = hold;
        self.token = Some(Token(token.to_string()));
    }

    /// The relay suspended the session: on a stream that was not just replaced, the
    /// agent is away.
    pub fn suspended(&mut self) {
        if !self.resuming {
            let target = terminal::printable(&self.target);
            let text = format!(
                "{target} unreachable; waiting (session kept for {})",
                human(self.hold)
            );
            self.show(Why::Agent, &text);
        }
    }

    /// The session goes on: the status line goes.
    pub fn resumed(&mut self) {
        self.resuming = false;
        self.backoff.reset();
        self.news = None;
        self.typed = 0;
        let line = self.status.clear(&terminal::printable(&self.target));
        draw(&line);
    }

    /// Output is about to be written to the terminal (`data`, or a line of our own):
    /// the status line makes way.
    pub fn output(&mut self, data: &[u8]) {
        let line = self.status.output(data);
        draw(&line);
    }

    /// Send what the session has to send; `true` if something went. A failed
    /// stream is replaced if the session is resumable, else ends it.
    pub async fn transmit<const C: usize, B: Buffer>(
        &mut self,
        session: &mut Client<C, B>,
    ) -> anyhow::Result<bool> {
        let Some(ws) = self.ws.as_mut() else {
            return Ok(false);
        };
        match send_pending(session, ws).await? {
            Ok(sent) => Ok(sent),
            Err(e) => {
                self.cut(Some(&e), session)?;
                Ok(false)
            }
        }
    }

    /// The next message of the session; while the stream is down, the new one
    /// (the session reattached to it) is opened first.
    pub async fn recv<const C: usize, B: Buffer>(
        &mut self,
        session: &mut Client<C, B>,
    ) -> anyhow::Result<Bytes> {
        loop {
            let Some(ws) = self.ws.as_mut() else {
                let ws = self.reconnect().await?;
                session
                    .reattach()
                    .map_err(|e| anyhow!("cannot resume the session on {}: {e}", self.target))?;
                self.ws = Some(ws);
                self.heard = Instant::now();
                continue;
            };
            let quiet = self.heard.elapsed();
            let next = if quiet < PING_AFTER {
                self.heard + PING_AFTER
            } else {
                Instant::now() + Duration::from_secs(5).min(DEAD_AFTER.saturating_sub(quiet))
            };
            let msg = tokio::select! {
                m = ws.next() => m,
                _ = tokio::time::sleep_until(next) => {
                    if self.heard.elapsed() >= DEAD_AFTER {
                        let dead = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer");
                        self.cut(Some(&WsError::Io(dead)), session)?;
                    } else {
                        // A lost ping is found the same way: nothing comes back.
                        let _ = futures_util::SinkExt::send(ws, Message::Ping(Bytes::new())).await;
                    }
                    continue;
                }
            };
            let cut = match msg {
                Some(Ok(Message::Binary(b))) => {
                    self.heard = Instant::now();
                    return Ok(b);
                }
                Some(Ok(Message::Close(_))) | None => None,
                Some(Err(e)) => Some(e),
                Some(Ok(_)) => {
                    self.heard = Instant::now();
                    continue;
                }
            };
            self.cut(cut.as_ref(), session)?;
        }
    }

    /// Whether the stream is down (a new one is being opened).
    pub fn is_down(&self) -> bool {
        self.ws.is_none()
    }

    /// The user (or the system) ends the CLI for `why` while the stream is down:
    /// the session's end cannot be sent, the relay ends it after its hold.
    pub fn abandoned(&self, why: &str) -> anyhow::Error {
        anyhow!(
            "{why} while reconnecting to the relay: the session on {} ends once its hold of {} has passed",
            self.target,
            human(self.hold)
        )
    }

    /// Close the stream (the session is over).
    pub async fn close(&mut self) {
        if let Some(ws) = self.ws.as_mut() {
            let _ = ws.close(None).await;
        }
    }

    /// The client leaves for `why`: the session's `Close` goes (best effort), then
    /// the stream closes, so the session ends now rather than being held.
    pub async fn end<const C: usize, B: Buffer>(&mut self, session: &mut Client<C, B>, why: &str) {
        session.close(why);
        let _ = self.transmit(session).await;
        self.close().await;
    }

    /// The stream failed (`e` says how, if the relay did not close it): start
    /// opening a new one if the session can be resumed, else it ended.
    fn cut<const C: usize, B: Buffer>(
        &mut self,
        e: Option<&WsError>,
        session: &Client<C, B>,
    ) -> anyhow::Result<()> {
        self.ws = None;
        let resumable = self.accepted && session.is_resumable() && !session.is_over();
        let Some(token) = self.token.as_ref().filter(|_| resumable) else {
            return Err(lost_relay(&self.target, e));
        };
        let token = token.0.clone();
        let wait = self.next_wait();
        let attempt = attempt(self.relay, self.url.clone(), token, wait);
        self.outage = Some(Outage {
            deadline: Instant::now() + Duration::from_secs(self.hold.into()),
            attempt,
            last: None,
        });
        self.resuming = true;
        let text = format!(
            "relay connection lost; reconnecting (session kept for {})",
            human(self.hold)
        );
        self.show(Why::Relay, &text);
        Ok(())
    }

    /// A new stream, once one could be opened; an error when the session cannot be
    /// resumed (over, refused, or its hold passed).
    async fn reconnect(&mut self) -> anyhow::Result<Stream> {
        loop {
            let Some(outage) = self.outage.as_mut() else {
                return Err(lost_relay(&self.target, None));
            };
            let deadline = outage.deadline;
            let result = tokio::select! {
                r = &mut outage.attempt => Some(r),
                () = tokio::time::sleep_until(deadline) => None,
            };
            let error = match result {
                Some(Ok(ws)) => {
                    self.outage = None;
                    return Ok(ws);
                }
                Some(Err(e)) if e.is_transient() => e,
                Some(Err(e)) => return Err(refused(&self.target, &e)),
                None => {
                    let last = outage.last.as_deref();
                    return Err(gave_up(&self.target, self.hold, last));
                }
            };
            let wait = self.next_wait();
            let token = self.token.as_ref().map_or(String::new(), |t| t.0.clone());
            let next = attempt(self.relay, self.url.clone(), token, wait);
            if let Some(o) = self.outage.as_mut() {
                o.last = Some(error.to_string());
                o.attempt = next;
            }
        }
    }

    /// How long to wait before the next attempt: the agents' backoff, capped at
    /// [`MAX_WAIT`].
    fn next_wait(&mut self) -> Duration {
        let mut r = [0u8; 4];
        // Without randomness the waits are their shortest: still bounded.
        let _ = rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut r);
        capped(&mut self.backoff, u32::from_le_bytes(r))
    }

    /// `n` bytes were typed: while the status line is up, it says how many wait
    /// (they are sent once the session goes on).
    pub fn typed(&mut self, n: usize) {
        if let Some((why, news)) = self.news.clone() {
            self.typed += n;
            self.show(why, &news);
        }
    }

    fn show(&mut self, why: Why, news: &str) {
        self.news = Some((why, news.to_string()));
        let mut text = news.to_string();
        if self.typed > 0 {
            let n = self.typed;
            text.push_str(&format!("; {n} byte{} typed", plural(n)));
        }
        if self.raw {
            text.push_str("; ~. leaves");
        }
        text.push_str("...");
        let cols = terminal::size().map_or(80, |(c, _)| c);
        let line = self.status.show(why, &text, cols);
        draw(&line);
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The next wait of `backoff` (given `random`), at most [`MAX_WAIT`].
fn capped(backoff: &mut Backoff, random: u32) -> Duration {
    Duration::from_millis(backoff.next(random).as_millis()).min(MAX_WAIT)
}

/// Open a new stream for the session at `url` with `token`, after `wait`.
fn attempt(relay: &Relay, url: String, token: String, wait: Duration) -> Attempt<'_> {
    Box::pin(async move {
        tokio::time::sleep(wait).await;
        match tokio::time::timeout(ATTEMPT, relay.resume_stream(&url, &token)).await {
            Ok(r) => r,
            Err(_) => Err(StreamError::Failed(anyhow!(
                "no answer from the relay within {} s",
                ATTEMPT.as_secs()
            ))),
        }
    })
}

/// The relay refused to resume the session on `target`, for good: its reason (the
/// session is over, the token is not the session's, a lock).
fn refused(target: &str, e: &StreamError) -> anyhow::Error {
    anyhow!("cannot resume the session on {target}: {e}")
}

/// No new stream could be opened within the session's hold.
fn gave_up(target: &str, hold: u32, last: Option<&str>) -> anyhow::Error {
    let hold = human(hold);
    match last {
        Some(last) => {
            anyhow!("session on {target} ended: the relay was unreachable for {hold} ({last})")
        }
        None => anyhow!("session on {target} ended: the relay was unreachable for {hold}"),
    }
}

/// `45s`, `10m`, `1h30m`: the hold as the relay words it.
pub fn human(secs: u32) -> String {
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::session::InputBuf;
    use agent_core::wire::{Frame, Kind};

    type Session = Client<1, InputBuf<1024>>;

    /// A session the agent accepted, made resumable (`hold` seconds) if `hold`.
    fn accepted(hold: Option<u32>) -> Session {
        let mut s = Session::new(1, 1024);
        let mut buf = vec![0u8; 1024];
        s.open(Kind::PIPE_SHELL, "", &mut buf).unwrap();
        let mut feed = |f: Frame<'_>| {
            let n = f.encode(&mut buf).unwrap();
            s.handle_frame(&buf[..n]).unwrap();
        };
        if let Some(hold) = hold {
            feed(Frame::Resumable {
                sid: 1,
                hold,
                token: "t0",
            });
        }
        feed(Frame::Accept {
            sid: 1,
            window: 1024,
        });
        s
    }

    /// A link whose stream is down, to a relay at `port` on this host.
    fn link(relay: &Relay, port: u16, hold: u32) -> Link<'_> {
        Link {
            relay,
            target: "gw-01".into(),
            url: format!("wss://127.0.0.1:{port}/v1/stream/s-1"),
            ws: None,
            token: Some(Token("t1".into())),
            hold,
            accepted: true,
            resuming: true,
            outage: None,
            backoff: Backoff::new(),
            status: StatusLine::new(Mode::Log),
            news: None,
            typed: 0,
            raw: false,
            heard: Instant::now(),
        }
    }

    fn relay(port: u16) -> Relay {
        Relay::new(&Config {
            relay: format!("https://127.0.0.1:{port}"),
            api_key: "k".into(),
            ca: None,
            bind: None,
        })
        .unwrap()
    }

    /// A port nothing listens on.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_relay_away_for_the_whole_hold_ends_the_session_saying_so() {
        let port = closed_port();
        let relay = relay(port);
        let mut link = link(&relay, port, 1);
        let first = attempt(&relay, link.url.clone(), "t1".into(), Duration::ZERO);
        link.outage = Some(Outage {
            deadline: Instant::now() + Duration::from_millis(1500),
            attempt: first,
            last: None,
        });
        let mut session = accepted(Some(1));
        let started = Instant::now();
        let e = link.recv(&mut session).await.unwrap_err().to_string();
        // Tried again (the connection was refused) until the hold passed, then one line
        // with the hold and why the last attempt failed.
        assert!(started.elapsed() >= Duration::from_millis(1500), "{e}");
        assert!(
            e.starts_with(&format!(
                "session on gw-01 ended: the relay was unreachable for 1s \
                 (cannot reach the relay at 127.0.0.1:{port}: "
            )),
            "{e}"
        );
        assert!(link.is_down());
    }

    #[test]
    fn a_cut_ends_a_session_that_is_not_resumable() {
        let relay = relay(closed_port());
        let mut link = link(&relay, 1, 0);
        link.token = None;
        let e = link.cut(None, &accepted(None)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "lost the relay (it closed the connection); the session on gw-01 ended"
        );
        assert!(link.outage.is_none());
    }

    #[test]
    fn holds_read_as_the_relay_words_them() {
        assert_eq!(human(45), "45s");
        assert_eq!(human(600), "10m");
        assert_eq!(human(90), "1m30s");
        assert_eq!(human(3600), "1h");
        assert_eq!(human(5400), "1h30m");
    }

    #[test]
    fn a_session_that_cannot_be_resumed_ends_with_the_relays_reason() {
        let gone = StreamError::Refused {
            status: 410,
            message: "the session ended: the client was unreachable for 10m".into(),
        };
        assert!(!gone.is_transient());
        assert_eq!(
            refused("gw-01", &gone).to_string(),
            "cannot resume the session on gw-01: the session ended: the client was \
             unreachable for 10m"
        );
        let bad = StreamError::Refused {
            status: 401,
            message: "invalid session token".into(),
        };
        assert!(!bad.is_transient());
        assert_eq!(
            refused("gw-01", &bad).to_string(),
            "cannot resume the session on gw-01: invalid session token"
        );
        assert_eq!(
            gave_up("gw-01", 600, None).to_string(),
            "session on gw-01 ended: the relay was unreachable for 10m"
        );
        assert_eq!(
            gave_up("gw-01", 600, Some("relay answered 503 Service Unavailable")).to_string(),
            "session on gw-01 ended: the relay was unreachable for 10m \
             (relay answered 503 Service Unavailable)"
        );
    }

    #[test]
    fn waits_start_short_and_stay_under_five_seconds() {
        let mut b = Backoff::new();
        assert_eq!(capped(&mut b, 0), Duration::from_millis(250));
        assert_eq!(
            capped(&mut Backoff::new(), u32::MAX),
            Duration::from_millis(500)
        );
        let waits: Vec<Duration> = (0..20).map(|_| capped(&mut b, u32::MAX)).collect();
        assert_eq!(waits[..3], [1, 2, 4].map(Duration::from_secs));
        assert!(waits[3..].iter().all(|w| *w == MAX_WAIT), "{waits:?}");
    }
}
