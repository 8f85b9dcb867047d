// Sessions that end in every way but the polite one, and the relay's limits still
// hold afterwards; a client that stops reading; input that once panicked the agent.

use std::process::{Command, Stdio};
use std::time::Instant;

use agent_core::wire::Frame;
use futures_util::SinkExt;
use tests::{bin, text, ws_message, Env};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn exec_ok(env: &Env) {
    let out = env.run(&["exec", "gw-01", "--", "true"], b"");
    assert!(out.status.success(), "{:?}", text(&out));
}

fn refused_at_the_limit(env: &Env) {
    let out = env.run(&["exec", "gw-01", "--", "true"], b"");
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        text(&out).1,
        "error: relay session limit reached (3 of 3 sessions in use)\n"
    );
}

fn release(held: Vec<std::process::Child>) {
    for mut c in held {
        tests::stop_client(&mut c);
    }
}

/// The relay once counted every session it ever served against `max_sessions` and
/// refused all sessions after the limit-th. Each way a session can end must give its
/// place back: a normal exit, a refusal, a client that vanishes mid-stream, and an
/// agent that disconnects under its sessions.
#[test]
fn the_relay_session_limit_counts_only_live_sessions() {
    let mut env = Env::start_with_limits("[limits]\nrate = \"unlimited\"\nmax_sessions = 3\n");
    for _ in 0..10 {
        exec_ok(&env);
    }

    // Refusals at the limit take no place.
    let held = env.hold_sessions(3, &["sleep", "60"]);
    for _ in 0..3 {
        refused_at_the_limit(&env);
    }
    release(held);
    env.wait_sessions(0, 20);
    let held = env.hold_sessions(3, &["sleep", "60"]);
    release(held);
    env.wait_sessions(0, 20);

    // Streams dropped without a goodbye, in the middle of their sessions.
    let rt = runtime();
    for _ in 0..3 {
        let ws = rt.block_on(env.raw_exec(b"sleep\x0060\x00", 65536)).0;
        drop(ws);
    }
    env.wait_sessions(0, 20);
    exec_ok(&env);

    // The agent disconnects with three sessions running, and comes back.
    let held = env.hold_sessions(3, &["sleep", "60"]);
    env.agent.kill();
    env.wait_online("gw-01", false);
    release(held);
    env.agent = tests::start_agent(&env.dir.0, "agent", env.relay.port, None);
    env.wait_online("gw-01", true);
    let held = env.hold_sessions(3, &["sleep", "60"]);
    refused_at_the_limit(&env);
    release(held);
    env.wait_sessions(0, 20);
    for _ in 0..5 {
        exec_ok(&env);
    }
}

/// A client that asks for output and then never reads it once pinned its session
/// (and the output queued for it) forever: the relay's write to it blocked, and with
/// it the timers that end sessions. Now the session still ends on time.
#[test]
fn a_client_that_stops_reading_does_not_outlive_the_session_timers() {
    let env = Env::start_with_limits("[limits]\nrate = \"unlimited\"\nmax_duration = \"3s\"\n");
    let rt = runtime();
    let _ws = rt.block_on(async {
        let argv = b"head\x00-c\x0064000000\x00/dev/zero\x00";
        let (mut ws, _) = env.raw_exec(argv, 256 * 1024).await;
        // 16 MB of credit: more than loopback's socket buffers hold, less than the
        // relay queues for one client, so the relay's own write must block.
        for _ in 0..64 {
            let credit = Frame::Credit {
                sid: 1,
                ch: 0,
                bytes: 256 * 1024,
            };
            ws.send(ws_message(credit)).await.unwrap();
        }
        ws
    });
    assert_eq!(env.sessions(), 1);
    let t0 = Instant::now();
    env.wait_sessions(0, 20);
    let took = t0.elapsed();
    let log = env.relay.proc.log();
    assert!(
        log.contains("maximum session duration of 3s reached"),
        "relay log:\n{log}"
    );
    eprintln!("session ended {took:?} after the client stopped reading");
    // And the relay still serves.
    exec_ok(&env);
}

/// `--activate` with a two-byte character across byte 64 aborted the static agent
/// (a crash loop under systemd); an activation code that cannot be one is refused in
/// a clear line.
#[test]
fn an_activation_code_with_a_multibyte_character_is_refused_clearly() {
    let dir = tests::TempDir::new("activate");
    for code in [format!("{}é", "a".repeat(63)), "é".repeat(40)] {
        let out = Command::new(bin("sesame-agent"))
            .args(["--relay", "wss://127.0.0.1:9", "--ca", "/dev/null"])
            .arg("--state-dir")
            .arg(&dir.0)
            .args(["--activate", &code])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.starts_with("error: --activate: not an activation code"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
