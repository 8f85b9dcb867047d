#!/usr/bin/env bash
# The demo: builds Sesame, starts a relay (embedded SQLite store, self-signed
# certificate) and an agent in a temporary directory on this machine, and opens
# `sesame shell` into it through the relay over TLS. When the shell exits,
# everything is stopped and the temporary directory removed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install Rust with rustup (https://rustup.rs) and run this again" >&2
    exit 1
fi
# A C compiler, and npm: the relay embeds its browser console (relay/web).
pkgs=()
command -v cc >/dev/null 2>&1 || pkgs+=(gcc libc6-dev)
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
if [ ${#pkgs[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
fi
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi

echo "==> building (release)"
cargo build --release --bins --locked -q
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"

DEMO="$(mktemp -d -t sesame-demo.XXXXXX)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DEMO"
}
trap cleanup EXIT INT TERM

"$BIN/sesame-relay" serve --data-dir "$DEMO/relay" --listen 127.0.0.1:0 \
    >"$DEMO/relay.out" 2>"$DEMO/relay.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q listening "$DEMO/relay.out" 2>/dev/null && break; sleep 0.1; done
PORT="$(grep -o '127.0.0.1:[0-9]*' "$DEMO/relay.out" | cut -d: -f2)"
[ -n "$PORT" ] || { echo "error: the relay did not start:"; cat "$DEMO/relay.log"; exit 1; }

CODE="$("$BIN/sesame-relay" agent add demo-host --tag demo=yes --data-dir "$DEMO/relay")"
export SESAME_API_KEY="$("$BIN/sesame-relay" user add demo --admin --data-dir "$DEMO/relay")"
export SESAME_RELAY="https://127.0.0.1:$PORT"
export SESAME_CA="$DEMO/relay/tls/ca.pem"

"$BIN/sesame-agent" --relay "wss://127.0.0.1:$PORT" --ca "$SESAME_CA" \
    --state-dir "$DEMO/agent" --activate "$CODE" 2>"$DEMO/agent.log" &
PIDS+=($!)
for _ in $(seq 100); do
    "$BIN/sesame" ls --json 2>/dev/null | grep -q '"online": true' && break
    sleep 0.1
done

echo "==> relay on 127.0.0.1:$PORT, agent 'demo-host' online:"
"$BIN/sesame" ls
echo "==> the console: open the link below in a browser (trust $SESAME_CA, or accept its warning)"
"$BIN/sesame" web
echo "==> sesame shell demo-host   (exit the shell to stop the demo)"
set +e
"$BIN/sesame" shell demo-host
STATUS=$?
set -e
echo "==> the shell exited with $STATUS; stopping the relay and the agent"
exit "$STATUS"
