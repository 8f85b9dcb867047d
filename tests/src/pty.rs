//! The client's side of a terminal, for tests that drive `sesame shell` as a user
//! would: a PTY pair, and reading its master until some text shows.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;

/// A PTY of `cols` x `rows`: (master, slave).
pub fn pair(cols: u16, rows: u16) -> (OwnedFd, OwnedFd) {
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    rustix::pty::grantpt(&master).unwrap();
    rustix::pty::unlockpt(&master).unwrap();
    let name = rustix::pty::ptsname(&master, Vec::new()).unwrap();
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY,
        Mode::empty(),
    )
    .unwrap();
    let size = rustix::termios::Winsize {
        ws_col: cols,
        ws_row: rows,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(&slave, size).unwrap();
    (master, slave)
}

/// Read from a non-blocking `master` into `seen` until `needle` appears; panics
/// after `limit`, or at end of file (EIO: the client side closed) without it.
pub fn read_until(master: &mut std::fs::File, seen: &mut Vec<u8>, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(seen).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "never saw {needle:?} in {:?}",
            String::from_utf8_lossy(seen)
        );
        match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) if e.raw_os_error() == Some(5) => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    assert!(
        String::from_utf8_lossy(seen).contains(needle),
        "the terminal closed before {needle:?} in {:?}",
        String::from_utf8_lossy(seen)
    );
}
