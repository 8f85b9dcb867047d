//! `sesame sessions`: live and past sessions, ending a live one and exporting a
//! recording, as the relay's policies allow (`sessions_list`, `terminate`,
//! `replay` on each session).

use clap::Subcommand;
use serde::Deserialize;

use crate::client::{encode, query, Relay};
use crate::table::Table;
use crate::when;

/// `sesame sessions ...`.
#[derive(Debug, Subcommand)]
pub enum SessionsCmd {
    /// List sessions, newest first: yours, or with --all everyone's that the
    /// policies let you see.
    Ls {
        /// Everyone's sessions, not only yours.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Print a session's recording as it is: asciicast v2 for a shell (for any
    /// asciinema player), JSON lines for an exec or forward session.
    Export {
        /// Session id (s-...).
        id: String,
    },
    /// End a session at once (a live one, or one not started yet); its user is
    /// told who ended it and why.
    Terminate {
        /// Session id (s-...).
        id: String,
        /// Why (shown to the session's user).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// A session as the relay lists it.
#[derive(Debug, Deserialize)]
pub struct Session {
    /// Session id.
    pub id: String,
    /// Its user.
    pub user: String,
    /// Its target.
    pub target: String,
    /// `shell`, `exec`, `forward` or `ssh-key`.
    pub kind: String,
    /// The account it runs as.
    #[serde(default)]
    pub run_as: String,
    /// Unix seconds: its stream opened; `None` if it never did.
    #[serde(default)]
    pub started_at: Option<i64>,
    /// Unix seconds.
    #[serde(default)]
    pub ended_at: Option<i64>,
    /// How it ended.
    #[serde(default)]
    pub exit: Option<String>,
    /// Payload bytes from the client to the target.
    #[serde(default)]
    pub bytes_in: Option<u64>,
    /// Payload bytes from the target to the client.
    #[serde(default)]
    pub bytes_out: Option<u64>,
    /// Being served now.
    #[serde(default)]
    pub live: bool,
}

#[derive(Debug, Deserialize)]
struct Terminated {
    terminated: bool,
    /// Its recorded exit; `None` when it was still ending (or the relay does not
    /// say).
    #[serde(default)]
    exit: Option<String>,
}

/// Run a `sessions` command.
pub async fn run(relay: &Relay, cmd: SessionsCmd) -> anyhow::Result<()> {
    match cmd {
        SessionsCmd::Ls { all, json, limit } => {
            let limit = limit.to_string();
            let q = query(&[
                ("all", all.then_some("true")),
                ("limit", Some(limit.as_str())),
            ]);
            let raw: serde_json::Value =
                relay.call("GET", &format!("/v1/sessions{q}"), None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&raw)?);
                return Ok(());
            }
            let sessions: Vec<Session> = serde_json::from_value(raw)
                .map_err(|e| anyhow::anyhow!("unexpected answer from the relay: {e}"))?;
            table(&sessions, when::now()).print();
        }
        SessionsCmd::Export { id } => {
            use std::io::Write;
            let path = format!("/v1/sessions/{}/recording", encode(&id));
            let body = relay.get_bytes(&path).await?;
            let mut out = std::io::stdout().lock();
            out.write_all(&body)?;
            out.flush()?;
        }
        SessionsCmd::Terminate { id, reason } => {
            let mut body = serde_json::json!({});
            if let Some(r) = reason {
                body["reason"] = r.into();
            }
            let path = format!("/v1/sessions/{}/terminate", encode(&id));
            let t: Terminated = relay.call("POST", &path, Some(body)).await?;
            if !t.terminated {
                anyhow::bail!("the relay did not terminate {id}");
            }
            match t.exit {
                Some(exit) => println!("session {id} ended: {exit}"),
                None => println!("session {id} is ending"),
            }
        }
    }
    Ok(())
}

/// `1.2 MB`: bytes in decimal units, one decimal below 100.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        // Past 999.5 it would print as 1000.
        if v < 999.5 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    if v < 99.95 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.0} {unit}")
    }
}

/// The listing. A live session is `running`; times are relative to `now`, and a
/// relay clock ahead of ours never reads `in 3s`.
fn table(sessions: &[Session], now: i64) -> Table {
    let mut t = Table::new(&[
        "ID", "USER", "TARGET", "KIND", "ACCOUNT", "STARTED", "ENDED", "EXIT", "IN", "OUT",
    ]);
    let ago = |at: Option<i64>| at.map_or(String::new(), |at| when::relative(at.min(now), now));
    for s in sessions {
        let ended = if s.live {
            "running".into()
        } else {
            ago(s.ended_at)
        };
        t.row(vec![
            s.id.clone(),
            s.user.clone(),
            s.target.clone(),
            s.kind.clone(),
            s.run_as.clone(),
            ago(s.started_at),
            ended,
            s.exit.clone().unwrap_or_default(),
            s.bytes_in.map(bytes).unwrap_or_default(),
            s.bytes_out.map(bytes).unwrap_or_default(),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_in_decimal_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1000), "1.0 kB");
        assert_eq!(bytes(1234), "1.2 kB");
        assert_eq!(bytes(99_949), "99.9 kB");
        assert_eq!(bytes(99_950), "100 kB");
        assert_eq!(bytes(999_499), "999 kB");
        assert_eq!(bytes(999_500), "1.0 MB");
        assert_eq!(bytes(1_200_000), "1.2 MB");
        assert_eq!(bytes(u64::MAX), "18.4 EB");
    }

    #[test]
    fn live_sessions_run_and_ended_ones_say_how() {
        let now = 2_000_000_000;
        let sessions: Vec<Session> = serde_json::from_value(serde_json::json!([
            {"id": "s-2", "user": "bob", "target": "gw-01", "kind": "shell",
             "run_as": "deploy", "created_at": now - 40, "started_at": now - 40,
             "ended_at": null, "exit": null, "bytes_in": null, "bytes_out": null,
             "live": true, "recorded": false},
            {"id": "s-1", "user": "alice", "target": "db-01", "kind": "exec",
             "run_as": "sesame-user", "created_at": now - 200, "started_at": now - 190,
             "ended_at": now - 185, "exit": "terminated by root: incident 7",
             "bytes_in": 12, "bytes_out": 1_234_567, "live": false, "recorded": false},
            {"id": "s-0", "user": "alice", "target": "db-01", "kind": "forward",
             "run_as": "sesame-user", "created_at": now - 900, "started_at": null,
             "ended_at": now - 300, "exit": "token expired unused",
             "bytes_in": null, "bytes_out": null, "live": false, "recorded": false},
        ]))
        .unwrap();
        assert_eq!(
            table(&sessions, now).render(),
            "ID   USER   TARGET  KIND     ACCOUNT      STARTED  ENDED    EXIT                            IN    OUT\n\
             s-2  bob    gw-01   shell    deploy       40s ago  running  -                               -     -\n\
             s-1  alice  db-01   exec     sesame-user  3m ago   3m ago   terminated by root: incident 7  12 B  1.2 MB\n\
             s-0  alice  db-01   forward  sesame-user  -        5m ago   token expired unused            -     -\n"
        );
    }
}
