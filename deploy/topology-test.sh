#!/usr/bin/env bash
# The topology test (issue 16): brings up deploy/topology.sh (primary, streaming replica, PgBouncer in transaction
# mode, two locality-server instances, nginx) and runs through nginx:
#   - a whole commissioning lifecycle (draft → published → sealed bid → scored → awarded → KPIs agreed → contract
#     started and completed), every step checked, and the result read back from the primary;
#   - X-Forwarded-For: set by nginx, trusted by the servers (the registration limit counts the real client);
# then checks that both instances served it and that PgBouncer carried their transactions; then the /readyz health
# checker beside nginx (deploy/upstream_checker.py): server1 stopped is marked down and server2 answers a burst
# with no 5xx; server2 stopped too is kept in (never all down); both started are put back and both serve.
# Fails (non-zero) when the client breaks under PgBouncer: named statements collide or vanish between transactions
# (42P05/26000 become 500s), or startup options are refused.
#
#   deploy/topology-test.sh [--bin BINDIR]     (BINDIR: locality-server and locality-admin; default the build)
# Needs pgbouncer, nginx, curl, python3 and PostgreSQL's server binaries; run as root or a user who may run initdb.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin_args=("$@")
dir=$(mktemp -d /tmp/locality-topology.XXXXXX)
chmod 755 "$dir"
cleanup() {
    status=$?
    if (( status != 0 )); then
        echo "topology-test: FAILED; logs:" >&2
        for log in "$dir"/log/*.log; do [[ -f $log ]] && { echo "== $log" >&2; tail -n 25 "$log" >&2; }; done
    fi
    "$here/topology.sh" down "$dir" || true
    rm -rf "$dir"
    exit "$status"
}
trap cleanup EXIT
start=$SECONDS
endpoints=$("$here/topology.sh" up "$dir" "${bin_args[@]}")   # fails the script when a part does not come up
eval "$endpoints"
bin=$(dirname "$(readlink -f /proc/"$(cat "$dir/run/server1.pid")"/exe)")
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
psql_primary="$pgbin/psql $PRIMARY_URL"

# The demo authority (as the owner, straight to the primary) and no standstill, so a contract may start at once.
"$bin/locality-admin" seed demo --database-url "$APP_DIRECT_URL" --owner-database-url "$OWNER_URL" --log-level warning >"$dir/demo.txt"
$psql_primary -XAtq -c "UPDATE authority SET standstill_working_days = 0" >/dev/null
token() { awk -v role="$1" '$1 == role && $3 ~ /^lcm_/ { print $3; exit }' "$dir/demo.txt"; }
export TOKEN_AUTHORITY_ADMIN=$(token authority_admin) TOKEN_LIM=$(token lim) TOKEN_BOARD_MEMBER=$(token board_member) \
    TOKEN_SUPPLIER_USER=$(token supplier_user)
[[ -n $TOKEN_LIM && -n $TOKEN_SUPPLIER_USER && -n $TOKEN_BOARD_MEMBER ]] || { echo "no demo tokens: $(cat "$dir/demo.txt")" >&2; exit 1; }
export TOPOLOGY_URL SERVER1_URL SERVER2_URL PSQL_PRIMARY=$psql_primary TOPOLOGY="$here/topology.sh" TOPOLOGY_DIR=$dir

python3 "$here/topology_drill.py" lifecycle
python3 "$here/topology_drill.py" forwarded

# Both instances answered API requests (nginx balanced them), counted by each one's own metrics.
for metrics in "$SERVER1_METRICS_URL" "$SERVER2_METRICS_URL"; do
    served=$(curl -fsS "$metrics/metrics" | awk '/^http_requests_total\{/ && /v1/ { sum += $NF } END { print sum + 0 }')
    echo "topology-test: $metrics: $served API requests"
    (( ${served%.*} > 0 )) || { echo "topology-test: an instance served no API request" >&2; exit 1; }
done
# PgBouncer carried the service's transactions (SHOW STATS on its admin console).
xacts=$("$pgbin/psql" "$BOUNCER_ADMIN_URL" -XAt -F ' ' -c "SHOW STATS" | awk '$1 == "locality" { print $2 }')
echo "topology-test: PgBouncer carried $xacts transactions to the primary"
(( ${xacts:-0} > 20 )) || { echo "topology-test: PgBouncer carried (almost) nothing" >&2; exit 1; }
# The replica streams from the primary.
streaming=$($psql_primary -XAtq -c "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
(( streaming == 1 )) || { echo "topology-test: the replica is not streaming" >&2; exit 1; }
# Active health checks on /readyz (last: it stops and starts the servers).
python3 "$here/topology_drill.py" checker
echo "topology-test: passed in $((SECONDS - start)) s"
