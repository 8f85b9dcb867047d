//! `sesame recordings grep TEXT [--target T] [--user U] [--since ...]`: the lines of
//! recorded output (shells and execs, terminal escape sequences stripped) that
//! contain TEXT, in the sessions you may `replay`, newest session first:
//! `SESSION  +OFFSET  LINE`. The relay searches, and records the search in its
//! audit log. Exits 1 when nothing matched, as grep does.

use clap::{Args, Subcommand};
use serde::Deserialize;

use crate::client::{query, Relay};
use crate::when;

/// `sesame recordings ...`.
#[derive(Debug, Subcommand)]
pub enum RecordingsCmd {
    /// Find the sessions whose output contains TEXT, and where.
    Grep(Grep),
}

/// `sesame recordings grep`.
#[derive(Debug, Args)]
pub struct Grep {
    /// The text to find (one line, plain text).
    pub text: String,
    /// Only sessions on this target.
    #[arg(long)]
    pub target: Option<String>,
    /// Only this user's sessions.
    #[arg(long)]
    pub user: Option<String>,
    /// Only sessions since this time: RFC 3339 (`2026-11-29T10:00:00Z`), unix
    /// seconds, or a duration ago (`1h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// Match in any case.
    #[arg(short, long)]
    pub ignore_case: bool,
    /// At most this many lines (1 to 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// One matching line, as the relay answers.
#[derive(Debug, Deserialize)]
pub struct Hit {
    /// Session id.
    pub session: String,
    /// Seconds from the session's start.
    pub offset: f64,
    /// The line.
    pub line: String,
}

/// `+1:02`, `+1:02:03`: a time offset in the session.
pub fn offset(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, m, s) => format!("+{m}:{s:02}"),
        (h, m, s) => format!("+{h}:{m:02}:{s:02}"),
    }
}

/// Run `sesame recordings ...`; the exit code.
pub async fn run(relay: &Relay, cmd: &RecordingsCmd) -> anyhow::Result<i32> {
    let RecordingsCmd::Grep(g) = cmd;
    let since = match &g.since {
        None => None,
        Some(s) => Some(match when::parse_duration(s) {
            Ok(ago) => when::now() - ago as i64,
            Err(_) => when::parse_instant(s).map_err(|m| anyhow::anyhow!("--since: {m}"))?,
        }),
    };
    let (since, limit) = (since.map(|s| s.to_string()), g.limit.to_string());
    let q = query(&[
        ("text", Some(g.text.as_str())),
        ("target", g.target.as_deref()),
        ("user", g.user.as_deref()),
        ("since", since.as_deref()),
        ("ignore_case", g.ignore_case.then_some("true")),
        ("limit", Some(limit.as_str())),
    ]);
    let raw: serde_json::Value = relay
        .call("GET", &format!("/v1/recordings/grep{q}"), None)
        .await?;
    let found = raw.as_array().is_some_and(|a| !a.is_empty());
    if g.json {
        println!("{}", serde_json::to_string_pretty(&raw)?);
    } else {
        let hits: Vec<Hit> = serde_json::from_value(raw)
            .map_err(|e| anyhow::anyhow!("unexpected answer from the relay: {e}"))?;
        for h in hits {
            println!("{}  {}  {}", h.session, offset(h.offset), h.line);
        }
    }
    Ok(if found { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_read_as_minutes_and_seconds() {
        assert_eq!(offset(0.0), "+0:00");
        assert_eq!(offset(12.7), "+0:12");
        assert_eq!(offset(62.0), "+1:02");
        assert_eq!(offset(3723.0), "+1:02:03");
        assert_eq!(offset(-1.0), "+0:00");
    }
}
