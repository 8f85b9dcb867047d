//! `sesame admin users`: list, add (with a first API key), groups, attributes.

use std::collections::BTreeMap;

use clap::Subcommand;
use serde::Deserialize;

use super::{fetch, list, Secret};
use crate::client::{encode, Relay};
use crate::table::Table;
use crate::when;

/// `sesame admin users ...`.
#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// List users.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a user; prints their first API key's secret (shown once).
    Add {
        /// User name.
        name: String,
        /// A group to put them in (repeat for several).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
    },
    /// Add a user to groups or remove them from groups.
    Groups {
        /// User name.
        name: String,
        /// A group to add (repeat for several).
        #[arg(long, value_name = "GROUP")]
        add: Vec<String>,
        /// A group to leave (repeat for several).
        #[arg(long, value_name = "GROUP")]
        remove: Vec<String>,
    },
    /// Set an attribute of a user (a Cedar tag of the user: policies read it with
    /// `principal.hasTag("KEY") && principal.getTag("KEY") == ...`), or remove it
    /// with --unset.
    Attr {
        /// User name.
        name: String,
        /// Attribute name.
        key: String,
        /// Value (a string).
        #[arg(required_unless_present = "unset", conflicts_with = "unset")]
        value: Option<String>,
        /// Remove the attribute.
        #[arg(long)]
        unset: bool,
    },
}

/// A user as the relay lists it.
#[derive(Debug, Deserialize)]
pub struct User {
    /// User id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Attributes.
    #[serde(default)]
    pub attrs: BTreeMap<String, serde_json::Value>,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: Option<i64>,
}

/// `k=v` pairs joined by `sep`, strings without their quotes.
fn attrs(a: &BTreeMap<String, serde_json::Value>, sep: &str) -> String {
    let cells: Vec<String> = a
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            v => format!("{k}={v}"),
        })
        .collect();
    cells.join(sep)
}

/// Answer of `POST /v1/admin/users`.
#[derive(Debug, Deserialize)]
struct Created {
    user: User,
    key_id: String,
    secret: Secret,
}

/// Run a `users` command.
pub async fn run(relay: &Relay, cmd: UsersCmd) -> anyhow::Result<()> {
    match cmd {
        UsersCmd::Ls { json } => {
            let Some(users) =
                fetch::<Vec<User>>(relay, "GET", "/v1/admin/users", None, json).await?
            else {
                return Ok(());
            };
            let now = when::now();
            let mut t = Table::new(&["NAME", "ID", "GROUPS", "ATTRS", "CREATED"]);
            for u in users {
                t.row(vec![
                    u.name,
                    u.id,
                    list(&u.groups),
                    attrs(&u.attrs, ","),
                    when::relative_or(u.created_at, now, "-"),
                ]);
            }
            t.print();
        }
        UsersCmd::Add { name, groups } => {
            let body = serde_json::json!({ "name": name, "groups": groups });
            let c: Created = relay.call("POST", "/v1/admin/users", Some(body)).await?;
            println!("{}", c.secret.expose());
            let groups = if c.user.groups.is_empty() {
                "no groups".to_string()
            } else {
                format!("groups {}", c.user.groups.join(", "))
            };
            eprintln!(
                "note: added user {} ({groups}) with API key {}; its secret, above, is shown only once",
                c.user.name, c.key_id
            );
        }
        UsersCmd::Groups { name, add, remove } => {
            let body = serde_json::json!({ "add": add, "remove": remove });
            let path = format!("/v1/admin/users/{}/groups", encode(&name));
            let u: User = relay.call("POST", &path, Some(body)).await?;
            if u.groups.is_empty() {
                println!("{}: no groups", u.name);
            } else {
                println!("{}: groups {}", u.name, u.groups.join(", "));
            }
        }
        UsersCmd::Attr {
            name,
            key,
            value,
            unset: _,
        } => {
            // clap requires a value or --unset: no value means removal.
            let body = serde_json::json!({ "key": key, "value": value });
            let path = format!("/v1/admin/users/{}/attrs", encode(&name));
            let u: User = relay.call("POST", &path, Some(body)).await?;
            if u.attrs.is_empty() {
                println!("{}: no attrs", u.name);
            } else {
                println!("{}: attrs {}", u.name, attrs(&u.attrs, ", "));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_read_as_pairs() {
        let a: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(r#"{"team": "ops", "level": 3, "oncall": true}"#).unwrap();
        assert_eq!(attrs(&a, ","), "level=3,oncall=true,team=ops");
        assert_eq!(attrs(&BTreeMap::new(), ", "), "");
    }
}
