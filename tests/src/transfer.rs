//! A destination for forwarding tests: transfers both ways, paced so that they
//! last long enough to be cut, checked byte for byte at each end.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes number `seed` of a transfer: deterministic, different per seed.
fn bytes(seed: u32, len: usize) -> Vec<u8> {
    crate::http::body_of(seed, len)
}

/// A destination listening on `ip`: a connection says `DOWN UP SEED\n`, gets `DOWN` bytes (paced at
/// about 3 MB/s, so that a transfer spans the cuts), has `UP` bytes read and
/// checked, and then gets `upload ok N\n` (or where the upload went wrong).
pub fn server(ip: &str) -> u16 {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
        }
    });
    port
}

fn serve(conn: TcpStream) {
    let mut rd = BufReader::new(conn.try_clone().unwrap());
    let mut head = String::new();
    if rd.read_line(&mut head).is_err() {
        return;
    }
    let n: Vec<usize> = head
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [down, up, seed] = n[..] else { return };
    let mut w = conn;
    let sender = {
        let mut w = w.try_clone().unwrap();
        std::thread::spawn(move || {
            for chunk in bytes(seed as u32, down).chunks(64 * 1024) {
                if w.write_all(chunk).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let want = bytes(seed as u32 + 1, up);
    let mut got = Vec::with_capacity(up);
    let verdict = match rd.read_to_end(&mut got) {
        Err(e) => format!("upload failed: {e}\n"),
        Ok(_) if got == want => format!("upload ok {}\n", got.len()),
        Ok(_) => {
            let at = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
            format!(
                "upload differs at {at} of {} ({} expected)\n",
                got.len(),
                up
            )
        }
    };
    let _ = sender.join();
    let _ = w.write_all(verdict.as_bytes());
}

/// One connection through the forward at `port` on this host: `down` bytes down, `up` bytes up
/// (paced at about 1.6 MB/s); counts what came down in `got`.
pub struct Transfer {
    got: Arc<AtomicUsize>,
    handle: JoinHandle<Vec<u8>>,
    down: usize,
    seed: u32,
}

impl Transfer {
    pub fn start(port: u16, down: usize, up: usize, seed: u32) -> Transfer {
        let got = Arc::new(AtomicUsize::new(0));
        let counter = got.clone();
        let handle = std::thread::spawn(move || {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
            writeln!(c, "{down} {up} {seed}").unwrap();
            let mut w = c.try_clone().unwrap();
            let uploader = std::thread::spawn(move || {
                for chunk in bytes(seed + 1, up).chunks(32 * 1024) {
                    w.write_all(chunk).unwrap();
                    std::thread::sleep(Duration::from_millis(20));
                }
                w.shutdown(Shutdown::Write).unwrap();
            });
            let mut all = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        all.extend_from_slice(&buf[..n]);
                        counter.store(all.len(), Ordering::Relaxed);
                    }
                    Err(e) => panic!("reading the transfer: {e} after {} bytes", all.len()),
                }
            }
            uploader.join().unwrap();
            all
        });
        Transfer {
            got,
            handle,
            down,
            seed,
        }
    }

    /// Bytes of the download so far.
    pub fn received(&self) -> usize {
        self.got.load(Ordering::Relaxed)
    }

    /// Wait (a minute at most) until `n` bytes of the download came.
    pub fn wait_for(&self, n: usize) {
        crate::wait_until("bytes of the download", 60, || {
            self.got.load(Ordering::Relaxed) >= n
        });
    }

    /// The download arrived whole (its SHA-256 matches) and the destination got
    /// the whole upload.
    pub fn check(self, up: usize) {
        let all = self.handle.join().unwrap();
        let (down, trailer) = all.split_at(self.down.min(all.len()));
        assert_eq!(down.len(), self.down, "the download was cut short");
        assert_eq!(
            crate::sha256(down),
            crate::sha256(&bytes(self.seed, self.down)),
            "the download differs"
        );
        assert_eq!(
            String::from_utf8_lossy(trailer),
            format!("upload ok {up}\n"),
            "the upload"
        );
    }
}
