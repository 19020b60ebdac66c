#!/usr/bin/env python3
"""Load and fault parts of deploy/fault-drill.sh (run that, not this): plain asyncio HTTP/1.1, no packages.

Each part prints one block of figures. The shell script starts the cluster and the server and passes what
they need in the environment: DRILL_PORT, DRILL_PID, tokens, board ids, psql command lines.
"""
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

PORT = int(os.environ.get("DRILL_PORT", "0"))
HOST = "127.0.0.1"


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(values, p):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class Conn:
    """One kept-alive HTTP/1.1 connection."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.reused = False

    @classmethod
    async def open(cls, timeout=30):
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, PORT), timeout)
        return cls(reader, writer)

    async def request(self, method, path, token=None, body=None, timeout=30):
        """(status, headers, body); raises ConnectionError('unanswered') if closed before any byte came back."""
        headers = [f"{method} {path} HTTP/1.1", "Host: drill"]
        data = b""
        if token:
            headers.append(f"Authorization: Bearer {token}")
        if body is not None:
            data = json.dumps(body).encode()
            headers += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
        self.writer.write(("\r\n".join(headers) + "\r\n\r\n").encode() + data)
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                fields[name.strip().lower()] = value.strip()
        if "content-length" in fields:
            payload = await asyncio.wait_for(self.reader.readexactly(int(fields["content-length"])), timeout)
        elif fields.get("transfer-encoding") == "chunked":
            payload = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                payload += chunk[:-2]
        else:
            payload = b""
        self.reused = True
        return status, fields, payload

    def close(self):
        try:
            self.writer.close()
        except Exception:
            pass


async def one(method, path, token=None, body=None, timeout=30):
    conn = await Conn.open(timeout)
    try:
        return await conn.request(method, path, token, body, timeout)
    finally:
        conn.close()


# (a) one row lock held 20 s, 24 writers queued behind it; another tenant's reads and /readyz meanwhile.
async def held_lock():
    board_a, token_a, token_b = os.environ["BOARD_A"], os.environ["TOKEN_A"], os.environ["TOKEN_B"]
    hold = float(os.environ.get("HOLD_SECONDS", "20"))
    holder = subprocess.Popen(
        os.environ["PSQL_SUPER"].split() + ["-c", f"BEGIN; SELECT 1 FROM board WHERE id = '{board_a}' FOR UPDATE; "
                                                  f"SELECT pg_sleep({hold}); COMMIT;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.sleep(0.5)   # let the holder take the lock before the writers come
    stop = time.monotonic() + hold - 0.5
    writer_statuses, read_latencies, read_statuses, ready_statuses = {}, [], {}, {}

    async def writer(index):
        conn = await Conn.open()
        while time.monotonic() < stop:
            try:
                status, _, _ = await conn.request("PATCH", f"/v1/boards/{board_a}", token_a, {"chair": f"Chair {index}"}, timeout=60)
            except Exception:
                status = "error"
                conn.close()
                conn = await Conn.open()
            writer_statuses[status] = writer_statuses.get(status, 0) + 1
        conn.close()

    async def reader():
        conn = await Conn.open()
        while time.monotonic() < stop:
            started = time.monotonic()
            try:
                status, _, _ = await conn.request("GET", "/v1/boards", token_b)
            except Exception:
                status = "error"
                conn.close()
                conn = await Conn.open()
            read_latencies.append((time.monotonic() - started) * 1000)
            read_statuses[status] = read_statuses.get(status, 0) + 1
            await asyncio.sleep(0.05)
        conn.close()

    async def ready():
        conn = await Conn.open()
        while time.monotonic() < stop:
            try:
                status, _, _ = await conn.request("GET", "/readyz")
            except Exception:
                status = "error"
                conn.close()
                conn = await Conn.open()
            ready_statuses[status] = ready_statuses.get(status, 0) + 1
            await asyncio.sleep(0.2)
        conn.close()

    await asyncio.gather(*[writer(i) for i in range(24)], *[reader() for _ in range(4)], ready())
    holder.wait()
    print(f"(a) row lock held {hold:.0f} s, 24 writers on it: writer answers {dict(sorted(writer_statuses.items(), key=str))}")
    print(f"    other tenant's GET /v1/boards: {len(read_latencies)} reads {read_statuses}, "
          f"p50 {pct(read_latencies, 50):.1f} ms, p99 {pct(read_latencies, 99):.1f} ms, max {max(read_latencies):.1f} ms")
    print(f"    /readyz every 200 ms: {ready_statuses}")


# (b) 2,000 concurrent connections; RSS at idle, during and after.
async def burst():
    pid = int(os.environ["DRILL_PID"])
    token_b = os.environ["TOKEN_B"]
    connections = int(os.environ.get("BURST_CONNECTIONS", "2000"))
    rounds = int(os.environ.get("BURST_ROUNDS", "4"))
    # Warm up (first requests allocate caches), then settle.
    for _ in range(50):
        await one("GET", "/v1/boards", token_b)
    await asyncio.sleep(3)
    idle = rss_mb(pid)
    peaks, afters, statuses, errors = [], [], {}, {}
    for _ in range(rounds):
        peak = [idle]
        done = asyncio.Event()

        async def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb(pid))
                await asyncio.sleep(0.05)

        async def client(index):
            try:
                conn = await Conn.open(timeout=60)
            except Exception as error:
                errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                return
            try:
                for step in range(4):
                    path, token = ("/v1/boards", token_b) if step == 3 else ("/healthz", None)
                    status, _, _ = await conn.request("GET", path, token, timeout=60)
                    statuses[status] = statuses.get(status, 0) + 1
                    await asyncio.sleep(0.25)
            except Exception as error:
                errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
            finally:
                conn.close()

        sampler = asyncio.create_task(sample())
        await asyncio.gather(*[client(i) for i in range(connections)])
        done.set()
        await sampler
        peaks.append(peak[0])
        await asyncio.sleep(15)   # the server trims freed memory every 10 s
        afters.append(rss_mb(pid))
    alive = os.path.exists(f"/proc/{pid}")
    print(f"(b) {rounds} bursts of {connections} concurrent connections (4 requests each): server alive: {alive}")
    print(f"    answers {dict(sorted(statuses.items()))}, client errors {errors}")
    print(f"    RSS idle {idle:.1f} MB; peak per burst {', '.join(f'{p:.1f}' for p in peaks)} MB; "
          f"15 s after each {', '.join(f'{a:.1f}' for a in afters)} MB "
          f"(last {100 * (afters[-1] - idle) / idle:+.0f}% of idle)")


# (c) 1,000 sockets that send nothing: closed by the server within its timeouts.
async def idle_sockets():
    count = int(os.environ.get("IDLE_SOCKETS", "1000"))
    started = time.monotonic()
    closed_after = []

    async def silent():
        reader, writer = await asyncio.open_connection(HOST, PORT)
        data = await asyncio.wait_for(reader.read(1), 120)
        closed_after.append((time.monotonic() - started, data))
        writer.close()

    tasks = [asyncio.create_task(silent()) for _ in range(count)]
    await asyncio.sleep(1)
    probe_started = time.monotonic()
    status, _, _ = await one("GET", "/healthz", timeout=120)
    probe = time.monotonic() - probe_started
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [r for r in results if isinstance(r, Exception)]
    times = [t for t, _ in closed_after]
    wrote = sum(1 for _, data in closed_after if data)
    print(f"(c) {count} silent sockets: {len(times)} closed by the server (median {statistics.median(times):.1f} s, "
          f"max {max(times):.1f} s after opening), {wrote} got bytes first, {len(failures)} client errors; "
          f"a real request meanwhile: {status} in {probe * 1000:.0f} ms")


# (d) SIGTERM with a stuck request; 64 kept-alive clients keep sending.
async def sigterm():
    pid = int(os.environ["DRILL_PID"])
    token_b = os.environ["TOKEN_B"]
    deadline = float(os.environ["SHUTDOWN_DEADLINE"])
    holder = subprocess.Popen(
        os.environ["PSQL_SUPER"].split() + ["-c", "BEGIN; LOCK TABLE schema_migrations IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60); COMMIT;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.sleep(0.5)
    stuck = asyncio.create_task(one("GET", "/readyz", timeout=120))   # waits on the lock: stuck
    await asyncio.sleep(0.5)
    counts = {"answered": 0, "answered with Connection: close": 0, "closed before an answer (not read by the server)": 0,
              "lost": 0, "reconnect refused": 0}
    stop = asyncio.Event()

    async def client():
        conn = await Conn.open()
        while True:
            try:
                status, fields, _ = await conn.request("GET", "/v1/boards", token_b)
            except (asyncio.IncompleteReadError, ConnectionError) as error:
                # Closed with nothing of the response read: the server had not read the request (RFC 9112 §9.3.1:
                # a client retries it on a new connection).
                counts["closed before an answer (not read by the server)" if isinstance(error, (asyncio.IncompleteReadError, ConnectionResetError))
                       else "lost"] += 1
                break
            except Exception:
                counts["lost"] += 1
                break
            if status >= 500:
                counts["lost"] += 1
            counts["answered"] += 1
            if fields.get("connection", "").lower() == "close":
                counts["answered with Connection: close"] += 1
                break
            if stop.is_set():
                break
        conn.close()
        if not stop.is_set():
            return
        try:
            await one("GET", "/healthz", timeout=2)
        except Exception:
            counts["reconnect refused"] += 1

    clients = [asyncio.create_task(client()) for _ in range(64)]
    await asyncio.sleep(2)
    signalled = time.monotonic()
    os.kill(pid, 15)
    stop.set()
    while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
        await asyncio.sleep(0.02)
    exited = time.monotonic() - signalled
    await asyncio.gather(*clients, return_exceptions=True)
    stuck_result = await asyncio.gather(stuck, return_exceptions=True)
    holder.kill()
    print(f"(d) SIGTERM with one request stuck on a lock, 64 kept-alive clients: exited {exited:.2f} s after the signal "
          f"(deadline {deadline:.0f} s); stuck request: {type(stuck_result[0]).__name__ if isinstance(stuck_result[0], Exception) else stuck_result[0][0]}")
    print(f"    clients: {counts}")


# (e) PostgreSQL restarted under writes: time to heal, acknowledged writes all present.
async def pg_restart():
    boards, token_a = os.environ["BOARDS_A"].split(","), os.environ["TOKEN_A"]
    acknowledged, statuses, outcomes = [], {}, []
    stop = time.monotonic() + 20
    restarted = []

    async def writer(index):
        conn = None
        while time.monotonic() < stop:
            reference = f"drill:{uuid.uuid4()}"
            try:
                conn = conn or await Conn.open()
                status, _, _ = await conn.request("POST", f"/v1/boards/{boards[index % len(boards)]}/ledger", token_a, {
                    "financial_year": os.environ.get("DRILL_YEAR", "2025-26"), "funding_stream": "locality", "kind": "allocation",
                    "amount_pence": 1, "reference": reference, "reason": "fault drill"})
            except Exception:
                status = "error"
                if conn:
                    conn.close()
                conn = None
                await asyncio.sleep(0.05)
            statuses[status] = statuses.get(status, 0) + 1
            outcomes.append((time.monotonic(), status == 201))
            if status == 201:
                acknowledged.append(reference)
            elif status != "error":
                await asyncio.sleep(0.05)
        if conn:
            conn.close()

    async def restart():
        await asyncio.sleep(5)
        restarted.append(time.monotonic())
        subprocess.run(os.environ["PG_RESTART"], shell=True, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    await asyncio.gather(*[writer(i) for i in range(16)], restart())
    at = restarted[0]
    failures = [t for t, ok in outcomes if not ok and t >= at]
    healed = next((t for t, ok in outcomes if ok and t > (max(failures) if failures else at)), None)
    first_failure = min(failures) if failures else None
    with open(os.environ["DRILL_REFS"], "w") as refs:
        refs.write("\n".join(acknowledged))
    present = int(subprocess.run(os.environ["PSQL_SUPER"].split() + ["-tAc",
        f"CREATE TEMP TABLE acked(reference text); COPY acked FROM '{os.environ['DRILL_REFS']}'; "
        "SELECT count(*) FROM budget_ledger b JOIN acked a USING (reference);"],
        capture_output=True, text=True, check=True).stdout.split()[-1])
    print(f"(e) PostgreSQL restarted (pg_ctl restart -m fast) under 16 writers: answers {dict(sorted(statuses.items(), key=str))}")
    print(f"    healed {((healed - at) if healed else float('nan')):.2f} s after the restart began "
          f"(failures from {((first_failure - at) if first_failure else 0):.2f} s); "
          f"acknowledged {len(acknowledged)}, present in the database {present}, lost {len(acknowledged) - present}")


if __name__ == "__main__":
    parts = {"held-lock": held_lock, "burst": burst, "idle-sockets": idle_sockets, "sigterm": sigterm, "pg-restart": pg_restart}
    asyncio.run(parts[sys.argv[1]]())
