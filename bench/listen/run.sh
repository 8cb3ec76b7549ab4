#!/usr/bin/env bash
# Listener fan-out of Cooper against mosquitto, in the same run (DESIGN §8).
#
#   bash bench/listen/run.sh            (from the repository root, or from anywhere)
#
# Installs what it needs when missing (mosquitto with apt-get; paho-mqtt, websockets and
# aiohttp with `pip install -r bench/listen/requirements.txt`), builds `cooper`
# (cargo build --release), starts mosquitto (a generated config: one websockets listener on a
# free loopback port, no persistence, no per-client queue limit) and Cooper (a fresh temporary
# data directory, a free loopback port), and runs bench/listen/bench.py against both:
#
#   documents   ~300 bytes of nested JSON, document k holding /users/<k>/name = "Ann <k>";
#               Cooper: PUT /barrels/bench/docs/d<k>, listeners on users/+/name/#;
#               mosquitto: the same bytes published on users/<k>/name, subscribers on
#               users/+/name, once with QoS 1 (publish waits for PUBACK, QoS 1 subscriptions;
#               the targets are checked against this one) and once with QoS 0.
#   (a) N=1     1 subscriber, BENCH_M_A sequential writes: latency p50/p99 from the write's
#               acknowledgement to the delivery; then a burst of BENCH_K_BURST_A documents.
#   (b) N=1000  BENCH_N subscribers on the one filter, BENCH_M_B sequential writes: latency of
#               every delivery p50/p99, fan-out completion (ack -> last subscriber) p99; then a
#               burst of BENCH_K_BURST_B documents as fast as possible (Cooper: one _bulk_docs
#               request, or concurrent PUTs with BENCH_COOPER_BURST=put) -> delivered msg/s
#               = N*K / (last delivery - first send).
# Each sequential write waits for its acknowledgement and for its last delivery (then
# BENCH_GAP_MS), so fan-outs do not overlap; latencies are also given from the write's start,
# which does not depend on when a server sends its acknowledgement.
# Targets: (a) p99 <= 2 ms; (b) delivered msg/s >= mosquitto's, fan-out completion p99 <=
# mosquitto's. Prints a table of figures, ratios, targets and PASS/FAIL, and CPU per phase
# (server, subscriber processes, publisher, the rest of the machine) with CPU per delivery.
#
# Clients (bench.py's docstring has the details): the same structure for both systems, all
# Python — the subscribers in BENCH_PROCS processes, each one asyncio loop that reads every
# socket on readiness and timestamps each message as it is handed over; Cooper's through
# websockets' sans-I/O protocol, mosquitto's through paho-mqtt. On 2 cores these clients
# use more CPU per delivery than either server, so (b) measures client + server together;
# the per-delivery CPU columns show how much of it is which.
#
# Environment (all optional):
#   BENCH_N=1000  BENCH_PROCS=2 (subscriber processes in (b))  BENCH_M_A=2000  BENCH_M_B=200
#   BENCH_K_BURST_A=1000  BENCH_K_BURST_B=1000  BENCH_GAP_MS=2  BENCH_QOS=1,0
#   BENCH_INCLUDE_DOCS=1      Cooper listeners get the document in each change frame (as an
#                             MQTT subscriber gets the payload); 0: change frames without it
#   BENCH_COOPER_BURST=bulk   bulk (one _bulk_docs) or put (PUTs on BENCH_BURST_CONC=16 conns)
#   BENCH_PAHO_WS=buffered    paho-mqtt's websocket transport reads the socket in large chunks
#                             (see bench.py); stock: paho's own, 3-5 recv() calls per message
#   COOPER_BIN=path           use this cooper binary instead of `cargo build --release`
#   BENCH_STRICT=1            exit 1 when a target is missed (default: exit 0, FAILs shown)
#   BENCH_KEEP=1              keep the temporary directory (logs, data) and print its path
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/bench/listen
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PY=${PYTHON:-python3}
STARTED_AT=$SECONDS

log() { printf '[listen %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------------------------------------
# 1. What the benchmark needs

SUDO=
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || {
    log "installing mosquitto (apt-get)"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >&2
}
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
command -v "$PY" >/dev/null || die "python3 is needed"
command -v cargo >/dev/null || [ -n "${COOPER_BIN:-}" ] || die "cargo is needed (https://rustup.rs)"

# The pinned Python packages, installed when an import fails or a version differs.
if ! "$PY" - "$HERE/requirements.txt" <<'EOF' 2>/dev/null; then
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, want = line.split("==")
        assert version(name) == want, name
EOF
    log "installing Python packages (pip install -r bench/listen/requirements.txt)"
    "$PY" -m pip install -q --disable-pip-version-check -r "$HERE/requirements.txt" >&2
fi

if [ -n "${COOPER_BIN:-}" ]; then
    log "using COOPER_BIN=$COOPER_BIN"
else
    log "building cooper (cargo build --release --bin cooper)"
    (cd "$ROOT" && cargo build --release --bin cooper)
    COOPER_BIN=$TARGET_DIR/release/cooper
fi
[ -x "$COOPER_BIN" ] || die "no cooper binary at $COOPER_BIN"

# ---------------------------------------------------------------------------------------------
# 2. The servers, on loopback; stopped on exit

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cooper-listen.XXXXXX")
chmod 755 "$WORK" # mosquitto drops to its own user when started as root
PIDS=()
cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$rc" -ne 0 ]; then
        for f in "$WORK"/cooper.log "$WORK"/mosquitto.log "$WORK"/bench.log; do
            [ -s "$f" ] && { log "last lines of $f:"; tail -n 20 "$f" >&2; }
        done
    fi
    if [ -n "${BENCH_KEEP:-}" ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

freeport() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
CPORT=$(freeport)
MPORT=$(freeport)
while [ "$MPORT" = "$CPORT" ]; do MPORT=$(freeport); done
TPORT=$(freeport)
while [ "$TPORT" = "$CPORT" ] || [ "$TPORT" = "$MPORT" ]; do TPORT=$(freeport); done

# mosquitto: a websockets listener on loopback; no persistence; no limit on the messages
# queued per client (max_queued_messages 0), so that a burst to slow subscribers is queued,
# not dropped: with any limit, mosquitto drops QoS 0 messages for a client whose queue is
# full (QoS 0 messages are "inflight or dropped" in its database.c); TCP_NODELAY as Cooper's
# HTTP server has it. Mosquitto 2.0.11 (Debian 12)
# refuses to start with only a websockets listener ("Unable to start any listening sockets"),
# so a plain MQTT listener on another loopback port is there too (unused); `socket_domain
# ipv4` makes its libwebsockets listener bind 127.0.0.1 instead of every address.
cat >"$WORK/mosquitto.conf" <<EOF
per_listener_settings false
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
max_queued_messages 0
max_queued_bytes 0
set_tcp_nodelay true
listener $TPORT 127.0.0.1
listener $MPORT 127.0.0.1
socket_domain ipv4
protocol websockets
EOF
MOSQUITTO_VERSION=$("$MOSQUITTO" -h 2>&1 | head -n1 | sed 's/ (build.*//' || true)

log "starting mosquitto (websockets on 127.0.0.1:$MPORT) and cooper (http://127.0.0.1:$CPORT); work dir $WORK"
"$MOSQUITTO" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
PIDS+=($!)
MOSQ_PID=$!
mkdir -p "$WORK/cooper"
"$COOPER_BIN" start --data "$WORK/cooper" --http "127.0.0.1:$CPORT" >"$WORK/cooper.log" 2>&1 &
PIDS+=($!)
COOPER_PID=$!

wait_port() { # PORT NAME PID [HTTP-PATH]
    local i
    for i in $(seq 1 300); do
        if "$PY" - "$1" "${4:-}" <<'EOF' 2>/dev/null; then return 0; fi
import sys, socket, urllib.request
port, path = int(sys.argv[1]), sys.argv[2]
if path:
    urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1).read()
else:
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
EOF
        kill -0 "$3" 2>/dev/null || die "$2 exited during startup: $(tail -n 5 "$WORK/$2.log")"
        sleep 0.2
    done
    die "$2 did not answer on port $1 within 60 s"
}
wait_port "$MPORT" mosquitto "$MOSQ_PID"
wait_port "$CPORT" cooper "$COOPER_PID" /health

# ---------------------------------------------------------------------------------------------
# 3. The benchmark

log "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
ARGS=(
    --cooper "http://127.0.0.1:$CPORT" --mqtt "127.0.0.1:$MPORT"
    --cooper-pid "$COOPER_PID" --mosquitto-pid "$MOSQ_PID" --mosquitto-version "$MOSQUITTO_VERSION"
    --n "${BENCH_N:-1000}" --procs "${BENCH_PROCS:-2}"
    --m-a "${BENCH_M_A:-2000}" --m-b "${BENCH_M_B:-200}"
    --k-burst-a "${BENCH_K_BURST_A:-1000}" --k-burst-b "${BENCH_K_BURST_B:-1000}"
    --gap-ms "${BENCH_GAP_MS:-2}" --qos "${BENCH_QOS:-1,0}"
    --include-docs "${BENCH_INCLUDE_DOCS:-1}"
    --cooper-burst "${BENCH_COOPER_BURST:-bulk}" --burst-conc "${BENCH_BURST_CONC:-16}"
    --paho-ws "${BENCH_PAHO_WS:-buffered}"
)
[ -n "${BENCH_STRICT:-}" ] && ARGS+=(--strict)
set +e
"$PY" "$HERE/bench.py" main "${ARGS[@]}" 2> >(tee "$WORK/bench.log" >&2)
RC=$?
set -e
for pid in "$COOPER_PID" "$MOSQ_PID"; do
    kill -0 "$pid" 2>/dev/null || { log "a server exited during the run (pid $pid)"; RC=1; }
done
# This script stops the servers only after this point: a "shutting down" before it means that
# something else on the machine sent cooper a signal (not a crash of Cooper).
if grep -q 'shutting down' "$WORK/cooper.log"; then
    log "cooper was stopped by a signal from outside this script during the run (cooper.log: 'shutting down')"
    RC=1
fi
if grep -qiE 'panic|ERROR' "$WORK/cooper.log"; then
    log "cooper logged errors:"
    grep -iE 'panic|ERROR' "$WORK/cooper.log" | head -n 5 >&2
fi
# Connections are logged: anything but a client's own disconnect is reported.
BAD='error|warning|exceeded timeout|dropped|disconnecting|protocol error|out of memory'
if grep -qiE "$BAD" "$WORK/mosquitto.log"; then
    log "mosquitto logged $(grep -ciE "$BAD" "$WORK/mosquitto.log") line(s) like:"
    grep -iE "$BAD" "$WORK/mosquitto.log" | head -n 5 >&2
fi
log "done in $((SECONDS - STARTED_AT)) s; load average now $(cut -d' ' -f1-3 /proc/loadavg)"
exit "$RC"
