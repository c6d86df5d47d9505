#!/usr/bin/env bash
# The project's test command (README "Quick start"): every test there is.
#   1. the workspace's unit, integration, stress and doc tests;
#   2. the loom model of the engine's reference counting (cfg(loom));
#   3. the real-Linux-peer tests in network namespaces, which need root: without root
#      they are reported as SKIPPED, never as passed.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== workspace tests"
cargo test --workspace --all-targets
cargo test --workspace --doc

echo "== loom model (engine references, register/unregister, rebalance)"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom" \
    cargo test -p dmaengine --test loom --release

echo "== network-namespace tests (real Linux TCP peer)"
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then
    cargo test --release --test netns -- --ignored --test-threads=1
else
    echo "SKIPPED: the network-namespace tests need root and iproute2"
fi
