#!/usr/bin/env bash
# The whole test suite: set up what this machine lacks, build once, test.
#
#   ./scripts/test.sh
#
# One debug build of every binary is shared by all tests: the end-to-end
# tests run the real binaries (meshctl, mesh-control, mesh-proxy, the
# services) from target/debug.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup-test-machine.sh

echo "==> building every binary once"
cargo build --workspace --bins

echo "==> Rust tests (unit, layer, in-process integration, end-to-end)"
cargo test --workspace --no-fail-fast

echo "==> helloworld-service (Python) tests"
python3 -m unittest discover -s services/helloworld-service -p 'test_*.py'

echo "==> hello-grpc (Python, grpcio) tests"
python3 -m unittest discover -s services/hello-grpc -p 'test_*.py'

echo "==> benchmark harness (Python) tests"
python3 -m unittest discover -s bench -p 'test_*.py'

echo "==> sentiment-service (Java) self-test"
java services/sentiment-service/Sentiment.java --self-test
