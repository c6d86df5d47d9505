#!/usr/bin/env bash
# Real links, measured side by side: the same kernel-TCP client and workload against
#   - a kernel-socket echo server (a few lines of python3 on the kernel's TCP), on a veth;
#   - the project's echo server (smoltcp + netdma) on a veth, through AF_PACKET;
#   - the project's echo server behind a TAP;
#   - for reference, the project's echo server on the plain AF_PACKET path (no virtio-net
#     headers: one frame per system call), whose kernel peer must have its transmit
#     offloads off;
# at MTU 1500 and 9000, the kernel peer otherwise with its default offloads. Prints Gbit/s
# (echoed bytes per second, as echo_client reports them), the ratios project/kernel and
# the link's super-frame (GSO) counters. Then a one-way run (the kernel sends, the
# project's echo server in --sink mode receives over the veth) reports the receiving
# CPU per MiB with every copy on the CPU (--no-dma) and with --copybreak 4096.
#
#   scripts/link-bench.sh [--rounds N] [--connections K] [--bytes N] [--oneway-bytes N] [--write]
#
# Each configuration runs --rounds times (default 5), interleaved, and the median is
# reported; a ratio is the median of the per-round ratios (each round runs the kernel
# server and the project's back to back, so the machine's drift between rounds cancels).
# --write replaces the "Real links" section of BENCHMARKS.md with the tables (and the
# machine they were measured on). Needs root, iproute2 and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=5
connections=4
bytes=32MiB
oneway_bytes=1GiB
write=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=${2:?}; shift ;;
        --connections) connections=${2:?}; shift ;;
        --bytes) bytes=${2:?}; shift ;;
        --oneway-bytes) oneway_bytes=${2:?}; shift ;;
        --write) write=1 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "link-bench: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "link-bench: needs root" >&2; exit 2; }
for t in ip python3; do
    command -v "$t" >/dev/null || { echo "link-bench: needs $t" >&2; exit 2; }
done

target=${CARGO_TARGET_DIR:-target}
"${CARGO:-cargo}" build --release --example echo_server --example echo_client --example link_tool >&2
server_bin=$target/release/examples/echo_server
client_bin=$target/release/examples/echo_client
tool_bin=$target/release/examples/link_tool

to_bytes() {
    local v=$1
    case "$v" in
        *GiB) echo $(( ${v%GiB} << 30 )) ;;
        *MiB) echo $(( ${v%MiB} << 20 )) ;;
        *KiB) echo $(( ${v%KiB} << 10 )) ;;
        *) echo "$v" ;;
    esac
}
oneway_total=$(to_bytes "$oneway_bytes")

id=$$
ns_s=lkb-s-$id
ns_c=lkb-c-$id
if_s=lkb-s$id
if_c=lkb-c$id
server_ip=10.77.0.1
client_ip=10.77.0.2
port=7000
work=$(mktemp -d)
server_pid=

net_down() {
    set +e
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null
        wait "$server_pid" 2>/dev/null
    fi
    server_pid=
    ip netns del "$ns_s" 2>/dev/null
    ip netns del "$ns_c" 2>/dev/null
    ip link del "$if_s" 2>/dev/null
    set -e
}
cleanup() { net_down; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# net_up veth|tap MTU [kernel]: namespaces and links; with `kernel`, the server's veth
# end gets the server address (the kernel serves).
net_up() {
    local mode=$1 mtu=$2 kernel=${3:-}
    ip netns add "$ns_c"
    in_ns "$ns_c" ip link set lo up
    if [ "$mode" = veth ]; then
        ip netns add "$ns_s"
        in_ns "$ns_s" ip link set lo up
        ip link add "$if_s" type veth peer name "$if_c"
        ip link set "$if_s" netns "$ns_s"
        ip link set "$if_c" netns "$ns_c"
        in_ns "$ns_s" ip link set "$if_s" mtu "$mtu" up
        in_ns "$ns_c" ip link set "$if_c" mtu "$mtu" up
        in_ns "$ns_c" ip addr add "$client_ip/24" dev "$if_c"
        if [ -n "$kernel" ]; then
            in_ns "$ns_s" ip addr add "$server_ip/24" dev "$if_s"
        fi
    else
        in_ns "$ns_c" ip tuntap add dev "$if_s" mode tap
        in_ns "$ns_c" ip link set "$if_s" mtu "$mtu" up
        in_ns "$ns_c" ip addr add "$client_ip/24" dev "$if_s"
    fi
}

kernel_echo_py='
import socket, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.77.0.1", 7000))
s.listen(128)
print("listening", flush=True)
def serve(c):
    b = bytearray(1 << 16)
    m = memoryview(b)
    while True:
        n = c.recv_into(b)
        if not n:
            break
        c.sendall(m[:n])
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'

sender_py='
import socket, sys, threading, time
total, conns = int(sys.argv[1]), int(sys.argv[2])
per = total // conns
buf = memoryview(bytes(range(256)) * 4096)
def send():
    s = socket.create_connection(("10.77.0.1", 7000))
    left = per
    while left:
        k = min(left, len(buf))
        s.sendall(buf[:k])
        left -= k
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    s.close()
t0 = time.monotonic()
ts = [threading.Thread(target=send) for _ in range(conns)]
for t in ts: t.start()
for t in ts: t.join()
dt = time.monotonic() - t0
print("%.3f" % (per * conns * 8 / dt / 1e9))
'

# wait_for FILE PATTERN: until the line appears (server started) or 20 s pass.
wait_for() {
    for _ in $(seq 1 200); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        kill -0 "$server_pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

num() { grep -o "\"$1\":[0-9.]*" "$2" | head -n 1 | cut -d: -f2; }

# Starts the project's server for `mode` (veth|tap) with extra flags.
start_project() {
    local mode=$1; shift
    local ns flags
    if [ "$mode" = veth ]; then ns=$ns_s; flags=(--iface "$if_s"); else ns=$ns_c; flags=(--tap "$if_s"); fi
    ip netns exec "$ns" "$server_bin" "${flags[@]}" --addr "$server_ip/24" --port "$port" \
        --duration 600 --json "$@" >"$work/server.json" 2>"$work/server.err" &
    server_pid=$!
    wait_for "$work/server.err" "echo_server: serving" || {
        echo "link-bench: the server did not start:" >&2; cat "$work/server.err" >&2; exit 1; }
}

stop_project() {
    kill -INT "$server_pid" 2>/dev/null || true
    wait "$server_pid" || { echo "link-bench: the server failed:" >&2; cat "$work/server.err" >&2; exit 1; }
    server_pid=
}

# echo_run kernel|veth|tap|plain MTU: prints "GBPS RX_GSO TX_GSO".
echo_run() {
    local kind=$1 mtu=$2
    if [ "$kind" = kernel ]; then
        net_up veth "$mtu" kernel
        ip netns exec "$ns_s" python3 -c "$kernel_echo_py" >"$work/server.err" 2>&1 &
        server_pid=$!
        wait_for "$work/server.err" listening || { echo "link-bench: python server failed" >&2; cat "$work/server.err" >&2; exit 1; }
    elif [ "$kind" = plain ]; then
        net_up veth "$mtu"
        in_ns "$ns_c" "$tool_bin" tx-csum "$if_c" off 2>/dev/null
        start_project veth --plain-link
    else
        net_up "$kind" "$mtu"
        start_project "$kind"
    fi
    in_ns "$ns_c" "$client_bin" --addr "$server_ip:$port" --connections "$connections" \
        --bytes "$bytes" --json >"$work/client.json" 2>"$work/client.err" || {
        echo "link-bench: the client failed ($kind, MTU $mtu):" >&2; cat "$work/client.err" >&2; exit 1; }
    grep -q '"integrity_ok":true' "$work/client.json" || { echo "link-bench: data mismatch ($kind)" >&2; exit 1; }
    local gbps rx=- tx=-
    gbps=$(num throughput_gbps "$work/client.json")
    if [ "$kind" = kernel ]; then
        kill -KILL "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
    else
        stop_project
        rx=$(num rx_gso_frames "$work/server.json")
        tx=$(num tx_gso_frames "$work/server.json")
    fi
    net_down
    echo "$gbps $rx $tx"
}

# CPU ticks (utime + stime) of a process (its exited threads included), and nanoseconds
# on CPU of its main thread (schedstat, finer than ticks).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
thread_ns() { awk '{print $1}' "/proc/$1/task/$1/schedstat"; }

# oneway_run MTU FLAGS...: prints "GBPS MAIN_MS_PER_MIB PROCESS_MS_PER_MIB RX_GSO".
oneway_run() {
    local mtu=$1; shift
    net_up veth "$mtu"
    start_project veth --sink "$@"
    local p0 t0 p1 t1 gbps hz
    hz=$(getconf CLK_TCK)
    p0=$(ticks "$server_pid"); t0=$(thread_ns "$server_pid")
    gbps=$(in_ns "$ns_c" python3 -c "$sender_py" "$oneway_total" "$connections")
    p1=$(ticks "$server_pid"); t1=$(thread_ns "$server_pid")
    stop_project
    local got rx
    got=$(num bytes_echoed "$work/server.json")
    rx=$(num rx_gso_frames "$work/server.json")
    net_down
    [ "$got" = "$oneway_total" ] || { echo "link-bench: the sink got $got of $oneway_total bytes" >&2; exit 1; }
    awk -v g="$gbps" -v t=$((t1 - t0)) -v p=$((p1 - p0)) -v hz="$hz" -v b="$got" -v rx="$rx" \
        'BEGIN { mib = b / 1048576; printf "%s %.3f %.3f %s\n", g, t / 1e6 / mib, p * 1000 / hz / mib, rx }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (v[1] !~ /^[0-9.]+$/) print v[1]; else { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; if (m >= 100) printf "%d\n", m; else printf "%.3g\n", m } }'; }

declare -A results
for mtu in 1500 9000; do
    for r in $(seq 1 "$rounds"); do
        for kind in kernel veth tap plain; do
            line=$(echo_run "$kind" "$mtu")
            echo "link-bench: MTU $mtu round $r $kind: $line" >&2
            results[$kind,$mtu]+="$line"$'\n'
        done
    done
done

declare -A oneway
for r in $(seq 1 "$rounds"); do
    for mode in cpu dma; do
        if [ "$mode" = cpu ]; then flags=(--no-dma); else flags=(--copybreak 4096); fi
        line=$(oneway_run 1500 "${flags[@]}")
        echo "link-bench: one-way round $r $mode: $line" >&2
        oneway[$mode]+="$line"$'\n'
    done
done

col() { printf '%s' "${results[$1]}" | awk -v c="$2" 'NF { print $c }' | median; }
ocol() { printf '%s' "${oneway[$1]}" | awk -v c="$2" 'NF { print $c }' | median; }
# pratio KIND MTU: the median over rounds of KIND's Gbit/s over the kernel server's in the
# same round (the two ran back to back, so a drift of the machine between rounds cancels).
pratio() {
    paste -d' ' <(printf '%s' "${results[$1,$2]}" | awk 'NF { print $1 }') \
        <(printf '%s' "${results[kernel,$2]}" | awk 'NF { print $1 }') |
        awk '$2 > 0 { print $1 / $2 }' | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else printf "%.2f\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
{
    echo "Measured by \`scripts/link-bench.sh\` (median of $rounds rounds, interleaved; each ratio is the median of the per-round ratios to the kernel server, which ran in the same round); do not edit by hand: rerun it with \`--write\`."
    echo
    echo "Machine: ${cpu_model:-unknown CPU}, $(nproc) CPUs usable, kernel $(uname -r), $(date -u +%Y-%m-%d)."
    echo
    echo "Echo, $connections connections x $bytes, the same kernel-TCP client (\`echo_client\`), the kernel peer with its default offloads; Gbit/s of echoed data:"
    echo
    echo "| server | MTU 1500 | MTU 9000 |"
    echo "| --- | --- | --- |"
    k15=$(col kernel,1500 1); k90=$(col kernel,9000 1)
    v15=$(col veth,1500 1); v90=$(col veth,9000 1)
    t15=$(col tap,1500 1); t90=$(col tap,9000 1)
    echo "| kernel-socket echo server (python3), veth | $k15 | $k90 |"
    echo "| project echo server, AF_PACKET on a veth | $v15 ($(pratio veth 1500)x) | $v90 ($(pratio veth 9000)x) |"
    echo "| project echo server, TAP | $t15 ($(pratio tap 1500)x) | $t90 ($(pratio tap 9000)x) |"
    p15=$(col plain,1500 1); p90=$(col plain,9000 1)
    echo "| for reference: project echo server, plain AF_PACKET path (\`--plain-link\`, peer offloads off) | $p15 ($(pratio plain 1500)x) | $p90 ($(pratio plain 9000)x) |"
    echo
    echo "Super-frames (frames larger than the MTU) the project's link received / sent in one run:"
    echo
    echo "| link | MTU 1500 | MTU 9000 |"
    echo "| --- | --- | --- |"
    echo "| AF_PACKET on a veth | $(col veth,1500 2) / $(col veth,1500 3) | $(col veth,9000 2) / $(col veth,9000 3) |"
    echo "| TAP | $(col tap,1500 2) / $(col tap,1500 3) | $(col tap,9000 2) / $(col tap,9000 3) |"
    echo
    echo "One way, the kernel sends $oneway_bytes over $connections connections (python3), the project's echo server receives and discards (\`--sink\`) over the veth, MTU 1500. CPU is the receiving thread's (the one that runs smoltcp and the reads) and the whole process's (with the software DMA device's worker threads), per MiB received:"
    echo
    echo "| receive copies | Gbit/s | receiving thread, ms/MiB | process, ms/MiB | super-frames received |"
    echo "| --- | --- | --- | --- | --- |"
    echo "| all by the CPU (\`--no-dma\`) | $(ocol cpu 1) | $(ocol cpu 2) | $(ocol cpu 3) | $(ocol cpu 4) |"
    echo "| \`--copybreak 4096\` (software DMA device) | $(ocol dma 1) | $(ocol dma 2) | $(ocol dma 3) | $(ocol dma 4) |"
} >"$work/section.md"

cat "$work/section.md"

if [ "$write" = 1 ]; then
    begin='<!-- real-links:begin -->'
    end='<!-- real-links:end -->'
    {
        if grep -q "$begin" BENCHMARKS.md; then
            sed "/$begin/,\$d" BENCHMARKS.md
        else
            cat BENCHMARKS.md
            echo
        fi
        echo "$begin"
        echo "## Real links"
        echo
        cat "$work/section.md"
        echo "$end"
        if grep -q "$end" BENCHMARKS.md; then
            sed "1,/$end/d" BENCHMARKS.md
        fi
    } >"$work/bench.md"
    mv "$work/bench.md" BENCHMARKS.md
    echo "link-bench: wrote the Real links section of BENCHMARKS.md" >&2
fi
