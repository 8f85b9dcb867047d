//! The relay's store: agents, users and sessions in SQLite (sqlx, so that a
//! PostgreSQL backend can share the same queries later).
//!
//! The database runs in WAL mode with a busy timeout, so the admin commands
//! (`sesame-relay agent add`, `user add`) work while `serve` is running.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

use crate::secret::{random_base32, Secret};
use crate::Error;

mod access;
mod audit;
mod sessions;
mod web;
pub use access::{Caller, KeyRefused, KeyRow, LockRow, LockTarget, UserRow};
pub use sessions::{Cursor, SessionListed, Traffic};
pub use web::{LoginRefused, WebSession};

/// Activation codes expire after this long.
pub const ACTIVATION_TTL: Duration = Duration::from_secs(24 * 3600);

/// How a session that was running when the relay stopped is recorded to have ended.
pub const RELAY_RESTARTED: &str = "relay restarted";
/// How a session whose token expired before anyone used it is recorded to have ended.
pub const TOKEN_UNUSED: &str = "token expired unused";

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An agent as stored.
#[derive(Debug, Clone)]
pub struct AgentRow {
    /// Stable id (`ag-...`).
    pub id: String,
    /// Unique name chosen by the operator.
    pub name: String,
    /// Free-form tags.
    pub tags: BTreeMap<String, String>,
    /// Last time the agent connected or disconnected (unix seconds), if ever.
    pub last_seen: Option<i64>,
}

/// A session whose token was just redeemed.
#[derive(Debug, Clone)]
pub struct SessionRow {
    /// Session id.
    pub id: String,
    /// Target agent.
    pub agent_id: String,
    /// `shell` or `exec`.
    pub kind: String,
    /// Who asked for it.
    pub user_id: String,
    /// Bytes per second in each direction; `None` is unlimited.
    pub rate: Option<u32>,
    /// The API key that asked for it.
    pub key_id: Option<String>,
    /// The browser session that asked for it, if one did (`ws-...`).
    pub web_session: Option<String>,
    /// The account it runs as on the target.
    pub run_as: String,
    /// What else it was authorised for.
    pub spec: SessionSpec,
}

/// What a restarted relay needs to take up a resumable session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumable {
    /// Its resume token's hash.
    pub hash: String,
    /// The hash of the token before it, while no resume has used the latest: a
    /// client that a restart cut off before the latest token reached it still has
    /// that one.
    pub prev_hash: Option<String>,
    /// How long a side may be away.
    pub hold: Duration,
    /// Its id on the agent's link.
    pub agent_sid: u32,
    /// Its id on the client's stream.
    pub client_sid: u32,
    /// When it started (Unix seconds; its maximum duration counts from here).
    pub started_at: i64,
    /// Since when a side has been away (Unix seconds), while one is: its hold
    /// counts from there, not from a restart of the relay.
    pub away_since: Option<i64>,
}

/// What a session was authorised for besides its kind and account; its stream's
/// `Open` must ask for exactly this.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionSpec {
    /// Exec: the argv.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// SSH key push: the account and the key's lifetime in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<(String, u32)>,
    /// The resume window the policies that allowed it asked for, in seconds (0: not
    /// resumable); `None`: the relay's `resume_window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_secs: Option<u64>,
}

/// A session to create.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    /// Target agent id.
    pub agent_id: &'a str,
    /// Who asks.
    pub user_id: &'a str,
    /// With which API key.
    pub key_id: &'a str,
    /// Through which browser session, if one.
    pub web_session: Option<&'a str>,
    /// `shell`, `exec`, `forward` or `ssh-key`.
    pub kind: &'a str,
    /// Bytes per second in each direction; `None` is unlimited.
    pub rate: Option<u32>,
    /// Token lifetime.
    pub ttl: Duration,
    /// The account on the target.
    pub run_as: &'a str,
    /// What else was authorised.
    pub spec: &'a SessionSpec,
    /// The client's address.
    pub source_ip: &'a str,
    /// The policies that allowed it, and the version of the set.
    pub decided_by: &'a str,
}

/// Why an activation code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ActivationError {
    /// No agent has this code.
    #[error("unknown activation code")]
    Unknown,
    /// The code was already used to register a key.
    #[error("activation code was already used; ask for a new one with `sesame-relay agent add`")]
    Used,
    /// The code is too old.
    #[error("activation code expired; ask for a new one with `sesame-relay agent add`")]
    Expired,
    /// The key is already registered to another agent.
    #[error("this agent key is already registered to another agent")]
    KeyInUse,
}

/// Why a session token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No such session or wrong token.
    #[error("invalid session token")]
    Invalid,
    /// The token was already used.
    #[error("session token was already used (tokens are single-use)")]
    Used,
    /// The token is too old.
    #[error("session token expired; create a new session")]
    Expired,
    /// The session was ended (terminated) before its stream opened.
    #[error("the session was ended before its stream opened ({0}); create a new session")]
    Ended(String),
}

/// The SQLite-backed store.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS agents (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        tags TEXT NOT NULL DEFAULT '{}',
        public_key BLOB UNIQUE,
        activation_hash TEXT UNIQUE,
        activation_expires INTEGER,
        activated_at INTEGER,
        created_at INTEGER NOT NULL,
        last_seen INTEGER
    )",
    "CREATE TABLE IF NOT EXISTS users (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        attrs TEXT NOT NULL DEFAULT '{}'
    )",
    "CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL REFERENCES agents(id),
        user_id TEXT NOT NULL REFERENCES users(id),
        kind TEXT NOT NULL,
        token_hash TEXT NOT NULL,
        token_expires INTEGER NOT NULL,
        token_used_at INTEGER,
        created_at INTEGER NOT NULL,
        ended_at INTEGER,
        exit TEXT,
        rate INTEGER,
        key_id TEXT,
        run_as TEXT NOT NULL DEFAULT '',
        spec TEXT NOT NULL DEFAULT '{}',
        source_ip TEXT,
        decided_by TEXT,
        bytes_in INTEGER,
        bytes_out INTEGER,
        resume_hash TEXT,
        resume_prev_hash TEXT,
        resume_hold INTEGER,
        agent_sid INTEGER,
        client_sid INTEGER,
        web_session TEXT,
        resume_away_since INTEGER
    )",
    "CREATE TABLE IF NOT EXISTS api_keys (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        name TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        last_used INTEGER,
        revoked_at INTEGER
    )",
    "CREATE TABLE IF NOT EXISTS memberships (
        user_id TEXT NOT NULL REFERENCES users(id),
        grp TEXT NOT NULL,
        PRIMARY KEY (user_id, grp)
    )",
    "CREATE TABLE IF NOT EXISTS locks (
        id TEXT PRIMARY KEY,
        target_kind TEXT NOT NULL,
        target_id TEXT NOT NULL,
        target_name TEXT NOT NULL,
        reason TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        removed_at INTEGER
    )",
    "CREATE TABLE IF NOT EXISTS audit (
        seq INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        source_ip TEXT,
        event TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev TEXT NOT NULL,
        hash TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS audit_at ON audit (at)",
    "CREATE TABLE IF NOT EXISTS audit_checkpoints (
        size INTEGER NOT NULL,
        head TEXT NOT NULL,
        at INTEGER NOT NULL,
        key TEXT NOT NULL,
        signature TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS web_links (
        hash TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES api_keys(id),
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER
    )",
    "CREATE TABLE IF NOT EXISTS web_sessions (
        hash TEXT PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        key_id TEXT NOT NULL REFERENCES api_keys(id),
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        ended_at INTEGER
    )",
    // When the relay was last known to run (one row): a restarted relay's held
    // sessions count their hold from there.
    "CREATE TABLE IF NOT EXISTS relay_alive (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        at INTEGER NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS policy_sets (
        version INTEGER PRIMARY KEY AUTOINCREMENT,
        hash TEXT NOT NULL,
        loaded_at INTEGER NOT NULL,
        loaded_by TEXT NOT NULL,
        files TEXT NOT NULL
    )",
];

impl Store {
    /// Open (creating if needed) the store in `dir/sesame.db`.
    pub async fn open(dir: &Path) -> Result<Store, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let opts = SqliteConnectOptions::new()
            .filename(dir.join("sesame.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&pool).await?;
        }
        let store = Store { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// The pool, for tests that tamper with the database.
    #[cfg(test)]
    pub(crate) fn pool_for_tests(&self) -> SqlitePool {
        self.pool.clone()
    }

    /// Register an agent; returns its id and a one-time activation code.
    pub async fn add_agent(
        &self,
        name: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(String, Secret), Error> {
        validate_name(name)?;
        not_id_shaped(name)?;
        let id = format!("ag-{}", random_base32(10));
        let code = Secret::generate("act_");
        let now = unix_now();
        let res = sqlx::query(
            "INSERT INTO agents (id, name, tags, activation_hash, activation_expires, created_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(name)
        .bind(serde_json::to_string(tags).unwrap_or_else(|_| "{}".into()))
        .bind(code.hash())
        .bind(now + ACTIVATION_TTL.as_secs() as i64)
        .bind(now)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok((id, code)),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(Error::Invalid(
                format!("an agent named '{name}' already exists"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    fn agent_row(r: &sqlx::sqlite::SqliteRow) -> AgentRow {
        let tags: String = r.get("tags");
        AgentRow {
            id: r.get("id"),
            name: r.get("name"),
            tags: serde_json::from_str(&tags).unwrap_or_default(),
            last_seen: r.get("last_seen"),
        }
    }

    /// All agents, by name.
    pub async fn agents(&self) -> Result<Vec<AgentRow>, Error> {
        let rows = sqlx::query("SELECT id, name, tags, last_seen FROM agents ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(Self::agent_row).collect())
    }

    /// An agent by name or id.
    pub async fn agent(&self, target: &str) -> Result<Option<AgentRow>, Error> {
        let row = sqlx::query(
            "SELECT id, name, tags, last_seen FROM agents WHERE name = ? OR id = ? LIMIT 1",
        )
        .bind(target)
        .bind(target)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(Self::agent_row))
    }

    /// The agent registered with this Ed25519 public key.
    pub async fn agent_by_key(&self, key: &[u8]) -> Result<Option<AgentRow>, Error> {
        let row = sqlx::query("SELECT id, name, tags, last_seen FROM agents WHERE public_key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(Self::agent_row))
    }

    /// Bind `key` to the agent that `code` names, using the code up.
    pub async fn activate(
        &self,
        code: &Secret,
        key: &[u8],
    ) -> Result<Result<AgentRow, ActivationError>, Error> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT id, name, tags, last_seen, public_key, activation_expires, activated_at
             FROM agents WHERE activation_hash = ?",
        )
        .bind(code.hash())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(Err(ActivationError::Unknown));
        };
        let agent = Self::agent_row(&row);
        let bound: Option<Vec<u8>> = row.get("public_key");
        if let Some(bound) = bound {
            // Re-running the first start with the same key is harmless.
            return Ok(if bound == key {
                Ok(agent)
            } else {
                Err(ActivationError::Used)
            });
        }
        let expires: i64 = row.get("activation_expires");
        if unix_now() > expires {
            return Ok(Err(ActivationError::Expired));
        }
        let res = sqlx::query("UPDATE agents SET public_key = ?, activated_at = ? WHERE id = ?")
            .bind(key)
            .bind(unix_now())
            .bind(&agent.id)
            .execute(&mut *tx)
            .await;
        match res {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Ok(Err(ActivationError::KeyInUse))
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        Ok(Ok(agent))
    }

    /// Record that the agent was seen now.
    pub async fn touch_agent(&self, id: &str) -> Result<(), Error> {
        sqlx::query("UPDATE agents SET last_seen = ? WHERE id = ?")
            .bind(unix_now())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Create a session with its rate and a one-use token valid for its `ttl`.
    pub async fn create_session(
        &self,
        new: &NewSession<'_>,
    ) -> Result<(String, Secret, i64), Error> {
        let id = format!("s-{}", random_base32(16));
        let token = Secret::generate("tok_");
        let now = unix_now();
        let expires = now + new.ttl.as_secs() as i64;
        sqlx::query(
            "INSERT INTO sessions (id, agent_id, user_id, kind, token_hash, token_expires, created_at,
                                   rate, key_id, run_as, spec, source_ip, decided_by, web_session)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(new.agent_id)
        .bind(new.user_id)
        .bind(new.kind)
        .bind(token.hash())
        .bind(expires)
        .bind(now)
        .bind(new.rate.map(i64::from))
        .bind(new.key_id)
        .bind(new.run_as)
        .bind(serde_json::to_string(new.spec).unwrap_or_else(|_| "{}".into()))
        .bind(new.source_ip)
        .bind(new.decided_by)
        .bind(new.web_session)
        .execute(&self.pool)
        .await?;
        Ok((id, token, expires))
    }

    /// Use a session's token up. Atomic: of two concurrent redeemers one wins. A
    /// session that has ended (terminated before its stream opened) is refused as
    /// [`TokenError::Expired`].
    pub async fn redeem_token(
        &self,
        session_id: &str,
        token: &Secret,
    ) -> Result<Result<SessionRow, TokenError>, Error> {
        let now = unix_now();
        let row = sqlx::query(
            "UPDATE sessions SET token_used_at = ?
             WHERE id = ? AND token_hash = ? AND token_used_at IS NULL AND token_expires >= ?
               AND ended_at IS NULL
             RETURNING id, agent_id, kind, user_id, rate, key_id, run_as, spec, web_session",
        )
        .bind(now)
        .bind(session_id)
        .bind(token.hash())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(r) = row {
            return Ok(Ok(session_row(&r)));
        }
        let why = sqlx::query(
            "SELECT token_used_at, token_expires, ended_at, exit FROM sessions
             WHERE id = ? AND token_hash = ?",
        )
        .bind(session_id)
        .bind(token.hash())
        .fetch_optional(&self.pool)
        .await?;
        Ok(Err(match why {
            None => TokenError::Invalid,
            Some(r) if r.get::<Option<i64>, _>("token_used_at").is_some() => TokenError::Used,
            Some(r) if r.get::<i64, _>("token_expires") < now => TokenError::Expired,
            Some(r) if r.get::<Option<i64>, _>("ended_at").is_some() => TokenError::Ended(
                r.get::<Option<String>, _>("exit")
                    .unwrap_or_else(|| "ended".into()),
            ),
            Some(_) => TokenError::Expired,
        }))
    }

    /// A session by id (any state), for decisions about it.
    pub async fn session_info(&self, id: &str) -> Result<Option<SessionRow>, Error> {
        let row = sqlx::query(
            "SELECT id, agent_id, kind, user_id, rate, key_id, run_as, spec, web_session
             FROM sessions WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(session_row))
    }

    /// How a session ended, if it did.
    pub async fn session_exit(&self, id: &str) -> Result<Option<String>, Error> {
        Ok(sqlx::query_scalar("SELECT exit FROM sessions WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .flatten())
    }

    /// How a resumable session ended, for the holder of its latest resume token, or
    /// of the one before while the latest is unused (`hash`): `None` if it has not
    /// ended, or the token is neither.
    pub async fn session_end_for_token(
        &self,
        id: &str,
        hash: &str,
    ) -> Result<Option<String>, Error> {
        Ok(sqlx::query_scalar(
            "SELECT exit FROM sessions
             WHERE id = ?1 AND (resume_hash = ?2 OR resume_prev_hash = ?2) AND ended_at IS NOT NULL",
        )
        .bind(id)
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?
        .flatten())
    }

    /// Record how a session ended. The first end recorded stands: what follows
    /// from it (the agent's answer to being told to stop, its link dropping) does
    /// not replace it.
    pub async fn end_session(&self, id: &str, exit: &str) -> Result<(), Error> {
        sqlx::query("UPDATE sessions SET ended_at = ?, exit = ? WHERE id = ? AND ended_at IS NULL")
            .bind(unix_now())
            .bind(exit)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A session that started is resumable (`docs/protocol.md`, section 8): what a
    /// restarted relay needs to take it up again. `hash`: its resume token's.
    pub async fn set_resumable(&self, id: &str, r: &Resumable) -> Result<(), Error> {
        sqlx::query(
            "UPDATE sessions SET resume_hash = ?, resume_prev_hash = NULL, resume_hold = ?,
                agent_sid = ?, client_sid = ?
             WHERE id = ?",
        )
        .bind(&r.hash)
        .bind(i64::try_from(r.hold.as_secs()).unwrap_or(i64::MAX))
        .bind(i64::from(r.agent_sid))
        .bind(i64::from(r.client_sid))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A resumable session's token changed (every resume spends one): `hash` is
    /// the latest, and `prev` (the one the client came back with) stays good until
    /// a resume uses the latest ([`Store::confirm_resume_hash`]), as it does in the
    /// running relay.
    pub async fn set_resume_hash(&self, id: &str, hash: &str, prev: &str) -> Result<(), Error> {
        sqlx::query("UPDATE sessions SET resume_hash = ?, resume_prev_hash = ? WHERE id = ?")
            .bind(hash)
            .bind(prev)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A resume used a session's latest token: the one before it is no longer good.
    pub async fn confirm_resume_hash(&self, id: &str) -> Result<(), Error> {
        sqlx::query("UPDATE sessions SET resume_prev_hash = NULL WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Since when a side of a resumable session has been away (Unix seconds), or
    /// `None` once both are back.
    pub async fn set_resume_away(&self, id: &str, since: Option<i64>) -> Result<(), Error> {
        sqlx::query("UPDATE sessions SET resume_away_since = ? WHERE id = ?")
            .bind(since)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The relay runs at `at` (Unix seconds), written every few seconds: a
    /// restarted relay knows about when the previous run stopped.
    pub async fn set_alive(&self, at: i64) -> Result<(), Error> {
        sqlx::query("INSERT INTO relay_alive (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = ?1")
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// When a relay last said it ran ([`Store::set_alive`]), if one ever did.
    pub async fn last_alive(&self) -> Result<Option<i64>, Error> {
        Ok(
            sqlx::query_scalar("SELECT at FROM relay_alive WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// At start-up, before serving: the resumable sessions the previous run left
    /// running, to take up again (their agents and clients may come back).
    pub async fn interrupted_resumable(&self) -> Result<Vec<(SessionRow, Resumable)>, Error> {
        let rows = sqlx::query(
            "SELECT * FROM sessions
             WHERE ended_at IS NULL AND token_used_at IS NOT NULL AND resume_hash IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let n = |c: &str| r.get::<Option<i64>, _>(c).unwrap_or(0);
                let id = |c: &str| u32::try_from(n(c)).unwrap_or(0);
                let resumable = Resumable {
                    hash: r.get("resume_hash"),
                    prev_hash: r.get("resume_prev_hash"),
                    hold: Duration::from_secs(u64::try_from(n("resume_hold")).unwrap_or(0)),
                    agent_sid: id("agent_sid"),
                    client_sid: id("client_sid"),
                    started_at: n("token_used_at"),
                    away_since: r.get("resume_away_since"),
                };
                (session_row(r), resumable)
            })
            .collect())
    }

    /// The highest session id each agent's links gave a resumable session, ended or
    /// not: a restarted relay numbers new sessions past them, so that none takes an
    /// id the agent may still hold.
    pub async fn highest_agent_sids(&self) -> Result<Vec<(String, u32)>, Error> {
        let rows = sqlx::query(
            "SELECT agent_id, MAX(agent_sid) AS sid FROM sessions
             WHERE agent_sid IS NOT NULL GROUP BY agent_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let sid = u32::try_from(r.get::<i64, _>("sid")).unwrap_or(u32::MAX);
                (r.get("agent_id"), sid)
            })
            .collect())
    }

    /// At start-up, before serving: every session that started (its token was used)
    /// and has not ended was cut off when the previous run stopped, unless it is
    /// resumable ([`Store::interrupted_resumable`]); record it ended with
    /// [`RELAY_RESTARTED`]. Returns how many.
    pub async fn end_interrupted_sessions(&self) -> Result<u64, Error> {
        let r = sqlx::query(
            "UPDATE sessions SET ended_at = ?, exit = ?
             WHERE ended_at IS NULL AND token_used_at IS NOT NULL AND resume_hash IS NULL",
        )
        .bind(unix_now())
        .bind(RELAY_RESTARTED)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Housekeeping, at start-up and periodically: sessions whose token expired
    /// unused are recorded ended ([`TOKEN_UNUSED`]), then sessions that ended more
    /// than `retention` ago are deleted (`None` keeps them). Returns how many were
    /// deleted.
    pub async fn prune_sessions(&self, retention: Option<Duration>) -> Result<u64, Error> {
        let now = unix_now();
        sqlx::query(
            "UPDATE sessions SET ended_at = token_expires, exit = ?
             WHERE ended_at IS NULL AND token_used_at IS NULL AND token_expires < ?",
        )
        .bind(TOKEN_UNUSED)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let Some(retention) = retention else {
            return Ok(0);
        };
        let cutoff = now.saturating_sub(i64::try_from(retention.as_secs()).unwrap_or(i64::MAX));
        let r = sqlx::query("DELETE FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ?")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }
}

fn session_row(r: &sqlx::sqlite::SqliteRow) -> SessionRow {
    SessionRow {
        id: r.get("id"),
        agent_id: r.get("agent_id"),
        kind: r.get("kind"),
        user_id: r.get("user_id"),
        rate: r
            .get::<Option<i64>, _>("rate")
            .and_then(|r| u32::try_from(r).ok()),
        key_id: r.get("key_id"),
        web_session: r.get("web_session"),
        run_as: r.get("run_as"),
        spec: serde_json::from_str(r.get("spec")).unwrap_or_default(),
    }
}

/// User and agent names cannot look like ids (`us-...`, `ag-...`): lookups take
/// either, so a name spelled as another's id would stand for it.
fn not_id_shaped(name: &str) -> Result<(), Error> {
    if name.starts_with("us-") || name.starts_with("ag-") {
        return Err(Error::Invalid(format!(
            "invalid name '{name}': names starting with 'us-' or 'ag-' are reserved for ids"
        )));
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid name '{name}': use 1-64 letters, digits, '-', '_' or '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in a fresh directory, with one agent and one user.
    async fn fixture(tag: &str) -> (Store, std::path::PathBuf, String, String) {
        let dir = std::env::temp_dir().join(format!("sesame-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).await.unwrap();
        let (agent, _) = store.add_agent("gw-01", &BTreeMap::new()).await.unwrap();
        store.add_user("alice", &[]).await.unwrap();
        let user: String = sqlx::query_scalar("SELECT id FROM users")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        (store, dir, agent, user)
    }

    fn new_session<'a>(agent: &'a str, user: &'a str, kind: &'a str) -> NewSession<'a> {
        static SPEC: SessionSpec = SessionSpec {
            command: Vec::new(),
            ssh: None,
            resume_secs: None,
        };
        NewSession {
            agent_id: agent,
            user_id: user,
            key_id: "k-test",
            web_session: None,
            kind,
            rate: None,
            ttl: Duration::from_secs(600),
            run_as: "deploy",
            spec: &SPEC,
            source_ip: "127.0.0.1",
            decided_by: "test",
        }
    }

    /// A session's `(ended_at, exit)`, or `None` if it is gone.
    async fn ended(store: &Store, id: &str) -> Option<(Option<i64>, Option<String>)> {
        sqlx::query_as("SELECT ended_at, exit FROM sessions WHERE id = ?")
            .bind(id)
            .fetch_optional(&store.pool)
            .await
            .unwrap()
    }

    async fn started(store: &Store, agent: &str, user: &str) -> String {
        let (id, token, _) = store
            .create_session(&new_session(agent, user, "shell"))
            .await
            .unwrap();
        store.redeem_token(&id, &token).await.unwrap().unwrap();
        id
    }

    #[tokio::test]
    async fn sessions_running_at_a_restart_end_and_old_ones_are_pruned() {
        let (store, dir, agent, user) = fixture("restart").await;
        let running = started(&store, &agent, &user).await;
        // Issued but not used yet: it may still start after the restart.
        let (pending, token, _) = store
            .create_session(&new_session(&agent, &user, "exec"))
            .await
            .unwrap();
        let recent = started(&store, &agent, &user).await;
        store.end_session(&recent, "exit 0").await.unwrap();
        let old = started(&store, &agent, &user).await;
        store.end_session(&old, "exit 0").await.unwrap();
        let days_ago = |d: i64| unix_now() - d * 86400;
        sqlx::query("UPDATE sessions SET ended_at = ? WHERE id = ?")
            .bind(days_ago(91))
            .bind(&old)
            .execute(&store.pool)
            .await
            .unwrap();
        let (unused, _, _) = store
            .create_session(&new_session(&agent, &user, "exec"))
            .await
            .unwrap();
        sqlx::query("UPDATE sessions SET token_expires = ? WHERE id = ?")
            .bind(days_ago(100))
            .bind(&unused)
            .execute(&store.pool)
            .await
            .unwrap();

        assert_eq!(store.end_interrupted_sessions().await.unwrap(), 1);
        let (at, exit) = ended(&store, &running).await.unwrap();
        assert!(at.is_some());
        assert_eq!(exit.as_deref(), Some(RELAY_RESTARTED));
        assert_eq!(ended(&store, &pending).await, Some((None, None)));

        let retention = Some(Duration::from_secs(90 * 86400));
        // The old ended session and the one whose token expired 100 days ago go.
        assert_eq!(store.prune_sessions(retention).await.unwrap(), 2);
        assert_eq!(ended(&store, &old).await, None);
        assert_eq!(ended(&store, &unused).await, None);
        let (_, exit) = ended(&store, &recent).await.unwrap();
        assert_eq!(exit.as_deref(), Some("exit 0"));
        assert!(ended(&store, &running).await.is_some());
        // The pending session still starts.
        store.redeem_token(&pending, &token).await.unwrap().unwrap();
        // `none` keeps everything.
        sqlx::query("UPDATE sessions SET ended_at = ? WHERE id = ?")
            .bind(days_ago(1000))
            .bind(&recent)
            .execute(&store.pool)
            .await
            .unwrap();
        assert_eq!(store.prune_sessions(None).await.unwrap(), 0);
        assert!(ended(&store, &recent).await.is_some());
        let _ = std::fs::remove_dir_all(dir);
    }
}
