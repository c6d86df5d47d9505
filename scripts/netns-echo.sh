#!/usr/bin/env bash
# The echo server against a real Linux TCP peer, in network namespaces.
#
#   scripts/netns-echo.sh [tap|veth|faulty] [--mtu N] [--connections K] [--bytes N]
#                         [--peer-offloads on|off] [--expect-gso] [--seed N] [-- SERVER_FLAGS...]
#
# veth (default): two namespaces joined by a veth pair. The server namespace holds one end,
#   which the echo server (smoltcp, MAC 02:00:00:77:00:01, 10.77.0.1) drives through
#   AF_PACKET (--iface); the client namespace holds the other end, where the kernel
#   (10.77.0.2) runs echo_client with its default offloads (TSO, partial checksums).
# tap: one namespace holds a TAP interface with the kernel's side (10.77.0.2) and the
#   client; the echo server opens the TAP (--tap) and is 10.77.0.1 behind it.
# faulty: like veth, with a third namespace in the middle where `link_tool faulty-wire`
#   forwards frames between two veth pairs as a bad cable would (cut to the MTU,
#   complete checksums, seeded drops, duplicates, reordering and corrupted bytes).
#   Passes if every byte still comes back and the server's link refused (and counted)
#   corrupted frames: at least one, and no more than the wire corrupted on its way.
#
# --peer-offloads off: turn the client veth's transmit checksum offload (and with it TSO)
#   off, through the SIOCETHTOOL ioctl (link_tool tx-csum), so frames arrive complete,
#   without checksum flags, and the link must verify every one (checked).
# --expect-gso: check that the server's link received and sent frames larger than the MTU.
#
# Needs root and iproute2, nothing else. Uses release builds of the examples from
# $CARGO_TARGET_DIR (or ./target), building them first unless NETNS_ECHO_NO_BUILD=1.
# Addresses exist only inside the namespaces, which are always removed on exit.
# Exit status: 0 if every byte came back intact, the server removed its DMA device
# cleanly and the link counters are as expected; 1 on any mismatch or failure; 2 on a
# usage or environment problem.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=veth
mtu=1500
connections=4
bytes=8MiB
server_extra=()
peer_offloads=on
expect_gso=0
seed=1
while [ $# -gt 0 ]; do
    case "$1" in
        tap|veth|faulty) mode=$1 ;;
        --peer-offloads) peer_offloads=${2:?--peer-offloads needs on or off}; shift ;;
        --expect-gso) expect_gso=1 ;;
        --seed) seed=${2:?--seed needs a value}; shift ;;
        --mtu) mtu=${2:?--mtu needs a value}; shift ;;
        --mtu=*) mtu=${1#--mtu=} ;;
        --connections) connections=${2:?--connections needs a value}; shift ;;
        --bytes) bytes=${2:?--bytes needs a value}; shift ;;
        --) shift; server_extra=("$@"); break ;;
        -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
        *) echo "netns-echo: unknown argument $1 (usage: $0 [tap|veth|faulty] [--mtu N] ...)" >&2; exit 2 ;;
    esac
    shift
done
case "$mtu" in ''|*[!0-9]*) echo "netns-echo: --mtu must be a number" >&2; exit 2 ;; esac
case "$peer_offloads" in on|off) ;; *) echo "netns-echo: --peer-offloads takes on or off" >&2; exit 2 ;; esac
case "$seed" in ''|*[!0-9]*) echo "netns-echo: --seed must be a number" >&2; exit 2 ;; esac
if [ "$mode" = tap ] && [ "$peer_offloads" = off ]; then
    echo "netns-echo: --peer-offloads off applies to veth and faulty (a TAP's offloads are the server's choice)" >&2
    exit 2
fi

if [ "$(id -u)" != 0 ]; then
    echo "netns-echo: needs root (network namespaces, TAP and AF_PACKET)" >&2
    exit 2
fi
command -v ip >/dev/null || { echo "netns-echo: needs iproute2 (ip)" >&2; exit 2; }

target=${CARGO_TARGET_DIR:-target}
server_bin=$target/release/examples/echo_server
client_bin=$target/release/examples/echo_client
tool_bin=$target/release/examples/link_tool
if [ "${NETNS_ECHO_NO_BUILD:-0}" != 1 ]; then
    "${CARGO:-cargo}" build --release --example echo_server --example echo_client --example link_tool >&2
fi
for b in "$server_bin" "$client_bin" "$tool_bin"; do
    [ -x "$b" ] || { echo "netns-echo: $b not found (build with cargo build --release --examples)" >&2; exit 2; }
done

id=$$
ns_server=ndecho-s-$id
ns_client=ndecho-c-$id
ns_wire=ndecho-w-$id
if_server=nde-s$id
if_client=nde-c$id
if_wire_s=ndw-s$id
if_wire_c=ndw-c$id
wire_pid=
server_ip=10.77.0.1
client_ip=10.77.0.2
port=7000
work=$(mktemp -d)
server_pid=

cleanup() {
    set +e
    for p in "$server_pid" "$wire_pid"; do
        if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
            kill -KILL "$p" 2>/dev/null
            wait "$p" 2>/dev/null
        fi
    done
    ip netns del "$ns_server" 2>/dev/null
    ip netns del "$ns_client" 2>/dev/null
    ip netns del "$ns_wire" 2>/dev/null
    ip link del "$if_server" 2>/dev/null
    ip link del "$if_wire_c" 2>/dev/null
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
    server_ns=$ns_server
    link_flags=(--iface "$if_server")
elif [ "$mode" = faulty ]; then
    # server [if_server] <-> [if_wire_s] wire [if_wire_c] <-> [if_client] client
    ip netns add "$ns_server"
    ip netns add "$ns_wire"
    in_ns "$ns_server" ip link set lo up
    ip link add "$if_server" type veth peer name "$if_wire_s"
    ip link add "$if_client" type veth peer name "$if_wire_c"
    ip link set "$if_server" netns "$ns_server"
    ip link set "$if_wire_s" netns "$ns_wire"
    ip link set "$if_wire_c" netns "$ns_wire"
    ip link set "$if_client" netns "$ns_client"
    in_ns "$ns_server" ip link set "$if_server" mtu "$mtu" up
    in_ns "$ns_wire" ip link set "$if_wire_s" mtu "$mtu" up
    in_ns "$ns_wire" ip link set "$if_wire_c" mtu "$mtu" up
    in_ns "$ns_client" ip link set "$if_client" mtu "$mtu" up
    in_ns "$ns_client" ip addr add "$client_ip/24" dev "$if_client"
    ip netns exec "$ns_wire" "$tool_bin" faulty-wire --a "$if_wire_s" --b "$if_wire_c" \
        --seed "$seed" --drop 0.01 --dup 0.01 --reorder 0.02 --corrupt 0.01 \
        >"$work/wire.json" 2>"$work/wire.err" &
    wire_pid=$!
    server_ns=$ns_server
    link_flags=(--iface "$if_server")
else
    in_ns "$ns_client" ip tuntap add dev "$if_server" mode tap
    in_ns "$ns_client" ip link set "$if_server" mtu "$mtu" up
    in_ns "$ns_client" ip addr add "$client_ip/24" dev "$if_server"
    server_ns=$ns_client
    link_flags=(--tap "$if_server")
fi

if [ "$peer_offloads" = off ]; then
    in_ns "$ns_client" "$tool_bin" tx-csum "$if_client" off
fi

echo "netns-echo: $mode, MTU $mtu, peer offloads $peer_offloads: server $server_ip:$port (smoltcp + netdma), client $client_ip (Linux TCP), $connections x $bytes" >&2
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

if [ -n "$wire_pid" ]; then
    kill -INT "$wire_pid" 2>/dev/null || true
    wait "$wire_pid" || true
    wire_pid=
    echo "wire: $(cat "$work/wire.json")"
    sed 's/^/wire stderr: /' "$work/wire.err" >&2
fi
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
# A counter of the server's link (or of the wire's report): the first "key":N in the file.
num() { grep -o "\"$1\":[0-9]*" "$2" | head -n 1 | cut -d: -f2; }
if [ "$mode" != tap ]; then
    server_json=$work/server.json
    link_counters="rx_gso_frames=$(num rx_gso_frames "$server_json") tx_gso_frames=$(num tx_gso_frames "$server_json")"
    link_counters+=" rx_csum_trusted=$(num rx_csum_trusted "$server_json") rx_csum_verified=$(num rx_csum_verified "$server_json")"
    link_counters+=" rx_csum_bad=$(num rx_csum_bad "$server_json")"
else
    server_json=$work/server.json
    link_counters="rx_gso_frames=$(num rx_gso_frames "$server_json") tx_gso_frames=$(num tx_gso_frames "$server_json")"
fi
echo "netns-echo: server link: $link_counters" >&2
if ! grep -q '"vnet_hdr":true' "$work/server.json"; then
    echo "netns-echo: FAILED: the server's link did not take virtio-net headers" >&2
    fail=1
fi
if [ "$expect_gso" = 1 ]; then
    if [ "$(num rx_gso_frames "$server_json")" -lt 1 ] || [ "$(num tx_gso_frames "$server_json")" -lt 1 ]; then
        echo "netns-echo: FAILED: expected frames larger than the MTU both ways" >&2
        fail=1
    fi
fi
if [ "$peer_offloads" = off ] || [ "$mode" = faulty ]; then
    # Frames crossed without checksum flags: the link verified them (and no super-frame
    # reached it).
    if [ "$(num rx_csum_verified "$server_json")" -lt 1 ] || [ "$(num rx_gso_frames "$server_json")" != 0 ]; then
        echo "netns-echo: FAILED: expected every frame verified by the link, none larger than the MTU" >&2
        fail=1
    fi
fi
if [ "$mode" = faulty ]; then
    corrupted=$(grep -o '"b_to_a":{[^}]*}' "$work/wire.json" | grep -o '"corrupted":[0-9]*' | cut -d: -f2)
    bad=$(num rx_csum_bad "$server_json")
    echo "netns-echo: the wire corrupted ${corrupted:-?} frame(s) toward the server; its link refused $bad" >&2
    if [ -z "$corrupted" ] || [ "$bad" -lt 1 ] || [ "$bad" -gt "$corrupted" ]; then
        echo "netns-echo: FAILED: corrupted frames must be refused and counted by the link" >&2
        fail=1
    fi
fi
if [ "$fail" = 0 ]; then
    echo "netns-echo: OK ($mode, MTU $mtu, peer offloads $peer_offloads)" >&2
fi
exit "$fail"
