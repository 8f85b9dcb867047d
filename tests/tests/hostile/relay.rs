// The relay against connections that never authenticate: half-open TCP, a TLS
// handshake cut short, a request whose headers never end. They must neither exhaust
// its file descriptors nor lock out agents and users, and they must be closed.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tests::{admin, start_agent, text, Env, Relay, TempDir};

/// Start `sesame-relay serve --config CONFIG` under `ulimit -n NOFILE`, the way an
/// operator's too-low `LimitNOFILE` would run it.
fn start_relay_ulimit(data: &Path, nofile: u32, config: &str) -> Relay {
    std::fs::create_dir_all(data).unwrap();
    let cfg = data.join("relay.toml");
    std::fs::write(&cfg, config).unwrap();
    let ulimit = format!("ulimit -n {nofile} && exec \"$0\" \"$@\"");
    tests::start_relay_via(
        &["/bin/sh", "-c", &ulimit],
        data,
        0,
        &["--config", cfg.to_str().unwrap()],
    )
}

/// A relay started by `start_relay_ulimit`, an admin and agent `gw-01`, online.
fn env_ulimit(nofile: u32, config: &str) -> Env {
    let dir = TempDir::new("hostile-relay");
    let data = dir.0.join("relay");
    let relay = start_relay_ulimit(&data, nofile, config);
    let code = admin(&data, &["agent", "add", "gw-01"]);
    let api_key = admin(&data, &["user", "add", "alice", "--admin"]);
    let agent = start_agent(&dir.0, "agent", relay.port, Some(&code));
    let env = Env {
        dir,
        relay,
        agent,
        api_key,
        target: "gw-01".into(),
    };
    env.wait_online("gw-01", true);
    env
}

/// Run `sesame args...`; it must succeed within `limit`. Returns its stdout.
fn sesame_within(env: &Env, args: &[&str], limit: Duration) -> String {
    let mut child = env
        .sesame()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "`sesame {}` did not finish within {limit:?}: {}\nrelay log:\n{}",
                args.join(" "),
                text(&out).1,
                env.relay.proc.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "`sesame {}` failed: {}",
        args.join(" "),
        text(&out).1
    );
    text(&out).0
}

/// Whether the relay has closed `s` (EOF or reset) without blocking.
fn closed(s: &std::net::TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 64];
    match s.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false, // the relay never answers these; count it as open
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

/// `n` connections to `port` spread over `sources` loopback addresses other than
/// 127.0.0.1 (the users' and the agent's). Even ones stay silent (half-open TCP);
/// odd ones send the start of a ClientHello whose rest never comes.
fn half_open(port: u16, n: usize, sources: u8) -> Vec<std::net::TcpStream> {
    // A TLS record header announcing 512 bytes, and the first bytes of the
    // ClientHello inside it (RFC 8446, 5.1 and 4.1.2).
    const PARTIAL_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let connects = (0..n).map(|i| async move {
            let src = Ipv4Addr::new(127, 0, 0, 2 + (i % sources as usize) as u8);
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(SocketAddr::new(IpAddr::V4(src), 0)).unwrap();
            let dst = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            // A relay that stopped accepting fills its backlog: those never connect.
            let tcp = tokio::time::timeout(Duration::from_secs(3), sock.connect(dst))
                .await
                .ok()?
                .ok()?;
            let mut tcp = tcp.into_std().unwrap();
            tcp.set_nonblocking(false).unwrap();
            if i % 2 == 1 {
                tcp.write_all(PARTIAL_HELLO).ok()?;
            }
            Some(tcp)
        });
        futures_util::future::join_all(connects)
            .await
            .into_iter()
            .flatten()
            .collect()
    })
}

/// `openssl s_client` that completes TLS (verifying the relay's certificate) and
/// sends a request whose headers never end.
fn half_sent_request(env: &Env, i: usize) -> (Child, std::path::PathBuf) {
    let log = env.dir.0.join(format!("s_client-{i}.log"));
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-servername", "localhost", "-connect"])
        .arg(format!("127.0.0.1:{}", env.relay.port))
        .arg("-CAfile")
        .arg(env.data().join("tls/ca.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn openssl s_client");
    // Kept open (the child is returned with its stdin): the request never ends.
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"GET /v1/agents HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .unwrap();
    (child, log)
}

#[test]
fn half_open_connections_cannot_lock_out_agents_and_users() {
    // Long enough that everything the users do below happens while the attack
    // holds, on a loaded 2-core machine too.
    const HANDSHAKE: Duration = Duration::from_secs(15);
    const MARGIN: Duration = Duration::from_secs(5);
    // 4 attacking addresses x 25 admitted, and a few slow requests from the users'
    // address, stay well under 256 descriptors; the rest are refused at once.
    let mut env = env_ulimit(
        256,
        "[limits]\nrate = \"unlimited\"\n\
         [connections]\nmax_unauthenticated = 200\nmax_unauthenticated_per_ip = 25\n\
         handshake_timeout = \"15s\"\nagent_handshake_timeout = \"15s\"\n\
         keepalive_timeout = \"15s\"\n",
    );

    let t0 = Instant::now();
    let mut slow: Vec<_> = (0..8).map(|i| half_sent_request(&env, i)).collect();
    let attack = half_open(env.relay.port, 400, 4);
    std::thread::sleep(Duration::from_millis(500));
    let refused = attack.iter().filter(|s| closed(s)).count();

    // Users and agents still get in while the admitted ones hang.
    let ls = sesame_within(&env, &["ls"], Duration::from_secs(3));
    assert!(ls.contains("gw-01"), "{ls}");
    env.agent.kill();
    env.wait_online("gw-01", false);
    env.agent = start_agent(&env.dir.0, "agent", env.relay.port, None);
    env.wait_online("gw-01", true);
    let out = sesame_within(
        &env,
        &["exec", "gw-01", "--", "echo", "through"],
        Duration::from_secs(5),
    );
    assert_eq!(out, "through\n");
    // Those over the per-address cap were closed at once, not queued.
    assert!(
        attack.len() == 400 && refused >= 300,
        "{} of 400 connections got through to the relay, {refused} were closed at once",
        attack.len()
    );
    let open = attack.iter().filter(|s| !closed(s)).count();
    assert!(
        t0.elapsed() < HANDSHAKE && open >= 90,
        "the attack was over too early ({open} open after {:?}): the test proves nothing",
        t0.elapsed()
    );
    for (child, log) in &mut slow {
        let tls_up = std::fs::read_to_string(&*log).unwrap_or_default();
        assert!(
            tls_up.contains("verify return:1") && child.try_wait().unwrap().is_none(),
            "s_client did not complete TLS and hold its request: {tls_up}"
        );
    }

    // The relay closes every one of them within its handshake timeout.
    let deadline = t0 + HANDSHAKE + MARGIN;
    for s in &attack {
        s.set_nonblocking(false).unwrap();
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut b = [0u8; 64];
        match (&*s).read(&mut b) {
            Ok(0) => {}
            Ok(n) => panic!("the relay answered {n} bytes to a half-open connection"),
            Err(e) => assert!(
                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "a half-open connection was still open after {:?}",
                t0.elapsed()
            ),
        }
    }
    for (child, log) in &mut slow {
        while child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "a request with unfinished headers was still open after {:?}: {}",
                t0.elapsed(),
                std::fs::read_to_string(&*log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // And it still serves.
    let ls = sesame_within(&env, &["ls"], Duration::from_secs(3));
    assert!(ls.contains("gw-01"), "{ls}");
}

#[test]
fn authenticated_agents_and_session_streams_do_not_count_against_the_cap() {
    // Four unauthenticated connections per address: more agents and sessions than
    // that, all from 127.0.0.1, must still work.
    let env = env_ulimit(
        1024,
        "[limits]\nrate = \"unlimited\"\n\
         [connections]\nmax_unauthenticated_per_ip = 4\n",
    );
    // One at a time: each start makes two connections that count until answered
    // (the API call) or upgraded (the stream), beside the harness's polling
    // `sesame ls`. gw-01's link stopped counting when it authenticated.
    let mut held: Vec<Child> = (0..5)
        .flat_map(|_| env.hold_sessions(1, &["sleep", "30"]))
        .collect();
    let code = admin(&env.data(), &["agent", "add", "gw-02"]);
    let _second = start_agent(&env.dir.0, "gw-02", env.relay.port, Some(&code));
    env.wait_online("gw-02", true);
    let out = sesame_within(
        &env,
        &["exec", "gw-02", "--", "echo", "still"],
        Duration::from_secs(5),
    );
    assert_eq!(out, "still\n");
    // Four half-open connections use this address's places; the fifth is refused.
    // (Tried again while a connection of the commands above is still closing.)
    let mut tries = 0;
    loop {
        let hang: Vec<_> = (0..4)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", env.relay.port)).unwrap())
            .collect();
        let fifth = std::net::TcpStream::connect(("127.0.0.1", env.relay.port)).unwrap();
        fifth
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let refused = (&fifth).read(&mut [0u8; 8]).map_err(|e| e.kind()) == Ok(0);
        if refused && hang.iter().all(|s| !closed(s)) {
            break;
        }
        tries += 1;
        assert!(
            tries < 10,
            "a fifth unauthenticated connection from one address is closed at once, \
             the four before it are held (refused: {refused})"
        );
        drop(hang);
        std::thread::sleep(Duration::from_millis(200));
    }
    for c in &mut held {
        let _ = c.kill();
        let _ = c.wait();
    }
}
