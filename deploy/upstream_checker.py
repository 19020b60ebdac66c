#!/usr/bin/env python3
"""Active health checks on /readyz for open-source nginx, which has only passive ones (max_fails/fail_timeout).

Started beside nginx by deploy/topology.sh. Every --interval seconds it GETs each instance's /readyz (short
timeout, in parallel). An instance that fails --fall times in a row is marked `down` in the upstream include file
and nginx is reloaded; one that passes --rise times in a row is put back. Every transition is logged with a UTC
timestamp. The passive checks stay as the second line (the same server parameters on every line).

Never marks every instance down: an instance is taken out only while another one in the rotation passed its last
check. When all fail together (the database or PgBouncer away: /readyz says 503 everywhere) the cause is shared,
taking one out would only move its load, and nginx would answer 502 with none left.

A server told to stop (SIGTERM) with --shutdown-delay-seconds answers /readyz 503 while it still serves, so it
leaves the rotation before its listener closes.

  upstream_checker.py --upstream-file F --server NAME=HOST:PORT ... [--init] -- RELOAD COMMAND...

--init writes the file with every instance up and exits (nginx needs it to start). On SIGTERM the checker puts
every instance back (passive checks only from then on) and exits. Plain Python 3, no packages.
"""
import argparse
import concurrent.futures
import datetime
import http.client
import os
import signal
import subprocess
import sys
import threading
import time


def log(message):
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    print(f"{stamp} {message}", flush=True)


class Target:
    def __init__(self, name, address):
        self.name = name
        self.address = address
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self.up = True            # in the rotation (not marked down)
        self.fails = 0            # consecutive failed checks
        self.passes = 0           # consecutive passed checks
        self.last_ok = True
        self.kept = False         # logged that it is kept in although failing (once per episode)
        self.last_reason = ""


def check(target, path, timeout):
    """(passed, reason)."""
    try:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close", "User-Agent": "upstream-checker"})
            response = conn.getresponse()
            response.read()
            return response.status == 200, f"HTTP {response.status}"
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as error:
        return False, type(error).__name__ if not str(error) else f"{type(error).__name__}: {error}"


def render(targets, server_params):
    lines = ["# Written by deploy/upstream_checker.py; nginx -s reload after each change."]
    for t in targets:
        flags = f" {server_params}" if server_params else ""
        lines.append(f"server {t.address}{flags}{'' if t.up else ' down'};   # {t.name}")
    return "\n".join(lines) + "\n"


def write_atomically(path, text):
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w") as out:
        out.write(text)
    os.replace(temporary, path)   # nginx never reads half a file


def current(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def reload_nginx(command):
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, str(error)
    return done.returncode == 0, (done.stderr or done.stdout).strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream-file", required=True)
    parser.add_argument("--server", action="append", required=True, metavar="NAME=HOST:PORT")
    parser.add_argument("--server-params", default="max_fails=1 fail_timeout=2s",
                        help="nginx parameters on every server line: the passive checks (default: %(default)s)")
    parser.add_argument("--path", default="/readyz")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=0.8)
    parser.add_argument("--fall", type=int, default=2)
    parser.add_argument("--rise", type=int, default=2)
    parser.add_argument("--init", action="store_true", help="write the file with every instance up and exit")
    parser.add_argument("reload", nargs="*", help="after --: the command that reloads nginx")
    args = parser.parse_args()

    targets = []
    for spec in args.server:
        name, _, address = spec.partition("=")
        if not name or ":" not in address:
            parser.error(f"--server {spec}: want NAME=HOST:PORT")
        targets.append(Target(name, address))
    if args.init:
        write_atomically(args.upstream_file, render(targets, args.server_params))
        return 0
    if not args.reload:
        parser.error("give the reload command after --")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def apply(reason):
        """Writes the file if it changed and reloads nginx; False when the reload failed (tried again next round)."""
        text = render(targets, args.server_params)
        if current(args.upstream_file) == text:
            return True
        write_atomically(args.upstream_file, text)
        ok, output = reload_nginx(args.reload)
        rotation = ", ".join(f"{t.name} {'up' if t.up else 'down'}" for t in targets)
        log(f"upstream now: {rotation}; nginx {'reloaded' if ok else 'reload FAILED: ' + output} ({reason})")
        return ok

    log(f"checking {args.path} on {', '.join(f'{t.name}={t.address}' for t in targets)} every {args.interval:g} s "
        f"(timeout {args.timeout:g} s, down after {args.fall} failures, up after {args.rise} passes)")
    pending = not apply("start: every instance up")
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(targets)) as pool:
        while not stop.is_set():
            began = time.monotonic()
            results = list(pool.map(lambda t: check(t, args.path, args.timeout), targets))
            changed = False
            for target, (passed, reason) in zip(targets, results):
                target.last_ok = passed
                if passed:
                    target.passes, target.fails = target.passes + 1, 0
                else:
                    target.fails, target.passes = target.fails + 1, 0
                    target.last_reason = reason
            for target in targets:
                if target.up and target.fails >= args.fall:
                    if any(o is not target and o.up and o.last_ok for o in targets):
                        target.up, target.kept, changed = False, False, True
                        log(f"{target.name} {target.address} DOWN after {target.fails} failed checks ({target.last_reason})")
                    elif not target.kept:
                        target.kept = True
                        log(f"{target.name} {target.address} failing ({target.last_reason}) but KEPT: no other instance "
                            f"in the rotation is passing")
                elif target.up and target.last_ok and target.kept:
                    target.kept = False
                    log(f"{target.name} {target.address} passing again")
                elif not target.up and target.passes >= args.rise:
                    target.up, changed = True, True
                    log(f"{target.name} {target.address} UP after {target.passes} passed checks")
            if changed or pending:
                pending = not apply("change" if changed else "retrying the reload")
            stop.wait(max(0.0, args.interval - (time.monotonic() - began)))

    # Stopped: back to passive checks alone, with every instance in the rotation.
    for target in targets:
        target.up = True
    apply("checker stopping: passive checks only")
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
