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

/// Which way a throughput case moves its bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Target to client (a download through the tunnel).
    Down,
    /// Client to target (an upload).
    Up,
}

/// One throughput case: a direction and a number of parallel connections.
struct Case {
    label: &'static str,
    way: Way,
    streams: usize,
    /// Bytes each connection moves.
    bytes: u64,
}

const CASES: [Case; 4] = [
    Case {
        label: "target-to-client",
        way: Way::Down,
        streams: 1,
        bytes: 256 << 20,
    },
    Case {
        label: "client-to-target",
        way: Way::Up,
        streams: 1,
        bytes: 256 << 20,
    },
    Case {
        label: "4 streams target-to-client",
        way: Way::Down,
        streams: 4,
        bytes: 128 << 20,
    },
    Case {
        label: "4 streams client-to-target",
        way: Way::Up,
        streams: 4,
        bytes: 128 << 20,
    },
];

/// Runs of each case on each path; the median is reported.
const RUNS: usize = 5;

/// The target server. Each connection starts with one byte: `D` and a big-endian
/// u64 N (the server writes N bytes, then closes), or `U` (the server reads to EOF,
/// then answers the count as a big-endian u64, so the client's clock stops only
/// once every byte is at the target).
fn target() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || serve_target(c));
        }
    });
    port
}

fn serve_target(mut c: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0x5au8; 1 << 20];
    let mut op = [0u8; 1];
    c.read_exact(&mut op)?;
    if op[0] == b'D' {
        let mut n = [0u8; 8];
        c.read_exact(&mut n)?;
        let mut left = u64::from_be_bytes(n) as usize;
        while left > 0 {
            let k = left.min(buf.len());
            c.write_all(&buf[..k])?;
            left -= k;
        }
    } else {
        let mut got = 0u64;
        loop {
            match c.read(&mut buf)? {
                0 => break,
                k => got += k as u64,
            }
        }
        c.write_all(&got.to_be_bytes())?;
    }
    Ok(())
}

/// Move `bytes` one way over one connection to `port`, checking they all arrived.
fn one_stream(port: u16, way: Way, bytes: u64) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = c.set_nodelay(true);
    let mut buf = vec![0xa5u8; 1 << 20];
    match way {
        Way::Down => {
            c.write_all(b"D").unwrap();
            c.write_all(&bytes.to_be_bytes()).unwrap();
            let mut got = 0u64;
            loop {
                match c.read(&mut buf).unwrap() {
                    0 => break,
                    k => got += k as u64,
                }
            }
            assert_eq!(got, bytes, "stream cut short");
        }
        Way::Up => {
            c.write_all(b"U").unwrap();
            let mut left = bytes as usize;
            while left > 0 {
                let k = left.min(buf.len());
                c.write_all(&buf[..k]).unwrap();
                left -= k;
            }
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut n = [0u8; 8];
            c.read_exact(&mut n).unwrap();
            assert_eq!(u64::from_be_bytes(n), bytes, "upload cut short");
        }
    }
}

/// One run of `case` through `port`: the wall time until every stream is done.
fn run_case(port: u16, case: &Case) -> Duration {
    let start = std::sync::Barrier::new(case.streams + 1);
    std::thread::scope(|s| {
        let streams: Vec<_> = (0..case.streams)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    one_stream(port, case.way, case.bytes);
                })
            })
            .collect();
        start.wait();
        let t = Instant::now();
        for stream in streams {
            stream.join().expect("stream failed");
        }
        t.elapsed()
    })
}

/// CPU time (user + system) in clock ticks of `pids` and all their descendants.
pub(crate) fn cpu_ticks(roots: &[u32]) -> u64 {
    // (pid, ppid, ticks) of every process.
    let procs: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // Fields after the command name, which may hold spaces: state is 3rd.
            let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ppid = f.get(1)?.parse().ok()?;
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some((pid, ppid, ticks))
        })
        .collect();
    let mut seen: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < seen.len() {
        let p = seen[i];
        seen.extend(procs.iter().filter(|q| q.1 == p).map(|q| q.0));
        i += 1;
    }
    procs
        .iter()
        .filter(|q| seen.contains(&q.0))
        .map(|q| q.2)
        .sum()
}

/// What one path (direct, Sesame, ssh) did in one case over its runs.
#[derive(Default)]
struct Tally {
    times: Vec<Duration>,
    ticks: u64,
}

impl Tally {
    fn run(&mut self, port: u16, case: &Case, procs: &[u32]) {
        let before = cpu_ticks(procs);
        self.times.push(run_case(port, case));
        self.ticks += cpu_ticks(procs).saturating_sub(before);
    }

    /// Median throughput, MB/s.
    fn mb_s(&self, case: &Case) -> f64 {
        let mut t = self.times.clone();
        t.sort();
        let bytes = case.bytes as f64 * case.streams as f64;
        bytes / 1e6 / t[t.len() / 2].as_secs_f64()
    }

    /// CPU used, in cores (CPU seconds per wall second, over all runs).
    fn cores(&self) -> f64 {
        let wall: f64 = self.times.iter().map(Duration::as_secs_f64).sum();
        // /proc counts in USER_HZ, 100 a second on Linux.
        self.ticks as f64 / 100.0 / wall
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Each case through direct loopback, `sesame forward` and `ssh -L` to the same
/// target, runs interleaved so that load from elsewhere falls on all three alike.
pub fn throughput(env: &Env, ssh: &Ssh) -> Vec<Row> {
    let dst = target();
    let fwd = env.forward(&[&format!("0:127.0.0.1:{dst}")]);
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
            &format!("{lport}:127.0.0.1:{dst}"),
            "root@127.0.0.1",
        ])
        .spawn()
        .unwrap();
    wait_port(lport);
    let sesame_procs = [
        env.relay.proc.child.id(),
        env.agent.child.id(),
        fwd.proc.child.id(),
    ];
    // The ssh client and sshd with its session processes.
    let ssh_procs = [tunnel.id(), ssh.sshd.proc.child.id()];
    // Warm up both tunnels (first connections, allocator, TCP windows).
    run_case(fwd.ports[0], &CASES[0]);
    run_case(lport, &CASES[0]);
    let mut rows = Vec::new();
    for case in &CASES {
        let (mut direct, mut sesame, mut openssh) =
            (Tally::default(), Tally::default(), Tally::default());
        for _ in 0..RUNS {
            direct.run(dst, case, &[]);
            sesame.run(fwd.ports[0], case, &sesame_procs);
            openssh.run(lport, case, &ssh_procs);
        }
        let (d, s, o) = (direct.mb_s(case), sesame.mb_s(case), openssh.mb_s(case));
        let l = case.label;
        rows.extend([
            Row::new("throughput", &format!("{l}: direct loopback TCP (MB/s)"), d),
            Row::new("throughput", &format!("{l}: Sesame forward (MB/s)"), s),
            Row::new("throughput", &format!("{l}: OpenSSH `ssh -L` (MB/s)"), o),
            Row::new("throughput", &format!("{l}: Sesame / ssh -L"), s / o),
            Row::new(
                "throughput",
                &format!("{l}: Sesame CPU, relay + agent + CLI (cores)"),
                sesame.cores(),
            ),
            Row::new(
                "throughput",
                &format!("{l}: OpenSSH CPU, ssh + sshd (cores)"),
                openssh.cores(),
            ),
        ]);
    }
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    rows
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
