// The Linux agent (`sesame-agent`) against a hostile or careless host: the way it
// was started, local users who own files it touches, forwarding destinations that
// dress a denied address up as another.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use agent_core::wire::{Bytes, ErrorCode, Exit, Frame, Stream};
use futures_util::{SinkExt, StreamExt};
use rustix::fs::{Mode, OFlags};
use tests::pty::read_until;
use tests::{bin, start_agent_with, text, ws_message, Env};
use tokio_tungstenite::tungstenite::Message;

/// An agent started as a script's background job: `sh` starts `agent &` with SIGINT
/// and SIGQUIT ignored (POSIX, "Shell Command Language" 2.11), which `trap ""` does
/// here on purpose.
fn start_with_signals_ignored() -> Env {
    Env::start_launch(&[], "gw-01", |dir, port, code| {
        let program = [
            PathBuf::from("/bin/sh"),
            "-c".into(),
            "trap '' INT QUIT; exec \"$0\" \"$@\"".into(),
            bin("sesame-agent"),
        ];
        start_agent_with(&program, dir, "agent", port, Some(code))
    })
}

/// A signal set of `/proc/PID/status` (`SigIgn`, `SigBlk`): bit n-1 is signal n.
fn sig_field(status: &[u8], name: &str) -> Option<u64> {
    String::from_utf8_lossy(status)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(":\t"))
        .and_then(|h| u64::from_str_radix(h, 16).ok())
}

#[test]
fn sessions_get_default_signals_even_if_the_agent_was_started_ignoring_them() {
    let env = start_with_signals_ignored();
    // The premise: the agent itself ignores SIGINT (2) and SIGQUIT (3).
    let status = std::fs::read_to_string(format!("/proc/{}/status", env.agent.child.id()))
        .unwrap_or_default();
    let ignored = sig_field(status.as_bytes(), "SigIgn").unwrap_or(0);
    assert_eq!(ignored & 0b110, 0b110, "{status}");

    // Nothing ignored, nothing blocked: not even 32 and 33, which the C library keeps
    // for itself (and this machine's test runner leaves ignored).
    let out = env.run(&["exec", "gw-01", "--", "cat", "/proc/self/status"], b"");
    let (blocked, ignored) = (
        sig_field(&out.stdout, "SigBlk"),
        sig_field(&out.stdout, "SigIgn"),
    );
    assert_eq!(blocked, Some(0), "{}", text(&out).0);
    assert_eq!(ignored, Some(0), "{}", text(&out).0);

    // Ctrl-C in a shell ends the foreground job.
    let (master, slave) = tests::pty::pair(80, 24);
    let mut child = env.shell_on(&slave);
    drop(slave);
    let flags = rustix::fs::fcntl_getfl(&master).unwrap();
    rustix::fs::fcntl_setfl(&master, flags | OFlags::NONBLOCK).unwrap();
    let mut m = std::fs::File::from(master);
    let mut seen = Vec::new();
    m.write_all(b"echo ready-$((2*3))\r").unwrap();
    read_until(&mut m, &mut seen, "ready-6", Duration::from_secs(20));
    // (A duration of this run's own, so that no leftover `sleep` is taken for it.)
    let secs = format!("100.{}", std::process::id());
    m.write_all(format!("sleep {secs}\r").as_bytes()).unwrap();
    tests::wait_for_process(format!("sleep\0{secs}\0").as_bytes());
    m.write_all(&[3]).unwrap();
    m.write_all(b"echo after-$((1+1))\r").unwrap();
    // Without default signals, `sleep` shrugs Ctrl-C off and `echo` waits 100 s.
    read_until(&mut m, &mut seen, "after-2", Duration::from_secs(10));
    let _ = child.kill();
    let _ = child.wait();
}

/// A listener on 127.0.0.1 that greets every connection with `reached` and closes it.
fn greeter() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(b"reached");
        }
    });
    port
}

/// What a connection to local port `port` receives before it is closed.
fn receive(port: u16) -> Vec<u8> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    got
}

#[test]
fn other_spellings_of_a_denied_address_are_denied_too() {
    let port = greeter();
    let agent = [
        bin("sesame-agent"),
        "--deny-dest".into(),
        "127.0.0.0/8".into(),
    ];
    let env = Env::start_custom(&[], &agent);
    // Both reach 127.0.0.1 when connected to. The relay hands the agent the
    // canonical form of an address (the IPv4-mapped one as IPv4), which the agent
    // names in its refusal.
    let spellings = [("0.0.0.0", "0.0.0.0"), ("[::ffff:127.0.0.1]", "127.0.0.1")];
    let specs: Vec<String> = spellings
        .iter()
        .map(|(h, _)| format!("0:{h}:{port}"))
        .collect();
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let fwd = env.forward(&specs);
    for ((_, host), local) in spellings.iter().zip(&fwd.ports) {
        assert_eq!(
            String::from_utf8_lossy(&receive(*local)),
            "",
            "{host}:{port} reached the denied service"
        );
        let line = format!("destination {host}:{port} is denied by the agent's forwarding policy");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fwd.proc.log().contains(&line) {
            assert!(
                Instant::now() < deadline,
                "no {line:?} in:\n{}",
                fwd.proc.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Run `cmd`, killing it if it has not finished within `secs` seconds.
fn run_within(mut cmd: Command, secs: u64) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let args: Vec<_> = cmd.get_args().collect();
            panic!("sesame {args:?} did not finish within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The user this test runs as (the agent pushes keys for it).
fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_fifo_for_authorized_keys_neither_hangs_nor_silences_the_agent() {
    let me = whoami();
    let fifo = std::cell::RefCell::new(PathBuf::new());
    let env = Env::start_launch(&[], "gw-01", |dir, port, code| {
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        let path = keys.join(&me);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // Listed as a file the agent once wrote: it is swept at start-up, before
        // the agent connects.
        std::fs::create_dir_all(dir.join("agent")).unwrap();
        std::fs::write(
            dir.join("agent/ssh-key-files"),
            format!("{}\n", path.display()),
        )
        .unwrap();
        *fifo.borrow_mut() = path;
        let program = [
            bin("sesame-agent"),
            "--authorized-keys".into(),
            format!("{}/%u", keys.display()).into(),
        ];
        start_agent_with(&program, dir, "agent", port, Some(code))
    });
    let fifo = fifo.into_inner();

    let key = env.dir.0.join("id.pub");
    std::fs::write(&key, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA me@test\n").unwrap();
    let mut push = env.sesame();
    push.args(["ssh-key", "push", "gw-01", "--user", &me, "--ttl", "60"])
        .arg(&key);
    let out = run_within(push, 20);
    assert_eq!(
        text(&out).1,
        format!(
            "error: gw-01: {}: refusing: authorized_keys is a FIFO, not a regular file\n",
            fifo.display()
        )
    );
    assert_eq!(out.status.code(), Some(255));

    // The agent still serves.
    let mut exec = env.sesame();
    exec.args(["exec", "gw-01", "--", "echo", "still-here"]);
    let out = run_within(exec, 20);
    assert_eq!(text(&out).0, "still-here\n", "{}", text(&out).1);
}

/// Read until the session's `Close`: (exit, reason).
async fn close_of(ws: &mut cli::client::Stream) -> (Exit, String) {
    let read = async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Binary(b) = m {
                if let Ok(Frame::Close { exit, reason, .. }) = Frame::decode(&b) {
                    return (exit, reason.to_string());
                }
            }
        }
        panic!("stream ended without Close");
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("no Close within 20 s")
}

/// A session the agent ends because the client broke the protocol closes as
/// `Aborted(code)` with the reason (protocol.md, sections 5 and 9), not as whatever
/// its process did when it was stopped (SIGHUP).
#[test]
fn sessions_the_agent_aborts_close_as_aborted_with_the_reason() {
    let env = Env::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // A channel on an exec session.
        let (mut ws, _) = env.raw_exec(b"sleep\x0060\x00", 65536).await;
        let open = Frame::ChannelOpen {
            sid: 1,
            ch: 1,
            window: 1024,
            host: "127.0.0.1",
            port: 22,
        };
        ws.send(ws_message(open)).await.unwrap();
        let (exit, reason) = close_of(&mut ws).await;
        assert_eq!(exit, Exit::Aborted(ErrorCode::PROTOCOL), "{reason}");
        // "session N" is the agent's number for it, which the client does not know.
        assert!(
            reason.starts_with("protocol violation: session ")
                && reason.ends_with(": unknown channel 1"),
            "{reason}"
        );

        // More data than the agent's credit: `sleep` reads none of it, so past the
        // pipe's buffer (64 KiB) no credit comes back.
        let (mut ws, window) = env.raw_exec(b"sleep\x0060\x00", 65536).await;
        let chunk = vec![b'x'; 16 * 1024];
        for _ in 0..(window as usize + (1 << 20)) / chunk.len() {
            let data = Frame::Data {
                sid: 1,
                ch: 0,
                stream: Stream::OUT,
                data: Bytes(&chunk),
            };
            if ws.send(ws_message(data)).await.is_err() {
                break; // the relay hung up: the session ended
            }
        }
        let (exit, reason) = close_of(&mut ws).await;
        assert_eq!(exit, Exit::Aborted(ErrorCode::FLOW_CONTROL), "{reason}");
        assert!(
            reason.starts_with("protocol violation: session ")
                && reason.ends_with(": peer sent more data than its credit"),
            "{reason}"
        );
    });
    // Only those sessions ended.
    let out = env.run(&["exec", "gw-01", "--", "echo", "fine"], b"");
    assert_eq!(text(&out).0, "fine\n", "{}", text(&out).1);
}
