//! `cargo run --release -p tests --bin bench -- [SCENARIO]... [--json]`
//!
//! Starts the real release binaries on loopback and measures (all when none is named):
//! - `rate`: achieved rate of 1 and of 20 concurrent sessions at 200 kbit/s;
//! - `throughput`: forwarded TCP, limit off, target-to-client and client-to-target,
//!   one stream and 4 in parallel: Sesame vs direct loopback vs OpenSSH `ssh -L`
//!   through an sshd the bench starts (needs root); median of 5 runs, and the CPU
//!   each tunnel's processes used;
//! - `latency`: 1-byte echo through a shell's PTY in raw mode, Sesame vs `ssh -tt`;
//! - `setup`: `sesame exec TARGET -- true` vs `ssh host true`, median of 20;
//! - `scale`: 1000 sessions over 50 agents at full rate for 30 s: relay CPU and peak RSS,
//!   agent RSS at 20 sessions, sessions that kept their rate (recordings on, the
//!   relay's default);
//! - `recordings`: the `scale` load with recordings off, then on: relay CPU and RSS,
//!   and what the recordings write while live;
//! - `idle`: relay and agent RSS, idle; `sizes`: binary sizes;
//! - `agent20`: static x86_64 agent RSS idle and with 20 sessions;
//! - `embedded`: the QEMU mps2-an386 firmware: boot to online, `exec uptime` median
//!   of 20, flash, static RAM and stack high-water (after TLS and sessions), and a
//!   forwarded download through it, resumable and not;
//! - `authz`: Cedar decisions with 100 policies and 1000 agents (p50, p99, max, per
//!   second; a whole listing), and session setup with and without them;
//! - `resume`: resumable sessions (issue 14): restore-to-first-byte after 20 cuts of
//!   1 s of the agent's link and of the CLI's stream (p50, p95), agent and relay RSS
//!   per session of 20 blocked execs with the agent's link up and down, and exec
//!   throughput with resume on vs `resume_window = "none"`.
//!
//! Prints a markdown table (or JSON with `--json`).

mod authz;
mod compare;
mod load;
mod resume;

use std::time::Duration;

use serde_json::{json, Value};
use tests::{bin, Env};

/// One measurement.
pub struct Row {
    scenario: &'static str,
    what: String,
    value: f64,
}

impl Row {
    fn new(scenario: &'static str, what: &str, value: f64) -> Row {
        Row {
            scenario,
            what: what.to_string(),
            value,
        }
    }
}

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

fn idle(env: &Env) -> Vec<Row> {
    std::thread::sleep(Duration::from_secs(1));
    let (relay, _) = rss_kib(env.relay.proc.child.id());
    let (agent, _) = rss_kib(env.agent.child.id());
    vec![
        Row::new("idle", "relay RSS (MiB)", relay as f64 / 1024.0),
        Row::new("idle", "agent RSS (MiB)", agent as f64 / 1024.0),
    ]
}

fn sizes() -> Vec<Row> {
    let mut rows: Vec<Row> = ["sesame-relay", "sesame-agent", "sesame"]
        .iter()
        .map(|b| {
            let len = std::fs::metadata(bin(b)).map(|m| m.len()).unwrap_or(0);
            Row::new(
                "sizes",
                &format!("{b} release (MiB)"),
                len as f64 / 1048576.0,
            )
        })
        .collect();
    for triple in ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"] {
        let p = tests::bin_dir()
            .parent()
            .unwrap()
            .join(triple)
            .join("agent/sesame-agent");
        if let Ok(m) = std::fs::metadata(&p) {
            rows.push(Row::new(
                "sizes",
                &format!("static sesame-agent {triple} (MiB)"),
                m.len() as f64 / 1048576.0,
            ));
        }
    }
    rows
}

fn agent20() -> Vec<Row> {
    let env = Env::start_custom(&[], &[tests::static_agent("x86_64-unknown-linux-musl")]);
    std::thread::sleep(Duration::from_secs(1));
    let pid = env.agent.child.id();
    let (idle, _) = rss_kib(pid);
    let mut clients = env.hold_sessions(20, &["sleep", "30"]);
    std::thread::sleep(Duration::from_millis(500));
    let (busy, _) = rss_kib(pid);
    for c in clients.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    vec![
        Row::new(
            "agent20",
            "static x86_64 agent RSS idle (MiB)",
            idle as f64 / 1024.0,
        ),
        Row::new(
            "agent20",
            "static x86_64 agent RSS, 20 sessions (MiB)",
            busy as f64 / 1024.0,
        ),
    ]
}

fn embedded() -> Vec<Row> {
    let t = std::time::Instant::now();
    let env = Env::start_device();
    let online = t.elapsed().as_secs_f64();
    let exec = compare::median_ms(|| {
        let t = std::time::Instant::now();
        let out = env.run(&["exec", "dev-1", "--", "uptime"], b"");
        assert!(out.status.success(), "{:?}", tests::text(&out));
        t.elapsed()
    });
    // A shell session too, so the high-water mark covers both kinds.
    let shell = env.run(&["shell", "dev-1"], b"help\rexit\r");
    assert!(shell.status.success(), "{:?}", tests::text(&shell));
    let board = tests::text(&env.run(&["exec", "dev-1", "--", "board"], b"")).0;
    let field = |after: &str| -> f64 {
        board
            .split(after)
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|v| v.trim_end_matches([',', ';']).parse().ok())
            .unwrap_or_else(|| panic!("no {after:?} in {board:?}"))
    };
    let (flash, statics, stack) = (field("flash "), field("bytes: "), field("static, "));
    vec![
        Row::new(
            "embedded",
            "QEMU boot to online, incl. DHCP and TLS (s)",
            online,
        ),
        Row::new(
            "embedded",
            "`sesame exec dev-1 -- uptime`, median of 20 (ms)",
            exec,
        ),
        Row::new(
            "embedded",
            "firmware flash (KiB, budget 256)",
            flash / 1024.0,
        ),
        Row::new("embedded", "static RAM (KiB)", statics / 1024.0),
        Row::new("embedded", "stack high-water (KiB)", stack / 1024.0),
        Row::new(
            "embedded",
            "static RAM + stack high-water (KiB, budget 128)",
            (statics + stack) / 1024.0,
        ),
        Row::new(
            "embedded",
            "forwarded download through the device, resumable (KB/s, median of 3 x 1 MiB)",
            device_download(true),
        ),
        Row::new(
            "embedded",
            "forwarded download through the device, `resume_window = \"none\"` (KB/s)",
            device_download(false),
        ),
    ]
}

/// A download of 1 MiB from a server on this host through `sesame forward` and
/// the device (a slirp guestfwd), resumable or not: KB/s, median of 3.
fn device_download(resume: bool) -> f64 {
    const LEN: usize = 1024 << 10;
    let http = tests::http::server(|_| tests::http::body_of(1, LEN));
    let dir = tests::TempDir::new("bench-device");
    let cfg = dir.0.join("relay.toml");
    let window = if resume { "10m" } else { "none" };
    let toml = format!("[limits]\nrate = \"unlimited\"\nresume_window = \"{window}\"\n");
    std::fs::write(&cfg, toml).unwrap();
    let flags = ["--config", cfg.to_str().unwrap()];
    let env = Env::start_launch(&flags, "dev-1", |dir, port, code| {
        let extra = [
            "--guestfwd".to_string(),
            format!("10.0.2.101:80=127.0.0.1:{http}"),
            "--allow-dest".into(),
            "10.0.2.101:80".into(),
        ];
        tests::boot_device_with(dir, port, code, &dir.join("relay/tls/ca.pem"), &extra)
    });
    let fwd = env.forward(&["0:10.0.2.101:80"]);
    let mut rates: Vec<f64> = (0..3)
        .map(|_| {
            let t = std::time::Instant::now();
            let got = tests::http::get(fwd.ports[0], "/1", Duration::from_secs(60)).unwrap();
            assert_eq!(got.len(), LEN, "the download was cut short");
            LEN as f64 / 1000.0 / t.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[1]
}

/// glibc (2.36 here) copies more than 8 KiB with `rep movsb`, which on this
/// machine's AMD EPYC (Zen 4) is 15 times slower (3.5 against 52 GB/s) when the
/// destination lies 1 to 15 bytes past the source within a cache line: a quarter
/// of all placements, and fixed for a pair of buffers that a process reuses. So
/// each process the bench starts ran fast or slow at random, and a throughput
/// ratio between two runs of the same binaries swung by a third. The processes
/// the bench starts (they inherit this) copy with glibc's vector loop instead,
/// which is as fast at every placement; a `GLIBC_TUNABLES` already set is kept.
/// The static musl agent copies with `rep movsq` after aligning, and is not
/// affected.
const COPY_TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold=4194304";

fn main() {
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        // Before any thread exists.
        std::env::set_var("GLIBC_TUNABLES", COPY_TUNABLE);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let as_json = args.iter().any(|a| a == "--json");
    let all = [
        "rate",
        "throughput",
        "latency",
        "setup",
        "scale",
        "recordings",
        "idle",
        "sizes",
        "agent20",
        "embedded",
        "authz",
        "resume",
        "resume-throughput",
        "resume-forward",
        "resume-hold",
    ];
    let mut wanted: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    if wanted.is_empty() {
        // (Parts of `resume`, or ten minutes long: asked for by name.)
        wanted = all
            .iter()
            .copied()
            .filter(|w| !w.starts_with("resume-"))
            .collect();
    }
    if let Some(bad) = wanted.iter().find(|w| !all.contains(w)) {
        eprintln!("error: unknown scenario '{bad}' (use {})", all.join(", "));
        std::process::exit(2);
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: bench built without --release; numbers are not representative");
    }
    let needs_ssh = wanted
        .iter()
        .any(|w| matches!(*w, "throughput" | "latency" | "setup"));
    let ssh = (needs_ssh && compare::ssh_available()).then(compare::Ssh::start);
    if needs_ssh && ssh.is_none() {
        eprintln!("warning: OpenSSH comparisons need root and openssh-server; skipping them");
    }
    let needs_env = wanted
        .iter()
        .any(|w| matches!(*w, "throughput" | "latency" | "setup" | "idle"));
    let env = needs_env.then(Env::start);
    let mut rows = Vec::new();
    for w in &wanted {
        eprintln!("running {w}...");
        match *w {
            "rate" => rows.extend(load::rate()),
            "throughput" => {
                if let Some(ssh) = &ssh {
                    rows.extend(compare::throughput(env.as_ref().unwrap(), ssh))
                }
            }
            "latency" => {
                if let Some(ssh) = &ssh {
                    rows.extend(compare::latency(env.as_ref().unwrap(), ssh))
                }
            }
            "setup" => rows.extend(compare::setup(env.as_ref().unwrap(), ssh.as_ref())),
            "scale" => rows.extend(load::scale("scale", 50, 20, 30, "strict")),
            // The cost of recording: the same load, recordings off, then on.
            "recordings" => {
                rows.extend(load::scale("recordings", 50, 20, 30, "off"));
                rows.extend(load::scale("recordings", 50, 20, 30, "strict"));
            }
            "idle" => rows.extend(idle(env.as_ref().unwrap())),
            "sizes" => rows.extend(sizes()),
            "agent20" => rows.extend(agent20()),
            "embedded" => rows.extend(embedded()),
            "authz" => rows.extend(authz::run()),
            "resume" => rows.extend(resume::run()),
            "resume-throughput" => rows.extend(resume::throughput()),
            "resume-forward" => rows.extend(resume::forward()),
            "resume-hold" => rows.extend(resume::hold()),
            _ => unreachable!("checked above"),
        }
    }
    if as_json {
        let v: Vec<Value> = rows
            .iter()
            .map(|r| json!({"scenario": r.scenario, "measurement": r.what, "value": r.value}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap());
    } else {
        println!("| scenario | measurement | value |\n|---|---|---:|");
        for r in rows {
            let v = if r.value.abs() >= 100.0 {
                format!("{:.0}", r.value)
            } else {
                format!("{:.2}", r.value)
            };
            println!("| {} | {} | {v} |", r.scenario, r.what);
        }
    }
}
