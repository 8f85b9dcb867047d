//! `sesame admin keys`: a user's API keys: list, add (with an expiry), revoke.

use clap::Subcommand;
use serde::Deserialize;

use super::{count, fetch, Secret};
use crate::client::{query, Relay};
use crate::table::Table;
use crate::when;

/// `sesame admin keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// List API keys.
    Ls {
        /// Whose keys [default: yours].
        #[arg(long)]
        user: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add an API key; prints its secret (shown once).
    Add {
        /// A name for the key (e.g. the machine it is for).
        name: String,
        /// Whose key [default: yours].
        #[arg(long)]
        user: Option<String>,
        /// Lifetime: 30d, 12h, 90m or 45s [default: never expires].
        #[arg(long, value_name = "DURATION", value_parser = when::duration_arg)]
        expires: Option<String>,
    },
    /// Revoke an API key and end the sessions opened with it.
    Revoke {
        /// Key id (k-...) or name.
        key: String,
        /// Whose key [default: yours].
        #[arg(long)]
        user: Option<String>,
    },
}

/// An API key as the relay lists it (times in unix seconds).
#[derive(Debug, Deserialize)]
pub struct Key {
    /// Key id (`k-...`).
    pub id: String,
    /// Owner's name.
    pub user: String,
    /// Name.
    pub name: String,
    /// Creation time.
    #[serde(default)]
    pub created_at: Option<i64>,
    /// Expiry, `None` for never.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Last use, `None` for never.
    #[serde(default)]
    pub last_used: Option<i64>,
    /// Revocation time.
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

impl Key {
    /// `active`, `expired` or `revoked` at `now`.
    pub fn state(&self, now: i64) -> &'static str {
        match (self.revoked_at, self.expires_at) {
            (Some(_), _) => "revoked",
            (None, Some(t)) if t <= now => "expired",
            _ => "active",
        }
    }
}

#[derive(Debug, Deserialize)]
struct Created {
    key: Key,
    secret: Secret,
}

#[derive(Debug, Deserialize)]
struct Revoked {
    key: Key,
    #[serde(default)]
    ended_sessions: u64,
}

/// Run a `keys` command.
pub async fn run(relay: &Relay, cmd: KeysCmd) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::Ls { user, json } => {
            let path = format!("/v1/admin/keys{}", query(&[("user", user.as_deref())]));
            let Some(keys) = fetch::<Vec<Key>>(relay, "GET", &path, None, json).await? else {
                return Ok(());
            };
            table(&keys, when::now()).print();
        }
        KeysCmd::Add {
            name,
            user,
            expires,
        } => {
            let mut body = serde_json::json!({ "name": name });
            if let Some(u) = user {
                body["user"] = u.into();
            }
            if let Some(e) = &expires {
                body["expires_in"] = e.as_str().into();
            }
            let c: Created = relay.call("POST", "/v1/admin/keys", Some(body)).await?;
            println!("{}", c.secret.expose());
            let expiry = match c.key.expires_at {
                Some(t) => format!("expires {}", when::format_instant(t)),
                None => "never expires".into(),
            };
            eprintln!(
                "note: added API key {} ({}) of {}, {expiry}; its secret, above, is shown only once",
                c.key.id, c.key.name, c.key.user
            );
        }
        KeysCmd::Revoke { key, user } => {
            let mut body = serde_json::json!({ "key": key });
            if let Some(u) = user {
                body["user"] = u.into();
            }
            let r: Revoked = relay
                .call("POST", "/v1/admin/keys/revoke", Some(body))
                .await?;
            println!(
                "revoked API key {} ({}) of {}; ended {}",
                r.key.id,
                r.key.name,
                r.key.user,
                count(r.ended_sessions, "session")
            );
        }
    }
    Ok(())
}

/// The listing.
fn table(keys: &[Key], now: i64) -> Table {
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "USER",
        "STATE",
        "CREATED",
        "EXPIRES",
        "LAST USED",
    ]);
    for k in keys {
        t.row(vec![
            k.id.clone(),
            k.name.clone(),
            k.user.clone(),
            k.state(now).into(),
            when::relative_or(k.created_at, now, "-"),
            when::relative_or(k.expires_at, now, "never"),
            when::relative_or(k.last_used, now, "never"),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_list_with_their_state_and_times() {
        let now = 2_000_000_000;
        let keys: Vec<Key> = serde_json::from_value(serde_json::json!([
            {"id": "k-1", "user": "alice", "name": "laptop", "created_at": now - 3 * 86400,
             "expires_at": now + 5 * 86400 + 60, "last_used": now - 180, "revoked_at": null},
            {"id": "k-2", "user": "alice", "name": "ci", "created_at": now - 7200,
             "expires_at": now - 60, "last_used": null, "revoked_at": null},
            {"id": "k-3", "user": "alice", "name": "old", "created_at": now - 86400,
             "expires_at": null, "last_used": null, "revoked_at": now - 10},
        ]))
        .unwrap();
        assert_eq!(
            table(&keys, now).render(),
            "ID   NAME    USER   STATE    CREATED  EXPIRES  LAST USED\n\
             k-1  laptop  alice  active   3d ago   in 5d    3m ago\n\
             k-2  ci      alice  expired  2h ago   1m ago   never\n\
             k-3  old     alice  revoked  1d ago   never    never\n"
        );
    }
}
