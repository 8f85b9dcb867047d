//! What this board adds to the device console.

use core::fmt::{self, Write};

use agent_embedded::console::{Board, Mac, Step};

use crate::{lan9118, log, mem};

/// The QEMU board.
#[derive(Default)]
pub struct Qemu;

impl Board for Qemu {
    fn uptime_ms(&self) -> u64 {
        embassy_time::Instant::now().as_millis()
    }

    fn memory(&self) -> (usize, usize) {
        (mem::static_bytes() + mem::stack_high_water(), mem::total())
    }

    fn network(&self, out: &mut dyn Write) -> fmt::Result {
        write!(out, "lan9118 {}", Mac(lan9118::mac_address()))
    }

    fn request_reboot(&mut self) {
        cortex_m::peripheral::SCB::sys_reset();
    }

    fn log(&mut self, line: fmt::Arguments<'_>) {
        log!("{line}");
    }

    fn command(&mut self, argv: &[&str], _part: usize, out: &mut dyn Write) -> Option<Step> {
        match argv[0] {
            "board" => {
                let _ = writeln!(
                    out,
                    "qemu mps2-an386: Cortex-M4F at {} MHz, no hardware RNG (NOT SECURE)\n\
                     flash {} of 1048576 bytes; RAM {} bytes: {} static, {} stack high-water",
                    crate::time::SYSCLK_HZ / 1_000_000,
                    mem::flash_bytes(),
                    mem::total(),
                    mem::static_bytes(),
                    mem::stack_high_water()
                );
                Some(Step::Done(0))
            }
            _ => None,
        }
    }

    fn help(&self, out: &mut dyn Write) -> fmt::Result {
        out.write_str("board     this board: chip, memory, stack high-water\n")
    }
}
