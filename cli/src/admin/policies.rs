//! `sesame admin policies`: show the relay's Cedar policy set, put or remove one of
//! its files, reload it from disk. A set the relay refuses leaves the old one in
//! force; the error names the file and line.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde::Deserialize;

use super::fetch;
use crate::client::{encode, Relay};
use crate::when;

/// `sesame admin policies ...`.
#[derive(Debug, Subcommand)]
pub enum PoliciesCmd {
    /// Show the policy set's version, hash, load time, files and policy ids.
    Show {
        /// Also print this file's text.
        #[arg(long, value_name = "NAME.cedar")]
        file: Option<String>,
        /// Print JSON (with every file's text).
        #[arg(long)]
        json: bool,
    },
    /// Upload a policy file, adding it to the set or replacing the one of that name.
    Put {
        /// The local file.
        file: PathBuf,
        /// Its name in the set [default: the file's name].
        #[arg(long, value_name = "NAME.cedar")]
        name: Option<String>,
    },
    /// Remove a policy file from the set.
    Rm {
        /// Its name in the set.
        name: String,
    },
    /// Load the set again from the relay's policy directory.
    Reload,
}

/// Answer of `GET /v1/admin/policies`.
#[derive(Debug, Deserialize)]
pub struct PolicySet {
    /// Version, counting up on every change.
    pub version: u64,
    /// Hash of the set's text.
    pub hash: String,
    /// When it was loaded (unix seconds).
    #[serde(default)]
    pub loaded_at: Option<serde_json::Value>,
    /// The relay's policy directory.
    #[serde(default)]
    pub dir: Option<String>,
    /// Policy ids.
    #[serde(default)]
    pub ids: Vec<String>,
    /// File name to text.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

/// Answer of a change.
#[derive(Debug, Deserialize)]
struct Changed {
    version: u64,
    hash: String,
}

impl Changed {
    fn describe(&self) -> String {
        format!(
            "policy set version {} (hash {})",
            self.version,
            short(&self.hash)
        )
    }
}

/// The first 12 hex digits of a hash (after a `sha256:`-like prefix, if any).
pub fn short(hash: &str) -> &str {
    let hex = hash.rsplit(':').next().unwrap_or(hash);
    hex.get(..12).unwrap_or(hex)
}

/// A file name the set can hold: `NAME.cedar`, no directory.
fn check_name(name: &str) -> anyhow::Result<()> {
    let stem = name.strip_suffix(".cedar").unwrap_or("");
    if stem.is_empty() || name.contains('/') || name.starts_with('.') {
        bail!("invalid policy file name '{name}': use NAME.cedar, without a directory");
    }
    Ok(())
}

/// The summary lines of `show`.
fn summary(set: &PolicySet, now: i64) -> String {
    let loaded = match &set.loaded_at {
        Some(serde_json::Value::Number(n)) => match n.as_i64() {
            Some(t) => format!("{} ({})", when::format_instant(t), when::relative(t, now)),
            None => n.to_string(),
        },
        Some(serde_json::Value::String(s)) => s.clone(),
        _ => "-".into(),
    };
    let files: Vec<String> = set.files.keys().cloned().collect();
    let or_dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    format!(
        "version  {}\nhash     {}\nloaded   {loaded}\ndir      {}\nfiles    {}\nids      {}\n",
        set.version,
        short(&set.hash),
        set.dir.as_deref().unwrap_or("-"),
        or_dash(files.join(", ")),
        or_dash(set.ids.join(", ")),
    )
}

/// Run a `policies` command.
pub async fn run(relay: &Relay, cmd: PoliciesCmd) -> anyhow::Result<()> {
    match cmd {
        PoliciesCmd::Show { file, json } => {
            let Some(set) =
                fetch::<PolicySet>(relay, "GET", "/v1/admin/policies", None, json).await?
            else {
                return Ok(());
            };
            let text = match &file {
                Some(f) => match set.files.get(f) {
                    Some(text) => Some(text),
                    None => {
                        let names: Vec<&str> = set.files.keys().map(String::as_str).collect();
                        bail!(
                            "no policy file '{f}' in the set (files: {})",
                            if names.is_empty() {
                                "none".into()
                            } else {
                                names.join(", ")
                            }
                        );
                    }
                },
                None => None,
            };
            print!("{}", summary(&set, when::now()));
            if let Some(text) = text {
                println!();
                print!("{text}");
                if !text.ends_with('\n') {
                    println!();
                }
            }
        }
        PoliciesCmd::Put { file, name } => {
            let name = match name {
                Some(n) => n,
                None => file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(String::from)
                    .with_context(|| format!("cannot name {}: give --name", file.display()))?,
            };
            check_name(&name)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let path = format!("/v1/admin/policies/{}", encode(&name));
            let c: Changed = relay.call_text("PUT", &path, text).await?;
            println!("put {name}: {}", c.describe());
        }
        PoliciesCmd::Rm { name } => {
            check_name(&name)?;
            let path = format!("/v1/admin/policies/{}", encode(&name));
            let c: Changed = relay.call("DELETE", &path, None).await?;
            println!("removed {name}: {}", c.describe());
        }
        PoliciesCmd::Reload => {
            let c: Changed = relay
                .call("POST", "/v1/admin/policies/reload", None)
                .await?;
            println!("reloaded: {}", c.describe());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_show_twelve_digits() {
        assert_eq!(short("0123456789abcdef0123"), "0123456789ab");
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
    }

    #[test]
    fn policy_file_names_end_in_cedar() {
        assert!(check_name("ops.cedar").is_ok());
        for bad in [
            "ops",
            ".cedar",
            "ops.txt",
            "../ops.cedar",
            "a/ops.cedar",
            ".hidden.cedar",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_summary_names_version_hash_time_and_ids() {
        let now = 1896091200;
        let set: PolicySet = serde_json::from_value(serde_json::json!({
            "version": 3, "hash": "9f86d081884c7d659a2feaa0c55ad015", "loaded_at": now - 180,
            "dir": "/etc/sesame/policies", "ids": ["ops-lab-shell", "admins-all"],
            "files": {"ops.cedar": "permit(principal, action, resource);\n", "base.cedar": ""},
        }))
        .unwrap();
        assert_eq!(
            summary(&set, now),
            "version  3\n\
             hash     9f86d081884c\n\
             loaded   2030-01-31T11:57:00Z (3m ago)\n\
             dir      /etc/sesame/policies\n\
             files    base.cedar, ops.cedar\n\
             ids      ops-lab-shell, admins-all\n"
        );
    }
}
