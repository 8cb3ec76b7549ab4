#!/usr/bin/env bash
# HTTP throughput of Cooper against pouchdb-server, in the same run (DESIGN §8).
#
#   bash bench/http.sh            (from the repository root, or from anywhere)
#
# Installs what it needs when missing (wrk with apt-get, pouchdb-server with `npm ci` in
# bench/, cargo builds of `cooper` and bench/redb-fsync), starts pouchdb-server and Cooper on
# loopback with fresh temporary data directories, and runs, against each server in turn:
#   _bulk_docs  100 POSTs of 1000 documents (100,000 documents, ids doc-000000…doc-099999)
#   GET-1/16    GET by random id among those, 1 and 16 connections (wrk)
#   PUT-1/16    PUT of a new document per request, 1 and 16 connections (wrk)
# Every document is ~300 bytes of nested JSON of one shape (bench/wrk.lua, bench/client.js).
# PUT-1 is compared with redb committing one value per transaction (Durability::Immediate,
# bench/redb-fsync), the fsync bound of this disk, measured right before and right after
# Cooper's PUT-1: as this disk's fsync rate drifts by up to 10x within minutes, Cooper's
# PUT-1 runs in BENCH_PUT1_ROUNDS short rounds with a reference between each two, each round
# is compared with the mean of the references either side of it, and the median is the
# ratio. Cooper's queries are checked to see every acknowledged write (paging through
# ?kind=eq.bench, an indexed condition every document satisfies), right after the bulk load
# and at the end. Prints a table of figures, ratios, targets and PASS/FAIL, then the
# evidence behind them: latencies, each server's CPU and bytes written, Cooper's group
# commits (its /metrics). Takes about 4 minutes plus the builds.
#
# Environment (all optional):
#   BENCH_DURATION=10        seconds per wrk run
#   BENCH_BATCHES=100        _bulk_docs requests      BENCH_BATCH=1000  documents per request
#   BENCH_PUT1_ROUNDS=3      Cooper PUT-1 rounds of max(2, ceil(BENCH_DURATION / rounds)) s
#   BENCH_FSYNC_N=2000       redb commits per fsync reference ...
#   BENCH_FSYNC_SECS=4       ... stopping early after this many seconds
#   BENCH_POUCH_STORE=leveldb   pouchdb-server store: leveldb (on disk, default) or memory
#   BENCH_THREADS=2          wrk threads for the 16-connection runs
#   COOPER_BIN=path          use this cooper binary instead of `cargo build --release`
#   BENCH_STRICT=1           exit 1 when a target is missed (default: exit 0 with FAILs shown)
#   BENCH_KEEP=1             keep the temporary directory (logs, data) and print its path
#   TMPDIR                   where the temporary directory goes (same disk for everything)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
DURATION=${BENCH_DURATION:-10}
BATCHES=${BENCH_BATCHES:-100}
BATCH=${BENCH_BATCH:-1000}
FSYNC_N=${BENCH_FSYNC_N:-2000}
FSYNC_SECS=${BENCH_FSYNC_SECS:-4}
PUT1_ROUNDS=${BENCH_PUT1_ROUNDS:-3}
PUT1_SECS=$(((DURATION + PUT1_ROUNDS - 1) / PUT1_ROUNDS))
[ "$PUT1_SECS" -ge 2 ] || PUT1_SECS=2
POUCH_STORE=${BENCH_POUCH_STORE:-leveldb}
THREADS=${BENCH_THREADS:-2}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
NDOCS=$((BATCHES * BATCH))
STARTED_AT=$SECONDS

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
load1() { cut -d' ' -f1 /proc/loadavg; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# ---------------------------------------------------------------------------------------------
# 1. What the benchmark needs

SUDO=
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
APT_UPDATED=
apt_install() {
    if [ -z "$APT_UPDATED" ]; then
        $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}
command -v curl >/dev/null || { log "installing curl (apt-get)"; apt_install curl; }
command -v wrk >/dev/null || { log "installing wrk (apt-get)"; apt_install wrk; }
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    log "installing nodejs and npm (apt-get)"
    apt_install nodejs npm
fi
command -v cargo >/dev/null || die "cargo is needed (https://rustup.rs)"

POUCH_BIN=$BENCH/node_modules/.bin/pouchdb-server
if [ ! -x "$POUCH_BIN" ] || [ "$BENCH/package-lock.json" -nt "$BENCH/node_modules/.package-lock.json" ]; then
    log "installing pouchdb-server (npm ci in bench/)"
    (cd "$BENCH" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi
[ -x "$POUCH_BIN" ] || die "npm ci did not install $POUCH_BIN"

if [ -n "${COOPER_BIN:-}" ]; then
    log "using COOPER_BIN=$COOPER_BIN"
else
    log "building cooper (cargo build --release --bin cooper)"
    (cd "$ROOT" && cargo build --release --bin cooper)
    COOPER_BIN=$TARGET_DIR/release/cooper
fi
[ -x "$COOPER_BIN" ] || die "no cooper binary at $COOPER_BIN"
FSYNC_BIN=$TARGET_DIR/release/redb-fsync
# Skips cargo (and the shared target dir's lock, held by any other build) when up to date.
if [ ! -x "$FSYNC_BIN" ] || [ -n "$(find "$BENCH/redb-fsync/src" "$BENCH/redb-fsync/Cargo.toml" \
    "$BENCH/redb-fsync/Cargo.lock" -newer "$FSYNC_BIN" 2>/dev/null)" ]; then
    log "building bench/redb-fsync"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --locked \
        --manifest-path "$BENCH/redb-fsync/Cargo.toml")
fi

# ---------------------------------------------------------------------------------------------
# 2. The servers, on loopback, with fresh data directories; stopped on exit

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cooper-bench.XXXXXX")
PIDS=()
cleanup() {
    local rc=$? pid _
    trap - EXIT INT TERM
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$rc" -ne 0 ]; then
        for f in "$WORK"/cooper.log "$WORK"/pouch.log "$WORK"/pouch/log.txt; do
            [ -s "$f" ] && { log "last lines of $f:"; tail -n 20 "$f" >&2; }
        done
    fi
    if [ -n "${BENCH_KEEP:-}" ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

freeport() { node "$BENCH/client.js" freeport; }
CPORT=$(freeport)
PPORT=$(freeport)
while [ "$PPORT" = "$CPORT" ]; do PPORT=$(freeport); done
C=http://127.0.0.1:$CPORT
P=http://127.0.0.1:$PPORT

# pouchdb-server: its default LevelDB store on disk (or --in-memory), request logging off
# (log level warning) so that it is not slowed by a log line per request.
mkdir -p "$WORK/pouch/db" "$WORK/cooper"
printf '{"log":{"level":"warning"}}\n' >"$WORK/pouch/config.json"
POUCH_ARGS=(--host 127.0.0.1 --port "$PPORT" --config "$WORK/pouch/config.json" --no-stdout-logs)
case $POUCH_STORE in
leveldb) POUCH_ARGS+=(--dir "$WORK/pouch/db") ;;
memory) POUCH_ARGS+=(--in-memory) ;;
*) die "BENCH_POUCH_STORE must be leveldb or memory, not $POUCH_STORE" ;;
esac
MEASURE_AT=$SECONDS
log "starting pouchdb-server on $P ($POUCH_STORE) and cooper on $C; data in $WORK"
(cd "$WORK/pouch" && exec "$POUCH_BIN" "${POUCH_ARGS[@]}") >"$WORK/pouch.log" 2>&1 &
PIDS+=($!)
POUCH_PID=$!
declare -A SERVER_PID
SERVER_PID[pouch]=$POUCH_PID
"$COOPER_BIN" start --data "$WORK/cooper" --http "127.0.0.1:$CPORT" >"$WORK/cooper.log" 2>&1 &
PIDS+=($!)
COOPER_PID=$!
SERVER_PID[cooper]=$COOPER_PID

wait_http() { # URL NAME PID
    local _
    for _ in $(seq 1 300); do
        curl -sf -o /dev/null "$1" && return 0
        kill -0 "$3" 2>/dev/null || die "$2 exited during startup"
        sleep 0.2
    done
    die "$2 did not answer on $1 within 60 s"
}
wait_http "$C/health" cooper "$COOPER_PID"
wait_http "$P/" pouchdb-server "$POUCH_PID"

# ---------------------------------------------------------------------------------------------
# 3. The databases

http_status() { curl -s -o "$WORK/last-body" -w '%{http_code}' "$@"; }
json_get() { # URL EXPR: EXPR evaluated on the JSON answer `j`
    curl -sf "$1" | node -e "let s='';process.stdin.on('data',c=>s+=c).on('end',()=>{const j=JSON.parse(s);console.log($2)})"
}
s=$(http_status -X PUT "$C/barrels/bench")
[ "$s" = 201 ] || die "PUT /barrels/bench on cooper: $s $(cat "$WORK/last-body")"
s=$(http_status -X PUT "$P/bench")
[ "$s" = 201 ] || die "PUT /bench on pouchdb-server: $s $(cat "$WORK/last-body")"
COOPER_VERSION=$(json_get "$C/" 'j.version')
POUCH_VERSION=$(json_get "$P/" 'j.version')
WRK_VERSION=$(wrk -v 2>&1 | head -n1 | awk '{print $2}' || true)
NODE_VERSION=$(node --version)
REDB_VERSION=$(awk '/^name = "redb"$/{getline; gsub(/"/,"",$3); print $3; exit}' "$BENCH/redb-fsync/Cargo.lock")

# ---------------------------------------------------------------------------------------------
# 4. The workloads. Results go into R[<server>.<workload>.<key>].

declare -A R
ERRORS=()
CLK_TCK=$(getconf CLK_TCK)
# A server's user + system CPU ticks and bytes written to storage so far: "TICKS BYTES".
proc_snap() {
    printf '%s %s' "$(awk '{ print $14 + $15 }' "/proc/$1/stat")" \
        "$(awk '/^write_bytes:/ { print $2 }' "/proc/$1/io" 2>/dev/null || echo 0)"
}
proc_delta() { # SERVER.WORKLOAD SNAP_BEFORE: its CPU use over the run (% of one core), MB written
    local now
    now=$(proc_snap "${SERVER_PID[${1%%.*}]}")
    R[$1.cpu]=$(awk -v a="${2% *}" -v b="${now% *}" -v hz="$CLK_TCK" -v s="${R[$1.secs]}" 'BEGIN { printf "%.0f", 100 * (b - a) / hz / s }')
    R[$1.wmb]=$(awk -v a="${2#* }" -v b="${now#* }" 'BEGIN { printf "%.1f", (b - a) / 1048576 }')
}

parse_result() { # PREFIX FILE: copies the RESULT line's key=value pairs into R[PREFIX.key]
    local line kv
    line=$(grep '^RESULT ' "$2" | tail -n1) || die "no RESULT in $2: $(tail -n 5 "$2")"
    for kv in ${line#RESULT }; do R[$1.${kv%%=*}]=${kv#*=}; done
    if grep -q '^BAD_SAMPLE ' "$2"; then ERRORS+=("$1: $(grep '^BAD_SAMPLE ' "$2" | head -n1)"); fi
}

run_wrk() { # SERVER WORKLOAD CONNECTIONS URL MODE BASE ARG [SECONDS]
    local server=$1 name=$2 conns=$3 secs=${8:-$DURATION} threads=1 out
    [ "$conns" -gt 1 ] && threads=$THREADS
    out=$WORK/$server.$name.out
    R[$server.$name.load]=$(load1)
    local snap
    snap=$(proc_snap "${SERVER_PID[$server]}")
    log "$name on $server: $conns connection(s), $threads thread(s), $secs s"
    wrk -t "$threads" -c "$conns" -d "${secs}s" --timeout 10s -s "$BENCH/wrk.lua" "$4" \
        -- "$5" "$6" "$7" >"$out" 2>&1 || die "wrk failed: $(tail -n 5 "$out")"
    parse_result "$server.$name" "$out"
    proc_delta "$server.$name" "$snap"
    local e=$((${R[$server.$name.non2xx]} + ${R[$server.$name.sockerr]}))
    [ "$e" -eq 0 ] || ERRORS+=("$server $name: ${R[$server.$name.non2xx]} non-2xx, ${R[$server.$name.sockerr]} socket errors")
    log "  ${R[$server.$name.okps]} ok/s (p50 ${R[$server.$name.p50_ms]} ms, p99 ${R[$server.$name.p99_ms]} ms)"
}

run_bulk() { # SERVER URL
    local out=$WORK/$1.bulk.out
    R[$1.bulk.load]=$(load1)
    local snap
    snap=$(proc_snap "${SERVER_PID[$1]}")
    log "_bulk_docs on $1: $BATCHES x $BATCH documents"
    node "$BENCH/client.js" bulk "$2" "$BATCHES" "$BATCH" >"$out" 2>&1 || die "bulk client failed: $(tail -n 5 "$out")"
    parse_result "$1.bulk" "$out"
    proc_delta "$1.bulk" "$snap"
    local e=$((${R[$1.bulk.failed]} + ${R[$1.bulk.bad_status]} * BATCH))
    [ "$e" -eq 0 ] || ERRORS+=("$1 _bulk_docs: ${R[$1.bulk.failed]} failed documents, ${R[$1.bulk.bad_status]} failed requests")
    log "  ${R[$1.bulk.docs_per_s]} docs/s (${R[$1.bulk.acked]} acknowledged in ${R[$1.bulk.secs]} s)"
}

fsync_ref() { # NAME
    local out=$WORK/fsync.$1.out
    R[fsync.$1.load]=$(load1)
    "$FSYNC_BIN" "$FSYNC_N" "$WORK" "$FSYNC_SECS" >"$out" 2>&1 || die "redb-fsync failed: $(tail -n 5 "$out")"
    parse_result "fsync.$1" "$out"
    log "redb fsync reference ($1): ${R[fsync.$1.txn_per_s]} txn/s (${R[fsync.$1.n]} commits, ${R[fsync.$1.kb_per_txn]} KB written/commit)"
}

# Counts what Cooper's query ?kind=eq.bench (every document has kind "bench") returns, and
# its barrel info doc_count, into R[verify.WHEN.*].
verify_cooper() { # WHEN
    local out=$WORK/verify.$1.out
    node "$BENCH/client.js" count "$C/barrels/bench/docs?kind=eq.bench&limit=10000" >"$out" 2>&1 ||
        die "query failed: $(tail -n 5 "$out")"
    parse_result "verify.$1" "$out"
    R[verify.$1.doc_count]=$(json_get "$C/barrels/bench" 'j.doc_count')
    R[verify.$1.pouch_doc_count]=$(json_get "$P/bench" 'j.doc_count')
}

# Cooper's group commits (its /metrics): "seconds_sum count docs_sum" now; the difference
# between two snapshots says how many commits a workload took, how big and how long.
commit_snap() {
    curl -sf "$C/metrics" | awk '/^cooper_commit_seconds_sum/ { s += $NF } /^cooper_commit_seconds_count/ { c += $NF }
        /^cooper_commit_batch_documents_sum/ { d += $NF } END { printf "%s %s %s", s + 0, c + 0, d + 0 }'
}
commit_delta() { # NAME BEFORE AFTER (after run_wrk/run_bulk cooper NAME: uses its MB written)
    R[commit.$1]=$(awk -v a="$2" -v b="$3" -v mb="${R[cooper.$1.wmb]}" 'BEGIN { split(a, x, " "); split(b, y, " "); c = y[2] - x[2];
        if (c > 0) printf "%d commits, %.1f docs/commit, %.3f ms/commit, %.0f KB written/commit", c, (y[3] - x[3]) / c, 1000 * (y[1] - x[1]) / c, mb * 1024 / c;
        else print "no commits seen in /metrics" }')
}

LOAD_BEFORE=$(loadavg)
CB=/barrels/bench/docs/
PB=/bench/

snap=$(commit_snap)
run_bulk cooper "$C/barrels/bench/_bulk_docs"
commit_delta bulk "$snap" "$(commit_snap)"
verify_cooper bulk # at once, no pause: the index must already hold every acknowledged write
run_bulk pouch "$P/bench/_bulk_docs"

run_wrk cooper get1 1 "$C" get "$CB" "$NDOCS"
run_wrk pouch get1 1 "$P" get "$PB" "$NDOCS"
run_wrk cooper get16 16 "$C" get "$CB" "$NDOCS"
run_wrk pouch get16 16 "$P" get "$PB" "$NDOCS"

# Cooper's PUT-1 in rounds, each between two fsync references (ids p1r<round>-<thread>-<n>).
fsync_ref 0
for k in $(seq 1 "$PUT1_ROUNDS"); do
    snap=$(commit_snap)
    run_wrk cooper "put1r$k" 1 "$C" put "$CB" "p1r$k" "$PUT1_SECS"
    commit_delta "put1r$k" "$snap" "$(commit_snap)"
    fsync_ref "$k"
done
run_wrk pouch put1 1 "$P" put "$PB" p1

snap=$(commit_snap)
run_wrk cooper put16 16 "$C" put "$CB" p16
commit_delta put16 "$snap" "$(commit_snap)"
run_wrk pouch put16 16 "$P" put "$PB" p16

verify_cooper end
COOPER_SIZE=$(json_get "$C/barrels/bench" 'j.size_bytes')
LOAD_AFTER=$(loadavg)

# ---------------------------------------------------------------------------------------------
# 5. The report

calc() { awk "BEGIN { printf \"%.2f\", $1 }"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r != "n/a" && r + 0 >= t + 0) ? "PASS" : "FAIL" }'; }
FAILS=0
row() { # LABEL COOPER POUCH TARGET(or -)
    local r t v
    r=$(ratio "$2" "$3")
    if [ "$4" = - ]; then t=-; v=-; else
        t=">= $4x"
        v=$(verdict "$r" "$4")
        [ "$v" = PASS ] || FAILS=$((FAILS + 1))
    fi
    printf '%-22s %12.1f %16.1f %9sx %10s %6s\n' "$1" "$2" "$3" "$r" "$t" "$v"
}

# Cooper's PUT-1 overall, and each round against the mean of the references either side.
PUT1_OK=0
PUT1_TIME=0
PUT1_RATIOS=()
PUT1_LINES=()
for k in $(seq 1 "$PUT1_ROUNDS"); do
    PUT1_OK=$((PUT1_OK + ${R[cooper.put1r$k.ok]}))
    PUT1_TIME=$(calc "$PUT1_TIME + ${R[cooper.put1r$k.secs]}")
    ref=$(calc "(${R[fsync.$((k - 1)).txn_per_s]} + ${R[fsync.$k.txn_per_s]}) / 2")
    r=$(ratio "${R[cooper.put1r$k.okps]}" "$ref")
    PUT1_RATIOS+=("$r")
    PUT1_LINES+=("$(printf '  round %d: redb %7.1f | cooper %7.1f req/s (p50 %.3f ms, p99 %.3f ms) | redb %7.1f -> %sx of their mean %.1f\n           cooper %s' \
        "$k" "${R[fsync.$((k - 1)).txn_per_s]}" "${R[cooper.put1r$k.okps]}" "${R[cooper.put1r$k.p50_ms]}" \
        "${R[cooper.put1r$k.p99_ms]}" "${R[fsync.$k.txn_per_s]}" "$r" "$ref" "${R[commit.put1r$k]}")")
done
R[cooper.put1.ok]=$PUT1_OK
R[cooper.put1.okps]=$(calc "$PUT1_OK / $PUT1_TIME")
PUT1_VS_REDB=$(printf '%s\n' "${PUT1_RATIOS[@]}" | sort -g | awk '{ v[NR] = $1 } END { printf "%.2f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
PUT1_VERDICT=$(verdict "$PUT1_VS_REDB" 0.80)
FSYNC_MIN=$(for k in $(seq 0 "$PUT1_ROUNDS"); do echo "${R[fsync.$k.txn_per_s]}"; done | sort -g | head -n1)
FSYNC_MAX=$(for k in $(seq 0 "$PUT1_ROUNDS"); do echo "${R[fsync.$k.txn_per_s]}"; done | sort -g | tail -n1)
[ "$PUT1_VERDICT" = PASS ] || FAILS=$((FAILS + 1))

# Acknowledged writes: every document the bulk load acknowledged, plus every 2xx PUT. A PUT
# still in flight when wrk stopped may be written but not counted: at most one per PUT-1
# round and 16 for PUT-16.
INFLIGHT=$((PUT1_ROUNDS + 16))
ACK_BULK=${R[cooper.bulk.acked]}
ACK_END=$((ACK_BULK + ${R[cooper.put1.ok]} + ${R[cooper.put16.ok]}))
VB_ROWS=${R[verify.bulk.unique]}
VB_OK=FAIL
[ "$VB_ROWS" -eq "$ACK_BULK" ] && [ "${R[verify.bulk.rows]}" -eq "$VB_ROWS" ] &&
    [ "${R[verify.bulk.doc_count]}" -eq "$ACK_BULK" ] && VB_OK=PASS
VE_ROWS=${R[verify.end.unique]}
VE_OK=FAIL
[ "$VE_ROWS" -ge "$ACK_END" ] && [ "$VE_ROWS" -le $((ACK_END + INFLIGHT)) ] &&
    [ "${R[verify.end.rows]}" -eq "$VE_ROWS" ] && [ "${R[verify.end.doc_count]}" -eq "$VE_ROWS" ] && VE_OK=PASS
[ "$VB_OK" = PASS ] || FAILS=$((FAILS + 1))
[ "$VE_OK" = PASS ] || FAILS=$((FAILS + 1))

{
    echo
    echo "Cooper vs pouchdb-server over HTTP on loopback (DESIGN §8), one run"
    printf '%-22s %12s %16s %10s %10s %6s\n' workload cooper pouchdb-server ratio target result
    row "PUT-1 (req/s)" "${R[cooper.put1.okps]}" "${R[pouch.put1.okps]}" -
    row "PUT-16 (req/s)" "${R[cooper.put16.okps]}" "${R[pouch.put16.okps]}" 10
    row "_bulk_docs (docs/s)" "${R[cooper.bulk.docs_per_s]}" "${R[pouch.bulk.docs_per_s]}" 5
    row "GET-1 (req/s)" "${R[cooper.get1.okps]}" "${R[pouch.get1.okps]}" -
    row "GET-16 (req/s)" "${R[cooper.get16.okps]}" "${R[pouch.get16.okps]}" 10
    echo
    echo "PUT-1 against the fsync bound (redb, one ~300-byte value per transaction, Durability::Immediate):"
    printf '%s\n' "${PUT1_LINES[@]}"
    printf '  cooper PUT-1 / redb single-value commits: median of the rounds %sx (target >= 0.80x) %s\n' "$PUT1_VS_REDB" "$PUT1_VERDICT"
    DRIFT=$(awk -v a="$FSYNC_MIN" -v b="$FSYNC_MAX" 'BEGIN { if (a > 0 && b / a > 1.5) printf "%.1f", b / a }')
    if [ -n "$DRIFT" ]; then
        echo "  NOTE: the references span ${DRIFT}x ($FSYNC_MIN..$FSYNC_MAX txn/s): the disk's fsync rate moved during the run"
    fi
    printf '  cooper PUT-1 / pouchdb-server PUT-1 = %sx (pouchdb-server does not fsync each write)\n' \
        "$(ratio "${R[cooper.put1.okps]}" "${R[pouch.put1.okps]}")"
    echo
    echo "Cooper's queries see every acknowledged write (?kind=eq.bench&limit=10000, paged via next):"
    printf '  right after _bulk_docs: %d acknowledged, query %d docs (%d unique, %d pages, %.2f s), doc_count %d  %s\n' \
        "$ACK_BULK" "${R[verify.bulk.rows]}" "$VB_ROWS" "${R[verify.bulk.pages]}" "${R[verify.bulk.secs]}" "${R[verify.bulk.doc_count]}" "$VB_OK"
    printf '  at the end:             %d acknowledged (bulk + 2xx PUTs; up to %d more in flight when wrk stopped), query %d docs (%d unique, %d pages, %.2f s), doc_count %d  %s\n' \
        "$ACK_END" "$INFLIGHT" "${R[verify.end.rows]}" "$VE_ROWS" "${R[verify.end.pages]}" "${R[verify.end.secs]}" "${R[verify.end.doc_count]}" "$VE_OK"
    printf '  (pouchdb-server doc_count at the end: %s)\n' "${R[verify.end.pouch_doc_count]}"
    echo
    echo "Cooper's group commits (/metrics; KB written from /proc/PID/io):"
    echo "  _bulk_docs: ${R[commit.bulk]}"
    echo "  PUT-16:     ${R[commit.put16]}"
    echo "  redb reference: $(for k in $(seq 0 "$PUT1_ROUNDS"); do printf '%s ' "${R[fsync.$k.kb_per_txn]}"; done)KB written/commit"
    echo
    echo "Per run: latency p50 / p99, the server's CPU (% of one core; 200% = both), MB it wrote to disk, 1-min load at the start:"
    for w in put1r1 put16 get1 get16; do
        a=$w b=$w
        [ "$w" = put1r1 ] && b=put1
        printf '  %-6s cooper %7.3f / %7.3f ms, cpu %4s%%, %6s MB, load %-5s | pouchdb-server %7.3f / %7.3f ms, cpu %4s%%, %6s MB, load %s\n' "$b" \
            "${R[cooper.$a.p50_ms]}" "${R[cooper.$a.p99_ms]}" "${R[cooper.$a.cpu]}" "${R[cooper.$a.wmb]}" "${R[cooper.$a.load]}" \
            "${R[pouch.$b.p50_ms]}" "${R[pouch.$b.p99_ms]}" "${R[pouch.$b.cpu]}" "${R[pouch.$b.wmb]}" "${R[pouch.$b.load]}"
    done
    echo "         (cooper put1: round 1 of $PUT1_ROUNDS)"
    printf '  bulk   cooper %.2f s, cpu %s%%, %s MB, load %s | pouchdb-server %.2f s, cpu %s%%, %s MB, load %s\n' \
        "${R[cooper.bulk.secs]}" "${R[cooper.bulk.cpu]}" "${R[cooper.bulk.wmb]}" "${R[cooper.bulk.load]}" \
        "${R[pouch.bulk.secs]}" "${R[pouch.bulk.cpu]}" "${R[pouch.bulk.wmb]}" "${R[pouch.bulk.load]}"
    printf '         ms per _bulk_docs request, first / last tenth of the load: cooper %s / %s, pouchdb-server %s / %s\n' \
        "${R[cooper.bulk.first_ms]}" "${R[cooper.bulk.last_ms]}" "${R[pouch.bulk.first_ms]}" "${R[pouch.bulk.last_ms]}"
    printf '  data at the end: cooper barrel size_bytes %s (data dir %s); pouchdb-server data dir %s\n' \
        "$COOPER_SIZE" "$(du -sh "$WORK/cooper" | cut -f1)" "$(du -sh "$WORK/pouch" | cut -f1)"
    echo
    echo "Notes:"
    echo "  load average before $LOAD_BEFORE, after $LOAD_AFTER ($(nproc) cores); $((SECONDS - STARTED_AT)) s in all, $((SECONDS - MEASURE_AT)) s from the servers' start"
    echo "  cooper $COOPER_VERSION; pouchdb-server $POUCH_VERSION ($POUCH_STORE store, log level warning); redb $REDB_VERSION; wrk $WRK_VERSION; node $NODE_VERSION"
    echo "  ${DURATION} s per wrk run, 1 thread for 1 connection, $THREADS threads for 16; $NDOCS bulk documents (~${R[cooper.bulk.avg_doc_bytes]} bytes each with _id) in batches of $BATCH"
    echo "  ${PUT1_ROUNDS} cooper PUT-1 rounds of ${PUT1_SECS} s between redb references of up to $FSYNC_N commits / ${FSYNC_SECS} s"
    echo "  rates count 200/201 answers only; order: bulk, GET-1, GET-16, PUT-1 (cooper rounds and redb), PUT-1 (pouchdb-server), PUT-16; cooper first in each"
    if [ ${#ERRORS[@]} -eq 0 ]; then
        echo "  errors: none (every answer 200/201, no socket errors)"
    else
        for e in "${ERRORS[@]}"; do echo "  ERROR $e"; done
    fi
    echo "  $FAILS target(s) missed"
}

if [ "$FAILS" -gt 0 ] && [ -n "${BENCH_STRICT:-}" ]; then exit 1; fi
