//! A TCP proxy on loopback whose connections a test can cut: what a network does to
//! a link when a NAT forgets it or a router resets it. The client (an agent, the CLI)
//! connects to the proxy's port instead of the relay's; TLS goes through untouched.
//! It can also be a bad network all along ([`Mangle`]): the bytes split at random
//! places into small writes, some of them late (delay and jitter), as a seed says.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a proxy mangles what it carries (both ways), from a seed.
#[derive(Debug, Clone, Copy)]
pub struct Mangle {
    /// The seed of the splits and delays.
    pub seed: u64,
    /// Writes are 1 to this many bytes.
    pub max_write: usize,
    /// One write in eight waits up to this long first.
    pub max_delay: Duration,
}

/// See the module docs. Stops accepting when dropped.
pub struct CutProxy {
    /// The port to connect to, on 127.0.0.1.
    pub port: u16,
    /// Both sockets of every connection that is up.
    live: Arc<Mutex<Vec<(TcpStream, TcpStream)>>>,
    /// New connections are refused (closed at once) while set: the link is down.
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Connections accepted in all.
    pub accepted: Arc<AtomicUsize>,
}

impl CutProxy {
    /// A proxy on `127.0.0.1` to `127.0.0.1:target`.
    pub fn start(target: u16) -> CutProxy {
        CutProxy::start_on("127.0.0.1", target)
    }

    /// A proxy on address `ip` (another interface of this machine) to
    /// `127.0.0.1:target`.
    pub fn start_on(ip: &str, target: u16) -> CutProxy {
        CutProxy::start_with(ip, target, None)
    }

    /// A proxy on `127.0.0.1` to `127.0.0.1:target` that mangles what it carries.
    pub fn mangling(target: u16, mangle: Mangle) -> CutProxy {
        CutProxy::start_with("127.0.0.1", target, Some(mangle))
    }

    fn start_with(ip: &str, target: u16, mangle: Option<Mangle>) -> CutProxy {
        let listener = TcpListener::bind((ip, 0)).expect("bind the proxy");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let live: Arc<Mutex<Vec<(TcpStream, TcpStream)>>> = Arc::default();
        let down = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (l, d, s, a) = (live.clone(), down.clone(), stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                if d.load(Ordering::Relaxed) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let n = a.fetch_add(1, Ordering::Relaxed) as u64;
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                // Each direction of each connection its own seed.
                let m = |k: u64| {
                    mangle.map(|m| Mangle {
                        seed: m.seed ^ (n * 2 + k + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                        ..m
                    })
                };
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    m(0),
                );
                pipe(
                    server.try_clone().unwrap(),
                    client.try_clone().unwrap(),
                    m(1),
                );
                l.lock().unwrap().push((client, server));
            }
        });
        CutProxy {
            port,
            live,
            down,
            stop,
            accepted,
        }
    }

    /// Reset every connection now (both ends see it closed), and refuse new ones
    /// while `down`.
    pub fn cut(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
        for (a, b) in self.live.lock().unwrap().drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// Let connections in again.
    pub fn restore(&self) {
        self.down.store(false, Ordering::Relaxed);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut(true);
    }
}

/// Copy `from` to `to` on a thread until either side closes (mangled if asked).
fn pipe(mut from: TcpStream, mut to: TcpStream, mangle: Option<Mangle>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut rng = mangle.map_or(1, |m| m.seed | 1);
        let mut next = move || {
            // xorshift64
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let Some(m) = mangle else {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                continue;
            };
            let mut at = 0;
            while at < n {
                let len = (1 + next() as usize % m.max_write.max(1)).min(n - at);
                if next() % 8 == 0 {
                    let ms = next() % (m.max_delay.as_millis() as u64 + 1);
                    std::thread::sleep(Duration::from_millis(ms));
                }
                if to.write_all(&buf[at..at + len]).is_err() {
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                at += len;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
