#!/usr/bin/env bash
# Fault drill (issue 13): a release build of locality-server against a throwaway PostgreSQL cluster, under the
# shipped unit's file limit, measured from outside. Prints one block of figures per part:
#   (a) a row lock held 20 s with 24 writers queued behind it: another tenant's reads and /readyz
#   (b) bursts of 2,000 concurrent connections: crash?, RSS idle / peak / after
#   (c) 1,000 silent sockets: closed within the server's timeouts?
#   (d) SIGTERM with a request stuck on a lock, 64 kept-alive clients: exit time, requests lost
#   (e) PostgreSQL restarted under writes: time to heal, acknowledged writes lost
# Usage: deploy/fault-drill.sh [part …]   (parts: held-lock burst idle-sockets sigterm pg-restart; default all)
# Needs bash, python3 and PostgreSQL's server binaries (initdb, pg_ctl, psql). Run as root (PostgreSQL runs as
# the postgres user) or as a user who may run initdb. Builds .build/release/locality-server{,-admin} if missing
# (BIN=dir to use others; ADMIN=path for the admin CLI, which only seeds).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "${BIN:-$ROOT/.build/release}" 2>/dev/null && pwd || echo "$ROOT/.build/release")
PARTS=${*:-held-lock burst idle-sockets sigterm pg-restart}
ADMIN=${ADMIN:-$BIN/locality-admin}   # only seeds the database: a debug build does as well
[[ -x $BIN/locality-server ]] || (cd "$ROOT" && swift build -c release --product locality-server)
[[ -x $ADMIN ]] || (cd "$ROOT" && swift build -c release --product locality-admin)
PGBIN=${PGBIN:-$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || command -v initdb)")}
# The unit's limit (LimitNOFILE) rather than whatever this shell has.
NOFILE=$(sed -n 's/^LimitNOFILE=//p' "$ROOT/deploy/locality-server.service")
UNIT_NOFILE=$NOFILE
(( $(ulimit -Hn) < NOFILE )) && NOFILE=$(ulimit -Hn)   # an unprivileged shell cannot go above its hard limit

WORK=$(mktemp -d /tmp/locality-drill.XXXXXX)
chmod 755 "$WORK"
PGDATA=$WORK/pgdata SOCKET=$WORK/socket PGPORT=${PGPORT:-55432} HTTP_PORT=${HTTP_PORT:-58080}
mkdir -p "$SOCKET" && chmod 777 "$SOCKET"
as_postgres() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
SERVER_PID=
cleanup() {
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
    as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
    [[ -n ${KEEP_WORK:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT

PGLOG=$WORK/pglog/postgres.log
mkdir -p "$PGDATA" "$WORK/pglog"
if [[ $(id -u) == 0 ]]; then chown postgres "$PGDATA" "$WORK/pglog"; fi
as_postgres "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust >/dev/null
as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGLOG" -w \
    -o "-k $SOCKET -p $PGPORT -c listen_addresses='' -c max_connections=200 -c fsync=on" start >/dev/null
PSQL_SUPER="$PGBIN/psql -X -q -h $SOCKET -p $PGPORT -U postgres -d locality"
PG_RESTART="$PGBIN/pg_ctl -D $PGDATA -l $PGLOG -m fast -w restart"
[[ $(id -u) == 0 ]] && PG_RESTART="runuser -u postgres -- $PG_RESTART"
"$PGBIN/psql" -X -q -h "$SOCKET" -p "$PGPORT" -U postgres -d postgres <<'SQL'
CREATE ROLE locality_owner LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB;
CREATE ROLE locality_app LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOBYPASSRLS;
CREATE DATABASE locality OWNER locality_owner;
SQL
OWNER_URL="postgresql://locality_owner@/locality?host=$SOCKET&port=$PGPORT"
APP_URL="postgresql://locality_app@/locality?host=$SOCKET&port=$PGPORT"
admin() { "$ADMIN" "$@" --database-url "$APP_URL" --owner-database-url "$OWNER_URL" --log-level warning; }

cd "$ROOT"
admin migrate >/dev/null
admin seed demo >"$WORK/demo.txt"
admin authority create --slug drill-beta --name "Drill Beta Council" >/dev/null
admin user create --authority drill-beta --email admin@beta.example --name "Beta Admin" --role authority_admin >/dev/null
TOKEN_B=$(admin token issue --authority drill-beta --user admin@beta.example)
TOKEN_A=$(awk '$1 == "authority_admin" { print $3 }' "$WORK/demo.txt")
BOARDS_A=$($PSQL_SUPER -tAc "SELECT string_agg(b.id::text, ',' ORDER BY b.name) FROM board b JOIN authority a ON a.id = b.authority_id WHERE a.slug = 'north-yorkshire'")
DRILL_YEAR=$($PSQL_SUPER -tAc "SELECT max(financial_year) FROM budget_ledger")
export TOKEN_A TOKEN_B BOARDS_A DRILL_YEAR PSQL_SUPER PG_RESTART BOARD_A=${BOARDS_A%%,*} DRILL_PORT=$HTTP_PORT DRILL_REFS=$WORK/acknowledged.txt
chmod 644 "$WORK/demo.txt"
[[ -n $TOKEN_A && -n $TOKEN_B && -n $BOARD_A ]] || { echo "seeding failed: $(cat "$WORK/demo.txt")"; exit 1; }

# Starts the server (extra flags as arguments) under the unit's open-files limit and waits until it is ready.
start_server() {
    (ulimit -n "$NOFILE" && exec "$BIN/locality-server" --database-url "$APP_URL" --owner-database-url "$OWNER_URL" --no-migrate \
        --port "$HTTP_PORT" --metrics-port 0 --no-access-log --log-level warning "$@") >>"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    export DRILL_PID=$SERVER_PID
    for _ in $(seq 200); do
        python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$HTTP_PORT/readyz').status == 200 else 1)" \
            2>/dev/null && return 0
        sleep 0.1
    done
    echo "the server did not become ready:"; cat "$WORK/server.log"; exit 1
}
stop_server() {
    if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=; fi
}

echo "fault drill $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); LimitNOFILE=$UNIT_NOFILE (used: $NOFILE)"
for part in $PARTS; do
    case $part in
        held-lock|burst|pg-restart)
            start_server
            python3 "$ROOT/deploy/fault_drill.py" "$part"
            stop_server ;;
        idle-sockets)
            start_server
            echo "    (idle timeout 30 s, header timeout 10 s: the defaults)"
            python3 "$ROOT/deploy/fault_drill.py" "$part"
            stop_server ;;
        sigterm)
            # No database timeouts, so that the stuck request stays stuck until the shutdown deadline ends it.
            start_server --lock-timeout-ms 0 --statement-timeout-ms 0 --shutdown-deadline-seconds 10
            SHUTDOWN_DEADLINE=10 python3 "$ROOT/deploy/fault_drill.py" sigterm
            wait "$SERVER_PID" 2>/dev/null || true
            SERVER_PID= ;;
        *) echo "unknown part $part"; exit 2 ;;
    esac
done
if grep -qiE 'fatal|critical|SIGILL|crash' "$WORK/server.log"; then
    echo "server log (errors):"; grep -iE 'fatal|critical|SIGILL|crash' "$WORK/server.log" | head -20
fi
