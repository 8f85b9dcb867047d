#!/usr/bin/env bash
# Builds the static `sesame-agent` for x86_64 and aarch64 Linux (musl), installing
# what is missing (Debian packages, rustup targets). Prints where each binary is,
# what `file` says of it and its size.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
missing=()
command -v musl-gcc >/dev/null 2>&1 || missing+=(musl-tools)
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v file >/dev/null 2>&1 || missing+=(file)
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    for p in "${missing[@]}"; do
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$p"
    done
fi
TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
for t in "${TARGETS[@]}"; do
    rustup target list --installed | grep -qx "$t" || rustup target add "$t"
done

OUT="${CARGO_TARGET_DIR:-$PWD/target}"
for t in "${TARGETS[@]}"; do
    echo "==> sesame-agent for $t"
    cargo build -p agent-linux --bin sesame-agent --profile agent --target "$t" --locked -q
    bin="$OUT/$t/agent/sesame-agent"
    file "$bin"
    echo "$(stat -c %s "$bin") bytes: $bin"
done
