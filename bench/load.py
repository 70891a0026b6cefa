"""Issue 20's measurements: kept-alive connections over the workers, tails at a paced load, a
burst as a round ends, and callbacks while reconciliations run; the project beside the
least-code wallet (bench/reference.py) on gunicorn's sync workers, in the same run.

    .venv/bin/python bench/load.py                          # SQLite: saturation, paced, burst
    .venv/bin/python bench/load.py --engine both            # and on an embedded PostgreSQL
    .venv/bin/python bench/load.py --engine both --reconcile-games 1000000   # and the reconcile stall

The load comes from client processes (--client-processes, default 2), each driving its share
of the connections from one non-blocking loop: a provider's HTTP client, one request at a time
per kept-alive connection (it reconnects when the server closes, as it must for sync workers).
Every connection plays games of its own (`start` bet 1.00, then `finish`, won x2 or lost),
as one of --players funded players; every answer is checked ({"result": true}, {}).

- saturation: 16 connections, each sending its next callback as soon as the last is answered,
  for --seconds after --warmup; callbacks/s and latency from the send.
- paced: 64 connections offering together 60 % of the project's saturated rate (each at a
  constant pace, their phases spread); latency counts from when each request was due, so a
  server that falls behind pays for every request it delayed (no coordinated omission).
- burst: 1,000 games started, then their 1,000 finishes sent at once over 200 connections
  (5 each, back to back); the time until the last answer, and the books reconciled after.
- reconcile (--reconcile-games N, the project only): a database of N settled games; starts
  paced on 4 connections alone, then while two GET /api/reconcile run (their answers: 200 or
  a refusal), and the latency of the starts in each phase.

Each worker's share of the callbacks comes from gunicorn's access log (the worker's pid,
`%(p)s`), written for the project and the reference alike. Each target of issue 20 is printed
as met or missed (timings on a shared machine are not pass/fail: the exit status says only
whether a callback failed or the books did not balance).
"""

import argparse
import collections
import contextlib
import http.client
import json
import multiprocessing
import os
import selectors
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: bench.*, harness
from bench.checks import check_reference, reconcile  # noqa: E402
from bench.clients import FINISH, START, WIN_PAYOUT  # noqa: E402
from bench.engines import PostgresEngine, SQLiteEngine  # noqa: E402
from bench.fill import history  # noqa: E402
from bench.rounds import DEPOSIT  # noqa: E402
from bench.servers import init_db, settings, worker_class  # noqa: E402
from bench import reference  # noqa: E402
from harness.live import Gunicorn  # noqa: E402
from harness.samples import ADMIN_TOKEN, CALLBACK_TOKEN  # noqa: E402

SATURATION_CONNECTIONS = 16
PACED_CONNECTIONS = 64
PACED_SHARE = 0.6
BURST_GAMES, BURST_CONNECTIONS, BURST_SECONDS = 1_000, 200, 3.0
RECONCILE_CONNECTIONS, RECONCILE_RATE = 4, 10  # starts per second per connection
TARGETS = {"share": 0.6, "paced p99 / reference": 2.0, "paced p99 ms": 50, "paced max ms": 250,
           "saturated / reference": 0.9, "saturated p99 ms": 100, "burst s": BURST_SECONDS,
           "stall ms": 100}
APPS = {
    "project": ["app:create_app()"],
    # gunicorn.conf.py sets threads: with more than one, gunicorn would make `sync` a gthread.
    "reference": ["-k", "sync", "--threads", "1", "bench.reference:create_app()"],
}


def log(*parts):
    print(*parts, flush=True)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help: the module docstring as written, and every option's default."""


# --- the client: many kept-alive connections from one loop per process -----------------------


def _payload(kind, game, player, won):
    now = int(time.time() * 1000)
    if kind == "start":
        text = START % (f"s-{game}", player, game, now)
    else:
        text = FINISH % (f"s-{game}", player, game, "win" if won else "lose",
                         WIN_PAYOUT if won else 0, "1.00" if won else "-1.00", now)
    return text.encode()


def _request(port, kind, game, player, won):
    body = _payload(kind, game, player, won)
    return (f"POST /callback/{CALLBACK_TOKEN} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


EXPECTED = {"start": b'{"result":true}', "finish": b"{}"}


class Connection:
    """One client connection: a list of (kind, game, player, won) to send, one at a time."""

    def __init__(self, port, jobs, due):
        self.port, self.jobs, self.due = port, jobs, due  # due(i): when job i is due (None: on the answer)
        self.next = 0
        self.sock = None
        self.buffer = b""
        self.sent_at = self.due_at = None
        self.results = []  # (due or sent, answered, ok)
        self.lags = []  # how late the client itself sent each paced request (s)

    def connect(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)

    def send(self, now):
        kind, game, player, won = self.jobs[self.next]
        if self.sock is None:
            self.connect()
        self.kind = kind
        self.sent_at, self.due_at = now, self.due(self.next) if self.due else now
        self.lags.append(now - self.due_at)
        self.buffer = b""
        self.sock.sendall(_request(self.port, kind, game, player, won))

    def receive(self, now):
        """Read what arrived; True when the answer is complete."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return False
        if not data:
            self.results.append((self.due_at, now, False))
            self._close()
            self.next += 1
            return True
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = self.buffer[:end].decode("latin-1").lower()
        length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0]) if "content-length:" in head else 0
        if len(self.buffer) < end + 4 + length:
            return False
        body = self.buffer[end + 4:end + 4 + length].strip()
        ok = head.startswith("http/1.1 200") and body.replace(b" ", b"") == EXPECTED[self.kind]
        self.results.append((self.due_at, now, ok))
        if "connection: close" in head:
            self._close()
        self.next += 1
        return True

    def _close(self):
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = None


def drive(connections, start_at):
    """Run connections until each has sent its jobs; every job's (due, answered, ok)."""
    selector = selectors.DefaultSelector()
    while time.monotonic() < start_at:
        time.sleep(min(0.01, max(0.0, start_at - time.monotonic())))
    waiting, busy = list(connections), 0  # idle until their next job is due; awaiting an answer
    while waiting or busy:
        now = time.monotonic()
        still, soonest = [], now + 0.05
        for conn in waiting:
            if conn.jobs.done(conn.next):
                continue
            due = conn.due(conn.next) if conn.due else now
            if due > now:
                still.append(conn)
                soonest = min(soonest, due)
                continue
            try:
                conn.send(now)
            except OSError:
                conn.results.append((due, now, False))
                conn.next += 1
                conn._close()
                still.append(conn)
                continue
            selector.register(conn.sock, selectors.EVENT_READ, conn)
            busy += 1
        waiting = still
        for key, _ in selector.select(max(0.0, soonest - time.monotonic()) if waiting else 0.05):
            conn = key.data
            if conn.receive(time.monotonic()):
                selector.unregister(key.fileobj)
                busy -= 1
                waiting.append(conn)
    for conn in connections:
        conn._close()
    return [result for conn in connections for result in conn.results]


def _client(spec):
    port, conn_specs, start_at = spec
    connections = []
    for jobs, pace in conn_specs:
        due = None
        if pace is not None:
            first, interval = pace
            due = (lambda first, interval: lambda i: start_at + first + i * interval)(first, interval)
        connections.append(Connection(port, jobs, due))
    return drive(connections, start_at)


def run_clients(port, conn_specs, processes, lead=0.5, start_at=None):
    """Spread connection specs over client processes; all start at one moment; results merged."""
    start_at = start_at or time.monotonic() + lead + 0.2 * processes
    shares = [conn_specs[i::processes] for i in range(processes)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        results = pool.map(_client, [(port, share, start_at) for share in shares if share])
    return start_at, [r for part in results for r in part]


class Games:
    """One connection's callbacks: `count` games (start then finish each, wins and losses
    alternating), or only their starts or finishes; with `stop_at`, no new game after it."""

    def __init__(self, prefix, connection, count, players, kinds=("start", "finish"), stop_at=None):
        self.prefix, self.connection, self.count, self.kinds, self.stop_at = prefix, connection, count, kinds, stop_at
        self.player = players[connection % len(players)]

    def __getitem__(self, i):
        n, kind = divmod(i, len(self.kinds))
        return self.kinds[kind], f"{self.prefix}-{self.connection}-{n}", self.player, n % 2 == 0

    def done(self, i):
        if i >= self.count * len(self.kinds):
            return True
        return self.stop_at is not None and i % len(self.kinds) == 0 and time.monotonic() >= self.stop_at


# --- servers -----------------------------------------------------------------------------------


class Service:
    """gunicorn serving the project or the reference on a fresh database, players funded."""

    def __init__(self, args, engine, app, name, workdir, template=None):
        self.args, self.engine, self.app, self.name = args, engine, app, name
        self.target = engine.new_database(name, template)
        if app == "reference":
            reference.create_schema(self.target, args.synchronous)
        elif template is None:
            init_db(args, self.target)
        self.server = Gunicorn(self.target, name=name, workers=args.workers, log_dir=workdir, app=APPS[app][-1],
                               options=APPS[app][:-1], **settings(args))
        self.server.start()
        self.access = self.server.access_log  # "pid status method path" per request
        self.port = self.server.port
        self.players = [f"load-{i:03d}" for i in range(args.players)]
        for i, player in enumerate(self.players):
            self.server.deposit(player, DEPOSIT, reference=f"{name}-{i}")

    def shares(self):
        """Callbacks served per worker pid since the last call, from the access log."""
        counts = collections.Counter()
        with contextlib.suppress(FileNotFoundError):
            for line in self.access.read_text().splitlines():
                pid, _, _, path = line.split(" ", 3)
                if path.startswith("/callback"):
                    counts[pid.strip("<>")] += 1
        self.access.write_text("")
        return counts

    def books(self):
        if self.app == "project":
            return reconcile(self.args, self.target, f"{self.name}: ")
        return check_reference(self.target)

    def stop(self, keep=False):
        self.server.stop()
        if not keep:
            self.engine.drop(self.target)


def stats(results, measure_from):
    """Rate and latency (ms) of the results due from `measure_from` on."""
    counted = [(due, answered, ok) for due, answered, ok in results if due >= measure_from]
    latencies = sorted((answered - due) * 1000 for due, answered, _ in counted)
    errors = sum(1 for _, _, ok in counted if not ok)
    if not counted:
        return {"n": 0, "errors": errors, "rate": 0, "p50": None, "p99": None, "max": None}
    span = max(answered for _, answered, _ in counted) - measure_from
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return {"n": len(counted), "errors": errors, "rate": len(counted) / span if span > 0 else 0,
            "p50": pick(0.50), "p99": pick(0.99), "max": latencies[-1]}


def describe(label, s, share):
    top = max(share.values()) / sum(share.values()) if share else None
    shares = ", ".join(f"{n / sum(share.values()):.0%}" for n in sorted(share.values(), reverse=True))
    log(f"  {label:<34} {s['rate']:>7,.0f}/s  p50 {s['p50']:7.1f} ms  p99 {s['p99']:7.1f} ms  "
        f"max {s['max']:7.1f} ms  errors {s['errors']}  workers' shares {shares or '-'}")
    return top


def saturate(service, args):
    start_at = time.monotonic() + 0.5 + 0.2 * args.client_processes
    stop_at = start_at + args.warmup + args.seconds
    specs = [(Games(f"sat-{service.name}", c, 10**9, service.players, stop_at=stop_at), None)
             for c in range(SATURATION_CONNECTIONS)]
    _, results = run_clients(service.port, specs, args.client_processes, start_at=start_at)
    return stats([r for r in results if r[0] < stop_at], start_at + args.warmup), service.shares()


def paced(service, args, rate):
    interval = PACED_CONNECTIONS / rate  # seconds between one connection's requests
    count = int((args.warmup + args.seconds) / interval / 2) + 1  # games per connection
    specs = [(Games(f"paced-{service.name}", c, count, service.players),
              (c * interval / PACED_CONNECTIONS, interval)) for c in range(PACED_CONNECTIONS)]
    start_at, results = run_clients(service.port, specs, args.client_processes)
    return stats(results, start_at + args.warmup), service.shares()


def burst(service, args):
    per = BURST_GAMES // BURST_CONNECTIONS
    prefix = f"burst-{service.name}"
    run_clients(service.port, [(Games(prefix, c, per, service.players, ("start",)), None)
                               for c in range(BURST_CONNECTIONS)], args.client_processes)
    service.shares()
    start_at, results = run_clients(service.port, [(Games(prefix, c, per, service.players, ("finish",)), None)
                                                   for c in range(BURST_CONNECTIONS)], args.client_processes, lead=1.0)
    took = max(answered for _, answered, _ in results) - start_at
    errors = sum(1 for r in results if not r[2])
    return took, len(results), errors, service.shares()


def reconcile_stall(args, engine, template, workdir):
    """Starts paced on a few connections, alone and then while two reconciliations run."""
    service = Service(args, engine, "project", f"stall-{engine.name}", workdir, template)
    try:
        seconds = args.seconds
        count = int(seconds * RECONCILE_RATE) + 1

        def phase(tag):
            specs = [(Games(f"stall-{tag}", c, count, service.players, ("start",)),
                      (c / RECONCILE_RATE / RECONCILE_CONNECTIONS, 1 / RECONCILE_RATE))
                     for c in range(RECONCILE_CONNECTIONS)]
            return run_clients(service.port, specs, 1)

        start_at, alone = phase("alone")
        before = stats(alone, start_at + 1)
        answers = []

        def reconcile_call():
            began = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=600)
            conn.request("GET", "/api/reconcile", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            response = conn.getresponse()
            body = json.loads(response.read() or b"{}")
            answers.append((response.status, body.get("ok", body.get("error")), time.monotonic() - began))
            conn.close()

        threads = [threading.Thread(target=reconcile_call) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        start_at, during = phase("during")
        running = len(answers) < 2  # still running when the starts ended
        for thread in threads:
            thread.join()
        after = stats(during, start_at + 1)
        return before, after, answers, running, service.books()
    finally:
        service.stop(args.keep)


# --- the run ---------------------------------------------------------------------------------


def report_load(name, figures, rate, args):
    """Print the saturated, paced and burst figures of both apps; the verdicts they give."""
    log(f"saturation ({SATURATION_CONNECTIONS} connections, unpaced, {args.seconds:g} s) and paced "
        f"({PACED_CONNECTIONS} connections, {PACED_SHARE:.0%} of the project's peak: {rate:,.0f} callbacks/s "
        f"offered; latency from when each was due):")
    failed = False
    for app in ("project", "reference"):
        for mode in ("saturated", "paced"):
            s, share = figures[app, mode]
            describe(f"{app} {mode}", s, share)
            failed |= s["errors"] > 0
    for app in ("project", "reference"):
        took, n, errors, share = figures[app, "burst"]
        shares = ", ".join(f"{v / sum(share.values()):.0%}" for v in sorted(share.values(), reverse=True))
        log(f"  {app} burst: {n:,} finishes over {BURST_CONNECTIONS} connections answered in {took:.2f} s, "
            f"errors {errors}, workers' shares {shares}; books {'balance' if figures[app, 'books'] else 'DO NOT BALANCE'}")
        failed |= errors > 0 or not figures[app, "books"]
    project_sat, project_sat_share = figures["project", "saturated"]
    project_paced, project_paced_share = figures["project", "paced"]
    reference_sat, reference_paced = figures["reference", "saturated"][0], figures["reference", "paced"][0]
    top = max(max(s.values()) / sum(s.values()) for s in (project_sat_share, project_paced_share))
    took, _, burst_errors, _ = figures["project", "burst"]
    return failed, [
        (name, f"no worker serves more than {TARGETS['share']:.0%} of the callbacks", f"{top:.0%}",
         top <= TARGETS["share"]),
        (name, "paced p99 within 2 x the reference's on sync workers",
         f"{project_paced['p99']:.1f} / {reference_paced['p99']:.1f} ms = "
         f"{project_paced['p99'] / reference_paced['p99']:.2f}",
         project_paced["p99"] <= TARGETS["paced p99 / reference"] * reference_paced["p99"]),
        (name, f"paced p99 below {TARGETS['paced p99 ms']} ms", f"{project_paced['p99']:.1f} ms",
         project_paced["p99"] < TARGETS["paced p99 ms"]),
        (name, f"paced max below {TARGETS['paced max ms']} ms", f"{project_paced['max']:.1f} ms",
         project_paced["max"] < TARGETS["paced max ms"]),
        (name, "saturated callbacks/s at least 0.9 of the reference's",
         f"{project_sat['rate']:,.0f} / {reference_sat['rate']:,.0f} = {project_sat['rate'] / reference_sat['rate']:.2f}",
         project_sat["rate"] >= TARGETS["saturated / reference"] * reference_sat["rate"]),
        (name, f"saturated p99 below {TARGETS['saturated p99 ms']} ms", f"{project_sat['p99']:.1f} ms",
         project_sat["p99"] < TARGETS["saturated p99 ms"]),
        (name, f"burst of {BURST_GAMES:,} finishes answered within {BURST_SECONDS:g} s, books balance",
         f"{took:.2f} s", took <= BURST_SECONDS and not burst_errors and figures["project", "books"]),
    ]


def verdict(met):
    return "met" if met else "MISSED"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--engine", choices=("sqlite", "postgresql", "both"), default="sqlite")
    parser.add_argument("--database-url", help="a PostgreSQL server of yours (a role that may CREATE DATABASE)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10, help="measured, per saturated and paced round")
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--players", type=int, default=16)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--reconcile-games", type=int, default=0,
                        help="also the reconcile stall on a database of this many settled games (0: not run)")
    parser.add_argument("--reconcile-only", action="store_true", help="only the reconcile stall")
    parser.add_argument("--synchronous", default="FULL", choices=("OFF", "NORMAL", "FULL", "EXTRA"))
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--keep", action="store_true", help="keep the databases and logs")
    args = parser.parse_args()
    args.history_players, args.game_ids = 10_000, "uuid"
    names = ("sqlite", "postgresql") if args.engine == "both" else (args.engine,)
    workdir = tempfile.mkdtemp(prefix="wallet-load-")
    engines = {}
    failed = False
    try:
        for name in names:
            engines[name] = SQLiteEngine(args, workdir) if name == "sqlite" else PostgresEngine(args)
            log(engines[name].describe(args))
        log(f"{args.workers} workers; project: gunicorn.conf.py's worker ({worker_class()}); reference: "
            f"bench/reference.py on sync workers; {args.client_processes} client processes; "
            f"{os.cpu_count()} CPUs; LOG_LEVEL={args.log_level}; load average {os.getloadavg()[0]:.1f} "
            "(other processes on the machine take their share of the CPUs from both)")
        verdicts = []
        for name, engine in engines.items():
            log(f"\n=== {name} ===")
            figures = {}
            for app in () if args.reconcile_only else ("project", "reference"):
                service = Service(args, engine, app, f"{name}-{app}", workdir)
                try:
                    figures[app, "saturated"] = saturate(service, args)
                    if app == "project":
                        rate = PACED_SHARE * figures[app, "saturated"][0]["rate"]
                    figures[app, "paced"] = paced(service, args, rate)
                    figures[app, "burst"] = burst(service, args)
                    figures[app, "books"] = service.books()
                finally:
                    service.stop(args.keep)
            if not args.reconcile_only:
                load_failed, load_verdicts = report_load(name, figures, rate, args)
                failed |= load_failed
                verdicts += load_verdicts
            if args.reconcile_games:
                template = engine.new_database(f"template_{args.reconcile_games}")
                init_db(args, template)
                began = time.monotonic()
                engine.load(template, history(args.reconcile_games, args.history_players, args.game_ids))
                log(f"fill: {args.reconcile_games:,} games in {time.monotonic() - began:.0f} s")
                before, after, answers, running, books = reconcile_stall(args, engine, template, workdir)
                if not args.keep:
                    engine.drop(template)
                log(f"  starts alone ({RECONCILE_CONNECTIONS} x {RECONCILE_RATE}/s): p50 {before['p50']:.1f} ms, "
                    f"p99 {before['p99']:.1f} ms, max {before['max']:.1f} ms")
                log(f"  starts while two GET /api/reconcile ran{'' if running else ' (they ended first)'}: "
                    f"p50 {after['p50']:.1f} ms, p99 {after['p99']:.1f} ms, max {after['max']:.1f} ms, errors {after['errors']}")
                for status, outcome, seconds in answers:
                    log(f"  reconcile answered {status} ({outcome}) after {seconds:.1f} s")
                failed |= after["errors"] > 0 or not books
                verdicts.append((name, "with two reconciles on the books, starts within 100 ms of their usual time",
                                 f"max {after['max']:.1f} ms against p50 {before['p50']:.1f} ms alone",
                                 after["max"] <= before["p50"] + TARGETS["stall ms"]))
        log(f"\nload average at the end {os.getloadavg()[0]:.1f}; issue 20's targets:")
        for name, target, figure, met in verdicts:
            log(f"  [{verdict(met):>6}] {name:<10} {target}: {figure}")
    finally:
        for engine in engines.values():
            engine.close(args.keep)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept {workdir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
