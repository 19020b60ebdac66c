#!/usr/bin/env bash
# What transaction pooling costs the client: every statement unnamed (parsed and planned each time) instead of
# prepared once per connection, and a hop through PgBouncer. Brings up deploy/topology.sh, then measures in the
# same run, interleaved (these machines drift):
#   - pgbench -S (primary-key SELECT): -M prepared and -M extended (unnamed) straight to the primary, -M extended
#     through PgBouncer, and -M prepared through PgBouncer (which fails on PgBouncer 1.18: the reason for
#     unnamed statements);
#   - wrk on an authenticated, RLS-scoped GET (/v1/boards/{id} as the demo LIM) against three extra instances:
#     prepared straight to the primary, unnamed (--db-pooler transaction) straight to the primary, and unnamed
#     through PgBouncer.
#   deploy/pooler-cost.sh [--bin BINDIR]    (DURATION seconds per run, default 10; ROUNDS, default 2; CLIENTS, default 8)
# The extra instances listen on BASE_PORT+10…+12 (topology.sh's ports plus these); needs wrk and pgbench.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
duration=${DURATION:-10} rounds=${ROUNDS:-2} clients=${CLIENTS:-8}
dir=$(mktemp -d /tmp/locality-pooler-cost.XXXXXX)
chmod 755 "$dir"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    "$here/topology.sh" down "$dir" || true
    rm -rf "$dir"
}
trap cleanup EXIT
endpoints=$("$here/topology.sh" up "$dir" "$@")
eval "$endpoints"
bin=$(dirname "$(readlink -f /proc/"$(cat "$dir/run/server1.pid")"/exe)")
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
"$bin/locality-admin" seed demo --database-url "$APP_DIRECT_URL" --owner-database-url "$OWNER_URL" --log-level warning >"$dir/demo.txt"
lim=$(awk '$1 == "lim" && $3 ~ /^lcm_/ { print $3; exit }' "$dir/demo.txt")
board=$("$pgbin/psql" "$PRIMARY_URL" -XAtc "SELECT id FROM board WHERE short_code = 'CRA'")
base=${BASE_PORT:-25400}

extra() {   # extra PORT URL [POOLER]: one more instance, no access log, no metrics
    LOCALITY_DATABASE_URL=$2 LOCALITY_OWNER_DATABASE_URL=$OWNER_URL LOCALITY_DB_POOLER=${3:-none} LOCALITY_DB_LISTEN_URL=$APP_DIRECT_URL \
        "$bin/locality-server" --no-migrate --host 127.0.0.1 --port "$1" --metrics-port 0 --no-access-log --log-level warning \
        >>"$dir/log/extra$1.log" 2>&1 </dev/null &
    pids+=($!)
    for _ in $(seq 1 150); do curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "extra instance on $1 did not come up"; cat "$dir/log/extra$1.log"; exit 1
}
extra $((base + 10)) "$APP_DIRECT_URL"
extra $((base + 11)) "$APP_DIRECT_URL" transaction
extra $((base + 12)) "$APP_URL" transaction

bouncer_pg="postgresql://postgres@127.0.0.1:$((base + 2))/locality"
"$pgbin/pgbench" -i -s 1 -q "$PRIMARY_URL" >/dev/null 2>&1
tps() { sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1; }
echo "pooler cost $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), binaries $bin"
for round in $(seq 1 "$rounds"); do
    echo "round $round"
    printf '  pgbench -S -c %d, %d s:' "$clients" "$duration"
    printf ' prepared direct %s;' "$("$pgbin/pgbench" -n -S -M prepared -c "$clients" -j 2 -T "$duration" "$PRIMARY_URL" 2>/dev/null | tps)"
    printf ' unnamed direct %s;' "$("$pgbin/pgbench" -n -S -M extended -c "$clients" -j 2 -T "$duration" "$PRIMARY_URL" 2>/dev/null | tps)"
    printf ' unnamed via PgBouncer %s;' "$("$pgbin/pgbench" -n -S -M extended -c "$clients" -j 2 -T "$duration" "$bouncer_pg" 2>/dev/null | tps)"
    failure=$("$pgbin/pgbench" -n -S -M prepared -c "$clients" -j 2 -T 2 "$bouncer_pg" 2>&1 | grep -m1 -o 'prepared statement "[^"]*" [a-z ]*' || true)
    echo " prepared via PgBouncer: ${failure:-no error}"
    for target in "prepared direct:$((base + 10))" "unnamed direct:$((base + 11))" "unnamed via PgBouncer:$((base + 12))"; do
        out=$(wrk -t 1 -c "$clients" -d "${duration}s" --latency -H "Authorization: Bearer $lim" "http://127.0.0.1:${target##*:}/v1/boards/$board")
        rps=$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")
        p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
        errors=$(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | tr '\n' ' ' || true)
        echo "  wrk GET /v1/boards/{id} -c $clients: ${target%%:*}: $rps req/s, p99 $p99 ${errors}"
    done
done
