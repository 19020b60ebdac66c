#!/usr/bin/env python3
"""The commissioning lifecycle through the topology (deploy/topology.sh), for its test and its fault drill.

Run by deploy/topology-test.sh and deploy/topology-drill.sh (not by hand): they start the topology, seed the demo
authority and pass what this needs in the environment (TOPOLOGY_URL, the demo tokens, PSQL_PRIMARY, TOPOLOGY,
TOPOLOGY_DIR). Plain Python 3, no packages.

  topology_drill.py lifecycle   one whole lifecycle, each step checked; exits non-zero on the first surprise
  topology_drill.py forwarded   X-Forwarded-For set by nginx and trusted by the servers (registration limit)
  topology_drill.py drill       lifecycles from several workers while instances, PgBouncer and the replica fail;
                                prints acknowledged writes lost, 5xx, recovery times
  topology_drill.py checker     the /readyz health checker beside nginx: a stopped instance is marked down, the
                                other serves everything, the last one is never marked down, both serve again

One lifecycle: a LIM drafts and publishes a project; the supplier bids and submits (sealed: the LIM sees no
bid before the deadline); the deadline passes (moved by the superuser on the primary: the database clock
decides); the panel is set, the member declares and scores; the LIM awards; both parties accept the KPI; the
LIM starts the contract and completes it. Every write carries an Idempotency-Key, so a write whose answer was
lost (an instance killed mid-request) is retried with the same key and applied at most once.
"""
import datetime
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

BASE = urllib.parse.urlparse(os.environ.get("TOPOLOGY_URL", "http://127.0.0.1:25405"))
TOKENS = {role: os.environ.get(f"TOKEN_{role.upper()}", "") for role in ("authority_admin", "lim", "board_member", "supplier_user")}
PSQL = os.environ.get("PSQL_PRIMARY", "psql").split()


class Failure(Exception):
    pass


def psql(sql):
    # On standard input: a check of every acknowledged write can be longer than an argument may be.
    out = subprocess.run(PSQL + ["-XAtq", "-v", "ON_ERROR_STOP=1", "-f", "-"], input=sql, capture_output=True, text=True)
    if out.returncode != 0:
        raise Failure(f"psql: {out.stderr.strip()}")
    return out.stdout.strip()


class Client:
    """One kept-alive connection to nginx; counts what came back. Thread-confined."""

    def __init__(self, stats=None):
        self.conn = None
        self.stats = stats if stats is not None else Stats()

    def _connection(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(BASE.hostname, BASE.port, timeout=60)
        return self.conn

    def once(self, method, path, role=None, body=None, key=None, headers=None):
        """(status, json or None); status is None when no answer came (connection failed)."""
        fields = dict(headers or {})
        if role:
            fields["Authorization"] = f"Bearer {TOKENS[role]}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            fields["Content-Type"] = "application/json"
        if key:
            fields["Idempotency-Key"] = key
        started = time.monotonic()
        try:
            conn = self._connection()
            conn.request(method, path, body=data, headers=fields)
            response = conn.getresponse()
            payload = response.read()
            status = response.status
            if response.getheader("Connection", "").lower() == "close":
                self.close()
        except (OSError, http.client.HTTPException):
            self.close()
            self.stats.note(None, method, path, time.monotonic() - started)
            return None, None
        self.stats.note(status, method, path, time.monotonic() - started)
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = None
        return status, parsed

    def call(self, method, path, role=None, body=None, expect=(200, 201), attempts=120):
        """A step of the lifecycle: retried (same Idempotency-Key for a write) until it gets an answer that is
        not a 5xx or a lost connection, or attempts run out; then the status must be one of `expect`."""
        key = str(uuid.uuid4()) if method in ("POST", "PUT", "PATCH", "DELETE") else None
        in_progress_since = None
        for attempt in range(attempts):
            status, parsed = self.once(method, path, role, body, key)
            if status is not None and status < 500 and not (status == 409 and _in_progress(parsed)):
                break
            if status == 409:
                # The first attempt's claim on the key is held by a run that is still going, or whose instance
                # died: its lease (IdempotencyKeys.defaultLease, 10 s) then lapses and a retry takes it over.
                in_progress_since = in_progress_since or time.monotonic()
                if time.monotonic() - in_progress_since > 20:
                    break
            time.sleep(min(0.05 * (attempt + 1), 0.5))
        if status not in expect:
            raise Failure(f"{method} {path} as {role}: {status} {json.dumps(parsed)[:400]}")
        return parsed

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _in_progress(problem):
    # The first attempt of an idempotent write is still running (its instance may be the one that died): retry.
    return isinstance(problem, dict) and "idempotency-key-in-progress" in str(problem.get("type", ""))


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.statuses = {}
        self.events = []   # (time, status, method, path)
        self.latencies = []

    def note(self, status, method, path, seconds):
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.events.append((time.monotonic(), status, method, path))
            self.latencies.append(seconds)


EVALUATION = {
    "price_weight": 40, "quality_weight": 45, "social_value_weight": 15,
    "quality_criteria": [{"name": "Approach", "weight": 30}, {"name": "Outcomes", "weight": 15}],
    "social_value_criteria": [{"name": "Local benefit", "weight": 15}],
}
SCORES = [
    {"kind": "quality", "criterion": "Approach", "score": 4, "comment": "Clear plan"},
    {"kind": "quality", "criterion": "Outcomes", "score": 3, "comment": "Plausible"},
    {"kind": "social_value", "criterion": "Local benefit", "score": 2, "comment": "Modest"},
]


class World:
    """What every lifecycle needs once: the board, a theme, the member's and the supplier's ids."""

    def __init__(self, client):
        boards = client.call("GET", "/v1/boards?limit=200", "lim")["items"]
        self.board = next(b["id"] for b in boards if b.get("short_code") == "CRA" or "Craven" in b.get("name", ""))
        self.theme = client.call("GET", "/v1/themes", "lim")["items"][0]["id"]
        self.member = client.call("GET", "/v1/me", "board_member")["user_id"]
        self.supplier = client.call("GET", "/v1/me", "supplier_user")["supplier"]["id"]


def lifecycle(client, world, label, record=None):
    """One project from draft to a completed contract; `record(kind, id, state)` notes each acknowledged write."""
    record = record or (lambda *_: None)
    now = datetime.datetime.now(datetime.timezone.utc)
    start = (now + datetime.timedelta(days=30)).date().isoformat()
    project = client.call("POST", "/v1/projects", "lim", {
        "board_id": world.board, "theme_id": world.theme, "title": f"Topology lifecycle {label}",
        "description": "Training for school staff on autism-friendly classrooms.", "outcomes_sought": "More pupils attending full time.",
        "max_value_pence": 100_000, "bid_deadline": (now + datetime.timedelta(days=14)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "planned_start": start, "planned_end": (now + datetime.timedelta(days=300)).date().isoformat(),
        "contract_manager": "Casey Manager", "evaluation": EVALUATION,
    }, expect=(201,))
    project, year = project["id"], project["financial_year"]
    record("project", project, "draft")
    client.call("POST", f"/v1/projects/{project}/publish", "lim")
    record("project", project, "open")
    bid = client.call("POST", f"/v1/projects/{project}/bids", "supplier_user", {
        "price_pence": 90_000, "approach": "Twilight sessions in every school.", "outputs": "Twelve sessions.",
        "kpis": [{"title": "Staff trained", "measure": "Staff completing the course", "unit": "count", "baseline": 0,
                  "target": 120, "target_date": (now + datetime.timedelta(days=200)).date().isoformat(),
                  "frequency": "termly", "evidence_source": "Registers"}],
        "declarations": {"accepts_terms": True, "information_accurate": True, "conflicts_of_interest": ""},
    }, expect=(201,))["id"]
    record("bid", bid, "draft")
    client.call("POST", f"/v1/bids/{bid}/submit", "supplier_user")
    record("bid", bid, "submitted")
    # Sealed: before the deadline the LIM sees no bid at all.
    seen = client.call("GET", f"/v1/projects/{project}/bids", "lim")
    if seen.get("items"):
        raise Failure(f"a sealed bid was visible before the deadline: {seen}")
    psql(f"UPDATE project SET bid_deadline = now() - interval '1 second', questions_close_at = now() - interval '1 minute' "
         f"WHERE id = '{project}'")
    client.call("PUT", f"/v1/projects/{project}/panel", "lim", {"member_ids": [world.member]})
    client.call("POST", f"/v1/projects/{project}/declarations", "board_member", {"supplier_id": world.supplier, "conflicted": False},
                expect=(201,))
    client.call("PUT", f"/v1/bids/{bid}/scores", "board_member", {"scores": SCORES, "submit": True})
    for score in SCORES:   # the LIM's moderated (consensus) score, criterion by criterion
        client.call("POST", f"/v1/bids/{bid}/moderation", "lim", score)
    contract = client.call("POST", f"/v1/projects/{project}/award", "lim", {"bid_id": bid}, expect=(201,))
    record("project", project, "awarded")
    record("contract", contract["id"], "kpi_negotiation")
    kpi = contract["kpis"][0]["id"]
    for role in ("lim", "supplier_user"):
        client.call("POST", f"/v1/contracts/{contract['id']}/kpis/{kpi}/accept", role, {"revision": 1})
    started = client.call("POST", f"/v1/contracts/{contract['id']}/start", "lim")
    if started.get("status") != "active":
        raise Failure(f"the contract did not start: {started}")
    record("contract", contract["id"], "active")
    # Reads a dashboard would make, through either instance.
    client.call("GET", f"/v1/contracts/{contract['id']}", "supplier_user")
    client.call("GET", f"/v1/boards/{world.board}/dashboard?financial_year={year}", "lim")
    completed = client.call("POST", f"/v1/contracts/{contract['id']}/complete", "lim", {})
    if completed.get("status") != "completed":
        raise Failure(f"the contract did not complete: {completed}")
    record("contract", contract["id"], "completed")
    return project, contract["id"]


def run_lifecycle():
    client = Client()
    world = World(client)
    started = time.monotonic()
    project, contract = lifecycle(client, world, "test")
    # What the API acknowledged is what the primary holds.
    state = psql(f"SELECT p.status || ',' || c.status FROM project p JOIN contract c ON c.project_id = p.id WHERE p.id = '{project}'")
    if state != "awarded,completed":
        raise Failure(f"the primary holds {state!r} for the lifecycle's project and contract")
    print(f"lifecycle: project {project} awarded, contract {contract} completed, {sum(client.stats.statuses.values())} requests "
          f"in {time.monotonic() - started:.1f} s; statuses {sorted(client.stats.statuses.items(), key=str)}")


def run_forwarded():
    """nginx appends the peer to X-Forwarded-For and the servers trust it (LOCALITY_TRUSTED_PROXIES): the public
    registration limit (10 an hour per client, counted in PostgreSQL for every instance) counts the address
    the client came from, whichever instance answers."""
    client = Client()
    spoofed = f"203.0.113.{int(time.time()) % 200 + 1}"

    def register(address):
        tag = uuid.uuid4().hex[:10]
        return client.once("POST", "/v1/supplier-registrations", body={
            "name": f"Forwarded {tag}", "address": "1 High Street, Skipton", "contact_name": "Forwarded Contact",
            "contact_email": f"c{tag}@example.org", "user_email": f"u{tag}@example.org", "user_name": "Forwarded User",
            "companies_house_number": f"{uuid.uuid4().int % 10**8:08d}",
        }, headers={"X-Forwarded-For": address})[0]   # no Idempotency-Key: the answer holds a secret never stored

    statuses = [register(spoofed) for _ in range(11)]
    other = register("198.51.100.9")
    print(f"forwarded: 11 registrations from {spoofed}: {statuses}; then one from 198.51.100.9: {other}")
    if any(status not in (200, 201) for status in statuses[:10]) or statuses[10] != 429 or other not in (200, 201):
        raise Failure("the servers did not count clients by the X-Forwarded-For nginx set")


def topology(action, part):
    started = time.monotonic()
    subprocess.run([os.environ["TOPOLOGY"], action, os.environ["TOPOLOGY_DIR"], part], check=True,
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def upstream_rotation():
    """{"server1": True (in the rotation) or False (marked down), …} from the checker's upstream include."""
    rotation = {}
    with open(os.path.join(os.environ["TOPOLOGY_DIR"], "nginx", "upstream.conf")) as f:
        for line in f:
            if line.startswith("server "):
                rotation[line.rsplit("#", 1)[1].strip()] = " down;" not in line
    return rotation


def checker_on():
    return not os.path.exists(os.path.join(os.environ["TOPOLOGY_DIR"], "run", "no-checker"))


def poll(what, condition, seconds=30):
    """Waits (bounded) until condition() holds; no fixed sleeps for synchronisation."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise Failure(f"timed out after {seconds} s waiting until {what}")


def burst(count):
    """`count` GET /v1/me through nginx on one kept-alive connection: ({status: n}, {upstream address: n})."""
    client, upstreams, statuses = Client(), {}, {}
    for _ in range(count):
        conn = client._connection()
        try:
            conn.request("GET", "/v1/me", headers={"Authorization": f"Bearer {TOKENS['lim']}"})
            response = conn.getresponse()
            response.read()
            status, upstream = response.status, response.getheader("X-Upstream", "?")
        except (OSError, http.client.HTTPException):
            client.close()
            status, upstream = None, "-"
        statuses[status] = statuses.get(status, 0) + 1
        upstreams[upstream] = upstreams.get(upstream, 0) + 1
    client.close()
    return statuses, upstreams


def run_checker():
    """deploy/upstream_checker.py at work: SIGTERM one instance and see it leave the rotation (while it still
    drains, thanks to --shutdown-delay-seconds), the other one take every request, the last one kept in when it
    fails too, and both back and serving after a start."""
    log = os.path.join(os.environ["TOPOLOGY_DIR"], "log", "checker.log")
    address = {name: urllib.parse.urlparse(os.environ[f"{name.upper()}_URL"]).netloc for name in ("server1", "server2")}
    poll("both instances are in the rotation", lambda: upstream_rotation() == {"server1": True, "server2": True})

    # SIGTERM to server1 (topology.sh stop returns once it has exited).
    stopping = subprocess.Popen([os.environ["TOPOLOGY"], "stop", os.environ["TOPOLOGY_DIR"], "server1"], stdout=subprocess.DEVNULL)
    signalled = time.monotonic()
    poll("the checker marks server1 down", lambda: not upstream_rotation()["server1"])
    still_draining = stopping.poll() is None
    print(f"checker: server1 marked down {time.monotonic() - signalled:.2f} s after SIGTERM, "
          f"{'while it was still serving (shutdown delay)' if still_draining else 'after it had exited'}")
    if stopping.wait(timeout=60) != 0:
        raise Failure("topology.sh stop server1 failed")
    statuses, upstreams = burst(200)
    print(f"checker: 200 requests with server1 down: statuses {statuses}, upstreams {upstreams}")
    if statuses != {200: 200} or set(upstreams) != {address["server2"]}:
        raise Failure("with server1 marked down, not every request was answered 200 by server2")

    # The last instance in the rotation is never marked down, even when it fails too (nginx would only say 502).
    topology("stop", "server2")
    poll("the checker reports server2 kept in", lambda: any("server2" in line and "KEPT" in line for line in open(log)))
    if upstream_rotation() != {"server1": False, "server2": True}:
        raise Failure(f"the last instance was marked down: {upstream_rotation()}")
    print("checker: server2 stopped too: kept in the rotation (the last one)")

    topology("start", "server2")
    topology("start", "server1")
    poll("the checker puts server1 back", lambda: upstream_rotation() == {"server1": True, "server2": True})
    # The checker has rewritten upstream.conf and signalled nginx; the reload takes effect a moment later (new
    # workers start, old ones finish with the old rotation), so wait (bounded) for nginx itself to use both.
    poll("nginx serves from both instances", lambda: set(burst(10)[1]) == set(address.values()))
    statuses, upstreams = burst(50)
    print(f"checker: 50 requests after both started: statuses {statuses}, upstreams {upstreams}")
    if statuses != {200: 50} or set(upstreams) != set(address.values()):
        raise Failure("after server1 came back, the two instances did not both serve")
    for line in open(log):
        if " DOWN " in line or " UP " in line or "KEPT" in line:
            print("  " + line.rstrip())


def run_drill():
    workers = int(os.environ.get("DRILL_WORKERS", "6"))
    stats = Stats()
    acknowledged = {}   # (kind, id) -> last acknowledged state
    ack_lock = threading.Lock()
    stop = threading.Event()
    failures = []
    completed = [0]
    world = World(Client())

    def record(kind, ident, state):
        with ack_lock:
            acknowledged[(kind, ident)] = state

    def worker(index):
        client = Client(stats)
        number = 0
        while not stop.is_set():
            number += 1
            try:
                lifecycle(client, world, f"drill {index}.{number}", record)
                with ack_lock:
                    completed[0] += 1
            except Failure as failure:
                failures.append(str(failure))
            except Exception as error:   # a bug in the drill itself: report, keep going
                failures.append(f"{type(error).__name__}: {error}")

    drill_start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()

    def wait_all_healthy(since):
        """Seconds from `since` until a request through nginx and /readyz on both servers answer 200 again."""
        probe = Client(Stats())
        while time.monotonic() - since < 120:
            ok = probe.once("GET", "/v1/me", "lim")[0] == 200
            for url in (os.environ["SERVER1_URL"], os.environ["SERVER2_URL"]):
                parsed = urllib.parse.urlparse(url)
                try:
                    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=2)
                    conn.request("GET", "/readyz")
                    ok = ok and conn.getresponse().status == 200
                    conn.close()
                except OSError:
                    ok = False
            # With the checker on, healed means both instances are back in nginx's rotation too.
            if ok and checker_on():
                ok = all(upstream_rotation().values())
            if ok:
                return time.monotonic() - since
            time.sleep(0.05)
        return float("nan")

    def errors_between(start, end):
        with stats.lock:
            window = [e for e in stats.events if start <= e[0] <= end]
        fives = [e for e in window if e[1] is not None and e[1] >= 500]
        lost = sum(1 for e in window if e[1] is None)
        for event in fives:
            print(f"    5xx at +{event[0] - drill_start:.2f} s: {event[1]} {event[2]} {event[3]}")
        return len(window), len(fives), lost

    report = []
    settle = float(os.environ.get("DRILL_SETTLE_SECONDS", "8"))
    time.sleep(settle)   # steady state first
    baseline_start = time.monotonic() - settle
    report.append(("steady state", *errors_between(baseline_start, time.monotonic()), "-", ""))

    def fault(name, action):
        begin = time.monotonic()
        print(f"    {name} at +{begin - drill_start:.2f} s")
        detail = action()
        healed = wait_all_healthy(begin)
        time.sleep(settle)
        report.append((name, *errors_between(begin, time.monotonic()), f"{healed:.2f} s", detail))

    def sigterm():
        took = topology("stop", "server1")
        topology("start", "server1")
        return f"server1 exited {took:.2f} s after SIGTERM"

    def kill9():
        topology("kill", "server2")
        time.sleep(1)
        topology("start", "server2")
        return "server2 down 1 s"

    def bouncer():
        took = topology("stop", "pgbouncer")
        topology("start", "pgbouncer")
        return f"stopped in {took:.2f} s, started again"

    def bouncer_online():
        took = topology("restart", "pgbouncer")
        return f"online restart (-R) took {took:.2f} s"

    def replica():
        topology("stop", "replica")
        time.sleep(2)
        topology("start", "replica")
        lag = psql("SELECT coalesce(max(replay_lag)::text, 'no standby') FROM pg_stat_replication")
        return f"down 2 s; replay lag after: {lag}"

    fault("SIGTERM server1, restart", sigterm)
    fault("kill -9 server2, restart", kill9)
    fault("PgBouncer restart", bouncer)
    fault("PgBouncer online restart", bouncer_online)
    fault("replica restart", replica)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)

    # Every acknowledged write is on the primary, in (at least) the state acknowledged last.
    order = {"project": ["draft", "open", "closed", "awarded"], "bid": ["draft", "submitted", "awarded"],
             "contract": ["kpi_negotiation", "active", "completed"]}
    tables = {"project": "project", "bid": "bid", "contract": "contract"}
    lost = []
    for kind in order:
        ids = [ident for (k, ident) in acknowledged if k == kind]
        if not ids:
            continue
        rows = psql(f"SELECT id || '=' || status FROM {tables[kind]} WHERE id IN ({','.join(repr(i) for i in ids)})")
        held = dict(line.split("=", 1) for line in rows.splitlines() if line)
        for ident in ids:
            want = acknowledged[(kind, ident)]
            have = held.get(ident)
            if have is None or (have in order[kind] and order[kind].index(have) < order[kind].index(want)):
                lost.append(f"{kind} {ident}: acknowledged {want}, primary has {have}")

    print(f"topology drill {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%MZ}, {workers} lifecycle workers, "
          f"/readyz checker {'on' if checker_on() else 'off (passive checks only)'}, "
          f"load average {open('/proc/loadavg').read().split()[0:3]}")
    print(f"  {'phase':<28} {'requests':>8} {'5xx':>5} {'no answer':>9} {'healed':>9}  notes")
    for name, total, fives, unanswered, healed, detail in report:
        print(f"  {name:<28} {total:>8} {fives:>5} {unanswered:>9} {healed:>9}  {detail}")
    print(f"  lifecycles completed: {completed[0]}; acknowledged writes checked: {len(acknowledged)}; lost: {len(lost)}")
    print(f"  all statuses: {sorted(stats.statuses.items(), key=str)}")
    for line in lost[:20]:
        print("  LOST", line)
    for line in failures[:10]:
        print("  lifecycle failed:", line)
    if lost:
        sys.exit(1)


if __name__ == "__main__":
    try:
        {"lifecycle": run_lifecycle, "forwarded": run_forwarded, "drill": run_drill, "checker": run_checker}[sys.argv[1]]()
    except Failure as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
