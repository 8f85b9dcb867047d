//! Session processes: a login shell on a PTY, or a command with pipes, as the
//! session's account ([`crate::account`]): its groups and ids are taken between fork
//! and exec, after the signal reset, and the spawn fails if they cannot be.
//!
//! Each session has tasks that read its output into the driver's queue (bounded by a
//! semaphore of queue space, so a stalled client stalls the process, not the agent),
//! a task that writes input, and a supervisor that reports the exit status once all
//! output has been read.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use agent_core::session::{ChannelHandle, SessionHandle};
use agent_core::wire::{self, ErrorCode, Exit, Stream};
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};

use crate::account::{Credentials, Profile, RunAs};
use crate::pty::{self, Master};

/// Bytes of output a session may have queued in the agent, waiting for credit.
pub const QUEUE_SPACE: usize = 128 * 1024;
/// How often a terminal at end of input gets its EOF character again ...
const EOF_REPEAT: std::time::Duration = std::time::Duration::from_millis(250);
/// ... and how many times (10 s): enough for a shell to start, not so many that a
/// full-screen program in the foreground takes `^D` for ever.
const EOF_REPEATS: u32 = 40;
/// Largest single read of output: one full `Data` frame.
pub const CHUNK: usize = 32 * 1024 - 64;

/// What session tasks tell the driver. Channels and sessions are named by the
/// engine's handles: a message of one that ended is refused by the engine, never
/// applied to another that took its place.
#[derive(Debug)]
pub enum Msg {
    /// Output read from a process or connection (queue space already reserved).
    Output {
        /// The channel.
        channel: ChannelHandle,
        /// stdout or stderr.
        stream: Stream,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A connection's output ended (it sent FIN); all its output was sent before.
    OutputEnd {
        /// The channel.
        channel: ChannelHandle,
    },
    /// Input bytes were written out (credit may flow back).
    Consumed {
        /// The channel.
        channel: ChannelHandle,
        /// How many.
        n: usize,
    },
    /// A forward channel's connection attempt finished.
    Dialed {
        /// The channel.
        channel: ChannelHandle,
        /// The connection, or why there is none.
        result: Result<crate::forward::TcpChannel, (agent_core::wire::ErrorCode, String)>,
    },
    /// A forward channel's connection failed after it was established.
    ChannelFailed {
        /// The channel.
        channel: ChannelHandle,
        /// What happened.
        error: String,
    },
    /// The process ended and all its output was read.
    Exited {
        /// The session.
        session: SessionHandle,
        /// How it ended.
        exit: Exit,
    },
}

/// What the driver tells a session's input task.
#[derive(Debug)]
pub enum Input {
    /// Bytes for stdin (or the terminal).
    Data(Vec<u8>),
    /// No more input.
    Eof,
    /// New terminal size.
    Resize(u16, u16),
}

/// A running session's process, as seen by the driver.
#[derive(Debug)]
pub struct Process {
    /// The process group to signal.
    pub pgid: i32,
    /// Input for the process.
    pub input: mpsc::UnboundedSender<Input>,
    /// Queue space; the driver gives it back as output leaves the queue.
    pub space: Arc<Semaphore>,
}

impl Process {
    /// Send `signal` to the session's process group.
    pub fn signal(&self, signal: i32) {
        if let (Some(pid), Some(sig)) = (Pid::from_raw(self.pgid), Signal::from_named_raw(signal)) {
            let _ = rustix::process::kill_process_group(pid, sig);
        }
    }

    /// End the session: SIGHUP to the group, SIGKILL two seconds later. Output is no
    /// longer wanted: closing the queue space ends the readers, so the exit status
    /// is reported even if the process had filled its pipes.
    pub fn terminate(&self) {
        self.space.close();
        self.signal(Signal::HUP.as_raw());
        self.signal(Signal::CONT.as_raw());
        let pgid = self.pgid;
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            if let Some(pid) = Pid::from_raw(pgid) {
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
            }
        });
    }
}

/// What a shell or exec session runs, from its `Open`, once its account is resolved.
pub enum Start {
    /// A login shell on a terminal of this size.
    Shell {
        /// `TERM`.
        term: String,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// A command, run directly.
    Exec {
        /// The command and its arguments.
        args: Vec<OsString>,
    },
}

impl Start {
    /// An exec session's command from its `Open`'s argv (NUL-terminated strings):
    /// refused (`SPAWN`) without one.
    pub fn exec(argv: &[u8]) -> Result<Start, (ErrorCode, String)> {
        let args: Vec<OsString> = wire::argv_iter(argv)
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect();
        if !wire::argv_valid(argv) || args.is_empty() || args[0].is_empty() {
            return Err((ErrorCode::SPAWN, "exec needs a command".to_string()));
        }
        Ok(Start::Exec { args })
    }

    /// Start it as `run_as` (a shell with `profile`); `Err` says why not, for the
    /// session's `Reject`.
    pub fn spawn(
        self,
        session: SessionHandle,
        run_as: &RunAs,
        profile: &Profile,
        tx: mpsc::UnboundedSender<Msg>,
    ) -> Result<Process, (ErrorCode, String)> {
        match self {
            Start::Shell { term, cols, rows } => {
                spawn_shell(session, &term, cols, rows, run_as, profile, tx)
                    .map_err(|e| (ErrorCode::SPAWN, format!("cannot start a shell: {e}")))
            }
            Start::Exec { args } => {
                let name = args[0].to_string_lossy().into_owned();
                spawn_exec(session, args, run_as, tx)
                    .map_err(|e| (ErrorCode::SPAWN, format!("cannot run '{name}': {e}")))
            }
        }
    }
}

fn exit_of(status: io::Result<ExitStatus>) -> Exit {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(sig)) => Exit::Signal(sig as u8),
            _ => Exit::Code(-1),
        },
        Err(_) => Exit::Code(-1),
    }
}

/// In the child, before exec: undo what the agent's own start-up put on it. Only
/// async-signal-safe system calls: this runs between fork and exec.
fn prepare_child() -> io::Result<()> {
    reset_oom_score();
    reset_signals();
    Ok(())
}

/// Drop the OOM protection the agent's service gives itself (`OOMScoreAdjust`), so
/// a runaway session is killed before the agent is.
fn reset_oom_score() {
    use rustix::fs::{Mode, OFlags};
    if let Ok(fd) = rustix::fs::open(c"/proc/self/oom_score_adj", OFlags::WRONLY, Mode::empty()) {
        let _ = rustix::io::write(&fd, b"0");
    }
}

/// Every signal back to its default action, none blocked. Ignored signals and the
/// mask survive exec (POSIX `execve`), and a non-interactive shell starts `agent &`
/// with SIGINT and SIGQUIT ignored: without this, Ctrl-C would do nothing in the
/// shells of an agent started by a script.
///
/// Raw system calls, not the C library's `sigaction`, which refuses the two signals
/// it keeps for itself (32 and 33) that a parent may still have left ignored; in a
/// child about to exec, nothing of the C library's needs them any more.
fn reset_signals() {
    // The layout below is the kernel's generic one; MIPS, SPARC and Alpha differ.
    #[cfg(any(target_arch = "mips", target_arch = "mips64", target_arch = "sparc64"))]
    compile_error!("reset_signals: this architecture's struct sigaction differs");
    /// The kernel's `struct sigaction` (x86_64 and aarch64 alike).
    #[repr(C)]
    struct KernelSigaction {
        handler: libc::c_ulong,
        flags: libc::c_ulong,
        restorer: libc::c_ulong,
        mask: u64,
    }
    const SIG_DFL: libc::c_ulong = 0;
    let default = KernelSigaction {
        handler: SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    let none: u64 = 0;
    let set_size = std::mem::size_of::<u64>();
    // SAFETY: rt_sigaction and rt_sigprocmask are async-signal-safe system calls that
    // only read the local, fully initialised values given to them. 1..=64 is every
    // standard and real-time signal on Linux; SIGKILL and SIGSTOP refuse (EINVAL),
    // which is fine.
    unsafe {
        for sig in 1..=64 {
            let no_old = std::ptr::null_mut::<KernelSigaction>();
            let sig = sig as libc::c_long;
            libc::syscall(libc::SYS_rt_sigaction, sig, &default, no_old, set_size);
        }
        let no_old = std::ptr::null_mut::<u64>();
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none,
            no_old,
            set_size,
        );
    }
}

/// Reserve up to [`CHUNK`] bytes of queue space; returns the amount reserved.
pub(crate) async fn reserve(space: &Arc<Semaphore>) -> Option<usize> {
    space.acquire_many(CHUNK as u32).await.ok()?.forget();
    Some(CHUNK)
}

/// Start `argv` directly (no shell) in its own process group, with pipes, as
/// `run_as`: its login environment (no `TERM`), in its home.
pub fn spawn_exec(
    session: SessionHandle,
    argv: Vec<OsString>,
    run_as: &RunAs,
    tx: mpsc::UnboundedSender<Msg>,
) -> io::Result<Process> {
    let mut cmd = std::process::Command::new(&argv[0]);
    let lang = std::env::var("LANG").ok();
    // The program is looked up in the session's PATH (std searches the child's).
    cmd.args(&argv[1..])
        .env_clear()
        .envs(run_as.login_env(None, lang.as_deref()));
    let creds = run_as.credentials(&run_as.workdirs(None));
    spawn_piped(session, cmd, creds, tx)
}

/// Start `cmd` in its own process group with pipes: stdout and stderr apart, stdin
/// closed at `Input::Eof`; `creds` taken before exec.
fn spawn_piped(
    session: SessionHandle,
    mut cmd: std::process::Command,
    creds: Credentials,
    tx: mpsc::UnboundedSender<Msg>,
) -> io::Result<Process> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            prepare_child()?;
            creds.apply()
        });
    }
    let mut cmd = tokio::process::Command::from(cmd);
    let mut child = cmd.spawn()?;
    let pgid = child.id().unwrap_or(0) as i32;
    let space = Arc::new(Semaphore::new(QUEUE_SPACE));
    let (input, mut input_rx) = mpsc::unbounded_channel();

    let mut stdin = child.stdin.take();
    let txi = tx.clone();
    tokio::spawn(async move {
        while let Some(msg) = input_rx.recv().await {
            match msg {
                Input::Data(d) => {
                    if let Some(w) = stdin.as_mut() {
                        // A process that closed its stdin discards input; credit still flows.
                        if w.write_all(&d).await.is_err() {
                            stdin = None;
                        }
                    }
                    let _ = txi.send(Msg::Consumed {
                        channel: session.main(),
                        n: d.len(),
                    });
                }
                Input::Eof => stdin = None,
                Input::Resize(..) => {}
            }
        }
    });

    let readers: Vec<_> = [
        (
            child
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            Stream::OUT,
        ),
        (
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            Stream::ERR,
        ),
    ]
    .into_iter()
    .filter_map(|(r, stream)| r.map(|r| (r, stream)))
    .map(|(mut r, stream)| {
        let space = space.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let Some(reserved) = reserve(&space).await else {
                    break;
                };
                let n = r.read(&mut buf[..reserved]).await.unwrap_or(0);
                space.add_permits(reserved - n);
                if n == 0 {
                    break;
                }
                let _ = tx.send(Msg::Output {
                    channel: session.main(),
                    stream,
                    data: buf[..n].to_vec(),
                });
            }
        })
    })
    .collect();

    tokio::spawn(async move {
        let status = child.wait().await;
        // Like ssh, wait for end-of-file on both pipes: all output reaches the user.
        for r in readers {
            let _ = r.await;
        }
        let _ = tx.send(Msg::Exited {
            session,
            exit: exit_of(status),
        });
    });
    Ok(Process { pgid, input, space })
}

/// The script a shell runs for a profile's commands: each on its own line (one that
/// fails does not stop the next), then the login shell in the script's place (`$0` is
/// the shell's path; `-l` makes it a login shell in bash, dash, busybox and zsh).
pub fn profile_script(run: &[String]) -> String {
    let mut script = String::new();
    for cmd in run {
        script.push_str(cmd);
        script.push('\n');
    }
    script.push_str("exec \"$0\" -l");
    script
}

/// The account's login shell as a login shell (`-bash`), with a clean login
/// environment (`TERM` only when it has a terminal) and the profile's variables, and
/// the credentials that put it in the profile's directory or the home. With profile
/// commands, the shell first runs them (`bash -c SCRIPT /bin/bash`), then replaces
/// itself with the login shell.
fn login_command(
    run_as: &RunAs,
    term: Option<&str>,
    profile: &Profile,
) -> (std::process::Command, Credentials) {
    let shell = &run_as.shell;
    let name = std::path::Path::new(shell)
        .file_name()
        .map(|n| n.to_os_string().into_vec())
        .unwrap_or_else(|| b"sh".to_vec());
    let mut cmd = std::process::Command::new(shell);
    if profile.run.is_empty() {
        let mut arg0 = b"-".to_vec();
        arg0.extend(name);
        cmd.arg0(OsString::from_vec(arg0));
    } else {
        cmd.arg0(OsString::from_vec(name))
            .arg("-c")
            .arg(profile_script(&profile.run))
            .arg(shell);
    }
    let lang = std::env::var("LANG").ok();
    cmd.env_clear()
        .envs(run_as.shell_env(term, lang.as_deref(), profile));
    let creds = run_as.credentials(&run_as.workdirs(profile.dir.as_deref()));
    (cmd, creds)
}

/// Give the terminal to the account (owner, group `tty` where there is one, mode
/// 0620), as `login` does, so that `tty`, `stty`, `mesg` and job control work.
fn give_terminal(slave: &std::os::fd::OwnedFd, uid: u32) -> io::Result<()> {
    use rustix::fs::{Gid, Mode, Uid};
    let tty = crate::passwd::group_id("tty").map(Gid::from_raw);
    rustix::fs::fchown(slave, Some(Uid::from_raw(uid)), tty)?;
    rustix::fs::fchmod(slave, Mode::from_raw_mode(0o620))?;
    Ok(())
}

/// Start the account's login shell on a new PTY of `cols` x `rows`, or on pipes if
/// both are 0 (`Kind::PIPE_SHELL`), with the shell profile applied.
pub fn spawn_shell(
    session: SessionHandle,
    term: &str,
    cols: u16,
    rows: u16,
    run_as: &RunAs,
    profile: &Profile,
    tx: mpsc::UnboundedSender<Msg>,
) -> io::Result<Process> {
    if (cols, rows) == (0, 0) {
        let (cmd, creds) = login_command(run_as, None, profile);
        return spawn_piped(session, cmd, creds, tx);
    }
    let (master, slave) = pty::open(cols, rows)?;
    if run_as.switch {
        give_terminal(&slave, run_as.uid)?;
    }
    let (mut std_cmd, creds) = login_command(run_as, Some(term), profile);
    std_cmd
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        std_cmd.pre_exec(move || {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
            prepare_child()?;
            creds.apply()
        });
    }
    let mut cmd = tokio::process::Command::from(std_cmd);
    let mut child = cmd.spawn()?;
    drop(cmd); // closes our copies of the slave, so EOF comes when the shell exits
    let pgid = child.id().unwrap_or(0) as i32;
    let master = Arc::new(Master::new(master)?);
    let space = Arc::new(Semaphore::new(QUEUE_SPACE));
    let (input, mut input_rx) = mpsc::unbounded_channel();

    let m = master.clone();
    let txi = tx.clone();
    tokio::spawn(async move {
        // Whether the last input left a line unfinished (for the EOF below).
        let mut mid_line = false;
        // Set at end of input: the EOF character is sent again at each tick, a
        // bounded number of times, never waiting for room.
        let mut at_eof: Option<(tokio::time::Interval, u32)> = None;
        loop {
            let msg = match at_eof.as_mut() {
                Some((tick, left)) if *left > 0 => tokio::select! {
                    m = input_rx.recv() => m,
                    _ = tick.tick() => {
                        *left -= 1;
                        let _ = m.try_write(&m.eof_sequence(false));
                        continue;
                    }
                },
                _ => input_rx.recv().await,
            };
            let Some(msg) = msg else { break };
            match msg {
                Input::Data(d) => {
                    if let Some(&last) = d.last() {
                        mid_line = !matches!(last, b'\n' | b'\r');
                    }
                    let _ = m.write_all(&d).await;
                    let _ = txi.send(Msg::Consumed {
                        channel: session.main(),
                        n: d.len(),
                    });
                }
                // A terminal has no half-close: send its end-of-file character. Unlike
                // a pipe's, a terminal's end of file is seen by one read only (and is
                // lost if it comes before the program switched the terminal out of
                // canonical mode, as a shell does at start), so it is repeated for a
                // while: the reads that follow see end of input too.
                Input::Eof => {
                    let eof = m.eof_sequence(mid_line);
                    let _ = tokio::time::timeout(EOF_REPEAT, m.write_all(&eof)).await;
                    let mut tick = tokio::time::interval(EOF_REPEAT);
                    tick.reset();
                    at_eof = Some((tick, EOF_REPEATS));
                }
                Input::Resize(c, r) => {
                    let _ = m.resize(c, r);
                }
            }
        }
    });

    let (exited_tx, mut exited_rx) = tokio::sync::watch::channel(false);
    let m = master.clone();
    let sp = space.clone();
    let txr = tx.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let Some(reserved) = reserve(&sp).await else {
                break;
            };
            let n = if *exited_rx.borrow() {
                // The shell is gone: drain what is buffered, then stop even if a
                // background job still holds the terminal open.
                m.try_read(&mut buf[..reserved]).ok().flatten().unwrap_or(0)
            } else {
                tokio::select! {
                    r = m.read(&mut buf[..reserved]) => r.unwrap_or(0),
                    _ = exited_rx.changed() => {
                        sp.add_permits(reserved);
                        continue;
                    }
                }
            };
            sp.add_permits(reserved - n);
            if n == 0 {
                break;
            }
            let _ = txr.send(Msg::Output {
                channel: session.main(),
                stream: Stream::OUT,
                data: buf[..n].to_vec(),
            });
        }
    });

    tokio::spawn(async move {
        let status = child.wait().await;
        let _ = exited_tx.send(true);
        let _ = reader.await;
        let _ = tx.send(Msg::Exited {
            session,
            exit: exit_of(status),
        });
    });
    Ok(Process { pgid, input, space })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_commands_run_in_order_then_the_login_shell_takes_over() {
        let run = vec![
            "echo first".to_string(),
            "false".to_string(),
            "cd / && export FROM_PROFILE=yes".to_string(),
        ];
        let script = profile_script(&run);
        assert_eq!(
            script,
            "echo first\nfalse\ncd / && export FROM_PROFILE=yes\nexec \"$0\" -l"
        );
        // As the agent starts it: `sh -c SCRIPT /bin/sh`, the session's input on stdin.
        let mut child = std::process::Command::new("/bin/sh")
            .arg0("sh")
            .args(["-c", &script, "/bin/sh"])
            .env_clear()
            .env("HOME", "/nonexistent")
            .env("PATH", crate::account::USER_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"echo \"login-$((6*7)) $FROM_PROFILE $(pwd)\"\n")
            .unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.starts_with("first\n"), "{text}");
        assert!(text.ends_with("login-42 yes /\n"), "{text}");
    }
}
