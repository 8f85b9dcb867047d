//! Resumable sessions end to end (`docs/protocol.md`, section 8): the agent's link
//! and the client's stream cut for real (a proxy on loopback resets their TCP
//! connections and refuses new ones for a while), the same session going on with
//! nothing lost or repeated either way.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tests::proxy::{CutProxy, Mangle};
use tests::{read_counting, text, wait_until, Env};

/// Output that takes about 4 s to come, in 40 bursts: a cut lands in its middle.
const SLOW_OUTPUT: &str =
    "for i in $(seq 0 39); do seq $((i*10000)) $((i*10000+9999)); sleep 0.1; done";

fn expected_slow_output() -> Vec<u8> {
    Command::new("sh")
        .args(["-c", SLOW_OUTPUT.replace("sleep 0.1", "true").as_str()])
        .output()
        .unwrap()
        .stdout
}

#[test]
fn an_exec_goes_on_through_cuts_of_the_agents_link_with_nothing_lost_or_repeated() {
    let (env, proxy) = Env::with_agent_behind_proxy(&[]);
    let expected = expected_slow_output();
    let mut child = env.spawn_exec(&["sh", "-c", SLOW_OUTPUT]);
    let (got, reader) = read_counting(child.stdout.take().unwrap());
    for (cut_at, down_for) in [(200_000, 1500), (1_200_000, 2500)] {
        wait_until("output before the cut", 30, || {
            got.load(Ordering::Relaxed) >= cut_at
        });
        let before = proxy.accepted.load(Ordering::Relaxed);
        proxy.cut(true);
        std::thread::sleep(Duration::from_millis(down_for));
        proxy.restore();
        wait_until("the agent to come back", 30, || {
            proxy.accepted.load(Ordering::Relaxed) > before
        });
    }
    let (status, out, err) = tests::finish_child(&mut child, reader);
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert_eq!(out.len(), expected.len(), "stderr: {err}");
    assert!(out == expected, "the output differs");
    let relay_log = std::fs::read_to_string(&env.relay.proc.log).unwrap();
    assert!(
        relay_log.matches("agent offline").count() >= 2,
        "the link was not cut twice: {relay_log}"
    );
    eprintln!("the client printed: {err}");
}

#[test]
fn an_exec_goes_on_over_bad_networks_through_cuts_of_both_links() {
    // Both links split at random places into small writes, some late (seeded).
    let bad = |seed| Mangle {
        seed,
        max_write: 1400,
        max_delay: Duration::from_millis(15),
    };
    let (env, agent_link) = Env::with_agent_behind(&[], |port| CutProxy::mangling(port, bad(7)));
    let client_link = CutProxy::mangling(env.relay.port, bad(11));
    let expected = expected_slow_output();
    let mut child = env
        .sesame()
        .env(
            "SESAME_RELAY",
            format!("https://127.0.0.1:{}", client_link.port),
        )
        .args(["exec", "gw-01", "--", "sh", "-c", SLOW_OUTPUT])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (got, reader) = read_counting(child.stdout.take().unwrap());
    for (i, cut_at) in [200_000, 1_000_000].into_iter().enumerate() {
        wait_until("output before the cut", 60, || {
            got.load(Ordering::Relaxed) >= cut_at
        });
        let link = if i == 0 { &agent_link } else { &client_link };
        let before = link.accepted.load(Ordering::Relaxed);
        link.cut(true);
        std::thread::sleep(Duration::from_millis(1500));
        link.restore();
        wait_until("the link to come back", 30, || {
            link.accepted.load(Ordering::Relaxed) > before
        });
    }
    let (status, out, err) = tests::finish_child(&mut child, reader);
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert_eq!(out.len(), expected.len(), "stderr: {err}");
    assert!(out == expected, "the output differs");
}

#[test]
fn an_exec_goes_on_through_cuts_of_the_clients_stream_and_input_arrives_once() {
    let env = Env::start();
    let proxy = CutProxy::start(env.relay.port);
    let mut sesame = env.sesame();
    sesame.env("SESAME_RELAY", format!("https://127.0.0.1:{}", proxy.port));
    let mut child = sesame
        .args(["exec", "gw-01", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (got, reader) = read_counting(child.stdout.take().unwrap());
    let mut sent = Vec::new();
    let mut line = |i: usize, stdin: &mut std::process::ChildStdin| {
        let l = format!("line {i} {}\n", "x".repeat(i % 97));
        stdin.write_all(l.as_bytes()).unwrap();
        stdin.flush().unwrap();
        sent.extend_from_slice(l.as_bytes());
    };
    for i in 0..100 {
        line(i, &mut stdin);
    }
    wait_until("the first lines back", 30, || {
        got.load(Ordering::Relaxed) > 0
    });
    for round in 0..2 {
        let before = proxy.accepted.load(Ordering::Relaxed);
        proxy.cut(true);
        // Typed while the stream is down: delivered once, after the resume.
        for i in 0..100 {
            line(1000 * (round + 1) + i, &mut stdin);
        }
        std::thread::sleep(Duration::from_millis(1500));
        proxy.restore();
        wait_until("the client to come back", 30, || {
            proxy.accepted.load(Ordering::Relaxed) > before
        });
        for i in 0..100 {
            line(1000 * (round + 1) + 500 + i, &mut stdin);
        }
    }
    drop(stdin);
    let (status, out, err) = tests::finish_child(&mut child, reader);
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&sent)
    );
    assert!(err.contains("reconnect"), "no status line: {err}");
}

/// A relay with `window` as its resume window, and an agent behind a proxy; an
/// exec that prints `start` and then waits; the agent's link cut and kept down.
/// Returns what the client printed and how long after the cut it ended.
fn cut_for_good(window: &str) -> (std::process::Output, Duration) {
    cut_for_good_with(window, None)
}

/// [`cut_for_good`], the relay's policies (`policy`: a file's text) added.
fn cut_for_good_with(window: &str, policy: Option<&str>) -> (std::process::Output, Duration) {
    let cfg = std::env::temp_dir().join(format!(
        "sesame-resume-{}-{window}.toml",
        std::process::id()
    ));
    let toml = format!("[limits]\nrate = \"unlimited\"\nresume_window = \"{window}\"\n");
    std::fs::write(&cfg, toml).unwrap();
    let policies = tests::TempDir::new("resume-policies");
    let mut flags = vec!["--config", cfg.to_str().unwrap()];
    if let Some(text) = policy {
        std::fs::write(policies.0.join("p.cedar"), text).unwrap();
        flags.extend(["--policies", policies.0.to_str().unwrap()]);
    }
    let (env, proxy) = Env::with_agent_behind_proxy(&flags);
    let mut child = env.spawn_exec(&["sh", "-c", "echo start; sleep 60"]);
    let (got, reader) = read_counting(child.stdout.take().unwrap());
    wait_until("start", 30, || got.load(Ordering::Relaxed) >= 6);
    proxy.cut(true);
    let cut = Instant::now();
    let err = tests::stderr_of(&mut child);
    let status = child.wait().unwrap();
    let took = cut.elapsed();
    let stdout = reader.join().unwrap();
    let _ = std::fs::remove_file(&cfg);
    let out = std::process::Output {
        status,
        stdout,
        stderr: err.into_bytes(),
    };
    (out, took)
}

#[test]
fn a_session_whose_agent_stays_away_past_the_window_ends_saying_so() {
    let (out, took) = cut_for_good("3s");
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout, "start\n");
    assert!(
        stderr.contains("error: session ended: the agent was unreachable for 3s"),
        "{stderr}"
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        took >= Duration::from_millis(2900),
        "ended too soon: {took:?}"
    );
    assert!(took < Duration::from_secs(20), "ended too late: {took:?}");
}

#[test]
fn without_a_resume_window_a_cut_ends_the_session_at_once_as_before() {
    let (out, took) = cut_for_good("none");
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout, "start\n");
    assert!(stderr.contains("the agent disconnected"), "{stderr}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn an_exec_goes_on_after_the_relay_is_killed_and_restarted() {
    let mut env = Env::start();
    let expected = expected_slow_output();
    let mut child = env.spawn_exec(&["sh", "-c", SLOW_OUTPUT]);
    let (got, reader) = read_counting(child.stdout.take().unwrap());
    wait_until("output before the kill", 30, || {
        got.load(Ordering::Relaxed) >= 300_000
    });
    env.restart_relay();
    let (status, out, err) = tests::finish_child(&mut child, reader);
    assert_eq!(
        status.code(),
        Some(0),
        "stderr: {err}\nrelay: {}",
        env.relay.proc.log()
    );
    assert_eq!(out.len(), expected.len(), "stderr: {err}");
    assert!(out == expected, "the output differs");
    assert!(
        env.relay
            .proc
            .log()
            .contains("1 resumable session(s) taken up again"),
        "{}",
        env.relay.proc.log()
    );
    // Its end is on record, with its exit.
    let sessions = env.run(&["sessions", "ls", "--json"], b"");
    assert!(
        String::from_utf8_lossy(&sessions.stdout).contains("exit 0"),
        "{}",
        text(&sessions).0
    );
    // Its recording, made by two runs of the relay, has no byte twice. What the
    // first run had not yet written when it was killed (the writer writes every
    // 100 ms), and the client already had, is missing: one gap, not a repeat.
    let listed: serde_json::Value = serde_json::from_slice(&sessions.stdout).unwrap();
    let id = listed
        .as_array()
        .and_then(|a| a.iter().find(|s| s["kind"] == "exec"))
        .and_then(|s| s["id"].as_str())
        .expect("the exec is listed")
        .to_string();
    let replay = env.run(&["replay", &id, "--speed", "1000"], b"");
    assert!(replay.status.success(), "{:?}", text(&replay));
    let got = &replay.stdout;
    let gap = expected
        .len()
        .checked_sub(got.len())
        .expect("bytes recorded twice");
    let same = got
        .iter()
        .zip(&expected)
        .take_while(|(a, b)| a == b)
        .count();
    assert!(
        got[same..] == expected[same + gap..],
        "the recording is not the output with one gap ({gap} bytes at {same})"
    );
    assert!(gap <= 1 << 20, "{gap} bytes missing from the recording");
}

#[test]
fn a_shell_goes_on_after_the_relay_is_killed_and_what_was_typed_meanwhile_runs_once() {
    let mut env = Env::start();
    let (master, slave) = tests::pty::pair(100, 30);
    let mut child = env.shell_on(&slave);
    let flags = rustix::fs::fcntl_getfl(&master).unwrap();
    rustix::fs::fcntl_setfl(&master, flags | rustix::fs::OFlags::NONBLOCK).unwrap();
    let mut m = std::fs::File::from(master);
    let mut seen = Vec::new();
    let limit = Duration::from_secs(30);
    m.write_all(b"echo $((6*7))-before\r").unwrap();
    tests::pty::read_until(&mut m, &mut seen, "42-before", limit);
    env.relay.proc.kill();
    tests::pty::read_until(&mut m, &mut seen, "reconnecting", limit);
    // Typed while the relay is down: the status line counts it, and it runs once,
    // after the resume.
    m.write_all(b"echo $((6*8))-during\r").unwrap();
    tests::pty::read_until(&mut m, &mut seen, "21 bytes typed; ~. leaves...", limit);
    env.restart_relay();
    tests::pty::read_until(&mut m, &mut seen, "48-during", limit);
    m.write_all(b"echo $((6*9))-after; exit 3\r").unwrap();
    tests::pty::read_until(&mut m, &mut seen, "54-after", limit);
    let status = child.wait().unwrap();
    let out = String::from_utf8_lossy(&seen).into_owned();
    assert_eq!(status.code(), Some(3), "{out}");
    assert_eq!(out.matches("48-during").count(), 1, "{out}");
    assert_eq!(out.matches("42-before").count(), 1, "{out}");
}

#[test]
fn a_session_the_restarted_relay_cannot_take_up_ends_and_its_recording_is_finished() {
    let mut env = Env::start();
    let mut child = env.spawn_exec(&["sh", "-c", SLOW_OUTPUT]);
    let (got, reader) = read_counting(child.stdout.take().unwrap());
    wait_until("output before the kill", 30, || {
        got.load(Ordering::Relaxed) >= 100_000
    });
    env.relay.proc.kill();
    // Locked while the relay was down (as an admin with the database would).
    tests::sql(
        &env.data(),
        &["INSERT INTO locks (id, target_kind, target_id, target_name, reason, created_by, created_at)
           SELECT 'lk-test', 'agent', id, name, 'maintenance', 'admin', strftime('%s', 'now')
           FROM agents WHERE name = 'gw-01'"],
    );
    env.restart_relay();
    let (status, _, err) = tests::finish_child(&mut child, reader);
    assert!(!status.success(), "{err}");
    assert!(err.contains("maintenance"), "{err}");
    let dir = env.data().join("recordings");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with(".exec.jsonl.gz"))
            && !names
                .iter()
                .any(|n| n.ends_with(".at") || n.ends_with(".exec.jsonl")),
        "{names:?}"
    );
    let audit = env.run(&["audit", "tail", "--json", "-n", "500"], b"");
    let audit = String::from_utf8_lossy(&audit.stdout).into_owned();
    assert!(audit.contains("recording.recovered"), "{audit}");
}

#[test]
fn tilde_dot_leaves_a_shell_and_ends_it_even_while_the_relay_is_away() {
    let mut env = Env::start();
    let limit = Duration::from_secs(30);
    let open = |env: &Env| {
        let (master, slave) = tests::pty::pair(100, 30);
        let child = env.shell_on(&slave);
        let flags = rustix::fs::fcntl_getfl(&master).unwrap();
        rustix::fs::fcntl_setfl(&master, flags | rustix::fs::OFlags::NONBLOCK).unwrap();
        (std::fs::File::from(master), child)
    };
    // The relay there: `~.` at the start of a line ends the session at once (a
    // `~` elsewhere is typed as is).
    let (mut m, mut child) = open(&env);
    let mut seen = Vec::new();
    m.write_all(b"echo a~.b\r").unwrap();
    tests::pty::read_until(&mut m, &mut seen, "a~.b", limit);
    m.write_all(b"~.").unwrap();
    let status = tests::wait_child(&mut child, limit).expect("the CLI left");
    assert!(!status.success(), "{}", String::from_utf8_lossy(&seen));
    env.wait_sessions(0, 10);

    // The relay away: the CLI leaves, saying what becomes of the session.
    let (mut m, mut child) = open(&env);
    let mut seen = Vec::new();
    m.write_all(b"echo $((6*7))\r").unwrap();
    tests::pty::read_until(&mut m, &mut seen, "42", limit);
    env.relay.proc.kill();
    tests::pty::read_until(&mut m, &mut seen, "reconnecting", limit);
    m.write_all(b"\r~.").unwrap();
    tests::pty::read_until(&mut m, &mut seen, "left with ~. while reconnecting", limit);
    let status = tests::wait_child(&mut child, limit).expect("the CLI left");
    assert!(!status.success());
    env.restart_relay();
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system, in clock ticks) of every process whose command line
/// contains `needle`.
fn cpu_ticks(needle: &str) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmd).contains(needle) {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 of stat (utime, stime), counted from after the name.
        total += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        total += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    total
}

/// The bytes read so far from a child's output, which a thread reads and drops.
fn count_bytes(mut out: impl std::io::Read + Send + 'static) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            c.fetch_add(n, Ordering::Relaxed);
        }
    });
    count
}

/// `floods` programs that write as fast as they can, for ever (`yes` with a marker
/// of this run), then the agent's link down for `down`: the programs wait, blocked
/// on their output (about no CPU), the agent's and the relay's memory stay flat
/// (sampled each second), and every session goes on once the link is back.
fn outage_with_floods(floods: usize, down: Duration, relay_flags: &[&str]) {
    let (env, proxy) = Env::with_agent_behind_proxy(relay_flags);
    let marker = format!("sesame-flood-{}-{floods}", std::process::id());
    let clients: Vec<_> = (0..floods)
        .map(|_| {
            // As root: the ten-minute run goes on beside the other tests, one of
            // which deletes the default account (`userdel` refuses while an
            // account has processes).
            let mut child = env
                .sesame()
                .args(["exec", "gw-01", "--as", "root", "--", "yes", &marker])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let got = count_bytes(child.stdout.take().unwrap());
            (child, got)
        })
        .collect();
    for (_, got) in &clients {
        wait_until("the floods", 30, || got.load(Ordering::Relaxed) > 1_000_000);
    }
    proxy.cut(true);
    // The agent's replay buffers fill, then the programs wait.
    std::thread::sleep(Duration::from_secs(2));
    let (agent, relay) = (env.agent.child.id(), env.relay.proc.child.id());
    let (agent_start, relay_start) = (rss_kib(agent), rss_kib(relay));
    let cpu_start = cpu_ticks(&marker);
    let (mut agent_max, mut relay_max) = (agent_start, relay_start);
    let cut = Instant::now();
    while cut.elapsed() < down {
        std::thread::sleep(Duration::from_secs(1));
        agent_max = agent_max.max(rss_kib(agent));
        relay_max = relay_max.max(rss_kib(relay));
    }
    let cpu = cpu_ticks(&marker).saturating_sub(cpu_start);
    proxy.restore();
    // Every session goes on after the resume.
    for (_, got) in &clients {
        let before = got.load(Ordering::Relaxed);
        wait_until("every flood to go on", 60, || {
            got.load(Ordering::Relaxed) > before + 1_000_000
        });
    }
    for (mut child, _) in clients {
        let _ = child.kill();
        let _ = child.wait();
    }
    let secs = down.as_secs();
    assert!(
        agent_max <= agent_start + 2048,
        "the agent grew from {agent_start} to {agent_max} KiB over {secs} s without its link"
    );
    assert!(
        relay_max <= relay_start + 4096,
        "the relay grew from {relay_start} to {relay_max} KiB over {secs} s"
    );
    // Blocked on their output: about no CPU (a program that ran would use hundreds
    // of ticks a second).
    assert!(
        cpu < 50,
        "the programs kept running while the link was down: {cpu} ticks in {secs} s"
    );
}

#[test]
fn while_the_agent_is_away_flooding_programs_wait_and_memory_stays_bounded() {
    outage_with_floods(3, Duration::from_secs(10), &[]);
}

/// The issue's ten minutes (`SESAME_OUTAGE_SECS` to shorten it): `tests/run-all.sh`
/// runs it in the background while the other tests run.
#[test]
#[ignore = "ten minutes: tests/run-all.sh runs it beside the other tests"]
fn ten_minutes_without_the_agents_link_with_output_flowing_memory_stays_flat() {
    let secs: u64 = std::env::var("SESAME_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    // Held longer than the outage (the default window is ten minutes).
    let cfg = std::env::temp_dir().join(format!("sesame-outage-{}.toml", std::process::id()));
    let window = format!(
        "[limits]\nrate = \"unlimited\"\nresume_window = \"{}s\"\n",
        secs + 120
    );
    std::fs::write(&cfg, window).unwrap();
    outage_with_floods(
        10,
        Duration::from_secs(secs),
        &["--config", cfg.to_str().unwrap()],
    );
    let _ = std::fs::remove_file(&cfg);
}

#[test]
fn a_client_killed_outright_keeps_its_session_for_the_window_then_it_ends() {
    let cfg = std::env::temp_dir().join(format!("sesame-resume-kill-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        "[limits]\nrate = \"unlimited\"\nresume_window = \"3s\"\n",
    )
    .unwrap();
    let env = Env::start_with(&["--config", cfg.to_str().unwrap()]);
    let tag = format!("{}.{}", 4000 + std::process::id() % 1000, 23);
    let mut child = env
        .sesame()
        .args([
            "exec",
            "gw-01",
            "--",
            "sh",
            "-c",
            &format!("sleep {tag} & wait"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    env.wait_sessions(1, 30);
    // SIGKILL: to the relay, a client whose network went away.
    let _ = child.kill();
    let _ = child.wait();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(env.sessions(), 1, "the session waits for its client");
    env.wait_sessions(0, 20);
    assert!(
        killed.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        killed.elapsed()
    );
    let alive = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains(&tag)
        })
    };
    wait_until("the process group to be killed", 20, || !alive());
    let _ = std::fs::remove_file(&cfg);
}

#[test]
fn a_policy_sets_its_sessions_resume_window() {
    // The relay's window is 10 minutes; the policy that allows the session asks for 2 s.
    let policy = "@id(\"admins-short-resume\")\n@resume_window(\"2s\")\n\
                  permit (principal in Group::\"admins\", action, resource);\n";
    let (out, took) = cut_for_good_with("10m", Some(policy));
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout, "start\n");
    assert!(
        stderr.contains("error: session ended: the agent was unreachable for 2s"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[test]
fn a_client_away_when_its_session_was_terminated_hears_how_it_ended() {
    let env = Env::start();
    let proxy = CutProxy::start(env.relay.port);
    let mut sesame = env.sesame();
    sesame.env("SESAME_RELAY", format!("https://127.0.0.1:{}", proxy.port));
    let mut child = sesame
        .args(["exec", "gw-01", "--", "sh", "-c", "echo start; sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (got, reader) = read_counting(child.stdout.take().unwrap());
    wait_until("start", 30, || got.load(Ordering::Relaxed) >= 6);
    proxy.cut(true);
    // Ended by an operator while its client is away.
    let listed = env.run(&["sessions", "ls", "--json"], b"");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let id = listed[0]["id"].as_str().unwrap().to_string();
    let out = env.run(
        &["sessions", "terminate", &id, "--reason", "maintenance"],
        b"",
    );
    assert!(out.status.success(), "{:?}", text(&out));
    proxy.restore();
    let status = child.wait().unwrap();
    let _ = reader.join();
    let err = tests::stderr_of(&mut child);
    assert_eq!(status.code(), Some(255), "{err}");
    assert!(
        err.contains("error: cannot resume the session on gw-01: the session ended: terminated by admin: maintenance"),
        "{err}"
    );
}

/// A relay whose resume window is `window` (its config in `.0`, kept while the
/// test runs), and a running `sesame exec` of a program that prints `started` and
/// sleeps (its stdout read into `.4`).
fn exec_with_window(
    window: &str,
) -> (
    tests::TempDir,
    String,
    Env,
    std::process::Child,
    std::thread::JoinHandle<Vec<u8>>,
) {
    let dir = tests::TempDir::new("hold");
    let cfg = dir.0.join("hold.toml");
    let toml = format!("[limits]\nrate = \"unlimited\"\nresume_window = \"{window}\"\n");
    std::fs::write(&cfg, toml).unwrap();
    let cfg = cfg.to_str().unwrap().to_string();
    let env = Env::start_with(&["--config", &cfg]);
    // As root, and not for long: the agent may be killed with the program still
    // running, and a test beside this one deletes the default account (`userdel`
    // refuses while an account has processes).
    let program = ["sh", "-c", "echo started; exec sleep 60"];
    let mut child = env
        .sesame()
        .args(["exec", &env.target, "--as", "root", "--"])
        .args(program)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (got, reader) = read_counting(child.stdout.take().unwrap());
    wait_until("the exec to start", 30, || got.load(Ordering::Relaxed) > 0);
    (dir, cfg, env, child, reader)
}

#[test]
fn a_relay_restarted_after_a_while_counts_the_hold_from_when_it_stopped() {
    // A 20 s resume window; the relay is down for 8 s while the agent is stopped
    // (SIGSTOP: it cannot come back). The session ends 20 s after the relay
    // stopped, saying why, not 20 s after it started again.
    let (_dir, cfg, mut env, mut child, reader) = exec_with_window("20s");
    let flags = ["--config", cfg.as_str()];
    let agent = rustix::process::Pid::from_child(&env.agent.child);
    rustix::process::kill_process(agent, rustix::process::Signal::STOP).unwrap();
    env.restart_relay_with(Duration::from_secs(8), &flags);
    let restarted = Instant::now();
    let (status, out, err) = tests::finish_child(&mut child, reader);
    let took = restarted.elapsed();
    let _ = rustix::process::kill_process(agent, rustix::process::Signal::CONT);
    let log = env.relay.proc.log();
    assert_eq!(out, b"started\n");
    assert_ne!(status.code(), Some(0), "{err}");
    assert!(
        err.contains("the agent was unreachable for 20s"),
        "stderr: {err}\nrelay: {log}"
    );
    // What the restarted relay left of the hold: at most 20 - 8 s.
    let left: u64 = log
        .split("s of its hold left")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no hold left in: {log}"));
    assert!(left <= 12, "{left} s of the hold left after 8 s down");
    // And the session ended then (about 12 s after the restart; 20 s before).
    assert!(
        took < Duration::from_secs(18),
        "ended {took:?} after the restart"
    );
    eprintln!("{left} s of the hold left; the client ended {took:?} after the restart");
}

#[test]
fn a_session_whose_window_passed_while_the_relay_was_down_ends_with_the_reason() {
    let (_dir, cfg, mut env, mut child, reader) = exec_with_window("5s");
    let flags = ["--config", cfg.as_str()];
    // Down for longer than the window: the restarted relay does not take it up.
    env.restart_relay_with(Duration::from_secs(7), &flags);
    let (status, _, err) = tests::finish_child(&mut child, reader);
    assert_ne!(status.code(), Some(0), "{err}");
    let log = env.relay.proc.log();
    assert!(!log.contains("taken up again"), "{log}");
    let why = "relay restarted: its resume window of 5s passed while the relay was down";
    let listed = text(&env.run(&["sessions", "ls", "--json"], b"")).0;
    assert!(listed.contains(why), "{listed}\nrelay: {log}");
}
