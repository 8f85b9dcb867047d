//! UART0 of the MPS2 (an Arm CMSDK APB UART): the board's log, which QEMU's
//! `-nographic` puts on standard output.

use core::fmt;
use core::ptr::{read_volatile, write_volatile};

const BASE: usize = 0x4000_4000;
const DATA: usize = BASE;
const STATE: usize = BASE + 0x04;
const CTRL: usize = BASE + 0x08;
const BAUDDIV: usize = BASE + 0x10;
const STATE_TX_FULL: u32 = 1 << 0;
const CTRL_TX_EN: u32 = 1 << 0;

/// Enable the transmitter (115200 baud at 25 MHz; QEMU ignores the rate).
pub fn init() {
    // SAFETY: UART0's registers are at BASE on this machine and only this module
    // touches them.
    unsafe {
        write_volatile(BAUDDIV as *mut u32, 25_000_000 / 115_200);
        write_volatile(CTRL as *mut u32, CTRL_TX_EN);
    }
}

/// Blocking writer; lines are written whole inside a critical section so that
/// tasks and interrupts do not interleave them.
pub struct Uart;

impl fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // SAFETY: as in `init`.
            unsafe {
                while read_volatile(STATE as *const u32) & STATE_TX_FULL != 0 {}
                write_volatile(DATA as *mut u32, b as u32);
            }
        }
        Ok(())
    }
}

/// One log line with the uptime in front.
pub fn line(args: fmt::Arguments<'_>) {
    use fmt::Write;
    let ms = embassy_time::Instant::now().as_millis();
    critical_section::with(|_| {
        let _ = writeln!(Uart, "[{:>5}.{:03}] {args}", ms / 1000, ms % 1000);
    });
}

/// `log!("...", args)`: one line on the UART.
#[macro_export]
macro_rules! log {
    ($($t:tt)*) => { $crate::uart::line(format_args!($($t)*)) };
}
