//! The relay's guarantees: single-use expiring tokens, session limits, isolation of
//! bad input, agent authentication, and agents that survive a relay restart.

use std::process::Stdio;
use std::time::{Duration, Instant};

use agent_core::wire::{Bytes, Frame, Kind};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tests::{admin, start_agent, start_relay, text, Env};
use tokio_tungstenite::tungstenite::Message;

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The error of an operation that must fail.
fn refused<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> String {
    match r {
        Ok(_) => panic!("{what} should have been refused"),
        Err(e) => e.to_string(),
    }
}

fn enc(f: Frame) -> Message {
    let mut b = vec![0u8; f.buffer_len()];
    f.encode(&mut b).unwrap();
    Message::Binary(b.into())
}

#[tokio::test(flavor = "current_thread")]
async fn session_tokens_are_single_use_and_expire() {
    let env = Env::start_with(&["--token-ttl", "1"]);
    let client = env.client();
    let body = json!({"target": "gw-01", "kind": "exec", "command": ["true"]});
    let s: Value = client
        .call("POST", "/v1/sessions", Some(body.clone()))
        .await
        .unwrap();
    let (url, token) = (
        s["stream_url"].as_str().unwrap(),
        s["token"].as_str().unwrap(),
    );
    let ws = client
        .open_stream(url, token)
        .await
        .expect("first use works");
    drop(ws);
    let again = refused(client.open_stream(url, token).await, "reuse");
    assert_eq!(
        again,
        "session token was already used (tokens are single-use)"
    );
    let wrong = refused(client.open_stream(url, "tok_wrong").await, "a wrong token");
    assert_eq!(wrong, "invalid session token");

    let s: Value = client
        .call("POST", "/v1/sessions", Some(body))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let late = client
        .open_stream(
            s["stream_url"].as_str().unwrap(),
            s["token"].as_str().unwrap(),
        )
        .await;
    assert_eq!(
        refused(late, "an expired token"),
        "session token expired; create a new session"
    );
}

fn sleepers_alive(tag: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| c == format!("sleep\0{tag}\0").as_bytes())
        .count()
}

#[test]
fn twenty_first_session_is_refused_and_closing_kills_process_groups() {
    let env = Env::start();
    let tag = format!("{}.{}", 3000 + std::process::id() % 1000, 17);
    let sleeper = format!("sleep {tag} & wait");
    let mut clients = env.hold_sessions(20, &["sh", "-c", &sleeper]);
    wait_for("20 sleepers", Duration::from_secs(20), || {
        sleepers_alive(&tag) == 20
    });

    let out = env.run(&["exec", "gw-01", "--", "true"], b"");
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        text(&out).1,
        "error: agent 'gw-01' session limit reached (20 of 20 sessions in use)\n"
    );

    // Stopping the clients ends their sessions; the agent kills each process group,
    // including the background `sleep` that the shell started.
    for c in clients.iter_mut() {
        tests::stop_client(c);
    }
    env.wait_sessions(0, 30);
    wait_for("sleepers to die", Duration::from_secs(10), || {
        sleepers_alive(&tag) == 0
    });
    let out = env.run(&["exec", "gw-01", "--", "echo", "free"], b"");
    assert_eq!(text(&out).0, "free\n");
}

#[tokio::test(flavor = "current_thread")]
async fn malformed_frame_closes_only_its_own_stream() {
    let env = Env::start();
    // The survivor lives until it is told to finish, however slow the machine: all
    // the garbage below arrives while it runs.
    let mut survivor = env
        .sesame()
        .args([
            "exec",
            "gw-01",
            "--",
            "sh",
            "-c",
            "read word; echo survived-$word",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    env.wait_sessions(1, 20);

    let client = env.client();
    // Truncated data, a frame type clients may not send, an empty message, and a
    // message larger than the relay accepts.
    let oversized = vec![0x0d; 40_000];
    for garbage in [vec![0x07, 0xff, 0xff], vec![0x02, 0x00], vec![], oversized] {
        let s: Value = client
            .call(
                "POST",
                "/v1/sessions",
                Some(json!({"target": "gw-01", "kind": "exec", "command": ["sleep", "30"]})),
            )
            .await
            .unwrap();
        let mut ws = client
            .open_stream(
                s["stream_url"].as_str().unwrap(),
                s["token"].as_str().unwrap(),
            )
            .await
            .unwrap();
        let argv = b"sleep\x0030\x00";
        ws.send(enc(Frame::Open {
            sid: 9,
            window: 65536,
            kind: Kind::Exec { argv: Bytes(argv) },
            account: "",
        }))
        .await
        .unwrap();
        let accept = ws.next().await.unwrap().unwrap().into_data();
        assert!(matches!(
            Frame::decode(&accept),
            Ok(Frame::Accept { sid: 9, .. })
        ));
        ws.send(Message::Binary(garbage.clone().into()))
            .await
            .unwrap();
        let reply = ws.next().await.unwrap().unwrap().into_data();
        match Frame::decode(&reply).unwrap() {
            Frame::Close { reason, .. } => assert!(
                reason.starts_with("malformed frame")
                    || reason.contains("not allowed")
                    || reason.contains("too long"),
                "{reason}"
            ),
            f => panic!("expected Close, got {f:?}"),
        }
    }
    assert!(
        survivor.try_wait().unwrap().is_none(),
        "the survivor ended with the others"
    );
    {
        use std::io::Write;
        let mut stdin = survivor.stdin.take().unwrap();
        stdin.write_all(b"yes\n").unwrap();
    }
    let out = survivor.wait_with_output().unwrap();
    assert_eq!(text(&out).0, "survived-yes\n");
    assert_eq!(out.status.code(), Some(0));
    // The aborted sessions' processes are gone.
    env.wait_sessions(0, 20);
}

#[test]
fn agent_reconnects_after_the_relay_restarts() {
    let mut env = Env::start();
    let port = env.relay.port;
    // A second relay on the same data directory is refused while the first runs:
    // it would take the first one's sessions over as a previous run's.
    let second = std::process::Command::new(tests::bin("sesame-relay"))
        .args(["serve", "--data-dir"])
        .arg(env.data())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let (_, err) = text(&second);
    let pid = env.relay.proc.child.id();
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim(),
        format!(
            "error: another relay is serving from {} (process {pid}): stop it first",
            env.data().display()
        )
    );
    // Killed outright, the first lets it go (the kernel drops the lock).
    env.relay.proc.kill();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        env.agent.child.try_wait().unwrap().is_none(),
        "agent must not exit"
    );
    env.relay = start_relay(&env.data(), port, &[]);
    env.wait_online("gw-01", true);
    let out = env.run(&["exec", "gw-01", "--", "echo", "back"], b"");
    assert_eq!(text(&out).0, "back\n");
    assert!(
        env.agent.log().contains("reconnecting in"),
        "{}",
        env.agent.log()
    );
}

#[test]
fn used_and_unknown_activation_codes_and_unknown_keys_are_refused() {
    let env = Env::start();
    let dir = &env.dir.0;
    // The code gw-01 used, presented with a different key.
    let code = admin(&env.data(), &["agent", "add", "gw-02"]);
    let first = start_agent(dir, "gw-02", env.relay.port, Some(&code));
    env.wait_online("gw-02", true);
    drop(first);
    let mut thief = start_agent(dir, "thief", env.relay.port, Some(&code));
    let mut bogus = start_agent(dir, "bogus", env.relay.port, Some("act_bogus"));
    wait_for("refusals", Duration::from_secs(20), || {
        thief.log().contains("activation code was already used")
            && bogus.log().contains("unknown activation code")
    });
    assert!(
        thief.child.try_wait().unwrap().is_none(),
        "refused agents keep retrying"
    );
    bogus.kill();
    // The bogus agent's key is not registered: without a code it is an unknown key.
    let unknown = start_agent(dir, "bogus", env.relay.port, None);
    wait_for("unknown key refusal", Duration::from_secs(20), || {
        unknown.log().contains("unknown agent key")
    });
    // A fresh agent without a code cannot start at all, and says why.
    let out = std::process::Command::new(tests::bin("sesame-agent"))
        .args(["--relay", &format!("wss://127.0.0.1:{}", env.relay.port)])
        .arg("--ca")
        .arg(env.data().join("tls/ca.pem"))
        .arg("--state-dir")
        .arg(dir.join("fresh"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("run once with --activate CODE"),
        "{}",
        text(&out).1
    );
    // gw-01 was never disturbed.
    let out = env.run(&["exec", "gw-01", "--", "echo", "ok"], b"");
    assert_eq!(text(&out).0, "ok\n");
}

/// When the relay goes away mid-session the user reads what happened in their words,
/// not a TLS library's, and the exit status says the session failed (255, as ssh).
#[test]
fn losing_the_relay_mid_session_is_said_plainly() {
    // Not resumable (the relay's window is "none"): the CLI says so at once.
    let cfg = std::env::temp_dir().join(format!("sesame-lost-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        "[limits]\nrate = \"unlimited\"\nresume_window = \"none\"\n",
    )
    .unwrap();
    let mut env = Env::start_with(&["--config", cfg.to_str().unwrap()]);
    let child = env
        .sesame()
        .args(["exec", "gw-01", "--", "sh", "-c", "echo started; sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    env.wait_sessions(1, 20);
    env.relay.proc.kill();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout, "started\n");
    assert_eq!(
        stderr,
        "error: lost the relay (connection reset); the session on gw-01 ended\n"
    );
    assert_eq!(out.status.code(), Some(255));

    // Resumable (a 2 s window): the CLI tries to come back for the window, saying
    // so on one line, then gives up saying why.
    std::fs::write(
        &cfg,
        "[limits]\nrate = \"unlimited\"\nresume_window = \"2s\"\n",
    )
    .unwrap();
    let mut env = Env::start_with(&["--config", cfg.to_str().unwrap()]);
    let child = env
        .sesame()
        .args(["exec", "gw-01", "--", "sh", "-c", "echo started; sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    env.wait_sessions(1, 20);
    env.relay.proc.kill();
    let gone = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = gone.elapsed();
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout, "started\n");
    assert!(
        stderr
            .starts_with("sesame: relay connection lost; reconnecting (session kept for 2s)...\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: session on gw-01 ended: the relay was unreachable for 2s"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(took < Duration::from_secs(30), "{took:?}");
    let _ = std::fs::remove_file(&cfg);
}
