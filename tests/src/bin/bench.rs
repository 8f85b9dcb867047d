//! `cargo run --release -p tests --bin bench -- [SCENARIO]... [--json]`
//!
//! Starts the real release binaries on loopback and measures:
//! - `setup`: wall time of `sesame exec TARGET -- true`, median and p90 of 20 runs;
//! - `idle`: resident memory of the relay and the agent, idle with one agent online;
//! - `sizes`: sizes of the release binaries and of the static agents;
//! - `agent20`: RSS of the static x86_64 agent (`tests/build-static.sh`) idle and
//!   with 20 sessions open.
//!
//! With no scenario, runs all of them. Prints a markdown table (or JSON).

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::{bin, Env};

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn setup(env: &Env) -> Vec<(String, Value)> {
    let run = || {
        let t = Instant::now();
        let st = env
            .sesame()
            .args(["exec", "gw-01", "--", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run sesame");
        assert!(st.success(), "sesame exec failed");
        t.elapsed()
    };
    run();
    run();
    let mut times: Vec<Duration> = (0..20).map(|_| run()).collect();
    times.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    vec![
        (
            "setup: `sesame exec gw-01 -- true`, median of 20 (ms)".into(),
            json!(ms(times[10])),
        ),
        ("setup: p90 of 20 (ms)".into(), json!(ms(times[18]))),
    ]
}

fn idle(env: &Env) -> Vec<(String, Value)> {
    std::thread::sleep(Duration::from_secs(1));
    let (relay, relay_peak) = rss_kib(env.relay.proc.child.id());
    let (agent, agent_peak) = rss_kib(env.agent.child.id());
    vec![
        ("idle RSS: relay (KiB)".into(), json!(relay)),
        ("peak RSS so far: relay (KiB)".into(), json!(relay_peak)),
        ("idle RSS: agent (KiB)".into(), json!(agent)),
        ("peak RSS so far: agent (KiB)".into(), json!(agent_peak)),
    ]
}

fn sizes() -> Vec<(String, Value)> {
    let mut rows: Vec<(String, Value)> = ["sesame-relay", "sesame-agent", "sesame"]
        .iter()
        .map(|b| {
            let len = std::fs::metadata(bin(b)).map(|m| m.len()).unwrap_or(0);
            (format!("binary size: {b} (KiB)"), json!(len / 1024))
        })
        .collect();
    for triple in ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"] {
        let p = tests::bin_dir()
            .parent()
            .unwrap()
            .join(triple)
            .join("agent/sesame-agent");
        if let Ok(m) = std::fs::metadata(&p) {
            rows.push((
                format!("static sesame-agent {triple} (bytes)"),
                json!(m.len()),
            ));
        }
    }
    rows
}

fn agent20() -> Vec<(String, Value)> {
    let env = Env::start_custom(&[], &[tests::static_agent("x86_64-unknown-linux-musl")]);
    std::thread::sleep(Duration::from_secs(1));
    let pid = env.agent.child.id();
    let (idle, _) = rss_kib(pid);
    let mut clients: Vec<_> = (0..20)
        .map(|_| {
            env.sesame()
                .args(["exec", "gw-01", "--", "sleep", "30"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.sessions() < 20 {
        assert!(Instant::now() < deadline, "20 sessions never opened");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (busy, peak) = rss_kib(pid);
    for c in clients.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    vec![
        ("static x86_64 agent: idle RSS (KiB)".into(), json!(idle)),
        (
            "static x86_64 agent: RSS with 20 sessions (KiB)".into(),
            json!(busy),
        ),
        ("static x86_64 agent: peak RSS (KiB)".into(), json!(peak)),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let as_json = args.iter().any(|a| a == "--json");
    let mut wanted: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    if wanted.is_empty() {
        wanted = vec!["setup", "idle", "sizes", "agent20"];
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: bench built without --release; numbers are not representative");
    }
    let needs_env = wanted.iter().any(|w| *w == "setup" || *w == "idle");
    let env = needs_env.then(Env::start);
    let mut rows = Vec::new();
    for w in &wanted {
        match *w {
            "setup" => rows.extend(setup(env.as_ref().unwrap())),
            "idle" => rows.extend(idle(env.as_ref().unwrap())),
            "sizes" => rows.extend(sizes()),
            "agent20" => rows.extend(agent20()),
            other => {
                eprintln!("error: unknown scenario '{other}' (use setup, idle, sizes, agent20)");
                std::process::exit(2);
            }
        }
    }
    if as_json {
        let map: serde_json::Map<String, Value> = rows.into_iter().collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Object(map)).unwrap()
        );
    } else {
        println!("| measurement | value |\n|---|---:|");
        for (k, v) in rows {
            println!("| {k} | {v} |");
        }
    }
}
