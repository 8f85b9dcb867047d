//! # tests: end-to-end harness for Sesame
//!
//! Starts the real `sesame-relay`, `sesame-agent` and `sesame` binaries on loopback
//! (port 0, temporary directories) and tears everything down on drop. Used by the
//! scenarios under `tests/tests/` and by the `bench` binary.
//!
//! The binaries must be built first (`cargo build --workspace --bins`, same profile):
//! they are looked up next to the test executable.

pub mod http;
pub mod proxy;
pub mod pty;
pub mod sshd;
pub mod transfer;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Directory of the workspace's built binaries (same profile as this executable).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary; panics with the command to run if it is missing.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (same profile)",
        p.display()
    );
    p
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Make one named after `tag`.
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("sesame-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Proc {
    /// Contents of its stderr log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Kill it now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stop a client as a user does (SIGTERM): it ends its session first (a
    /// client killed outright looks like a cut, and its session is held).
    pub fn stop(&mut self) {
        stop_client(&mut self.child);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running relay.
pub struct Relay {
    /// The process.
    pub proc: Proc,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// Start `sesame-relay serve` on `127.0.0.1:port` (0 picks one) with extra flags.
pub fn start_relay(data: &Path, port: u16, extra: &[&str]) -> Relay {
    start_relay_via(&[], data, port, extra)
}

/// Start the relay as [`start_relay`] does, through `wrapper` (a program and its
/// arguments that end up exec'ing the relay's command line given after them, such as
/// `sh -c 'ulimit -n 256 && exec "$0" "$@"'`).
pub fn start_relay_via(wrapper: &[&str], data: &Path, port: u16, extra: &[&str]) -> Relay {
    std::fs::create_dir_all(data).unwrap();
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log = data.join(format!("relay-{n}.log"));
    let relay = bin("sesame-relay");
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(&relay);
            c
        }
        None => Command::new(&relay),
    };
    let mut child = cmd
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn sesame-relay");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "relay did not report its address: {line:?} {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    Relay {
        proc: Proc { child, log },
        port,
    }
}

static LIMITS_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A relay, one agent and one admin user, ready for sessions.
pub struct Env {
    /// Temporary files.
    pub dir: TempDir,
    /// The relay.
    pub relay: Relay,
    /// The agent.
    pub agent: Proc,
    /// The admin's API key.
    pub api_key: String,
    /// Agent name.
    pub target: String,
}

/// Run a relay admin command and return its one line of output.
pub fn admin(data: &Path, args: &[&str]) -> String {
    let out = Command::new(bin("sesame-relay"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sesame-relay {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Boot the QEMU board with `run.sh`, provisioned with `code` and pinning `ca`;
/// its UART log (and QEMU's messages) go to `DIR/qemu.log`.
pub fn boot_device(dir: &Path, port: u16, code: &str, ca: &Path) -> Proc {
    boot_device_with(dir, port, code, ca, &[])
}

/// [`boot_device`] with more `run.sh` options (forwarding rules, `--guestfwd`).
pub fn boot_device_with(dir: &Path, port: u16, code: &str, ca: &Path, extra: &[String]) -> Proc {
    let run = Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards/qemu-mps2-an386/run.sh");
    let log = dir.join("qemu.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(run)
        .args(["--relay", &format!("127.0.0.1:{port}"), "--activate", code])
        .arg("--ca")
        .arg(ca)
        .arg("--data-dir")
        .arg(dir.join("relay"))
        .arg("--image")
        .arg(dir.join("device.img"))
        .args(extra)
        .env("SESAME_RELAY_BIN", bin("sesame-relay"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn run.sh");
    Proc { child, log }
}

/// Read a child's output on a thread: the count of bytes read so far, and all of
/// them once it ends.
pub fn read_counting<R: std::io::Read + Send + 'static>(
    mut out: R,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::thread::JoinHandle<Vec<u8>>,
) {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            c.store(all.len(), std::sync::atomic::Ordering::Relaxed);
        }
        all
    });
    (count, reader)
}

/// Wait for a child whose stdout `reader` ([`read_counting`]) reads: its status,
/// its stdout and its stderr.
pub fn finish_child(
    child: &mut Child,
    reader: std::thread::JoinHandle<Vec<u8>>,
) -> (std::process::ExitStatus, Vec<u8>, String) {
    use std::io::Read;
    let status = child.wait().unwrap();
    let out = reader.join().unwrap();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status, out, err)
}

/// Wait (polling, up to `secs` seconds) until `ok`; panics naming `what` otherwise.
/// Wait up to `limit` for `child` to exit; its status, or `None` if it still runs.
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn wait_until(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// End a `sesame` session client as a user does (SIGTERM: it closes its session);
/// killed outright after 10 s. A client killed at once (SIGKILL) is a client whose
/// network went away: its resumable session waits for it for the resume window.
pub fn stop_client(child: &mut Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Start `sesame-agent` against the relay.
pub fn start_agent(dir: &Path, state: &str, port: u16, code: Option<&str>) -> Proc {
    start_agent_with(&[bin("sesame-agent")], dir, state, port, code)
}

/// Start an agent given as a program and its leading arguments (a static build, or
/// an emulator followed by the binary) against the relay.
pub fn start_agent_with(
    program: &[PathBuf],
    dir: &Path,
    state: &str,
    port: u16,
    code: Option<&str>,
) -> Proc {
    start_agent_at(
        program,
        dir,
        state,
        &format!("wss://127.0.0.1:{port}"),
        code,
    )
}

/// [`start_agent_with`] against the relay at `url` (`wss://HOST:PORT`).
pub fn start_agent_at(
    program: &[PathBuf],
    dir: &Path,
    state: &str,
    url: &str,
    code: Option<&str>,
) -> Proc {
    let log = dir.join(format!("{state}.log"));
    let mut cmd = Command::new(&program[0]);
    cmd.args(&program[1..]);
    cmd.arg("--relay")
        .arg(url)
        .arg("--ca")
        .arg(dir.join("relay/tls/ca.pem"))
        .arg("--state-dir")
        .arg(dir.join(state))
        .env("RUST_LOG", "info,agent_linux=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if let Some(code) = code {
        cmd.arg("--activate").arg(code);
    }
    Proc {
        child: cmd.spawn().expect("spawn sesame-agent"),
        log,
    }
}

impl Env {
    /// Start everything with a relay limits file of `toml` text.
    pub fn start_with_limits(toml: &str) -> Env {
        let cfg = std::env::temp_dir().join(format!(
            "sesame-limits-{}-{}.toml",
            std::process::id(),
            LIMITS_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&cfg, toml).unwrap();
        let env = Env::start_with(&["--config", cfg.to_str().unwrap()]);
        let _ = std::fs::remove_file(&cfg);
        env
    }

    /// Start everything with extra relay flags and wait until the agent is online.
    pub fn start_with(relay_flags: &[&str]) -> Env {
        Env::start_custom(relay_flags, &[bin("sesame-agent")])
    }

    /// Start everything with the agent run as `agent` (program and leading arguments).
    /// Unless `relay_flags` has a `--config`, the relay runs without a rate limit so
    /// that functional tests are not paced at 200 kbit/s (the limit tests set their own).
    pub fn start_custom(relay_flags: &[&str], agent: &[PathBuf]) -> Env {
        Env::start_launch(relay_flags, "gw-01", |dir, port, code| {
            start_agent_with(agent, dir, "agent", port, Some(code))
        })
    }

    /// Start a relay and an admin user, register agent `name`, start it with
    /// `launch(temp dir, relay port, activation code)`, and wait until it is online.
    pub fn start_launch(
        relay_flags: &[&str],
        name: &str,
        launch: impl FnOnce(&Path, u16, &str) -> Proc,
    ) -> Env {
        let dir = TempDir::new("e2e");
        let data = dir.0.join("relay");
        let mut flags: Vec<String> = relay_flags.iter().map(|s| s.to_string()).collect();
        if !relay_flags.contains(&"--config") {
            let cfg = dir.0.join("unlimited.toml");
            std::fs::write(&cfg, "[limits]\nrate = \"unlimited\"\n").unwrap();
            flags.extend(["--config".to_string(), cfg.display().to_string()]);
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let relay = start_relay(&data, 0, &flags);
        let code = admin(&data, &["agent", "add", name, "--tag", "site=lab"]);
        let api_key = admin(&data, &["user", "add", "admin", "--admin"]);
        let agent = launch(&dir.0, relay.port, &code);
        let env = Env {
            dir,
            relay,
            agent,
            api_key,
            target: name.into(),
        };
        env.wait_online(name, true);
        env
    }

    /// Everything with the QEMU board (`boards/qemu-mps2-an386/run.sh`) as agent `dev-1`.
    pub fn start_device() -> Env {
        Env::start_device_with(&[])
    }

    /// [`Env::start_device`] with more `run.sh` options.
    pub fn start_device_with(run_sh: &[String]) -> Env {
        Env::start_launch(&[], "dev-1", |dir, port, code| {
            boot_device_with(dir, port, code, &dir.join("relay/tls/ca.pem"), run_sh)
        })
    }

    /// Start everything with default relay flags.
    pub fn start() -> Env {
        Env::start_with(&[])
    }

    /// The relay's data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.0.join("relay")
    }

    /// A `sesame` command configured for this relay (through the environment).
    pub fn sesame(&self) -> Command {
        self.command(bin("sesame"))
    }

    /// Any program with this relay's `SESAME_*` settings in its environment (ssh's
    /// ProxyCommand inherits them).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env(
            "SESAME_RELAY",
            format!("https://127.0.0.1:{}", self.relay.port),
        )
        .env("SESAME_API_KEY", &self.api_key)
        .env("SESAME_CA", self.data().join("tls/ca.pem"))
        .env("HOME", &self.dir.0)
        .env_remove("XDG_CONFIG_HOME");
        c
    }

    /// `sesame exec gw-01 -- argv...` running, stdin closed, stdout and stderr
    /// piped.
    pub fn spawn_exec(&self, argv: &[&str]) -> Child {
        self.sesame()
            .args(["exec", &self.target, "--"])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Run `sesame args...` with `stdin` and collect its output.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut sesame = self.sesame();
        sesame.args(args);
        run_with(sesame, stdin)
    }

    /// The relay's view of the agents (`sesame ls --json`), or why it is not known.
    pub fn try_targets(&self) -> Result<Vec<serde_json::Value>, String> {
        let out = self.run(&["ls", "--json"], b"");
        if !out.status.success() {
            return Err(format!(
                "sesame ls failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("sesame ls --json: {e}"))
    }

    /// The relay's view of the agents; panics if `sesame ls` fails.
    pub fn targets(&self) -> Vec<serde_json::Value> {
        self.try_targets().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Wait (up to 20 s) until `name` is online (or offline). `sesame ls` may fail
    /// meanwhile (a relay starting); the last failure is reported if it never works.
    pub fn wait_online(&self, name: &str, online: bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen = self.try_targets();
            if let Ok(targets) = &seen {
                if targets
                    .iter()
                    .any(|t| t["name"] == name && t["online"] == online)
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{name} never became {} (last listing: {seen:?}); agent log:\n{}\nrelay log:\n{}",
                if online { "online" } else { "offline" },
                self.agent.log(),
                self.relay.proc.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sessions the relay counts on the agent now; panics if the relay cannot say.
    pub fn sessions(&self) -> u64 {
        let targets = self.targets();
        let t = targets
            .iter()
            .find(|t| t["name"] == self.target.as_str())
            .unwrap_or_else(|| panic!("{} is not listed: {targets:?}", self.target));
        t["sessions"]
            .as_u64()
            .unwrap_or_else(|| panic!("no session count for {}: {t}", self.target))
    }

    /// Wait (up to `secs` seconds) until the relay counts exactly `n` sessions on the
    /// agent; panics with the agent's log otherwise.
    pub fn wait_sessions(&self, n: u64, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.sessions() != n {
            assert!(
                Instant::now() < deadline,
                "expected {n} sessions, the relay counts {}; agent log:\n{}",
                self.sessions(),
                self.agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Start `n` background `sesame exec gw-01 -- ARGS` clients and wait until the
    /// relay counts them all; killing them ends their sessions.
    pub fn hold_sessions(&self, n: usize, args: &[&str]) -> Vec<Child> {
        let before = self.sessions();
        let held = (0..n)
            .map(|_| {
                self.sesame()
                    .args(["exec", "gw-01", "--"])
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        self.wait_sessions(before + n as u64, 60);
        held
    }

    /// An exec session of `argv` (a NUL after each argument) on the agent, over a raw
    /// stream that a test can then use as a client that breaks the protocol: the
    /// stream once the agent accepted, and the agent's window.
    pub async fn raw_exec(&self, argv: &[u8], window: u32) -> (cli::client::Stream, u32) {
        use agent_core::wire::{Bytes, Frame, Kind};
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let client = self.client();
        // The relay checks that the stream's argv is the one it authorised.
        let command: Vec<String> = agent_core::wire::argv_iter(argv)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let body = serde_json::json!({"target": self.target, "kind": "exec", "command": command});
        let created: serde_json::Value = client
            .call("POST", "/v1/sessions", Some(body))
            .await
            .unwrap();
        let mut ws = client
            .open_stream(
                created["stream_url"].as_str().unwrap(),
                created["token"].as_str().unwrap(),
            )
            .await
            .unwrap();
        let open = Frame::Open {
            sid: 1,
            window,
            kind: Kind::Exec { argv: Bytes(argv) },
            account: "",
        };
        ws.send(ws_message(open)).await.unwrap();
        loop {
            let Some(Ok(Message::Binary(b))) = ws.next().await else {
                panic!("the stream ended before the agent accepted");
            };
            match Frame::decode(&b).unwrap() {
                Frame::Accept { window, .. } => return (ws, window),
                f => assert!(matches!(f, Frame::Credit { .. }), "before Accept: {f:?}"),
            }
        }
    }

    /// `sesame shell TARGET` run by a user at the terminal whose slave side is
    /// `slave` (`TERM=xterm`).
    pub fn shell_on(&self, slave: &std::os::fd::OwnedFd) -> Child {
        let end = || Stdio::from(slave.try_clone().unwrap());
        self.sesame()
            .args(["shell", &self.target])
            .env("TERM", "xterm")
            .stdin(end())
            .stdout(end())
            .stderr(end())
            .spawn()
            .unwrap()
    }

    /// A client library handle on this relay (for raw API and stream tests).
    pub fn client(&self) -> cli::client::Relay {
        let config = cli::config::Config::load(
            Some(format!("https://127.0.0.1:{}", self.relay.port)),
            Some(self.api_key.clone()),
            Some(self.data().join("tls/ca.pem")),
        )
        .unwrap();
        cli::client::Relay::new(&config).unwrap()
    }
}

/// The static agent built by `tests/build-static.sh` for `triple`.
pub fn static_agent(triple: &str) -> PathBuf {
    let target_dir = bin_dir().parent().expect("target dir").to_path_buf();
    let p = target_dir.join(triple).join("agent/sesame-agent");
    assert!(
        p.exists(),
        "{} is missing: run tests/build-static.sh first",
        p.display()
    );
    p
}

/// `sesame forward` running in the background, with the local ports it bound.
pub struct Forward {
    /// The process.
    pub proc: Proc,
    /// Local port of each spec, in order.
    pub ports: Vec<u16>,
}

impl Env {
    /// A relay, and an agent that reaches it through a proxy the test can cut.
    pub fn with_agent_behind_proxy(relay_flags: &[&str]) -> (Env, proxy::CutProxy) {
        Env::with_agent_behind(relay_flags, proxy::CutProxy::start)
    }

    /// A relay, and an agent that reaches it through the proxy `proxy(relay port)`.
    pub fn with_agent_behind(
        relay_flags: &[&str],
        proxy: impl FnOnce(u16) -> proxy::CutProxy,
    ) -> (Env, proxy::CutProxy) {
        let mut cut = None;
        let env = Env::start_launch(relay_flags, "gw-01", |dir, port, code| {
            let p = proxy(port);
            let agent = start_agent(dir, "agent", p.port, Some(code));
            cut = Some(p);
            agent
        });
        (env, cut.expect("the agent was started"))
    }

    /// Kill the relay with SIGKILL and start it again on the same port and data.
    pub fn restart_relay(&mut self) {
        let cfg = self.dir.0.join("unlimited.toml");
        self.restart_relay_with(
            Duration::from_millis(500),
            &["--config", cfg.to_str().unwrap()],
        );
    }

    /// Kill the relay with SIGKILL, wait `down`, and start it again on the same
    /// port and data with `flags`.
    pub fn restart_relay_with(&mut self, down: Duration, flags: &[&str]) {
        self.relay.proc.kill();
        std::thread::sleep(down);
        self.relay = start_relay(&self.data(), self.relay.port, flags);
    }

    /// Start `sesame forward gw-01 SPEC...` and wait for its bound addresses.
    pub fn forward(&self, specs: &[&str]) -> Forward {
        self.forward_via(self.relay.port, specs)
    }

    /// [`Env::forward`], the relay reached at `port` on this host (a proxy).
    pub fn forward_via(&self, port: u16, specs: &[&str]) -> Forward {
        let log = self.dir.0.join(format!(
            "forward-{}.log",
            specs.join("_").replace(['/', ':'], "-")
        ));
        let mut child = self
            .sesame()
            .env("SESAME_RELAY", format!("https://127.0.0.1:{port}"))
            .arg("forward")
            .arg(&self.target)
            .args(specs)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut ports = Vec::new();
        for _ in specs {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            // "forwarding 127.0.0.1:PORT -> HOST:PORT on gw-01"
            let port = line
                .split_whitespace()
                .nth(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "unexpected forward output {line:?}: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                });
            ports.push(port);
        }
        Forward {
            proc: Proc { child, log },
            ports,
        }
    }
}

/// Run `cmd` with `stdin` (written from a thread, so a command that answers before
/// it has read all of it cannot block us) and collect its output.
pub fn run_with(mut cmd: Command, stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut si = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = si.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    out
}

/// Start `sesame` (a command with its user and arguments, such as `shell gw-01`)
/// with its standard streams piped, type `line` into it (a line that prints
/// `ready` first, such as `echo ready; sleep 60`) and wait until `ready` comes
/// back: a live shell session. Returns the child (stdout and stderr still there)
/// and its standard input, to keep open as long as the shell should live.
pub fn live_shell(mut sesame: Command, line: &str) -> (Child, std::process::ChildStdin) {
    use std::io::{Read, Write};
    let mut shell = sesame
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = shell.stdin.take().unwrap();
    writeln!(stdin, "{line}").unwrap();
    let mut ready = [0u8; 6];
    shell
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    assert_eq!(&ready, b"ready\n", "the shell did not start");
    (shell, stdin)
}

/// Least-squares slope of (seconds, bytes) points, in bytes per second: a rate that
/// per-point timing jitter does not disturb.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let num: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    num / den
}

/// Run `sesame exec gw-01 -- head -c BYTES /dev/zero` and fit its delivery rate past
/// the first `skip` bytes (start-up and the initial bucket), in bytes per second.
pub fn paced_download(env: &Env, bytes: usize, skip: usize) -> f64 {
    use std::io::Read;
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
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let t0 = Instant::now();
    let (mut total, mut points, mut buf) = (0usize, Vec::new(), vec![0u8; 65536]);
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
        if total >= skip {
            points.push((t0.elapsed().as_secs_f64(), total as f64));
        }
    }
    assert!(child.wait().unwrap().success(), "download failed");
    assert_eq!(total, bytes, "download cut short");
    slope(&points)
}

/// A frame as the one WebSocket message that carries it.
pub fn ws_message(f: agent_core::wire::Frame) -> tokio_tungstenite::tungstenite::Message {
    let mut buf = vec![0u8; f.buffer_len()];
    let n = f.encode(&mut buf).expect("buffer_len is exact");
    buf.truncate(n);
    tokio_tungstenite::tungstenite::Message::Binary(buf.into())
}

/// Text of a process's stdout and stderr.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Wait (up to 20 s) until a process with exactly this command line (NUL after each
/// argument, as `/proc/PID/cmdline`) runs on this machine, where the agents run.
pub fn wait_for_process(cmdline: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let running = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .any(|p| std::fs::read(p.path().join("cmdline")).is_ok_and(|c| c == cmdline));
        if running {
            return;
        }
        assert!(Instant::now() < deadline, "{cmdline:?} never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SHA-256 of `data`, in hex (by `sha256sum`, as a user would check it).
pub fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum runs");
    let mut stdin = child.stdin.take().expect("piped");
    let data = data.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data));
    let out = child.wait_with_output().expect("sha256sum ends");
    writer
        .join()
        .expect("the writer ends")
        .expect("sha256sum reads");
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

/// Run `queries` on the relay database in `data`, behind the relay's back (as
/// someone with the database file would; the relay should be down).
pub fn sql(data: &Path, queries: &[&str]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(data.join("sesame.db"));
        let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
        for q in queries {
            sqlx::query(q).execute(&pool).await.unwrap();
        }
        pool.close().await;
    });
}

/// All that `child` wrote on its stderr (piped), once it closes it.
pub fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    err
}
