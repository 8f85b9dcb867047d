//! The audit log's rows and checkpoints in the store (see `crate::audit`).

use sqlx::Row as _;

use super::Store;
use crate::audit::{canonical, genesis, row_hash, Checkpoint, Event, Row};
use crate::Error;

fn audit_row(r: &sqlx::sqlite::SqliteRow) -> Row {
    let detail: String = r.get("detail");
    Row {
        stored_detail: detail.clone(),
        seq: r.get("seq"),
        at: r.get("at"),
        actor: r.get("actor"),
        source_ip: r.get("source_ip"),
        event: r.get("event"),
        target: r.get("target"),
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
        prev: r.get("prev"),
        hash: r.get("hash"),
    }
}

/// A forward channel the audit log shows open: allowed (`forward.open`) and not
/// closed (`forward.close`) since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenChannel {
    pub ch: u16,
    pub host: String,
    pub port: u16,
    /// When its `forward.open` row was written (Unix milliseconds).
    pub opened_at: i64,
}

/// What a session's audit rows say of its forward channels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardRows {
    /// Those open: allowed, and not closed since.
    pub open: Vec<OpenChannel>,
    /// Those whose last row ends them: a `forward.close`, or a `forward.open`
    /// that refused (a decision that timed out is written allowed, then refused).
    pub closed: Vec<u16>,
}

impl Store {
    /// What the audit rows of session `id` say of its forward channels: what a
    /// restarted relay takes up with the session.
    pub async fn forward_rows(&self, id: &str) -> Result<ForwardRows, Error> {
        let rows = sqlx::query(
            "SELECT event, detail, at FROM audit WHERE target = ?
             AND event IN ('forward.open', 'forward.close') ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        // Each channel's last word: open (with its destination) or ended.
        let mut last = std::collections::BTreeMap::new();
        for r in &rows {
            let detail: serde_json::Value =
                serde_json::from_str(&r.get::<String, _>("detail")).unwrap_or_default();
            let Some(ch) = detail["channel"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
            else {
                continue;
            };
            let open = r.get::<String, _>("event") == "forward.open" && detail["allow"] == true;
            let state = open.then(|| OpenChannel {
                ch,
                host: detail["host"].as_str().unwrap_or_default().to_string(),
                port: (detail["port"].as_u64())
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(0),
                opened_at: r.get("at"),
            });
            last.insert(ch, state);
        }
        let mut found = ForwardRows::default();
        for (ch, state) in last {
            match state {
                Some(open) => found.open.push(open),
                None => found.closed.push(ch),
            }
        }
        Ok(found)
    }

    /// Append `events` as rows, in order, in one transaction that holds the
    /// database's write lock from its start (so that another process appending,
    /// such as `sesame-relay user add`, cannot fork the chain). Returns the first
    /// row's number.
    pub async fn append_audit(&self, events: &[&Event]) -> Result<i64, Error> {
        // A transaction sqlx knows of: rolled back when dropped on any error,
        // COMMIT included, so no connection goes back to the pool mid-transaction.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let last = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        let (mut seq, mut prev) = match last {
            Some(r) => (r.get::<i64, _>("seq"), r.get::<String, _>("hash")),
            None => (0, genesis()),
        };
        let first = seq + 1;
        let at = super::unix_now_ms();
        for e in events {
            seq += 1;
            let mut row = Row {
                seq,
                at,
                actor: e.actor.clone(),
                source_ip: e.source_ip.clone(),
                event: e.event.clone(),
                target: e.target.clone(),
                detail: e.detail.clone(),
                prev: prev.clone(),
                hash: String::new(),
                stored_detail: String::new(),
            };
            row.hash = row_hash(&prev, &row);
            // The detail is stored in its canonical form, the bytes the hash covers.
            let mut detail = String::new();
            canonical(&row.detail, &mut detail);
            sqlx::query(
                "INSERT INTO audit (seq, at, actor, source_ip, event, target, detail, prev, hash)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(row.seq)
            .bind(row.at)
            .bind(&row.actor)
            .bind(&row.source_ip)
            .bind(&row.event)
            .bind(&row.target)
            .bind(detail)
            .bind(&row.prev)
            .bind(&row.hash)
            .execute(&mut *tx)
            .await?;
            prev = row.hash;
        }
        tx.commit().await?;
        Ok(first)
    }

    /// The number of rows and the newest row's hash.
    pub async fn audit_head(&self) -> Result<(i64, String), Error> {
        let last = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(match last {
            Some(r) => (r.get("seq"), r.get("hash")),
            None => (0, genesis()),
        })
    }

    /// Rows after row `after`, oldest first, at most `limit`.
    pub async fn audit_rows(&self, after: i64, limit: i64) -> Result<Vec<Row>, Error> {
        let rows = sqlx::query("SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?")
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(audit_row).collect())
    }

    /// How many rows there are, and the smallest row number (a row numbered below
    /// 1 would be outside the chain `verify` walks).
    pub async fn audit_count(&self) -> Result<(i64, Option<i64>), Error> {
        let r = sqlx::query("SELECT COUNT(*) AS n, MIN(seq) AS lo FROM audit")
            .fetch_one(&self.pool)
            .await?;
        Ok((r.get("n"), r.get("lo")))
    }

    /// The first row at or after unix milliseconds `at`, if any.
    pub async fn audit_seq_at(&self, at: i64) -> Result<Option<i64>, Error> {
        Ok(
            sqlx::query_scalar("SELECT MIN(seq) FROM audit WHERE at >= ?")
                .bind(at)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Keep a checkpoint.
    pub async fn add_checkpoint(&self, c: &Checkpoint) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO audit_checkpoints (size, head, at, key, signature) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(c.size)
        .bind(&c.head)
        .bind(c.at)
        .bind(&c.key)
        .bind(&c.signature)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The checkpoints kept, oldest first.
    pub async fn checkpoints(&self) -> Result<Vec<Checkpoint>, Error> {
        let rows = sqlx::query("SELECT * FROM audit_checkpoints ORDER BY at, size")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| Checkpoint {
                size: r.get("size"),
                head: r.get("head"),
                at: r.get("at"),
                key: r.get("key"),
                signature: r.get("signature"),
            })
            .collect())
    }
}
