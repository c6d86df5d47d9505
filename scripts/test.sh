#!/usr/bin/env bash
# The project's test command (README "Quick start"): every test there is.
#   1. the workspace's unit, integration, stress and doc tests;
#   2. the loom models: the engine's reference counting, netdma's enable/disable/idle
#      release against a read in flight (cfg(loom));
#   3. the root-only tests (every #[ignore]d test in the workspace): the links on
#      AF_PACKET and TAP, and the real-Linux-peer tests in network namespaces (veth and
#      TAP with the peer's default offloads, the peer's offloads off, a faulty wire).
#      They need root and iproute2 and nothing else (offloads are toggled through the
#      SIOCETHTOOL ioctl). As root, a missing iproute2 is installed with apt-get.
#      Without root they are listed by name as SKIPPED, never reported as passed.
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

echo "== root-only tests (links, network namespaces with a real Linux TCP peer)"
if [ "$(id -u)" = 0 ]; then
    if ! command -v ip >/dev/null; then
        if command -v apt-get >/dev/null; then
            echo "installing iproute2 (the namespace tests need ip)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null \
                || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null; }
        else
            echo "the root-only tests need iproute2 (ip); install it" >&2
            exit 1
        fi
    fi
    # The link tests in the libraries, then the namespace tests (release builds: they
    # move real traffic through the examples).
    cargo test --workspace --lib -- --ignored --test-threads=1
    cargo test --release --test netns -- --ignored --test-threads=1
    cargo test --release --test ctl_tap -- --ignored  # netdmactl on a TAP, traffic flowing
else
    echo "SKIPPED (need root; run scripts/test.sh as root):"
    cargo test --workspace --all-targets -- --ignored --list 2>/dev/null \
        | sed -n 's/: test$//p' | sed 's/^/  SKIPPED: /'
fi
