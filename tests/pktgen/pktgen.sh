#!/bin/sh
# Kernel pktgen traffic for the load balancer on real test hosts (the bench's lab kernel has no
# pktgen, so `cargo xtask bench` uses its own live-frames generator instead).
#
# Run on the GENERATOR host, whose DEV is cabled (or bridged) to the LB host's NIC that runs
# `lb agent`. It sends 64-byte UDP frames to VIP:PORT, spreading source ports over FLOWS flows
# so the LB balances over every backend, from THREADS kernel threads, COUNT frames each, and
# prints pktgen's own result per thread. Count delivered packets on the backends (or with
# `lb stats` on the LB: reason `forward`) and divide by the time pktgen reports.
#
#   DEV=ens1f0 DST_MAC=aa:bb:cc:dd:ee:ff VIP=203.0.113.10 PORT=9 sudo -E tests/pktgen/pktgen.sh
#
# Every run is bounded: COUNT frames per thread (never 0, which pktgen reads as "forever").
set -eu

: "${DEV:?DEV: the generator's interface towards the LB}"
: "${DST_MAC:?DST_MAC: the MAC of the LB's interface}"
: "${VIP:?VIP: a UDP service of the LB}"
PORT="${PORT:-9}"
SRC_IP="${SRC_IP:-198.51.100.2}"
FLOWS="${FLOWS:-1024}"
THREADS="${THREADS:-1}"
COUNT="${COUNT:-10000000}"
SIZE="${SIZE:-60}"   # without the FCS: 64 bytes on the wire

[ "$COUNT" -gt 0 ] || { echo "COUNT must be above 0 (0 would run forever)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 2; }
modprobe pktgen 2>/dev/null || true
[ -d /proc/net/pktgen ] || { echo "this kernel has no pktgen (CONFIG_NET_PKTGEN)" >&2; exit 1; }

pg() { # pg FILE COMMAND: one pktgen command, checked
    echo "$2" > "$1"
    if grep -q "Result: ERROR" "$1" 2>/dev/null; then
        echo "pktgen refused '$2' in $1" >&2
        exit 1
    fi
}

cleanup() { echo "reset" > /proc/net/pktgen/pgctrl 2>/dev/null || true; }
trap cleanup EXIT INT TERM
pg /proc/net/pktgen/pgctrl "reset"

t=0
while [ "$t" -lt "$THREADS" ]; do
    dev="$DEV@$t"
    pg "/proc/net/pktgen/kpktgend_$t" "rem_device_all"
    pg "/proc/net/pktgen/kpktgend_$t" "add_device $dev"
    f="/proc/net/pktgen/$dev"
    pg "$f" "count $COUNT"
    pg "$f" "pkt_size $SIZE"
    pg "$f" "delay 0"
    pg "$f" "clone_skb 0"
    pg "$f" "dst_mac $DST_MAC"
    pg "$f" "dst $VIP"
    pg "$f" "src_min $SRC_IP"
    pg "$f" "src_max $SRC_IP"
    pg "$f" "udp_dst_min $PORT"
    pg "$f" "udp_dst_max $PORT"
    # Each thread its own slice of source ports: FLOWS flows in all.
    lo=$((1024 + t * FLOWS / THREADS))
    hi=$((1024 + (t + 1) * FLOWS / THREADS - 1))
    pg "$f" "udp_src_min $lo"
    pg "$f" "udp_src_max $hi"
    pg "$f" "flag UDPSRC_RND"
    pg "$f" "queue_map_min $t"
    pg "$f" "queue_map_max $t"
    t=$((t + 1))
done

echo "sending $COUNT frames per thread on $THREADS thread(s) to $VIP:$PORT via $DEV"
echo "start" > /proc/net/pktgen/pgctrl
t=0
while [ "$t" -lt "$THREADS" ]; do
    echo "--- thread $t"
    grep -A2 "Result:" "/proc/net/pktgen/$DEV@$t"
    t=$((t + 1))
done
