#!/usr/bin/env bash
# A bid submission's reads and write in PostgreSQL alone, as the application role under row-level security:
# BEGIN, the supplier's context, the submission's read of its bid and project, the bid's update, COMMIT (no audit
# append, no HTTP). "before" = the read locking the bid (`FOR UPDATE`) with 0039's app_admitted_authority_ids and
# the deadline test in the update policy's WITH CHECK; "after" = the read without a lock, with 0041's functions and
# policy. Both swapped in on one database, alternating, ROUNDS rounds of `pgbench -M prepared -c C -T D`, each
# transaction on a random one of N draft bids (prepare-bids.py, 64 suppliers); PostgreSQL CPU per transaction
# from /proc (the postmaster's reaped children included).
#   Benchmarks/submission-statements.sh               # from the project root, after: swift build -c release
# Environment: C (4), D (5), ROUNDS (4), N (600), BIN, PORT (18794), SHOW (1: print the two transactions and stop).
set -euo pipefail
C=${C:-4}; D=${D:-5}; ROUNDS=${ROUNDS:-4}; N=${N:-600}; BIN=${BIN:-.build/release/locality-server}; PORT=${PORT:-18794}
[ -x "$BIN" ] || { echo "build first: swift build -c release --product locality-server"; exit 1; }
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
WORK=$(mktemp -d /tmp/lcm-stmts.XXXXXX); chmod 755 "$WORK"
LOCALITY_REGISTRATIONS_PER_HOUR=64 "$BIN" --port "$PORT" --metrics-port 0 --demo --data-dir "$WORK/pg" >"$WORK/ours.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 120); do grep -q 'Tokens (shown once)' "$WORK/ours.log" 2>/dev/null && curl -sf -o /dev/null http://127.0.0.1:$PORT/healthz && break; sleep 1; done
token() { awk -v r="$1" '$1 == r && $2 ~ /^lcm_/ {print $2}' "$WORK/ours.log" | head -1; }
export LIM_TOKEN ADMIN_TOKEN; LIM_TOKEN=$(token lim); ADMIN_TOKEN=$(token authority_admin)
SUPPLIERS=64 python3 "$HERE/prepare-bids.py" "http://127.0.0.1:$PORT" "$(token supplier_user)" "$N" > "$WORK/bids.txt"
psql_owner() { psql -X -q -At -h "$WORK/pg" -p 5432 -U postgres -d locality "$@"; }
psql_owner -c "CREATE TABLE bench_bid AS SELECT (row_number() OVER (ORDER BY id))::int - 1 AS n, id::text AS id, supplier_id::text AS supplier
               FROM bid WHERE status = 'draft'; CREATE UNIQUE INDEX ON bench_bid (n); GRANT SELECT ON bench_bid TO locality_app;"
M=$(psql_owner -c "SELECT count(*) FROM bench_bid")
# No colons in the script's literals: pgbench reads :name as a variable. The update leaves the bid a draft.
cat > "$WORK/after-tx.sql" <<SQL
\set s random(0, $((M - 1)))
BEGIN;
SELECT set_config('app.authority_id', '', true), set_config('app.supplier_id', b.supplier, true), set_config('app.user_id', '', true),
       set_config('app.roles', 'supplier_user', true), set_config('app.board_ids', '', true), set_config('app.actor', 'bench', true),
       set_config('app.request_id', 'bench', true), set_config('bench.bid', b.id, true) FROM bench_bid b WHERE n = :s;
SELECT current.id, p.max_value_pence, coalesce(p.status = 'open' AND p.bid_deadline > statement_timestamp(), false)
FROM (SELECT * FROM bid b WHERE b.id = current_setting('bench.bid')::uuid) current
LEFT JOIN project p ON p.authority_id = current.authority_id AND p.id = current.project_id;
UPDATE bid SET approach = approach, version = version + 1 WHERE id = current_setting('bench.bid')::uuid AND status IN ('draft', 'withdrawn');
COMMIT;
SQL
sed 's/current_setting(.bench.bid.)::uuid) current/& FOR UPDATE OF b/; s/::uuid) current FOR UPDATE OF b/::uuid FOR UPDATE OF b) current/' \
    "$WORK/after-tx.sql" > "$WORK/before-tx.sql"
grep -q 'FOR UPDATE OF b) current' "$WORK/before-tx.sql" || { echo "could not make the locking read"; exit 1; }
sed -n '/^CREATE OR REPLACE FUNCTION/,/^\$\$;/p' "$ROOT"/SQL/migrations/0039_*.sql > "$WORK/before.sql"
echo "ALTER POLICY bid_supplier_update ON public.bid WITH CHECK (supplier_id = (SELECT public.app_supplier_id())
      AND authority_id = ANY ((SELECT public.app_admitted_authority_ids())::uuid[]) AND public.project_accepting_bids(authority_id, project_id));" >> "$WORK/before.sql"
sed -n '/^CREATE OR REPLACE FUNCTION/,/^\$\$;/p' "$ROOT"/SQL/migrations/0041_*.sql > "$WORK/after.sql"
sed -n '/^ALTER POLICY bid_supplier_update/,/;$/p' "$ROOT"/SQL/migrations/0041_*.sql >> "$WORK/after.sql"
[ -z "${SHOW:-}" ] || { cat "$WORK/before-tx.sql" "$WORK/after-tx.sql"; exit 0; }
master=$(head -1 "$WORK/pg/postmaster.pid")
ticks() { local t; t=$(awk '{print $14 + $15 + $16 + $17}' /proc/"$master"/stat)
          for p in $(pgrep -P "$master"); do t=$((t + $(awk '{print $14 + $15}' /proc/"$p"/stat 2>/dev/null || echo 0))); done; echo "$t"; }
HZ=$(getconf CLK_TCK)
for round in $(seq 1 "$ROUNDS"); do
  for version in before after; do
    psql_owner -f "$WORK/$version.sql"
    t0=$(ticks)
    out=$(pgbench -n -M prepared -h "$WORK/pg" -p 5432 -U locality_app -c "$C" -j 1 -T "$D" -f "$WORK/$version-tx.sql" locality 2>&1)
    sleep 0.5; t1=$(ticks)
    n=$(awk '/actually processed/ {split($NF, a, "/"); print a[1]}' <<<"$out")
    [ "${n:-0}" -gt 0 ] || { echo "$out"; exit 1; }
    python3 -c "print(f'round $round  $version: {float(\"$(awk '/^tps/ {print $3}' <<<"$out")\"):7.0f} tps  postgres {($t1 - $t0) / $HZ / $n * 1e6:5.0f} µs/tx')"
  done
done
