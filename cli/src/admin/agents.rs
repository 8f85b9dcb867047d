//! `sesame admin agents`: list (with revoked ones), add (an activation code),
//! revoke.

use std::collections::BTreeMap;

use clap::Subcommand;
use serde::Deserialize;

use super::{count, fetch, Secret};
use crate::client::{encode, Relay};
use crate::table::Table;
use crate::when;

/// `sesame admin agents ...`.
#[derive(Debug, Subcommand)]
pub enum AgentsCmd {
    /// List agents, revoked ones included.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add an agent; prints its one-time activation code
    /// (`sesame-agent --activate CODE`).
    Add {
        /// Agent name.
        name: String,
        /// A tag, KEY=VALUE (repeat for several); policies read them with
        /// `resource.hasTag("KEY") && resource.getTag("KEY") == ...`.
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// Revoke an agent: disconnect it, end its sessions, refuse it from now on.
    Revoke {
        /// Agent name or id.
        name: String,
    },
}

/// `KEY=VALUE`.
pub fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("invalid tag '{s}': use KEY=VALUE")),
    }
}

/// An agent as the admin API lists it.
#[derive(Debug, Deserialize)]
pub struct Agent {
    /// Agent id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Connected now.
    #[serde(default)]
    pub online: bool,
    /// Unix seconds of the last connect or disconnect.
    #[serde(default)]
    pub last_seen: Option<i64>,
    /// Sessions running.
    #[serde(default)]
    pub sessions: u64,
    /// Unix seconds of the revocation.
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Created {
    id: String,
    activation_code: Secret,
}

#[derive(Debug, Deserialize)]
struct Revoked {
    #[serde(default)]
    ended_sessions: u64,
    #[serde(default)]
    disconnected: bool,
}

/// Run an `agents` command.
pub async fn run(relay: &Relay, cmd: AgentsCmd) -> anyhow::Result<()> {
    match cmd {
        AgentsCmd::Ls { json } => {
            let Some(agents) =
                fetch::<Vec<Agent>>(relay, "GET", "/v1/admin/agents", None, json).await?
            else {
                return Ok(());
            };
            table(&agents, when::now()).print();
        }
        AgentsCmd::Add { name, tags } => {
            let tags: BTreeMap<String, String> = tags.into_iter().collect();
            let body = serde_json::json!({ "name": name, "tags": tags });
            let c: Created = relay.call("POST", "/v1/admin/agents", Some(body)).await?;
            println!("{}", c.activation_code.expose());
            eprintln!(
                "note: added agent {name} ({}); start it once with --activate and the code above, which is shown only once",
                c.id
            );
        }
        AgentsCmd::Revoke { name } => {
            let path = format!("/v1/admin/agents/{}/revoke", encode(&name));
            let r: Revoked = relay.call("POST", &path, None).await?;
            println!(
                "revoked agent {name}: ended {}, {}",
                count(r.ended_sessions, "session"),
                if r.disconnected {
                    "disconnected it"
                } else {
                    "it was not connected"
                }
            );
        }
    }
    Ok(())
}

/// The listing: as `sesame ls`, and revoked agents say so.
fn table(agents: &[Agent], now: i64) -> Table {
    let mut t = Table::new(&["NAME", "ID", "STATE", "SESSIONS", "LAST SEEN", "TAGS"]);
    for a in agents {
        let state = match (a.revoked_at, a.online) {
            (Some(_), _) => "revoked",
            (None, true) => "online",
            (None, false) => "offline",
        };
        let seen = if a.online {
            "now".into()
        } else {
            // A relay clock ahead of ours must not read "in 3s".
            when::relative_or(a.last_seen.map(|t| t.min(now)), now, "never")
        };
        let tags: Vec<String> = a.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        t.row(vec![
            a.name.clone(),
            a.id.clone(),
            state.into(),
            a.sessions.to_string(),
            seen,
            tags.join(","),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse() {
        assert_eq!(parse_tag("env=lab"), Ok(("env".into(), "lab".into())));
        assert_eq!(parse_tag("note=a=b"), Ok(("note".into(), "a=b".into())));
        assert_eq!(parse_tag("empty="), Ok(("empty".into(), "".into())));
        assert!(parse_tag("env").is_err());
        assert!(parse_tag("=lab").is_err());
    }

    #[test]
    fn revoked_agents_say_so() {
        let now = 2_000_000_000;
        let agents: Vec<Agent> = serde_json::from_value(serde_json::json!([
            {"id": "a-1", "name": "gw-01", "tags": {"env": "lab", "role": "gw"}, "online": true,
             "last_seen": now - 500, "sessions": 2, "revoked_at": null},
            {"id": "a-2", "name": "db-01", "tags": {}, "online": false,
             "last_seen": now - 7200, "sessions": 0, "revoked_at": now - 60},
            {"id": "a-3", "name": "new", "tags": {}, "online": false,
             "last_seen": null, "sessions": 0, "revoked_at": null},
        ]))
        .unwrap();
        assert_eq!(
            table(&agents, now).render(),
            "NAME   ID   STATE    SESSIONS  LAST SEEN  TAGS\n\
             gw-01  a-1  online   2         now        env=lab,role=gw\n\
             db-01  a-2  revoked  0         2h ago     -\n\
             new    a-3  offline  0         never      -\n"
        );
    }
}
