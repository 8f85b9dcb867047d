//! `resume` (issue 14): how fast a resumable session goes on after a cut, what the
//! sessions held for resume cost in memory, and what resuming costs in throughput.
//!
//! - Cuts: an exec that prints a line every 20 ms; its link cut (the proxy resets the
//!   connections and refuses new ones) for 1 s, 20 times, timed from the moment the
//!   proxy lets connections in again to the first byte the client's stdout brings
//!   after it. Once with the agent's link through the proxy, once with the CLI's.
//!   The time includes the reconnecting side's backoff (its attempts while down
//!   failed), the TLS handshake, the resume exchange and the bytes sent again.
//! - Memory: 20 execs whose output is blocked (their clients do not read their
//!   stdout, so credit runs out and the agent's buffers fill), RSS of the agent and
//!   the relay above idle, per session, with the agent's link up and then down.
//! - Throughput: one exec's 200 MB of output, and a 200 MB download through
//!   `sesame forward`, through a relay that makes sessions resumable (the default
//!   window) and one with `resume_window = "none"` (also `bench resume-throughput`).
//! - `bench resume-hold` (not in `resume`: it takes ten minutes): 10 execs of
//!   `yes`, their clients reading, the agent's link down for 10 minutes
//!   (`SESAME_BENCH_HOLD_SECS`), RSS of the agent, the relay and the clients sampled
//!   every 30 s, and whether every session goes on after.

use std::io::Read;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tests::proxy::CutProxy;
use tests::Env;

use crate::{compare, rss_kib, Row};

/// Cuts timed per link.
const CUTS: usize = 20;
/// How long each cut keeps the link down.
const DOWN: Duration = Duration::from_secs(1);
/// A steady trickle: a line (about 20 bytes) every 20 ms or so.
const TRICKLE: &str = "while :; do date +%s%N; sleep 0.02; done";
/// Sessions held with their output blocked.
const HELD: usize = 20;
/// Their command: more output than every buffer on the way holds.
const HELD_CMD: &str = "yes | head -c 50000000";
/// Bytes of the throughput run.
const BYTES: usize = 200_000_000;
/// Throughput runs per relay configuration (a run's speed varies by about 5 %
/// with how the two cores are shared: the median of a few).
const RUNS: usize = 5;
/// The same for a forwarded download (shorter).
const FORWARD_RUNS: usize = 7;

pub fn run() -> Vec<Row> {
    let mut rows = cuts();
    rows.extend(memory());
    rows.extend(throughput());
    rows
}

/// Read `out` on a thread; when each read brought bytes, in order.
fn arrivals(mut out: ChildStdout) -> Arc<Mutex<Vec<Instant>>> {
    let times: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let t = times.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            t.lock().unwrap().push(Instant::now());
        }
    });
    times
}

/// The first arrival after `t`, waiting up to `limit` for one.
fn first_after(times: &Mutex<Vec<Instant>>, t: Instant, limit: Duration) -> Option<Instant> {
    let end = Instant::now() + limit;
    loop {
        {
            let v = times.lock().unwrap();
            let i = v.partition_point(|x| *x <= t);
            if i < v.len() {
                return Some(v[i]);
            }
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Arrivals in `(from, to]`.
fn between(times: &Mutex<Vec<Instant>>, from: Instant, to: Instant) -> usize {
    let v = times.lock().unwrap();
    v.partition_point(|x| *x <= to) - v.partition_point(|x| *x <= from)
}

/// SIGTERM (the CLI sends its `Close`), then SIGKILL if it has not left in 10 s.
fn end(mut child: Child) {
    let pid = rustix::process::Pid::from_child(&child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    wait_or_kill(&mut child, Duration::from_secs(10));
}

fn wait_or_kill(child: &mut Child, limit: Duration) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Run `sesame` (an exec of [`TRICKLE`]), then `CUTS` times cut `proxy` for `DOWN`
/// and time from letting it up again to the first byte at the client's stdout.
/// Sorted.
fn time_cuts(env: &Env, proxy: &CutProxy, mut sesame: Command, label: &str) -> Vec<Duration> {
    let log = env.dir.0.join(format!("bench-resume-{label}.log"));
    let mut child = sesame
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let times = arrivals(child.stdout.take().unwrap());
    let logs = || {
        format!(
            "client:\n{}\nagent:\n{}\nrelay:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            env.agent.log(),
            env.relay.proc.log()
        )
    };
    let start = Instant::now();
    if first_after(&times, start, Duration::from_secs(30)).is_none() {
        panic!("{label}: the trickle never started; {}", logs());
    }
    // Running steadily (and every backoff reset) before the first cut.
    std::thread::sleep(Duration::from_secs(1));
    let mut took = Vec::with_capacity(CUTS);
    let mut leaked = 0;
    for i in 0..CUTS {
        let before = proxy.accepted.load(Ordering::Relaxed);
        let cut = Instant::now();
        proxy.cut(true);
        std::thread::sleep(DOWN);
        let up = Instant::now();
        proxy.restore();
        let Some(first) = first_after(&times, up, Duration::from_secs(30)) else {
            panic!(
                "{label}: nothing came within 30 s of restoring cut {i}; {}",
                logs()
            );
        };
        took.push(first - up);
        // What was in flight at the cut may still land in its first moments; later
        // than that, bytes mean the cut did not stop the session's output.
        leaked += between(&times, cut + Duration::from_millis(300), up);
        if proxy.accepted.load(Ordering::Relaxed) == before {
            eprintln!("warning: {label}: output came after cut {i} without a new connection");
        }
        // Settle before the next cut: output flowing, the reconnecting side's
        // backoff started over.
        std::thread::sleep(Duration::from_secs(1));
    }
    if let Ok(Some(status)) = child.try_wait() {
        panic!(
            "{label}: the session ended ({status}) during the cuts; {}",
            logs()
        );
    }
    if leaked > 0 {
        eprintln!(
            "warning: {label}: {leaked} reads came while the link was down: the cuts did not stop the output"
        );
    }
    end(child);
    took.sort();
    took
}

fn cuts() -> Vec<Row> {
    let (env, agent_proxy) = Env::with_agent_behind_proxy(&[]);
    let mut direct = env.sesame();
    direct.args(["exec", "gw-01", "--", "sh", "-c", TRICKLE]);
    let agent = time_cuts(&env, &agent_proxy, direct, "agent-link");
    // The agent's link stays up from here; the CLI's goes through a proxy of its own.
    let client_proxy = CutProxy::start(env.relay.port);
    let mut via = env.sesame();
    via.env(
        "SESAME_RELAY",
        format!("https://127.0.0.1:{}", client_proxy.port),
    )
    .args(["exec", "gw-01", "--", "sh", "-c", TRICKLE]);
    let client = time_cuts(&env, &client_proxy, via, "client-stream");
    let mut rows = Vec::new();
    for (what, t) in [("agent's link", &agent), ("CLI's stream", &client)] {
        let name = |p: &str| {
            format!("{what} cut 1 s x{CUTS}: restore to first new byte at the client, {p} (ms)")
        };
        rows.extend([
            Row::new("resume", &name("p50"), compare::pct(t, 0.5)),
            Row::new("resume", &name("p95 (goal < 2000)"), compare::pct(t, 0.95)),
            Row::new("resume", &name("max"), compare::pct(t, 1.0)),
        ]);
    }
    rows
}

/// Agent and relay RSS (KiB) once neither has moved by more than 256 KiB in 1 s
/// (at most 20 s).
fn settled(agent: u32, relay: u32) -> (u64, u64) {
    let now = || (rss_kib(agent).0, rss_kib(relay).0);
    let mut last = now();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_secs(1));
        let next = now();
        if next.0.abs_diff(last.0) < 256 && next.1.abs_diff(last.1) < 256 {
            return next;
        }
        last = next;
    }
    eprintln!("warning: RSS still moving after 20 s: (agent, relay) {last:?} KiB");
    last
}

fn memory() -> Vec<Row> {
    let (env, proxy) = Env::with_agent_behind_proxy(&[]);
    let (agent, relay) = (env.agent.child.id(), env.relay.proc.child.id());
    // One session first, so that what any first session sets up counts as idle.
    let warm = env.run(&["exec", "gw-01", "--", "true"], b"");
    assert!(warm.status.success(), "{:?}", tests::text(&warm));
    let idle = settled(agent, relay);
    // Clients that never read their stdout: each session's output stops when the
    // pipe, the client's window and the buffers on the way (the agent's among them)
    // are full.
    let held: Vec<(Child, ChildStdout)> = (0..HELD)
        .map(|_| {
            let mut c = env
                .sesame()
                .args(["exec", "gw-01", "--", "sh", "-c", HELD_CMD])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let out = c.stdout.take().unwrap();
            (c, out)
        })
        .collect();
    env.wait_sessions(HELD as u64, 60);
    let up = settled(agent, relay);
    if env.sessions() != HELD as u64 {
        eprintln!("warning: some held sessions ended: their output was not blocked");
    }
    let before = proxy.accepted.load(Ordering::Relaxed);
    proxy.cut(true);
    std::thread::sleep(Duration::from_secs(2));
    let down = settled(agent, relay);
    proxy.restore();
    let end = Instant::now() + Duration::from_secs(30);
    while proxy.accepted.load(Ordering::Relaxed) == before && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    env.wait_online("gw-01", true);
    if env.sessions() != HELD as u64 {
        eprintln!(
            "warning: {} of {HELD} held sessions after the cut",
            env.sessions()
        );
    }
    // Closing their stdout ends the clients (a failed write), which close their sessions.
    for (mut c, out) in held {
        drop(out);
        wait_or_kill(&mut c, Duration::from_secs(10));
    }
    let per = |now: u64, idle: u64| (now as f64 - idle as f64) / 1024.0 / HELD as f64;
    let (a, r) = (
        "agent RSS (VmRSS of sesame-agent)",
        "relay RSS (VmRSS of sesame-relay)",
    );
    let blocked = format!("{HELD} execs of `{HELD_CMD}`, clients not reading");
    vec![
        Row::new(
            "resume",
            &format!("{a}, idle (MiB)"),
            idle.0 as f64 / 1024.0,
        ),
        Row::new(
            "resume",
            &format!("{a}: {blocked}, link up: per session above idle (MiB)"),
            per(up.0, idle.0),
        ),
        Row::new(
            "resume",
            &format!(
                "{a}: the same, agent's link down (held for resume): per session above idle (MiB)"
            ),
            per(down.0, idle.0),
        ),
        Row::new(
            "resume",
            &format!("{r}, idle (MiB)"),
            idle.1 as f64 / 1024.0,
        ),
        Row::new(
            "resume",
            &format!("{r}: {blocked}, link up: per session above idle (MiB)"),
            per(up.1, idle.1),
        ),
        Row::new(
            "resume",
            &format!(
                "{r}: the same, agent's link down (held for resume): per session above idle (MiB)"
            ),
            per(down.1, idle.1),
        ),
    ]
}

/// `sesame exec gw-01 -- head -c BYTES /dev/zero`, from spawning the CLI until it
/// exited with every byte read.
fn download(env: &Env, bytes: usize) -> Duration {
    let t = Instant::now();
    let mut child = env
        .sesame()
        .args([
            "exec",
            "gw-01",
            "--",
            "head",
            "-c",
            &bytes.to_string(),
            "/dev/zero",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let (mut total, mut buf) = (0usize, vec![0u8; 256 * 1024]);
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    let done = child.wait_with_output().unwrap();
    let took = t.elapsed();
    assert!(done.status.success(), "{:?}", tests::text(&done));
    assert_eq!(total, bytes, "download cut short: {:?}", tests::text(&done));
    took
}

/// A destination that sends each connection `bytes` zero bytes, as fast as it can.
fn zeros_server(bytes: usize) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in l.incoming().flatten() {
            std::thread::spawn(move || {
                let chunk = vec![0u8; 256 * 1024];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if std::io::Write::write_all(&mut conn, &chunk[..n]).is_err() {
                        return;
                    }
                    left -= n;
                }
            });
        }
    });
    port
}

/// One download of `bytes` through the forward listening at `port`, from connect
/// to the last byte.
fn forward_download(fwd: &tests::Forward, bytes: usize) -> Duration {
    let port = fwd.ports[0];
    let t = Instant::now();
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut total, mut buf) = (0usize, vec![0u8; 256 * 1024]);
    loop {
        let n = c.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(
        total,
        bytes,
        "forwarded download cut short: {}",
        fwd.proc.log()
    );
    t.elapsed()
}

/// Throughput resumable against not resumable (also `bench resume-throughput`).
pub fn throughput() -> Vec<Row> {
    let (on, off) = on_and_off();
    // Warm up both (first sessions, allocator, TCP windows).
    download(&on, BYTES / 10);
    download(&off, BYTES / 10);
    // Interleaved, so that load from elsewhere falls on both alike.
    let (mut t_on, mut t_off) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        t_on.push(download(&on, BYTES));
        t_off.push(download(&off, BYTES));
    }
    let (a, b) = (median_mb_s(&mut t_on), median_mb_s(&mut t_off));
    let what =
        format!("`exec head -c {BYTES} /dev/zero` end to end, recordings off, median of {RUNS}");
    let mut rows = forward_throughput(&on, &off, FORWARD_RUNS);
    rows.extend([
        Row::new(
            "resume",
            &format!("{what}, resumable (default window) (MB/s)"),
            a,
        ),
        Row::new(
            "resume",
            &format!("{what}, resume_window \"none\" (MB/s)"),
            b,
        ),
        Row::new(
            "resume",
            "resumable / not resumable throughput (goal >= 0.95)",
            a / b,
        ),
    ]);
    rows
}

/// `bench resume-forward`: only the forwarded download of [`throughput`], more
/// runs, with the CPU each process spent on it.
pub fn forward() -> Vec<Row> {
    let (on, off) = on_and_off();
    forward_throughput(&on, &off, FORWARD_RUNS)
}

/// A relay that makes sessions resumable (the default window) and one with
/// `resume_window = "none"`, each with its agent. Recordings off in both: 200 MB of
/// output recorded as JSON would cost more than what is measured here.
fn on_and_off() -> (Env, Env) {
    let base = "[limits]\nrate = \"unlimited\"\n[recordings]\nmode = \"off\"\n";
    let on = Env::start_with_limits(base);
    let off = Env::start_with_limits(&base.replace(
        "rate = \"unlimited\"\n",
        "rate = \"unlimited\"\nresume_window = \"none\"\n",
    ));
    (on, off)
}

/// MB/s of the median of `times`, each moving [`BYTES`].
fn median_mb_s(times: &mut [Duration]) -> f64 {
    times.sort();
    BYTES as f64 / 1e6 / times[times.len() / 2].as_secs_f64()
}

/// CPU clock ticks so far of `env`'s agent and relay and of the CLI of `fwd`.
fn ticks(env: &Env, fwd: &tests::Forward) -> [u64; 3] {
    let pids = [
        env.agent.child.id(),
        env.relay.proc.child.id(),
        fwd.proc.child.id(),
    ];
    pids.map(|p| compare::cpu_ticks(&[p]))
}

/// One download through `fwd`, timed; the ticks each process spent on it are
/// added to `spent`.
fn timed_download(env: &Env, fwd: &tests::Forward, spent: &mut [u64; 3]) -> Duration {
    let before = ticks(env, fwd);
    let took = forward_download(fwd, BYTES);
    for ((s, after), before) in spent.iter_mut().zip(ticks(env, fwd)).zip(before) {
        *s += after.saturating_sub(before);
    }
    took
}

/// A download through `sesame forward` (one session each, a new connection per
/// run), through a relay that makes it resumable and one that does not,
/// interleaved: MB/s (median), their ratio, and each process's CPU per GB.
fn forward_throughput(on: &Env, off: &Env, runs: usize) -> Vec<Row> {
    let dest = zeros_server(BYTES);
    let spec = format!("0:127.0.0.1:{dest}");
    let (fwd_on, fwd_off) = (on.forward(&[&spec]), off.forward(&[&spec]));
    forward_download(&fwd_on, BYTES);
    forward_download(&fwd_off, BYTES);
    // Interleaved; the CPU of the agent, the relay and the CLI over the timed runs.
    let (mut f_on, mut f_off) = (Vec::new(), Vec::new());
    let (mut c_on, mut c_off) = ([0u64; 3], [0u64; 3]);
    for _ in 0..runs {
        f_on.push(timed_download(on, &fwd_on, &mut c_on));
        f_off.push(timed_download(off, &fwd_off, &mut c_off));
    }
    let (fa, fb) = (median_mb_s(&mut f_on), median_mb_s(&mut f_off));
    let fwhat = format!(
        "a {BYTES}-byte download through `sesame forward`, recordings off, median of {runs}"
    );
    // Clock ticks (100 a second) per GB moved.
    let gb = (BYTES * runs) as f64 / 1e9;
    let per_gb = |t: u64| t as f64 / 100.0 / gb;
    let mut rows = vec![
        Row::new("resume", &format!("{fwhat}, resumable (MB/s)"), fa),
        Row::new(
            "resume",
            &format!("{fwhat}, resume_window \"none\" (MB/s)"),
            fb,
        ),
        Row::new(
            "resume",
            "forward: resumable / not resumable throughput (goal >= 0.95)",
            fa / fb,
        ),
    ];
    for (i, who) in ["agent", "relay", "CLI"].iter().enumerate() {
        rows.push(Row::new(
            "resume",
            &format!("forward: {who} CPU seconds per GB, resumable / not"),
            per_gb(c_on[i]) / per_gb(c_off[i]).max(1e-9),
        ));
        rows.push(Row::new(
            "resume",
            &format!("forward: {who} CPU seconds per GB, resumable"),
            per_gb(c_on[i]),
        ));
        rows.push(Row::new(
            "resume",
            &format!("forward: {who} CPU seconds per GB, not resumable"),
            per_gb(c_off[i]),
        ));
    }
    rows
}

/// Sessions flooding while their agent is away, in `hold`.
const FLOODS: usize = 10;

/// See the module docs: memory over a long outage with output flowing.
pub fn hold() -> Vec<Row> {
    let secs: u64 = std::env::var("SESAME_BENCH_HOLD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let cfg = std::env::temp_dir().join(format!("sesame-bench-hold-{}.toml", std::process::id()));
    let window = format!("[limits]\nresume_window = \"{}s\"\n", secs + 120);
    std::fs::write(&cfg, window).unwrap();
    let (env, proxy) = Env::with_agent_behind_proxy(&["--config", cfg.to_str().unwrap()]);
    let (agent, relay) = (env.agent.child.id(), env.relay.proc.child.id());
    let clients: Vec<(Child, Arc<Mutex<Vec<Instant>>>)> = (0..FLOODS)
        .map(|_| {
            let mut c = env
                .sesame()
                .args(["exec", "gw-01", "--", "yes", "a line of output"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let times = arrivals(c.stdout.take().unwrap());
            (c, times)
        })
        .collect();
    env.wait_sessions(FLOODS as u64, 60);
    std::thread::sleep(Duration::from_secs(2));
    let clients_rss = |cs: &[(Child, Arc<Mutex<Vec<Instant>>>)]| -> u64 {
        cs.iter().map(|(c, _)| rss_kib(c.id()).0).sum()
    };
    let sample = || (rss_kib(agent).0, rss_kib(relay).0, clients_rss(&clients));
    let before = sample();
    proxy.cut(true);
    let start = Instant::now();
    let mut samples = vec![sample()];
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(30).min(Duration::from_secs(secs)));
        samples.push(sample());
        eprintln!(
            "  {:>4} s down: agent, relay, clients RSS {:?} KiB",
            start.elapsed().as_secs(),
            samples.last().unwrap()
        );
    }
    let restored = Instant::now();
    proxy.restore();
    // Every session goes on: output comes again on each.
    let goes_on = clients
        .iter()
        .filter(|(_, t)| first_after(t, restored, Duration::from_secs(60)).is_some())
        .count();
    let sessions = env.sessions();
    for (mut c, _) in clients {
        tests::stop_client(&mut c);
    }
    let _ = std::fs::remove_file(&cfg);
    let max = |i: usize| {
        samples
            .iter()
            .map(|s| [s.0, s.1, s.2][i])
            .max()
            .unwrap_or(0)
    };
    let first = |i: usize| [samples[0].0, samples[0].1, samples[0].2][i];
    let mib = |k: u64| k as f64 / 1024.0;
    let what = format!("{FLOODS} execs of `yes`, the agent's link down for {secs} s");
    vec![
        Row::new(
            "resume",
            &format!("{what}: agent RSS before the cut (MiB)"),
            mib(before.0),
        ),
        Row::new(
            "resume",
            &format!("{what}: agent RSS, highest while down (MiB)"),
            mib(max(0)),
        ),
        Row::new(
            "resume",
            &format!("{what}: agent RSS growth after the first 30 s down (MiB)"),
            mib(max(0).saturating_sub(samples.get(1).map_or(first(0), |s| s.0))),
        ),
        Row::new(
            "resume",
            &format!("{what}: relay RSS before / highest while down (MiB)"),
            mib(max(1)) - mib(before.1),
        ),
        Row::new(
            "resume",
            &format!("{what}: clients' RSS (all {FLOODS}), highest while down (MiB)"),
            mib(max(2)),
        ),
        Row::new(
            "resume",
            &format!("{what}: sessions whose output came again after the link was back"),
            goes_on as f64,
        ),
        Row::new(
            "resume",
            &format!("{what}: sessions the relay counts after"),
            sessions as f64,
        ),
    ]
}
