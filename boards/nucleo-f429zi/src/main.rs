//! # Sesame on ST's NUCLEO-F429ZI
//!
//! STM32F429ZI (Cortex-M4F at 180 MHz) with its on-chip Ethernet MAC and the
//! board's LAN8742A PHY (RMII), and the chip's hardware RNG for TLS.
//!
//! ## Contract
//! - The provisioning image (`sesame-relay device provision`) is read from the
//!   last flash sector (`memory.x`, 0x081E0000); see README.md for flashing it.
//!   Without a valid one the firmware logs why and blinks the red LED.
//! - The log goes to USART3 (PD8), the ST-LINK's virtual COM port, 115200 8N1.
//! - The Ethernet MAC address is derived from the chip's unique ID.
#![no_std]
#![no_main]

use core::fmt::{self, Write as _};

use agent_core::provision::Provision;
use agent_embedded::console::{Board, Mac};
use agent_embedded::link::{self, Buffers};
use embassy_executor::Spawner;
use embassy_net::{Runner, StackResources};
use embassy_stm32::bind_interrupts;
use embassy_stm32::eth::{self, Ethernet, GenericPhy, PacketQueue, Sma};
use embassy_stm32::gpio::{Level, Output, Speed};
use embassy_stm32::peripherals::{ETH, ETH_SMA, RNG};
use embassy_stm32::rng::{self, Rng};
use embassy_stm32::usart::{self, UartTx};
use embassy_time::{Duration, Timer};
use static_cell::{ConstStaticCell, StaticCell};

bind_interrupts!(struct Irqs {
    ETH => eth::InterruptHandler;
    HASH_RNG => rng::InterruptHandler<RNG>;
});

type Device = Ethernet<'static, ETH, GenericPhy<Sma<'static, ETH_SMA>>>;

static LOG: StaticCell<UartTx<'static, embassy_stm32::mode::Blocking>> = StaticCell::new();
static mut LOG_PTR: Option<&'static mut UartTx<'static, embassy_stm32::mode::Blocking>> = None;

struct Log;

impl fmt::Write for Log {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        critical_section::with(|_| {
            // SAFETY: set once in `main` before any logging; used only inside a
            // critical section, so never aliased.
            let tx = unsafe { (*core::ptr::addr_of_mut!(LOG_PTR)).as_deref_mut() };
            if let Some(tx) = tx {
                let _ = tx.blocking_write(s.as_bytes());
            }
        });
        Ok(())
    }
}

macro_rules! log {
    ($($t:tt)*) => {{
        let ms = embassy_time::Instant::now().as_millis();
        let _ = write!(Log, "[{:>5}.{:03}] ", ms / 1000, ms % 1000);
        let _ = writeln!(Log, $($t)*);
    }};
}

fn provision_region() -> &'static [u8] {
    extern "C" {
        static _provision_start: u8;
        static _provision_len: u8;
    }
    // SAFETY: the linker reserves this sector for the image; it is only read.
    unsafe {
        let start = core::ptr::addr_of!(_provision_start);
        let len = core::ptr::addr_of!(_provision_len) as usize;
        core::slice::from_raw_parts(start, len)
    }
}

/// What this board adds to the console.
struct Nucleo {
    mac: [u8; 6],
}

impl Board for Nucleo {
    fn uptime_ms(&self) -> u64 {
        embassy_time::Instant::now().as_millis()
    }
    fn memory(&self) -> (usize, usize) {
        extern "C" {
            static __sheap: u8;
            static _stack_start: u8;
        }
        let start = 0x2000_0000usize;
        let statics = core::ptr::addr_of!(__sheap) as usize - start;
        let total = core::ptr::addr_of!(_stack_start) as usize - start;
        (statics, total)
    }
    fn network(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        write!(out, "stm32 eth {}", Mac(self.mac))
    }
    fn request_reboot(&mut self) {
        cortex_m::peripheral::SCB::sys_reset();
    }
    fn log(&mut self, line: fmt::Arguments<'_>) {
        log!("{line}");
    }
}

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Device>) -> ! {
    runner.run().await
}

static PACKETS: ConstStaticCell<PacketQueue<4, 4>> = ConstStaticCell::new(PacketQueue::new());
/// Sockets for DHCP, DNS, the relay and the forwarded connections.
static NET: StaticCell<StackResources<{ link::SOCKETS }>> = StaticCell::new();
static BUFFERS: ConstStaticCell<Buffers> = ConstStaticCell::new(Buffers::new());

fn clocks() -> embassy_stm32::Config {
    use embassy_stm32::rcc::*;
    let mut config = embassy_stm32::Config::default();
    // 8 MHz from the ST-LINK's MCO -> 180 MHz system clock, 48 MHz for the RNG.
    config.rcc.hse = Some(Hse {
        freq: embassy_stm32::time::Hertz(8_000_000),
        mode: HseMode::Bypass,
    });
    config.rcc.pll_src = PllSource::HSE;
    config.rcc.pll = Some(Pll {
        prediv: PllPreDiv::DIV4,
        mul: PllMul::MUL180,
        divp: Some(PllPDiv::DIV2),
        divq: Some(PllQDiv::DIV8), // 45 MHz: the RNG needs <= 48 MHz
        divr: None,
    });
    config.rcc.sys = Sysclk::PLL1_P;
    config.rcc.ahb_pre = AHBPrescaler::DIV1;
    config.rcc.apb1_pre = APBPrescaler::DIV4;
    config.rcc.apb2_pre = APBPrescaler::DIV2;
    config
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_stm32::init(clocks());
    let mut red = Output::new(p.PB14, Level::Low, Speed::Low);

    let mut uart_config = usart::Config::default();
    uart_config.baudrate = 115_200;
    if let Ok(tx) = UartTx::new_blocking(p.USART3, p.PD8, uart_config) {
        let tx = LOG.init(tx);
        // SAFETY: the only write, before any reader (see `Log`).
        critical_section::with(|_| unsafe { *core::ptr::addr_of_mut!(LOG_PTR) = Some(tx) });
    }
    log!(
        "sesame agent {} on NUCLEO-F429ZI",
        env!("CARGO_PKG_VERSION")
    );

    let prov = match Provision::decode(provision_region()) {
        Ok(p) => p,
        Err(e) => loop {
            log!("error: {e}");
            red.toggle();
            Timer::after(Duration::from_secs(1)).await;
        },
    };
    log!(
        "device: agent '{}', relay {}:{} (certificate name {})",
        prov.agent_id,
        prov.relay_host,
        prov.relay_port,
        prov.tls_name
    );

    let mut rng = Rng::new(p.RNG, Irqs);
    // A locally administered MAC from the 96-bit unique ID.
    let uid = embassy_stm32::uid::uid();
    let mac = [
        0x02,
        uid[0] ^ uid[4],
        uid[1] ^ uid[5],
        uid[2] ^ uid[8],
        uid[3] ^ uid[9],
        uid[6] ^ uid[10],
    ];
    let device = Ethernet::new(
        PACKETS.take(),
        p.ETH,
        Irqs,
        p.PA1,
        p.PA7,
        p.PC4,
        p.PC5,
        p.PG13,
        p.PB13,
        p.PG11,
        mac,
        p.ETH_SMA,
        p.PA2,
        p.PC1,
    );
    let seed = rng.next_u64();
    let (stack, runner) = embassy_net::new(
        device,
        embassy_net::Config::dhcpv4(Default::default()),
        NET.init(StackResources::new()),
        seed,
    );
    spawner.spawn(net_task(runner).unwrap());

    let mut board = Nucleo { mac };
    link::run(stack, &prov, &mut board, &mut rng, BUFFERS.take()).await
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    log!("panic: {info}");
    cortex_m::peripheral::SCB::sys_reset();
}
