//! The embedded agent: the QEMU mps2-an386 firmware against the real relay, used
//! with the real `sesame` CLI, and forwarding through it to a server on the host.
//! Needs `qemu-system-arm` and `socat` (tests/run-all.sh installs them and builds
//! the firmware first).

use std::io::Write;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tests::{admin, boot_device, start_relay, text, Env, Proc, TempDir};

/// A `sesame shell dev-1` with piped stdin, held open until its stdin is closed.
fn open_shell(env: &Env) -> Child {
    env.sesame()
        .args(["shell", "dev-1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Send `input` to a held shell, close its stdin and collect (stdout, stderr, code).
fn finish_shell(mut shell: Child, input: &[u8]) -> (String, String, Option<i32>) {
    let mut stdin = shell.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    let out = shell.wait_with_output().unwrap();
    let (o, e) = text(&out);
    (o, e, out.status.code())
}

#[test]
fn device_runs_exec_and_shell_sessions_within_its_capacity() {
    let env = Env::start_device();

    // `sesame ls` shows it online.
    let ls = env.run(&["ls"], b"");
    let (out, _) = text(&ls);
    let line = out.lines().find(|l| l.starts_with("dev-1")).unwrap_or("");
    assert!(line.contains("online"), "ls: {out}");

    // exec: a console command's output and status.
    let up = env.run(&["exec", "dev-1", "--", "uptime"], b"");
    let (out, err) = text(&up);
    assert_eq!(up.status.code(), Some(0), "{out}{err}");
    assert!(out.starts_with("up 0d "), "{out:?}");
    let echo = env.run(&["exec", "dev-1", "--", "echo", "hello", "device"], b"");
    assert_eq!(text(&echo).0, "hello device\r\n");
    let bad = env.run(&["exec", "dev-1", "--", "no-such-command"], b"");
    let (out, _) = text(&bad);
    assert_eq!(bad.status.code(), Some(127), "{out}");
    assert!(out.contains("no-such-command: command not found"), "{out}");
    let mem = env.run(&["exec", "dev-1", "--", "mem"], b"");
    assert!(
        text(&mem).0.contains("of 262144 bytes used"),
        "{:?}",
        text(&mem)
    );

    // A shell session runs help and echo, then exits with 0.
    let (out, err, code) = finish_shell(open_shell(&env), b"help\recho hi  there\rexit\r");
    assert_eq!(code, Some(0), "{out}{err}");
    for cmd in [
        "uptime", "mem", "net", "sessions", "echo", "reboot", "board",
    ] {
        assert!(out.contains(cmd), "help lacks {cmd}: {out}");
    }
    assert!(out.contains("hi there\r\n"), "{out}");

    // Two concurrent sessions, each answering on its own.
    let a = open_shell(&env);
    let b = open_shell(&env);
    env.wait_sessions(2, 20);
    let (out_b, _, code_b) = finish_shell(b, b"echo from-b\rsessions\rexit\r");
    let (out_a, _, code_a) = finish_shell(a, b"echo from-a\rexit\r");
    assert_eq!((code_a, code_b), (Some(0), Some(0)));
    assert!(
        out_a.contains("from-a\r\n") && !out_a.contains("from-b"),
        "{out_a}"
    );
    assert!(
        out_b.contains("from-b\r\n") && !out_b.contains("from-a"),
        "{out_b}"
    );
    assert!(out_b.contains("2 of 4 sessions open"), "{out_b}");
    env.wait_sessions(0, 20);

    // Four held sessions fill it; a fifth is refused with the capacity reason and
    // the four keep working.
    let held: Vec<Child> = (0..4).map(|_| open_shell(&env)).collect();
    env.wait_sessions(4, 30);
    let fifth = env.run(&["exec", "dev-1", "--", "uptime"], b"");
    let (_, err) = text(&fifth);
    assert_eq!(fifth.status.code(), Some(255), "{err}");
    assert!(
        err.contains("session limit reached (4 of 4 sessions in use)"),
        "{err}"
    );
    for (i, shell) in held.into_iter().enumerate() {
        let (out, _, code) = finish_shell(shell, format!("echo held-{i}\rexit\r").as_bytes());
        assert_eq!(code, Some(0));
        assert!(out.contains(&format!("held-{i}\r\n")), "{out}");
    }
    env.wait_sessions(0, 20);
    let again = env.run(&["exec", "dev-1", "--", "sessions"], b"");
    assert_eq!(text(&again).0, "1 of 4 sessions open\r\n");

    // After TLS, four sessions and all of the above.
    assert_budgets(&env);
    // A kind of session the device does not announce is refused at the relay,
    // before the device hears of it: forward without rules in its image, ssh-key
    // always.
    let fwd = env.run(&["forward", "dev-1", "0:10.0.2.2:80"], b"");
    assert!(!fwd.status.success());
    assert_eq!(
        text(&fwd).1,
        "error: target 'dev-1' does not offer forward sessions\n"
    );
    let key = env.dir.0.join("device-key.pub");
    std::fs::write(&key, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake test\n").unwrap();
    let push = env.run(
        &[
            "ssh-key",
            "push",
            "dev-1",
            "--user",
            "console",
            key.to_str().unwrap(),
        ],
        b"",
    );
    assert!(!push.status.success());
    assert_eq!(
        text(&push).1,
        "error: target 'dev-1' does not offer ssh-key sessions\n"
    );
}

#[test]
fn device_reconnects_after_a_relay_restart_and_a_reboot() {
    let mut env = Env::start_device();
    let port = env.relay.port;
    env.relay.proc.kill();
    wait_for_log(&env.agent, "retrying in", 30);
    env.relay = start_relay(&env.data(), port, &[]);
    // The firmware backs off (1 s, 2 s, ... with jitter) and comes back.
    env.wait_online("dev-1", true);
    let up = env.run(&["exec", "dev-1", "--", "uptime"], b"");
    assert_eq!(up.status.code(), Some(0), "{:?}", text(&up));

    // `reboot` answers, resets the device, and it comes back.
    let reboot = env.run(&["exec", "dev-1", "--", "reboot"], b"");
    assert_eq!(text(&reboot).0, "rebooting\r\n");
    // The firmware really restarted: its boot banner is in the log twice.
    let log = wait_for_log(&env.agent, "rebooting on request", 20);
    let boots = |log: &str| log.matches("on qemu mps2-an386").count();
    let deadline = Instant::now() + Duration::from_secs(20);
    while boots(&env.agent.log()) < 2 {
        assert!(Instant::now() < deadline, "no second boot: {log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = env.run(&["exec", "dev-1", "--", "uptime"], b"");
        // The relay may still route to the connection from before the reset
        // until the new one replaces it.
        if up.status.success() {
            assert!(text(&up).0.starts_with("up 0d "), "{:?}", text(&up));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not back after reboot: {:?}",
            text(&up)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn device_refuses_a_relay_certificate_from_another_ca() {
    // A second relay's CA: the device pins it, then dials the first relay.
    let other = TempDir::new("other-ca");
    let mut decoy = start_relay(&other.0.join("relay"), 0, &[]);
    decoy.proc.kill();
    let foreign_ca = other.0.join("relay/tls/ca.pem");

    let dir = TempDir::new("e2e");
    let data = dir.0.join("relay");
    let relay = start_relay(&data, 0, &[]);
    let code = admin(&data, &["agent", "add", "dev-1"]);
    let api_key = admin(&data, &["user", "add", "alice", "--admin"]);
    let agent = boot_device(&dir.0, relay.port, &code, &foreign_ca);
    let env = Env {
        dir,
        relay,
        agent,
        api_key,
        target: "dev-1".into(),
    };
    let log = wait_for_log(&env.agent, "not signed by the pinned CA", 60);
    assert!(log.contains("retrying in"), "{log}");
    assert!(!log.contains("authenticated"), "{log}");
    let ls = text(&env.run(&["ls"], b"")).0;
    let line = ls.lines().find(|l| l.starts_with("dev-1")).unwrap_or("");
    assert!(line.contains("offline"), "{ls}");
}

/// Body served for `/n` by the host's HTTP server: 8 KiB, deterministic, different
/// per path.
fn body(n: u32) -> Vec<u8> {
    tests::http::body_of(n, 8192)
}

/// An HTTP/1.0 server on the host's loopback: `GET /n` answers `body(n)`.
fn http_server() -> u16 {
    tests::http::server(|n| body(n.parse().unwrap_or(0)))
}

/// `GET path` through a forwarded local port; the response body (empty when the
/// connection was closed without an answer).
fn get(port: u16, path: &str) -> std::io::Result<Vec<u8>> {
    tests::http::get(port, path, Duration::from_secs(30))
}

/// The device's budgets from its own accounting: static RAM and the stack's
/// high-water mark within 128 KiB (`mem`), flash within 256 KiB of the 1 MiB the
/// link allows (`board`).
fn assert_budgets(env: &Env) {
    let mem = text(&env.run(&["exec", "dev-1", "--", "mem"], b"")).0;
    let used: usize = mem
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("mem: {mem:?}"));
    assert!(used <= 128 * 1024, "RAM budget exceeded: {mem}");
    let board = text(&env.run(&["exec", "dev-1", "--", "board"], b"")).0;
    let flash: usize = board
        .split("flash ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("board: {board:?}"));
    assert!(flash <= 256 * 1024, "flash budget exceeded: {board}");
    eprintln!("device budgets: {}{}", mem.trim_end(), board.trim_end());
}

#[test]
fn device_forwards_to_a_host_server_within_its_rules() {
    let http = http_server();
    // The guest reaches the host's server at 10.0.2.101:80 (a second slirp
    // guestfwd); the image allows the guest's network but the relay's address.
    let env = Env::start_device_with(&[
        "--guestfwd".into(),
        format!("10.0.2.101:80=127.0.0.1:{http}"),
        "--allow-dest".into(),
        "10.0.2.0/24".into(),
        "--deny-dest".into(),
        "10.0.2.100".into(),
    ]);
    let log = env.agent.log();
    assert!(
        log.contains("forward: up to 2 connections to [10.0.2.0/24] except [10.0.2.100]"),
        "{log}"
    );
    let relay = format!("10.0.2.100:{}", env.relay.port);
    let fwd = env.forward(&["0:10.0.2.101:80", &format!("0:{relay}"), "0:192.0.2.1:80"]);
    for n in 1..=20 {
        let got = get(fwd.ports[0], &format!("/{n}")).unwrap_or_else(|e| panic!("/{n}: {e}"));
        assert!(got == body(n), "/{n}: {} bytes, not its body", got.len());
    }
    // Denied: the relay (deny wins over the allowed network) and an address outside
    // the allowed network, each refused with its line.
    for (port, dest) in [
        (fwd.ports[1], relay.as_str()),
        (fwd.ports[2], "192.0.2.1:80"),
    ] {
        assert_eq!(get(port, "/1").unwrap_or_default(), b"", "{dest}");
        let line = format!(
            "-> {dest} via dev-1: destination {dest} is denied by the device's forwarding policy\n"
        );
        wait_for_log(&fwd.proc, &line, 10);
    }
    // Both ends of a connection in one session: the device's two sockets at once.
    let both: Vec<_> = [21u32, 22]
        .into_iter()
        .map(|n| {
            let port = fwd.ports[0];
            std::thread::spawn(move || (n, get(port, &format!("/{n}"))))
        })
        .collect();
    for h in both {
        let (n, got) = h.join().unwrap();
        assert!(got.unwrap() == body(n), "/{n}");
    }
    assert_eq!(env.sessions(), 1, "all connections share one session");
    assert_budgets(&env);
}

/// Wait until the device's log contains `needle`; returns the log.
fn wait_for_log(device: &Proc, needle: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let log = device.log();
        if log.contains(needle) {
            return log;
        }
        assert!(Instant::now() < deadline, "never saw {needle:?} in: {log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn device_session_survives_its_link_going_down_for_10_s() {
    // The device reaches the relay through a proxy that resets its connection and
    // refuses new ones for 10 s (`docs/protocol.md`, section 8).
    let mut proxy = None;
    let env = Env::start_launch(&[], "dev-1", |dir, port, code| {
        let p = tests::proxy::CutProxy::start(port);
        let device = boot_device(dir, p.port, code, &dir.join("relay/tls/ca.pem"));
        proxy = Some(p);
        device
    });
    let proxy = proxy.expect("the device was booted");
    let mut shell = open_shell(&env);
    let mut stdin = shell.stdin.take().unwrap();
    let mut stdout = shell.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let mut wait_for = |needle: &str, secs: u64| {
        let end = Instant::now() + Duration::from_secs(secs);
        while !seen.contains(needle) {
            let left = end.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "never saw {needle:?} in {seen:?}");
            if let Ok(b) = rx.recv_timeout(left.min(Duration::from_millis(200))) {
                seen.push_str(&String::from_utf8_lossy(&b));
            }
        }
        seen.clone()
    };
    stdin.write_all(b"echo before  cut\r").unwrap();
    wait_for("before cut\r\n", 30);
    let accepted = proxy.accepted.load(std::sync::atomic::Ordering::Relaxed);
    proxy.cut(true);
    // Typed while the device is unreachable: it runs once, after the resume.
    stdin.write_all(b"echo during  cut\r").unwrap();
    std::thread::sleep(Duration::from_secs(10));
    proxy.restore();
    wait_for("during cut\r\n", 90);
    assert!(
        proxy.accepted.load(std::sync::atomic::Ordering::Relaxed) > accepted,
        "the device never reconnected"
    );
    stdin.write_all(b"echo after  cut\rexit\r").unwrap();
    drop(stdin);
    let out = wait_for("after cut\r\n", 30);
    let status = shell.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{out}");
    assert_eq!(out.matches("before cut\r\n").count(), 1, "{out}");
    assert_eq!(out.matches("during cut\r\n").count(), 1, "{out}");
    assert!(
        env.agent.log().contains("held"),
        "the device did not say it held the session: {}",
        env.agent.log()
    );
}

#[test]
fn device_forwarded_transfer_survives_its_link_going_down_for_10_s() {
    // The device forwards to a destination on the host (10.0.2.101:80, a slirp
    // guestfwd) and reaches the relay through a proxy that resets its connection and
    // refuses new ones for 10 s, mid-transfer: the connection to the destination
    // stays up, and both ways arrive whole, each byte once.
    const DOWN: usize = 192 << 10;
    const UP: usize = 24 << 10;
    let dest = tests::transfer::server("127.0.0.1");
    let mut proxy = None;
    let env = Env::start_launch(&[], "dev-1", |dir, port, code| {
        let p = tests::proxy::CutProxy::start(port);
        let ca = dir.join("relay/tls/ca.pem");
        let extra = [
            "--guestfwd".to_string(),
            format!("10.0.2.101:80=127.0.0.1:{dest}"),
            "--allow-dest".into(),
            "10.0.2.101:80".into(),
        ];
        let device = tests::boot_device_with(dir, p.port, code, &ca, &extra);
        proxy = Some(p);
        device
    });
    let proxy = proxy.expect("the device was booted");
    let fwd = env.forward(&["0:10.0.2.101:80"]);
    let started = Instant::now();
    let t = tests::transfer::Transfer::start(fwd.ports[0], DOWN, UP, 11);
    t.wait_for(DOWN / 4);
    let before_cut = t.received();
    let accepted = proxy.accepted.load(std::sync::atomic::Ordering::Relaxed);
    proxy.cut(true);
    std::thread::sleep(Duration::from_secs(10));
    proxy.restore();
    tests::wait_until("the device to come back", 60, || {
        proxy.accepted.load(std::sync::atomic::Ordering::Relaxed) > accepted
    });
    t.check(UP);
    eprintln!(
        "{DOWN} bytes down, {UP} up in {:?} with a 10 s cut after {before_cut}",
        started.elapsed()
    );
    let log = env.agent.log();
    assert!(log.contains("(1 session held)"), "{log}");
    assert_eq!(env.sessions(), 1, "still the one session");
    // And it still forwards.
    let again = tests::transfer::Transfer::start(fwd.ports[0], 4096, 512, 12);
    again.check(512);
}
