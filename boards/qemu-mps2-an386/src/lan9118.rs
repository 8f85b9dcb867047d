//! An embassy-net driver for the SMSC LAN9118 Ethernet controller of the MPS2
//! (as QEMU models it): PIO FIFOs, one interrupt for "a frame arrived".
//!
//! Register facts this relies on (SMSC datasheet, checked against QEMU 7.2):
//! - All accesses are aligned 32-bit; narrower ones would pop FIFO words.
//! - IRQ_CFG must be enable + active-high + push-pull before the NVIC line is
//!   unmasked, or the line reads asserted while idle.
//! - RX status `[29:16]` is the frame length *including* the 4-byte FCS; exactly
//!   `ceil(len / 4)` data words follow.
//! - RSFL (a frame's status arrived) is latched: clear it, then drain the FIFO.
//! - Only the MAC CSRs the driver needs (MAC_CR, ADDRH, ADDRL) are touched.

use core::cell::Cell;
use core::ptr::{read_volatile, write_volatile};
use core::task::Context;

use critical_section::Mutex;
use embassy_net_driver::{Capabilities, Driver, HardwareAddress, LinkState};
use embassy_sync::waitqueue::AtomicWaker;

/// The controller's NVIC line on mps2-an386.
pub const IRQ: u16 = 13;
const BASE: usize = 0x4020_0000;

const RX_DATA_FIFO: usize = 0x00;
const TX_DATA_FIFO: usize = 0x20;
const RX_STATUS_FIFO: usize = 0x40;
const TX_STATUS_FIFO: usize = 0x48;
const ID_REV: usize = 0x50;
const IRQ_CFG: usize = 0x54;
const INT_STS: usize = 0x58;
const INT_EN: usize = 0x5C;
const BYTE_TEST: usize = 0x64;
const TX_CFG: usize = 0x70;
const HW_CFG: usize = 0x74;
const RX_FIFO_INF: usize = 0x7C;
const TX_FIFO_INF: usize = 0x80;
const PMT_CTRL: usize = 0x84;
const FREE_RUN: usize = 0x9C;
const MAC_CSR_CMD: usize = 0xA4;
const MAC_CSR_DATA: usize = 0xA8;

const BYTE_TEST_VALUE: u32 = 0x8765_4321;
const IRQ_CFG_PUSH_PULL: u32 = 1 << 0;
const IRQ_CFG_ACTIVE_HIGH: u32 = 1 << 4;
const IRQ_CFG_EN: u32 = 1 << 8;
const INT_RSFL: u32 = 1 << 3;
const HW_CFG_SRST: u32 = 1 << 0;
const PMT_READY: u32 = 1 << 0;
const TX_CFG_TX_ON: u32 = 1 << 1;
const TX_CFG_TXSAO: u32 = 1 << 2;
const CSR_BUSY: u32 = 1 << 31;
const CSR_READ: u32 = 1 << 30;
const MAC_CR: u32 = 1;
const ADDRH: u32 = 2;
const ADDRL: u32 = 3;
const MAC_CR_RXEN: u32 = 1 << 2;
const MAC_CR_TXEN: u32 = 1 << 3;
const MAC_CR_FDPX: u32 = 1 << 20;
const TXA_LAST: u32 = 1 << 12;
const TXA_FIRST: u32 = 1 << 13;

/// Largest frame without FCS.
pub const MTU: usize = 1514;

static RX_WAKER: AtomicWaker = AtomicWaker::new();
static MAC: Mutex<Cell<[u8; 6]>> = Mutex::new(Cell::new([0; 6]));

fn read(reg: usize) -> u32 {
    // SAFETY: a register of the controller mapped at BASE on this machine.
    unsafe { read_volatile((BASE + reg) as *const u32) }
}

fn write(reg: usize, v: u32) {
    // SAFETY: as in `read`.
    unsafe { write_volatile((BASE + reg) as *mut u32, v) }
}

fn csr_wait() {
    for _ in 0..100_000 {
        if read(MAC_CSR_CMD) & CSR_BUSY == 0 {
            return;
        }
    }
}

fn csr_read(idx: u32) -> u32 {
    csr_wait();
    write(MAC_CSR_CMD, CSR_BUSY | CSR_READ | idx);
    csr_wait();
    read(MAC_CSR_DATA)
}

fn csr_write(idx: u32, v: u32) {
    csr_wait();
    write(MAC_CSR_DATA, v);
    write(MAC_CSR_CMD, CSR_BUSY | idx);
    csr_wait();
}

#[derive(Clone, Copy)]
struct Nvic(u16);

// SAFETY: 13 is a valid external interrupt number on this core (QEMU gives 32).
unsafe impl cortex_m::interrupt::InterruptNumber for Nvic {
    fn number(self) -> u16 {
        self.0
    }
}

/// The controller's free-running 25 MHz counter. QEMU derives it from the host
/// clock and does not reset it with the CPU, so it differs from boot to boot:
/// weak entropy, for a board without an RNG.
pub fn free_running_counter() -> u32 {
    read(FREE_RUN)
}

/// The station address (for the console's `net`).
pub fn mac_address() -> [u8; 6] {
    critical_section::with(|cs| MAC.borrow(cs).get())
}

/// Called from the interrupt handler: acknowledge and wake the receiver.
pub fn on_interrupt() {
    let pending = read(INT_STS) & read(INT_EN);
    write(INT_STS, pending);
    RX_WAKER.wake();
}

/// The controller, with one frame buffer each way.
pub struct Lan9118 {
    mac: [u8; 6],
    rx: [u8; MTU + 4],
    tx: [u8; MTU],
    tag: u16,
}

impl Lan9118 {
    /// Reset and start the controller and unmask its interrupt.
    pub fn new() -> Result<Lan9118, &'static str> {
        if read(BYTE_TEST) != BYTE_TEST_VALUE {
            return Err("no LAN9118 at 0x40200000 (BYTE_TEST mismatch)");
        }
        if read(ID_REV) >> 16 != 0x0118 {
            return Err("the Ethernet controller is not a LAN9118");
        }
        write(HW_CFG, HW_CFG_SRST);
        let mut ready = false;
        for _ in 0..1_000_000 {
            if read(HW_CFG) & HW_CFG_SRST == 0 && read(PMT_CTRL) & PMT_READY != 0 {
                ready = true;
                break;
            }
        }
        if !ready {
            return Err("LAN9118 did not come out of reset");
        }
        // The interrupt line first, so it idles deasserted.
        write(
            IRQ_CFG,
            IRQ_CFG_EN | IRQ_CFG_ACTIVE_HIGH | IRQ_CFG_PUSH_PULL,
        );
        write(INT_EN, 0);
        write(INT_STS, u32::MAX);

        let lo = csr_read(ADDRL).to_le_bytes();
        let hi = csr_read(ADDRH).to_le_bytes();
        let mut mac = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]];
        if mac == [0; 6] || mac == [0xFF; 6] {
            // No EEPROM address: a fixed, locally administered one.
            mac = [0x02, 0x53, 0x45, 0x53, 0x41, 0x01];
            csr_write(ADDRL, u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]));
            csr_write(ADDRH, u32::from_le_bytes([mac[4], mac[5], 0, 0]));
        }
        critical_section::with(|cs| MAC.borrow(cs).set(mac));
        // Unicast to us and broadcast; not promiscuous.
        csr_write(MAC_CR, MAC_CR_RXEN | MAC_CR_TXEN | MAC_CR_FDPX);
        write(TX_CFG, TX_CFG_TX_ON | TX_CFG_TXSAO);
        write(INT_EN, INT_RSFL);

        cortex_m::peripheral::NVIC::unpend(Nvic(IRQ));
        // SAFETY: the handler (`on_interrupt`, via DefaultHandler) only touches
        // INT_STS and the waker; unmasking cannot break a critical section.
        unsafe { cortex_m::peripheral::NVIC::unmask(Nvic(IRQ)) };
        Ok(Lan9118 {
            mac,
            rx: [0; MTU + 4],
            tx: [0; MTU],
            tag: 0,
        })
    }

    fn frames_waiting() -> bool {
        (read(RX_FIFO_INF) >> 16) & 0xFF != 0
    }

    /// Pop one frame into `rx`; returns its length without FCS (0 if dropped).
    fn pop_frame(&mut self) -> usize {
        let status = read(RX_STATUS_FIFO);
        let len = ((status >> 16) & 0x3FFF) as usize;
        let words = len.div_ceil(4);
        let keep = len <= self.rx.len() && len > 4 && status & (1 << 15) == 0;
        for i in 0..words {
            let w = read(RX_DATA_FIFO).to_le_bytes();
            if keep {
                let at = i * 4;
                let n = (len - at).min(4);
                self.rx[at..at + n].copy_from_slice(&w[..n]);
            }
        }
        if keep {
            len - 4
        } else {
            0
        }
    }
}

/// A received frame.
pub struct RxToken<'a> {
    frame: &'a mut [u8],
}

/// Room for one frame to send.
pub struct TxToken<'a> {
    buf: &'a mut [u8; MTU],
    tag: &'a mut u16,
}

impl embassy_net_driver::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

impl embassy_net_driver::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(MTU);
        let r = f(&mut self.buf[..len]);
        *self.tag = self.tag.wrapping_add(1);
        write(TX_DATA_FIFO, TXA_FIRST | TXA_LAST | len as u32);
        write(TX_DATA_FIFO, ((*self.tag as u32) << 16) | len as u32);
        for chunk in self.buf[..len].chunks(4) {
            let mut w = [0u8; 4];
            w[..chunk.len()].copy_from_slice(chunk);
            write(TX_DATA_FIFO, u32::from_le_bytes(w));
        }
        r
    }
}

impl Driver for Lan9118 {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, cx: &mut Context<'_>) -> Option<(RxToken<'_>, TxToken<'_>)> {
        loop {
            if !Self::frames_waiting() {
                // Register, then look again: a frame that arrived in between has
                // raised the interrupt after the registration and will wake us.
                RX_WAKER.register(cx.waker());
                if !Self::frames_waiting() {
                    return None;
                }
            }
            let len = self.pop_frame();
            if len > 0 {
                let Lan9118 { rx, tx, tag, .. } = self;
                return Some((
                    RxToken {
                        frame: &mut rx[..len],
                    },
                    TxToken { buf: tx, tag },
                ));
            }
        }
    }

    fn transmit(&mut self, cx: &mut Context<'_>) -> Option<TxToken<'_>> {
        // Statuses are not needed (TXSAO); drain them so the FIFO never fills.
        while (read(TX_FIFO_INF) >> 16) & 0xFF != 0 {
            let _ = read(TX_STATUS_FIFO);
        }
        // Free data FIFO bytes, with room for the two command words.
        if (read(TX_FIFO_INF) & 0xFFFF) as usize >= MTU + 8 {
            Some(TxToken {
                buf: &mut self.tx,
                tag: &mut self.tag,
            })
        } else {
            // The controller raises no "space available" interrupt we rely on:
            // poll again on the next turn of the stack.
            cx.waker().wake_by_ref();
            None
        }
    }

    fn link_state(&mut self, _cx: &mut Context<'_>) -> LinkState {
        LinkState::Up
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = Some(4);
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ethernet(self.mac)
    }
}
