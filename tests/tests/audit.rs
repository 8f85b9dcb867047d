//! The audit log end to end: what a scenario writes, `sesame audit tail`, and
//! `sesame-relay audit verify` against a log tampered with as an intruder with the
//! database would.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::{bin, text, Env, TempDir};

/// `sesame audit tail --json -n N` as rows.
fn rows(env: &Env, n: usize) -> Vec<Value> {
    let out = env.run(&["audit", "tail", "--json", "-n", &n.to_string()], b"");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn verify(data: &Path, checkpoint: Option<&Path>) -> (bool, String) {
    let mut c = Command::new(bin("sesame-relay"));
    c.args(["audit", "verify", "--data-dir"]).arg(data);
    if let Some(f) = checkpoint {
        c.arg("--checkpoint").arg(f);
    }
    let out = c.output().unwrap();
    let (stdout, stderr) = text(&out);
    (
        out.status.success(),
        format!("{stdout}{stderr}").trim().to_string(),
    )
}

/// A copy of the relay's data directory (database and audit key).
fn copy(from: &Path, to: &TempDir, name: &str) -> std::path::PathBuf {
    let d = to.0.join(name);
    std::fs::create_dir_all(&d).unwrap();
    for f in ["sesame.db", "sesame.db-wal", "sesame.db-shm", "audit.key"] {
        if from.join(f).exists() {
            std::fs::copy(from.join(f), d.join(f)).unwrap();
        }
    }
    d
}

#[test]
fn a_scenario_is_in_the_log_with_its_principals_and_tampering_is_named() {
    let mut env = Env::start();
    // A new event shows in `tail -f` within a second.
    let mut follow = env
        .sesame()
        .args(["audit", "tail", "-f", "--json", "-n", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut followed = BufReader::new(follow.stdout.take().unwrap());
    std::thread::sleep(Duration::from_millis(800));
    let out = env.run(&["exec", "gw-01", "--", "echo", "hi"], b"");
    assert_eq!(text(&out).0, "hi\n");
    let done = Instant::now();
    let mut seen = None;
    while seen.is_none() {
        let mut line = String::new();
        followed.read_line(&mut line).unwrap();
        let row: Value = serde_json::from_str(&line).unwrap();
        if row["event"] == "session.create" {
            seen = Some(done.elapsed());
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        seen.unwrap() < Duration::from_secs(1),
        "shown after {seen:?}"
    );
    // A refused request is in the log too.
    let bob = tests::admin(&env.data(), &["user", "add", "bob"]);
    let out = env
        .sesame()
        .env("SESAME_API_KEY", &bob)
        .args(["exec", "gw-01", "--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // An administrative change is on record before it is made, and then whether it
    // was: a user added, then the same name refused.
    for _ in 0..2 {
        env.run(&["admin", "users", "add", "carol"], b"");
    }

    let log = rows(&env, 200);
    let find = |event: &str, actor: &str| {
        log.iter()
            .find(|r| r["event"] == event && r["actor"] == actor)
            .unwrap_or_else(|| panic!("no {event} by {actor} in {log:#?}"))
            .clone()
    };
    assert_eq!(find("relay.start", "relay")["target"], "relay");
    assert_eq!(find("admin.agent.add", "local")["target"], "gw-01");
    assert_eq!(
        find("admin.user.add", "local")["detail"]["groups"][0],
        "admins"
    );
    assert_eq!(find("auth.agent", "agent:gw-01")["source_ip"], "127.0.0.1");
    let decision = log
        .iter()
        .find(|r| r["event"] == "authz.decision" && r["detail"]["action"] == "exec")
        .unwrap();
    assert_eq!(decision["actor"], "admin");
    assert_eq!(decision["detail"]["allow"], true);
    assert_eq!(decision["detail"]["policies"][0], "builtin-admins");
    assert_eq!(decision["detail"]["command"][0], "echo");
    // Reading the log is a decision too.
    let read = find("authz.decision", "admin");
    assert_eq!(read["detail"]["action"], "audit");
    let refused = find("authz.decision", "bob");
    assert_eq!(refused["detail"]["allow"], false);
    assert_eq!(refused["detail"]["action"], "exec");
    let created = find("session.create", "admin");
    assert_eq!(created["source_ip"], "127.0.0.1");
    assert_eq!(created["detail"]["agent"], "gw-01");
    assert_eq!(created["detail"]["run_as"], "sesame-user");
    let changes: Vec<Value> = log
        .iter()
        .filter(|r| r["actor"] == "admin" && r["event"].as_str().unwrap().starts_with("admin."))
        .map(|r| json!([r["event"], r["detail"]]))
        .collect();
    let of = "admin.user.add";
    assert_eq!(
        changes,
        [
            json!([of, {"groups": []}]),
            json!(["admin.result", {"of": of, "ok": true}]),
            json!([of, {"groups": []}]),
            json!(["admin.result", {"of": of, "ok": false,
                "error": "a user named 'carol' already exists"}]),
        ]
    );
    // Rows are numbered without gaps and chained.
    for pair in log.windows(2) {
        assert_eq!(
            pair[1]["seq"].as_i64(),
            pair[0]["seq"].as_i64().map(|s| s + 1)
        );
        assert_eq!(pair[1]["prev"], pair[0]["hash"]);
    }

    // An export of a checkpoint, kept elsewhere; then the relay stops.
    let out = Command::new(bin("sesame-relay"))
        .args(["audit", "checkpoint", "--data-dir"])
        .arg(env.data())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let scratch = TempDir::new("audit");
    let kept = scratch.0.join("checkpoint.json");
    std::fs::write(&kept, &out.stdout).unwrap();
    env.relay.proc.kill();
    let data = env.data();
    let n = log.last().unwrap()["seq"].as_i64().unwrap();
    let (ok, said) = verify(&data, Some(&kept));
    assert!(ok, "{said}");
    assert!(
        // The checkpoint signed on request is a row too, after those it covers.
        said.starts_with(&format!("audit log verified: {} rows, ", n + 1)),
        "{said}"
    );

    // Each kind of tampering, on its own copy, is named by its row.
    let edited = copy(&data, &scratch, "edited");
    tests::sql(
        &edited,
        &["UPDATE audit SET actor = 'mallory' WHERE seq = 4"],
    );
    assert_eq!(
        verify(&edited, None),
        (false, "error: audit log: row 4 was modified".into())
    );

    let deleted = copy(&data, &scratch, "deleted");
    tests::sql(&deleted, &["DELETE FROM audit WHERE seq = 3"]);
    assert_eq!(
        verify(&deleted, None),
        (
            false,
            "error: audit log: row 3 is missing (the log goes from row 2 to row 4)".into()
        )
    );

    let swapped = copy(&data, &scratch, "swapped");
    tests::sql(
        &swapped,
        &[
            "UPDATE audit SET seq = -2 WHERE seq = 2",
            "UPDATE audit SET seq = 2 WHERE seq = 3",
            "UPDATE audit SET seq = 3 WHERE seq = -2",
        ],
    );
    let (ok, said) = verify(&swapped, None);
    assert!(!ok);
    assert!(said.starts_with("error: audit log: row 2 "), "{said}");

    let truncated = copy(&data, &scratch, "truncated");
    tests::sql(
        &truncated,
        &[
            &format!("DELETE FROM audit WHERE seq > {}", n - 2),
            "DELETE FROM audit_checkpoints",
        ],
    );
    // Without the exported checkpoint the shorter log looks whole; with it, not.
    assert!(verify(&truncated, None).0);
    let (ok, said) = verify(&truncated, Some(&kept));
    assert!(!ok);
    assert!(
        said.starts_with("error: audit log: the log was truncated: the checkpoint of ")
            && said.ends_with(&format!("covers {n} rows, the log has {}", n - 2)),
        "{said}"
    );
}

#[test]
fn reading_the_log_needs_the_audit_action() {
    let env = Env::start();
    let key = tests::admin(&env.data(), &["user", "add", "bob"]);
    let out = env
        .sesame()
        .env("SESAME_API_KEY", key)
        .args(["audit", "tail"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        text(&out).1.trim(),
        "error: denied: bob may not audit on the relay (no policy permits it)"
    );
}

const SCENARIO_POLICIES: &str = r#"
@id("alice-works")
permit (
  principal == User::"alice",
  action in [Action::"list", Action::"shell", Action::"exec", Action::"forward", Action::"ssh_key_push"],
  resource
);

@id("leads")
permit (
  principal in Group::"leads",
  action in [Action::"sessions_list", Action::"terminate", Action::"replay"],
  resource
);
"#;

#[test]
fn every_step_of_a_scenario_is_in_audit_tail_with_its_principal() {
    use std::io::{Read, Write};
    let policies = TempDir::new("scenario-policies");
    std::fs::write(policies.0.join("team.cedar"), SCENARIO_POLICIES).unwrap();
    let keys = TempDir::new("scenario-keys");
    let env = Env::start_custom(
        &["--policies", policies.0.to_str().unwrap()],
        &[
            bin("sesame-agent"),
            "--authorized-keys".into(),
            format!("{}/%u", keys.0.display()).into(),
        ],
    );
    let data = env.data();
    let alice = tests::admin(&data, &["user", "add", "alice"]);
    let dave = tests::admin(&data, &["user", "add", "dave", "--group", "leads"]);
    let as_user = |key: &str| {
        let mut c = env.sesame();
        c.env("SESAME_API_KEY", key).stdin(Stdio::null());
        c
    };
    let ok = |mut c: Command| -> String {
        let out = c.output().unwrap();
        assert!(out.status.success(), "{c:?}: {}", text(&out).1);
        text(&out).0
    };
    let listed = |key: &str| -> Vec<Value> {
        let mut c = as_user(key);
        c.args(["sessions", "ls", "--all", "--json"]);
        serde_json::from_str(&ok(c)).unwrap()
    };

    // Alice logs in (her key's first use), lists, opens a shell; dave ends it.
    let mut c = as_user(&alice);
    c.arg("ls");
    assert!(ok(c).contains("gw-01"));
    let mut c = as_user(&alice);
    c.args(["shell", "gw-01"]);
    let (mut shell, _typing) = tests::live_shell(c, "echo ready");
    let shell_id = listed(&dave)
        .iter()
        .find(|s| s["kind"] == "shell" && s["live"] == true)
        .map(|s| s["id"].as_str().unwrap().to_string())
        .expect("alice's shell is listed");
    let mut c = as_user(&dave);
    c.args(["sessions", "terminate", &shell_id, "--reason", "drill"]);
    ok(c);
    assert!(!shell.wait().unwrap().success());

    // A command, a forwarded connection and a key push of hers.
    let mut c = as_user(&alice);
    c.args(["exec", "gw-01", "--", "echo", "scenario"]);
    assert_eq!(ok(c), "scenario\n");
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = echo.accept() {
            let mut buf = [0u8; 64];
            if let Ok(n) = c.read(&mut buf) {
                let _ = c.write_all(&buf[..n]);
            }
        }
    });
    let mut fwd = as_user(&alice)
        .args(["forward", "gw-01", &format!("0:127.0.0.1:{echo_port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(fwd.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected forward output {line:?}"));
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    conn.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
    drop(conn);
    std::thread::sleep(Duration::from_millis(300));
    tests::stop_client(&mut fwd);
    let key = keys.0.join("id_ed25519");
    tests::sshd::keygen(&key);
    let me = ok({
        let mut c = Command::new("id");
        c.arg("-un");
        c
    });
    let mut c = as_user(&alice);
    c.args([
        "ssh-key",
        "push",
        "gw-01",
        "--user",
        me.trim(),
        "--ttl",
        "30",
    ])
    .arg(key.with_extension("pub"));
    ok(c);

    // Dave replays her command.
    let exec_id = listed(&dave)
        .iter()
        .find(|s| s["kind"] == "exec")
        .map(|s| s["id"].as_str().unwrap().to_string())
        .unwrap();
    let mut c = as_user(&dave);
    c.args(["sessions", "export", &exec_id]);
    assert!(ok(c).contains("scenario"));

    // Every step is in `audit tail --json`, by whom it was done.
    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = rows(&env, 1000);
        if log.iter().any(|r| r["event"] == "forward.close") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let by = |event: &str, actor: &str| -> Vec<&Value> {
        log.iter()
            .filter(|r| r["event"] == event && r["actor"] == actor)
            .collect()
    };
    let one = |event: &str, actor: &str, what: &dyn Fn(&Value) -> bool| {
        let found: Vec<&Value> = by(event, actor).into_iter().filter(|r| what(r)).collect();
        assert_eq!(
            found.len(),
            1,
            "{event} by {actor}: {found:#?}\nin {log:#?}"
        );
        found[0].clone()
    };
    for who in ["alice", "dave"] {
        let login = one("auth.api", who, &|_| true);
        assert_eq!(login["source_ip"], "127.0.0.1");
    }
    for kind in ["shell", "exec", "forward", "ssh-key"] {
        let created = one("session.create", "alice", &|r| r["detail"]["kind"] == kind);
        let id = created["target"].clone();
        one("session.start", "alice", &|r| r["target"] == id);
        one("session.end", "alice", &|r| r["target"] == id);
        let allowed =
            |r: &Value| r["detail"]["allow"] == true && r["detail"]["policies"][0] == "alice-works";
        assert!(by("authz.decision", "alice").iter().any(|r| allowed(r)));
    }
    let end = one("session.end", "alice", &|r| {
        r["target"] == shell_id.as_str()
    });
    assert_eq!(end["detail"]["exit"], "terminated by dave: drill");
    one("session.terminate", "dave", &|r| {
        r["target"] == shell_id.as_str() && r["detail"]["reason"] == "drill"
    });
    let open = one("forward.open", "alice", &|_| true);
    assert_eq!(open["detail"]["port"], echo_port);
    let close = one("forward.close", "alice", &|_| true);
    assert_eq!(
        (
            &close["detail"]["bytes_to_dest"],
            &close["detail"]["bytes_from_dest"]
        ),
        (&json!(4), &json!(4))
    );
    let push = one("session.start", "alice", &|r| {
        r["detail"]["kind"] == "ssh-key"
    });
    assert_eq!(push["detail"]["ssh_user"], me.trim());
    assert_eq!(push["detail"]["ttl"], 30);
    assert!(push["detail"]["key"]
        .as_str()
        .unwrap()
        .starts_with("ssh-ed25519 "));
    one("recording.read", "dave", &|r| {
        r["target"] == exec_id.as_str()
    });
    for action in ["terminate", "replay"] {
        assert!(by("authz.decision", "dave")
            .iter()
            .any(|r| r["detail"]["action"] == action && r["detail"]["allow"] == true));
    }
}
