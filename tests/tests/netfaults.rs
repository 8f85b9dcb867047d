//! Network faults made for real (`docs/protocol.md`, section 8), on this machine
//! only: the agent runs in a network namespace of its own, joined to the host by a
//! veth pair with addresses that exist only on it (and shaped with `tbf` where a
//! test says); its link is taken down, and its
//! TCP connections are reset with iptables, in the middle of a transfer (an exec's
//! output, or a download and an upload through `sesame forward`). The receiver's
//! SHA-256 matches the sender's.
//!
//! Needs root, `ip` and `iptables` (tests/run-all.sh installs them).

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tests::proxy::CutProxy;
use tests::{start_agent_at, Env};

/// A namespace and its veth pair, removed on drop.
struct Netns {
    name: String,
    /// The host's end of the pair, and the addresses on each end.
    host_if: String,
    host_ip: String,
    /// The namespace's end of the pair.
    ns_if: String,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn new(tag: u8) -> Netns {
        let id = std::process::id() % 10_000;
        let name = format!("sesame-{tag}-{id}");
        let (host_if, ns_if) = (format!("vsh{tag}x{id}"), format!("vsn{tag}x{id}"));
        let net = 100 + u32::from(tag);
        let (host_ip, ns_ip) = (format!("10.231.{net}.1"), format!("10.231.{net}.2"));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        sh(&["ip", "link", "set", &ns_if, "netns", &name]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &host_if,
        ]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        let exec = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", name.as_str()];
            all.extend_from_slice(args);
            sh(&all);
        };
        exec(&["ip", "addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if]);
        exec(&["ip", "link", "set", &ns_if, "up"]);
        exec(&["ip", "link", "set", "lo", "up"]);
        Netns {
            name,
            host_if,
            host_ip,
            ns_if,
        }
    }

    /// Shape the link both ways with a token bucket (`tc` `tbf`): `rate` (as `tc`
    /// says it, `30mbit`), with a queue of 100 ms at most.
    fn shape(&self, rate: &str) {
        let tbf = |dev: &str| {
            vec![
                "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "64kb",
                "latency", "100ms",
            ]
            .into_iter()
            .map(String::from)
            .collect::<Vec<String>>()
        };
        let host: Vec<String> = tbf(&self.host_if);
        sh(&host.iter().map(String::as_str).collect::<Vec<_>>());
        let ns = tbf(&self.ns_if);
        let mut args = vec!["ip", "netns", "exec", self.name.as_str()];
        args.extend(ns.iter().map(String::as_str));
        sh(&args);
    }

    /// Run `args` in the namespace.
    fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", self.name.as_str()];
        all.extend_from_slice(args);
        sh(&all);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A relay, and its agent in `ns`, reaching it through a forwarder on the host's
/// end of the veth pair. The relay paces sessions at 40 Mbit/s, so that a 47 MB
/// transfer lasts about 10 s.
fn setup(ns: &Netns) -> (Env, CutProxy) {
    let cfg = std::env::temp_dir().join(format!("sesame-netfaults-{}.toml", ns.name));
    std::fs::write(&cfg, "[limits]\nrate = \"40mbit\"\n").unwrap();
    let mut proxy = None;
    let flags = [
        "--config",
        cfg.to_str().unwrap(),
        "--name",
        ns.host_ip.as_str(),
    ];
    let env = Env::start_launch(&flags, "gw-01", |dir, port, code| {
        let p = CutProxy::start_on(&ns.host_ip, port);
        let relay_at = format!("wss://{}:{}", ns.host_ip, p.port);
        let program = [
            "ip".into(),
            "netns".into(),
            "exec".into(),
            ns.name.clone().into(),
            tests::bin("sesame-agent"),
        ];
        let agent = start_agent_at(&program, dir, "agent", &relay_at, Some(code));
        proxy = Some(p);
        agent
    });
    let _ = std::fs::remove_file(&cfg);
    (env, proxy.expect("the agent was started"))
}

/// What the agent sends: 47 MB of numbered lines.
const BIG: &str = "seq 1 6000000";

/// Run the big exec, calling `fault` once a tenth of it has arrived; returns what
/// arrived, the expected bytes' hash, and the CLI's stderr.
fn transfer_with(env: &Env, fault: impl FnOnce()) -> (Vec<u8>, String, String) {
    let expected = Command::new("sh")
        .args(["-c", BIG])
        .output()
        .unwrap()
        .stdout;
    let mut child = env.spawn_exec(&["sh", "-c", BIG]);
    let (got, reader) = tests::read_counting(child.stdout.take().unwrap());
    tests::wait_until("the transfer to start", 60, || {
        got.load(Ordering::Relaxed) >= expected.len() / 10
    });
    assert!(
        got.load(Ordering::Relaxed) < expected.len() / 2,
        "the transfer went too fast to cut in its middle"
    );
    fault();
    let (status, out, err) = tests::finish_child(&mut child, reader);
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    (out, tests::sha256(&expected), err)
}

#[test]
fn an_exec_transfer_survives_the_agents_link_down_for_10_s() {
    let ns = Netns::new(1);
    let (env, _proxy) = setup(&ns);
    let (out, expected, err) = transfer_with(&env, || link_down_10_s(&ns));
    assert_eq!(tests::sha256(&out), expected, "stderr: {err}");
}

#[test]
fn an_exec_transfer_survives_the_agents_connections_reset() {
    let ns = Netns::new(2);
    let (env, proxy) = setup(&ns);
    let before = proxy.accepted.load(Ordering::Relaxed);
    let (out, expected, err) = transfer_with(&env, || resets_for_3_s(&ns, proxy.port));
    assert_eq!(tests::sha256(&out), expected, "stderr: {err}");
    assert!(
        proxy.accepted.load(Ordering::Relaxed) > before,
        "the agent's connection was not cut"
    );
    assert!(err.contains("unreachable"), "no status line: {err}");
}

/// Take the agent's link down for 10 s.
fn link_down_10_s(ns: &Netns) {
    sh(&["ip", "link", "set", &ns.host_if, "down"]);
    std::thread::sleep(Duration::from_secs(10));
    sh(&["ip", "link", "set", &ns.host_if, "up"]);
}

/// Reset every TCP connection the agent makes to the relay (the forwarder at
/// `port` on the host's end), for 3 s.
fn resets_for_3_s(ns: &Netns, port: u16) {
    // Every packet the agent sends to the relay is answered with a reset: its
    // connection dies, and so do its attempts to come back.
    let port = port.to_string();
    let rule = [
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        &ns.host_ip,
        "--dport",
        &port,
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ];
    let mut add = vec!["iptables", "-A"];
    add.extend_from_slice(&rule);
    ns.exec(&add);
    std::thread::sleep(Duration::from_secs(3));
    let mut del = vec!["iptables", "-D"];
    del.extend_from_slice(&rule);
    ns.exec(&del);
}

/// A 40 MB download (and a 4 MB upload) through `sesame forward` from a server on
/// the host's end of the veth pair, reached by the agent in `ns`; `fault` once a
/// tenth of it has come. The SHA-256 of what came matches what was sent.
fn forwarded_with(ns: &Netns, env: &Env, fault: impl FnOnce()) {
    const DOWN: usize = 40 << 20;
    const UP: usize = 4 << 20;
    let dest = tests::transfer::server(&ns.host_ip);
    let fwd = env.forward(&[&format!("0:{}:{dest}", ns.host_ip)]);
    let t = tests::transfer::Transfer::start(fwd.ports[0], DOWN, UP, 11);
    t.wait_for(DOWN / 10);
    assert!(
        t.received() < DOWN / 2,
        "the transfer went too fast to cut in its middle"
    );
    fault();
    t.check(UP);
    eprintln!("the client printed: {}", fwd.proc.log());
}

#[test]
fn a_forwarded_download_survives_the_agents_link_down_for_10_s() {
    let ns = Netns::new(3);
    // A 30 Mbit/s link (the relay paces at 40), not a loopback's speed.
    ns.shape("30mbit");
    let (env, _proxy) = setup(&ns);
    forwarded_with(&ns, &env, || link_down_10_s(&ns));
}

#[test]
fn a_forwarded_download_survives_the_agents_connections_reset() {
    let ns = Netns::new(4);
    let (env, proxy) = setup(&ns);
    let before = proxy.accepted.load(Ordering::Relaxed);
    forwarded_with(&ns, &env, || resets_for_3_s(&ns, proxy.port));
    assert!(
        proxy.accepted.load(Ordering::Relaxed) > before,
        "the agent's connection was not cut"
    );
}
