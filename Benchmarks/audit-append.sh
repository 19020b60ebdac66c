#!/usr/bin/env bash
# The audit append alone, in PostgreSQL: 0028's append_audit_event (insert unsealed, then seal by updating the
# row) against 0040's (take the head, insert sealed), swapped in on one database, alternating.
# A fresh `locality-server --demo` (release build), SUPPLIERS suppliers (default 64) registered and admitted with
# prepare-bids.py, one real bid submission for its audit record's before and after; then ROUNDS rounds of
# `pgbench -M prepared -c C -j 2 -T D`, each transaction = one supplier's context (random of SUPPLIERS; SUPPLIERS=1:
# every append on one chain) + append_audit_event + COMMIT. Prints tps, PostgreSQL CPU per transaction (/proc, the
# postmaster's reaped children included) and WAL bytes per transaction.
#   Benchmarks/audit-append.sh                        # from the project root, after: swift build -c release
# Environment: C (8), D (10), ROUNDS (3), SUPPLIERS (64), BIN, PORT (18791).
set -euo pipefail
C=${C:-8}; D=${D:-10}; ROUNDS=${ROUNDS:-3}; SUPPLIERS=${SUPPLIERS:-64}; BIN=${BIN:-.build/release/locality-server}; PORT=${PORT:-18791}
[ -x "$BIN" ] || { echo "build first: swift build -c release --product locality-server"; exit 1; }
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
WORK=$(mktemp -d /tmp/lcm-append.XXXXXX); chmod 755 "$WORK"
LOCALITY_REGISTRATIONS_PER_HOUR=$SUPPLIERS "$BIN" --port "$PORT" --metrics-port 0 --demo --data-dir "$WORK/pg" >"$WORK/ours.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 120); do grep -q 'Tokens (shown once)' "$WORK/ours.log" 2>/dev/null && curl -sf -o /dev/null http://127.0.0.1:$PORT/healthz && break; sleep 1; done
token() { awk -v r="$1" '$1 == r && $2 ~ /^lcm_/ {print $2}' "$WORK/ours.log" | head -1; }
export LIM_TOKEN ADMIN_TOKEN SUPPLIERS; LIM_TOKEN=$(token lim); ADMIN_TOKEN=$(token authority_admin)
python3 "$HERE/prepare-bids.py" "http://127.0.0.1:$PORT" "$(token supplier_user)" "$SUPPLIERS" > "$WORK/bids.txt"
read -r bid supplier < "$WORK/bids.txt"
curl -sf -o /dev/null -X POST -H "Authorization: Bearer $supplier" "http://127.0.0.1:$PORT/v1/bids/$bid/submit"
psql_owner() { psql -X -q -At -h "$WORK/pg" -p 5432 -U postgres -d locality "$@"; }
psql_owner -c "CREATE TABLE bench_supplier AS SELECT (row_number() OVER (ORDER BY id))::int - 1 AS n, id::text AS id FROM supplier;
               CREATE UNIQUE INDEX ON bench_supplier (n);
               CREATE TABLE bench_payload AS SELECT before, after FROM audit_event WHERE action = 'bid.submit' LIMIT 1;"
# No colons in the script's literals: pgbench reads :name as a variable.
cat > "$WORK/append.sql" <<SQL
\set s random(0, $((SUPPLIERS - 1)))
BEGIN;
SELECT set_config('app.authority_id', '', true), set_config('app.supplier_id', (SELECT id FROM bench_supplier WHERE n = :s), true),
       set_config('app.actor', 'cli-bench', true), set_config('app.request_id', 'bench', true);
SELECT append_audit_event('bid.submit', 'bid', 'bench', p.before, p.after) FROM bench_payload p;
COMMIT;
SQL
function_of() { sed -n '/^CREATE OR REPLACE FUNCTION public.append_audit_event/,$p' "$ROOT/SQL/migrations/$1"_*.sql; }
function_of 0028 > "$WORK/0028.sql"; function_of 0040 > "$WORK/0040.sql"
master=$(head -1 "$WORK/pg/postmaster.pid")
ticks() { local t; t=$(awk '{print $14 + $15 + $16 + $17}' /proc/"$master"/stat)
          for p in $(pgrep -P "$master"); do t=$((t + $(awk '{print $14 + $15}' /proc/"$p"/stat 2>/dev/null || echo 0))); done; echo "$t"; }
HZ=$(getconf CLK_TCK)
for round in $(seq 1 "$ROUNDS"); do
  for version in 0028 0040; do
    psql_owner -f "$WORK/$version.sql"
    lsn0=$(psql_owner -c "SELECT pg_current_wal_lsn()"); t0=$(ticks)
    out=$(pgbench -n -M prepared -h "$WORK/pg" -p 5432 -U postgres -c "$C" -j 2 -T "$D" -f "$WORK/append.sql" locality 2>&1)
    sleep 0.5; t1=$(ticks); lsn1=$(psql_owner -c "SELECT pg_current_wal_lsn()")
    n=$(awk '/actually processed/ {split($NF, a, "/"); print a[1]}' <<<"$out")
    [ "${n:-0}" -gt 0 ] || { echo "$out"; exit 1; }
    wal=$(psql_owner -c "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')::bigint / $n")
    python3 -c "print(f'round $round  $version: {float(\"$(awk '/^tps/ {print $3}' <<<"$out")\"):7.0f} tps  postgres {($t1 - $t0) / $HZ / $n * 1e6:5.0f} µs/tx  WAL $wal bytes/tx')"
  done
done
echo "unsealed events left: $(psql_owner -c "SELECT count(*) FROM audit_event WHERE hash IS NULL") (sealed by the next append, list or verify)"
