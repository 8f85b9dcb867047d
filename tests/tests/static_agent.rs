//! The static musl agents (`tests/build-static.sh`): static, within budget, and
//! serving real sessions natively (x86_64) and under `qemu-aarch64-static`.
//!
//! Ignored by a plain `cargo test` because they need the cross builds;
//! `tests/run-all.sh` (and so CI) builds them and runs these with `--include-ignored`.

use std::path::PathBuf;
use std::process::Command;

use tests::{static_agent, text, Env};

/// Size budget of each static agent.
const BUDGET: u64 = 2 * 1024 * 1024;

/// (has a PT_INTERP header, e_machine) of an ELF64 little-endian file.
fn elf_facts(bytes: &[u8]) -> (bool, u16) {
    assert_eq!(&bytes[..4], b"\x7fELF", "not ELF");
    assert_eq!(bytes[4], 2, "not ELF64");
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    let machine = u16_at(18);
    let phoff = u64_at(32) as usize;
    let phentsize = u16_at(54) as usize;
    let phnum = u16_at(56) as usize;
    let interp = (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) == 3 // PT_INTERP
    });
    (interp, machine)
}

#[test]
#[ignore = "needs tests/build-static.sh"]
fn static_agents_are_static_and_within_budget() {
    for (triple, machine) in [
        ("x86_64-unknown-linux-musl", 62),
        ("aarch64-unknown-linux-musl", 183),
    ] {
        let path = static_agent(triple);
        let bytes = std::fs::read(&path).unwrap();
        let (interp, m) = elf_facts(&bytes);
        assert!(!interp, "{triple}: has a dynamic loader (PT_INTERP)");
        assert_eq!(m, machine, "{triple}: wrong machine");
        assert!(
            bytes.len() as u64 <= BUDGET,
            "{triple}: {} bytes, budget {BUDGET}",
            bytes.len()
        );
        // No dynamic section at all: nothing to resolve at load time.
        let file = Command::new("file").arg(&path).output().unwrap();
        let said = text(&file).0;
        assert!(said.contains("statically linked"), "{said}");
    }
}

#[test]
#[ignore = "needs tests/build-static.sh"]
fn version_names_target_and_protocol() {
    let out = Command::new(static_agent("x86_64-unknown-linux-musl"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        text(&out).0.trim(),
        format!(
            "sesame-agent {} (x86_64-unknown-linux-musl, protocol {})",
            env!("CARGO_PKG_VERSION"),
            agent_core::PROTOCOL_VERSION
        )
    );
}

fn exec_and_shell(env: &Env, arch: &str) {
    let out = env.run(
        &["exec", "gw-01", "--", "sh", "-c", "echo $0-ok; exit 3"],
        b"",
    );
    assert_eq!(text(&out).0, "sh-ok\n", "{}", text(&out).1);
    assert_eq!(out.status.code(), Some(3));
    let out = env.run(
        &["exec", "gw-01", "--", "cat"],
        b"stdin through the static agent",
    );
    assert_eq!(text(&out).0, "stdin through the static agent");
    let out = env.run(&["shell", "gw-01"], b"echo shell-$((40+2))\nexit 6\n");
    assert!(text(&out).0.contains("shell-42"), "{:?}", text(&out));
    assert_eq!(out.status.code(), Some(6));
    assert!(
        env.agent.log().contains("connected to the relay"),
        "{arch}: {}",
        env.agent.log()
    );
}

#[test]
#[ignore = "needs tests/build-static.sh"]
fn x86_64_static_agent_serves_exec_and_shell() {
    let env = Env::start_custom(&[], &[static_agent("x86_64-unknown-linux-musl")]);
    exec_and_shell(&env, "x86_64");
}

#[test]
#[ignore = "needs tests/build-static.sh and qemu-user-static"]
fn aarch64_static_agent_under_qemu_serves_exec_and_shell() {
    let qemu = PathBuf::from("/usr/bin/qemu-aarch64-static");
    assert!(
        qemu.exists(),
        "install qemu-user-static (tests/run-all.sh does)"
    );
    let env = Env::start_custom(&[], &[qemu, static_agent("aarch64-unknown-linux-musl")]);
    // The agent is emulated; the processes it starts are this machine's own.
    exec_and_shell(&env, "aarch64");
}
