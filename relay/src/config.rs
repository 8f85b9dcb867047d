//! The relay's configuration file (`sesame-relay serve --config FILE`, TOML).
//!
//! ```toml
//! [limits]
//! rate = "200kbit"              # per session, each direction; "unlimited" lifts it
//! max_sessions_per_agent = 20   # an agent's smaller advertised capacity wins
//! max_sessions = 1000           # the whole relay ("region")
//! idle_timeout = "20m"          # no input or output for this long ends a session
//! max_duration = "none"         # e.g. "8h"
//! resume_window = "10m"         # a shell, exec or forward session survives its client or
//!                               # its agent being away this long; "none": not at all
//!
//! [agents.gw-01]                # per-agent override
//! rate = "unlimited"
//!
//! [users.alice]                 # per-user override (wins over the agent's)
//! rate = "1mbit"
//!
//! [connections]                 # connections that have not authenticated yet
//! max_unauthenticated = 512     # the whole relay; more are closed at once
//! max_unauthenticated_per_ip = 64   # per IPv4 address or IPv6 /64
//! handshake_timeout = "10s"     # TLS and the first request from accept; every
//!                               # request's body and answer once its headers came
//! agent_handshake_timeout = "10s"   # an agent's WebSocket: Hello and Auth
//! keepalive_timeout = "60s"     # an HTTP connection idle between requests
//! unauthenticated_lifetime = "2m"   # a connection still unauthenticated after this
//!                               # is closed, however busy (API clients reconnect)
//!
//! [store]
//! session_retention = "90d"     # ended sessions older than this are deleted; "none" keeps them
//!
//! [recordings]                  # shell, exec and forward sessions (docs/recordings.md)
//! dir = "recordings"            # relative to the data directory unless absolute
//! mode = "strict"               # a session that cannot be recorded is refused or ended;
//!                               # "best-effort" goes on unrecorded; "off" records nothing
//! input = false                 # also record what users type (it holds passwords)
//! retention = "90d"             # recordings older than this are deleted; "none" keeps them
//! ```
//!
//! A connection counts as unauthenticated from `accept` until it is a session stream
//! (its token redeemed), or an agent link that authenticated, or until it closes. The relay's file-descriptor
//! limit (`LimitNOFILE`) must leave room for `max_unauthenticated` plus every agent
//! and session.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::Error;

/// A session rate in bytes per second; `None` is unlimited.
pub type Rate = Option<u32>;

/// Parse `200kbit`, `1mbit`, `50kB`, `25000` (bytes per second) or `unlimited`.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid rate '{s}'"))?;
    let bytes_per_sec = match unit.trim() {
        "" | "B" => n,
        "kB" | "KB" => n * 1e3,
        "MB" => n * 1e6,
        "bit" => n / 8.0,
        "kbit" => n * 1e3 / 8.0,
        "mbit" | "Mbit" => n * 1e6 / 8.0,
        "gbit" | "Gbit" => n * 1e9 / 8.0,
        u => {
            return Err(format!(
            "invalid rate unit '{u}' in '{s}' (use bit, kbit, mbit, gbit, B, kB, MB or unlimited)"
        ))
        }
    };
    if !(1.0..=4e9).contains(&bytes_per_sec) {
        return Err(format!("rate '{s}' is out of range"));
    }
    Ok(Some(bytes_per_sec.round() as u32))
}

/// Parse `90s`, `20m`, `3h`, `1d`, or `none`.
pub fn parse_duration(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration '{s}'"))?;
    let too_long = || format!("duration '{s}' is too long");
    let secs = match unit {
        "s" | "" => n,
        "m" => n.checked_mul(60).ok_or_else(too_long)?,
        "h" => n.checked_mul(3600).ok_or_else(too_long)?,
        "d" => n.checked_mul(86400).ok_or_else(too_long)?,
        u => {
            return Err(format!(
                "invalid duration unit '{u}' in '{s}' (use s, m, h, d or none)"
            ))
        }
    };
    if secs == 0 {
        return Err(format!("duration '{s}' must be positive (or none)"));
    }
    // A thousand years is as good as for ever, and keeps unix-time sums in range.
    if secs > 1000 * 365 * 86400 {
        return Err(too_long());
    }
    Ok(Some(Duration::from_secs(secs)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    rate: Option<String>,
    max_sessions_per_agent: Option<u16>,
    max_sessions: Option<usize>,
    idle_timeout: Option<String>,
    max_duration: Option<String>,
    resume_window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConnections {
    max_unauthenticated: Option<usize>,
    max_unauthenticated_per_ip: Option<usize>,
    handshake_timeout: Option<String>,
    agent_handshake_timeout: Option<String>,
    keepalive_timeout: Option<String>,
    unauthenticated_lifetime: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStore {
    session_retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRecordings {
    dir: Option<PathBuf>,
    mode: Option<String>,
    input: Option<bool>,
    retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOverride {
    rate: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    agents: BTreeMap<String, FileOverride>,
    #[serde(default)]
    users: BTreeMap<String, FileOverride>,
    #[serde(default)]
    connections: FileConnections,
    #[serde(default)]
    store: FileStore,
    #[serde(default)]
    recordings: FileRecordings,
}

/// What happens when a session cannot be recorded (`[recordings] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingMode {
    /// Fail closed: a session whose recording cannot be made is refused, and one
    /// whose recording breaks ends, with the reason.
    Strict,
    /// The session goes on unrecorded, with a warning in the relay's log and the
    /// reason in its audit `session.end` event.
    BestEffort,
    /// Nothing is recorded.
    Off,
}

impl RecordingMode {
    /// Parse `strict`, `best-effort` or `off`.
    pub fn parse(s: &str) -> Result<RecordingMode, String> {
        match s.trim() {
            "strict" => Ok(RecordingMode::Strict),
            "best-effort" => Ok(RecordingMode::BestEffort),
            "off" => Ok(RecordingMode::Off),
            other => Err(format!(
                "invalid recordings.mode '{other}' (use strict, best-effort or off)"
            )),
        }
    }
}

/// How sessions are recorded (the `[recordings]` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recordings {
    /// Where the recordings go; a relative path is taken from the data directory.
    pub dir: PathBuf,
    /// Strict (the default), best-effort or off.
    pub mode: RecordingMode,
    /// Record what the user types too (`i` events); off by default, as input holds
    /// passwords.
    pub input: bool,
    /// Recordings older than this are deleted; `None` keeps them.
    pub retention: Option<Duration>,
}

impl Default for Recordings {
    fn default() -> Self {
        Recordings {
            dir: PathBuf::from("recordings"),
            mode: RecordingMode::Strict,
            input: false,
            retention: Some(Duration::from_secs(90 * 86400)),
        }
    }
}

/// Limits on connections before they authenticate (the `[connections]` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connections {
    /// Unauthenticated connections on the relay at most; more are closed at once.
    pub max_unauthenticated: usize,
    /// Unauthenticated connections per source (IPv4 address, IPv6 /64) at most.
    pub max_unauthenticated_per_ip: usize,
    /// TLS handshake and first request from `accept`; each request's headers and
    /// body once it starts.
    pub handshake_timeout: Duration,
    /// An agent's WebSocket must authenticate (`Hello`, `Auth`) within this.
    pub agent_handshake_timeout: Duration,
    /// An HTTP connection idle between requests is closed after this.
    pub keepalive_timeout: Duration,
    /// A connection still unauthenticated this long after `accept` is closed, busy
    /// or not (one that pipelines requests and never reads the answers included).
    pub unauthenticated_lifetime: Duration,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            max_unauthenticated: 512,
            max_unauthenticated_per_ip: 64,
            handshake_timeout: Duration::from_secs(10),
            agent_handshake_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            unauthenticated_lifetime: Duration::from_secs(120),
        }
    }
}

/// Limits as the relay applies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Default session rate.
    pub rate: Rate,
    /// Sessions per agent at most.
    pub max_sessions_per_agent: u16,
    /// Sessions on this relay at most.
    pub max_sessions: usize,
    /// A session with no input or output for this long ends.
    pub idle_timeout: Option<Duration>,
    /// A session ends after this long, whatever it does.
    pub max_duration: Option<Duration>,
    /// A resumable session survives a side being away this long (`None`: sessions
    /// are not resumable).
    pub resume_window: Option<Duration>,
    /// Per-agent rate overrides, by agent name.
    pub agent_rates: BTreeMap<String, Rate>,
    /// Per-user rate overrides, by user name (they win over the agent's).
    pub user_rates: BTreeMap<String, Rate>,
    /// Connections that have not authenticated yet.
    pub connections: Connections,
    /// Ended sessions older than this are deleted from the store; `None` keeps them.
    pub session_retention: Option<Duration>,
    /// Session recordings.
    pub recordings: Recordings,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rate: Some(agent_core::limits::DEFAULT_RATE),
            max_sessions_per_agent: 20,
            max_sessions: 1000,
            idle_timeout: Some(Duration::from_secs(20 * 60)),
            max_duration: None,
            resume_window: Some(Duration::from_secs(10 * 60)),
            agent_rates: BTreeMap::new(),
            user_rates: BTreeMap::new(),
            connections: Connections::default(),
            session_retention: Some(Duration::from_secs(90 * 86400)),
            recordings: Recordings::default(),
        }
    }
}

/// A duration that must be set (`none` is refused), for `setting`.
fn required_duration(setting: &str, s: &str) -> Result<Duration, String> {
    parse_duration(s)?.ok_or_else(|| format!("{setting} cannot be none"))
}

/// A count that must be positive, for `setting`.
fn positive(setting: &str, n: usize) -> Result<usize, String> {
    if n == 0 {
        return Err(format!("{setting} must be at least 1"));
    }
    Ok(n)
}

impl Limits {
    /// Read a configuration file; every error names the file and the setting.
    pub fn load(path: &Path) -> Result<Limits, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Limits::parse(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    }

    /// Parse the TOML text of a configuration file.
    pub fn parse(text: &str) -> Result<Limits, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        let mut l = Limits::default();
        if let Some(r) = &file.limits.rate {
            l.rate = parse_rate(r)?;
        }
        if let Some(n) = file.limits.max_sessions_per_agent {
            l.max_sessions_per_agent = n;
        }
        if let Some(n) = file.limits.max_sessions {
            l.max_sessions = n;
        }
        if let Some(d) = &file.limits.idle_timeout {
            l.idle_timeout = parse_duration(d)?;
        }
        if let Some(d) = &file.limits.max_duration {
            l.max_duration = parse_duration(d)?;
        }
        if let Some(d) = &file.limits.resume_window {
            l.resume_window = parse_duration(d)?;
        }
        let (c, fc) = (&mut l.connections, &file.connections);
        if let Some(n) = fc.max_unauthenticated {
            c.max_unauthenticated = positive("connections.max_unauthenticated", n)?;
        }
        if let Some(n) = fc.max_unauthenticated_per_ip {
            c.max_unauthenticated_per_ip = positive("connections.max_unauthenticated_per_ip", n)?;
        }
        if let Some(d) = &fc.handshake_timeout {
            c.handshake_timeout = required_duration("connections.handshake_timeout", d)?;
        }
        if let Some(d) = &fc.agent_handshake_timeout {
            c.agent_handshake_timeout =
                required_duration("connections.agent_handshake_timeout", d)?;
        }
        if let Some(d) = &fc.keepalive_timeout {
            c.keepalive_timeout = required_duration("connections.keepalive_timeout", d)?;
        }
        if let Some(d) = &fc.unauthenticated_lifetime {
            c.unauthenticated_lifetime =
                required_duration("connections.unauthenticated_lifetime", d)?;
        }
        if c.unauthenticated_lifetime <= c.handshake_timeout.max(c.agent_handshake_timeout) {
            return Err(
                "connections.unauthenticated_lifetime must be longer than the handshake timeouts"
                    .into(),
            );
        }
        if let Some(d) = &file.store.session_retention {
            l.session_retention = parse_duration(d)?;
        }
        let (r, fr) = (&mut l.recordings, &file.recordings);
        if let Some(dir) = &fr.dir {
            if dir.as_os_str().is_empty() {
                return Err("recordings.dir cannot be empty".into());
            }
            r.dir = dir.clone();
        }
        if let Some(m) = &fr.mode {
            r.mode = RecordingMode::parse(m)?;
        }
        if let Some(i) = fr.input {
            r.input = i;
        }
        if let Some(d) = &fr.retention {
            r.retention = parse_duration(d)?;
        }
        for (name, o) in &file.agents {
            if let Some(r) = &o.rate {
                l.agent_rates.insert(name.clone(), parse_rate(r)?);
            }
        }
        for (name, o) in &file.users {
            if let Some(r) = &o.rate {
                l.user_rates.insert(name.clone(), parse_rate(r)?);
            }
        }
        Ok(l)
    }

    /// The rate of a session of `user` on `agent`: the user's override, else the
    /// agent's, else the default.
    pub fn rate_for(&self, agent: &str, user: &str) -> Rate {
        self.user_rates
            .get(user)
            .or_else(|| self.agent_rates.get(agent))
            .copied()
            .unwrap_or(self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_durations_parse() {
        assert_eq!(parse_rate("200kbit"), Ok(Some(25_000)));
        assert_eq!(parse_rate("1mbit"), Ok(Some(125_000)));
        assert_eq!(parse_rate("64kB"), Ok(Some(64_000)));
        assert_eq!(parse_rate("unlimited"), Ok(None));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0kbit").is_err());
        assert_eq!(parse_duration("20m"), Ok(Some(Duration::from_secs(1200))));
        assert_eq!(parse_duration("none"), Ok(None));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("999999999999999999d").is_err());
    }

    #[test]
    fn file_overrides_and_precedence() {
        let l = Limits::parse(
            "[limits]\nrate = \"100kbit\"\nmax_sessions = 3\nidle_timeout = \"2s\"\n\
             [agents.gw-01]\nrate = \"unlimited\"\n[users.alice]\nrate = \"1mbit\"\n",
        )
        .unwrap();
        assert_eq!(l.max_sessions, 3);
        assert_eq!(l.idle_timeout, Some(Duration::from_secs(2)));
        assert_eq!(l.rate_for("gw-02", "bob"), Some(12_500));
        assert_eq!(l.rate_for("gw-01", "bob"), None);
        assert_eq!(l.rate_for("gw-01", "alice"), Some(125_000));
        let e = Limits::parse("[limits]\nspeed = 1\n").unwrap_err();
        assert!(e.contains("unknown field `speed`"), "{e}");
    }

    #[test]
    fn connection_and_store_settings() {
        let d = Limits::default();
        assert_eq!(d.connections.max_unauthenticated, 512);
        assert_eq!(d.connections.max_unauthenticated_per_ip, 64);
        assert_eq!(d.connections.handshake_timeout, Duration::from_secs(10));
        assert_eq!(d.connections.keepalive_timeout, Duration::from_secs(60));
        assert_eq!(d.session_retention, Some(Duration::from_secs(90 * 86400)));
        let l = Limits::parse(
            "[connections]\nmax_unauthenticated = 100\nmax_unauthenticated_per_ip = 5\n\
             handshake_timeout = \"2s\"\nagent_handshake_timeout = \"3s\"\n\
             keepalive_timeout = \"1m\"\nunauthenticated_lifetime = \"30s\"\n\
             [store]\nsession_retention = \"none\"\n",
        )
        .unwrap();
        assert_eq!(l.connections.max_unauthenticated, 100);
        assert_eq!(l.connections.max_unauthenticated_per_ip, 5);
        assert_eq!(l.connections.handshake_timeout, Duration::from_secs(2));
        assert_eq!(
            l.connections.agent_handshake_timeout,
            Duration::from_secs(3)
        );
        assert_eq!(l.connections.keepalive_timeout, Duration::from_secs(60));
        assert_eq!(
            l.connections.unauthenticated_lifetime,
            Duration::from_secs(30)
        );
        assert_eq!(
            d.connections.unauthenticated_lifetime,
            Duration::from_secs(120)
        );
        assert_eq!(l.session_retention, None);
        assert_eq!(
            Limits::parse("[connections]\nhandshake_timeout = \"none\"\n").unwrap_err(),
            "connections.handshake_timeout cannot be none"
        );
        assert_eq!(
            Limits::parse("[connections]\nunauthenticated_lifetime = \"5s\"\n").unwrap_err(),
            "connections.unauthenticated_lifetime must be longer than the handshake timeouts"
        );
        assert_eq!(
            Limits::parse("[connections]\nmax_unauthenticated_per_ip = 0\n").unwrap_err(),
            "connections.max_unauthenticated_per_ip must be at least 1"
        );
    }

    #[test]
    fn recordings_are_strict_without_input_for_90_days_unless_configured() {
        let d = Limits::default().recordings;
        assert_eq!(d.dir, PathBuf::from("recordings"));
        assert_eq!(d.mode, RecordingMode::Strict);
        assert!(!d.input);
        assert_eq!(d.retention, Some(Duration::from_secs(90 * 86400)));
        let l = Limits::parse(
            "[recordings]\ndir = \"/srv/rec\"\nmode = \"best-effort\"\ninput = true\n\
             retention = \"none\"\n",
        )
        .unwrap();
        assert_eq!(l.recordings.dir, PathBuf::from("/srv/rec"));
        assert_eq!(l.recordings.mode, RecordingMode::BestEffort);
        assert!(l.recordings.input);
        assert_eq!(l.recordings.retention, None);
        let off = Limits::parse("[recordings]\nmode = \"off\"\n").unwrap();
        assert_eq!(off.recordings.mode, RecordingMode::Off);
        assert_eq!(
            Limits::parse("[recordings]\nmode = \"lenient\"\n").unwrap_err(),
            "invalid recordings.mode 'lenient' (use strict, best-effort or off)"
        );
        let e = Limits::parse("[recordings]\nkeep = 1\n").unwrap_err();
        assert!(e.contains("unknown field `keep`"), "{e}");
    }
}
