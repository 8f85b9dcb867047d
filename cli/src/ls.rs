//! `sesame ls`: targets and their online state.

use serde::{Deserialize, Serialize};

use crate::client::Relay;

/// One target as the relay lists it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Target {
    /// Agent id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Tags.
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// Connected now.
    pub online: bool,
    /// Unix seconds of the last connect or disconnect.
    pub last_seen: Option<i64>,
    /// Sessions running.
    #[serde(default)]
    pub sessions: usize,
}

/// The LAST SEEN column: an online target is seen now (its `last_seen` is when it
/// connected, which is not when it was last seen).
fn last_seen(online: bool, at: Option<i64>) -> String {
    match (online, at) {
        (true, _) => "now".into(),
        (false, Some(t)) => {
            // A relay clock ahead of ours must not read "in 3s".
            let now = crate::when::now();
            crate::when::relative(t.min(now), now)
        }
        (false, None) => "never".into(),
    }
}

/// Print the targets as a table or as JSON.
pub async fn run(relay: &Relay, json: bool) -> anyhow::Result<()> {
    let targets: Vec<Target> = relay.call("GET", "/v1/agents", None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&targets)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<16} {:<8} {:<9} {:<12} TAGS",
        "NAME", "ID", "STATE", "SESSIONS", "LAST SEEN"
    );
    for t in targets {
        let tags: Vec<String> = t.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<20} {:<16} {:<8} {:<9} {:<12} {}",
            t.name,
            t.id,
            if t.online { "online" } else { "offline" },
            t.sessions,
            last_seen(t.online, t.last_seen),
            tags.join(",")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_online_target_is_seen_now() {
        let connected = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            - 11;
        assert_eq!(last_seen(true, Some(connected)), "now");
        assert_eq!(last_seen(false, Some(connected)), "11s ago");
        assert_eq!(last_seen(false, None), "never");
    }
}
