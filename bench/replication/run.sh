#!/usr/bin/env bash
# Replication throughput over HTTP on loopback, Cooper against pouchdb-server, in one run
# (DESIGN §8).
#
#   bash bench/replication/run.sh         (from the repository root, or from anywhere)
#
# Installs what it needs when missing (curl and nodejs/npm with apt-get; pouchdb-server,
# pouchdb and pouchdb-adapter-memory, pinned, with `npm ci` in bench/replication; `cargo build
# --release --bin cooper`), starts two Cooper nodes (A, B) and two pouchdb-server instances
# (P1, P2) on free loopback ports with fresh temporary data directories, and for each N in
# BENCH_SIZES (10,000 and 100,000 documents of ~300 bytes of nested JSON, ids doc-000000…):
#   load      N documents into A's barrel src-N (POST /barrels/src-N/_bulk_docs) and into
#             P1's database src-N (POST /src-N/_bulk_docs), in batches of 1000 (not timed
#             against each other, shown for reference)
#   node → node, pull   POST B/replicate {"source": "http://A/couch/src-N", "target": "pull-N"}
#                       (on the target node; one-shot, answers when done)
#   node → node, push   POST A/replicate {"source": "src-N", "target": "http://B/couch/push-N"}
#                       (on the source node)
#   pouchdb-server → pouchdb-server   POST P2/_replicate {"source": "http://P1/src-N",
#                       "target": "dst-N"} (on the target; one-shot, answers when done)
#   PouchDB → node / PouchDB → pouchdb-server   PouchDB in Node.js (memory adapter, preloaded
#                       with N documents by bulkDocs, not timed), db.replicate.to(
#                       "http://B/couch/pouch-N"), then db.replicate.to("http://P2/pouch-N")
# Every replication is timed from its request to its answer; each is preceded (once per
# server pair) by an untimed warm-up replication of 200 documents. After each one the target's
# doc_count must be N and 5 documents (first, second, middle, last two) must hold the bytes
# that were loaded. Prints documents per second, the ratios, the targets and PASS/FAIL:
#   node → node ≥ 10× pouchdb-server → pouchdb-server;  PouchDB → node ≥ PouchDB → pouchdb-server
#
# Environment (all optional):
#   BENCH_SIZES="10000 100000"   document counts, in order
#   BENCH_POUCH_STORE=leveldb    pouchdb-server store: leveldb (on disk under the temporary
#                                directory, the default, the fair comparison) or memory
#   COOPER_BIN=path              use this cooper binary instead of `cargo build --release`
#   BENCH_RUST_LOG=...           RUST_LOG of the Cooper nodes (default: warn)
#   BENCH_TRACE=1                diagnosis, not a benchmark: every request a Cooper node or
#                                PouchDB sends to a Cooper node goes through a logging proxy
#                                (client.js proxy); per-route timings are printed at the end
#   BENCH_STRICT=1               exit 1 when a target is missed (default: exit 0 with FAILs)
#   BENCH_KEEP=1                 keep the temporary directory (logs, data) and print its path
#   TMPDIR                       where the temporary directory goes
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SIZES=${BENCH_SIZES:-10000 100000}
POUCH_STORE=${BENCH_POUCH_STORE:-leveldb}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TRACE=${BENCH_TRACE:-}
STARTED_AT=$SECONDS

log() { printf '[repl-bench %s] %s\n' "$(date +%T)" "$*" >&2; }
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
command -v node >/dev/null && command -v npm >/dev/null ||
    { log "installing nodejs and npm (apt-get)"; apt_install nodejs npm; }
command -v cargo >/dev/null || [ -n "${COOPER_BIN:-}" ] || die "cargo is needed (https://rustup.rs)"

POUCH_BIN=$HERE/node_modules/.bin/pouchdb-server
if [ ! -x "$POUCH_BIN" ] || [ ! -d "$HERE/node_modules/pouchdb-adapter-memory" ] ||
    [ "$HERE/package-lock.json" -nt "$HERE/node_modules/.package-lock.json" ]; then
    log "installing pouchdb-server, pouchdb, pouchdb-adapter-memory (npm ci in bench/replication)"
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error >&2)
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
CLIENT=(node "$HERE/client.js")

# ---------------------------------------------------------------------------------------------
# 2. The servers, on loopback, with fresh data directories; every process stopped on exit

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cooper-repl-bench.XXXXXX")
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
        for f in "$WORK"/*.log; do
            [ -s "$f" ] && { log "last lines of $f:"; tail -n 20 "$f" >&2; }
        done
    fi
    if [ -n "${BENCH_KEEP:-}" ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

USED_PORTS=" "
freeport() { # VAR: a free loopback port, none given twice, into VAR
    local p
    while :; do
        p=$("${CLIENT[@]}" freeport)
        case $USED_PORTS in *" $p "*) continue ;; esac
        USED_PORTS="$USED_PORTS$p "
        printf -v "$1" '%s' "$p"
        return
    done
}
freeport APORT
freeport BPORT
freeport P1PORT
freeport P2PORT
A=http://127.0.0.1:$APORT
B=http://127.0.0.1:$BPORT
P1=http://127.0.0.1:$P1PORT
P2=http://127.0.0.1:$P2PORT

start_cooper() { # NAME PORT
    mkdir -p "$WORK/$1"
    RUST_LOG=${BENCH_RUST_LOG:-warn} "$COOPER_BIN" start --data "$WORK/$1" --http "127.0.0.1:$2" \
        >"$WORK/$1.log" 2>&1 &
    PIDS+=($!)
    LAST_PID=$!
}
# pouchdb-server: LevelDB on disk under --dir (or --in-memory), request logging off (level
# warning) so that it is not slowed by a log line per request.
start_pouch() { # NAME PORT
    mkdir -p "$WORK/$1/db"
    printf '{"log":{"level":"warning"}}\n' >"$WORK/$1/config.json"
    local args=(--host 127.0.0.1 --port "$2" --config "$WORK/$1/config.json" --no-stdout-logs)
    case $POUCH_STORE in
    leveldb) args+=(--dir "$WORK/$1/db") ;;
    memory) args+=(--in-memory) ;;
    *) die "BENCH_POUCH_STORE must be leveldb or memory, not $POUCH_STORE" ;;
    esac
    (cd "$WORK/$1" && exec "$POUCH_BIN" "${args[@]}") >"$WORK/$1.log" 2>&1 &
    PIDS+=($!)
    LAST_PID=$!
}
wait_http() { # URL NAME PID
    local i
    for i in $(seq 1 300); do
        curl -sf -o /dev/null "$1" && return 0
        kill -0 "$3" 2>/dev/null || die "$2 exited during startup"
        sleep 0.2
    done
    die "$2 did not answer on $1 within 60 s"
}

log "starting cooper A on $A, cooper B on $B, pouchdb-server P1 on $P1 and P2 on $P2 ($POUCH_STORE); data in $WORK"
start_cooper cooper-a "$APORT"
A_PID=$LAST_PID
start_cooper cooper-b "$BPORT"
B_PID=$LAST_PID
start_pouch pouch-1 "$P1PORT"
P1_PID=$LAST_PID
start_pouch pouch-2 "$P2PORT"
P2_PID=$LAST_PID
wait_http "$A/health" "cooper A" "$A_PID"
wait_http "$B/health" "cooper B" "$B_PID"
wait_http "$P1/" "pouchdb-server P1" "$P1_PID"
wait_http "$P2/" "pouchdb-server P2" "$P2_PID"

# With BENCH_TRACE, the URLs through which A and B are reached for replication go through
# logging proxies (A_VIA for A's /couch, B_VIA for B's /couch).
A_VIA=$A
B_VIA=$B
if [ -n "$TRACE" ]; then
    freeport PA
    freeport PB
    "${CLIENT[@]}" proxy "$PA" "$A" "$WORK/trace-a.txt" >"$WORK/proxy-a.log" 2>&1 &
    PIDS+=($!)
    "${CLIENT[@]}" proxy "$PB" "$B" "$WORK/trace-b.txt" >"$WORK/proxy-b.log" 2>&1 &
    PIDS+=($!)
    A_VIA=http://127.0.0.1:$PA
    B_VIA=http://127.0.0.1:$PB
    wait_http "$A_VIA/health" "proxy to A" "${PIDS[-2]}"
    wait_http "$B_VIA/health" "proxy to B" "${PIDS[-1]}"
    log "BENCH_TRACE: A via $A_VIA, B via $B_VIA (figures of this run are not the benchmark's)"
fi

http_status() { curl -s -o "$WORK/last-body" -w '%{http_code}' "$@"; }
create_db() { # URL (Cooper /barrels/<b> or pouchdb-server /<db>)
    local s
    s=$(http_status -X PUT "$1")
    [ "$s" = 201 ] || die "PUT $1: $s $(cat "$WORK/last-body")"
}
json_get() { # URL EXPR: EXPR evaluated on the JSON answer `j`
    curl -sf "$1" | node -e "let s='';process.stdin.on('data',c=>s+=c).on('end',()=>{const j=JSON.parse(s);console.log($2)})"
}
COOPER_VERSION=$(json_get "$A/" 'j.version')
POUCH_VERSION=$(json_get "$P1/" 'j.version')
POUCHDB_VERSION=$(node -p "require('$HERE/node_modules/pouchdb/package.json').version")
NODE_VERSION=$(node --version)

# ---------------------------------------------------------------------------------------------
# 3. The runs. Results go into R[<key>].

declare -A R
ERRORS=()
result() { # FILE KEY: the value of KEY in FILE's last RESULT line
    grep '^RESULT ' "$1" | tail -n1 | tr ' ' '\n' | sed -n "s/^$2=//p"
}
body_field() { # FILE EXPR: EXPR evaluated on the JSON of FILE's BODY line, as `j`
    sed -n 's/^BODY //p' "$1" | tail -n1 |
        node -e "let s='';process.stdin.on('data',c=>s+=c).on('end',()=>{const j=JSON.parse(s);console.log($2)})"
}

load_docs() { # KEY URL N
    local out=$WORK/$1.out
    R[$1.load]=$(load1)
    "${CLIENT[@]}" bulk "$2" "$3" 1000 >"$out" 2>&1 || die "loading $2 failed: $(tail -n 5 "$out")"
    R[$1.secs]=$(result "$out" secs)
    R[$1.dps]=$(result "$out" docs_per_s)
    R[$1.bytes]=$(result "$out" avg_doc_bytes)
    log "  loaded $3 documents into $2: ${R[$1.dps]} docs/s (${R[$1.secs]} s), ~${R[$1.bytes]} bytes each"
}

verify() { # KEY DBURL N
    local out=$WORK/$1.verify.out
    "${CLIENT[@]}" verify "$2" "$3" >"$out" 2>&1 || die "verifying $2 failed: $(tail -n 5 "$out")"
    R[$1.count]=$(result "$out" doc_count)
    R[$1.mismatched]=$(result "$out" mismatched)
    if [ "${R[$1.count]}" = "$3" ] && [ "${R[$1.mismatched]}" = 0 ]; then
        R[$1.ok]=ok
    else
        R[$1.ok]=MISSING
        ERRORS+=("$1: $2 holds ${R[$1.count]} documents of $3, ${R[$1.mismatched]} of 5 checked differ")
    fi
}

# A one-shot replication asked of a server: KEY URL JSON N DBURL (the target, for verify)
replicate_http() {
    local out=$WORK/$1.out
    R[$1.load]=$(load1)
    "${CLIENT[@]}" post "$2" "$3" >"$out" 2>&1 || die "POST $2 $3 failed: $(tail -n 5 "$out")"
    R[$1.secs]=$(result "$out" secs)
    R[$1.dps]=$(awk -v n="$4" -v s="${R[$1.secs]}" 'BEGIN { printf "%.1f", n / s }')
    R[$1.written]=$(body_field "$out" 'j.docs_written')
    R[$1.answer]=$(body_field "$out" 'j.state !== undefined ? j.state : (j.ok ? "ok" : "not ok")')
    case ${R[$1.answer]} in
    completed | ok) ;;
    *) ERRORS+=("$1: the replication answered $(sed -n 's/^BODY //p' "$out" | head -c 400)") ;;
    esac
    verify "$1" "$5" "$4"
    log "  $1: ${R[$1.secs]} s, ${R[$1.dps]} docs/s (answer ${R[$1.answer]}, docs_written ${R[$1.written]}, target holds ${R[$1.count]}: ${R[$1.ok]}; load ${R[$1.load]})"
}

# Untimed warm-up of the server-to-server paths: 200 documents each way once.
log "warm-up: 200 documents node → node (pull and push) and pouchdb-server → pouchdb-server"
create_db "$A/barrels/warm"
create_db "$B/barrels/warm-pull"
create_db "$B/barrels/warm-push"
create_db "$P1/warm"
create_db "$P2/warm-dst"
"${CLIENT[@]}" bulk "$A/barrels/warm/_bulk_docs" 200 200 >/dev/null
"${CLIENT[@]}" bulk "$P1/warm/_bulk_docs" 200 200 >/dev/null
"${CLIENT[@]}" post "$B/replicate" "{\"source\":\"$A_VIA/couch/warm\",\"target\":\"warm-pull\"}" >/dev/null
"${CLIENT[@]}" post "$A/replicate" "{\"source\":\"warm\",\"target\":\"$B_VIA/couch/warm-push\"}" >/dev/null
"${CLIENT[@]}" post "$P2/_replicate" "{\"source\":\"$P1/warm\",\"target\":\"warm-dst\"}" >/dev/null

FIRST_N=${SIZES%% *}
LOAD_BEFORE=$(loadavg)
for N in $SIZES; do
    log "N = $N"
    create_db "$A/barrels/src-$N"
    create_db "$B/barrels/pull-$N"
    create_db "$B/barrels/push-$N"
    create_db "$B/barrels/pouch-$N"
    create_db "$P1/src-$N"
    create_db "$P2/dst-$N"
    create_db "$P2/pouch-$N"
    load_docs "$N.load.cooper" "$A/barrels/src-$N/_bulk_docs" "$N"
    load_docs "$N.load.pouch" "$P1/src-$N/_bulk_docs" "$N"

    log "node → node, pull (POST /replicate on B)"
    replicate_http "$N.pull" "$B/replicate" "{\"source\":\"$A_VIA/couch/src-$N\",\"target\":\"pull-$N\"}" "$N" "$B/couch/pull-$N"
    log "node → node, push (POST /replicate on A)"
    replicate_http "$N.push" "$A/replicate" "{\"source\":\"src-$N\",\"target\":\"$B_VIA/couch/push-$N\"}" "$N" "$B/couch/push-$N"
    log "pouchdb-server → pouchdb-server (POST /_replicate on P2)"
    replicate_http "$N.pp" "$P2/_replicate" "{\"source\":\"$P1/src-$N\",\"target\":\"dst-$N\"}" "$N" "$P2/dst-$N"

    log "PouchDB (Node.js, memory) → node B, then → pouchdb-server P2"
    out=$WORK/$N.pouchdb.out
    R[$N.pouchdb.load]=$(load1)
    "${CLIENT[@]}" pouch "$N" "cooper=$B_VIA/couch/pouch-$N" "pouch=$P2/pouch-$N" >"$out" 2>&1 ||
        die "PouchDB replication failed: $(tail -n 8 "$out")"
    for t in cooper pouch; do
        line=$(grep "^RESULT target=$t " "$out")
        k=$N.pouchdb-$t
        R[$k.secs]=$(sed -n 's/.* secs=\([^ ]*\).*/\1/p' <<<"$line")
        R[$k.written]=$(sed -n 's/.* docs_written=\([^ ]*\).*/\1/p' <<<"$line")
        R[$k.dps]=$(awk -v n="$N" -v s="${R[$k.secs]}" 'BEGIN { printf "%.1f", n / s }')
        R[$k.answer]=$(sed -n 's/.* status=\([^ ]*\).*/\1/p' <<<"$line")
        R[$k.load]=${R[$N.pouchdb.load]}
    done
    verify "$N.pouchdb-cooper" "$B/couch/pouch-$N" "$N"
    verify "$N.pouchdb-pouch" "$P2/pouch-$N" "$N"
    for t in cooper pouch; do
        k=$N.pouchdb-$t
        log "  $k: ${R[$k.secs]} s, ${R[$k.dps]} docs/s (docs_written ${R[$k.written]}, target holds ${R[$k.count]}: ${R[$k.ok]})"
    done
done
LOAD_AFTER=$(loadavg)

# ---------------------------------------------------------------------------------------------
# 4. The report

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r != "n/a" && r + 0 >= t + 0) ? "PASS" : "FAIL" }'; }
FAILS=0
row() { # N LABEL KEY
    printf '%8s  %-44s %9.2f %10.1f %8s  %s\n' "$1" "$2" "${R[$3.secs]}" "${R[$3.dps]}" "${R[$3.load]}" \
        "${R[$3.count]}/$1 ${R[$3.ok]}"
}
ratio_row() { # N LABEL KEY_A KEY_B TARGET
    local r v
    r=$(ratio "${R[$3.dps]}" "${R[$4.dps]}")
    v=$(verdict "$r" "$5")
    [ "$v" = PASS ] || FAILS=$((FAILS + 1))
    printf '%8s  %-58s %8sx  >= %sx  %s\n' "$1" "$2" "$r" "$5" "$v"
}

{
    echo
    echo "Replication over HTTP on loopback (DESIGN §8), one run; ~${R[$FIRST_N.load.cooper.bytes]}-byte nested JSON documents"
    printf '%8s  %-44s %9s %10s %8s  %s\n' docs path secs docs/s load1 "target holds"
    for N in $SIZES; do
        row "$N" "node -> node (pull: POST /replicate on target)" "$N.pull"
        row "$N" "node -> node (push: POST /replicate on source)" "$N.push"
        row "$N" "pouchdb-server -> pouchdb-server (_replicate)" "$N.pp"
        row "$N" "PouchDB (Node.js, memory) -> node" "$N.pouchdb-cooper"
        row "$N" "PouchDB (Node.js, memory) -> pouchdb-server" "$N.pouchdb-pouch"
    done
    echo
    echo "Ratios (documents per second):"
    for N in $SIZES; do
        ratio_row "$N" "node -> node (pull) / pouchdb-server -> pouchdb-server" "$N.pull" "$N.pp" 10
        ratio_row "$N" "node -> node (push) / pouchdb-server -> pouchdb-server" "$N.push" "$N.pp" 10
        ratio_row "$N" "PouchDB -> node / PouchDB -> pouchdb-server" "$N.pouchdb-cooper" "$N.pouchdb-pouch" 1
    done
    echo
    echo "Source loads (POST _bulk_docs, batches of 1000; not part of the ratios):"
    for N in $SIZES; do
        printf '%8s  cooper A %9.1f docs/s (%.2f s)   pouchdb-server P1 %9.1f docs/s (%.2f s)\n' "$N" \
            "${R[$N.load.cooper.dps]}" "${R[$N.load.cooper.secs]}" "${R[$N.load.pouch.dps]}" "${R[$N.load.pouch.secs]}"
    done
    echo
    echo "Notes:"
    echo "  load average before the timed runs $LOAD_BEFORE, after $LOAD_AFTER ($(nproc) cores); $((SECONDS - STARTED_AT)) s in all, setup included"
    echo "  cooper $COOPER_VERSION (2 nodes); pouchdb-server $POUCH_VERSION (2 instances, $POUCH_STORE store, log level warning); pouchdb $POUCHDB_VERSION (memory adapter, replicate.to defaults: batch_size 100, batches_limit 10); node $NODE_VERSION"
    echo "  times run from the request to the answer of each one-shot replication (PouchDB: replicate.to's promise), each after an untimed 200-document warm-up of the same path"
    echo "  order per N: load A, load P1, node → node pull, push, pouchdb-server → pouchdb-server, PouchDB → node, PouchDB → pouchdb-server"
    echo "  every target checked after its run: doc_count = N and 5 documents equal to what was loaded"
    [ -n "$TRACE" ] && echo "  BENCH_TRACE=1: Cooper traffic went through logging proxies; these figures are a diagnosis, not the benchmark"
    if [ ${#ERRORS[@]} -eq 0 ]; then
        echo "  errors: none"
    else
        for e in "${ERRORS[@]}"; do echo "  ERROR $e"; done
        FAILS=$((FAILS + ${#ERRORS[@]}))
    fi
    echo "  $FAILS target(s) missed or error(s)"
}

if [ -n "$TRACE" ]; then
    echo
    echo "BENCH_TRACE: requests to Cooper nodes by route (count, total s, mean ms, max ms, mean bytes in/out):"
    for f in "$WORK"/trace-a.txt "$WORK"/trace-b.txt; do
        [ -s "$f" ] || continue
        echo "  $(basename "$f" .txt):"
        awk '{ split($3, u, "?"); n = split(u[1], p, "/"); route = $2 " " p[n];
               if (u[1] ~ /\/_local\//) route = $2 " _local/<id>"; else if (p[n] ~ /^doc-/) route = $2 " <doc>";
               split($5, i, "="); split($6, o, "="); split($7, m, "=");
               c[route]++; t[route] += m[2]; bi[route] += i[2]; bo[route] += o[2]; if (m[2] > mx[route]) mx[route] = m[2] }
             END { for (r in c) printf "    %-28s %7d %9.2f %9.2f %9.2f %10d %10d\n", r, c[r], t[r] / 1000, t[r] / c[r], mx[r], bi[r] / c[r], bo[r] / c[r] }' "$f" | sort -k3 -gr
    done
    echo "  (raw traces: $WORK/trace-a.txt, trace-b.txt; kept with BENCH_KEEP=1)"
fi

if [ "$FAILS" -gt 0 ] && [ -n "${BENCH_STRICT:-}" ]; then exit 1; fi
