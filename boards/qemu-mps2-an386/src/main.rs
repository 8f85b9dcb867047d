//! # Sesame on QEMU's mps2-an386
//!
//! The CI board: a Cortex-M4F with a LAN9118 Ethernet controller, as QEMU models
//! Arm's MPS2 FPGA image AN386. It runs the same `agent-embedded` as every board:
//! DHCP, then TLS 1.3 to the relay pinned to the provisioned CA, then sessions.
//!
//! ## Contract
//! - The provisioning image (`sesame-relay device provision`) is read from the last
//!   4 KiB of flash (`memory.x`); without a valid one the firmware prints why and
//!   exits QEMU with status 1.
//! - The log goes to UART0 (QEMU's standard output with `-nographic`).
//! - This machine has no RNG: the seed comes from the provisioning image and
//!   timing, and the firmware says loudly that it is not secure.
//! - Boot it with `run.sh` (see README.md).
#![no_std]
#![no_main]

mod board;
mod lan9118;
mod mem;
mod time;
mod uart;

use agent_core::provision::Provision;
use agent_embedded::link::{self, Buffers};
use core::sync::atomic::{AtomicBool, Ordering};

use cortex_m_rt::{entry, exception};
use embassy_executor::{raw, Spawner};
use embassy_net::{Runner, StackResources};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;
use static_cell::{ConstStaticCell, StaticCell};

/// The provisioning image's place in flash (memory.x).
fn provision_region() -> &'static [u8] {
    extern "C" {
        static _provision_start: u8;
        static _provision_len: u8;
    }
    // SAFETY: the linker reserves this flash region for the image and places
    // nothing else there; it is only read.
    unsafe {
        let start = core::ptr::addr_of!(_provision_start);
        let len = core::ptr::addr_of!(_provision_len) as usize;
        core::slice::from_raw_parts(start, len)
    }
}

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, lan9118::Lan9118>) -> ! {
    runner.run().await
}

static BUFFERS: ConstStaticCell<Buffers> = ConstStaticCell::new(Buffers::new());
/// Sockets for DHCP, DNS, the relay and the forwarded connections.
static NET: StaticCell<StackResources<{ link::SOCKETS }>> = StaticCell::new();

fn fail(args: core::fmt::Arguments<'_>) -> ! {
    log!("error: {args}");
    cortex_m_semihosting::debug::exit(cortex_m_semihosting::debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

/// Set by the executor's pender (a task was woken); cleared before each poll.
static WOKEN: AtomicBool = AtomicBool::new(true);

#[unsafe(export_name = "__pender")]
fn pender(_context: *mut ()) {
    WOKEN.store(true, Ordering::Release);
}

static EXECUTOR: StaticCell<raw::Executor> = StaticCell::new();

/// The executor loop, idling with WFI (embassy's Cortex-M executor idles with WFE,
/// which QEMU spins on at 100% of a host core; WFI lets QEMU sleep until the next
/// interrupt). Interrupts are masked around the check so a wake between the check
/// and the WFI still ends the WFI.
#[entry]
fn main() -> ! {
    mem::paint_stack();
    let executor: &'static raw::Executor = EXECUTOR.init(raw::Executor::new(core::ptr::null_mut()));
    let spawner = executor.spawner();
    spawner.spawn(agent(spawner).unwrap());
    loop {
        WOKEN.store(false, Ordering::Release);
        // SAFETY: polled from this one thread only, never re-entered.
        unsafe { executor.poll() };
        cortex_m::interrupt::free(|_| {
            if !WOKEN.load(Ordering::Acquire) {
                cortex_m::asm::wfi();
            }
        });
    }
}

#[embassy_executor::task]
async fn agent(spawner: Spawner) {
    let Some(p) = cortex_m::Peripherals::take() else {
        fail(format_args!("core peripherals taken twice"))
    };
    time::init(p.SYST);
    uart::init();
    log!(
        "sesame agent {} (protocol {}) on qemu mps2-an386",
        env!("CARGO_PKG_VERSION"),
        agent_core::PROTOCOL_VERSION
    );
    let prov = match Provision::decode(provision_region()) {
        Ok(p) => p,
        Err(e) => fail(format_args!("{e}")),
    };
    log!(
        "device: agent '{}', relay {}:{} (certificate name {}), CA pinned ({} bytes)",
        prov.agent_id,
        prov.relay_host,
        prov.relay_port,
        prov.tls_name,
        prov.ca_der.0.len()
    );
    log!("WARNING: mps2-an386 has no hardware RNG. The TLS and WebSocket randomness");
    log!("WARNING: is seeded from the provisioning image and boot timing: NOT SECURE.");
    log!("WARNING: Use this board for tests only; real boards use their hardware RNG.");

    let eth = match lan9118::Lan9118::new() {
        Ok(eth) => eth,
        Err(e) => fail(format_args!("ethernet: {e}")),
    };
    let mut seed = [0u8; 32];
    seed.copy_from_slice(prov.entropy.0);
    // Differs per boot, so a rebooted device does not reuse its TCP ports and
    // collide with its own half-open connection from before the reset.
    mix(&mut seed, lan9118::free_running_counter() as u64);
    let mut rng = ChaCha20Rng::from_seed(seed);
    let net_seed = rng.next_u64();
    let (stack, runner) = embassy_net::new(
        eth,
        embassy_net::Config::dhcpv4(Default::default()),
        NET.init(StackResources::new()),
        net_seed,
    );
    spawner.spawn(net_task(runner).unwrap());
    stack.wait_config_up().await;
    if let Some(cfg) = stack.config_v4() {
        log!("net: {} via {:?}", cfg.address, cfg.gateway);
    }
    // Mix the time DHCP took into the seed: weak, but differs from boot to boot.
    let jitter = embassy_time::Instant::now().as_ticks()
        ^ cortex_m::peripheral::SYST::get_current() as u64
        ^ (lan9118::free_running_counter() as u64) << 32;
    mix(&mut seed, jitter);
    let mut rng = ChaCha20Rng::from_seed(seed);

    let mut board = board::Qemu;
    link::run(stack, &prov, &mut board, &mut rng, BUFFERS.take()).await
}

/// XOR `v` into the seed, at a place that depends on `v`.
fn mix(seed: &mut [u8; 32], v: u64) {
    let at = (v as usize) % 4 * 8;
    for (s, b) in seed[at..at + 8].iter_mut().zip(v.to_le_bytes()) {
        *s ^= b;
    }
}

#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    if irqn == lan9118::IRQ as i16 {
        lan9118::on_interrupt();
    }
}

#[exception]
unsafe fn HardFault(frame: &cortex_m_rt::ExceptionFrame) -> ! {
    fail(format_args!("hard fault at pc {:#010x}", frame.pc()))
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    fail(format_args!("panic: {info}"))
}
