//! Network faults made for real (`docs/protocol.md`, section 8), on this machine
//! only: the agent runs in a network namespace of its own, joined to the host by a
//! veth pair with addresses that exist only on it; its link is taken down, and its
//! TCP connections are reset with iptables, in the middle of a transfer. The
//! receiver's SHA-256 matches the sender's.
//!
//! Needs root, `ip` and `iptables` (tests/run-all.sh installs them).

use std::process::{Command, Stdio};
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
        }
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

fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

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
    (out, sha256(&expected), err)
}

#[test]
fn an_exec_transfer_survives_the_agents_link_down_for_10_s() {
    let ns = Netns::new(1);
    let (env, _proxy) = setup(&ns);
    let (out, expected, err) = transfer_with(&env, || {
        sh(&["ip", "link", "set", &ns.host_if, "down"]);
        std::thread::sleep(Duration::from_secs(10));
        sh(&["ip", "link", "set", &ns.host_if, "up"]);
    });
    assert_eq!(sha256(&out), expected, "stderr: {err}");
}

#[test]
fn an_exec_transfer_survives_the_agents_connections_reset() {
    let ns = Netns::new(2);
    let (env, proxy) = setup(&ns);
    let before = proxy.accepted.load(Ordering::Relaxed);
    let (out, expected, err) = transfer_with(&env, || {
        // Every packet the agent sends to the relay is answered with a reset, for
        // 3 s: its connection dies, and so do its attempts to come back.
        let rule = [
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            &ns.host_ip,
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
    });
    assert_eq!(sha256(&out), expected, "stderr: {err}");
    assert!(
        proxy.accepted.load(Ordering::Relaxed) > before,
        "the agent's connection was not cut"
    );
    assert!(err.contains("unreachable"), "no status line: {err}");
}
