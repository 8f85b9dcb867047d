//! Sessions as listed (`GET /v1/sessions`), newest first; the end of a session as
//! its stream task records it: the payload it carried each way and, when something
//! at the relay ended it (a terminate, a revoked key, a lock), why; and the end of
//! one whose stream never opened (a terminate).

use sqlx::Row;

use super::{unix_now, Store};
use crate::Error;

/// Payload bytes a session carried, every channel counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// From the client to the agent.
    pub bytes_in: u64,
    /// From the agent to the client.
    pub bytes_out: u64,
}

/// A session as listed, with its user's and target's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionListed {
    /// Session id.
    pub id: String,
    /// The user's id.
    pub user_id: String,
    /// The user's name (its id if the user is gone).
    pub user: String,
    /// The agent's id.
    pub agent_id: String,
    /// The agent's name (its id if the agent is gone).
    pub target: String,
    /// `shell`, `exec`, `forward` or `ssh-key`.
    pub kind: String,
    /// The account it runs as.
    pub run_as: String,
    /// Unix seconds: when it was asked for.
    pub created_at: i64,
    /// Unix seconds: when its stream opened (its token was used).
    pub started_at: Option<i64>,
    /// Unix seconds.
    pub ended_at: Option<i64>,
    /// How it ended (`exit 0`, `signal 9`, `terminated by alice: ...`).
    pub exit: Option<String>,
    /// See [`Traffic`]; `None` before the session ends, or if it never started.
    pub bytes_in: Option<u64>,
    /// See [`Traffic`].
    pub bytes_out: Option<u64>,
}

/// A byte count as stored (SQLite integers are signed).
fn count(n: Option<i64>) -> Option<u64> {
    n.map(|n| u64::try_from(n).unwrap_or(0))
}

/// Where a listing goes on from: the last row's `(created_at, rowid)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(i64, i64);

impl Store {
    /// Up to `limit` sessions, newest first (by creation, then insertion), after
    /// `after` if given; only `user_id`'s when given. Each with the cursor to go on
    /// from.
    pub async fn sessions_page(
        &self,
        user_id: Option<&str>,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<Vec<(Cursor, SessionListed)>, Error> {
        let (at, seq) = match after {
            Some(Cursor(at, seq)) => (at, seq),
            None => (i64::MAX, i64::MAX),
        };
        let rows = sqlx::query(
            "SELECT s.rowid AS seq, s.id, s.user_id, COALESCE(u.name, s.user_id) AS user,
                    s.agent_id, COALESCE(a.name, s.agent_id) AS target, s.kind, s.run_as,
                    s.created_at, s.token_used_at, s.ended_at, s.exit, s.bytes_in, s.bytes_out
             FROM sessions s
             LEFT JOIN users u ON u.id = s.user_id
             LEFT JOIN agents a ON a.id = s.agent_id
             WHERE (?1 IS NULL OR s.user_id = ?1) AND (s.created_at, s.rowid) < (?2, ?3)
             ORDER BY s.created_at DESC, s.rowid DESC
             LIMIT ?4",
        )
        .bind(user_id)
        .bind(at)
        .bind(seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let created_at: i64 = r.get("created_at");
                let listed = SessionListed {
                    id: r.get("id"),
                    user_id: r.get("user_id"),
                    user: r.get("user"),
                    agent_id: r.get("agent_id"),
                    target: r.get("target"),
                    kind: r.get("kind"),
                    run_as: r.get("run_as"),
                    created_at,
                    started_at: r.get("token_used_at"),
                    ended_at: r.get("ended_at"),
                    exit: r.get("exit"),
                    bytes_in: count(r.get("bytes_in")),
                    bytes_out: count(r.get("bytes_out")),
                };
                (Cursor(created_at, r.get("seq")), listed)
            })
            .collect())
    }

    /// End a session whose stream has not opened (its token is unused) for `exit`,
    /// unless it has ended. Its token then opens nothing: [`Store::redeem_token`]
    /// takes only a session that has not ended, and of the two at once one wins.
    /// Returns whether this ended it.
    pub async fn end_unstarted(&self, id: &str, exit: &str) -> Result<bool, Error> {
        let r = sqlx::query(
            "UPDATE sessions SET ended_at = ?1, exit = ?2
             WHERE id = ?3 AND ended_at IS NULL AND token_used_at IS NULL",
        )
        .bind(unix_now())
        .bind(exit)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Record, once, how much a session carried; and, when something at the relay
    /// ended it (`ended_by`: a terminate, a revoked key, a lock), that reason as its
    /// exit: it outranks whatever the agent answered when told to stop, whichever
    /// of the two is recorded first.
    pub async fn session_finished(
        &self,
        id: &str,
        ended_by: Option<&str>,
        traffic: Traffic,
    ) -> Result<(), Error> {
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        sqlx::query(
            "UPDATE sessions SET bytes_in = ?1, bytes_out = ?2, exit = COALESCE(?3, exit),
                 ended_at = CASE WHEN ?3 IS NULL THEN ended_at ELSE COALESCE(ended_at, ?4) END
             WHERE id = ?5",
        )
        .bind(clamp(traffic.bytes_in))
        .bind(clamp(traffic.bytes_out))
        .bind(ended_by)
        .bind(unix_now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::secret::Secret;
    use crate::store::{NewSession, SessionSpec, TokenError};

    async fn store(tag: &str) -> (Store, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("sesame-sessions-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (Store::open(&dir).await.unwrap(), dir)
    }

    /// A session asked for, its stream not opened: its id and token.
    async fn created(store: &Store, agent: &str, user: &str) -> (String, Secret) {
        let spec = SessionSpec::default();
        let (id, token, _) = store
            .create_session(&NewSession {
                agent_id: agent,
                user_id: user,
                key_id: "k-test",
                web_session: None,
                kind: "shell",
                rate: None,
                ttl: Duration::from_secs(600),
                run_as: "deploy",
                spec: &spec,
                source_ip: "127.0.0.1",
                decided_by: "test",
            })
            .await
            .unwrap();
        (id, token)
    }

    /// A session whose stream opened.
    async fn session(store: &Store, agent: &str, user: &str) -> String {
        let (id, token) = created(store, agent, user).await;
        store.redeem_token(&id, &token).await.unwrap().unwrap();
        id
    }

    #[tokio::test]
    async fn listings_go_newest_first_in_pages_and_by_user() {
        let (store, dir) = store("list").await;
        let (agent, _) = store.add_agent("gw-01", &BTreeMap::new()).await.unwrap();
        let (alice, _) = store.add_user("alice", &[]).await.unwrap();
        let (bob, _) = store.add_user("bob", &[]).await.unwrap();
        let mut ids = Vec::new();
        for who in [&alice, &bob, &alice, &bob, &alice] {
            ids.push(session(&store, &agent, &who.id).await);
        }
        // All in the same second: insertion order decides.
        let ids_of = |page: &[(Cursor, SessionListed)]| -> Vec<String> {
            page.iter().map(|(_, s)| s.id.clone()).collect()
        };
        let first = store.sessions_page(None, None, 2).await.unwrap();
        assert_eq!(ids_of(&first), [ids[4].clone(), ids[3].clone()]);
        let rest = store
            .sessions_page(None, Some(first[1].0), 10)
            .await
            .unwrap();
        assert_eq!(
            ids_of(&rest),
            [ids[2].clone(), ids[1].clone(), ids[0].clone()]
        );
        let hers = store
            .sessions_page(Some(&alice.id), None, 10)
            .await
            .unwrap();
        assert_eq!(
            ids_of(&hers),
            [ids[4].clone(), ids[2].clone(), ids[0].clone()]
        );
        let (_, s) = &hers[0];
        assert_eq!(
            (s.user.as_str(), s.target.as_str(), s.kind.as_str()),
            ("alice", "gw-01", "shell")
        );
        assert!(s.started_at.is_some());
        assert_eq!((s.ended_at, s.bytes_in, s.bytes_out), (None, None, None));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_reason_given_at_the_relay_outranks_the_agents_answer_in_either_order() {
        let (store, dir) = store("finish").await;
        let (agent, _) = store.add_agent("gw-01", &BTreeMap::new()).await.unwrap();
        let (alice, _) = store.add_user("alice", &[]).await.unwrap();
        let listed = |id: String| {
            let store = store.clone();
            async move {
                let page = store.sessions_page(None, None, 100).await.unwrap();
                page.into_iter().find(|(_, s)| s.id == id).unwrap().1
            }
        };
        let traffic = Traffic {
            bytes_in: 12,
            bytes_out: 100_000,
        };

        // The agent's answer first, then the stream task's record.
        let a = session(&store, &agent, &alice.id).await;
        store.end_session(&a, "signal 1").await.unwrap();
        store
            .session_finished(&a, Some("terminated by root: incident 7"), traffic)
            .await
            .unwrap();
        let s = listed(a).await;
        assert_eq!(s.exit.as_deref(), Some("terminated by root: incident 7"));
        assert_eq!((s.bytes_in, s.bytes_out), (Some(12), Some(100_000)));
        assert!(s.ended_at.is_some());

        // The other way round: the first end recorded stands.
        let b = session(&store, &agent, &alice.id).await;
        store
            .session_finished(&b, Some("terminated by root"), traffic)
            .await
            .unwrap();
        store.end_session(&b, "signal 1").await.unwrap();
        assert_eq!(listed(b).await.exit.as_deref(), Some("terminated by root"));

        // An ordinary end: the agent's exit, and the bytes.
        let c = session(&store, &agent, &alice.id).await;
        store.end_session(&c, "exit 0").await.unwrap();
        store.session_finished(&c, None, traffic).await.unwrap();
        let s = listed(c).await;
        assert_eq!(s.exit.as_deref(), Some("exit 0"));
        assert_eq!(s.bytes_out, Some(100_000));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_session_ended_before_its_stream_opened_keeps_its_token_from_opening_it() {
        let (store, dir) = store("unstarted").await;
        let (agent, _) = store.add_agent("gw-01", &BTreeMap::new()).await.unwrap();
        let (alice, _) = store.add_user("alice", &[]).await.unwrap();
        let (id, token) = created(&store, &agent, &alice.id).await;
        assert!(store
            .end_unstarted(&id, "terminated by root")
            .await
            .unwrap());
        assert_eq!(
            store.redeem_token(&id, &token).await.unwrap().unwrap_err(),
            TokenError::Ended("terminated by root".into())
        );
        // The first end stands.
        assert!(!store.end_unstarted(&id, "terminated again").await.unwrap());
        let page = store.sessions_page(None, None, 10).await.unwrap();
        let (_, s) = page.iter().find(|(_, s)| s.id == id).unwrap();
        assert_eq!(s.exit.as_deref(), Some("terminated by root"));
        assert_eq!(s.started_at, None);
        assert!(s.ended_at.is_some());

        // One whose stream opened is not ended here: its task ends it.
        let started = session(&store, &agent, &alice.id).await;
        assert!(!store.end_unstarted(&started, "terminated").await.unwrap());
        assert_eq!(store.session_exit(&started).await.unwrap(), None);
        assert!(!store.end_unstarted("s-nope", "terminated").await.unwrap());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A session's resume record with the token hash `hash`.
    fn resumable(hash: &str) -> crate::store::Resumable {
        crate::store::Resumable {
            hash: hash.into(),
            prev_hash: None,
            hold: Duration::from_secs(600),
            agent_sid: 3,
            client_sid: 1,
            started_at: 0,
            away_since: None,
        }
    }

    #[tokio::test]
    async fn a_restarted_relay_knows_the_token_before_the_latest_until_a_resume_uses_it() {
        let (store, dir) = store("resume-hash").await;
        let (agent, _) = store.add_agent("gw-01", &BTreeMap::new()).await.unwrap();
        let (alice, _) = store.add_user("alice", &[]).await.unwrap();
        let id = session(&store, &agent, &alice.id).await;
        let first = resumable("h1");
        store.set_resumable(&id, &first).await.unwrap();
        let hashes = || async {
            let all = store.interrupted_resumable().await.unwrap();
            let (_, r) = all.into_iter().find(|(s, _)| s.id == id).unwrap();
            (r.hash, r.prev_hash)
        };
        assert_eq!(hashes().await, ("h1".into(), None));
        // A resume spent h1 and sent h2, which the client may not have had when
        // the relay died: both stay good for the next run.
        store.set_resume_hash(&id, "h2", "h1").await.unwrap();
        assert_eq!(hashes().await, ("h2".into(), Some("h1".into())));
        // The resume went through with h2: h1 is no longer good.
        store.confirm_resume_hash(&id).await.unwrap();
        assert_eq!(hashes().await, ("h2".into(), None));
        // A client came back with h2 and got h3, lost in a cut; it comes back
        // with h2 again: h2 stays good beside h4 (not h3, which it never had).
        store.set_resume_hash(&id, "h3", "h2").await.unwrap();
        store.set_resume_hash(&id, "h4", "h2").await.unwrap();
        assert_eq!(hashes().await, ("h4".into(), Some("h2".into())));
        // How it ended, told to the holder of either token while both are good.
        store.end_session(&id, "exit 0").await.unwrap();
        for (hash, told) in [("h4", true), ("h2", true), ("h3", false), ("h1", false)] {
            let end = store.session_end_for_token(&id, hash).await.unwrap();
            assert_eq!(end.is_some(), told, "{hash}: {end:?}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_restarted_relay_knows_when_the_last_run_ran_and_since_when_a_side_is_away() {
        let (store, dir) = store("resume-away").await;
        assert_eq!(store.last_alive().await.unwrap(), None, "no run yet");
        store.set_alive(1_000).await.unwrap();
        store.set_alive(1_005).await.unwrap();
        assert_eq!(store.last_alive().await.unwrap(), Some(1_005));
        let (agent, _) = store.add_agent("gw-01", &BTreeMap::new()).await.unwrap();
        let (alice, _) = store.add_user("alice", &[]).await.unwrap();
        let id = session(&store, &agent, &alice.id).await;
        let r = resumable("h1");
        store.set_resumable(&id, &r).await.unwrap();
        let away = || async {
            let all = store.interrupted_resumable().await.unwrap();
            all.into_iter()
                .find(|(s, _)| s.id == id)
                .unwrap()
                .1
                .away_since
        };
        assert_eq!(away().await, None);
        store.set_resume_away(&id, Some(990)).await.unwrap();
        assert_eq!(away().await, Some(990));
        store.set_resume_away(&id, None).await.unwrap();
        assert_eq!(away().await, None, "both sides back");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn the_audit_log_says_which_forward_channels_were_open() {
        let (store, dir) = store("open-channels").await;
        let ev = |event: &str, target: &str, detail: serde_json::Value| {
            crate::audit::Event::new("alice", event, target).detail(detail)
        };
        let open = |ch: u16, port: u16, allow: bool| serde_json::json!({"channel": ch, "host": "10.0.0.5", "port": port, "allow": allow});
        let close = |ch: u16| serde_json::json!({"channel": ch, "bytes_to_dest": 1});
        let events = [
            ev("forward.open", "s-1", open(1, 80, true)),
            ev("forward.open", "s-1", open(2, 443, true)),
            ev("forward.open", "s-2", open(3, 22, true)), // another session's
            ev("forward.close", "s-1", close(1)),
            ev("forward.open", "s-1", open(4, 25, false)), // refused
            ev("forward.open", "s-1", open(1, 8080, true)), // its number again
            // A decision that timed out: written allowed, then refused.
            ev("forward.open", "s-1", open(5, 80, true)),
            ev("forward.open", "s-1", open(5, 80, false)),
        ];
        let refs: Vec<&crate::audit::Event> = events.iter().collect();
        store.append_audit(&refs).await.unwrap();
        let rows = store.forward_rows("s-1").await.unwrap();
        let open: Vec<(u16, u16)> = rows.open.iter().map(|c| (c.ch, c.port)).collect();
        assert_eq!(open, [(1, 8080), (2, 443)]);
        assert_eq!(rows.closed, [4, 5], "refused");
        let _ = std::fs::remove_dir_all(dir);
    }
}
