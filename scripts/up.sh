#!/usr/bin/env bash
# Quick start: build micromesh and run the Guestbook meshed on this laptop.
#
#   ./scripts/up.sh                      # Guestbook on http://localhost:8080
#   ./scripts/up.sh --with helloworld-service@v2 --replicas helloworld-service=2
#
# No Kubernetes and no Docker: `meshctl up` starts the control plane, every
# service with its own sidecar proxy, and the ingress gateway as child
# processes, prints what runs where, and stops them all on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "micromesh needs '$1': $2" >&2
    exit 1
}
need cargo   "install Rust from https://rustup.rs (the 'cargo' command)"
need python3 "helloworld-service is Python 3: 'sudo apt install python3' (Debian/Ubuntu) or 'brew install python'"
need java    "sentiment-service needs a Java 17+ JDK: 'sudo apt install openjdk-17-jdk-headless' (Debian/Ubuntu) or 'brew install openjdk@17'"

echo "==> building micromesh (release; the first build compiles every dependency: 16 minutes were measured"
echo "    on a busy 2-core machine, less with more free cores; later builds take seconds)"
cargo build --release --workspace --bins
exec target/release/meshctl up "$@"
