//! A small HTTP/1.0 server and client for forwarding tests: `GET /n` answers a body
//! that is deterministic and different per path, so that what comes back through
//! a tunnel can be checked byte for byte.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// `len` deterministic bytes for path `/n` (xorshift from `n`).
pub fn body_of(n: u32, len: usize) -> Vec<u8> {
    let mut x = n.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Serve `GET /PATH` on a port of 127.0.0.1 with `answer(PATH)` (without its
/// leading `/`), one thread a connection; returns the port.
pub fn server(answer: fn(&str) -> Vec<u8>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || serve(conn, answer));
        }
    });
    port
}

fn serve(mut c: TcpStream, answer: fn(&str) -> Vec<u8>) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let path = String::from_utf8_lossy(&req)
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let data = answer(path.trim_start_matches('/'));
    let _ = write!(
        c,
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    let _ = c.write_all(&data);
}

/// `GET path` from 127.0.0.1:`port`, waiting up to `wait` for each read; the
/// response's body (empty when the connection closed without an answer).
pub fn get(port: u16, path: &str, wait: Duration) -> std::io::Result<Vec<u8>> {
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(wait))?;
    write!(c, "GET {path} HTTP/1.0\r\n\r\n")?;
    let mut resp = Vec::new();
    c.read_to_end(&mut resp)?;
    let at = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(resp.len());
    Ok(resp.split_off(at))
}
