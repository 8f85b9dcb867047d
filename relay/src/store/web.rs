//! The browser console's logins: one-time login links (made with an API key by
//! `sesame web`) and the browser sessions they, or a pasted key, open. Both are
//! kept as hashes only; a browser session acts with the API key it was opened with,
//! so revoking, expiring or locking that key or its user ends it too.

use sqlx::Row;

use super::{unix_now, Store};
use crate::secret::{random_base32, Secret};
use crate::Error;

/// A browser session, as the relay finds it from its cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSession {
    /// Id (`ws-...`), for the audit log.
    pub id: String,
    /// The API key it acts with.
    pub key_id: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefused {
    /// Unknown, used or expired: the page says which cannot be told apart.
    #[error("this login link is unknown, used or expired: run `sesame web` again")]
    Link,
}

impl Store {
    /// A one-time login link's secret for the key `key_id`, valid `ttl` seconds.
    pub async fn add_login_link(&self, key_id: &str, ttl: i64) -> Result<(Secret, i64), Error> {
        let code = Secret::generate("wl_");
        let now = unix_now();
        sqlx::query(
            "INSERT INTO web_links (hash, key_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
        )
        .bind(code.hash())
        .bind(key_id)
        .bind(now)
        .bind(now + ttl)
        .execute(&self.pool)
        .await?;
        Ok((code, now + ttl))
    }

    /// Use a login link once: the key it was made with.
    pub async fn redeem_login_link(
        &self,
        code: &Secret,
    ) -> Result<Result<String, LoginRefused>, Error> {
        let now = unix_now();
        let row = sqlx::query(
            "UPDATE web_links SET used_at = ? WHERE hash = ? AND used_at IS NULL AND expires_at > ?
             RETURNING key_id",
        )
        .bind(now)
        .bind(code.hash())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        // Links are short-lived: those past their time go.
        sqlx::query("DELETE FROM web_links WHERE expires_at < ?")
            .bind(now - 3600)
            .execute(&self.pool)
            .await?;
        Ok(row.map(|r| r.get("key_id")).ok_or(LoginRefused::Link))
    }

    /// A browser session for the key `key_id`, valid `ttl` seconds: its cookie's
    /// secret and its row.
    pub async fn add_web_session(
        &self,
        key_id: &str,
        ttl: i64,
    ) -> Result<(Secret, WebSession), Error> {
        let secret = Secret::generate("wc_");
        let now = unix_now();
        let s = WebSession {
            id: format!("ws-{}", random_base32(10)),
            key_id: key_id.to_string(),
            expires_at: now + ttl,
        };
        sqlx::query(
            "INSERT INTO web_sessions (hash, id, key_id, created_at, expires_at)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(secret.hash())
        .bind(&s.id)
        .bind(key_id)
        .bind(now)
        .bind(s.expires_at)
        .execute(&self.pool)
        .await?;
        Ok((secret, s))
    }

    /// The accounts shell and exec sessions on the agent `agent_id` ran as, latest
    /// first (50 at most).
    pub async fn accounts_used(&self, agent_id: &str) -> Result<Vec<String>, Error> {
        let rows = sqlx::query(
            "SELECT run_as, MAX(created_at) AS latest FROM sessions
             WHERE agent_id = ? AND kind IN ('shell', 'exec') AND token_used_at IS NOT NULL
               AND run_as != ''
             GROUP BY run_as ORDER BY latest DESC LIMIT 50",
        )
        .bind(agent_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get("run_as")).collect())
    }

    /// The live browser session of a cookie's secret, if it is one.
    pub async fn web_session(&self, secret: &Secret) -> Result<Option<WebSession>, Error> {
        let row = sqlx::query(
            "SELECT id, key_id, expires_at FROM web_sessions
             WHERE hash = ? AND ended_at IS NULL AND expires_at > ?",
        )
        .bind(secret.hash())
        .bind(unix_now())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| WebSession {
            id: r.get("id"),
            key_id: r.get("key_id"),
            expires_at: r.get("expires_at"),
        }))
    }

    /// Whether the browser session `id` is live (not logged out, not expired).
    pub async fn web_session_live(&self, id: &str) -> Result<bool, Error> {
        let row = sqlx::query(
            "SELECT 1 FROM web_sessions WHERE id = ? AND ended_at IS NULL AND expires_at > ?",
        )
        .bind(id)
        .bind(unix_now())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// End a browser session (logout): its cookie opens nothing from now on.
    pub async fn end_web_session(&self, id: &str) -> Result<(), Error> {
        let now = unix_now();
        sqlx::query("UPDATE web_sessions SET ended_at = ? WHERE id = ? AND ended_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        // Sessions ended or expired a day ago are of no more use.
        sqlx::query("DELETE FROM web_sessions WHERE expires_at < ? OR ended_at < ?")
            .bind(now - 86_400)
            .bind(now - 86_400)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in a fresh directory with one user; its key's id.
    async fn store(tag: &str) -> (Store, String) {
        let dir = std::env::temp_dir().join(format!("sesame-web-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).await.unwrap();
        let (_, key) = store.add_user("alice", &[]).await.unwrap();
        let caller = store.authenticate(&key).await.unwrap().unwrap();
        (store, caller.key_id)
    }

    #[tokio::test]
    async fn a_login_link_works_once() {
        let (store, key) = store("once").await;
        let (code, _) = store.add_login_link(&key, 60).await.unwrap();
        assert_eq!(store.redeem_login_link(&code).await.unwrap(), Ok(key));
        assert_eq!(
            store.redeem_login_link(&code).await.unwrap(),
            Err(LoginRefused::Link)
        );
        let forged = Secret::from_string("wl_nothing".into());
        assert!(store.redeem_login_link(&forged).await.unwrap().is_err());
    }

    #[tokio::test]
    async fn an_expired_link_is_refused() {
        let (store, key) = store("expired").await;
        let (code, _) = store.add_login_link(&key, -1).await.unwrap();
        assert!(store.redeem_login_link(&code).await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_browser_session_lasts_until_logout_or_expiry() {
        let (store, key) = store("session").await;
        let (secret, s) = store.add_web_session(&key, 3600).await.unwrap();
        assert_eq!(store.web_session(&secret).await.unwrap(), Some(s.clone()));
        store.end_web_session(&s.id).await.unwrap();
        assert_eq!(store.web_session(&secret).await.unwrap(), None);
        let (old, _) = store.add_web_session(&key, -1).await.unwrap();
        assert_eq!(store.web_session(&old).await.unwrap(), None);
    }
}
