//! The audit log: append-only rows in a hash chain, with checkpoints the relay
//! signs.
//!
//! Each row carries `hash = SHA-256(prev || canonical JSON of the row)`, where
//! `prev` is the previous row's hash (32 zero bytes before the first row) and the
//! canonical JSON is the row's `seq`, `at`, `actor`, `source_ip`, `event`, `target`
//! and `detail`, in that order, objects with their keys sorted, no spaces. Editing,
//! inserting, deleting or reordering a row breaks the chain at that row; deleting
//! the newest rows does not, which is what checkpoints are for: the relay signs
//! `(size, head hash, time)` with its own Ed25519 key (`DATA_DIR/audit.key`) at
//! start, every [`CHECKPOINT_EVERY`] and on demand, and a checkpoint kept elsewhere
//! (`sesame-relay audit checkpoint > FILE`) proves the log once had at least
//! `size` rows ending in that hash.
//!
//! Rows are written by one task ([`Audit`]) in batches, in order; whoever records
//! an event waits until its row is committed, so an action whose row cannot be
//! written is refused (fail closed).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::secret::hex;
use crate::store::Store;
use crate::Error;

/// How often the relay signs a checkpoint while serving.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(600);
/// Events waiting for the writer at most; more wait for room (back-pressure).
const QUEUE: usize = 4096;
/// Rows written in one transaction at most.
const BATCH: usize = 256;
/// What a checkpoint's signature covers, before its fields.
const CHECKPOINT_CONTEXT: &str = "sesame-audit-checkpoint-v1";

/// One event, before it is a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Who: a user name, `agent:NAME`, `relay`, or `-` when unknown.
    pub actor: String,
    /// From where, when a peer did it.
    pub source_ip: Option<String>,
    /// What, dotted: `auth.api`, `session.create`, `admin.key.revoke`, ...
    pub event: String,
    /// On what: an agent, a session id, a user, a policy file.
    pub target: String,
    /// The rest, as a JSON object.
    pub detail: Value,
}

impl Event {
    /// An event with an empty detail.
    pub fn new(actor: impl Into<String>, event: &str, target: impl Into<String>) -> Event {
        Event {
            actor: actor.into(),
            source_ip: None,
            event: event.into(),
            target: target.into(),
            detail: Value::Object(Default::default()),
        }
    }

    /// From this address.
    pub fn from(mut self, ip: impl ToString) -> Event {
        self.source_ip = Some(ip.to_string());
        self
    }

    /// With this detail (a JSON object).
    pub fn detail(mut self, detail: Value) -> Event {
        self.detail = detail;
        self
    }
}

/// A row of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Position, from 1, without gaps.
    pub seq: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// Who.
    pub actor: String,
    /// From where.
    pub source_ip: Option<String>,
    /// What.
    pub event: String,
    /// On what.
    pub target: String,
    /// The rest.
    pub detail: Value,
    /// The previous row's hash (hex).
    pub prev: String,
    /// This row's hash (hex).
    pub hash: String,
    /// The detail's text as stored (its canonical form when written); `verify`
    /// checks that it is exactly that.
    #[serde(skip)]
    pub stored_detail: String,
}

/// The hash before the first row.
pub fn genesis() -> String {
    hex(&[0u8; 32])
}

/// JSON with object keys sorted and no spaces (serde_json keeps insertion order
/// in this build, so the order is made here).
pub fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => {
            let _ = write!(out, "{scalar}");
        }
    }
}

/// The hash of a row given its predecessor's.
pub fn row_hash(prev: &str, r: &Row) -> String {
    let body = serde_json::json!({
        "seq": r.seq,
        "at": r.at,
        "actor": r.actor,
        "source_ip": r.source_ip,
        "event": r.event,
        "target": r.target,
        "detail": r.detail,
    });
    let mut text = String::new();
    canonical(&body, &mut text);
    let prev = decode_hex(prev).unwrap_or_default();
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    h.update(&prev);
    h.update(text.as_bytes());
    hex(h.finish().as_ref())
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Rows of refused authentications per source address: a burst of this many, then
/// one a second. Beyond it the refusals are counted and the count is recorded with
/// the next row that source may write, so that nobody can fill the disk without a
/// key, and nothing is lost from the record but the individual rows.
pub struct RefusalBudget {
    sources: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (f64, i64, u64)>>,
}

/// Burst of refusal rows per source.
const REFUSAL_BURST: f64 = 20.0;
/// Sources tracked at most (the oldest are forgotten).
const REFUSAL_SOURCES: usize = 4096;

impl Default for RefusalBudget {
    fn default() -> Self {
        RefusalBudget {
            sources: std::sync::Mutex::new(Default::default()),
        }
    }
}

impl std::fmt::Debug for RefusalBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefusalBudget")
    }
}

impl RefusalBudget {
    /// May a row be written for a refusal from `ip` at `now_ms`? `Some(n)`: yes,
    /// and `n` refusals from it were not written since its last row.
    pub fn take(&self, ip: std::net::IpAddr, now_ms: i64) -> Option<u64> {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if sources.len() >= REFUSAL_SOURCES && !sources.contains_key(&ip) {
            // Forget the source idle the longest.
            if let Some(oldest) = sources.iter().min_by_key(|(_, v)| v.1).map(|(k, _)| *k) {
                sources.remove(&oldest);
            }
        }
        let (tokens, last, skipped) = sources.entry(ip).or_insert((REFUSAL_BURST, now_ms, 0));
        *tokens = (*tokens + (now_ms - *last).max(0) as f64 / 1000.0).min(REFUSAL_BURST);
        *last = now_ms;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Some(std::mem::take(skipped))
        } else {
            *skipped += 1;
            None
        }
    }
}

/// Why an event could not be recorded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the audit log cannot be written ({0}); the action is refused")]
pub struct NotRecorded(pub String);

type Pending = (Event, oneshot::Sender<Result<i64, String>>);

/// Records events: a handle to the writer task.
#[derive(Clone, Debug)]
pub struct Audit {
    tx: mpsc::Sender<Pending>,
    /// How many refused authentications each source may still have recorded.
    pub refusals: std::sync::Arc<RefusalBudget>,
}

impl Audit {
    /// Start the writer for `store`.
    pub fn start(store: Store) -> Audit {
        let (tx, rx) = mpsc::channel::<Pending>(QUEUE);
        tokio::spawn(write_rows(store, rx));
        Audit {
            tx,
            refusals: Default::default(),
        }
    }

    /// Append an event; returns its row number once it is committed.
    pub async fn record(&self, event: Event) -> Result<i64, NotRecorded> {
        let (done, committed) = oneshot::channel();
        self.tx
            .send((event, done))
            .await
            .map_err(|_| NotRecorded("the audit writer stopped".into()))?;
        committed
            .await
            .map_err(|_| NotRecorded("the audit writer stopped".into()))?
            .map_err(NotRecorded)
    }
}

async fn write_rows(store: Store, mut rx: mpsc::Receiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let events: Vec<&Event> = batch.iter().map(|(e, _)| e).collect();
        let result = store.append_audit(&events).await;
        for (i, (_, done)) in batch.drain(..).enumerate() {
            let _ = done.send(match &result {
                Ok(first) => Ok(first + i as i64),
                Err(e) => Err(e.to_string()),
            });
        }
        if let Err(e) = result {
            warn!("audit rows not written: {e}");
        }
    }
}

/// A signed statement that the log had `size` rows ending in `head`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Rows covered.
    pub size: i64,
    /// The hash of row `size` (the genesis hash for an empty log).
    pub head: String,
    /// Unix milliseconds.
    pub at: i64,
    /// The relay's Ed25519 public key (hex).
    pub key: String,
    /// Signature (hex) of `sesame-audit-checkpoint-v1\nSIZE\nHEAD\nAT`.
    pub signature: String,
}

impl Checkpoint {
    fn message(size: i64, head: &str, at: i64) -> String {
        format!("{CHECKPOINT_CONTEXT}\n{size}\n{head}\n{at}")
    }

    /// Whether the signature is the key's, over these fields.
    pub fn signed(&self) -> bool {
        let (Some(key), Some(sig)) = (decode_hex(&self.key), decode_hex(&self.signature)) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, key)
            .verify(
                Self::message(self.size, &self.head, self.at).as_bytes(),
                &sig,
            )
            .is_ok()
    }
}

/// The relay's audit signing key, made on first use (`DATA_DIR/audit.key`,
/// PKCS#8, mode 0600).
pub fn signing_key(data_dir: &Path) -> Result<Ed25519KeyPair, Error> {
    let path = data_dir.join("audit.key");
    let bad = |m: String| Error::Invalid(format!("{}: {m}", path.display()));
    let pkcs8 = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let rng = ring::rand::SystemRandom::new();
            let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| bad(e.to_string()))?;
            crate::tls::write_private(&path, doc.as_ref())?;
            doc.as_ref().to_vec()
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| bad(format!("not an Ed25519 key: {e}")))
}

/// The relay's audit public key (hex), from its key file; never makes one.
pub fn public_key(data_dir: &Path) -> Result<String, Error> {
    let path = data_dir.join("audit.key");
    let pkcs8 = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|e| Error::Invalid(format!("{}: not an Ed25519 key: {e}", path.display())))?;
    Ok(hex(pair.public_key().as_ref()))
}

/// Sign a checkpoint of the log as it is now, keep it in the store, and record it
/// as a row (`audit.checkpoint`), so that a deleted stored checkpoint is missed
/// by the chain too.
pub async fn checkpoint(store: &Store, key: &Ed25519KeyPair) -> Result<Checkpoint, Error> {
    let (size, head) = store.audit_head().await?;
    let at = crate::store::unix_now_ms();
    let signature = key.sign(Checkpoint::message(size, &head, at).as_bytes());
    let c = Checkpoint {
        size,
        head,
        at,
        key: hex(key.public_key().as_ref()),
        signature: hex(signature.as_ref()),
    };
    store.add_checkpoint(&c).await?;
    let row = Event::new("relay", "audit.checkpoint", "audit").detail(serde_json::json!({
        "size": c.size,
        "head": c.head,
        "signature": c.signature,
    }));
    store.append_audit(&[&row]).await?;
    Ok(c)
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Rows checked.
    pub rows: i64,
    /// Checkpoints checked (the stored ones and the one given).
    pub checkpoints: usize,
}

/// Check the whole chain, and each checkpoint (the stored ones, and `extra`, an
/// exported one) against it and against `key` (the relay's public key, hex).
/// The first problem is named by its row.
pub async fn verify(
    store: &Store,
    key: &str,
    extra: Option<&Checkpoint>,
) -> Result<Verified, String> {
    // The checkpoints first: one signed while the rows are read covers no more
    // than what was read.
    let mut checkpoints = store
        .checkpoints()
        .await
        .map_err(|e| format!("cannot read the checkpoints: {e}"))?;
    checkpoints.extend(extra.cloned());
    let wanted: std::collections::HashSet<i64> = checkpoints.iter().map(|c| c.size).collect();
    let (count, lowest) = store
        .audit_count()
        .await
        .map_err(|e| format!("cannot read the log: {e}"))?;
    if let Some(lo) = lowest.filter(|lo| *lo < 1) {
        return Err(format!(
            "row {lo} is outside the chain (rows are numbered from 1)"
        ));
    }
    let mut prev = genesis();
    let mut expected = 1i64;
    let mut heads: std::collections::HashMap<i64, String> = Default::default();
    let mut after = 0i64;
    loop {
        let rows = store
            .audit_rows(after, 1000)
            .await
            .map_err(|e| format!("cannot read the log: {e}"))?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            if r.seq != expected {
                return Err(if r.seq > expected {
                    format!(
                        "row {expected} is missing (the log goes from row {} to row {})",
                        expected - 1,
                        r.seq
                    )
                } else {
                    format!("row {} appears twice or out of order", r.seq)
                });
            }
            if r.prev != prev {
                return Err(format!(
                    "row {} does not follow row {} (a row was inserted, deleted or moved here)",
                    r.seq,
                    r.seq - 1
                ));
            }
            let mut text = String::new();
            canonical(&r.detail, &mut text);
            if row_hash(&prev, r) != r.hash || text != r.stored_detail {
                return Err(format!("row {} was modified", r.seq));
            }
            if wanted.contains(&r.seq) {
                heads.insert(r.seq, r.hash.clone());
            }
            prev = r.hash.clone();
            expected += 1;
            after = r.seq;
        }
    }
    // Rows written while this ran are fine; fewer are not.
    let size = expected - 1;
    if size < count {
        return Err(format!(
            "the log has {count} rows, of which {size} are in the chain"
        ));
    }
    for c in &checkpoints {
        let when = crate::policy::rfc3339(c.at / 1000);
        if c.key != key {
            return Err(format!(
                "the checkpoint of {when} was signed by another key ({}...)",
                c.key.get(..16).unwrap_or(&c.key)
            ));
        }
        if !c.signed() {
            return Err(format!("the checkpoint of {when} has a bad signature"));
        }
        if c.size > size {
            return Err(format!(
                "the log was truncated: the checkpoint of {when} covers {} rows, the log has {size}",
                c.size
            ));
        }
        let head = if c.size == 0 {
            Some(genesis())
        } else {
            heads.get(&c.size).cloned()
        };
        if head.as_deref() != Some(c.head.as_str()) {
            return Err(format!(
                "row {} is not the one the checkpoint of {when} signed (rows up to it were replaced)",
                c.size
            ));
        }
    }
    Ok(Verified {
        rows: size,
        checkpoints: checkpoints.len(),
    })
}

pub mod http;

#[cfg(test)]
mod tests;
