//! `sesame audit tail [-f] [--json]` and `sesame audit export --since ...`: the
//! relay's audit log (needs the action `audit`), as text or JSON lines for a SIEM.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::client::Relay;
use crate::when;

/// How often `tail -f` asks for new rows (an event shows within this).
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// How often `tail -f` tries again when the relay does not answer.
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// Rows per request.
const PAGE: usize = 1000;

/// `sesame audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// The newest rows, and with -f the new ones as they come.
    Tail(Tail),
    /// Every row since a time, as JSON lines.
    Export(Export),
}

/// `sesame audit tail`.
#[derive(Debug, Args)]
pub struct Tail {
    /// How many of the newest rows.
    #[arg(short = 'n', long, default_value_t = 20)]
    pub lines: usize,
    /// Keep printing rows as they are written.
    #[arg(short, long)]
    pub follow: bool,
    /// One JSON object per row (the stored row, with its hashes).
    #[arg(long)]
    pub json: bool,
}

/// `sesame audit export`.
#[derive(Debug, Args)]
pub struct Export {
    /// From this time: RFC 3339 (`2026-11-29T10:00:00Z`), unix seconds, or a
    /// duration ago (`1h`, `7d`).
    #[arg(long)]
    pub since: String,
}

/// Run `sesame audit ...`.
pub async fn run(relay: &Relay, cmd: &AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Tail(t) => tail(relay, t).await,
        AuditCmd::Export(e) => export(relay, e).await,
    }
}

async fn page(relay: &Relay, query: &str) -> anyhow::Result<Vec<Value>> {
    relay.call("GET", &format!("/v1/audit?{query}"), None).await
}

fn print(rows: &[Value], json: bool) -> anyhow::Result<i64> {
    let mut out = std::io::stdout().lock();
    let mut last = 0;
    for r in rows {
        last = r["seq"].as_i64().unwrap_or(last);
        if json {
            writeln!(out, "{r}")?;
        } else {
            writeln!(out, "{}", line(r))?;
        }
    }
    out.flush()?;
    Ok(last)
}

/// One row as text: `TIME  #SEQ  ACTOR  SOURCE  EVENT  TARGET  DETAIL`.
pub fn line(r: &Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
    let at = r["at"].as_i64().unwrap_or(0) / 1000;
    let detail = match &r["detail"] {
        Value::Object(m) if m.is_empty() => String::new(),
        d => d.to_string(),
    };
    format!(
        "{}  #{}  {}  {}  {}  {}  {}",
        when::format_instant(at),
        r["seq"],
        s("actor"),
        s("source_ip"),
        s("event"),
        s("target"),
        detail
    )
    .trim_end()
    .to_string()
}

async fn tail(relay: &Relay, t: &Tail) -> anyhow::Result<()> {
    let rows = page(relay, &format!("last={}&limit={PAGE}", t.lines)).await?;
    let mut last = print(&rows, t.json)?;
    if !t.follow {
        return Ok(());
    }
    if rows.is_empty() {
        // Nothing yet: start from the newest row there will be.
        last = page(relay, "last=1")
            .await?
            .first()
            .and_then(|r| r["seq"].as_i64())
            .unwrap_or(0);
    }
    // A relay that restarts or a network that drops is waited for, said once.
    let mut failing = false;
    loop {
        tokio::time::sleep(if failing { RETRY_EVERY } else { FOLLOW_EVERY }).await;
        match page(relay, &format!("after={last}&limit={PAGE}")).await {
            Ok(rows) => {
                if failing {
                    eprintln!("note: the relay answers again");
                    failing = false;
                }
                if !rows.is_empty() {
                    last = print(&rows, t.json)?;
                }
            }
            Err(e) if !failing => {
                eprintln!("warning: {e:#}; retrying every {}s", RETRY_EVERY.as_secs());
                failing = true;
            }
            Err(_) => {}
        }
    }
}

async fn export(relay: &Relay, e: &Export) -> anyhow::Result<()> {
    let since = match when::parse_duration(&e.since) {
        Ok(ago) => when::now() - ago as i64,
        Err(_) => when::parse_instant(&e.since).map_err(|m| anyhow::anyhow!("--since: {m}"))?,
    };
    let mut rows = page(relay, &format!("since={}&limit={PAGE}", since * 1000)).await?;
    while !rows.is_empty() {
        let last = print(&rows, true)?;
        if rows.len() < PAGE {
            break;
        }
        rows = page(relay, &format!("after={last}&limit={PAGE}")).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_reads_as_one_line() {
        let r = serde_json::json!({
            "seq": 7, "at": 1_795_990_000_123i64, "actor": "alice", "source_ip": "127.0.0.1",
            "event": "session.create", "target": "s-1", "detail": {"kind": "shell"},
            "prev": "00", "hash": "ab"
        });
        assert_eq!(
            line(&r),
            "2026-11-29T22:06:40Z  #7  alice  127.0.0.1  session.create  s-1  {\"kind\":\"shell\"}"
        );
        let bare = serde_json::json!({"seq": 1, "at": 0, "actor": "relay", "source_ip": null,
            "event": "relay.start", "target": "relay", "detail": {}});
        assert_eq!(
            line(&bare),
            "1970-01-01T00:00:00Z  #1  relay  -  relay.start  relay"
        );
    }
}
