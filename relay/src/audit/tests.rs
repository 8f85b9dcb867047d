use super::*;
use serde_json::json;

async fn store(tag: &str) -> (Store, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("sesame-audit-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    (Store::open(&dir).await.unwrap(), dir)
}

/// A log of `n` rows written through the writer.
async fn filled(tag: &str, n: usize) -> (Store, std::path::PathBuf, Audit) {
    let (store, dir) = store(tag).await;
    let audit = Audit::start(store.clone());
    for i in 0..n {
        let e = Event::new("alice", "session.create", format!("s-{i}"))
            .from("127.0.0.1")
            .detail(json!({"kind": "shell", "n": i, "z": {"b": 1, "a": [1, "x"]}}));
        assert_eq!(audit.record(e).await.unwrap(), i as i64 + 1);
    }
    (store, dir, audit)
}

async fn sql(store: &Store, q: &str) {
    sqlx::query(q)
        .execute(&store.pool_for_tests())
        .await
        .unwrap();
}

#[test]
fn canonical_json_sorts_keys_at_every_level() {
    let v = json!({"b": {"d": 1, "c": [true, null, {"f": "x\"y", "e": 2.5}]}, "a": "é"});
    let mut out = String::new();
    canonical(&v, &mut out);
    assert_eq!(
        out,
        r#"{"a":"é","b":{"c":[true,null,{"e":2.5,"f":"x\"y"}],"d":1}}"#
    );
}

#[tokio::test]
async fn an_untouched_log_verifies_and_concurrent_events_keep_one_chain() {
    let (store, dir, audit) = filled("ok", 5).await;
    // Many at once: one chain, no gaps, each told its own row.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let a = audit.clone();
        tasks.push(tokio::spawn(async move {
            a.record(Event::new("bob", "auth.api", format!("t{i}")))
                .await
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (6..206).collect::<Vec<_>>());
    let key = signing_key(&dir).unwrap();
    let c = checkpoint(&store, &key).await.unwrap();
    assert_eq!(c.size, 205);
    assert!(c.signed());
    let pubkey = hex(key.public_key().as_ref());
    let v = verify(&store, &pubkey, None).await.unwrap();
    // The checkpoint is a row of its own, after the rows it covers.
    assert_eq!(
        store.audit_rows(205, 1).await.unwrap()[0].event,
        "audit.checkpoint"
    );
    assert_eq!(
        v,
        Verified {
            rows: 206,
            checkpoints: 1
        }
    );
    // The key is kept: the same one next time.
    assert_eq!(
        hex(signing_key(&dir).unwrap().public_key().as_ref()),
        pubkey
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn every_kind_of_tampering_is_named_by_its_row() {
    // Edited.
    let (store, dir, _a) = filled("edit", 6).await;
    let key = hex(signing_key(&dir).unwrap().public_key().as_ref());
    sql(&store, "UPDATE audit SET actor = 'mallory' WHERE seq = 3").await;
    assert_eq!(
        verify(&store, &key, None).await.unwrap_err(),
        "row 3 was modified"
    );
    // The same detail with its keys in another order: not the bytes hashed.
    let (store, dir, _a) = filled("reorder", 6).await;
    sql(
        &store,
        r#"UPDATE audit SET detail = '{"z":{"b":1,"a":[1,"x"]},"n":1,"kind":"shell"}' WHERE seq = 2"#,
    )
    .await;
    assert_eq!(
        verify(&store, &key_of(&dir), None).await.unwrap_err(),
        "row 2 was modified"
    );
    // A row numbered outside the chain.
    let (store, dir, _a) = filled("zero", 3).await;
    sql(&store, "UPDATE audit SET seq = 0 WHERE seq = 1").await;
    assert_eq!(
        verify(&store, &key_of(&dir), None).await.unwrap_err(),
        "row 0 is outside the chain (rows are numbered from 1)"
    );
    // Deleted.
    let (store, dir, _a) = filled("delete", 6).await;
    sql(&store, "DELETE FROM audit WHERE seq = 4").await;
    assert_eq!(
        verify(&store, &key_of(&dir), None).await.unwrap_err(),
        "row 4 is missing (the log goes from row 3 to row 5)"
    );
    // A pair swapped (everything but their numbers).
    let (store, dir, _a) = filled("swap", 6).await;
    sql(
        &store,
        "UPDATE audit SET target = CASE seq WHEN 2 THEN 's-2' ELSE 's-1' END,
                          hash = (SELECT hash FROM audit a WHERE a.seq = 5 - audit.seq),
                          prev = (SELECT prev FROM audit a WHERE a.seq = 5 - audit.seq)
         WHERE seq IN (2, 3)",
    )
    .await;
    let e = verify(&store, &key_of(&dir), None).await.unwrap_err();
    assert_eq!(
        e,
        "row 2 does not follow row 1 (a row was inserted, deleted or moved here)"
    );
    // Inserted, with a plausible hash of its own: the next row no longer follows.
    let (store, dir, _a) = filled("insert", 6).await;
    sql(&store, "UPDATE audit SET seq = seq + 1000 WHERE seq >= 4").await;
    sql(&store, "UPDATE audit SET seq = seq - 999 WHERE seq >= 1000").await;
    let r3: (String,) = sqlx::query_as("SELECT hash FROM audit WHERE seq = 3")
        .fetch_one(&store.pool_for_tests())
        .await
        .unwrap();
    let mut forged = Row {
        seq: 4,
        at: 1,
        actor: "mallory".into(),
        source_ip: None,
        event: "noop".into(),
        target: "-".into(),
        detail: json!({}),
        prev: r3.0.clone(),
        hash: String::new(),
        stored_detail: "{}".into(),
    };
    forged.hash = row_hash(&r3.0, &forged);
    sqlx::query("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, '{}', ?, ?)")
        .bind(forged.seq)
        .bind(forged.at)
        .bind(&forged.actor)
        .bind(&forged.source_ip)
        .bind(&forged.event)
        .bind(&forged.target)
        .bind(&forged.prev)
        .bind(&forged.hash)
        .execute(&store.pool_for_tests())
        .await
        .unwrap();
    assert_eq!(
        verify(&store, &key_of(&dir), None).await.unwrap_err(),
        "row 5 does not follow row 4 (a row was inserted, deleted or moved here)"
    );
    // Truncated after a checkpoint was exported (and the kept ones deleted).
    let (store, dir, _a) = filled("truncate", 6).await;
    let key = signing_key(&dir).unwrap();
    let exported = checkpoint(&store, &key).await.unwrap();
    sql(&store, "DELETE FROM audit WHERE seq >= 5").await;
    sql(&store, "DELETE FROM audit_checkpoints").await;
    let pubkey = hex(key.public_key().as_ref());
    assert_eq!(verify(&store, &pubkey, None).await.unwrap().rows, 4);
    let e = verify(&store, &pubkey, Some(&exported)).await.unwrap_err();
    assert!(
        e.starts_with("the log was truncated: the checkpoint of ")
            && e.ends_with("covers 6 rows, the log has 4"),
        "{e}"
    );
    // A forged checkpoint, or one by another key.
    let mut forged = exported.clone();
    forged.size = 4;
    assert!(verify(&store, &pubkey, Some(&forged))
        .await
        .unwrap_err()
        .ends_with("has a bad signature"));
    let other = hex(&[7u8; 32]);
    assert!(verify(&store, &other, Some(&exported))
        .await
        .unwrap_err()
        .contains("signed by another key"));
    let _ = std::fs::remove_dir_all(dir);
}

fn key_of(dir: &Path) -> String {
    hex(signing_key(dir).unwrap().public_key().as_ref())
}

#[tokio::test]
async fn an_event_that_cannot_be_written_is_refused() {
    let (store, dir) = store("closed").await;
    sql(&store, "DROP TABLE audit").await;
    let audit = Audit::start(store.clone());
    let e = audit
        .record(Event::new("alice", "session.create", "s-1"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("the audit log cannot be written (store: "),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn refusals_are_recorded_at_a_bounded_rate_per_source_and_counted_beyond() {
    let b = RefusalBudget::default();
    let (a, other): (std::net::IpAddr, std::net::IpAddr) =
        ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
    for _ in 0..20 {
        assert_eq!(b.take(a, 0), Some(0));
    }
    for _ in 0..5 {
        assert_eq!(b.take(a, 0), None);
    }
    // Another source has its own budget.
    assert_eq!(b.take(other, 0), Some(0));
    // A second later: one more row, carrying the five not written.
    assert_eq!(b.take(a, 1000), Some(5));
    assert_eq!(b.take(a, 1000), None);
    assert_eq!(b.take(a, 2500), Some(1));
}
