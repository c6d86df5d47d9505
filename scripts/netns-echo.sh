#!/usr/bin/env bash
# The echo server against a real Linux TCP peer, in network namespaces.
#
#   scripts/netns-echo.sh [tap|veth] [--mtu N] [--connections K] [--bytes N] [-- SERVER_FLAGS...]
#
# veth (default): two namespaces joined by a veth pair. The server namespace holds one end,
#   which the echo server (smoltcp, MAC 02:00:00:77:00:01, 10.77.0.1) drives through
#   AF_PACKET (--iface); the client namespace holds the other end, where the kernel
#   (10.77.0.2) runs echo_client. The kernel side needs `ethtool -K <veth> tx off`, or its
#   TCP checksums arrive unfilled and smoltcp drops every segment.
# tap: one namespace holds a TAP interface with the kernel's side (10.77.0.2) and the
#   client; the echo server opens the TAP (--tap) and is 10.77.0.1 behind it.
#
# Needs root, iproute2 and (veth) ethtool. Uses release builds of the examples from
# $CARGO_TARGET_DIR (or ./target), building them first unless NETNS_ECHO_NO_BUILD=1.
# Addresses exist only inside the namespaces, which are always removed on exit.
# Exit status: 0 if every byte came back intact and the server removed its DMA device
# cleanly; 1 on any mismatch or failure; 2 on a usage or environment problem.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=veth
mtu=1500
connections=4
bytes=8MiB
server_extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        tap|veth) mode=$1 ;;
        --mtu) mtu=${2:?--mtu needs a value}; shift ;;
        --mtu=*) mtu=${1#--mtu=} ;;
        --connections) connections=${2:?--connections needs a value}; shift ;;
        --bytes) bytes=${2:?--bytes needs a value}; shift ;;
        --) shift; server_extra=("$@"); break ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "netns-echo: unknown argument $1 (usage: $0 [tap|veth] [--mtu N])" >&2; exit 2 ;;
    esac
    shift
done
case "$mtu" in ''|*[!0-9]*) echo "netns-echo: --mtu must be a number" >&2; exit 2 ;; esac

if [ "$(id -u)" != 0 ]; then
    echo "netns-echo: needs root (network namespaces, TAP and AF_PACKET)" >&2
    exit 2
fi
command -v ip >/dev/null || { echo "netns-echo: needs iproute2 (ip)" >&2; exit 2; }
if [ "$mode" = veth ] && ! command -v ethtool >/dev/null; then
    echo "netns-echo: ethtool is missing; it is needed to turn off checksum offload on the" >&2
    echo "            kernel's veth end (apt-get install ethtool)" >&2
    exit 2
fi

target=${CARGO_TARGET_DIR:-target}
server_bin=$target/release/examples/echo_server
client_bin=$target/release/examples/echo_client
if [ "${NETNS_ECHO_NO_BUILD:-0}" != 1 ]; then
    "${CARGO:-cargo}" build --release --example echo_server --example echo_client >&2
fi
for b in "$server_bin" "$client_bin"; do
    [ -x "$b" ] || { echo "netns-echo: $b not found (build with cargo build --release --examples)" >&2; exit 2; }
done

id=$$
ns_server=ndecho-s-$id
ns_client=ndecho-c-$id
if_server=nde-s$id
if_client=nde-c$id
server_ip=10.77.0.1
client_ip=10.77.0.2
port=7000
work=$(mktemp -d)
server_pid=

cleanup() {
    set +e
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null
        wait "$server_pid" 2>/dev/null
    fi
    ip netns del "$ns_server" 2>/dev/null
    ip netns del "$ns_client" 2>/dev/null
    ip link del "$if_server" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

ip netns add "$ns_client"
in_ns "$ns_client" ip link set lo up
if [ "$mode" = veth ]; then
    ip netns add "$ns_server"
    in_ns "$ns_server" ip link set lo up
    ip link add "$if_server" type veth peer name "$if_client"
    ip link set "$if_server" netns "$ns_server"
    ip link set "$if_client" netns "$ns_client"
    in_ns "$ns_server" ip link set "$if_server" mtu "$mtu" up
    in_ns "$ns_client" ip link set "$if_client" mtu "$mtu" up
    in_ns "$ns_client" ip addr add "$client_ip/24" dev "$if_client"
    in_ns "$ns_client" ethtool -K "$if_client" tx off >/dev/null
    server_ns=$ns_server
    link_flags=(--iface "$if_server")
else
    in_ns "$ns_client" ip tuntap add dev "$if_server" mode tap
    in_ns "$ns_client" ip link set "$if_server" mtu "$mtu" up
    in_ns "$ns_client" ip addr add "$client_ip/24" dev "$if_server"
    server_ns=$ns_client
    link_flags=(--tap "$if_server")
fi

echo "netns-echo: $mode, MTU $mtu: server $server_ip:$port (smoltcp + netdma), client $client_ip (Linux TCP), $connections x $bytes" >&2
# Not through the in_ns function: $! must be the server itself (ip execs it), so that
# SIGINT reaches it.
ip netns exec "$server_ns" "$server_bin" "${link_flags[@]}" --addr "$server_ip/24" --port "$port" \
    --duration 600 --json "${server_extra[@]}" >"$work/server.json" 2>"$work/server.err" &
server_pid=$!

# Wait for the server to listen (it says so on stderr).
for _ in $(seq 1 200); do
    grep -q "echo_server: serving" "$work/server.err" 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if ! grep -q "echo_server: serving" "$work/server.err" 2>/dev/null; then
    echo "netns-echo: the server did not start:" >&2
    cat "$work/server.err" >&2
    exit 1
fi

client_rc=0
in_ns "$ns_client" "$client_bin" --addr "$server_ip:$port" --connections "$connections" \
    --bytes "$bytes" --json >"$work/client.json" 2>"$work/client.err" || client_rc=$?

kill -INT "$server_pid" 2>/dev/null || true
server_rc=0
for _ in $(seq 1 200); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$server_pid" 2>/dev/null; then
    echo "netns-echo: the server did not stop on SIGINT" >&2
    server_rc=124
else
    wait "$server_pid" || server_rc=$?
fi
server_pid=

echo "client: $(cat "$work/client.json")"
echo "server: $(cat "$work/server.json")"
sed 's/^/client stderr: /' "$work/client.err" >&2
grep -v "echo_server: serving" "$work/server.err" | sed 's/^/server stderr: /' >&2 || true

fail=0
if [ "$client_rc" != 0 ] || ! grep -q '"integrity_ok":true' "$work/client.json"; then
    echo "netns-echo: FAILED: the client saw a mismatch or error (exit $client_rc)" >&2
    fail=1
fi
if [ "$server_rc" != 0 ] || ! grep -q '"unregister_ok":true' "$work/server.json"; then
    echo "netns-echo: FAILED: the server failed (exit $server_rc) or could not remove its DMA device" >&2
    fail=1
fi
if [ "$fail" = 0 ]; then
    echo "netns-echo: OK ($mode, MTU $mtu)" >&2
fi
exit "$fail"
