//! Users, their groups and API keys, locks, agent revocation, and the schema
//! migration that brought them (a store made before had one key per user in
//! `users.api_key_hash` and an `admin` flag: each key becomes the user's key
//! `default`, each admin a member of the group `admins`).

use std::collections::BTreeMap;

use sqlx::Row;

use super::{unix_now, validate_name, Store};
use crate::policy::Principal;
use crate::secret::{random_base32, Secret};
use crate::Error;

/// A key's `last_used` is written at most this often (seconds), not on every request.
const LAST_USED_EVERY: i64 = 60;

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// Stable id (`us-...`).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Groups, by name.
    pub groups: Vec<String>,
    /// Attributes (Cedar tags of the user).
    pub attrs: BTreeMap<String, String>,
    /// Unix seconds.
    pub created_at: i64,
}

impl UserRow {
    /// The user as policies see it.
    pub fn principal(&self) -> Principal {
        Principal {
            name: self.name.clone(),
            groups: self.groups.clone(),
            attrs: self.attrs.clone(),
        }
    }
}

/// An authenticated request's user and the key it used.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user.
    pub user: UserRow,
    /// The API key's id (`k-...`).
    pub key_id: String,
    /// This use of the key was noted (its `last_used` moved: the first in a minute).
    pub noted: bool,
    /// The browser session whose cookie authenticated the request, if one did:
    /// what it opens ends when it logs out.
    pub web: Option<super::WebSession>,
}

/// An API key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRow {
    /// Id (`k-...`), shown in listings and used to revoke it.
    pub id: String,
    /// Owner's name.
    pub user: String,
    /// Name chosen by its owner (`laptop`, `ci`).
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `None` never expires.
    pub expires_at: Option<i64>,
    /// Unix seconds, to the minute.
    pub last_used: Option<i64>,
    /// Unix seconds.
    pub revoked_at: Option<i64>,
}

/// Why an API key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefused {
    /// No such key.
    #[error("invalid API key (set SESAME_API_KEY or api_key in ~/.config/sesame/config.toml)")]
    Unknown,
    /// Revoked.
    #[error("API key '{name}' of {user} was revoked")]
    Revoked {
        /// Owner.
        user: String,
        /// Key name.
        name: String,
    },
    /// Past its expiry.
    #[error("API key '{name}' of {user} expired {ago}")]
    Expired {
        /// Owner.
        user: String,
        /// Key name.
        name: String,
        /// "3m ago".
        ago: String,
    },
}

/// What a lock applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockTarget {
    /// A user: no new sessions, live ones end.
    User,
    /// An agent: no new sessions on it, live ones end.
    Agent,
}

impl LockTarget {
    fn as_str(self) -> &'static str {
        match self {
            LockTarget::User => "user",
            LockTarget::Agent => "agent",
        }
    }
}

/// A lock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LockRow {
    /// Id (`lk-...`).
    pub id: String,
    /// User or agent.
    pub target: LockTarget,
    /// The user's or agent's id.
    pub target_id: String,
    /// Its name.
    pub name: String,
    /// Why, shown to whoever it stops.
    pub reason: String,
    /// Who locked it.
    pub created_by: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `None` until unlocked.
    pub expires_at: Option<i64>,
}

impl LockRow {
    /// `locked by root until 2026-12-01T00:00:00Z: incident 42`.
    pub fn describe(&self) -> String {
        let until = match self.expires_at {
            Some(t) => format!(" until {}", crate::policy::rfc3339(t)),
            None => String::new(),
        };
        format!(
            "{} {} is locked{until}: {}",
            self.target.as_str(),
            self.name,
            self.reason
        )
    }
}

fn lock_row(r: &sqlx::sqlite::SqliteRow) -> LockRow {
    let kind: String = r.get("target_kind");
    LockRow {
        id: r.get("id"),
        target: if kind == "agent" {
            LockTarget::Agent
        } else {
            LockTarget::User
        },
        target_id: r.get("target_id"),
        name: r.get("target_name"),
        reason: r.get("reason"),
        created_by: r.get("created_by"),
        created_at: r.get("created_at"),
        expires_at: r.get("expires_at"),
    }
}

fn key_row(r: &sqlx::sqlite::SqliteRow) -> KeyRow {
    KeyRow {
        id: r.get("id"),
        user: r.get("user_name"),
        name: r.get("name"),
        created_at: r.get("created_at"),
        expires_at: r.get("expires_at"),
        last_used: r.get("last_used"),
        revoked_at: r.get("revoked_at"),
    }
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Group names follow the same rule as user and agent names.
fn validate_group(name: &str) -> Result<(), Error> {
    validate_name(name).map_err(|_| {
        Error::Invalid(format!(
            "invalid group '{name}': use 1-64 letters, digits, '-', '_' or '.'"
        ))
    })
}

impl Store {
    async fn has_column(&self, table: &str, column: &str) -> Result<bool, Error> {
        Ok(
            sqlx::query("SELECT 1 FROM pragma_table_info(?) WHERE name = ?")
                .bind(table)
                .bind(column)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    /// Bring a store made by an earlier version to the current layout.
    pub(super) async fn migrate(&self) -> Result<(), Error> {
        for (table, column, ty) in [
            ("sessions", "rate", "INTEGER"),
            ("sessions", "key_id", "TEXT"),
            ("sessions", "run_as", "TEXT NOT NULL DEFAULT ''"),
            ("sessions", "spec", "TEXT NOT NULL DEFAULT '{}'"),
            ("sessions", "source_ip", "TEXT"),
            ("sessions", "decided_by", "TEXT"),
            ("sessions", "bytes_in", "INTEGER"),
            ("sessions", "bytes_out", "INTEGER"),
            ("sessions", "resume_hash", "TEXT"),
            ("sessions", "resume_prev_hash", "TEXT"),
            ("sessions", "resume_hold", "INTEGER"),
            ("sessions", "agent_sid", "INTEGER"),
            ("sessions", "client_sid", "INTEGER"),
            ("sessions", "web_session", "TEXT"),
            ("sessions", "resume_away_since", "INTEGER"),
            ("agents", "revoked_at", "INTEGER"),
        ] {
            if !self.has_column(table, column).await? {
                sqlx::query(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))
                    .execute(&self.pool)
                    .await?;
            }
        }
        // Listings go newest first, all or one user's: without these each page
        // would scan and sort the whole table. The console's accounts of a target
        // read one agent's sessions.
        for stmt in [
            "CREATE INDEX IF NOT EXISTS sessions_agent_account ON sessions (agent_id, run_as, created_at)",
            "CREATE INDEX IF NOT EXISTS sessions_created ON sessions (created_at)",
            "CREATE INDEX IF NOT EXISTS sessions_user_created ON sessions (user_id, created_at)",
            // A restarted relay reads each resumable session's forward rows.
            "CREATE INDEX IF NOT EXISTS audit_target ON audit (target, at)",
        ] {
            sqlx::query(stmt).execute(&self.pool).await?;
        }
        if !self.has_column("users", "api_key_hash").await? {
            return Ok(());
        }
        // The users table loses two columns: SQLite rebuilds it, with foreign keys
        // off on this connection (the sessions and keys that name users stay valid:
        // the ids are kept).
        let mut conn = self.pool.acquire().await?;
        sqlx::query("PRAGMA foreign_keys = OFF")
            .execute(&mut *conn)
            .await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        for stmt in [
            "INSERT INTO api_keys (id, user_id, name, hash, created_at)
             SELECT 'k-' || lower(hex(randomblob(8))), id, 'default', api_key_hash, created_at
             FROM users",
            "INSERT OR IGNORE INTO memberships (user_id, grp) SELECT id, 'admins' FROM users WHERE admin != 0",
            "CREATE TABLE users_v2 (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                created_at INTEGER NOT NULL,
                attrs TEXT NOT NULL DEFAULT '{}'
            )",
            "INSERT INTO users_v2 (id, name, created_at) SELECT id, name, created_at FROM users",
            "DROP TABLE users",
            "ALTER TABLE users_v2 RENAME TO users",
        ] {
            sqlx::query(stmt).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        sqlx::query("PRAGMA foreign_keys = ON")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Register a user in `groups`; returns the user and its first API key
    /// (named `default`, no expiry), shown once.
    pub async fn add_user(
        &self,
        name: &str,
        groups: &[String],
    ) -> Result<(UserRow, Secret), Error> {
        validate_name(name)?;
        super::not_id_shaped(name)?;
        for g in groups {
            validate_group(g)?;
        }
        let id = format!("us-{}", random_base32(10));
        let now = unix_now();
        let mut tx = self.pool.begin().await?;
        let res = sqlx::query("INSERT INTO users (id, name, created_at) VALUES (?, ?, ?)")
            .bind(&id)
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await;
        match res {
            Ok(_) => {}
            Err(e) if unique_violation(&e) => {
                return Err(Error::Invalid(format!(
                    "a user named '{name}' already exists"
                )))
            }
            Err(e) => return Err(e.into()),
        }
        for g in groups {
            sqlx::query("INSERT OR IGNORE INTO memberships (user_id, grp) VALUES (?, ?)")
                .bind(&id)
                .bind(g)
                .execute(&mut *tx)
                .await?;
        }
        let key = Secret::generate("sk_");
        sqlx::query(
            "INSERT INTO api_keys (id, user_id, name, hash, created_at) VALUES (?, ?, 'default', ?, ?)",
        )
        .bind(format!("k-{}", random_base32(12)))
        .bind(&id)
        .bind(key.hash())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let user = self.user(name).await?.expect("just added");
        Ok((user, key))
    }

    async fn groups_of(&self, user_id: &str) -> Result<Vec<String>, Error> {
        Ok(
            sqlx::query_scalar("SELECT grp FROM memberships WHERE user_id = ? ORDER BY grp")
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn user_row(&self, r: &sqlx::sqlite::SqliteRow) -> Result<UserRow, Error> {
        let id: String = r.get("id");
        let attrs: String = r.get("attrs");
        Ok(UserRow {
            groups: self.groups_of(&id).await?,
            id,
            name: r.get("name"),
            attrs: serde_json::from_str(&attrs).unwrap_or_default(),
            created_at: r.get("created_at"),
        })
    }

    /// A user by name or id.
    pub async fn user(&self, who: &str) -> Result<Option<UserRow>, Error> {
        let row = sqlx::query(
            "SELECT id, name, attrs, created_at FROM users WHERE name = ? OR id = ? LIMIT 1",
        )
        .bind(who)
        .bind(who)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(Some(self.user_row(&r).await?)),
            None => Ok(None),
        }
    }

    /// All users, by name.
    pub async fn users(&self) -> Result<Vec<UserRow>, Error> {
        let rows = sqlx::query("SELECT id, name, attrs, created_at FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let mut users = Vec::with_capacity(rows.len());
        for r in &rows {
            users.push(self.user_row(r).await?);
        }
        Ok(users)
    }

    /// Add a user to groups and remove it from others.
    pub async fn set_groups(
        &self,
        user: &UserRow,
        add: &[String],
        remove: &[String],
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        for g in add {
            validate_group(g)?;
            sqlx::query("INSERT OR IGNORE INTO memberships (user_id, grp) VALUES (?, ?)")
                .bind(&user.id)
                .bind(g)
                .execute(&mut *tx)
                .await?;
        }
        for g in remove {
            sqlx::query("DELETE FROM memberships WHERE user_id = ? AND grp = ?")
                .bind(&user.id)
                .bind(g)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Set (`Some`) or remove (`None`) a user's attribute.
    pub async fn set_attr(
        &self,
        user: &UserRow,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), Error> {
        if key.is_empty() || key.len() > 64 {
            return Err(Error::Invalid(format!("invalid attribute name '{key}'")));
        }
        let mut attrs = user.attrs.clone();
        match value {
            Some(v) => attrs.insert(key.to_string(), v.to_string()),
            None => attrs.remove(key),
        };
        sqlx::query("UPDATE users SET attrs = ? WHERE id = ?")
            .bind(serde_json::to_string(&attrs).unwrap_or_else(|_| "{}".into()))
            .bind(&user.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The user and key of an API key, or why the key is refused. Notes the key's
    /// use (to the minute).
    pub async fn authenticate(&self, key: &Secret) -> Result<Result<Caller, KeyRefused>, Error> {
        self.caller("k.hash", &key.hash()).await
    }

    /// The same for the key with id `key_id` (a browser session made with it).
    pub async fn authenticate_id(&self, key_id: &str) -> Result<Result<Caller, KeyRefused>, Error> {
        self.caller("k.id", key_id).await
    }

    async fn caller(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Result<Caller, KeyRefused>, Error> {
        let row = sqlx::query(&format!(
            "SELECT k.id, k.name, k.expires_at, k.revoked_at, k.last_used, u.name AS user_name,
                    u.id AS user_id
             FROM api_keys k JOIN users u ON u.id = k.user_id WHERE {column} = ?"
        ))
        .bind(value)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(Err(KeyRefused::Unknown));
        };
        let (user, name): (String, String) = (r.get("user_name"), r.get("name"));
        let now = unix_now();
        if r.get::<Option<i64>, _>("revoked_at").is_some() {
            return Ok(Err(KeyRefused::Revoked { user, name }));
        }
        if let Some(at) = r.get::<Option<i64>, _>("expires_at") {
            if at <= now {
                let ago = crate::api::ago(at);
                return Ok(Err(KeyRefused::Expired { user, name, ago }));
            }
        }
        let key_id: String = r.get("id");
        let last: Option<i64> = r.get("last_used");
        let noted = last.is_none_or(|t| now - t >= LAST_USED_EVERY);
        if noted {
            sqlx::query("UPDATE api_keys SET last_used = ? WHERE id = ?")
                .bind(now)
                .bind(&key_id)
                .execute(&self.pool)
                .await?;
        }
        let user_id: String = r.get("user_id");
        let user = self
            .user(&user_id)
            .await?
            .ok_or(Error::Invalid("the key's user is gone".into()))?;
        Ok(Ok(Caller {
            user,
            key_id,
            noted,
            web: None,
        }))
    }

    /// Whether an API key can still be used (for a session token issued with it).
    pub async fn key_refusal(&self, key_id: &str) -> Result<Option<KeyRefused>, Error> {
        let row = sqlx::query(
            "SELECT k.name, k.expires_at, k.revoked_at, u.name AS user_name
             FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = ?",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(Some(KeyRefused::Unknown));
        };
        let (user, name): (String, String) = (r.get("user_name"), r.get("name"));
        if r.get::<Option<i64>, _>("revoked_at").is_some() {
            return Ok(Some(KeyRefused::Revoked { user, name }));
        }
        match r.get::<Option<i64>, _>("expires_at") {
            Some(at) if at <= unix_now() => Ok(Some(KeyRefused::Expired {
                user,
                name,
                ago: crate::api::ago(at),
            })),
            _ => Ok(None),
        }
    }

    /// A new API key for `user`, valid until `expires_at` (unix seconds) if given;
    /// the secret is shown once.
    pub async fn add_key(
        &self,
        user: &UserRow,
        name: &str,
        expires_at: Option<i64>,
    ) -> Result<(KeyRow, Secret), Error> {
        validate_name(name)?;
        let live: Option<String> = sqlx::query_scalar(
            "SELECT id FROM api_keys WHERE user_id = ? AND name = ? AND revoked_at IS NULL",
        )
        .bind(&user.id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        if live.is_some() {
            return Err(Error::Invalid(format!(
                "{} already has a key named '{name}' (revoke it first)",
                user.name
            )));
        }
        let key = Secret::generate("sk_");
        let id = format!("k-{}", random_base32(12));
        sqlx::query(
            "INSERT INTO api_keys (id, user_id, name, hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(&user.id)
        .bind(name)
        .bind(key.hash())
        .bind(unix_now())
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        let row = self
            .keys(Some(user))
            .await?
            .into_iter()
            .find(|k| k.id == id);
        Ok((row.expect("just added"), key))
    }

    /// API keys of `user`, or of everyone.
    pub async fn keys(&self, user: Option<&UserRow>) -> Result<Vec<KeyRow>, Error> {
        let rows = sqlx::query(
            "SELECT k.id, k.name, k.created_at, k.expires_at, k.last_used, k.revoked_at,
                    u.name AS user_name
             FROM api_keys k JOIN users u ON u.id = k.user_id
             WHERE ? IS NULL OR k.user_id = ? ORDER BY u.name, k.created_at",
        )
        .bind(user.map(|u| &u.id))
        .bind(user.map(|u| &u.id))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(key_row).collect())
    }

    /// Revoke `user`'s key named or identified by `key`. Returns it.
    pub async fn revoke_key(&self, user: &UserRow, key: &str) -> Result<KeyRow, Error> {
        let id: Option<String> = sqlx::query_scalar(
            "UPDATE api_keys SET revoked_at = ?
             WHERE user_id = ? AND (id = ? OR name = ?) AND revoked_at IS NULL RETURNING id",
        )
        .bind(unix_now())
        .bind(&user.id)
        .bind(key)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        let Some(id) = id else {
            return Err(Error::Invalid(format!(
                "{} has no live key '{key}' (see `sesame admin keys ls --user {}`)",
                user.name, user.name
            )));
        };
        let row = self
            .keys(Some(user))
            .await?
            .into_iter()
            .find(|k| k.id == id);
        Ok(row.expect("just revoked"))
    }

    /// Revoke an agent: its key is refused from now on. Returns whether it was live.
    pub async fn revoke_agent(&self, agent_id: &str) -> Result<bool, Error> {
        let r = sqlx::query("UPDATE agents SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
            .bind(unix_now())
            .bind(agent_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// When the agent was revoked, if it was.
    pub async fn agent_revoked(&self, agent_id: &str) -> Result<Option<i64>, Error> {
        Ok(
            sqlx::query_scalar("SELECT revoked_at FROM agents WHERE id = ?")
                .bind(agent_id)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    /// Lock a user or an agent until `expires_at` (or until unlocked).
    pub async fn add_lock(
        &self,
        target: LockTarget,
        target_id: &str,
        name: &str,
        reason: &str,
        by: &str,
        expires_at: Option<i64>,
    ) -> Result<LockRow, Error> {
        let id = format!("lk-{}", random_base32(10));
        sqlx::query(
            "INSERT INTO locks (id, target_kind, target_id, target_name, reason, created_by, created_at, expires_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(target.as_str())
        .bind(target_id)
        .bind(name)
        .bind(reason)
        .bind(by)
        .bind(unix_now())
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT * FROM locks WHERE id = ?")
            .bind(&id)
            .fetch_one(&self.pool)
            .await?;
        Ok(lock_row(&row))
    }

    /// Locks in force, oldest first.
    pub async fn locks(&self) -> Result<Vec<LockRow>, Error> {
        let rows = sqlx::query(
            "SELECT * FROM locks WHERE removed_at IS NULL AND (expires_at IS NULL OR expires_at > ?)
             ORDER BY created_at, id",
        )
        .bind(unix_now())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(lock_row).collect())
    }

    /// The lock in force on a user or agent, if any.
    pub async fn lock_on(
        &self,
        target: LockTarget,
        target_id: &str,
    ) -> Result<Option<LockRow>, Error> {
        let row = sqlx::query(
            "SELECT * FROM locks WHERE target_kind = ? AND target_id = ? AND removed_at IS NULL
             AND (expires_at IS NULL OR expires_at > ?) ORDER BY created_at LIMIT 1",
        )
        .bind(target.as_str())
        .bind(target_id)
        .bind(unix_now())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(lock_row))
    }

    /// Remove a lock by id, or every lock on a user or agent by its name.
    pub async fn remove_locks(&self, what: &str) -> Result<u64, Error> {
        let r = sqlx::query(
            "UPDATE locks SET removed_at = ? WHERE removed_at IS NULL AND (id = ? OR target_name = ?)",
        )
        .bind(unix_now())
        .bind(what)
        .bind(what)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Record a policy set that took effect (kept as history; the same set
    /// loaded again is not recorded twice in a row).
    pub async fn record_policy_set(
        &self,
        hash: &str,
        by: &str,
        files: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let last: Option<String> =
            sqlx::query_scalar("SELECT hash FROM policy_sets ORDER BY version DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
        if last.as_deref() == Some(hash) {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO policy_sets (hash, loaded_at, loaded_by, files) VALUES (?, ?, ?, ?)",
        )
        .bind(hash)
        .bind(unix_now())
        .bind(by)
        .bind(serde_json::to_string(files).unwrap_or_default())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sesame-access-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn a_store_of_the_previous_layout_keeps_its_keys_and_admins() {
        let d = dir("migrate");
        // The layout before users had groups and several keys.
        let old = Secret::generate("sk_");
        {
            let opts = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(d.join("sesame.db"))
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
            sqlx::query(
                "CREATE TABLE users (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                 admin INTEGER NOT NULL, api_key_hash TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL)",
            )
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query("INSERT INTO users VALUES ('us-1', 'root', 1, ?, 5)")
                .bind(old.hash())
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        let store = Store::open(&d).await.unwrap();
        let caller = store.authenticate(&old).await.unwrap().unwrap();
        assert_eq!(caller.user.name, "root");
        assert_eq!(caller.user.groups, ["admins"]);
        assert_eq!(
            store.keys(Some(&caller.user)).await.unwrap()[0].name,
            "default"
        );
        // Opening it again changes nothing.
        drop(store);
        let store = Store::open(&d).await.unwrap();
        assert!(store.authenticate(&old).await.unwrap().is_ok());
        let (bob, _) = store.add_user("bob", &[]).await.unwrap();
        assert!(bob.groups.is_empty());
    }

    #[tokio::test]
    async fn keys_expire_and_are_revoked_and_locks_lapse() {
        let store = Store::open(&dir("keys")).await.unwrap();
        let (alice, first) = store.add_user("alice", &["ops".into()]).await.unwrap();
        assert_eq!(alice.groups, ["ops"]);
        let (k, laptop) = store.add_key(&alice, "laptop", None).await.unwrap();
        assert_eq!(k.user, "alice");
        let (_, old) = store
            .add_key(&alice, "old", Some(unix_now() - 120))
            .await
            .unwrap();
        let ok = store.authenticate(&laptop).await.unwrap().unwrap();
        assert_eq!(ok.key_id, k.id);
        assert!(store.keys(Some(&alice)).await.unwrap()[1]
            .last_used
            .is_some());
        assert_eq!(
            store
                .authenticate(&old)
                .await
                .unwrap()
                .unwrap_err()
                .to_string(),
            "API key 'old' of alice expired 2m ago"
        );
        assert!(store.add_key(&alice, "laptop", None).await.is_err());
        store.revoke_key(&alice, "laptop").await.unwrap();
        assert_eq!(
            store.authenticate(&laptop).await.unwrap().unwrap_err(),
            KeyRefused::Revoked {
                user: "alice".into(),
                name: "laptop".into()
            }
        );
        assert!(store.key_refusal(&k.id).await.unwrap().is_some());
        assert!(store.revoke_key(&alice, "laptop").await.is_err());
        // Other keys still work; the name can be used again.
        assert!(store.authenticate(&first).await.unwrap().is_ok());
        store.add_key(&alice, "laptop", None).await.unwrap();

        let lock = store
            .add_lock(
                LockTarget::User,
                &alice.id,
                "alice",
                "incident 42",
                "root",
                None,
            )
            .await
            .unwrap();
        assert_eq!(lock.describe(), "user alice is locked: incident 42");
        assert!(store
            .lock_on(LockTarget::User, &alice.id)
            .await
            .unwrap()
            .is_some());
        assert_eq!(store.remove_locks("alice").await.unwrap(), 1);
        assert!(store
            .lock_on(LockTarget::User, &alice.id)
            .await
            .unwrap()
            .is_none());
        store
            .add_lock(
                LockTarget::User,
                &alice.id,
                "alice",
                "x",
                "root",
                Some(unix_now() - 1),
            )
            .await
            .unwrap();
        assert!(store
            .lock_on(LockTarget::User, &alice.id)
            .await
            .unwrap()
            .is_none());
    }
}
