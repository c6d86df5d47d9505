#!/usr/bin/env bash
# The operator's scenario, run for real: an administrator removes the DMA device under a
# running echo service with netdmactl, and the traffic goes on by the CPU.
#
#   scripts/ctl-demo.sh           # print the transcript
#   scripts/ctl-demo.sh --write   # and put it in README.md, between the ctl-demo markers
#
# Uses release builds of echo_server and netdmactl from $CARGO_TARGET_DIR (or ./target),
# building them first. No privileges needed: the echo service is the embedded run (a
# smoltcp client and server in one process over the in-memory link).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

write=0
case "${1:-}" in
    --write) write=1 ;;
    "") ;;
    *) echo "usage: $0 [--write]" >&2; exit 2 ;;
esac

target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target=$repo/$target ;; esac
"${CARGO:-cargo}" build --release --example echo_server --bin netdmactl >&2
server_bin=$target/release/examples/echo_server
ctl_bin=$target/release/netdmactl

work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

out=$work/transcript
: >"$out"
say() { printf '%s\n' "$*" >>"$out"; }
# Runs netdmactl, recording the command line, its output and a non-zero exit status.
ctl() {
    say "\$ netdmactl --socket ctl.sock $*"
    local rc=0
    "$ctl_bin" --socket ctl.sock "$@" >>"$out" 2>&1 || rc=$?
    [ "$rc" = 0 ] || say "[exit status $rc]"
}

say "\$ echo_server --control ctl.sock --copybreak 4096 --connections 2 &"
"$server_bin" --control ctl.sock --copybreak 4096 --connections 2 \
    >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
for _ in $(seq 1 100); do
    [ -S ctl.sock ] && break
    sleep 0.1
done
[ -S ctl.sock ] || { echo "ctl-demo: the server did not start:" >&2; cat "$work/server.err" >&2; exit 1; }
sed -n 's/^\(echo_server: control socket.*\)$/\1/p' "$work/server.err" >>"$out"
sleep 1
say "\$ ls -l ctl.sock"
ls -l ctl.sock | awk '{print $1, $NF}' >>"$out"
ctl sysctl set net.netdma.idle_release_ms 0
ctl stats
ctl dev list
ctl dev remove swdma
ctl dma disable
ctl dev remove swdma
ctl dev list
ctl stats --watch 1 --count 3
ctl dma enable
say "\$ kill -INT %1"
kill -INT "$server_pid"
wait "$server_pid" || true
server_pid=
cat "$work/server.out" >>"$out"

cat "$out"
if [ "$write" = 1 ]; then
    readme=$repo/README.md
    grep -q '^<!-- ctl-demo:begin' "$readme" || { echo "ctl-demo: no ctl-demo markers in README.md" >&2; exit 1; }
    {
        sed -n '1,/^<!-- ctl-demo:begin/p' "$readme"
        echo '```text'
        cat "$out"
        echo '```'
        sed -n '/^<!-- ctl-demo:end/,$p' "$readme"
    } >"$work/README.new"
    cp "$work/README.new" "$readme"
    echo "ctl-demo: README.md updated" >&2
fi
