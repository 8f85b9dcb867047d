//! `sesame shell` driven through a real PTY on the test side.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::fs::OFlags;
use tests::{text, Env};

/// Read from the master until `needle` appears (or panic after 20 s).
fn read_until(master: &mut std::fs::File, seen: &mut Vec<u8>, needle: &str) {
    tests::pty::read_until(master, seen, needle, Duration::from_secs(20));
}

#[test]
fn interactive_shell_on_a_pty_with_size_control_keys_and_exit_code() {
    let env = Env::start();
    let (master, slave) = tests::pty::pair(100, 30);
    let before = rustix::termios::tcgetattr(&slave).unwrap();
    let mut child = env.shell_on(&slave);
    let flags = rustix::fs::fcntl_getfl(&master).unwrap();
    rustix::fs::fcntl_setfl(&master, flags | OFlags::NONBLOCK).unwrap();
    let mut m = std::fs::File::from(master);
    let mut seen = Vec::new();

    // The remote shell sees our terminal size and a real TTY.
    m.write_all(b"stty size; tty; echo $((6*7))-done\r")
        .unwrap();
    read_until(&mut m, &mut seen, "42-done");
    let out = String::from_utf8_lossy(&seen).into_owned();
    assert!(out.contains("30 100"), "remote size: {out}");
    assert!(out.contains("/dev/pts/"), "remote tty: {out}");

    // Ctrl-C reaches the remote foreground job and does not end the session.
    seen.clear();
    // (^C once `sleep` runs, a duration of this run's own so that no leftover is taken
    // for it; read_until gives up long before it would end by itself.)
    let secs = format!("29.{}", std::process::id());
    m.write_all(format!("sleep {secs}\r").as_bytes()).unwrap();
    tests::wait_for_process(format!("sleep\0{secs}\0").as_bytes());
    m.write_all(&[3]).unwrap();
    m.write_all(b"echo after-$((1+1))\r").unwrap();
    read_until(&mut m, &mut seen, "after-2");

    m.write_all(b"exit 5\r").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "sesame shell did not exit");
        let _ = read_until_quiet(&mut m);
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(5));
    // The local terminal is back in its original mode.
    let after = rustix::termios::tcgetattr(slave.as_fd()).unwrap();
    assert_eq!(before.local_modes, after.local_modes);
    assert_eq!(before.input_modes, after.input_modes);
}

fn read_until_quiet(m: &mut std::fs::File) -> usize {
    let mut buf = [0u8; 4096];
    m.read(&mut buf).unwrap_or(0)
}

#[test]
fn shell_works_when_stdin_is_not_a_tty() {
    let env = Env::start();
    let out = env.run(&["shell", "gw-01"], b"echo piped-$((2*21))\nexit 4\n");
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("piped-42"), "{stdout} {stderr}");
    assert_eq!(out.status.code(), Some(4));
}

/// A shell whose stdin is at end of input and not a terminal (a cron job, a script's
/// `< /dev/null`) once stayed open forever. As with OpenSSH, it gets no terminal
/// unless asked, so end of input reaches it and it exits; stderr stays apart.
#[test]
fn a_shell_without_a_terminal_ends_at_end_of_input() {
    let env = Env::start();
    let mut child = env
        .sesame()
        .args(["shell", "gw-01"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(&mut child, Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(0),
        "the shell did not end at end of input"
    );

    let out = env.run(
        &["shell", "gw-01"],
        b"tty || echo no-tty; echo to-err >&2\n",
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout, "not a tty\nno-tty\n", "{stderr}");
    assert_eq!(stderr, "to-err\n");
    assert_eq!(out.status.code(), Some(0));
}

/// `-t` asks for a terminal anyway; end of input is then the terminal's EOF
/// character, seen by the programs that read after it (here `cat`, then the shell),
/// and the shell exits; an unfinished last line still runs.
#[test]
fn a_forced_terminal_gets_end_of_input_as_its_eof_character() {
    let env = Env::start();
    for input in [
        &b""[..],
        b"echo forced-$((6*7))\n",
        b"cat; echo after-cat\n",
        b"echo unfinished-$((2+3))",
    ] {
        let mut child = env
            .sesame()
            .args(["shell", "-t", "gw-01"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let status = wait_for(&mut child, Duration::from_secs(20));
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        assert_eq!(status.code(), Some(0), "{stdout}");
        if input.starts_with(b"echo forced") {
            assert!(stdout.contains("forced-42"), "{stdout}");
        }
        if input.starts_with(b"cat") {
            assert!(stdout.contains("after-cat\r\n"), "{stdout}");
        }
        if input.starts_with(b"echo unfinished") {
            // The last line runs, as from a pipe, before the shell sees end of input.
            assert!(stdout.contains("unfinished-5\r\n"), "{stdout}");
        }
    }
}

/// Wait for `child` to exit, killing it (and failing) after `limit`.
fn wait_for(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let mut out = String::new();
            if let Some(mut o) = child.stdout.take() {
                let _ = o.read_to_string(&mut out);
            }
            panic!("still running after {limit:?}; its output: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
