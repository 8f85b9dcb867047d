#!/usr/bin/env bash
# Boot the QEMU board as a Sesame agent against a relay on this machine.
#
#   boards/qemu-mps2-an386/run.sh --relay 127.0.0.1:PORT --ca CA.pem --activate CODE
#
# Builds the firmware if needed, provisions the device as the agent CODE names
# (`sesame-relay device provision`, with the relay's --data-dir or
# $SESAME_RELAY_DATA), and boots QEMU with networking restricted to the relay's
# port (and the --guestfwd ones). Exits when QEMU exits (Ctrl-A X when interactive). The relay binary is
# $SESAME_RELAY_BIN, else sesame-relay on PATH, else built from this checkout.
#
# Options: --tls-name NAME  name to verify in the relay certificate [localhost for
#                           an IP relay, else the host]
#          --data-dir DIR   the relay's data directory
#          --image FILE     use (or keep) the provisioning image here; an existing
#                           image is reused, since CODE can be used only once
#          --allow-dest RULE, --deny-dest RULE
#                           forwarding rules for a new image (repeatable; see
#                           `sesame-relay device provision --help`)
#          --guestfwd IP:PORT=HOST:PORT
#                           the guest reaches HOST:PORT of this machine at IP:PORT
#                           (repeatable; IP in 10.0.2.0/24, e.g. 10.0.2.101)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
relay="" ca="" code="" tls_name="" image="" data_dir="${SESAME_RELAY_DATA:-}"
rules=() fwds=""

die() { echo "run.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --relay) relay=${2:-}; shift 2 ;;
        --ca) ca=${2:-}; shift 2 ;;
        --activate) code=${2:-}; shift 2 ;;
        --tls-name) tls_name=${2:-}; shift 2 ;;
        --data-dir) data_dir=${2:-}; shift 2 ;;
        --image) image=${2:-}; shift 2 ;;
        --allow-dest|--deny-dest) rules+=("$1" "${2:-}"); shift 2 ;;
        --guestfwd)
            m=${2:-}; to=${m#*=}
            case "$m" in
                *=*:*) ;;
                *) die "--guestfwd '$m': expected IP:PORT=HOST:PORT" ;;
            esac
            fwds+=",guestfwd=tcp:${m%%=*}-cmd:socat - TCP:${to}"
            shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ -n "$relay" ] || die "--relay HOST:PORT is required"
[ -n "$image" ] && [ -s "$image" ] || [ -n "$code" ] || die "--activate CODE is required"
[ -n "$image" ] && [ -s "$image" ] || [ -f "$ca" ] || die "--ca: '$ca' is not a file"
host=${relay%:*} port=${relay##*:}
case "$port" in ''|*[!0-9]*) die "--relay '$relay': expected HOST:PORT" ;; esac
if [ -z "$tls_name" ]; then
    case "$host" in
        127.*|localhost|::1) tls_name=localhost ;;
        *[!0-9.]*) tls_name=$host ;;
        *) die "--relay $host is an IP address: give --tls-name with a DNS name in its certificate" ;;
    esac
fi

# Tools, installed when missing (Debian; root or sudo).
need=()
command -v qemu-system-arm >/dev/null || need+=(qemu-system-arm)
command -v socat >/dev/null || need+=(socat)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    for p in "${need[@]}"; do
        echo "run.sh: installing $p" >&2
        $sudo apt-get install -y -q --no-install-recommends "$p" >/dev/null \
            || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q --no-install-recommends "$p" >/dev/null; }
    done
fi
rustup target list --installed 2>/dev/null | grep -q thumbv7em-none-eabihf \
    || rustup target add thumbv7em-none-eabihf

# Firmware (cargo reads .cargo/config.toml from the board's folder).
(cd "$here" && cargo build --release -q)
target_dir=${CARGO_TARGET_DIR:-$here/target}
elf=$target_dir/thumbv7em-none-eabihf/release/sesame-qemu-mps2-an386

# Provisioning image: made once per activation code.
if [ -z "$image" ]; then
    state=${XDG_STATE_HOME:-$HOME/.local/state}/sesame/devices
    mkdir -p "$state"
    image=$state/$(printf '%s' "$code" | sha256sum | cut -c1-16).img
fi
if [ ! -s "$image" ]; then
    relay_bin=${SESAME_RELAY_BIN:-$(command -v sesame-relay || true)}
    if [ -z "$relay_bin" ]; then
        (cd "$root" && cargo build --release -q -p relay)
        relay_bin=${CARGO_TARGET_DIR:-$root/target}/release/sesame-relay
    fi
    args=(device provision --activate "$code" --relay "10.0.2.100:$port"
          --tls-name "$tls_name" --ca "$ca" --out "$image" ${rules[@]+"${rules[@]}"})
    [ -n "$data_dir" ] && args+=(--data-dir "$data_dir")
    "$relay_bin" "${args[@]}" >&2
fi

# The guest reaches the relay at 10.0.2.100:PORT, the --guestfwd addresses, and
# nothing else (restrict=on).
exec qemu-system-arm -M mps2-an386 -nographic \
    -semihosting-config enable=on,target=native \
    -kernel "$elf" \
    -device loader,file="$image",addr=0x000FF000,force-raw=on \
    -nic "user,model=lan9118,restrict=on,guestfwd=tcp:10.0.2.100:$port-cmd:socat - TCP:$host:$port$fwds"
