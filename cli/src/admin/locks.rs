//! `sesame admin locks`: keep a user or an agent out of every session, for a time
//! or until removed; adding one ends the sessions it covers.

use clap::{ArgGroup, Subcommand};
use serde::Deserialize;

use super::{count, fetch};
use crate::client::{encode, Relay};
use crate::table::Table;
use crate::when;

/// `sesame admin locks ...`.
#[derive(Debug, Subcommand)]
pub enum LocksCmd {
    /// List locks in force.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lock a user or an agent out, ending its sessions.
    #[command(group(ArgGroup::new("who").required(true).args(["user", "agent"])))]
    Add {
        /// The user to lock out.
        #[arg(long)]
        user: Option<String>,
        /// The agent to lock out.
        #[arg(long)]
        agent: Option<String>,
        /// Why (shown to whoever is refused).
        #[arg(long)]
        reason: String,
        /// For how long: 30d, 12h, 90m or 45s [default: until removed].
        #[arg(long = "for", value_name = "DURATION", value_parser = when::duration_arg, conflicts_with = "until")]
        for_: Option<String>,
        /// Until when: an RFC 3339 time (2030-01-31T12:00:00Z) or unix seconds.
        #[arg(long, value_name = "TIME", value_parser = when::parse_instant)]
        until: Option<i64>,
    },
    /// Remove a lock, by its id or by the user's or agent's name.
    Rm {
        /// Lock id, or the locked user's or agent's name.
        id_or_name: String,
    },
}

/// A lock as the relay lists it.
#[derive(Debug, Deserialize)]
pub struct Lock {
    /// Lock id.
    pub id: String,
    /// `user` or `agent`.
    pub target: String,
    /// The user's or agent's id.
    #[serde(default)]
    pub target_id: String,
    /// The user's or agent's name.
    pub name: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// Who locked it.
    #[serde(default)]
    pub created_by: String,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: Option<i64>,
    /// Unix seconds; `None` until removed.
    #[serde(default)]
    pub expires_at: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Added {
    lock: Lock,
    #[serde(default)]
    ended_sessions: u64,
}

#[derive(Debug, Deserialize)]
struct Removed {
    removed: u64,
}

/// Run a `locks` command.
pub async fn run(relay: &Relay, cmd: LocksCmd) -> anyhow::Result<()> {
    match cmd {
        LocksCmd::Ls { json } => {
            let Some(locks) =
                fetch::<Vec<Lock>>(relay, "GET", "/v1/admin/locks", None, json).await?
            else {
                return Ok(());
            };
            table(&locks, when::now()).print();
        }
        LocksCmd::Add {
            user,
            agent,
            reason,
            for_,
            until,
        } => {
            let mut body = serde_json::json!({ "reason": reason });
            if let Some(u) = user {
                body["user"] = u.into();
            }
            if let Some(a) = agent {
                body["agent"] = a.into();
            }
            if let Some(d) = for_ {
                body["for"] = d.into();
            }
            if let Some(t) = until {
                body["until"] = t.into();
            }
            let a: Added = relay.call("POST", "/v1/admin/locks", Some(body)).await?;
            let until = match a.lock.expires_at {
                Some(t) => format!("until {}", when::format_instant(t)),
                None => "until removed".into(),
            };
            println!(
                "locked {} {} (lock {}, {until}); ended {}",
                a.lock.target,
                a.lock.name,
                a.lock.id,
                count(a.ended_sessions, "session")
            );
        }
        LocksCmd::Rm { id_or_name } => {
            let path = format!("/v1/admin/locks/{}", encode(&id_or_name));
            let r: Removed = relay.call("DELETE", &path, None).await?;
            if r.removed == 0 {
                anyhow::bail!("no lock matches '{id_or_name}'");
            }
            println!("removed {}", count(r.removed, "lock"));
        }
    }
    Ok(())
}

/// The listing.
fn table(locks: &[Lock], now: i64) -> Table {
    let mut t = Table::new(&["ID", "TARGET", "NAME", "CREATED", "EXPIRES", "BY", "REASON"]);
    for l in locks {
        t.row(vec![
            l.id.clone(),
            l.target.clone(),
            l.name.clone(),
            when::relative_or(l.created_at, now, "-"),
            when::relative_or(l.expires_at, now, "never"),
            l.created_by.clone(),
            l.reason.clone(),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_list_newest_terms_last_column_reason() {
        let now = 2_000_000_000;
        let locks: Vec<Lock> = serde_json::from_value(serde_json::json!([
            {"id": "l-1", "target": "user", "target_id": "u-1", "name": "alice",
             "reason": "left the team", "created_by": "root", "created_at": now - 120,
             "expires_at": null},
            {"id": "l-2", "target": "agent", "target_id": "a-1", "name": "gw-01",
             "reason": "maintenance", "created_by": "bob", "created_at": now - 30,
             "expires_at": now + 3600},
        ]))
        .unwrap();
        assert_eq!(
            table(&locks, now).render(),
            "ID   TARGET  NAME   CREATED  EXPIRES  BY    REASON\n\
             l-1  user    alice  2m ago   never    root  left the team\n\
             l-2  agent   gw-01  30s ago  in 1h    bob   maintenance\n"
        );
    }
}
