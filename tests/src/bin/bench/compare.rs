//! Scenarios measured against direct loopback and OpenSSH in the same run:
//! forwarding throughput, shell echo latency, command setup time.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tests::sshd::{self, Sshd};
use tests::{Env, TempDir};

use crate::Row;

/// sshd with a client key for root.
pub struct Ssh {
    pub sshd: Sshd,
    pub key: PathBuf,
    _dir: TempDir,
}

impl Ssh {
    pub fn start() -> Ssh {
        let dir = TempDir::new("bench-sshd");
        let sshd = sshd::start(&dir.0);
        let key = dir.0.join("client_key");
        sshd::keygen(&key);
        std::fs::copy(key.with_extension("pub"), sshd.keys.join("root")).unwrap();
        Ssh {
            sshd,
            key,
            _dir: dir,
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("ssh");
        c.args(sshd::client_opts(&self.key))
            .arg("-p")
            .arg(self.sshd.port.to_string());
        c
    }
}

/// A TCP source that writes `total` bytes to each connection, then closes.
fn source(total: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let chunk = vec![0x5au8; 1 << 20];
        for mut c in l.incoming().flatten() {
            let mut left = total;
            while left > 0 {
                let n = left.min(chunk.len());
                if c.write_all(&chunk[..n]).is_err() {
                    break;
                }
                left -= n;
            }
        }
    });
    port
}

fn drain_mb_s(port: u16, total: usize) -> f64 {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let t = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    loop {
        let n = c.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    assert_eq!(got, total, "stream cut short");
    got as f64 / 1e6 / t.elapsed().as_secs_f64()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn throughput(env: &Env, ssh: &Ssh) -> Vec<Row> {
    const TOTAL: usize = 256 << 20;
    let src = source(TOTAL);
    let direct = drain_mb_s(src, TOTAL);
    let fwd = env.forward(&[&format!("0:127.0.0.1:{src}")]);
    let _warm = drain_mb_s(fwd.ports[0], TOTAL);
    let sesame = drain_mb_s(fwd.ports[0], TOTAL);
    let lport = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut tunnel: Child = ssh
        .cmd()
        .args([
            "-N",
            "-L",
            &format!("{lport}:127.0.0.1:{src}"),
            "root@127.0.0.1",
        ])
        .spawn()
        .unwrap();
    wait_port(lport);
    let openssh = drain_mb_s(lport, TOTAL);
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    vec![
        Row::new("throughput", "direct loopback TCP (MB/s)", direct),
        Row::new(
            "throughput",
            "Sesame forward, rate limit off (MB/s)",
            sesame,
        ),
        Row::new("throughput", "OpenSSH `ssh -L` (MB/s)", openssh),
        Row::new("throughput", "Sesame / ssh -L", sesame / openssh),
    ]
}

/// Round trips of one byte through a remote PTY running `cat` in raw mode.
fn echo_rtts(mut child: Child, n: usize) -> Vec<Duration> {
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // The echoed command line shows RE""ADY; only the output shows READY.
    stdin
        .write_all(b"stty raw -echo; echo RE\"\"ADY; exec cat\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("READY\r\n")
        && !String::from_utf8_lossy(&seen).contains("READY\n")
    {
        let k = stdout.read(&mut buf).unwrap();
        assert!(
            k > 0,
            "shell ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..k]);
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut rtts = Vec::with_capacity(n);
    for i in 0..n {
        let b = [b'a' + (i % 26) as u8];
        let t = Instant::now();
        stdin.write_all(&b).unwrap();
        stdin.flush().unwrap();
        let mut one = [0u8; 1];
        loop {
            stdout.read_exact(&mut one).unwrap();
            if one == b {
                break;
            }
        }
        rtts.push(t.elapsed());
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    rtts
}

/// The `p` quantile (0 to 1) of sorted durations, in milliseconds.
pub fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

pub fn latency(env: &Env, ssh: &Ssh) -> Vec<Row> {
    const N: usize = 1000;
    let sesame = env
        .sesame()
        .args(["shell", "gw-01"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut s = echo_rtts(sesame, N);
    s.sort();
    let openssh = ssh
        .cmd()
        .args(["-tt", "root@127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut o = echo_rtts(openssh, N);
    o.sort();
    vec![
        Row::new("latency", "Sesame shell 1-byte echo p50 (ms)", pct(&s, 0.5)),
        Row::new(
            "latency",
            "Sesame shell 1-byte echo p99 (ms)",
            pct(&s, 0.99),
        ),
        Row::new(
            "latency",
            "OpenSSH shell 1-byte echo p50 (ms)",
            pct(&o, 0.5),
        ),
        Row::new(
            "latency",
            "OpenSSH shell 1-byte echo p99 (ms)",
            pct(&o, 0.99),
        ),
    ]
}

pub fn median_ms(mut run: impl FnMut() -> Duration) -> f64 {
    run();
    run();
    let mut t: Vec<Duration> = (0..20).map(|_| run()).collect();
    t.sort();
    (t[9] + t[10]).as_secs_f64() * 1e3 / 2.0
}

pub fn setup(env: &Env, ssh: Option<&Ssh>) -> Vec<Row> {
    let timed = |mut c: Command| {
        let t = Instant::now();
        let st = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "{c:?} failed");
        t.elapsed()
    };
    let sesame = median_ms(|| {
        let mut c = env.sesame();
        c.args(["exec", "gw-01", "--", "true"]);
        timed(c)
    });
    let mut rows = vec![Row::new(
        "setup",
        "`sesame exec gw-01 -- true`, median of 20 (ms)",
        sesame,
    )];
    if let Some(ssh) = ssh {
        let openssh = median_ms(|| {
            let mut c = ssh.cmd();
            c.args(["root@127.0.0.1", "true"]);
            timed(c)
        });
        rows.push(Row::new(
            "setup",
            "`ssh host true`, median of 20 (ms)",
            openssh,
        ));
    }
    rows
}

/// Whether this machine can run the OpenSSH comparisons.
pub fn ssh_available() -> bool {
    rustix::process::geteuid().is_root() && Path::new("/usr/sbin/sshd").exists()
}
