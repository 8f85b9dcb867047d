//! Resumable forward sessions end to end (`docs/protocol.md`, section 8): downloads
//! and uploads through `sesame forward` go on, byte for byte, through cuts of the
//! agent's link, cuts of the client's stream (a proxy on loopback resets their TCP
//! connections and refuses new ones for a while) and a `kill -9` of the relay; a
//! connection made while the agent is away is carried once it is back.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tests::transfer::{server, Transfer};
use tests::{wait_until, Env};

const DOWN: usize = 12 << 20;
const UP: usize = 4 << 20;

#[test]
fn forwarded_transfers_go_on_through_cuts_of_the_agents_link() {
    let (env, proxy) = Env::with_agent_behind_proxy(&[]);
    let dest = server("127.0.0.1");
    let fwd = env.forward(&[&format!("0:127.0.0.1:{dest}")]);
    let port = fwd.ports[0];
    let t = Transfer::start(port, DOWN, UP, 1);
    let mut late = None;
    for (round, (cut_at, down_for)) in [(2 << 20, 1500), (6 << 20, 2500)].into_iter().enumerate() {
        t.wait_for(cut_at);
        let before = proxy.accepted.load(Ordering::Relaxed);
        proxy.cut(true);
        if round == 1 {
            // A connection made while the agent is away: carried once it is back.
            late = Some(Transfer::start(port, 1 << 20, 256 << 10, 7));
        }
        std::thread::sleep(Duration::from_millis(down_for));
        proxy.restore();
        wait_until("the agent to come back", 30, || {
            proxy.accepted.load(Ordering::Relaxed) > before
        });
    }
    t.check(UP);
    late.expect("started").check(256 << 10);
    let relay_log = env.relay.proc.log();
    assert!(
        relay_log.matches("agent offline").count() >= 2,
        "the link was not cut twice: {relay_log}"
    );
    // Still the one session, and it still forwards.
    assert_eq!(env.sessions(), 1);
    let again = Transfer::start(port, 100_000, 1000, 9);
    again.check(1000);
    eprintln!("the client printed: {}", fwd.proc.log());
}

#[test]
fn forwarded_transfers_go_on_through_cuts_of_the_clients_stream() {
    let env = Env::start();
    let proxy = tests::proxy::CutProxy::start(env.relay.port);
    let dest = server("127.0.0.1");
    let fwd = env.forward_via(proxy.port, &[&format!("0:127.0.0.1:{dest}")]);
    let t = Transfer::start(fwd.ports[0], DOWN, UP, 2);
    for (cut_at, down_for) in [(2 << 20, 1500), (6 << 20, 2000)] {
        t.wait_for(cut_at);
        let before = proxy.accepted.load(Ordering::Relaxed);
        proxy.cut(true);
        std::thread::sleep(Duration::from_millis(down_for));
        proxy.restore();
        wait_until("the client to come back", 30, || {
            proxy.accepted.load(Ordering::Relaxed) > before
        });
    }
    t.check(UP);
    let log = fwd.proc.log();
    assert!(log.contains("reconnect"), "no status line: {log}");
}

#[test]
fn a_forwarded_transfer_goes_on_after_the_relay_is_killed_and_restarted() {
    let mut env = Env::start();
    let dest = server("127.0.0.1");
    let fwd = env.forward(&[&format!("0:127.0.0.1:{dest}")]);
    let started = std::time::Instant::now();
    let t = Transfer::start(fwd.ports[0], DOWN, UP, 3);
    t.wait_for(3 << 20);
    let before_restart = started.elapsed().as_millis() as u64;
    env.restart_relay();
    t.check(UP);
    let log = env.relay.proc.log();
    assert!(
        log.contains("1 resumable session(s) taken up again"),
        "{log}"
    );
    // Its audit row counts each byte once, those before the restart included:
    // what the agent and the client had received count from the first byte.
    let to_dest = format!("{DOWN} {UP} 3\n").len() + UP;
    let from_dest = DOWN + format!("upload ok {UP}\n").len();
    let mut close = None;
    wait_until("the connection's forward.close row", 10, || {
        let out = env.run(&["audit", "export", "--since", "1h"], b"");
        close = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["event"] == "forward.close");
        close.is_some()
    });
    let detail = &close.expect("found")["detail"];
    assert_eq!(
        (&detail["bytes_to_dest"], &detail["bytes_from_dest"]),
        (&to_dest.into(), &from_dest.into()),
        "{detail}"
    );
    // With its destination, from its `forward.open` row, and its whole life.
    assert_eq!(
        (&detail["host"], &detail["port"]),
        (&"127.0.0.1".into(), &dest.into()),
        "{detail}"
    );
    assert!(
        detail["duration_ms"].as_u64() >= Some(before_restart),
        "{detail}: it was open {before_restart} ms before the restart"
    );
    // The session still forwards new connections after the restart.
    let again = Transfer::start(fwd.ports[0], 100_000, 1000, 4);
    again.check(1000);
}
