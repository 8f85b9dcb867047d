#!/usr/bin/env bash
# Sets up what the tests need (when missing) and runs every test of the project:
# formatting and lints, the no_std build of agent-core for a Cortex-M4F, unit and
# property tests, golden vectors, the firmware of every board under boards/, and the
# end-to-end scenarios over the real relay, agents and CLI on loopback, including
# the QEMU board's firmware booted in qemu-system-arm. Exits non-zero on the first
# failure.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install Rust with rustup (https://rustup.rs) and run this again" >&2
    exit 1
fi

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing Debian packages: ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

if ! rustup target list --installed 2>/dev/null | grep -qx thumbv7em-none-eabihf; then
    log "adding the thumbv7em-none-eabihf target"
    rustup target add thumbv7em-none-eabihf
fi
# The relay embeds its browser console, whose protocol client is agent-core built
# for WebAssembly (relay/build.rs).
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    log "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
fi
for c in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
        rustup component add "$c"
    fi
done

# qemu-user-static runs the aarch64 agent; qemu-system-arm boots the firmware and
# socat carries its connection to the relay; OpenSSH is what the ssh tests log in to;
# openssl's s_client makes the hostile tests' unfinished requests; asciinema plays
# the relay's shell recordings (tests/recordings.rs); iproute2 and iptables make the
# network faults (tests/netfaults.rs).
pkgs=()
command -v qemu-aarch64-static >/dev/null 2>&1 || pkgs+=(qemu-user-static)
command -v qemu-system-arm >/dev/null 2>&1 || pkgs+=(qemu-system-arm)
command -v socat >/dev/null 2>&1 || pkgs+=(socat)
command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
[ -x /usr/sbin/sshd ] || pkgs+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 && command -v scp >/dev/null 2>&1 || pkgs+=(openssh-client)
command -v asciinema >/dev/null 2>&1 || pkgs+=(asciinema)
# The network fault tests (tests/netfaults.rs) cut links in namespaces they make.
command -v ip >/dev/null 2>&1 || pkgs+=(iproute2)
command -v iptables >/dev/null 2>&1 || pkgs+=(iptables)
# The relay's build fetches the console's npm packages (relay/web); the browser
# tests (tests/tests/web.rs) drive Debian's Chromium with playwright-core.
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
[ -x /usr/bin/chromium ] || pkgs+=(chromium)
if [ ${#pkgs[@]} -gt 0 ]; then
    log "installing Debian packages: ${pkgs[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    for p in "${pkgs[@]}"; do
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$p"
    done
fi

log "playwright-core for the browser tests (tests/web, pinned by its lock file)"
(cd tests/web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "agent-core for thumbv7em-none-eabihf (no_std, no alloc)"
cargo build -p agent-core --target thumbv7em-none-eabihf --locked

log "agent-embedded (its own workspace): lints, host tests, Cortex-M4F build"
(
    cd agent-embedded
    cargo fmt -- --check
    cargo clippy --all-targets --locked -- -D warnings
    cargo test --locked
    cargo build --target thumbv7em-none-eabihf --locked
)

for board in boards/*/; do
    board=${board%/}
    log "firmware $board (its own workspace): lints, release build, size"
    (
        cd "$board"
        cargo fmt -- --check
        cargo clippy --release --locked -- -D warnings
        cargo build --release --locked
        elf=${CARGO_TARGET_DIR:-target}/thumbv7em-none-eabihf/release/sesame-${board#boards/}
        # Flash is text + data (budget 256 KiB); RAM is checked at run time by
        # tests/embedded.rs (static + stack high-water, budget 128 KiB).
        if command -v size >/dev/null 2>&1; then size "$elf"; fi
    )
done

# Every fuzz target is built and run, so that none can rot unnoticed: 30 s each on
# libFuzzer (cargo-fuzz, nightly), starting from an empty corpus.
log "fuzz targets of agent-core (nightly, cargo-fuzz): build all, run each for 30 s"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
(
    cd agent-core
    cargo +nightly fuzz build
    for target in $(cargo +nightly fuzz list); do
        out=$(mktemp)
        if ! cargo +nightly fuzz run "$target" -- -max_total_time=30 -print_final_stats=1 >"$out" 2>&1; then
            tail -n 60 "$out"
            echo "error: fuzz target '$target' failed (its input is under agent-core/fuzz/artifacts/$target)" >&2
            exit 1
        fi
        echo "$target: $(grep -m1 stat::number_of_executed_units "$out")"
        rm -f "$out"
    done
)

log "building the binaries the end-to-end tests run"
cargo build --workspace --bins --locked

log "static musl agents for x86_64 and aarch64"
tests/build-static.sh

log "cargo test (including the static-agent and sshd tests; the ten-minute outage beside them)"
cargo test --workspace --locked --no-run
# Ten minutes without the agent's link, output flowing (issue 14): mostly idle, so it
# runs in the background while the other tests run, from its compiled test binary.
outage=ten_minutes_without_the_agents_link_with_output_flowing_memory_stays_flat
resume_tests=$(cargo test -p tests --test resume --locked --no-run --message-format=json \
    | grep -o '"executable":"[^"]*/resume-[^"]*"' | tail -n 1 | cut -d'"' -f4)
outage_log=$(mktemp)
# In a process group of its own: if this script stops early, the test and the
# relay, agent and clients it started all stop with it.
(cd tests && exec setsid "$resume_tests" --ignored --exact "$outage") >"$outage_log" 2>&1 &
outage_pid=$!
trap 'kill -TERM -- "-$outage_pid" 2>/dev/null || true' EXIT
cargo test --workspace --locked -- --include-ignored --skip "$outage"
log "the ten-minute outage test (started with the others)"
if ! wait "$outage_pid"; then
    cat "$outage_log"
    echo "error: the ten-minute outage test failed" >&2
    exit 1
fi
trap - EXIT
grep -E "^test |test result" "$outage_log"
