#!/usr/bin/env bash
# Faults in the topology, measured (issue 16): with lifecycles running against nginx from DRILL_WORKERS threads
# (default 6), in turn: SIGTERM to server1 (then started again), kill -9 of server2 (started again after 1 s),
# PgBouncer stopped and started, the streaming replica stopped for 2 s and started. Prints, per phase, the
# requests made, the 5xx answers, the requests that got no answer, the time until both instances were ready and
# a request through nginx succeeded again; then every write the API acknowledged is looked up on the primary.
# Exits non-zero when an acknowledged write is missing.
#
#   deploy/topology-drill.sh [--bin BINDIR]
# Needs what deploy/topology-test.sh needs. A release build gives the figures deploy/README.md quotes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d /tmp/locality-topology-drill.XXXXXX)
chmod 755 "$dir"
cleanup() { status=$?; "$here/topology.sh" down "$dir" || true; [[ -n ${KEEP_WORK:-} ]] || rm -rf "$dir"; exit "$status"; }
trap cleanup EXIT
endpoints=$("$here/topology.sh" up "$dir" "$@")
eval "$endpoints"
bin=$(dirname "$(readlink -f /proc/"$(cat "$dir/run/server1.pid")"/exe)")
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
"$bin/locality-admin" seed demo --database-url "$APP_DIRECT_URL" --owner-database-url "$OWNER_URL" --log-level warning >"$dir/demo.txt"
"$pgbin/psql" "$PRIMARY_URL" -XAtq -c "UPDATE authority SET standstill_working_days = 0" >/dev/null
# Money for every lifecycle of the drill (£1,000 each) in the year their projects fall in (they start in 30 days):
# Craven's £121,000 would run out after some 120 lifecycles, and every later one would stop at publish.
year=$(python3 -c 'import datetime as d; t = d.date.today() + d.timedelta(days=30); y = t.year if t.month >= 4 else t.year - 1; print(f"{y}-{(y + 1) % 100:02d}")')
"$bin/locality-admin" budget allocate --authority north-yorkshire --board CRA --year "$year" --stream locality --amount 10000000 \
    --reason "topology drill" --database-url "$APP_DIRECT_URL" --owner-database-url "$OWNER_URL" --log-level warning >/dev/null
token() { awk -v role="$1" '$1 == role && $3 ~ /^lcm_/ { print $3; exit }' "$dir/demo.txt"; }
export TOKEN_AUTHORITY_ADMIN=$(token authority_admin) TOKEN_LIM=$(token lim) TOKEN_BOARD_MEMBER=$(token board_member) \
    TOKEN_SUPPLIER_USER=$(token supplier_user)
export TOPOLOGY_URL SERVER1_URL SERVER2_URL PSQL_PRIMARY="$pgbin/psql $PRIMARY_URL" TOPOLOGY="$here/topology.sh" TOPOLOGY_DIR=$dir
echo "binaries: $bin"
python3 "$here/topology_drill.py" drill
