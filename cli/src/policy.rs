//! `sesame policy check`: ask the relay how its policies decide a request, as if a
//! given user made it. Exit status 0 when allowed, 1 when denied, so that scripts
//! can test policies.

use std::net::IpAddr;

use clap::{Args, Subcommand};
use serde::Deserialize;

use crate::client::Relay;

/// `sesame policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Decide a request as the relay would (allow: exit 0, deny: exit 1).
    Check(Check),
}

/// `sesame policy check`.
#[derive(Debug, Args)]
pub struct Check {
    /// The user making the request.
    #[arg(long)]
    pub user: String,
    /// The action: shell, exec, forward, ssh_key_push, list, terminate, observe,
    /// replay, sessions_list, admin_users, admin_keys, admin_agents,
    /// admin_policies, admin_locks.
    #[arg(long)]
    pub action: String,
    /// Agent name (agent actions), user name (admin_keys) or session id (session
    /// actions).
    #[arg(long)]
    pub target: Option<String>,
    /// Account on the target [default: the agent's default account].
    #[arg(long, value_name = "ACCOUNT")]
    pub run_as: Option<String>,
    /// The client's address [default: this connection's].
    #[arg(long, value_name = "IP")]
    pub source_ip: Option<IpAddr>,
    /// Forward: the destination as seen from the target.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_dest)]
    pub dest: Option<(String, u16)>,
    /// SSH key push: the key's lifetime in seconds.
    #[arg(long, value_name = "SECS")]
    pub ttl: Option<u32>,
    /// Exec: one argument of the command (repeat for each), or give the command
    /// after `--`.
    #[arg(
        long = "command",
        value_name = "ARG",
        allow_hyphen_values = true,
        conflicts_with = "argv"
    )]
    pub command: Vec<String>,
    /// Exec: the command and its arguments.
    #[arg(last = true, value_name = "COMMAND")]
    pub argv: Vec<String>,
    /// Print the relay's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `HOST:PORT`, the host in brackets if it is an IPv6 address.
pub fn parse_dest(s: &str) -> Result<(String, u16), String> {
    let bad = || format!("invalid destination '{s}': use HOST:PORT ([ADDR]:PORT for IPv6)");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']').ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

impl Check {
    /// Body of `POST /v1/policy/check`.
    pub fn body(&self) -> serde_json::Value {
        let mut b = serde_json::json!({ "user": self.user, "action": self.action });
        if let Some(t) = &self.target {
            b["target"] = t.as_str().into();
        }
        if let Some(a) = &self.run_as {
            b["run_as"] = a.as_str().into();
        }
        if let Some(ip) = self.source_ip {
            b["source_ip"] = ip.to_string().into();
        }
        let command = if self.argv.is_empty() {
            &self.command
        } else {
            &self.argv
        };
        if !command.is_empty() {
            b["command"] = command.clone().into();
        }
        if let Some((host, port)) = &self.dest {
            b["dest_host"] = host.as_str().into();
            b["dest_port"] = (*port).into();
        }
        if let Some(ttl) = self.ttl {
            b["ttl"] = ttl.into();
        }
        b
    }
}

/// Answer of `POST /v1/policy/check`.
#[derive(Debug, Deserialize)]
pub struct Checked {
    /// `allow` or `deny`.
    pub decision: String,
    /// The policies that decided it.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Policies skipped because they failed to evaluate.
    #[serde(default)]
    pub errors: Vec<String>,
    /// The refusal a user would see (`denied: ...`), on deny.
    pub refusal: Option<String>,
    /// Version of the policy set.
    pub version: u64,
}

impl Checked {
    /// Whether the request is allowed.
    pub fn allowed(&self) -> bool {
        self.decision == "allow"
    }

    /// The verdict in one line: `allow (policy ops-lab-shell; policy set version 3)`,
    /// or `deny: alice may not ... (policy set version 3)`.
    pub fn line(&self) -> String {
        let set = format!("policy set version {}", self.version);
        let which = match self.policies.as_slice() {
            [] => set,
            [one] => format!("policy {one}; {set}"),
            many => format!("policies {}; {set}", many.join(", ")),
        };
        match &self.refusal {
            Some(r) if !self.allowed() => {
                let why = r.strip_prefix("denied: ").unwrap_or(r);
                format!("deny: {why} (policy set version {})", self.version)
            }
            _ => format!("{} ({which})", self.decision),
        }
    }
}

/// Run `sesame policy check`; the exit code: 0 allowed, 1 denied.
pub async fn check(relay: &Relay, args: &Check) -> anyhow::Result<i32> {
    let raw: serde_json::Value = relay
        .call("POST", "/v1/policy/check", Some(args.body()))
        .await?;
    let checked: Checked = serde_json::from_value(raw.clone())
        .map_err(|e| anyhow::anyhow!("unexpected answer from the relay: {e}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&raw)?);
    } else {
        for e in &checked.errors {
            eprintln!("warning: policy skipped: {e}");
        }
        println!("{}", checked.line());
    }
    Ok(if checked.allowed() { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        cmd: PolicyCmd,
    }

    fn parse(args: &[&str]) -> Result<Check, clap::Error> {
        let argv = ["policy"].iter().chain(args);
        T::try_parse_from(argv).map(|t| match t.cmd {
            PolicyCmd::Check(c) => c,
        })
    }

    #[test]
    fn the_command_comes_after_a_double_dash_or_in_flags() {
        let c = parse(&[
            "check",
            "--user",
            "bob",
            "--action",
            "exec",
            "--target",
            "db-01",
            "--",
            "systemctl",
            "status",
            "--json",
            "nginx",
        ])
        .unwrap();
        assert!(!c.json, "--json after -- belongs to the command");
        assert_eq!(
            c.body(),
            serde_json::json!({
                "user": "bob", "action": "exec", "target": "db-01",
                "command": ["systemctl", "status", "--json", "nginx"],
            })
        );
        let c = parse(&[
            "check",
            "--user",
            "bob",
            "--action",
            "exec",
            "--target",
            "db-01",
            "--command",
            "ls",
            "--command",
            "-l",
            "--json",
        ])
        .unwrap();
        assert!(c.json);
        assert_eq!(c.body()["command"], serde_json::json!(["ls", "-l"]));
        let both = parse(&[
            "check",
            "--user",
            "bob",
            "--action",
            "exec",
            "--command",
            "ls",
            "--",
            "ls",
        ]);
        assert!(both.is_err());
    }

    #[test]
    fn every_circumstance_reaches_the_request() {
        let c = parse(&[
            "check",
            "--user",
            "alice",
            "--action",
            "forward",
            "--target",
            "gw-01",
            "--run-as",
            "root",
            "--source-ip",
            "10.0.0.7",
            "--dest",
            "[fd00::5]:5432",
            "--ttl",
            "30",
        ])
        .unwrap();
        assert_eq!(
            c.body(),
            serde_json::json!({
                "user": "alice", "action": "forward", "target": "gw-01", "run_as": "root",
                "source_ip": "10.0.0.7", "dest_host": "fd00::5", "dest_port": 5432, "ttl": 30,
            })
        );
        assert!(parse(&[
            "check",
            "--user",
            "a",
            "--action",
            "shell",
            "--source-ip",
            "x"
        ])
        .is_err());
    }

    #[test]
    fn destinations_parse() {
        assert_eq!(
            parse_dest("db.internal:5432"),
            Ok(("db.internal".into(), 5432))
        );
        assert_eq!(parse_dest("[::1]:22"), Ok(("::1".into(), 22)));
        for bad in ["db", "db:0", "db:x", ":22", "::1:22", "[::1:22"] {
            assert!(parse_dest(bad).is_err(), "{bad:?} was accepted");
        }
    }

    fn answer(json: serde_json::Value) -> Checked {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn verdicts_read_as_one_line() {
        let allow = answer(serde_json::json!({
            "decision": "allow", "policies": ["ops-lab-shell"], "errors": [],
            "refusal": null, "version": 3,
        }));
        assert!(allow.allowed());
        assert_eq!(
            allow.line(),
            "allow (policy ops-lab-shell; policy set version 3)"
        );
        let several = answer(serde_json::json!({
            "decision": "allow", "policies": ["a", "b"], "errors": [], "refusal": null, "version": 4,
        }));
        assert_eq!(
            several.line(),
            "allow (policies a, b; policy set version 4)"
        );
        let deny = answer(serde_json::json!({
            "decision": "deny", "policies": [], "errors": ["p7: attribute 'team' missing"],
            "refusal": "denied: alice may not shell on gw-01 as root (no policy permits it)",
            "version": 3,
        }));
        assert!(!deny.allowed());
        assert_eq!(
            deny.line(),
            "deny: alice may not shell on gw-01 as root (no policy permits it) (policy set version 3)"
        );
    }
}
