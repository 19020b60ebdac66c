#!/usr/bin/env bash
# A whole multi-instance topology on one machine, on real parts, for tests, fault drills and trying it out:
#
#   nginx :NGINX_PORT ──► locality-server #1 ──► PgBouncer (transaction pooling) ──► PostgreSQL primary
#                    └──► locality-server #2 ──┘         reads that may lag ──────────► streaming replica
#
#   deploy/topology.sh up   DIR [--bin BINDIR] [--no-checker]
#                                                start everything under DIR (prints the endpoints as KEY=VALUE)
#   deploy/topology.sh down DIR                  stop everything started under DIR
#   deploy/topology.sh stop|start|kill DIR PART  one part: primary, replica, pgbouncer, server1, server2, nginx, checker
#   deploy/topology.sh restart DIR pgbouncer     PgBouncer's online restart (-R): no connection dropped
#
# The servers reach the primary through PgBouncer with `--db-pooler transaction` (no startup options, unnamed
# statements; the session settings are pinned on the role here, as deploy/README.md tells an operator to), and
# connect straight to the primary for what a transaction pooler cannot carry: the authentication cache's LISTEN
# session (`--db-listen-url`) and, through locality-admin, migrations (a session advisory lock).
# deploy/topology-test.sh runs a lifecycle through it; deploy/topology-drill.sh measures its faults.
#
# Health checks: open-source nginx checks only passively (max_fails/fail_timeout). Beside it runs
# deploy/upstream_checker.py, which polls each instance's /readyz every second and marks an instance `down` in
# the upstream include ($DIR/nginx/upstream.conf) after 2 failures, and back after 2 passes (nginx -s reload each
# time; log in $DIR/log/checker.log). The servers get --shutdown-delay-seconds 4: after SIGTERM they answer
# /readyz 503 and keep serving for 4 s, so the checker takes them out before they stop accepting. --no-checker
# leaves both out (passive checks alone, no delay), as before the checker existed.
#
# BINDIR holds locality-server and locality-admin (default: the release build, else the debug build).
# Ports come from BASE_PORT (default 25400): primary +0, replica +1, PgBouncer +2, servers +3/+4, nginx +5,
# servers' metrics +6/+7. Everything listens on 127.0.0.1 or a socket under DIR; nothing is left running
# after `down`. As root, PostgreSQL and PgBouncer run as the `postgres` user and nginx's workers as `nobody`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
command=${1:?usage: topology.sh up|down|stop|start|kill|restart DIR [PART] [--bin BINDIR]}
dir=${2:?usage: topology.sh up|down|stop|start|kill|restart DIR [PART] [--bin BINDIR]}
shift 2
part=""
[[ $# -gt 0 && "$1" != --* ]] && { part=$1; shift; }
bin=""
bin_given=""
checker=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) bin=$2; bin_given=1; shift 2 ;;
        --no-checker) checker=0; shift ;;
        *) echo "topology: unknown option $1" >&2; exit 2 ;;
    esac
done
if [[ -z "$bin" ]]; then
    for candidate in "$repo/.build/release" "$repo/.build/debug"; do
        [[ -x "$candidate/locality-server" ]] && { bin=$candidate; break; }
    done
fi

base=${BASE_PORT:-25400}
primary_port=$base replica_port=$((base + 1)) bouncer_port=$((base + 2))
server1_port=$((base + 3)) server2_port=$((base + 4)) nginx_port=$((base + 5))
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
root=$([[ $(id -u) == 0 ]] && echo 1 || echo 0)
as_postgres() { if (( root )); then runuser -u postgres -- "$@"; else "$@"; fi; }
sock=$dir/run
log() { echo "topology: $*" >&2; }

owner_url="postgresql://locality_owner@127.0.0.1:$primary_port/locality"
app_direct_url="postgresql://locality_app@127.0.0.1:$primary_port/locality"
app_bouncer_url="postgresql://locality_app@127.0.0.1:$bouncer_port/locality"
replica_url="postgresql://locality_app@127.0.0.1:$replica_port/locality"

wait_for() {   # wait_for DESCRIPTION COMMAND...: polls for up to 30 s
    local what=$1; shift
    for _ in $(seq 1 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    log "$what did not come up (logs in $dir/log)"; return 1
}

start_postgres() {   # start_postgres NAME PORT
    as_postgres "$pgbin/pg_ctl" -D "$dir/$1" -l "$dir/log/$1.log" -w -t 30 \
        -o "-p $2 -k $sock -c listen_addresses=127.0.0.1" start >/dev/null
}
stop_postgres() { as_postgres "$pgbin/pg_ctl" -D "$dir/$1" -m "${2:-fast}" -w stop >/dev/null 2>&1 || true; }

start_bouncer() {
    as_postgres pgbouncer -d "$dir/pgbouncer.ini" >/dev/null
    wait_for PgBouncer "$pgbin/psql" "$app_bouncer_url" -Atc "SELECT 1"
}
stop_bouncer() {
    [[ -f "$dir/run/pgbouncer.pid" ]] && kill "$(cat "$dir/run/pgbouncer.pid")" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$(cat "$dir/run/pgbouncer.pid" 2>/dev/null)" 2>/dev/null || return 0; sleep 0.1; done
}

# After SIGTERM an instance says "not ready" and keeps serving this long, for the checker to take it out first
# (2 failed checks 1 s apart and a reload); 0 without the checker.
shutdown_delay() { [[ -f "$dir/run/no-checker" ]] && echo 0 || echo 4; }

start_server() {   # start_server N
    local port=$((base + 2 + $1)) metrics=$((base + 5 + $1))
    LOCALITY_SHUTDOWN_DELAY_SECONDS=$(shutdown_delay) \
    LOCALITY_DATABASE_URL=$app_bouncer_url LOCALITY_OWNER_DATABASE_URL=$owner_url \
    LOCALITY_DB_POOLER=transaction LOCALITY_DB_LISTEN_URL=$app_direct_url \
    LOCALITY_REPLICA_DATABASE_URL=$replica_url LOCALITY_TRUSTED_PROXIES=127.0.0.1 \
        setsid "$bin/locality-server" --no-migrate --host 127.0.0.1 --port "$port" --metrics-port "$metrics" \
        >>"$dir/log/server$1.log" 2>&1 < /dev/null &
    echo $! > "$dir/run/server$1.pid"
    wait_for "locality-server #$1" curl -fsS "http://127.0.0.1:$port/readyz"
}
signal_server() {   # signal_server N SIGNAL: sends it and waits for the process to end
    local pidfile="$dir/run/server$1.pid"
    [[ -f "$pidfile" ]] || return 0
    local pid; pid=$(cat "$pidfile")
    kill "-$2" "$pid" 2>/dev/null || true
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$pidfile"
}

start_nginx() {
    nginx -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -e "$dir/log/nginx-error.log"
    wait_for nginx curl -fsS "http://127.0.0.1:$nginx_port/readyz"
}

# The checker's arguments (deploy/upstream_checker.py): the upstream include it rewrites, the instances, and the
# command that reloads this nginx.
checker_args() {
    checker_args=(--upstream-file "$dir/nginx/upstream.conf" --server "server1=127.0.0.1:$server1_port"
        --server "server2=127.0.0.1:$server2_port" -- nginx -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -e "$dir/log/nginx-error.log" -s reload)
}
start_checker() {
    [[ -f "$dir/run/no-checker" ]] && { log "the checker is off for this topology (--no-checker)"; return 0; }
    checker_args
    setsid python3 -u "$here/upstream_checker.py" "${checker_args[@]}" >>"$dir/log/checker.log" 2>&1 < /dev/null &
    echo $! > "$dir/run/checker.pid"
    wait_for "the health checker" grep -q "checking /readyz" "$dir/log/checker.log"
}
stop_checker() {   # SIGTERM: it puts every instance back in the upstream (passive checks only) and exits
    [[ -f "$dir/run/checker.pid" ]] || return 0
    local pid; pid=$(cat "$dir/run/checker.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$dir/run/checker.pid"
}

stop_nginx() {
    [[ -f "$dir/nginx/nginx.pid" ]] && nginx -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -e "$dir/log/nginx-error.log" -s quit 2>/dev/null || true
    for _ in $(seq 1 50); do [[ -f "$dir/nginx/nginx.pid" ]] || return 0; sleep 0.1; done
}

# What every session of the service must start with, pinned on its role: through a transaction pooler the
# client cannot send them at connect (and checks at connect that they are there). The values are the server's
# defaults (--statement-timeout-ms and friends); written as pg_settings shows them.
role_settings() {
    local setting sql=""
    for setting in "DateStyle = 'ISO, YMD'" "TimeZone = 'UTC'" "IntervalStyle = 'iso_8601'" "extra_float_digits = 1" \
        "statement_timeout = '15000ms'" "lock_timeout = '3000ms'" "idle_in_transaction_session_timeout = '30000ms'"; do
        sql+="ALTER ROLE locality_app IN DATABASE locality SET $setting; "
    done
    echo "$sql"
}

write_configs() {
    cat > "$dir/pgbouncer.ini" <<EOF
[databases]
locality = host=127.0.0.1 port=$primary_port dbname=locality

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir = $sock
pidfile = $dir/run/pgbouncer.pid
logfile = $dir/log/pgbouncer.log
auth_type = trust
auth_file = $dir/pgbouncer.users
pool_mode = transaction
default_pool_size = 20
max_client_conn = 400
; No ignore_startup_parameters: a client that sends options (not in pooler mode) is refused at once rather
; than silently run without its settings. The settings live on the role (ALTER ROLE … SET, below).
server_reset_query =
admin_users = postgres
stats_users = postgres
EOF
    printf '"locality_app" ""\n"locality_owner" ""\n"postgres" ""\n' > "$dir/pgbouncer.users"
    mkdir -p "$dir/nginx/logs" "$dir/nginx/tmp"
    cat > "$dir/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $dir/nginx/nginx.pid;
$( (( root )) && echo "user nobody nogroup;" )
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir/nginx/tmp/body;
    proxy_temp_path $dir/nginx/tmp/proxy;
    fastcgi_temp_path $dir/nginx/tmp/fastcgi;
    uwsgi_temp_path $dir/nginx/tmp/uwsgi;
    scgi_temp_path $dir/nginx/tmp/scgi;
    upstream locality {
        # Open-source nginx checks health passively: an instance that refuses connections or times out (stopped,
        # killed, draining after SIGTERM) is taken out for fail_timeout and the request is retried on the other
        # one when that is safe (idempotent methods; a POST only if it never reached the instance). /readyz is
        # polled by this script before nginx starts; nginx Plus (health_check uri=/readyz) or HAProxy
        # (option httpchk GET /readyz) can poll it continuously. A 503 from the service is not counted as a
        # failure: it answers 503 for a lock timeout or a database hiccup that the other instance shares, and
        # counting it took both instances out at once in the drill (a PgBouncer restart: 5 × 503 became 61 × 502).
        # The servers are listed in the include, which deploy/upstream_checker.py rewrites (marking an instance
        # down while its /readyz fails) before nginx -s reload: the active checks, on top of these passive ones.
        include $dir/nginx/upstream.conf;
        keepalive 32;
    }
    server {
        listen 127.0.0.1:$nginx_port;
        client_max_body_size 2m;
        location / {
            proxy_pass http://locality;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 2;
            proxy_connect_timeout 2s;
            # Which instance answered (tests and drills count it; a production balancer need not say).
            add_header X-Upstream \$upstream_addr always;
        }
    }
}
EOF
    # nginx needs the upstream include to start: both instances in.
    checker_args
    python3 "$here/upstream_checker.py" --init "${checker_args[@]}"
}

up() {
    [[ -n "$bin" && -x "$bin/locality-server" ]] || { log "no locality-server found; build first or pass --bin"; exit 1; }
    for tool in pgbouncer nginx curl; do command -v "$tool" >/dev/null || { log "$tool is not installed"; exit 1; }; done
    mkdir -p "$dir/run" "$dir/log"
    dir=$(cd "$dir" && pwd); sock=$dir/run
    (( checker )) || touch "$dir/run/no-checker"
    bin=$(cd "$bin" && pwd); echo "$bin" > "$dir/run/bin"   # for later start DIR serverN
    (( root )) && chown postgres "$dir" "$dir/run" "$dir/log" && chmod 0755 "$dir"
    log "primary on $primary_port"
    as_postgres "$pgbin/initdb" -D "$dir/primary" -A trust -U postgres >/dev/null
    cat >> "$dir/primary/postgresql.conf" <<EOF
wal_level = replica
max_wal_senders = 5
hot_standby = on
max_connections = 200
EOF
    echo "host replication postgres 127.0.0.1/32 trust" >> "$dir/primary/pg_hba.conf"
    start_postgres primary "$primary_port"
    "$pgbin/psql" -h 127.0.0.1 -p "$primary_port" -U postgres -q -v ON_ERROR_STOP=1 \
        -c "CREATE ROLE locality_owner LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB" \
        -c "CREATE ROLE locality_app LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOBYPASSRLS" \
        -c "CREATE DATABASE locality OWNER locality_owner" \
        -c "$(role_settings)"
    LOCALITY_OWNER_DATABASE_URL=$owner_url LOCALITY_DATABASE_URL=$app_direct_url \
        LOCALITY_MIGRATIONS_DIR="${LOCALITY_MIGRATIONS_DIR:-$repo/SQL/migrations}" "$bin/locality-admin" migrate >/dev/null
    log "streaming replica on $replica_port"
    as_postgres "$pgbin/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres -D "$dir/replica" -R -X stream -c fast
    start_postgres replica "$replica_port"
    log "PgBouncer (transaction pooling) on $bouncer_port"
    write_configs
    (( root )) && chown postgres "$dir/pgbouncer.ini" "$dir/pgbouncer.users"
    start_bouncer
    log "two locality-server instances on $server1_port and $server2_port"
    start_server 1
    start_server 2
    log "nginx on $nginx_port"
    start_nginx
    log "health checker on /readyz"
    start_checker
    cat <<EOF
TOPOLOGY_URL=http://127.0.0.1:$nginx_port
SERVER1_URL=http://127.0.0.1:$server1_port
SERVER2_URL=http://127.0.0.1:$server2_port
PRIMARY_URL=postgresql://postgres@127.0.0.1:$primary_port/locality
REPLICA_URL=postgresql://postgres@127.0.0.1:$replica_port/locality
OWNER_URL=$owner_url
APP_URL=$app_bouncer_url
APP_DIRECT_URL=$app_direct_url
BOUNCER_ADMIN_URL=postgresql://postgres@127.0.0.1:$bouncer_port/pgbouncer
SERVER1_METRICS_URL=http://127.0.0.1:$((base + 6))
SERVER2_METRICS_URL=http://127.0.0.1:$((base + 7))
EOF
}

down() {
    stop_checker
    stop_nginx
    signal_server 1 TERM
    signal_server 2 TERM
    stop_bouncer
    stop_postgres replica fast
    stop_postgres primary fast
}

one() {   # one ACTION PART
    case "$1:$2" in
        stop:primary) stop_postgres primary fast ;;
        kill:primary) stop_postgres primary immediate ;;
        start:primary) start_postgres primary "$primary_port" ;;
        stop:replica) stop_postgres replica fast ;;
        kill:replica) stop_postgres replica immediate ;;
        start:replica) start_postgres replica "$replica_port" ;;
        stop:pgbouncer|kill:pgbouncer) stop_bouncer ;;
        start:pgbouncer) start_bouncer ;;
        # Online restart: the new process takes over the listening socket and every client and server
        # connection from the old one (PgBouncer's -R; needs unix_socket_dir), so nothing is dropped.
        restart:pgbouncer)
            local old; old=$(cat "$dir/run/pgbouncer.pid")
            as_postgres pgbouncer -d -R "$dir/pgbouncer.ini" >/dev/null
            for _ in $(seq 1 100); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
            wait_for PgBouncer "$pgbin/psql" "$app_bouncer_url" -Atc "SELECT 1" ;;
        stop:server1|stop:server2) signal_server "${2#server}" TERM ;;
        kill:server1|kill:server2) signal_server "${2#server}" KILL ;;
        start:server1|start:server2) start_server "${2#server}" ;;
        stop:nginx|kill:nginx) stop_nginx ;;
        start:nginx) start_nginx ;;
        stop:checker|kill:checker) stop_checker ;;
        start:checker) start_checker ;;
        *) log "unknown part or action: $1 $2"; exit 2 ;;
    esac
}

case "$command" in
    up) up ;;
    down) down ;;
    stop|start|kill|restart)
        dir=$(cd "$dir" && pwd); sock=$dir/run
        [[ -n "$bin_given" || ! -f "$dir/run/bin" ]] || bin=$(cat "$dir/run/bin")   # the binaries `up` started
        one "$command" "${part:?which part?}" ;;
    *) echo "usage: topology.sh up|down|stop|start|kill|restart DIR [PART] [--bin BINDIR]" >&2; exit 2 ;;
esac
