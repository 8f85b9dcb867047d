//! Limits that hold: the per-session rate in each direction (paced, not slept),
//! the relay-wide session count, idle timeout and maximum duration with the reason
//! shown, and a stalled reader that does not slow another session.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tests::{text, Env};

#[test]
fn default_rate_of_200_kbit_holds_in_both_directions() {
    let env = Env::start_with_limits("[limits]\nrate = \"200kbit\"\n");
    let expected = 25_000.0;

    // Agent -> client: the rate fitted over a 300 kB download past its first 50 kB
    // (start-up and the initial bucket).
    let down = tests::paced_download(&env, 300_000, 50_000);
    assert!(
        (down - expected).abs() / expected <= 0.02,
        "download paced at {down:.0} B/s, expected {expected} ±2%"
    );

    // Client -> agent: 200 kB of stdin; the relay paces what it forwards.
    let t0 = Instant::now();
    let out = env.run(&["exec", "gw-01", "--", "wc", "-c"], &vec![7u8; 200_000]);
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(text(&out).0.trim(), "200000");
    // At most one bucket (5 000 B) and one frame (32 kB) may pass before pacing starts.
    let up = (200_000.0 - 37_000.0) / secs;
    eprintln!(
        "measured: download {down:.0} B/s, upload {:.0} B/s over {secs:.2} s",
        200_000.0 / secs
    );
    assert!(
        up <= expected * 1.02,
        "upload at {up:.0} B/s exceeds the limit"
    );
    assert!(
        secs < 200_000.0 / expected * 1.1,
        "upload took {secs:.1} s, far slower than the limit"
    );
}

#[test]
fn relay_wide_session_limit_refuses_the_next_session() {
    let env = Env::start_with_limits("[limits]\nrate = \"unlimited\"\nmax_sessions = 2\n");
    let mut held = env.hold_sessions(2, &["sleep", "30"]);
    let out = env.run(&["exec", "gw-01", "--", "true"], b"");
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        text(&out).1,
        "error: relay session limit reached (2 of 2 sessions in use)\n"
    );
    for c in held.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn idle_timeout_ends_the_session_with_its_reason() {
    let env = Env::start_with_limits("[limits]\nrate = \"unlimited\"\nidle_timeout = \"2s\"\n");
    let t0 = Instant::now();
    let out = env.run(&["exec", "gw-01", "--", "sleep", "30"], b"");
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        text(&out).1,
        "error: session ended: idle timeout: no input or output for 2s\n"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // Output resets the idle clock: 3 s of output every half second survives.
    let out = env.run(
        &[
            "exec",
            "gw-01",
            "--",
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6; do echo $i; sleep 0.5; done",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
}

#[test]
fn maximum_duration_ends_even_a_busy_session() {
    let env = Env::start_with_limits("[limits]\nrate = \"unlimited\"\nmax_duration = \"2s\"\n");
    let out = env.run(
        &[
            "exec",
            "gw-01",
            "--",
            "sh",
            "-c",
            "while true; do echo tick; sleep 0.2; done",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        text(&out).1,
        "error: session ended: maximum session duration of 2s reached\n"
    );
    assert!(text(&out).0.starts_with("tick\n"));
}

#[test]
fn a_stalled_reader_does_not_slow_another_session_or_grow_the_relay() {
    let env = Env::start();
    let rss = || {
        let s =
            std::fs::read_to_string(format!("/proc/{}/status", env.relay.proc.child.id())).unwrap();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };
    // A client that never reads its endless output.
    let mut stalled = env
        .sesame()
        .args(["exec", "gw-01", "--", "cat", "/dev/zero"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let before = rss();
    // Another session moves 50 MB meanwhile.
    let out = env.run(
        &["exec", "gw-01", "--", "head", "-c", "50000000", "/dev/zero"],
        b"",
    );
    assert_eq!(out.stdout.len(), 50_000_000);
    std::thread::sleep(Duration::from_millis(500));
    let after = rss();
    assert!(
        after < before + 32 * 1024,
        "relay RSS grew from {before} to {after} KiB"
    );
    let _ = stalled.stdin.take().unwrap().write_all(b"");
    let _ = stalled.kill();
    let _ = stalled.wait();
}
