//! A pseudo-terminal pair and non-blocking async I/O on its master side.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;
use tokio::io::unix::AsyncFd;

/// Open a PTY of `cols` x `rows`; returns (master, slave).
pub fn open(cols: u16, rows: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    resize(&master, cols, rows)?;
    Ok((master, slave))
}

/// Set the terminal size.
pub fn resize(fd: impl AsFd, cols: u16, rows: u16) -> io::Result<()> {
    rustix::termios::tcsetwinsize(
        fd,
        Winsize {
            ws_col: cols.max(1),
            ws_row: rows.max(1),
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

/// The master side, registered with tokio.
pub struct Master(AsyncFd<OwnedFd>);

impl Master {
    /// Make `fd` non-blocking and register it.
    pub fn new(fd: OwnedFd) -> io::Result<Master> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?;
        // SAFETY: the OwnedFd moves into the AsyncFd, so it stays open and is the
        // same descriptor for as long as it is registered.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(Master(fd))
    }

    /// Read some bytes; `Ok(0)` at end. EIO (the shell side closed) counts as end.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard
                .try_io(|fd| rustix::io::read(fd.get_ref(), &mut *buf).map_err(io::Error::from))
            {
                Ok(Err(e)) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                    return Ok(0)
                }
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Read what is available now without waiting; `Ok(None)` when nothing is.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match rustix::io::read(self.0.get_ref(), buf) {
            Ok(n) => Ok(Some(n)),
            Err(rustix::io::Errno::AGAIN) => Ok(None),
            Err(rustix::io::Errno::IO) => Ok(Some(0)),
            Err(e) => Err(e.into()),
        }
    }

    /// Write all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// What to write for end of input: the terminal's `VEOF` character (`^D` unless
    /// changed). After an unfinished line (`mid_line`) the line is first finished
    /// with a newline, as a pipe's last unfinished line is still run: in canonical
    /// mode an EOF character elsewhere than at the start of a line only hands the line
    /// over, and a line editor (a shell's readline) takes `^D` on a non-empty line as
    /// delete.
    pub fn eof_sequence(&self, mid_line: bool) -> Vec<u8> {
        use rustix::termios::SpecialCodeIndex;
        let eof = match rustix::termios::tcgetattr(self.0.get_ref()) {
            Ok(t) => t.special_codes[SpecialCodeIndex::VEOF],
            Err(_) => 4,
        };
        let eof = if eof == 0 { 4 } else { eof };
        if mid_line {
            vec![b'\n', eof]
        } else {
            vec![eof]
        }
    }

    /// Write what fits now without waiting (`Ok(0)` when the terminal's input is
    /// full).
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        match rustix::io::write(self.0.get_ref(), data) {
            Ok(n) => Ok(n),
            Err(rustix::io::Errno::AGAIN) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Set the terminal size.
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        resize(self.0.get_ref(), cols, rows)
    }
}
