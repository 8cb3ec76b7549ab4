#!/usr/bin/env bash
# GraphQL against the native interfaces of one Cooper node, in the same run (DESIGN §8):
#
#   bash bench/graphql/run.sh           (from the repository root, or from anywhere)
#
# Installs what it needs when missing (wrk with apt-get; websockets and aiohttp with
# `pip install -r bench/graphql/requirements.txt`), builds `cooper`
# (cargo build --release --bin cooper), starts one node (a fresh temporary data directory, a
# free loopback port) and runs bench/graphql/bench.py against it:
#
#   1. reads     BENCH_DOCS=10000 documents of ~300 bytes of nested JSON loaded with
#                _bulk_docs (batches of 1000); then wrk, BENCH_CONNS=16 connections, random ids
#                (bench/graphql/wrk.lua): GET /barrels/bench/docs/<id> against
#                POST /graphql {barrel(name:"bench"){doc(id:$id){id rev body}}}, alternating
#                rounds of BENCH_WRK_SECONDS=10 s (BENCH_WRK_ROUNDS=2 per interface, after 2 s
#                warm-ups); every answer checked by the Lua response hook (200, no "errors",
#                the document present). Target: GraphQL req/s >= 0.5 x REST.
#   2. latency   native listener websocket (/barrels/bench/listen, filter users/+/name/#)
#                against GraphQL subscriptions (/graphql/ws, graphql-transport-ws,
#                changes(barrel:"bench", filter:["users/+/name/#"]){seq docId}), the same
#                Python client structure for both; N=1 (BENCH_M_A=1000 writes per system) and
#                N=BENCH_N=1000 (BENCH_M_B=100 writes per system); sequential HTTP PUTs, each
#                with a users/<k>/name leaf; latency = receive time - 201 time. The systems
#                alternate in blocks (L G G L). Target: GraphQL p99 <= 1.5 x listener p99.
# Prints a table of figures, ratios, targets and PASS/FAIL.
#
# Environment (all optional): BENCH_DOCS BENCH_CONNS BENCH_WRK_THREADS=2 BENCH_WRK_SECONDS
#   BENCH_WRK_ROUNDS BENCH_N BENCH_PROCS=2 BENCH_M_A BENCH_M_B BENCH_BLOCKS=2 BENCH_GAP_MS=2
#   COOPER_BIN=path   use this cooper binary instead of `cargo build --release`
#   BENCH_STRICT=1    exit 1 when a target is missed (default: exit 0, FAILs shown)
#   BENCH_KEEP=1      keep the temporary directory (log, data) and print its path
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/bench/graphql
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PY=${PYTHON:-python3}
STARTED_AT=$SECONDS

log() { printf '[graphql %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------------------------------------
# 1. What the benchmark needs

SUDO=
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
command -v wrk >/dev/null || {
    log "installing wrk (apt-get)"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >&2
}
command -v "$PY" >/dev/null || die "python3 is needed"
command -v cargo >/dev/null || [ -n "${COOPER_BIN:-}" ] || die "cargo is needed (https://rustup.rs)"

# The pinned Python packages, installed when an import fails or a version differs.
if ! "$PY" - "$HERE/requirements.txt" <<'PYEOF' 2>/dev/null; then
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, want = line.split("==")
        assert version(name) == want, name
PYEOF
    log "installing Python packages (pip install -r bench/graphql/requirements.txt)"
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
# 2. The node, on loopback; stopped on exit

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cooper-graphql.XXXXXX")
COOPER_PID=
cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    if [ -n "$COOPER_PID" ]; then
        kill -TERM "$COOPER_PID" 2>/dev/null || true
        for i in $(seq 1 50); do kill -0 "$COOPER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$COOPER_PID" 2>/dev/null || true
        wait "$COOPER_PID" 2>/dev/null || true
    fi
    if [ "$rc" -ne 0 ] && [ -s "$WORK/cooper.log" ]; then
        log "last lines of $WORK/cooper.log:"
        tail -n 20 "$WORK/cooper.log" >&2
    fi
    if [ -n "${BENCH_KEEP:-}" ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
log "starting cooper ($URL); work dir $WORK"
mkdir -p "$WORK/data"
"$COOPER_BIN" start --data "$WORK/data" --http "127.0.0.1:$PORT" >"$WORK/cooper.log" 2>&1 &
COOPER_PID=$!
for i in $(seq 1 300); do
    if "$PY" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1).read()" "$URL/health" 2>/dev/null; then
        break
    fi
    kill -0 "$COOPER_PID" 2>/dev/null || die "cooper exited during startup: $(tail -n 5 "$WORK/cooper.log")"
    [ "$i" -eq 300 ] && die "cooper did not answer on $URL within 60 s"
    sleep 0.2
done

# ---------------------------------------------------------------------------------------------
# 3. The benchmark

log "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
ARGS=(
    --url "$URL" --pid "$COOPER_PID" --wrk "$(command -v wrk)"
    --docs "${BENCH_DOCS:-10000}" --conns "${BENCH_CONNS:-16}" --wrk-threads "${BENCH_WRK_THREADS:-2}"
    --wrk-seconds "${BENCH_WRK_SECONDS:-10}" --wrk-rounds "${BENCH_WRK_ROUNDS:-2}"
    --n "${BENCH_N:-1000}" --procs "${BENCH_PROCS:-2}"
    --m-a "${BENCH_M_A:-1000}" --m-b "${BENCH_M_B:-100}" --blocks "${BENCH_BLOCKS:-2}"
    --gap-ms "${BENCH_GAP_MS:-2}"
)
[ -n "${BENCH_STRICT:-}" ] && ARGS+=(--strict)
set +e
"$PY" "$HERE/bench.py" main "${ARGS[@]}"
RC=$?
set -e
kill -0 "$COOPER_PID" 2>/dev/null || { log "cooper exited during the run"; RC=1; }
if grep -qiE 'panic| ERROR ' "$WORK/cooper.log"; then
    log "cooper logged errors:"
    grep -iE 'panic| ERROR ' "$WORK/cooper.log" | head -n 5 >&2
fi
log "done in $((SECONDS - STARTED_AT)) s; load average now $(cut -d' ' -f1-3 /proc/loadavg)"
exit "$RC"
