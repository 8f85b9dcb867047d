//! Rate accuracy and the 1000-session scale run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_core::client::{Client, ClientEvent};
use agent_core::wire::{self, Bytes, Kind};
use futures_util::{SinkExt, StreamExt};
use tests::{admin, start_agent_with, Env};
use tokio_tungstenite::tungstenite::Message;

use crate::Row;

const RATE: f64 = 25_000.0;

pub fn rate() -> Vec<Row> {
    let env = Env::start_with_limits("[limits]\nrate = \"200kbit\"\n");
    let one = tests::paced_download(&env, 300_000, 50_000);
    let rates: Vec<f64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..20)
            .map(|_| s.spawn(|| tests::paced_download(&env, 300_000, 50_000)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let err = |r: f64| (r - RATE) / RATE * 100.0;
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let worst = rates
        .iter()
        .map(|r| err(*r))
        .fold(0.0f64, |a, e| if e.abs() > a.abs() { e } else { a });
    vec![
        Row::new("rate", "1 session at 200 kbit/s: achieved (B/s)", one),
        Row::new("rate", "1 session: error (%)", err(one)),
        Row::new("rate", "20 sessions at once: mean achieved (B/s)", mean),
        Row::new("rate", "20 sessions: worst error (%)", worst),
    ]
}

fn proc_field(pid: u32, name: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of a process.
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

/// One session of `cat /dev/zero` on `target`, counting what arrives while
/// `measuring`, until `done`. `opening` is a place among the sessions being opened,
/// given back once this one is open.
async fn session(
    relay: Arc<cli::client::Relay>,
    target: String,
    opening: tokio::sync::OwnedSemaphorePermit,
    counted: Arc<AtomicU64>,
    measuring: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let kind = Kind::Exec {
        argv: Bytes(b"cat\0/dev/zero\0"),
    };
    // No input is sent: its buffer holds nothing.
    let mut session: Client<1, [u8; 16]> = Client::new(cli::session::SID, cli::session::WINDOW);
    let mut ws = cli::session::open(&relay, (&target, None), kind, &mut session).await?;
    drop(opening);
    // It sends only credit and its `Close`: the smallest buffer a frame may need.
    let mut out = vec![0u8; wire::MIN_MAX_FRAME as usize];
    while !done.load(Ordering::Relaxed) {
        let msg = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
        let Ok(Some(Ok(Message::Binary(b)))) = msg else {
            continue;
        };
        match session
            .handle_frame(&b)
            .map_err(cli::session::protocol_error)?
        {
            Some(ClientEvent::Data { data, .. }) => {
                let n = data.len();
                if measuring.load(Ordering::Relaxed) {
                    counted.fetch_add(n as u64, Ordering::Relaxed);
                }
                session.consumed(0, n);
            }
            Some(ClientEvent::Closed { reason, .. }) => anyhow::bail!("session ended: {reason}"),
            _ => {}
        }
        while let Some(n) = session
            .poll_transmit(&mut out)
            .map_err(|e| anyhow::anyhow!("{e}"))?
        {
            ws.send(Message::Binary(out[..n].to_vec().into())).await?;
        }
    }
    session.close("bench done");
    if let Ok(Some(n)) = session.poll_transmit(&mut out) {
        let _ = ws.send(Message::Binary(out[..n].to_vec().into())).await;
    }
    let _ = ws.close(None).await;
    Ok(())
}

fn env_dir_file(text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("sesame-scale-{}.toml", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

/// Bytes of the files in `dir` now (a recording being written grows in place).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `agents` x `per_agent` sessions of `cat /dev/zero` at 200 kbit/s for `secs`,
/// the relay's recordings in `mode` (`strict`, the default, or `off`); the rows
/// are named `label`.
pub fn scale(
    label: &'static str,
    agents: usize,
    per_agent: usize,
    secs: u64,
    mode: &str,
) -> Vec<Row> {
    // A thousand TLS connections on each side need descriptors.
    let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let lim = rustix::process::Rlimit {
        current: now.maximum,
        maximum: now.maximum,
    };
    if rustix::process::setrlimit(rustix::process::Resource::Nofile, lim).is_err() {
        eprintln!(
            "warning: could not raise the descriptor limit to {:?}",
            now.maximum
        );
    }
    let total = agents * per_agent;
    // The agent that ships is the static one; fall back to the release build.
    let static_agent = tests::bin_dir()
        .parent()
        .map(|t| t.join("x86_64-unknown-linux-musl/agent/sesame-agent"))
        .filter(|p| p.exists());
    let agent_bin = static_agent
        .clone()
        .unwrap_or_else(|| tests::bin("sesame-agent"));
    eprintln!("scale: agents run {}", agent_bin.display());
    // Every agent and client comes from 127.0.0.1 here: lift the per-address cap on
    // connections still authenticating (50 opening at once, two connections each).
    let limits = format!(
        "[limits]\nrate = \"200kbit\"\nmax_sessions = {total}\nidle_timeout = \"none\"\n\
         [connections]\nmax_unauthenticated_per_ip = 512\n[recordings]\nmode = \"{mode}\"\n"
    );
    let cfg = env_dir_file(&limits);
    let env = Env::start_custom(
        &["--config", cfg.to_str().unwrap()],
        std::slice::from_ref(&agent_bin),
    );
    let mut others = Vec::new();
    for i in 1..agents {
        let name = format!("scale-{i:02}");
        let code = admin(&env.data(), &["agent", "add", &name]);
        others.push(start_agent_with(
            std::slice::from_ref(&agent_bin),
            &env.dir.0,
            &name,
            env.relay.port,
            Some(&code),
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.targets().iter().filter(|t| t["online"] == true).count() < agents {
        assert!(Instant::now() < deadline, "agents did not all come online");
        std::thread::sleep(Duration::from_millis(200));
    }
    let targets: Vec<String> = std::iter::once("gw-01".to_string())
        .chain((1..agents).map(|i| format!("scale-{i:02}")))
        .collect();
    let relay_pid = env.relay.proc.child.id();
    let agent_pid = env.agent.child.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let counted: Vec<Arc<AtomicU64>> = (0..total).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let recordings = env.data().join("recordings");
    let (cpu, peak, agent_rss, opened, recorded) = rt.block_on(async {
        let relay = Arc::new(env.client());
        // At most 50 sessions being opened at once (the permit was once dropped before
        // the open began, so all 1000 dialled at once).
        let gate = Arc::new(tokio::sync::Semaphore::new(50));
        let mut tasks = Vec::new();
        for (i, c) in counted.iter().enumerate() {
            let (relay, c, m, d, gate) = (
                relay.clone(),
                c.clone(),
                measuring.clone(),
                done.clone(),
                gate.clone(),
            );
            let target = targets[i / per_agent].clone();
            tasks.push(tokio::spawn(async move {
                let permit = gate.acquire_owned().await.unwrap();
                session(relay, target, permit, c, m, d).await
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while env
            .targets()
            .iter()
            .map(|t| t["sessions"].as_u64().unwrap_or(0))
            .sum::<u64>()
            < total as u64
        {
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let opened: u64 = env
            .targets()
            .iter()
            .map(|t| t["sessions"].as_u64().unwrap_or(0))
            .sum();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu0 = cpu_secs(relay_pid);
        let disk0 = dir_bytes(&recordings);
        measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(secs / 2)).await;
        let agent_rss = proc_field(agent_pid, "VmRSS:");
        tokio::time::sleep(Duration::from_secs(secs - secs / 2)).await;
        measuring.store(false, Ordering::Relaxed);
        let cpu = cpu_secs(relay_pid) - cpu0;
        let recorded = dir_bytes(&recordings).saturating_sub(disk0);
        let peak = proc_field(relay_pid, "VmHWM:");
        done.store(true, Ordering::Relaxed);
        // Sessions that failed say why (the first of each kind), so that a count
        // short of the target is explained.
        let mut failures = std::collections::BTreeMap::<String, usize>::new();
        for t in tasks {
            if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(10), t).await {
                *failures.entry(format!("{e:#}")).or_default() += 1;
            }
        }
        for (e, n) in failures {
            eprintln!("scale: {n} session(s) failed: {e}");
        }
        (cpu, peak, agent_rss, opened, recorded)
    });
    let kept = counted
        .iter()
        .filter(|c| {
            let r = c.load(Ordering::Relaxed) as f64 / secs as f64;
            (r - RATE).abs() / RATE <= 0.05
        })
        .count();
    drop(others);
    let mut rows = vec![
        Row::new(
            label,
            &format!("sessions open ({agents} agents x {per_agent}), recordings {mode}"),
            opened as f64,
        ),
        Row::new(
            label,
            &format!("relay CPU over {secs} s at full rate (CPU s)"),
            cpu,
        ),
        Row::new(label, "relay CPU (share of one core)", cpu / secs as f64),
        Row::new(label, "relay peak RSS (MiB)", peak as f64 / 1024.0),
        Row::new(
            label,
            if static_agent.is_some() {
                "static agent RSS with 20 sessions at full rate (MiB)"
            } else {
                "release (glibc) agent RSS with 20 sessions at full rate (MiB)"
            },
            agent_rss as f64 / 1024.0,
        ),
        Row::new(label, "sessions within 5% of 200 kbit/s", kept as f64),
    ];
    if mode != "off" {
        rows.push(Row::new(
            label,
            "recordings written while live (MB/s)",
            recorded as f64 / secs as f64 / 1e6,
        ));
    }
    rows
}
