#!/usr/bin/env bash
# The project's test command (README "Quick start"): every test there is.
#   1. the workspace's unit, integration, stress and doc tests;
#   2. the loom models: the engine's reference counting, netdma's enable/disable/idle
#      release against a read in flight (cfg(loom));
#   3. the real-Linux-peer tests in network namespaces, which need root: without root
#      they are reported as SKIPPED, never as passed.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== workspace tests"
cargo test --workspace --all-targets
cargo test --workspace --doc

echo "== loom models (engine references, register/unregister, rebalance; netdma enable/disable/idle release)"
export LOOM_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="$LOOM_TARGET_DIR" \
    cargo test -p dmaengine --test loom --release
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="$LOOM_TARGET_DIR" \
    cargo test -p netdma --lib --release loom

echo "== network-namespace tests (real Linux TCP peer)"
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then
    cargo test --release --test netns -- --ignored --test-threads=1
    cargo test --release --test ctl_tap -- --ignored  # netdmactl on a TAP, traffic flowing
else
    echo "SKIPPED: the network-namespace tests need root and iproute2"
fi
