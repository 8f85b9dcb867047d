//! `sesame admin`: users, API keys, agents, policies and locks, through the relay's
//! admin API (each call authorised by the relay's policies, `admin_*` actions).
//!
//! Output: listings are aligned tables (or the relay's JSON with `--json`); a
//! secret the relay shows once (an API key, an activation code) is printed alone
//! on stdout, so that `KEY=$(sesame admin keys add laptop)` works, with a note on
//! stderr; changes print one line saying what changed.

use clap::Subcommand;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::client::Relay;

pub mod agents;
pub mod keys;
pub mod locks;
pub mod policies;
pub mod users;

/// `sesame admin ...`.
#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Users, their groups and attributes.
    Users {
        #[command(subcommand)]
        cmd: users::UsersCmd,
    },
    /// API keys.
    Keys {
        #[command(subcommand)]
        cmd: keys::KeysCmd,
    },
    /// Agents (targets): add with an activation code, revoke.
    Agents {
        #[command(subcommand)]
        cmd: agents::AgentsCmd,
    },
    /// The Cedar policy set.
    Policies {
        #[command(subcommand)]
        cmd: policies::PoliciesCmd,
    },
    /// Locks that keep a user or an agent out of every session.
    Locks {
        #[command(subcommand)]
        cmd: locks::LocksCmd,
    },
}

/// Run an admin command; returns the exit code.
pub async fn run(relay: &Relay, cmd: AdminCmd) -> anyhow::Result<i32> {
    match cmd {
        AdminCmd::Users { cmd } => users::run(relay, cmd).await?,
        AdminCmd::Keys { cmd } => keys::run(relay, cmd).await?,
        AdminCmd::Agents { cmd } => agents::run(relay, cmd).await?,
        AdminCmd::Policies { cmd } => policies::run(relay, cmd).await?,
        AdminCmd::Locks { cmd } => locks::run(relay, cmd).await?,
    }
    Ok(0)
}

/// A secret the relay shows once; kept out of `Debug` output.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, to print for the user.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

/// Call the API; with `json`, print the raw answer and return `None`, else return
/// it as a `T`.
async fn fetch<T: DeserializeOwned>(
    relay: &Relay,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    json: bool,
) -> anyhow::Result<Option<T>> {
    let raw: serde_json::Value = relay.call(method, path, body).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&raw)?);
        return Ok(None);
    }
    serde_json::from_value(raw)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("unexpected answer from the relay: {e}"))
}

/// `1 session`, `2 sessions`.
pub fn count(n: u64, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// A list for a table cell or a line: `a, b`, empty when there is nothing.
fn list(items: &[String]) -> String {
    items.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_agree_in_number() {
        assert_eq!(count(0, "session"), "0 sessions");
        assert_eq!(count(1, "session"), "1 session");
        assert_eq!(count(2, "lock"), "2 locks");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let s: Secret = serde_json::from_str("\"sk-123\"").unwrap();
        assert_eq!(format!("{s:?}"), "Secret(<hidden>)");
        assert_eq!(s.expose(), "sk-123");
    }
}
