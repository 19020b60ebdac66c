#!/usr/bin/env bash
# Bid submission: server and PostgreSQL CPU per request, from /proc, and (STATS=1) the index scans per submission.
# A fresh `locality-server --demo` (release build); N draft bids prepared with prepare-bids.py (the demo LIM publishes a
# £1 project per bid; SUPPLIERS suppliers, default 64, draft a complete bid on each, round robin); one wrk run at C
# connections for D seconds, every request submitting a different draft as the supplier user who drafted it.
#   Benchmarks/submission-cpu.sh                      # from the project root, after: swift build -c release
#   BIN=/tmp/before N=8000 D=5 STATS=1 Benchmarks/submission-cpu.sh
# Environment: C (32), D (8), SUPPLIERS (64: 1 submits every bid as the demo supplier), N (drafts, 10000: enough for C connections at ~1,000 req/s), WARM (seconds of
# warm-up on the first 3,000 drafts before the measured run; none by default), BIN (the server binary: give saved
# copies to compare two builds in the same minutes, alternating), EXTRA (more locality-server flags), PORT (18781),
# STATS (1: pg_stat_user_tables scans, and audit_event rows written, per submission during the run), PERF (a file: `perf record -g -a` during the run).
# Every figure is per request wrk counted; a run that exhausts the drafts answers 404s and says so (Non-2xx).
set -euo pipefail
C=${C:-32}; D=${D:-8}; N=${N:-10000}; BIN=${BIN:-.build/release/locality-server}; PORT=${PORT:-18781}
[ -x "$BIN" ] || { echo "build first: swift build -c release --product locality-server"; exit 1; }
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/lcm-sub.XXXXXX); chmod 755 "$WORK"
LOCALITY_REGISTRATIONS_PER_HOUR=${SUPPLIERS:-64} "$BIN" --port "$PORT" --metrics-port 0 --demo --data-dir "$WORK/pg" ${EXTRA:-} >"$WORK/ours.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 120); do grep -q 'Tokens (shown once)' "$WORK/ours.log" 2>/dev/null && curl -sf -o /dev/null http://127.0.0.1:$PORT/healthz && break; sleep 1; done
token() { awk -v r="$1" '$1 == r && $2 ~ /^lcm_/ {print $2}' "$WORK/ours.log" | head -1; }
SUPPLIER=$(token supplier_user); export LIM_TOKEN ADMIN_TOKEN; LIM_TOKEN=$(token lim); ADMIN_TOKEN=$(token authority_admin)
python3 "$HERE/prepare-bids.py" "http://127.0.0.1:$PORT" "$SUPPLIER" "$N" > "$WORK/bids.txt"
echo "prepared $(wc -l < "$WORK/bids.txt") draft bids"
psql_owner() { psql -X -q -At -h "$WORK/pg" -p 5432 -U postgres -d locality "$@"; }
# Each wrk thread takes every other draft (thread k: k, k+2, …), from SKIP on.
script() {
  cat <<LUA
local ids = {}
local skip = $1
for line in io.lines("$WORK/bids.txt") do
  if skip > 0 then skip = skip - 1 else
    local id, token = line:match("^(%S+)%s*(%S*)")
    ids[#ids + 1] = {id = id, token = token ~= "" and token or "$SUPPLIER"}
  end
end
local counter = 0
function setup(thread) thread:set("k", counter); counter = counter + 1 end
function init(args) index = 0 end
function request()
  local bid = ids[index * 2 + k + 1] or {id = "00000000-0000-0000-0000-000000000000", token = "$SUPPLIER"}
  index = index + 1
  return wrk.format("POST", "/v1/bids/" .. bid.id .. "/submit", {Authorization = "Bearer " .. bid.token})
end
LUA
}
ticks() {  # utime + stime of the server, and of the cluster's postmaster and its children (backends, workers)
  local server pg=0 master
  server=$(awk '{print $14 + $15}' /proc/$SERVER/stat)
  master=$(head -1 "$WORK/pg/postmaster.pid" 2>/dev/null || echo 0)
  for p in $master $(pgrep -P "$master" || true); do pg=$((pg + $(awk '{print $14 + $15}' /proc/$p/stat 2>/dev/null || echo 0))); done
  echo "$server $pg"
}
skip=0
if [ -n "${WARM:-}" ]; then
  script 0 > "$WORK/warm.lua"
  wrk -t2 -c"$C" -d"${WARM}s" -s "$WORK/warm.lua" -H "Authorization: Bearer $SUPPLIER" "http://127.0.0.1:$PORT/" > /dev/null
  skip=3000
fi
script "$skip" > "$WORK/submit.lua"
[ -z "${STATS:-}" ] || psql_owner -c "SELECT pg_stat_reset()" > /dev/null
read -r s0 p0 < <(ticks)
perf=""
if [ -n "${PERF:-}" ]; then perf record -F 999 -g -a -o "$PERF" -- sleep "$D" >/dev/null 2>&1 & perf=$!; fi
wrk -t2 -c"$C" -d"${D}s" --latency -s "$WORK/submit.lua" -H "Authorization: Bearer $SUPPLIER" "http://127.0.0.1:$PORT/" > "$WORK/wrk.txt"
read -r s1 p1 < <(ticks)
[ -z "$perf" ] || wait "$perf"
n=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt"); rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt"); p99=$(awk '/ 99%/ {print $2}' "$WORK/wrk.txt")
grep -i "non-2xx\|socket errors" "$WORK/wrk.txt" || true
HZ=$(getconf CLK_TCK)
python3 -c "n=$n; hz=$HZ; print(f'submit: {float(\"$rps\"):8.0f} req/s  p99 $p99  server {($s1-$s0)/hz/n*1e6:6.0f} µs/req  postgres {($p1-$p0)/hz/n*1e6:6.0f} µs/req  n={n}')"
if [ -n "${STATS:-}" ]; then
  sleep 11  # idle backends report their statistics within 10 s (PostgreSQL 15)
  echo "index and sequential scans per submission (pg_stat_user_tables during the run):"
  psql_owner -F ' ' -c "SELECT relname, round((idx_scan + seq_scan)::numeric / $n, 2) FROM pg_stat_user_tables
                        WHERE idx_scan + seq_scan > 0 ORDER BY idx_scan + seq_scan DESC LIMIT 12" | sed 's/^/  /'
  psql_owner -F ' ' -c "SELECT 'audit_event rows inserted, updated per submission:', round(n_tup_ins::numeric / $n, 2),
                        round(n_tup_upd::numeric / $n, 2) FROM pg_stat_user_tables WHERE relname = 'audit_event'"
fi
