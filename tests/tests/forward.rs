//! `sesame forward` and `sesame proxy` against a local HTTP server: many concurrent
//! connections in one session with every body verified, per-connection errors that
//! leave the others alone, the destination policy, a stalled connection that does
//! not hold up the rest, and uploads far beyond every window.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tests::{bin, text, Env};

/// Body served for `/n`: deterministic, different per path, 20-120 KB.
fn body(n: u32) -> Vec<u8> {
    tests::http::body_of(n, 20_000 + (n as usize * 7919) % 100_000)
}

/// A small HTTP/1.0 server: `GET /n` answers `body(n)`, `GET /big` 16 MB.
fn http_server() -> u16 {
    tests::http::server(|path| match path {
        "big" => vec![b'x'; 16 << 20],
        n => body(n.parse().unwrap_or(0)),
    })
}

fn get(port: u16, path: &str) -> std::io::Result<Vec<u8>> {
    tests::http::get(port, path, Duration::from_secs(60))
}

#[test]
fn fifty_concurrent_requests_through_one_forward_session() {
    let env = Env::start();
    let http = http_server();
    let fwd = env.forward(&[&format!("0:127.0.0.1:{http}")]);
    let port = fwd.ports[0];
    let handles: Vec<_> = (1..=50u32)
        .map(|n| std::thread::spawn(move || (n, get(port, &format!("/{n}")))))
        .collect();
    for h in handles {
        let (n, got) = h.join().unwrap();
        let got = got.unwrap_or_else(|e| panic!("request {n}: {e}"));
        assert!(
            got == body(n),
            "request {n}: body of {} bytes differs",
            got.len()
        );
    }
    assert_eq!(env.sessions(), 1, "all connections share one session");
}

#[test]
fn closed_port_fails_only_its_connection_and_denied_destinations_are_refused() {
    let env = Env::start();
    let http = http_server();
    let fwd = env.forward(&[
        &format!("0:127.0.0.1:{http}"),
        "0:127.0.0.1:1",
        "0:169.254.169.254:80",
    ]);
    // The closed port: the local connection is closed without data.
    assert_eq!(get(fwd.ports[1], "/").unwrap_or_default(), b"");
    // The metadata address is denied by default.
    assert_eq!(get(fwd.ports[2], "/").unwrap_or_default(), b"");
    // The good destination still works in the same session.
    assert!(get(fwd.ports[0], "/7").unwrap() == body(7));
    let log = fwd.proc.log();
    assert!(
        log.contains("-> 127.0.0.1:1 via gw-01: cannot connect to 127.0.0.1:1: Connection refused"),
        "{log}"
    );
    assert!(
        log.contains("-> 169.254.169.254:80 via gw-01: destination 169.254.169.254:80 is denied by the agent's forwarding policy"),
        "{log}"
    );
}

#[test]
fn agent_deny_rules_apply_to_names_and_addresses() {
    let http = http_server();
    let agent = [
        bin("sesame-agent"),
        "--deny-dest".into(),
        format!("127.0.0.1:{http}").into(),
        "--deny-dest".into(),
        format!("[::1]:{http}").into(),
    ];
    let env = Env::start_custom(&[], &agent);
    let fwd = env.forward(&[&format!("0:localhost:{http}")]);
    assert_eq!(get(fwd.ports[0], "/1").unwrap_or_default(), b"");
    assert!(
        fwd.proc
            .log()
            .contains("is denied by the agent's forwarding policy"),
        "{}",
        fwd.proc.log()
    );
}

#[test]
fn a_stalled_connection_does_not_hold_up_the_others() {
    let env = Env::start();
    let http = http_server();
    let fwd = env.forward(&[&format!("0:127.0.0.1:{http}")]);
    // Ask for 16 MB and never read it: its channel fills its window and stops.
    let mut stalled = TcpStream::connect(("127.0.0.1", fwd.ports[0])).unwrap();
    write!(stalled, "GET /big HTTP/1.0\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for n in 1..=5 {
        assert!(
            get(fwd.ports[0], &format!("/{n}")).unwrap() == body(n),
            "request {n}"
        );
    }
    // The stalled one still completes once read.
    let mut all = Vec::new();
    stalled.read_to_end(&mut all).unwrap();
    assert!(
        all.len() > 16 << 20,
        "stalled response was cut: {} bytes",
        all.len()
    );
}

/// A server that reads a connection to its end and answers with the byte count and
/// a checksum of what it read.
fn counting_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                let (mut n, mut sum) = (0u64, 0u64);
                while let Ok(k) = c.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    for &b in &buf[..k] {
                        sum = sum.wrapping_mul(31).wrapping_add(u64::from(b));
                    }
                    n += k as u64;
                }
                let _ = c.write_all(format!("{n} {sum}").as_bytes());
            });
        }
    });
    port
}

#[test]
fn uploads_far_beyond_every_window_arrive_whole() {
    // 40 MB up, three times in a row: the agent's window grows to 1 MiB and returns
    // credit a quarter at a time, so the CLI must keep offering its input as room
    // comes free (it once stopped at about 8 MB, waiting for credit that waited
    // for it).
    let env = Env::start();
    let port = counting_server();
    let fwd = env.forward(&[&format!("0:127.0.0.1:{port}")]);
    let data: Vec<u8> = (0..40u32 << 20).map(|i| (i ^ (i >> 11)) as u8).collect();
    let mut sum = 0u64;
    for &b in &data {
        sum = sum.wrapping_mul(31).wrapping_add(u64::from(b));
    }
    for round in 0..3 {
        let mut c = TcpStream::connect(("127.0.0.1", fwd.ports[0])).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        c.write_all(&data).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, format!("{} {sum}", data.len()), "round {round}");
    }
}

#[test]
fn proxy_bridges_stdin_and_stdout() {
    let env = Env::start();
    let http = http_server();
    let out = env.run(
        &["proxy", "gw-01", &http.to_string()],
        b"GET /3 HTTP/1.0\r\n\r\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    assert!(out.stdout.ends_with(&body(3)), "proxy response differs");
    let out = env.run(&["proxy", "gw-01", "1"], b"");
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out)
            .1
            .starts_with("error: 127.0.0.1:1: cannot connect"),
        "{}",
        text(&out).1
    );
}
