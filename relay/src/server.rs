//! The TLS listener that serves the API and WebSockets, and its admission control.
//!
//! A connection is *unauthenticated* from `accept` until it is a session stream (the
//! stream endpoint upgrades only after redeeming its token), or an agent link that
//! authenticated (`agent_link` says so through the request's [`Admitted`]), or until
//! it closes. Unauthenticated connections are capped in total and per source
//! (`[connections]` in the config); one over a cap is closed at once, never queued,
//! so a flood of half-open connections cannot exhaust file descriptors and lock out
//! agents and users. Each holds a [`Permit`] that frees its place when dropped, so
//! no exit path can leak one.
//!
//! Deadlines, so that a silent peer cannot keep its place: TLS and the first
//! request's headers within `handshake_timeout` of `accept`; each request's body
//! read and answer made within `handshake_timeout` of its headers; a WebSocket
//! upgrade completed within `handshake_timeout` of its `101`; the next request's
//! headers within `keepalive_timeout` of the last answer (hyper's header timer); and
//! whatever it does, a connection still unauthenticated `unauthenticated_lifetime`
//! after `accept` is closed (one that pipelines requests and never reads the answers
//! stalls hyper before its header timer starts).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;
use tower_service::Service;
use tracing::{debug, info, warn};

use crate::api::{self, ApiConfig, AppState};
use crate::audit::{self, Audit, Event};
use crate::config::Connections;
use crate::hub::Hub;
use crate::live::Live;
use crate::policy::{self, Loaded, Policies};
use crate::record::Recordings;
use crate::store::{unix_now, Store};
use crate::tls;
use crate::Error;

/// How often ended sessions past their retention are deleted while serving.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How often the relay records that it runs ([`Store::set_alive`]): a restarted
/// relay's held sessions lose at most this much of their hold to it.
const ALIVE_EVERY: Duration = Duration::from_secs(5);
/// Bytes read from a connection's socket at once, under TLS: one largest TLS record
/// (16 KiB of data, 256 bytes of AEAD expansion, a 5-byte header) and a little, so a
/// record is read with one `recv`. Every connection holds one (a relay holds
/// thousands): at 1000 sessions 32 KiB cost about 25 MiB over none, 17 KiB about
/// 17 MiB (`bench -- scale`).
const READ_BUFFER: usize = 17 * 1024;
/// Pause after a failed `accept` (EMFILE and friends) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How `sesame-relay serve` is configured.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory (store, generated certificates).
    pub data_dir: PathBuf,
    /// Certificate chain and key to use instead of the generated ones.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// Extra DNS names or IPs for the generated server certificate.
    pub names: Vec<String>,
    /// How long a session token stays valid.
    pub token_ttl: Duration,
    /// Session and connection limits, store retention (from `--config`, then flags).
    pub limits: crate::config::Limits,
    /// Directory of the Cedar policy files (`*.cedar`) [default: `DATA_DIR/policies`].
    pub policy_dir: Option<PathBuf>,
}

/// A bound relay, ready to run.
pub struct Server {
    /// The data directory's lock, held while this relay runs ([`lock_data_dir`]).
    _lock: std::fs::File,
    listener: TcpListener,
    tls: tls::Configs,
    state: AppState,
    admission: Arc<Admission>,
    /// CA certificate that clients should trust (when self-signed).
    pub ca_path: Option<PathBuf>,
}

/// Take the data directory for this relay alone: a second relay on the same store
/// would end the first one's sessions as left open by a previous run, and take
/// its resumable sessions up a second time (two relays each routing the same
/// session). An exclusive lock on `relay.lock`, which the kernel releases when
/// the relay exits, however it exits (`kill -9` included); the file says which
/// process holds it.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join("relay.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let pid = holder.trim();
            let who = if pid.is_empty() {
                String::new()
            } else {
                format!(" (process {pid})")
            };
            return Err(Error::Invalid(format!(
                "another relay is serving from {}{who}: stop it first",
                dir.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
    }
    use std::io::{Seek, Write};
    let note = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    note.map_err(|e| Error::io(&path, e))?;
    Ok(file)
}

impl Server {
    /// Open the store (ending sessions the previous run left open, pruning old
    /// ones), prepare TLS and bind the listener.
    pub async fn bind(config: ServerConfig) -> Result<Server, Error> {
        let lock = lock_data_dir(&config.data_dir)?;
        let store = Store::open(&config.data_dir).await?;
        // When the previous run stopped, about: its held sessions' holds count
        // from there. This run says it runs once it took them up (below): a start
        // that fails must not move it.
        let stopped_at = store.last_alive().await?;
        let ended = store.end_interrupted_sessions().await?;
        if ended > 0 {
            info!("{ended} session(s) left open by the previous run recorded as ended");
        }
        // Resumable ones go on, if their agent and client come back in time.
        let resumable = store.interrupted_resumable().await?;
        let taken_up: Vec<String> = resumable.iter().map(|(s, _)| s.id.clone()).collect();
        prune(&store, config.limits.session_retention).await;
        let policy_dir = config
            .policy_dir
            .clone()
            .unwrap_or_else(|| config.data_dir.join("policies"));
        let policies = Policies::load(&policy_dir)
            .map_err(|e| Error::Invalid(format!("{}: {e}", policy_dir.display())))?;
        let loaded = policies.current();
        store
            .record_policy_set(&loaded.hash, "start", &loaded.files)
            .await?;
        info!(
            dir = %policy_dir.display(),
            version = loaded.version,
            hash = %&loaded.hash[..12],
            policies = loaded.ids.len(),
            "policies loaded"
        );
        // The audit log: its writer, and a signed checkpoint of it as it is at start.
        let audit_key = Arc::new(audit::signing_key(&config.data_dir)?);
        let audit = Audit::start(store.clone());
        audit
            .record(Event::new("relay", "relay.start", "relay").detail(
                serde_json::json!({ "policy_version": loaded.version, "policy_hash": loaded.hash }),
            ))
            .await
            .map_err(|e| Error::Invalid(e.to_string()))?;
        audit::checkpoint(&store, &audit_key).await?;
        let recordings = Arc::new(Recordings::new(&config.data_dir, &config.limits.recordings));
        recover_recordings(&recordings, &audit, taken_up).await;
        let (cert, key, ca_path) = match &config.cert {
            Some((c, k)) => (c.clone(), k.clone(), None),
            None => {
                let files = tls::ensure_self_signed(&config.data_dir, &config.names)?;
                (files.cert, files.key, Some(files.ca))
            }
        };
        let tls = tls::server_configs(&cert, &key)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| Error::io(config.listen.to_string(), e))?;
        let state = AppState {
            store,
            hub: Arc::new(Hub::default()),
            config: Arc::new(ApiConfig {
                token_ttl: config.token_ttl,
                limits: config.limits.clone(),
            }),
            policies: Arc::new(policies),
            live: Arc::new(Live::default()),
            audit,
            audit_key,
            recordings,
        };
        // New sessions are numbered past every id an agent may still hold.
        for (agent_id, sid) in state.store.highest_agent_sids().await? {
            state.hub.ids_after(&agent_id, sid);
        }
        let revived = crate::stream::revive::revive_all(&state, resumable, stopped_at).await;
        if revived > 0 {
            info!("{revived} resumable session(s) taken up again");
        }
        state.store.set_alive(unix_now()).await?;
        Ok(Server {
            _lock: lock,
            listener,
            tls,
            admission: Arc::new(Admission::new(&config.limits.connections)),
            state,
            ca_path,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until the task is cancelled.
    pub async fn run(self) -> Result<(), Error> {
        let app = api::router(self.state.clone());
        let limits = self.state.config.limits.connections.clone();
        let retention = self.state.config.limits.session_retention;
        let mut checkpoints = tokio::time::interval_at(
            Instant::now() + audit::CHECKPOINT_EVERY,
            audit::CHECKPOINT_EVERY,
        );
        let mut alive = tokio::time::interval_at(Instant::now() + ALIVE_EVERY, ALIVE_EVERY);
        alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pruning = tokio::time::interval_at(Instant::now() + PRUNE_EVERY, PRUNE_EVERY);
        pruning.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut accept_failing = false;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| Error::io("SIGHUP", e))?;
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = hangup.recv() => {
                    let state = self.state.clone();
                    tokio::spawn(async move { reload_policies(&state, "SIGHUP").await });
                    continue;
                }
                _ = alive.tick() => {
                    let store = self.state.store.clone();
                    tokio::spawn(async move {
                        if let Err(e) = store.set_alive(unix_now()).await {
                            warn!("cannot record that the relay runs: {e}");
                        }
                    });
                    continue;
                }
                _ = pruning.tick() => {
                    let store = self.state.store.clone();
                    tokio::spawn(async move { prune(&store, retention).await });
                    let (recordings, live) = (self.state.recordings.clone(), self.state.live.clone());
                    tokio::task::spawn_blocking(move || prune_recordings(&recordings, &live));
                    continue;
                }
                _ = checkpoints.tick() => {
                    let (store, key) = (self.state.store.clone(), self.state.audit_key.clone());
                    tokio::spawn(async move {
                        if let Err(e) = audit::checkpoint(&store, &key).await {
                            warn!("cannot sign an audit checkpoint: {e}");
                        }
                    });
                    continue;
                }
            };
            let (tcp, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the caps keep
                    // this from happening unless the fd limit is set too low.
                    if !accept_failing {
                        warn!("accept failed: {e} (backing off; is LimitNOFILE too low for [connections]?)");
                    }
                    accept_failing = true;
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            accept_failing = false;
            let permit = match self.admission.admit(peer.ip()) {
                Ok(p) => p,
                Err(refused) => {
                    debug!(%peer, "connection refused: {refused}");
                    drop(tcp);
                    continue;
                }
            };
            let conn = Connection {
                peer,
                tls: self.tls.clone(),
                app: app.clone(),
                limits: limits.clone(),
                accepted: Instant::now(),
            };
            tokio::spawn(conn.serve(tcp, permit));
        }
    }
}

/// Finish sessions whose token expired unused and delete old ended ones; a failure
/// is logged, and retried at the next round.
async fn prune(store: &Store, retention: Option<Duration>) {
    match store.prune_sessions(retention).await {
        Ok(0) => {}
        Ok(n) => info!("deleted {n} ended session(s) past their retention"),
        Err(e) => warn!("pruning old sessions failed: {e}"),
    }
}

/// Delete the recordings past their retention, but never a live session's.
fn prune_recordings(recordings: &Recordings, live: &Live) {
    let n = recordings.prune(|id| live.contains(id));
    if n > 0 {
        info!("deleted {n} recording(s) past their retention");
    }
}

/// At start: make the recordings directory, prune it, and compress the recordings
/// a stopped relay left uncompressed, each with a `recording.recovered` event
/// holding its SHA-256 (their sessions' `session.end` never had it).
async fn recover_recordings(recordings: &Arc<Recordings>, audit: &Audit, taken_up: Vec<String>) {
    if let Err(e) = recordings.prepare() {
        warn!("recordings: {e}; sessions are refused while it lasts (recordings mode strict)");
    }
    let r = recordings.clone();
    let recovered = tokio::task::spawn_blocking(move || {
        prune_recordings(&r, &Live::default());
        r.recover_but(&taken_up)
    })
    .await
    .unwrap_or_default();
    for (id, outcome) in recovered {
        recovered_event(audit, id, outcome).await;
    }
}

/// A recording compressed after its relay stopped goes on record, with its SHA-256
/// (its session's `session.end` never had it).
pub(crate) async fn recovered_event(
    audit: &Audit,
    id: String,
    outcome: Result<crate::record::Finished, String>,
) {
    let detail = match outcome {
        Ok(f) => serde_json::json!({ "file": f.file, "sha256": f.sha256 }),
        Err(e) => {
            warn!(session = %id, "{e}");
            serde_json::json!({ "error": e })
        }
    };
    let event = Event::new("relay", "recording.recovered", id).detail(detail);
    if let Err(e) = audit.record(event).await {
        warn!("{e}");
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum Refused {
    /// `max_unauthenticated` reached.
    #[error("too many unauthenticated connections")]
    Total,
    /// `max_unauthenticated_per_ip` reached for this source.
    #[error("too many unauthenticated connections from this address")]
    Source,
}

/// Counts of unauthenticated connections, in total and per source.
#[derive(Debug)]
struct Admission {
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// The source a per-address cap applies to: the IPv4 address (also when mapped into
/// IPv6), or the IPv6 /64, which one host usually holds whole.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let net = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(net.into())
        }
        v4 => v4,
    }
}

impl Admission {
    fn new(limits: &Connections) -> Admission {
        Admission {
            max_total: limits.max_unauthenticated,
            max_per_source: limits.max_unauthenticated_per_ip,
            counts: Mutex::new(Counts::default()),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counts stay consistent even if a holder panicked: each update is one
        // statement.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take a place for a new connection from `ip`, or say which cap is full.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refused> {
        let source = source_of(ip);
        let mut c = self.counts();
        if c.total >= self.max_total {
            return Err(Refused::Total);
        }
        let n = c.by_source.entry(source).or_insert(0);
        if *n >= self.max_per_source {
            return Err(Refused::Source);
        }
        *n += 1;
        c.total += 1;
        Ok(Permit {
            admission: self.clone(),
            source,
        })
    }

    #[cfg(test)]
    fn total(&self) -> usize {
        self.counts().total
    }
}

/// One unauthenticated connection's place; dropping it frees the place.
#[derive(Debug)]
struct Permit {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.admission.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&self.source);
            }
        }
    }
}

/// What the request handlers tell the connection's driver.
#[derive(Debug)]
struct Shared {
    /// The connection's place while it is unauthenticated; `None` once it is not.
    permit: Mutex<Option<Permit>>,
    /// A request's headers arrived.
    request: Notify,
    /// A `101 Switching Protocols` was answered.
    upgrading: Notify,
}

impl Shared {
    /// The connection authenticated: it stops counting.
    fn authenticated(&self) {
        drop(self.permit.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// It still counts as unauthenticated.
    fn unauthenticated(&self) -> bool {
        self.permit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

/// A request's connection, for a handler that authenticates it in-band (the agent
/// link): the connection counts as unauthenticated until [`Admitted::authenticated`]
/// or until this and the connection's task are both gone.
#[derive(Debug, Clone)]
pub struct Admitted(Arc<Shared>);

impl Admitted {
    /// The connection authenticated: it stops counting against the caps.
    pub fn authenticated(&self) {
        self.0.authenticated();
    }
}

/// An accepted TCP connection, to be served.
struct Connection {
    peer: SocketAddr,
    tls: tls::Configs,
    app: axum::Router,
    limits: Connections,
    accepted: Instant,
}

impl Connection {
    /// TLS, then HTTP/1.1 until the connection closes or upgrades. `permit` is freed
    /// when this returns, unless a handler freed it earlier.
    async fn serve(self, tcp: TcpStream, permit: Permit) {
        let Connection {
            peer,
            tls,
            app,
            limits,
            accepted,
        } = self;
        let _ = tcp.set_nodelay(true);
        let shared = Arc::new(Shared {
            permit: Mutex::new(Some(permit)),
            request: Notify::new(),
            upgrading: Notify::new(),
        });
        let first_deadline = accepted + limits.handshake_timeout;
        // The record size is chosen from the ClientHello (`tls::Configs::choose`).
        // rustls reads at most 4 KiB per `read` into an emptied buffer: a buffer under
        // it takes what the socket holds (up to several records) in one `recv`.
        let tcp = BufReader::with_capacity(READ_BUFFER, tcp);
        let handshake = async {
            let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
            let config = tls.choose(&start.client_hello());
            start.into_stream(config).await
        };
        let tls = match tokio::time::timeout_at(first_deadline, handshake).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(%peer, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let request_timeout = limits.handshake_timeout;
        let svc = {
            let shared = shared.clone();
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req.extensions_mut().insert(Admitted(shared.clone()));
                shared.request.notify_one();
                let mut app = app.clone();
                let shared = shared.clone();
                async move {
                    let path = req.uri().path();
                    // The session stream upgrades only with a redeemed token, a join
                    // only for an authenticated observer.
                    let stream = path.starts_with("/v1/stream/")
                        || (path.starts_with("/v1/sessions/") && path.ends_with("/join"));
                    let resp = match tokio::time::timeout(request_timeout, app.call(req)).await {
                        Ok(r) => r?,
                        Err(_) => timed_out(),
                    };
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        if stream {
                            shared.authenticated();
                        }
                        shared.upgrading.notify_one();
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                }
            })
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.keepalive_timeout)
            .serve_connection(TokioIo::new(tls), svc)
            .with_upgrades();
        tokio::pin!(conn);
        let mut first_request = false;
        let mut upgrade_deadline = None;
        let lifetime_end = accepted + limits.unauthenticated_lifetime;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!(%peer, "connection ended: {e}");
                    }
                    break;
                }
                _ = shared.request.notified(), if !first_request => first_request = true,
                _ = tokio::time::sleep_until(first_deadline), if !first_request => {
                    debug!(%peer, "no request within the handshake timeout");
                    return;
                }
                _ = tokio::time::sleep_until(lifetime_end), if shared.unauthenticated() => {
                    debug!(%peer, "still unauthenticated at the end of its lifetime");
                    return;
                }
                _ = shared.upgrading.notified(), if upgrade_deadline.is_none() => {
                    upgrade_deadline = Some(Instant::now() + limits.handshake_timeout);
                }
                _ = tokio::time::sleep_until(upgrade_deadline.unwrap_or(first_deadline)),
                    if upgrade_deadline.is_some() =>
                {
                    debug!(%peer, "WebSocket upgrade not completed in time");
                    return;
                }
            }
        }
    }
}

/// The answer to a request that took longer than the handshake timeout (a slow
/// body); the connection closes after it.
fn timed_out() -> Response {
    (
        StatusCode::REQUEST_TIMEOUT,
        [(header::CONNECTION, "close")],
        axum::Json(serde_json::json!({ "error": "request timed out" })),
    )
        .into_response()
}

/// Read the policy directory again; the new set takes effect only if it validates.
/// `by` says who asked (`SIGHUP`, a user). Logged either way.
pub async fn reload_policies(state: &AppState, by: &str) -> Result<Arc<Loaded>, policy::Refused> {
    let policies = state.policies.clone();
    let result = tokio::task::spawn_blocking(move || policies.reload())
        .await
        .unwrap_or_else(|e| Err(policy::Refused(vec![format!("reload failed: {e}")])));
    match &result {
        Ok(loaded) => {
            if let Err(e) = state
                .store
                .record_policy_set(&loaded.hash, by, &loaded.files)
                .await
            {
                warn!("cannot record policy set version {}: {e}", loaded.version);
            }
            info!(by, version = loaded.version, hash = %&loaded.hash[..12], policies = loaded.ids.len(), "policies reloaded");
        }
        Err(e) => warn!(by, "{e}; the policies in force stay"),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_relay_at_a_time_holds_a_data_directory() {
        let dir = std::env::temp_dir().join(format!("sesame-lock-{}", std::process::id()));
        let first = lock_data_dir(&dir).unwrap();
        let again = lock_data_dir(&dir).unwrap_err().to_string();
        let expected = format!(
            "another relay is serving from {} (process {}): stop it first",
            dir.display(),
            std::process::id()
        );
        assert_eq!(again, expected);
        drop(first);
        let _next = lock_data_dir(&dir).expect("free once the first is gone");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn admission(total: usize, per_ip: usize) -> Arc<Admission> {
        Arc::new(Admission::new(&Connections {
            max_unauthenticated: total,
            max_unauthenticated_per_ip: per_ip,
            ..Connections::default()
        }))
    }

    #[test]
    fn caps_per_source_and_in_total_and_permits_free_on_drop() {
        let a = admission(3, 2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let p1 = a.admit(ip("10.0.0.1")).unwrap();
        let p2 = a.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")).unwrap_err(), Refused::Source);
        let p3 = a.admit(ip("2001:db8::1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.2")).unwrap_err(), Refused::Total);
        drop(p1);
        let p4 = a.admit(ip("10.0.0.1")).unwrap();
        drop((p2, p3, p4));
        assert_eq!(a.total(), 0);
        assert!(a.counts().by_source.is_empty());
        // One IPv6 /64 is one source.
        let b = admission(10, 1);
        let _q = b.admit(ip("2001:db8::1")).unwrap();
        assert_eq!(b.admit(ip("2001:db8::2")).unwrap_err(), Refused::Source);
        b.admit(ip("2001:db8:0:1::1")).unwrap();
    }

    /// A relay on loopback with 1 s handshake deadlines, a 2 s keep-alive and 8 s for
    /// a connection to authenticate.
    async fn relay(tag: &str) -> (SocketAddr, tokio_rustls::TlsConnector, PathBuf) {
        let dir = std::env::temp_dir().join(format!("sesame-server-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut limits = crate::config::Limits::default();
        limits.connections.handshake_timeout = Duration::from_secs(1);
        limits.connections.agent_handshake_timeout = Duration::from_secs(1);
        limits.connections.keepalive_timeout = Duration::from_secs(2);
        // Far from the other deadlines, so that each case is closed by its own.
        limits.connections.unauthenticated_lifetime = Duration::from_secs(8);
        let server = Server::bind(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.clone(),
            cert: None,
            names: Vec::new(),
            token_ttl: Duration::from_secs(60),
            limits,
            policy_dir: None,
        })
        .await
        .unwrap();
        let addr = server.local_addr().unwrap();
        let pem = std::fs::read(server.ca_path.as_ref().unwrap()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &pem[..]) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio::spawn(server.run());
        (addr, Arc::new(tls).into(), dir)
    }

    /// A TLS connection that has sent `bytes`.
    async fn send(
        addr: SocketAddr,
        tls: &tokio_rustls::TlsConnector,
        bytes: &[u8],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        use tokio::io::AsyncWriteExt;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut s = tls.connect(name, tcp).await.unwrap();
        s.write_all(bytes).await.unwrap();
        s.flush().await.unwrap();
        s
    }

    /// Everything the relay sends until it closes, and when it closed (from `t0`).
    async fn until_closed(
        mut s: tokio_rustls::client::TlsStream<TcpStream>,
        t0: Instant,
    ) -> (String, Duration) {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => panic!("still open after 10 s: {}", String::from_utf8_lossy(&got)),
            }
        }
        (String::from_utf8_lossy(&got).into_owned(), t0.elapsed())
    }

    #[tokio::test]
    async fn slow_requests_silent_agents_and_idle_connections_are_closed() {
        let (addr, tls, dir) = relay("slow").await;
        let t0 = Instant::now();
        let (headers, body, idle, busy, agent) = tokio::join!(
            // Headers that never end.
            async {
                let s = send(
                    addr,
                    &tls,
                    b"GET /v1/agents HTTP/1.1\r\nHost: x\r\nX-Slow: ",
                )
                .await;
                until_closed(s, t0).await
            },
            // A body that never ends.
            async {
                let req =
                    b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_x\r\n\
                            Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{";
                until_closed(send(addr, &tls, req).await, t0).await
            },
            // One request answered, then nothing: kept alive, then closed.
            async {
                let s = send(addr, &tls, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
                until_closed(s, t0).await
            },
            // Request after request, answers never read, never authenticated.
            async {
                use tokio::io::AsyncWriteExt;
                let mut s = send(addr, &tls, b"").await;
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(15) {
                    let req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
                    if s.write_all(req).await.is_err() || s.flush().await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                until_closed(s, t0).await
            },
            // An agent's WebSocket that never says Hello.
            async {
                let req = b"GET /v1/agent HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
                            Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
                until_closed(send(addr, &tls, req).await, t0).await
            },
        );
        let within = |what: &str, (text, at): &(String, Duration), lo: u64, hi: u64| {
            assert!(
                (Duration::from_millis(lo)..Duration::from_millis(hi)).contains(at),
                "{what} closed after {at:?}: {text}"
            );
        };
        // Never before the deadline; after it, as soon as a loaded machine manages.
        within("unfinished headers", &headers, 900, 5000);
        assert!(!headers.0.contains("200 OK"), "{}", headers.0);
        within("unfinished body", &body, 900, 5000);
        assert!(body.0.starts_with("HTTP/1.1 408"), "{}", body.0);
        within("idle keep-alive", &idle, 1900, 6000);
        assert!(idle.0.starts_with("HTTP/1.1 200 OK"), "{}", idle.0);
        within("busy but unauthenticated", &busy, 7900, 12000);
        assert!(busy.0.starts_with("HTTP/1.1 200 OK"), "{}", busy.0);
        within("silent agent", &agent, 900, 5000);
        assert!(agent.0.starts_with("HTTP/1.1 101"), "{}", agent.0);
        let _ = std::fs::remove_dir_all(dir);
    }
}
