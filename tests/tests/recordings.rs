//! Session recordings end to end, over the real relay, agent and CLI: a shell's
//! asciicast plays in the real `asciinema cat` and in `sesame replay` as the user
//! saw it, with its resizes; an exec's stdout, stderr and exit and a forward
//! session's channels are on record, hashed into the audit log; strict mode
//! refuses a session that cannot be recorded and ends one whose recording fails;
//! `sesame recordings grep` finds a line; reading a recording takes `replay`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rustix::fs::OFlags;
use serde_json::Value;
use tests::{admin, text, Env, TempDir};

/// The sessions the admin sees, newest first.
fn sessions(env: &Env) -> Vec<Value> {
    let out = env.run(&["sessions", "ls", "--all", "--json"], b"");
    assert!(out.status.success(), "{}", text(&out).1);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The newest session of `kind`, once it has ended.
fn ended(env: &Env, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = sessions(env);
        let s = all
            .iter()
            .find(|s| s["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} session in {all:?}"));
        if s["live"] == false && !s["ended_at"].is_null() {
            return s.clone();
        }
        assert!(Instant::now() < deadline, "{s} never ended");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `sesame args...` that must succeed: its stdout.
fn ok(env: &Env, args: &[&str]) -> Vec<u8> {
    let out = env.run(args, b"");
    assert!(out.status.success(), "sesame {args:?}: {}", text(&out).1);
    out.stdout
}

/// A program's output, which must succeed.
fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", text(&out).1);
    out
}

/// The SHA-256 (hex) of a file, by `sha256sum`.
fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// The audit log's `session.end` event of session `id`.
fn session_end(env: &Env, id: &str) -> Value {
    let out = ok(env, &["audit", "export", "--since", "1h"]);
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["event"] == "session.end" && r["target"] == id)
        .unwrap_or_else(|| panic!("no session.end for {id}"))
}

/// The finished recording's file, checked against its hash in the audit log.
fn finished(env: &Env, id: &str, suffix: &str) -> PathBuf {
    let file = format!("{id}.{suffix}.gz");
    let path = env.data().join("recordings").join(&file);
    assert!(path.exists(), "{} is missing", path.display());
    let end = session_end(env, id);
    assert_eq!(end["detail"]["recording"]["file"], file.as_str(), "{end}");
    assert_eq!(end["detail"]["recording"]["sha256"], sha256(&path), "{end}");
    assert!(!env
        .data()
        .join("recordings")
        .join(format!("{id}.{suffix}"))
        .exists());
    path
}

#[test]
fn a_shell_recording_plays_in_asciinema_and_sesame_replay_as_the_user_saw_it() {
    let env = Env::start();
    let (master, slave) = tests::pty::pair(100, 30);
    let mut child = env.shell_on(&slave);
    let flags = rustix::fs::fcntl_getfl(&master).unwrap();
    rustix::fs::fcntl_setfl(&master, flags | OFlags::NONBLOCK).unwrap();
    let mut m = std::fs::File::from(master);
    let mut seen = Vec::new();
    let limit = Duration::from_secs(20);
    // The prompt first: the terminal is raw by then, so what we type is not echoed
    // here but by the remote shell, and all the user sees comes from the session.
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while seen.is_empty() {
        match m.read(&mut buf) {
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no prompt");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    m.write_all(b"echo rec-$((6*7))-done\r").unwrap();
    tests::pty::read_until(&mut m, &mut seen, "rec-42-done", limit);
    // The user's terminal grows: sesame sends a Resize, the relay records it.
    let size = rustix::termios::Winsize {
        ws_col: 120,
        ws_row: 40,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(&slave, size).unwrap();
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::WINCH).unwrap();
    m.write_all(b"stty size\r").unwrap();
    tests::pty::read_until(&mut m, &mut seen, "40 120", limit);
    m.write_all(b"exit\r").unwrap();
    // Everything the terminal showed, to the end.
    let deadline = Instant::now() + limit;
    loop {
        match m.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if child.try_wait().unwrap().is_some() {
                    // Drained after the exit: nothing more can come.
                    if m.read(&mut buf).map_or(true, |n| n == 0) {
                        break;
                    }
                    continue;
                }
                assert!(Instant::now() < deadline, "sesame shell did not exit");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => break,
        }
    }
    assert_eq!(child.wait().unwrap().code(), Some(0));
    drop(slave);

    let s = ended(&env, "shell");
    let id = s["id"].as_str().unwrap();
    assert_eq!(s["recorded"], true, "{s}");
    let gz = finished(&env, id, "cast");
    let unzipped = run(Command::new("zcat").arg(&gz)).stdout;
    // The export is the file, uncompressed.
    let export = ok(&env, &["sessions", "export", id]);
    assert_eq!(export, unzipped);
    let cast = env.dir.0.join("shell.cast");
    std::fs::write(&cast, &export).unwrap();
    let text = String::from_utf8(export).unwrap();
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!(
        (header["width"].clone(), header["height"].clone()),
        (100.into(), 30.into())
    );
    assert_eq!(header["session"], id);
    assert_eq!(header["target"], "gw-01");
    assert_eq!(header["user"], "admin");
    assert_eq!(header["account"], s["run_as"]);
    assert_eq!(header["env"]["TERM"], "xterm");
    let events: Vec<Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let resizes: Vec<&Value> = events.iter().filter(|e| e[1] == "r").collect();
    assert_eq!(resizes.len(), 1, "{events:?}");
    assert_eq!(resizes[0][2], "120x40");
    // No input events: input is not recorded unless the relay is told to.
    assert!(
        events.iter().all(|e| e[1] == "o" || e[1] == "r"),
        "{events:?}"
    );
    let times: Vec<f64> = events.iter().map(|e| e[0].as_f64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // The real asciinema prints what the user saw, byte for byte. (It wants a
    // terminal to read keys from: a PTY of its own, as its controlling terminal.)
    let (_player_master, player_tty) = tests::pty::pair(100, 30);
    let played = run(Command::new("setsid")
        .args(["--wait", "--ctty", "asciinema", "cat"])
        .arg(&cast)
        .stdin(Stdio::from(player_tty)))
    .stdout;
    assert_eq!(
        String::from_utf8_lossy(&played),
        String::from_utf8_lossy(&seen)
    );
    // And so does sesame replay (here a hundred times faster).
    let replayed = ok(&env, &["replay", id, "--speed", "100"]);
    assert_eq!(replayed, seen);

    // The output is searchable: the line, and where in the session it was.
    let found = String::from_utf8(ok(&env, &["recordings", "grep", "rec-42-done"])).unwrap();
    let hits: Vec<&str> = found.lines().collect();
    assert_eq!(hits.len(), 1, "{found}");
    let (session, rest) = hits[0].split_once("  +0:").unwrap();
    assert_eq!(session, id);
    assert!(
        rest.len() == "00  rec-42-done".len() && rest.ends_with("  rec-42-done"),
        "{found}"
    );
    let none = env.run(&["recordings", "grep", "never-printed-anywhere"], b"");
    assert_eq!(none.status.code(), Some(1));
    assert!(none.stdout.is_empty());
}

#[test]
fn an_exec_record_keeps_stdout_stderr_and_the_exit_status() {
    let env = Env::start();
    // (The pause keeps the bytes that are not UTF-8 in a chunk of their own.)
    let script = "echo to-out; echo to-err >&2; sleep 0.3; printf 'caf\\303\\251 \\377\\n'; exit 3";
    let out = env.run(&["exec", "gw-01", "--", "sh", "-c", script], b"");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    let s = ended(&env, "exec");
    let id = s["id"].as_str().unwrap();
    finished(&env, id, "exec.jsonl");
    let record = String::from_utf8(ok(&env, &["sessions", "export", id])).unwrap();
    let lines: Vec<Value> = record
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["kind"], "exec");
    assert_eq!(lines[0]["argv"], serde_json::json!(["sh", "-c", script]));
    assert_eq!(lines[0]["session"], id);
    let chunks = |stream: &str| -> Vec<&Value> {
        lines[1..]
            .iter()
            .filter(|l| l["stream"] == stream)
            .collect()
    };
    let stdout = chunks("stdout");
    let stderr = chunks("stderr");
    assert_eq!(stdout[0]["text"], "to-out\n", "{record}");
    assert_eq!(stderr.len(), 1, "{record}");
    assert_eq!(stderr[0]["text"], "to-err\n");
    // Bytes that are not UTF-8 are kept exactly, as base64.
    assert_eq!(stdout.last().unwrap()["base64"], "Y2Fmw6kg/wo=", "{record}");
    let last = lines.last().unwrap();
    assert_eq!(last["exit"], serde_json::json!({ "code": 3 }), "{record}");
    assert!(lines[1..]
        .windows(2)
        .all(|w| w[0]["t"].as_f64() <= w[1]["t"].as_f64()));
    // sesame replay puts each stream back where it was.
    let replay = env.run(&["replay", id, "--speed", "100"], b"");
    assert!(replay.status.success());
    assert_eq!(replay.stdout, b"to-out\ncaf\xc3\xa9 \xff\n");
    assert_eq!(replay.stderr, b"to-err\n");
    let found = String::from_utf8(ok(&env, &["recordings", "grep", "TO-ERR", "-i"])).unwrap();
    assert_eq!(found, format!("{id}  +0:00  to-err\n"));
}

#[test]
fn a_forward_record_has_each_channels_destination_times_bytes_and_end() {
    let env = Env::start();
    // An echo server, and a port nobody listens on.
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in echo.incoming().flatten() {
            let mut c = c;
            let mut buf = [0u8; 1024];
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 || c.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    let closed_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut fwd = env.forward(&[
        &format!("0:127.0.0.1:{echo_port}"),
        &format!("0:127.0.0.1:{closed_port}"),
    ]);
    let mut c = TcpStream::connect(("127.0.0.1", fwd.ports[0])).unwrap();
    c.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");
    drop(c);
    // The refused channel: the connection is closed on us.
    let mut r = TcpStream::connect(("127.0.0.1", fwd.ports[1])).unwrap();
    r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = r.read(&mut [0u8; 1]);
    // The echoed channel is over at the agent before the session ends.
    std::thread::sleep(Duration::from_millis(500));
    fwd.proc.stop();
    let s = ended(&env, "forward");
    let id = s["id"].as_str().unwrap();
    finished(&env, id, "forward.jsonl");
    let record = String::from_utf8(ok(&env, &["sessions", "export", id])).unwrap();
    let lines: Vec<Value> = record
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["kind"], "forward");
    assert_eq!(lines.len(), 3, "{record}");
    let chan = |port: u16| {
        lines[1..]
            .iter()
            .find(|l| l["port"] == port)
            .unwrap_or_else(|| panic!("no channel to {port}: {record}"))
    };
    let e = chan(echo_port);
    assert_eq!(e["host"], "127.0.0.1");
    assert_eq!(
        (e["bytes_in"].clone(), e["bytes_out"].clone()),
        (5.into(), 5.into()),
        "{e}"
    );
    assert_eq!(e["outcome"], "closed", "{e}");
    assert!(e["reason"].as_str().is_some_and(|r| !r.is_empty()), "{e}");
    let (opened, closed) = (e["opened"].as_f64().unwrap(), e["closed"].as_f64().unwrap());
    assert!(
        opened <= e["accepted"].as_f64().unwrap() && opened < closed,
        "{e}"
    );
    let r = chan(closed_port);
    assert_eq!(r["outcome"], "rejected", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("refused"), "{r}");
    assert_eq!(r["bytes_in"], 0);
    // No payload in the record.
    assert!(!record.contains("hello"));
    // Each channel's open and close are in the audit log too.
    let log = String::from_utf8(ok(&env, &["audit", "export", "--since", "1h"])).unwrap();
    let rows: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &Value| r["target"] == id)
        .collect();
    let closes: Vec<&Value> = rows
        .iter()
        .filter(|r| r["event"] == "forward.close")
        .collect();
    assert_eq!(closes.len(), 2, "{rows:?}");
    let to = |port: u16| {
        closes
            .iter()
            .find(|r| r["detail"]["port"] == port)
            .unwrap_or_else(|| panic!("no forward.close to {port}: {closes:?}"))
    };
    let e = &to(echo_port)["detail"];
    assert_eq!(
        (e["bytes_to_dest"].clone(), e["bytes_from_dest"].clone()),
        (5.into(), 5.into()),
        "{e}"
    );
    let r = &to(closed_port)["detail"];
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .starts_with("the agent refused: "),
        "{r}"
    );
    assert_eq!(
        rows.iter().filter(|r| r["event"] == "forward.open").count(),
        2
    );
}

#[test]
fn strict_mode_refuses_a_session_that_cannot_be_recorded_and_best_effort_runs_it() {
    let dir = TempDir::new("rec-unusable");
    // A regular file where the directory should be: root cannot write there either.
    let blocked = dir.0.join("recordings");
    std::fs::write(&blocked, b"").unwrap();
    let config = |mode: &str| {
        format!(
            "[limits]\nrate = \"unlimited\"\n[recordings]\ndir = \"{}\"\nmode = \"{mode}\"\n",
            blocked.display()
        )
    };
    let env = Env::start_with_limits(&config("strict"));
    let out = env.run(&["exec", "gw-01", "--", "echo", "never"], b"");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!(
            "error: gw-01: recording unavailable: cannot create {}: File exists (os error 17)\n",
            blocked.display()
        )
    );
    let s = ended(&env, "exec");
    assert_eq!(s["recorded"], false);
    drop(env);

    let env = Env::start_with_limits(&config("best-effort"));
    let out = env.run(&["exec", "gw-01", "--", "echo", "unrecorded"], b"");
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(out.stdout, b"unrecorded\n");
    let s = ended(&env, "exec");
    let id = s["id"].as_str().unwrap();
    assert_eq!(s["recorded"], false);
    let end = session_end(&env, id);
    assert_eq!(
        end["detail"]["recording"]["error"],
        format!(
            "recording unavailable: cannot create {}: File exists (os error 17)",
            blocked.display()
        )
    );
}

/// A small tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs (it runs as root): {}",
            text(&out).1
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_running_session_whose_recording_fails_ends_with_the_reason() {
    let dir = TempDir::new("rec-full");
    let recordings = dir.0.join("recordings");
    let _fs = Tmpfs::mount(&recordings, "256k");
    let env = Env::start_with_limits(&format!(
        "[limits]\nrate = \"unlimited\"\n[recordings]\ndir = \"{}\"\n",
        recordings.display()
    ));
    let mut sesame = env.sesame();
    sesame.args(["shell", "gw-01"]);
    let (mut shell, mut stdin) = tests::live_shell(sesame, "echo ready");
    // The user reads all the output (a client that does not read is another story).
    let mut stdout = shell.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stdout.read_to_end(&mut all);
        all.len()
    });
    let live: Vec<Value> = sessions(&env)
        .into_iter()
        .filter(|s| s["live"] == true)
        .collect();
    let id = live[0]["id"].as_str().unwrap().to_string();
    assert_eq!(live[0]["recorded"], true);
    // The disk fills up under the running session.
    let mut filler = std::fs::File::create(recordings.join("filler")).unwrap();
    let block = vec![0u8; 4096];
    while filler.write_all(&block).is_ok() {}
    writeln!(
        stdin,
        "head -c 100000 /dev/zero | tr '\\0' x; echo; sleep 30"
    )
    .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = shell.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the session went on unrecorded; relay log:\n{}",
            env.relay.proc.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    reader.join().unwrap();
    let err = tests::stderr_of(&mut shell);
    assert_eq!(status.code(), Some(255), "{err}");
    assert_eq!(
        err,
        format!(
            "error: session ended: recording failed: cannot write {}: No space left on device (os error 28)\n",
            recordings.join(format!("{id}.cast")).display()
        )
    );
    let end = session_end(&env, &id);
    assert!(
        end["detail"]["recording"]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("recording failed: cannot write")),
        "{end}"
    );
}

const POLICIES: &str = r#"
@id("lab")
permit (principal, action in [Action::"shell", Action::"exec"], resource);

@id("own-sessions")
permit (principal, action == Action::"sessions_list", resource)
when { resource.owner == principal };

@id("auditors")
permit (principal in Group::"auditors", action == Action::"replay", resource);
"#;

#[test]
fn reading_a_recording_takes_replay_and_each_read_is_audited() {
    let policies = TempDir::new("rec-policies");
    std::fs::write(policies.0.join("team.cedar"), POLICIES).unwrap();
    let env = Env::start_with(&["--policies", policies.0.to_str().unwrap()]);
    let data = env.data();
    let alice = admin(&data, &["user", "add", "alice"]);
    let carol = admin(&data, &["user", "add", "carol", "--group", "auditors"]);
    let as_user = |key: &str, args: &[&str]| -> Output {
        env.sesame()
            .env("SESAME_API_KEY", key)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = as_user(&alice, &["exec", "gw-01", "--", "echo", "alice-secret"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let listed: Vec<Value> =
        serde_json::from_slice(&as_user(&alice, &["sessions", "ls", "--json"]).stdout).unwrap();
    let id = listed[0]["id"].as_str().unwrap().to_string();
    assert_eq!(listed[0]["recorded"], true);

    // Alice may not read even her own session's recording.
    for args in [
        vec!["sessions", "export", id.as_str()],
        vec!["replay", id.as_str()],
    ] {
        let out = as_user(&alice, &args);
        assert!(!out.status.success());
        assert_eq!(
            text(&out).1,
            format!("error: denied: alice may not replay on session {id} (no policy permits it)\n")
        );
    }
    // Nor find what her sessions printed.
    let out = as_user(&alice, &["recordings", "grep", "alice-secret"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());

    // An auditor may, and the log says who read what.
    let out = as_user(&carol, &["sessions", "export", &id]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice-secret\\n"));
    let out = as_user(&carol, &["recordings", "grep", "alice-secret"]);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{id}  +0:00  alice-secret\n")
    );
    let log = String::from_utf8(ok(&env, &["audit", "export", "--since", "1h"])).unwrap();
    let rows: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reads: Vec<&Value> = rows
        .iter()
        .filter(|r| r["event"] == "recording.read")
        .collect();
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0]["actor"], "carol");
    assert_eq!(reads[0]["target"], id.as_str());
    assert_eq!(reads[0]["source_ip"], "127.0.0.1");
    assert_eq!(reads[0]["detail"]["file"], format!("{id}.exec.jsonl.gz"));
    let searches: Vec<&Value> = rows
        .iter()
        .filter(|r| r["event"] == "recording.grep")
        .collect();
    assert_eq!(searches.len(), 2, "{searches:?}");
    assert_eq!(searches[0]["actor"], "alice");
    assert_eq!(searches[0]["detail"]["sessions"], serde_json::json!([]));
    assert_eq!(searches[1]["actor"], "carol");
    assert_eq!(searches[1]["detail"]["sessions"], serde_json::json!([id]));
}

#[test]
fn a_live_recording_reads_up_to_now_and_input_is_recorded_only_when_asked() {
    let env =
        Env::start_with_limits("[limits]\nrate = \"unlimited\"\n[recordings]\ninput = true\n");
    let mut shell = env
        .sesame()
        .args(["shell", "gw-01"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = shell.stdin.take().unwrap();
    writeln!(stdin, "echo typed-$((1+1))").unwrap();
    let mut seen = [0u8; 8];
    shell
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut seen)
        .unwrap();
    assert_eq!(&seen, b"typed-2\n");
    let live: Vec<Value> = sessions(&env)
        .into_iter()
        .filter(|s| s["live"] == true)
        .collect();
    let id = live[0]["id"].as_str().unwrap().to_string();
    // While the shell runs, its recording reads up to now (on disk within 100 ms).
    let deadline = Instant::now() + Duration::from_secs(5);
    let so_far = loop {
        let cast = String::from_utf8(ok(&env, &["sessions", "export", &id])).unwrap();
        if cast.contains("typed-2") {
            break cast;
        }
        assert!(
            Instant::now() < deadline,
            "not in the live recording: {cast}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(so_far.ends_with('\n'));
    let events: Vec<Value> = so_far
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // A shell on pipes: 80x24 in the header; what was typed, as `i`.
    assert!(so_far.starts_with("{\""));
    let header: Value = serde_json::from_str(so_far.lines().next().unwrap()).unwrap();
    assert_eq!(
        (header["width"].clone(), header["height"].clone()),
        (80.into(), 24.into())
    );
    let typed: Vec<&Value> = events.iter().filter(|e| e[1] == "i").collect();
    assert_eq!(typed.len(), 1, "{events:?}");
    assert_eq!(typed[0][2], "echo typed-$((1+1))\n");
    let printed: String = events
        .iter()
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap())
        .collect();
    assert_eq!(printed, "typed-2\n");
    writeln!(stdin, "exit").unwrap();
    assert!(shell.wait().unwrap().success());
    let s = ended(&env, "shell");
    finished(&env, s["id"].as_str().unwrap(), "cast");
}

/// Everything `pipe` gives, gathered on a thread.
fn gather(mut pipe: impl Read + Send + 'static) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let into = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    seen
}

/// Wait (10 s at most) until `seen` holds `text`.
fn wait_for(seen: &std::sync::Mutex<Vec<u8>>, text: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
        if now.contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never showed {text:?}: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const JOIN_POLICIES: &str = r#"
@id("lab")
permit (principal, action in [Action::"shell", Action::"exec"], resource);

@id("own-sessions")
permit (principal, action == Action::"sessions_list", resource)
when { resource.owner == principal };

@id("leads-watch")
permit (principal in Group::"leads", action == Action::"observe", resource);

@id("record-alice-keys")
permit (principal == User::"alice", action == Action::"record_input", resource);
"#;

#[test]
fn join_shows_the_screen_then_live_output_read_only_and_the_user_is_told() {
    let policies = TempDir::new("join-policies");
    std::fs::write(policies.0.join("team.cedar"), JOIN_POLICIES).unwrap();
    let env = Env::start_with(&["--policies", policies.0.to_str().unwrap()]);
    let data = env.data();
    let alice = admin(&data, &["user", "add", "alice"]);
    let dave = admin(&data, &["user", "add", "dave", "--group", "leads"]);
    let carol = admin(&data, &["user", "add", "carol"]);
    let as_user = |key: &str| {
        let mut c = env.sesame();
        c.env("SESAME_API_KEY", key);
        c
    };
    let mut shell_cmd = as_user(&alice);
    shell_cmd.args(["shell", "gw-01"]);
    let (mut shell, mut typing) = tests::live_shell(shell_cmd, "echo ready");
    let shell_out = gather(shell.stdout.take().unwrap());
    let shell_err = gather(shell.stderr.take().unwrap());
    writeln!(typing, "echo before-$((2+3))").unwrap();
    wait_for(&shell_out, "before-5", "alice's shell");
    let listed: Vec<Value> = serde_json::from_slice(
        &as_user(&alice)
            .args(["sessions", "ls", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let id = listed[0]["id"].as_str().unwrap().to_string();

    // Without a policy: refused, word for word.
    let out = as_user(&carol)
        .args(["join", &id])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        text(&out).1,
        format!("error: denied: carol may not observe on session {id} (no policy permits it)\n")
    );

    // A lead joins: the screen as it is (drawn from the recording), then live.
    // `sesame join ID` as dave: the process, its keyboard, its stdout and stderr.
    let join = || {
        let mut child = as_user(&dave)
            .args(["join", &id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let keys = child.stdin.take().unwrap();
        let seen = gather(child.stdout.take().unwrap());
        let said = gather(child.stderr.take().unwrap());
        (child, keys, seen, said)
    };
    let (mut watcher, mut keys, seen, said) = join();
    wait_for(&seen, "before-5", "the observer's screen");
    wait_for(
        &shell_err,
        "sesame: dave joined this session (read-only)",
        "alice's terminal",
    );
    writeln!(typing, "echo after-$((3+4))").unwrap();
    wait_for(&seen, "after-7", "the observer's live view");
    // Read-only: what the observer types goes nowhere.
    writeln!(keys, "echo from-dave").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    writeln!(typing, "echo still-alice").unwrap();
    wait_for(&seen, "still-alice", "the observer's live view");
    let alice_saw = String::from_utf8_lossy(&shell_out.lock().unwrap()).into_owned();
    assert!(!alice_saw.contains("from-dave"), "{alice_saw}");
    // Leaving (q): the user is told, and the observer reads why it stopped.
    write!(keys, "q").unwrap();
    assert!(watcher.wait().unwrap().success());
    wait_for(&said, "sesame: you left", "the observer's stderr");
    wait_for(
        &shell_err,
        "sesame: dave left this session",
        "alice's terminal",
    );

    // Locking the observer out ends its watch (not the session).
    let (mut locked, _keys3, seen3, said3) = join();
    wait_for(&seen3, "still-alice", "the locked observer's screen");
    ok(
        &env,
        &[
            "admin",
            "locks",
            "add",
            "--user",
            "dave",
            "--reason",
            "audit-over",
        ],
    );
    assert!(!locked.wait().unwrap().success());
    wait_for(&said3, "audit-over", "the locked observer's stderr");
    ok(&env, &["admin", "locks", "rm", "dave"]);
    writeln!(typing, "echo unharmed").unwrap();
    wait_for(&shell_out, "unharmed", "alice's shell");

    // A second observer sees the session end with its exit.
    let (mut second, _keys2, seen2, said2) = join();
    wait_for(&seen2, "still-alice", "the second observer's screen");
    writeln!(typing, "exit").unwrap();
    assert!(shell.wait().unwrap().success());
    assert!(second.wait().unwrap().success());
    wait_for(
        &said2,
        "sesame: the session ended: exit 0",
        "the second observer's stderr",
    );

    // Over: nothing to join.
    let out = as_user(&dave)
        .args(["join", &id])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        text(&out).1,
        format!("error: session {id} is not running\n")
    );

    // In the audit log: two joins and two leaves by dave, carol's refusal; and a
    // policy asked for alice's keystrokes to be recorded.
    let log = String::from_utf8(ok(&env, &["audit", "export", "--since", "1h"])).unwrap();
    let rows: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |event: &str| -> Vec<&Value> {
        rows.iter()
            .filter(|r| r["event"] == event && r["target"] == id.as_str())
            .collect()
    };
    let joins = of("session.join");
    assert_eq!(joins.len(), 3, "{joins:?}");
    assert!(joins
        .iter()
        .all(|r| r["actor"] == "dave" && r["detail"]["owner"] == "alice"));
    let leaves = of("session.leave");
    assert_eq!(leaves.len(), 3, "{leaves:?}");
    assert_eq!(leaves[0]["detail"]["why"], "the observer left");
    assert!(leaves[1]["detail"]["why"]
        .as_str()
        .unwrap()
        .contains("audit-over"));
    assert_eq!(leaves[2]["detail"]["why"], "the session ended: exit 0");
    let refused: Vec<&Value> = of("authz.decision")
        .into_iter()
        .filter(|r| r["actor"] == "carol")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["detail"]["allow"], false);
    let start = &of("session.start")[0];
    assert_eq!(start["detail"]["input_recorded"], true, "{start}");
    let cast = String::from_utf8(ok(&env, &["sessions", "export", &id])).unwrap();
    assert!(cast.contains(r#""i", "echo after-$((3+4))\n"]"#), "{cast}");
    // `policy check` says the same, for the session's owner only.
    let check = |user: &str| {
        let args = [
            "policy",
            "check",
            "--user",
            user,
            "--action",
            "record_input",
            "--target",
            &id,
        ];
        env.run(&args, b"")
    };
    let out = check("alice");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    assert!(
        text(&out).0.contains("record-alice-keys"),
        "{}",
        text(&out).0
    );
    let out = check("dave");
    assert_eq!(
        text(&out).1,
        "error: record_input is decided for the session's owner: ask as alice\n"
    );
}
