//! The embedded agent: the QEMU mps2-an386 firmware against the real relay, used
//! with the real `sesame` CLI. Needs `qemu-system-arm` and `socat` (tests/run-all.sh
//! installs them and builds the firmware first).

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

    // The RAM budget, after TLS, four sessions and all of the above: static RAM and
    // the stack's high-water mark within 128 KiB.
    let mem = text(&env.run(&["exec", "dev-1", "--", "mem"], b"")).0;
    let used: usize = mem
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("mem: {mem:?}"));
    assert!(used <= 128 * 1024, "RAM budget exceeded: {mem}");
    // And the flash budget: 256 KiB of the 1 MiB the link allows.
    let board = text(&env.run(&["exec", "dev-1", "--", "board"], b"")).0;
    let flash: usize = board
        .split("flash ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("board: {board:?}"));
    assert!(flash <= 256 * 1024, "flash budget exceeded: {board}");
    // A kind of session the device does not announce is refused at the relay,
    // before the device hears of it.
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
