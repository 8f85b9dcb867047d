//! RAM accounting for the `mem` command and the budget: static RAM from the linker,
//! stack high-water mark by painting the free stack at boot.

use core::ptr::{addr_of, read_volatile, write_volatile};

const PAINT: u32 = 0x5E5A_3E5A;

extern "C" {
    static __sidata: u32;
    static __sdata: u32;
    static __edata: u32;
    static _ram_start: u32;
    static __sheap: u32;
    static _stack_start: u32;
}

fn ram_start() -> usize {
    // Linker symbols: only their addresses are used.
    addr_of!(_ram_start) as usize
}
fn statics_end() -> usize {
    addr_of!(__sheap) as usize
}
fn stack_top() -> usize {
    addr_of!(_stack_start) as usize
}

/// Fill the unused stack (below the current frame) with a pattern. Call first thing.
#[inline(never)]
pub fn paint_stack() {
    let sp = cortex_m::register::msp::read() as usize;
    let mut p = (statics_end() + 3) & !3;
    // Leave this function's own frame alone.
    while p + 256 < sp {
        // SAFETY: between the end of statics and below the live stack: unused RAM.
        unsafe { write_volatile(p as *mut u32, PAINT) };
        p += 4;
    }
}

/// Bytes of static RAM (.data + .bss + .uninit).
pub fn static_bytes() -> usize {
    statics_end() - ram_start()
}

/// Deepest the stack has been since boot, in bytes.
pub fn stack_high_water() -> usize {
    let mut p = (statics_end() + 3) & !3;
    // SAFETY: reads of RAM between the statics and the stack top.
    while p < stack_top() && unsafe { read_volatile(p as *const u32) } == PAINT {
        p += 4;
    }
    stack_top() - p
}

/// All RAM, as memory.x gives it.
pub fn total() -> usize {
    stack_top() - ram_start()
}

/// Bytes of flash the firmware occupies: code, read-only data and .data's initial
/// values, which the linker places last (flash starts at 0).
pub fn flash_bytes() -> usize {
    addr_of!(__sidata) as usize + (addr_of!(__edata) as usize - addr_of!(__sdata) as usize)
}
