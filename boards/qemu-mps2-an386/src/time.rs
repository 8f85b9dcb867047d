//! An embassy time driver on SysTick: a 1 kHz tick counts milliseconds, and the
//! timer queue (embassy-time-queue-utils) is checked on every tick.
//!
//! embassy-time runs at its default 1 MHz tick rate, so `now()` is microseconds
//! with millisecond resolution; an alarm fires on the first tick at or after it.

use core::cell::{Cell, RefCell};
use core::task::Waker;

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::exception;
use critical_section::Mutex;
use embassy_time_driver::Driver;
use embassy_time_queue_utils::Queue;

/// The core clock of the mps2-an386 FPGA image (and QEMU's model of it).
pub const SYSCLK_HZ: u32 = 25_000_000;
const TICK_HZ: u32 = 1_000;
const US_PER_TICK: u64 = 1_000_000 / TICK_HZ as u64;

struct SysTickDriver {
    now_us: Mutex<Cell<u64>>,
    alarm_us: Mutex<Cell<u64>>,
    queue: Mutex<RefCell<Queue>>,
}

embassy_time_driver::time_driver_impl!(static DRIVER: SysTickDriver = SysTickDriver {
    now_us: Mutex::new(Cell::new(0)),
    alarm_us: Mutex::new(Cell::new(u64::MAX)),
    queue: Mutex::new(RefCell::new(Queue::new())),
});

impl Driver for SysTickDriver {
    fn now(&self) -> u64 {
        critical_section::with(|cs| self.now_us.borrow(cs).get())
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        critical_section::with(|cs| {
            let mut queue = self.queue.borrow_ref_mut(cs);
            if queue.schedule_wake(at, waker) {
                let now = self.now_us.borrow(cs).get();
                self.alarm_us.borrow(cs).set(queue.next_expiration(now));
            }
        });
    }
}

/// Start the 1 kHz tick. Call once, before the executor runs.
pub fn init(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(SYSCLK_HZ / TICK_HZ - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

#[exception]
fn SysTick() {
    critical_section::with(|cs| {
        let now = self_now(cs) + US_PER_TICK;
        DRIVER.now_us.borrow(cs).set(now);
        let alarm = DRIVER.alarm_us.borrow(cs);
        if now >= alarm.get() {
            let next = DRIVER.queue.borrow_ref_mut(cs).next_expiration(now);
            alarm.set(next);
        }
    });
}

fn self_now(cs: critical_section::CriticalSection<'_>) -> u64 {
    DRIVER.now_us.borrow(cs).get()
}
