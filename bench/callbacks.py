"""Load benchmark of the provider callbacks (`start` / `finish`) against a real gunicorn.

Run it with the interpreter that has the service's requirements (`pip install -r
requirements.txt`): it starts gunicorn and the Flask CLI with that interpreter, reads the
service's setting names from app.py, and works from any directory::

    .venv/bin/python bench/callbacks.py                               # 10 s on an empty database
    .venv/bin/python bench/callbacks.py --games-preloaded 1000000     # empty vs 1M settled games
    .venv/bin/python bench/callbacks.py --synchronous NORMAL          # the durability trade-off
    .venv/bin/python bench/callbacks.py --seconds 120                 # soak: worker RSS start/end
    .venv/bin/python bench/callbacks.py --replication                 # Litestream to a file replica: off vs on
    .venv/bin/python bench/callbacks.py --profile /tmp/wallet-profile # cProfile the workers

Per round: a fresh database in a temporary directory (TMPDIR decides where: put it on the
disk you mean to measure, at synchronous=FULL the fsync is most of a callback), its schema
from `flask --app app init-db`, with --games-preloaded N settled games bulk-loaded first
(consistent with the books); gunicorn as the Procfile starts it (`python -m gunicorn
"app:create_app()"`, LOG_LEVEL=WARNING: no per-callback log line); --players wallets funded
through the operator API; then --connections provider clients, each on its own HTTP
connection, loop `start` (bet 1.00), `finish` (win x2 or lose), each followed with
probability --duplicates by a byte-identical re-send of a recent callback.

Printed per round: callbacks/s, latency p50/p95/p99/max (from the send, connect included, to
the answer's last byte), errors (a non-200, a wrong answer or a connection error), each
worker's RSS at the start and end of the load, the CPU of the workers, of the load generator
and of anything else (with a warning when other processes took a real share of the machine),
and whether every balance is what the accepted callbacks should leave. At the end `flask
wallet reconcile --json` on each database, a summary and, with --games-preloaded, callbacks/s
empty vs preloaded and their ratio.

With --replication, two empty databases are measured in the same run: one as above, one
served with LITESTREAM_REPLICA_URL set to a file replica in the temporary directory (the
service runs Litestream itself, see replication.py). For the replicated rounds it also prints
the CPU of Litestream and of its supervisor, the LTX files uploaded (one object store PUT
each), and how long after the last answer /healthz reported a sync that holds every
callback; at the end it restores the replica by hand (`litestream restore`) and checks that the
copy holds the same balances as the database and that its books balance.

Exit status 1 on any error, wrong balance or books that do not balance (the restored copy's
included). The targets (2
workers, synchronous=FULL, 16 connections: p99 < 100 ms, zero errors, preloaded / empty
callbacks/s >= 0.9) are printed as met or missed; they do not change the exit status.
"""

import argparse
import array
import collections
import contextlib
import datetime
import decimal
import http.client
import json
import multiprocessing
import os
import platform
import random
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from app import ENVIRONMENT  # noqa: E402  (the service's settings: none may leak in)
CALLBACK_TOKEN = "bench-callback-token-7f3a9c"
ADMIN_TOKEN = "bench-admin-token-2b8e41"
DEPOSIT = "1000000.00"
BET = "1.00"  # as sent in the callback's JSON
BET_MINOR = 100
WIN_PAYOUT = 2
DUPLICATE_WINDOW = 32  # a duplicate re-sends one of the client's last 32 callbacks
CLK_TCK = os.sysconf("SC_CLK_TCK")

START = (
    '{"type": "start", "session": {"id": "%s", "playerId": "%s", "gameId": "Mines", '
    '"currency": "USD"}, "game": {"id": "%s", "status": "in_progress", "payout": 0, '
    '"profit": 0, "bet": ' + BET + ', "round": 1}, "data": {"bet": ' + BET + ', '
    '"allBetAmount": ' + BET + '}, "roundData": {}, "time": %d}'
)
FINISH = (
    '{"type": "finish", "session": {"id": "%s", "playerId": "%s", "gameId": "Mines", '
    '"currency": "USD"}, "game": {"id": "%s", "status": "%s", "payout": %s, "profit": %s, '
    '"bet": ' + BET + ', "round": 1}, "data": {"balanceUpdateDelay": 1000}, "time": %d}'
)
EXPECTED_START = {"result": True}
EXPECTED_FINISH = {}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help: the module docstring as written, and every option's default."""


def log(*parts):
    print(*parts, flush=True)


# --- the database -----------------------------------------------------------------------


def server_env(db_path, synchronous, port=None, workers=None):
    """The service's environment: the machine's, minus anything that would configure it."""
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT + ("GUNICORN_CMD_ARGS", "FLASK_APP")}
    env.update(
        DATABASE_PATH=str(db_path),
        CALLBACK_TOKEN=CALLBACK_TOKEN,
        ADMIN_TOKEN=ADMIN_TOKEN,
        CURRENCY_DECIMALS="USD=2",
        SQLITE_SYNCHRONOUS=synchronous,
        LOG_LEVEL="WARNING",
    )
    if port is not None:
        env["PORT"] = str(port)
    if workers is not None:
        env["WEB_CONCURRENCY"] = str(workers)
    return env


def flask_cli(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", *args],
        cwd=REPO, env=env, capture_output=True, text=True,
    )


def init_db(env):
    done = flask_cli(env, "init-db")
    if done.returncode != 0:
        sys.exit(f"init-db failed:\n{done.stdout}{done.stderr}")


# (bet minor units, multiplier text): a few that round half-to-even (1 x 2.5 = 2.5 -> 2,
# 3 x 0.5 = 1.5 -> 2, 5 x 0.3 = 1.5 -> 2, 250 x 1.25 = 312.5 -> 312).
HISTORY_BETS = (100, 100, 100, 50, 250, 1000, 1, 3, 5, 20)
HISTORY_MULTIPLIERS = ("2", "2", "2.5", "1.5", "0.5", "10", "1.25", "0.3", "1")


def _history_outcomes():
    """(bet, status, payout text, credit, profit text) combinations; 45% of them lost."""
    combos = []
    for bet in HISTORY_BETS:
        for multiplier in HISTORY_MULTIPLIERS:
            product = decimal.Decimal(bet) * decimal.Decimal(multiplier)
            credit = int(product.to_integral_value(rounding=decimal.ROUND_HALF_EVEN))
            profit = (decimal.Decimal(multiplier) - 1) * decimal.Decimal(bet).scaleb(-2)
            combos.append((bet, "won", multiplier, credit, str(profit)))
    wins = len(combos)
    losses = [(bet, "lost", "0", 0, str(-decimal.Decimal(bet).scaleb(-2))) for bet in HISTORY_BETS]
    # weights: the wins share 55%, the losses 45%
    weights = [55 / wins] * wins + [45 / len(losses)] * len(losses)
    return combos + losses, weights


def preload(db_path, games, players, game_ids, seed=1):
    """Insert `games` settled games of history for `players` wallets; return the seconds taken.

    The books balance: each wallet gets one deposit (an `operations` row and a ledger row)
    covering every bet it could lose, then per game a bet and a payout ledger row with the
    running balance_after, the game row and its two audit rows. One transaction with the
    journal and synchronous off; the caller fsyncs the file afterwards.
    """
    started = time.perf_counter()
    rng = random.Random(seed)
    combos, weights = _history_outcomes()
    picks = rng.choices(range(len(combos)), weights, k=games)
    now = int(time.time() * 1000)
    span = 30 * 24 * 3600 * 1000  # the history covers the last 30 days, up to an hour ago
    first = now - span - 3600 * 1000
    step = span / max(games, 1)
    per_wallet = -(-games // players)
    deposit = (per_wallet * max(HISTORY_BETS) // 100 + 1000) * 100  # whole units, in minor units
    if game_ids == "random":
        ids = [f"{rng.getrandbits(96):024x}" for _ in range(games)]
    else:  # like the provider's ids: time in seconds, then per-id bits
        ids = [f"{(first + int(k * step)) // 1000:08x}{rng.getrandbits(64):016x}" for k in range(games)]
    names = ("Mines", "Plinko", "Dice", "Roulette")
    balances = [deposit] * players

    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1000000")  # 1 GB: every index stays in memory
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO currencies (currency, decimals) VALUES ('USD', 2) ON CONFLICT DO NOTHING")
    deposit_text = f"{deposit // 100}.00"
    conn.executemany(
        "INSERT INTO operations (reference, kind, player_id, currency, amount, response, created_at) "
        "VALUES (?, 'deposit', ?, 'USD', ?, ?, ?)",
        [
            (f"hist-dep-{w}", f"hist-{w:06d}", deposit,
             json.dumps({"balance": deposit_text, "currency": "USD", "display_balance": deposit_text,
                         "pending": [], "player_id": f"hist-{w:06d}"}), first - 1000)
            for w in range(players)
        ],
    )

    def game_rows():
        for k in range(games):
            bet, status, payout, credit, profit = combos[picks[k]]
            w = k % players
            started_at = first + int(k * step)
            settled_at = started_at + 1500
            yield (
                ids[k], status, f"hist-{w:06d}", w + 1, bet, f"s-{w}", names[k & 3], str(k),
                str(bet / 100), started_at - 40, started_at, payout, profit, credit, 1000,
                settled_at - 30, settled_at,
            )

    conn.executemany(
        "INSERT INTO games (game_id, status, player_id, currency, wallet_id, bet, session_id, game_name, "
        "round, all_bet_amount, round_data, start_time, started_at, payout, profit, credit, "
        "balance_update_delay, finish_time, settled_at) "
        "VALUES (?, ?, ?, 'USD', ?, ?, ?, ?, ?, ?, '{}', ?, ?, ?, ?, ?, ?, ?, ?)",
        game_rows(),
    )

    def ledger_rows():
        for w in range(players):
            yield (w + 1, deposit, deposit, "deposit", None, f"hist-dep-{w}", first - 1000)
        for k in range(games):
            bet, _, _, credit, _ = combos[picks[k]]
            w = k % players
            started_at = first + int(k * step)
            balance = balances[w] - bet
            yield (w + 1, -bet, balance, "bet", ids[k], None, started_at)
            balance += credit
            balances[w] = balance
            yield (w + 1, credit, balance, "payout", ids[k], None, started_at + 1500)

    conn.executemany(
        "INSERT INTO ledger (wallet_id, amount, balance_after, kind, game_id, reference, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        ledger_rows(),
    )
    conn.executemany(
        "INSERT INTO wallets (id, player_id, currency, balance, updated_at) VALUES (?, ?, 'USD', ?, ?)",
        [(w + 1, f"hist-{w:06d}", balances[w], now - 3600 * 1000) for w in range(players)],
    )

    def audit_rows():
        for k in range(games):
            bet, status, payout, credit, _ = combos[picks[k]]
            w = k % players
            started_at = first + int(k * step)
            player = f"hist-{w:06d}"
            yield (started_at, "start", ids[k], player, f"debited {bet / 100:.2f} USD",
                   '{"result": true}',
                   f'{{"type": "start", "game": {{"id": "{ids[k]}", "bet": {bet / 100:.2f}}}}}'.encode(),
                   )
            yield (started_at + 1500, "finish", ids[k], player,
                   f"{status}: credited {credit / 100:.2f} USD", "{}",
                   f'{{"type": "finish", "game": {{"id": "{ids[k]}", "payout": {payout}}}}}'.encode())

    conn.executemany(
        "INSERT INTO callbacks (received_at, type, game_id, player_id, outcome, reason, status_code, "
        "response, body, duration_ms) VALUES (?, ?, ?, ?, 'accepted', ?, 200, ?, ?, 1.0)",
        audit_rows(),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA locking_mode = NORMAL")
    conn.execute("PRAGMA journal_mode = WAL")  # what the service uses; it sets it again anyway
    conn.close()
    return time.perf_counter() - started


# --- the server -------------------------------------------------------------------------


def free_port():
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


PROFILE_CONFIG = """
import cProfile, os, time
# -c replaces ./gunicorn.conf.py: run the repository's first, for its settings and hooks.
exec(compile(open(%r).read(), %r, "exec"))
_profiles = {}

def post_worker_init(worker):  # the app is loaded: profile the requests, not the imports
    _profiles[os.getpid()] = profile = cProfile.Profile(%s)
    profile.enable()

def worker_exit(server, worker):
    profile = _profiles.pop(os.getpid(), None)
    if profile is not None:
        profile.disable()
        profile.dump_stats(os.path.join(%r, "worker-%%d.prof" %% os.getpid()))
"""


class Server:
    """gunicorn as the Procfile runs it, in its own process group; always stopped."""

    def __init__(self, env, workdir, workers, profile_dir=None, extra_args=(), profile_clock="wall"):
        self.env, self.workers = env, workers
        self.port = int(env["PORT"])
        self.log_path = Path(workdir) / f"gunicorn-{self.port}.log"
        command = [sys.executable, "-m", "gunicorn"]
        if profile_dir:
            config = Path(workdir) / "profile_conf.py"
            timer = "time.process_time" if profile_clock == "cpu" else "time.perf_counter"
            service_config = str(REPO / "gunicorn.conf.py")
            config.write_text(PROFILE_CONFIG % (service_config, service_config, timer, str(profile_dir)))
            command += ["-c", str(config)]
        # The Procfile's command, bound to loopback only: the bench's tokens are in this file.
        command += ["--bind", f"127.0.0.1:{self.port}", *extra_args, "app:create_app()"]
        self.log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=self.log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = request("GET", self.port, "/healthz")
                if status == 200 and len(self.worker_pids()) == self.workers:
                    return
            time.sleep(0.1)
        self.stop()
        sys.exit(f"gunicorn did not become healthy; its log:\n{self.log_tail()}")

    def worker_pids(self):
        """The master's workers: its children (from /proc/<pid>/stat, the 4th field is the ppid)
        but the replication supervisor."""
        return [pid for pid in self.children() if b"replication.py" not in _cmdline(pid)]

    def replication_pids(self):
        """The replication supervisor and its Litestream, from the status file it writes."""
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(Path(f"{self.env['DATABASE_PATH']}-replication.json").read_text())
            return [pid for pid in (state["supervisor_pid"], state["litestream_pid"]) if pid]
        return []

    def children(self):
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == self.process.pid:
                pids.append(int(entry))
        return sorted(pids)

    def stop(self):
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log_file.close()

    def log_tail(self, lines=40):
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _cmdline(pid):
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return b""


def rss_kb(pid):
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    return 0.0


def machine_idle():
    """(idle + iowait, total) jiffies of the whole machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return values[3] + values[4], sum(values[:8])


def request(method, port, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def admin(method, port, path, payload=None):
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    body = None
    if payload is not None:
        headers["Content-Type"] = "application/json"
        body = json.dumps(payload).encode()
    status, raw = request(method, port, path, body, headers)
    return status, json.loads(raw)


# --- the load ---------------------------------------------------------------------------


def client_thread(client, port, players, duplicates, game_ids, repetition, start_at, measure_at, stop_at, out):
    """One provider connection: start/finish games until stop_at, checking every answer.

    Its game ids are new in every repetition: a round on a database an earlier round used
    must not re-send that round's games (they would be answered as duplicates).
    """
    rng = random.Random(f"{repetition}-{client}")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    path = f"/callback/{CALLBACK_TOKEN}"
    headers = {"Content-Type": "application/json"}
    latencies, ends = array.array("d"), array.array("d")
    counts = collections.Counter()
    player_moves = collections.Counter()  # player -> minor units moved
    errors, sent = [], collections.deque(maxlen=DUPLICATE_WINDOW)
    player = players[client % len(players)]
    session = f"bench-session-{client}"
    sequence = repetition << 32

    def send(body, expected, kind):
        began = time.monotonic()
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            status, raw = None, repr(exc).encode()
        ended = time.monotonic()
        if began >= measure_at:
            latencies.append(ended - began)
            ends.append(ended)
            counts[kind] += 1
        counts["all " + kind] += 1
        ok = False
        if status == 200:
            with contextlib.suppress(ValueError):
                ok = json.loads(raw) == expected
        if not ok:
            counts["errors"] += 1
            if len(errors) < 5:
                errors.append(f"{kind}: {status} {raw[:300]!r}")
            if status is None:
                time.sleep(0.01)
        return ok

    def maybe_duplicate():
        if sent and rng.random() < duplicates:
            body, expected = rng.choice(sent)
            send(body, expected, "duplicate")

    while time.monotonic() < start_at:
        time.sleep(min(0.01, max(start_at - time.monotonic(), 0)))
    while time.monotonic() < stop_at:
        sequence += 1
        if game_ids == "random":
            game_id = f"{rng.getrandbits(96):024x}"
        else:
            game_id = f"{int(time.time()):08x}{client:04x}{sequence:012x}"
        start = (START % (session, player, game_id, int(time.time()))).encode()
        if send(start, EXPECTED_START, "start"):
            player_moves[player] -= BET_MINOR
        sent.append((start, EXPECTED_START))
        maybe_duplicate()
        # the finish is sent even past stop_at: no game is left open
        won = rng.random() < 0.5
        finish = (FINISH % (session, player, game_id, "win" if won else "lose",
                            WIN_PAYOUT if won else 0, 1 if won else -1, int(time.time() * 1000))).encode()
        if send(finish, EXPECTED_FINISH, "finish") and won:
            player_moves[player] += BET_MINOR * WIN_PAYOUT
        sent.append((finish, EXPECTED_FINISH))
        maybe_duplicate()
    conn.close()
    out.append({
        "latencies": latencies.tobytes(), "ends": ends.tobytes(), "counts": dict(counts),
        "moves": dict(player_moves), "errors": errors,
    })


def client_process(clients, port, players, duplicates, game_ids, repetition, start_at, measure_at, stop_at,
                   queue):
    out = []
    threads = [
        threading.Thread(
            target=client_thread,
            args=(c, port, players, duplicates, game_ids, repetition, start_at, measure_at, stop_at, out),
        )
        for c in clients
    ]
    for thread in threads:
        thread.start()
    while time.monotonic() < measure_at:
        time.sleep(0.005)
    cpu_at_measure = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    while time.monotonic() < stop_at:
        time.sleep(0.005)
    cpu_at_stop = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    for thread in threads:
        thread.join()
    queue.put({"results": out, "cpu": cpu_at_stop - cpu_at_measure})


def run_load(server, args, players, repetition):
    """Drive the load; return the figures of the measured window."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    processes = max(1, min(args.client_processes, args.connections))
    start_at = time.monotonic() + 0.5
    measure_at = start_at + args.warmup
    stop_at = measure_at + args.seconds
    procs = [
        context.Process(
            target=client_process,
            args=(list(range(i, args.connections, processes)), server.port, players, args.duplicates,
                  args.game_ids, repetition, start_at, measure_at, stop_at, queue),
        )
        for i in range(processes)
    ]
    for proc in procs:
        proc.start()
    workers = server.worker_pids()
    helpers = server.replication_pids()
    time.sleep(max(start_at - time.monotonic(), 0))
    rss_start = {pid: rss_kb(pid) for pid in workers}
    time.sleep(max(measure_at - time.monotonic(), 0))
    cpu_start = {pid: cpu_seconds(pid) for pid in workers + helpers}
    idle_start = machine_idle()
    time.sleep(max(stop_at - time.monotonic(), 0))
    cpu_end = {pid: cpu_seconds(pid) for pid in workers + helpers}
    idle_end = machine_idle()
    reports = [queue.get(timeout=args.seconds + 120) for _ in procs]
    for proc in procs:
        proc.join()
    rss_end = {pid: rss_kb(pid) for pid in server.worker_pids()}

    latencies, counts, moves, errors = array.array("d"), collections.Counter(), collections.Counter(), []
    in_window = 0
    for report in reports:
        for result in report["results"]:
            lat, ends = array.array("d"), array.array("d")
            lat.frombytes(result["latencies"])
            ends.frombytes(result["ends"])
            latencies.extend(lat)
            in_window += sum(1 for end in ends if end <= stop_at)
            counts.update(result["counts"])
            moves.update(result["moves"])
            errors.extend(result["errors"])
    ordered = sorted(latencies)

    def pct(q):
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] * 1000

    jiffies = max(idle_end[1] - idle_start[1], 1)
    idle = (idle_end[0] - idle_start[0]) / jiffies
    server_cpu = sum(cpu_end[p] - cpu_start[p] for p in workers)
    client_cpu = sum(report["cpu"] for report in reports)
    replication_cpu = sum(cpu_end[p] - cpu_start[p] for p in helpers)
    busy = (jiffies - (idle_end[0] - idle_start[0])) / CLK_TCK
    others = max(busy - server_cpu - client_cpu - replication_cpu, 0.0)  # this script's parent, other processes
    return {
        "callbacks": in_window,
        "per_second": in_window / args.seconds,
        "p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "max": pct(1.0),
        "counts": counts, "errors": counts["errors"], "error_samples": errors, "moves": moves,
        "rss_start": rss_start, "rss_end": rss_end, "workers": workers,
        "server_cpu": server_cpu, "client_cpu": client_cpu, "idle": idle, "others": others,
        "replication_cpu": replication_cpu if helpers else None,
    }


# --- rounds -----------------------------------------------------------------------------


def prepare_database(args, games, workdir, label):
    """A fresh database (schema from `flask init-db`), with `games` of history if asked."""
    db_path = Path(workdir) / f"wallet-{label}.db"
    env = server_env(db_path, args.synchronous)
    init_db(env)
    fill_seconds = None
    if games:
        fill_seconds = preload(db_path, games, args.history_players, args.game_ids)
        began = time.perf_counter()
        # Write the fill out now, or the service's first checkpoint fsync would pay for it.
        fd = os.open(db_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        sync_seconds = time.perf_counter() - began
        size = sum(p.stat().st_size for p in db_path.parent.glob(db_path.name + "*"))
        log(f"fill ({label}): {games:,} games, {args.history_players:,} wallets, {2 * games:,} ledger rows, "
            f"{2 * games:,} audit rows in {fill_seconds:.1f} s, then fsync {sync_seconds:.1f} s "
            f"({size / 2**20:,.0f} MiB)")
    return {"label": label, "games": games, "path": db_path, "env": env, "fill_seconds": fill_seconds,
            "replica": None}


def run_round(args, database, workdir, repetition):
    """Serve `database` with gunicorn, fund the players, drive the load, check the balances."""
    label = database["label"]
    log(f"\n=== round: {label} ({database['games']:,} games preloaded)"
        + (f", repetition {repetition + 1}/{args.repeat}" if args.repeat > 1 else "") + " ===")
    profile_dir = None
    if args.profile:
        profile_dir = Path(args.profile) / f"{label}-{repetition + 1}"
        profile_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = server_env(database["path"], args.synchronous, port, args.workers)
    if database["replica"]:
        env["LITESTREAM_REPLICA_URL"] = database["replica"]
    server = Server(env, workdir, args.workers, profile_dir, args.gunicorn_arg, args.profile_clock)
    try:
        server.wait_ready()
        players = [f"bench-{i:03d}" for i in range(args.players)]
        before = {}
        for i, player in enumerate(players):
            status, body = admin("POST", port, f"/api/players/{player}/deposits",
                                 {"currency": "USD", "amount": DEPOSIT,
                                  "reference": f"bench-{label}-{repetition}-{i}"})
            if status != 201:
                raise SystemExit(f"deposit for {player} failed: {status} {body}")
            before[player] = minor_units(body["balance"])
        log(f"gunicorn pid {server.process.pid} on 127.0.0.1:{port}, workers {server.worker_pids()}, "
            f"{len(players)} players funded with {DEPOSIT} USD")
        uploads = replica_files(database)
        result = run_load(server, args, players, repetition)
        if database["replica"]:
            result["replica_lag"] = replica_lag(port, time.time())
            result["uploads"] = replica_files(database) - uploads
        # every player's balance: what it held, minus accepted bets, plus wins (nothing twice)
        wrong = []
        for player in players:
            status, body = admin("GET", port, f"/api/players/{player}/balances/USD")
            expected = before[player] + result["moves"].get(player, 0)
            got = minor_units(body["balance"]) if status == 200 else None
            if got != expected:
                wrong.append(f"{player}: balance {got} minor units, expected {expected}")
        result["wrong_balances"] = wrong
    finally:
        server.stop()
    if args.profile:
        print_profiles(profile_dir)
    print_result(args, result)
    result["label"], result["games"] = label, database["games"]
    return result


def replica_files(database):
    """LTX files in the file replica's level 0: one per upload (an object store PUT)."""
    if not database["replica"]:
        return 0
    level = Path(database["replica"].removeprefix("file://")) / "ltx" / "0"
    return len(list(level.glob("*.ltx"))) if level.exists() else 0


def replica_lag(port, answered_at, timeout=60):
    """Seconds after the last answer until /healthz reports a sync that holds every callback."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
            status, raw = request("GET", port, "/healthz")
            health = json.loads(raw)
            last = health.get("replication_last_sync")
            if health.get("replication") == "ok" and last and \
                    datetime.datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp() >= answered_at:
                return time.time() - answered_at
        time.sleep(0.05)
    return None


def check_replica(database, workdir):
    """Restore the replica by hand, as an operator would, and compare it with the database."""
    copy = Path(workdir) / f"restored-{database['label']}.db"
    litestream = Path(sys.executable).with_name("litestream")
    done = subprocess.run([str(litestream), "restore", "-integrity-check", "full", "-o", str(copy),
                           database["replica"]],
                          capture_output=True, text=True)
    if done.returncode != 0:
        log(f"restore of {database['replica']} failed:\n{done.stdout}{done.stderr}")
        return False
    query = "SELECT player_id, currency, balance FROM wallets ORDER BY player_id, currency"
    with contextlib.closing(sqlite3.connect(database["path"])) as live, \
            contextlib.closing(sqlite3.connect(copy)) as restored:
        same = live.execute(query).fetchall() == restored.execute(query).fetchall()
        callbacks = restored.execute("SELECT count(*) FROM callbacks").fetchone()[0]
    env = dict(database["env"], DATABASE_PATH=str(copy))
    report = reconcile(env)
    log(f"restored the replica by hand ({callbacks:,} callbacks): balances "
        f"{'identical to the database' if same else 'DIFFERENT from the database'}")
    return same and report["ok"]


def minor_units(text):
    return int(decimal.Decimal(text).scaleb(2))


def reconcile(env):
    began = time.perf_counter()
    done = flask_cli(env, "wallet", "reconcile", "--json")
    seconds = time.perf_counter() - began
    try:
        report = json.loads(done.stdout)
    except ValueError:
        log(f"reconcile: no JSON (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return {"ok": False, "discrepancies": ["reconcile failed"]}
    games = ", ".join(f"{k} {v:,}" for k, v in report["games"].items())
    verdict = "ok, the books balance" if report["ok"] else f"{len(report['discrepancies'])} discrepancies"
    log(f"reconcile ({seconds:.1f} s, exit {done.returncode}): {verdict}; wallets {report['wallets']:,}; "
        f"games: {games}")
    for problem in report["discrepancies"][:10]:
        log(f"  DISCREPANCY: {problem}")
    report["ok"] = report["ok"] and done.returncode == 0
    return report


def print_result(args, r):
    c = r["counts"]
    log(f"callbacks in the {args.seconds:g} s window: {r['callbacks']:,} -> {r['per_second']:,.0f} callbacks/s "
        f"(measured sends: {c['start']:,} start, {c['finish']:,} finish, {c['duplicate']:,} duplicate; "
        f"all sends incl. warm-up: {c['all start'] + c['all finish'] + c['all duplicate']:,})")
    log(f"latency ms: p50 {r['p50']:.1f}  p95 {r['p95']:.1f}  p99 {r['p99']:.1f}  max {r['max']:.1f}")
    log(f"errors: {r['errors']}" + "".join(f"\n  {sample}" for sample in r["error_samples"]))
    log(f"balances: {'all as expected' if not r['wrong_balances'] else r['wrong_balances']}")
    for pid in r["workers"]:
        start, end = r["rss_start"].get(pid), r["rss_end"].get(pid)
        log(f"worker {pid} RSS: start {fmt_kb(start)}, end {fmt_kb(end)}")
    n = max(r["callbacks"], 1)
    log(f"CPU in the window: workers {r['server_cpu']:.1f} s ({r['server_cpu'] / n * 1e3:.2f} ms/callback), "
        f"load generator {r['client_cpu']:.1f} s ({r['client_cpu'] / n * 1e3:.2f} ms/callback, "
        f"{args.client_processes} processes), anything else {r['others']:.1f} s, "
        f"machine idle+iowait {r['idle']:.0%}")
    if r.get("replication_cpu") is not None:
        lag = "never" if r["replica_lag"] is None else f"{r['replica_lag']:.2f} s"
        log(f"replication: Litestream and its supervisor {r['replication_cpu']:.1f} s CPU "
            f"({r['replication_cpu'] / n * 1e3:.2f} ms/callback); {r['uploads']:,} LTX files uploaded "
            f"({r['uploads'] / (args.seconds + args.warmup):.1f}/s); /healthz reported a sync holding the last "
            f"answer {lag} after it")
    if r["others"] > 0.1 * args.seconds * len(os.sched_getaffinity(0)):
        log(f"WARNING: other processes used {r['others']:.1f} CPU-seconds of the window "
            f"({r['others'] / args.seconds / len(os.sched_getaffinity(0)):.0%} of the machine): "
            f"the figures are depressed; rerun on a quiet machine")


def fmt_kb(kb):
    return "gone" if kb is None else f"{kb / 1024:.1f} MiB"


def print_profiles(profile_dir):
    import pstats

    files = sorted(str(p) for p in Path(profile_dir).glob("worker-*.prof"))
    if not files:
        log(f"profile: no worker profile written in {profile_dir}")
        return
    stats = pstats.Stats(*files, stream=sys.stdout)
    log(f"\nprofile of the workers ({len(files)} files in {profile_dir}), top 25 by cumulative time:")
    stats.sort_stats("cumulative").print_stats(25)
    log("top 25 by own time:")
    stats.sort_stats("tottime").print_stats(25)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers (WEB_CONCURRENCY)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent provider clients")
    parser.add_argument("--seconds", type=float, default=10, help="measured load per round")
    parser.add_argument("--warmup", type=float, default=1,
                        help="seconds of load before the measurement (answers checked, not counted)")
    parser.add_argument("--games-preloaded", type=int, default=0, metavar="N",
                        help="settled games bulk-loaded before the load; also runs a round on an empty "
                             "database and prints the two callbacks/s and their ratio")
    parser.add_argument("--no-baseline", action="store_true",
                        help="with --games-preloaded, skip the round on an empty database")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds per database, alternating empty and preloaded; the ratio uses "
                             "the medians (one noisy moment on a shared machine does not decide it)")
    parser.add_argument("--duplicates", type=float, default=0.1,
                        help="probability, after each callback, of re-sending one already sent")
    parser.add_argument("--synchronous", default="FULL", choices=["OFF", "NORMAL", "FULL", "EXTRA"],
                        type=str.upper, help="SQLITE_SYNCHRONOUS of the service")
    parser.add_argument("--client-processes", type=int, default=2,
                        help="load-generator processes; the connections are threads spread over them")
    parser.add_argument("--players", type=int, default=16, help="funded players the clients bet for")
    parser.add_argument("--history-players", type=int, default=1000,
                        help="wallets the preloaded games are spread over")
    parser.add_argument("--game-ids", choices=["objectid", "random"], default="objectid",
                        help="objectid: time-ordered hex like the provider's; random: 96 random bits")
    parser.add_argument("--replication", action="store_true",
                        help="also measure an empty database replicated by Litestream to a file replica "
                             "in the temporary directory (LITESTREAM_REPLICA_URL), and print the two "
                             "callbacks/s and their ratio")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (databases, gunicorn logs)")
    parser.add_argument("--profile", metavar="DIR",
                        help="run each worker under cProfile, keep the profiles in DIR and print them "
                             "merged (slower: for where the time goes, not for the figures)")
    parser.add_argument("--profile-clock", choices=["wall", "cpu"], default="wall",
                        help="wall: waits for the write lock and the fsync show up (in "
                             "sqlite3 execute); cpu: only what the workers compute")
    parser.add_argument("--gunicorn-arg", action="append", default=[], metavar="ARG",
                        help="extra gunicorn argument, repeatable, e.g. --gunicorn-arg=-c "
                             "--gunicorn-arg=/tmp/hooks.py for your own worker hooks")
    args = parser.parse_args()
    for name in ("workers", "connections", "repeat", "client_processes", "players", "history_players"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.replication and args.games_preloaded:
        parser.error("--replication compares two empty databases; run it without --games-preloaded")
    if args.seconds <= 0 or args.warmup < 0 or args.games_preloaded < 0 or not 0 <= args.duplicates <= 1:
        parser.error("--seconds must be above 0, --warmup and --games-preloaded not negative, "
                     "--duplicates between 0 and 1")

    log(f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), Python "
        f"{platform.python_version()}, {platform.platform()}")
    log(f"settings: {args.workers} gunicorn sync workers, {args.connections} connections over "
        f"{args.client_processes} client processes, synchronous={args.synchronous}, "
        f"{args.games_preloaded:,} games preloaded{', replication off vs on' if args.replication else ''}, duplicates {args.duplicates:.0%}, "
        f"{args.seconds:g} s measured after {args.warmup:g} s warm-up, game ids {args.game_ids}, "
        f"LOG_LEVEL=WARNING (no per-callback log line){f', PROFILED ({args.profile_clock} clock)' if args.profile else ''}")
    workdir = tempfile.mkdtemp(prefix="wallet-bench-")
    log(f"temporary directory: {workdir}")
    rounds, books = [], {}
    try:
        databases = []
        if args.games_preloaded and not args.no_baseline:
            databases.append(prepare_database(args, 0, workdir, "empty"))
        label = "preloaded" if args.games_preloaded else "empty"
        databases.append(prepare_database(args, args.games_preloaded, workdir, label))
        if args.replication:
            databases.append(prepare_database(args, 0, workdir, "replicated"))
            databases[-1]["replica"] = (Path(workdir) / "replica").as_uri()
        for repetition in range(args.repeat):  # alternated, so that a noisy moment hits both
            for database in databases:
                rounds.append(run_round(args, database, workdir, repetition))
        log("")
        for database in databases:
            log(f"reconciliation of the {database['label']} database:")
            books[database["label"]] = reconcile(database["env"])
            if database["replica"]:
                books[database["label"]]["ok"] &= check_replica(database, workdir)
    finally:
        if args.keep:
            log(f"kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    log("\n=== summary ===")
    log(f"{'round':<10} {'games':>10} {'callbacks/s':>12} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'errors':>7} {'balances':>9} {'books':>6}")
    for r in rounds:
        log(f"{r['label']:<10} {r['games']:>10,} {r['per_second']:>12,.0f} {r['p50']:>8.1f} {r['p95']:>8.1f} "
            f"{r['p99']:>8.1f} {r['max']:>8.1f} {r['errors']:>7} {'ok' if not r['wrong_balances'] else 'WRONG':>9} "
            f"{'ok' if books[r['label']]['ok'] else 'WRONG':>6}")
    failed = any(r["errors"] or r["wrong_balances"] for r in rounds) or not all(b["ok"] for b in books.values())
    targets = [f"p99 < 100 ms: {'met' if all(r['p99'] < 100 for r in rounds) else 'MISSED'}",
               f"zero errors: {'met' if not any(r['errors'] for r in rounds) else 'MISSED'}"]
    if len(databases) == 2:
        base, other = (db["label"] for db in databases)
        rates = {db["label"]: sorted(r["per_second"] for r in rounds if r["label"] == db["label"])
                 for db in databases}
        median = {label: statistics.median(values) for label, values in rates.items()}
        ratio = median[other] / max(median[base], 1e-9)
        described = {"preloaded": f"{args.games_preloaded:,} games preloaded", "replicated": "replicated"}
        log(f"callbacks/s{' (median of ' + str(args.repeat) + ')' if args.repeat > 1 else ''}: "
            f"{base} {median[base]:,.0f}, {described[other]} {median[other]:,.0f}; "
            f"ratio {other} / {base} {ratio:.2f}")
        targets.append(f"ratio >= 0.9: {'met' if ratio >= 0.9 else 'MISSED'}")
    config = (f"{args.workers} workers, synchronous={args.synchronous}, {args.connections} connections")
    log(f"targets (set for 2 workers, synchronous=FULL, 16 connections; this run: {config}): "
        + "; ".join(targets))
    if failed:
        log("FAILED: errors, wrong balances or books that do not balance")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
