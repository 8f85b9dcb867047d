//! A TCP proxy on loopback whose connections a test can cut: what a network does to
//! a link when a NAT forgets it or a router resets it. The client (an agent, the CLI)
//! connects to the proxy's port instead of the relay's; TLS goes through untouched.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
                a.fetch_add(1, Ordering::Relaxed);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server.try_clone().unwrap(), client.try_clone().unwrap());
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

/// Copy `from` to `to` on a thread until either side closes.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
