#!/usr/bin/env bash
# CPU per request, server and PostgreSQL, from /proc: a fresh `locality-server --demo` (release build), then for
# /healthz, GET /v1/boards/{id} (authority admin) and GET /v1/projects/{id} (LIM), one wrk run each at C
# connections for D seconds, with the CPU time the server process and the cluster's processes used during it.
#   Benchmarks/cpu-per-request.sh            # from the project root, after: swift build -c release
# Environment: C (32), D (8), EXTRA (more locality-server flags, e.g. --no-access-log), BIN (the server binary,
# .build/release/locality-server: give a saved copy to compare two builds in the same minutes), PORT (18779),
# PERF (a directory: the server's runs under `perf record -g` are written there as healthz.data, board.data, project.data).
set -euo pipefail
C=${C:-32}; D=${D:-8}; BIN=${BIN:-.build/release/locality-server}; PORT=${PORT:-18779}
[ -x "$BIN" ] || { echo "build first: swift build -c release --product locality-server"; exit 1; }
WORK=$(mktemp -d /tmp/lcm-cpu.XXXXXX); chmod 755 "$WORK"
"$BIN" --port "$PORT" --metrics-port 0 --demo --data-dir "$WORK/pg" ${EXTRA:-} >"$WORK/ours.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 120); do grep -q 'Tokens (shown once)' "$WORK/ours.log" 2>/dev/null && curl -sf -o /dev/null http://127.0.0.1:$PORT/healthz && break; sleep 1; done
token() { awk -v r="$1" '$1 == r && $2 ~ /^lcm_/ {print $2}' "$WORK/ours.log" | head -1; }
ADMIN=$(token authority_admin); LIM=$(token lim)
first_id() { curl -sf -H "Authorization: Bearer $1" "http://127.0.0.1:$PORT$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["id"])'; }
BOARD=$(first_id "$ADMIN" /v1/boards)
# The demo seeds no project: the LIM creates and publishes one.
PROJECT=$(python3 "$(dirname "$0")/prepare-project.py" http://127.0.0.1:$PORT "$LIM")
ticks() {  # utime + stime of the server, and of the cluster's postmaster and its children (backends, workers)
  local server pg=0 master
  server=$(awk '{print $14 + $15}' /proc/$SERVER/stat)
  master=$(head -1 "$WORK/pg/postmaster.pid" 2>/dev/null || echo 0)
  for p in $master $(pgrep -P "$master" || true); do
    pg=$((pg + $(awk '{print $14 + $15}' /proc/$p/stat 2>/dev/null || echo 0)))
  done
  echo "$server $pg"
}
HZ=$(getconf CLK_TCK)
run() {  # name token path perf-file
  local auth=(); [ -n "$2" ] && auth=(-H "Authorization: Bearer $2")
  wrk -t2 -c"$C" -d3s "${auth[@]}" "http://127.0.0.1:$PORT$3" >/dev/null
  read -r s0 p0 < <(ticks)
  local perf=""
  if [ -n "${PERF:-}" ]; then
    mkdir -p "$PERF"; perf record -F 999 -g -p "$SERVER" -o "$PERF/$4.data" -- sleep "$D" >/dev/null 2>&1 & perf=$!
  fi
  wrk -t2 -c"$C" -d"${D}s" --latency "${auth[@]}" "http://127.0.0.1:$PORT$3" >"$WORK/wrk.txt"
  read -r s1 p1 < <(ticks)
  [ -z "$perf" ] || wait "$perf"
  local n rps p99
  n=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt"); rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt"); p99=$(awk '/ 99%/ {print $2}' "$WORK/wrk.txt")
  NAME="$1" python3 -c "import os; n=$n; hz=$HZ; print(f'{os.environ[\"NAME\"]}: {float(\"$rps\"):8.0f} req/s  p99 $p99  server {($s1-$s0)/hz/n*1e6:6.0f} µs/req  postgres {($p1-$p0)/hz/n*1e6:6.0f} µs/req')"
}
echo "$(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg); wrk -t2 -c$C -d${D}s ${EXTRA:-} $BIN"
run healthz "" /healthz healthz
run "GET /v1/boards/{id} (admin)" "$ADMIN" "/v1/boards/$BOARD" board
run "GET /v1/projects/{id} (LIM)" "$LIM" "/v1/projects/$PROJECT" project
