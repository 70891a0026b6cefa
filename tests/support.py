"""What the tests share beyond fixtures: driving the service over HTTP (Wallet), reading the
books from outside it, JSON with literal numbers and repeated keys, and a real gunicorn for a
module. Imported as `from tests.support import ...`; the fixtures live in conftest.py."""

import collections
import contextlib
import itertools
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import store
from harness.live import Gunicorn
from harness.postgres_servers import start_postgres  # noqa: F401 (the tests' one way to start a server)
from harness.samples import ADMIN_TOKEN, CALLBACK_TOKEN, FINISH, START, body

ENGINES = ("sqlite", "postgresql")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"  # the provider's examples, copied
_databases = itertools.count(1)


class PostgresDatabases:
    """Makes fresh, empty databases on the test server; drops them all at close().

    Each is a schema of its own in one database, named first in the URL's search_path: to
    the service exactly a database of its own (every statement it runs names tables without
    a schema, and it looks only at current_schema()), made and dropped in a millisecond where
    CREATE DATABASE takes a tenth of a second, hundreds of times a run.
    """

    def __init__(self, server):
        import psycopg

        self.server, self.made = server, []
        self.admin = psycopg.connect(server.get_uri(), autocommit=True)
        self.admin.execute("SET lock_timeout = '10s'")

    def __call__(self, name="wallet"):
        self.made.append(f"t{next(_databases)}_{name}"[:63])
        self.admin.execute(f'CREATE SCHEMA "{self.made[-1]}"')
        return f"{self.server.get_uri()}&options=-csearch_path%3D{self.made[-1]}"

    def close(self):
        forget_stores(target for target in _stores if any(target.endswith(f"%3D{name}") for name in self.made))
        for name in self.made:
            self.admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        self.admin.close()


class Raw(str):
    """Literal JSON text, written as is by dumps(): 2.675 exactly, NaN, 1e400, deep nesting..."""

    def __repr__(self):
        return f"Raw({str(self)[:40]!r}{'...' if len(self) > 40 else ''})"


class Pairs(tuple):
    """A JSON object written from (key, value) pairs, so a key may appear twice."""


def dumps(value):
    """Serialise a value that may hold Raw literals and Pairs objects."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, (dict, Pairs)):
        items = value.items() if isinstance(value, dict) else value
        return "{" + ", ".join(f"{json.dumps(key)}: {dumps(item)}" for key, item in items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dumps(item) for item in value) + "]"
    return json.dumps(value)


_references = itertools.count(1)


class Wallet:
    """Drives the service the way the provider and the operator's site do, over HTTP."""

    def __init__(self, client, app):
        self.client, self.app = client, app
        self.admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def callback(self, payload, token=CALLBACK_TOKEN, **kwargs):
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        kwargs.setdefault("content_type", "application/json")
        return self.client.post(f"/callback/{token}", data=raw, **kwargs)

    def start(self, game_id="g-1", bet=1, player="player-42", currency="USD", request=None, **changes):
        """Send a start; `changes` edit the body by dotted path, `request` goes to the client."""
        return self.callback(body(START, **{
            "game.id": game_id, "game.bet": bet, "session.playerId": player,
            "session.currency": currency, **changes}), **(request or {}))

    def finish(self, game_id="g-1", status="win", payout=2.5, bet=1, player="player-42",
               currency="USD", request=None, **changes):
        """Send a finish; `changes` edit the body by dotted path, `request` goes to the client."""
        return self.callback(body(FINISH, **{
            "game.id": game_id, "game.status": status, "game.payout": payout, "game.bet": bet,
            "session.playerId": player, "session.currency": currency, **changes}), **(request or {}))

    def deposit(self, amount, player="player-42", currency="USD", reference=None):
        reference = reference or f"dep-{next(_references)}"
        return self.client.post(f"/api/players/{player}/deposits", headers=self.admin,
                                json={"currency": currency, "amount": amount, "reference": reference})

    def withdraw(self, amount, player="player-42", currency="USD", reference="wd-1"):
        return self.client.post(f"/api/players/{player}/withdrawals", headers=self.admin,
                                json={"currency": currency, "amount": amount, "reference": reference})

    def balance(self, player="player-42", currency="USD"):
        response = self.client.get(f"/api/players/{player}/balances/{currency}", headers=self.admin)
        return response.json["balance"] if response.status_code == 200 else None

    @property
    def database(self):
        return store.configured_target(self.app.config)

    def books(self):
        """Everything money-related, read straight from the database."""
        return books(self.database)

    def audit(self):
        return audit(self.database)

    def sql(self, statement, params=()):
        """Change the books behind the service's back (fault injection, ageing a row)."""
        execute(self.database, statement, params)


def refund(wallet, game_id):
    return wallet.client.post(f"/api/games/{game_id}/refund", headers=wallet.admin)


def play_a_little(wallet):
    """Books with one of everything: deposits in two currencies, a withdrawal, and games won,
    lost, open, refunded and declined."""
    wallet.deposit("10.00")
    wallet.deposit("1", currency="BTC")
    wallet.withdraw("1.00", reference="wd-1")
    wallet.start(game_id="won", bet=2)
    wallet.finish(game_id="won", bet=2, payout="1.5")
    wallet.start(game_id="lost", bet=1)
    wallet.finish(game_id="lost", bet=1, status="lose", payout=0)
    wallet.start(game_id="open", bet=1)
    wallet.start(game_id="refunded", bet=1)
    refund(wallet, "refunded")
    wallet.start(game_id="declined", bet=100)


_stores = {}  # target -> an open store, reused by the helpers below (a connection costs ms)


@contextlib.contextmanager
def retrying_providers(server, clients=4, player=lambda client: "steady", pause=0.05):
    """Provider clients on `server`, each playing start then finish, game after game, retrying a
    callback every `pause` seconds while it answers 503, until the block ends (each finishes its
    game). Yields {(game, kind): [(time answered, (status, body)), ...]}, filled as they play."""
    answers, stop = collections.defaultdict(list), threading.Event()

    def provider(client):
        for n in itertools.count():
            game = f"c{client}-g{n}"
            for kind, template in (("start", START), ("finish", FINISH)):
                payload = body(template, **{"game.id": game, "session.playerId": player(client)})
                while True:
                    answer = server.callback(payload)
                    answers[game, kind].append((time.monotonic(), answer))
                    if answer[0] != 503:
                        break
                    time.sleep(pause)
            if stop.is_set():
                return

    with ThreadPoolExecutor(max_workers=clients) as pool:
        running = [pool.submit(provider, client) for client in range(clients)]
        try:
            yield answers
        finally:
            stop.set()
            for each in running:
                each.result()


def store_for(target):
    """A connection of our own store layer to the database at `target`, kept for reuse."""
    target = str(target)
    books_store = _stores.get(target)
    if books_store is None or not books_store.usable():
        books_store = _stores[target] = store.open_store(target, create=False)
    return books_store


def forget_stores(targets=None):
    """Close the kept connections (to `targets`, or all), e.g. before their databases go."""
    for target in list(_stores) if targets is None else [str(t) for t in targets]:
        kept = _stores.pop(target, None)
        if kept is not None:
            kept.close()


def query(target, sql, params=()):
    """Rows (as tuples) of one statement on the database at `target`, outside the service."""
    return [tuple(row) for row in store_for(target).execute(sql, params).fetchall()]


def execute(target, sql, params=()):
    """Run one statement on the database at `target` from outside the service (fault
    injection, ageing a row), committed at once."""
    store_for(target).execute(sql, params)


def books(target):
    """Wallets, ledger, games and operations as plain data, checking balance = ledger sum."""
    wallets = query(target, "SELECT w.player_id, w.currency, w.balance, "
                            "(SELECT coalesce(sum(amount), 0) FROM ledger l WHERE l.wallet_id = w.id) FROM wallets w")
    for player, currency, balance, ledger_sum in wallets:
        assert balance == ledger_sum, f"{player}/{currency}: balance {balance} != ledger {ledger_sum}"
        assert balance >= 0, f"{player}/{currency} is negative"
    return {
        "wallets": {(p, c): b for p, c, b, _ in wallets},
        "ledger": query(target, "SELECT wallet_id, amount, kind, game_id, reference FROM ledger ORDER BY id"),
        "games": query(target, "SELECT game_id, status, bet, credit FROM games ORDER BY game_id"),
        "operations": query(target, "SELECT reference, amount FROM operations ORDER BY reference"),
    }


def audit(target):
    """The audit table as dicts, oldest first (the raw body as bytes)."""
    return [{key: (bytes(row[key]) if key == "body" and row[key] is not None else row[key]) for key in row.keys()}
            for row in store_for(target).execute("SELECT * FROM callbacks ORDER BY id").fetchall()]


def needs_processes():
    """Real gunicorn servers need POSIX and /proc (to see their workers). Elsewhere their tests
    skip, saying why; under CI=true they must run, as the PostgreSQL half must."""
    if not Path("/proc/self/stat").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: the tests that run gunicorn need POSIX and /proc")
        pytest.skip("needs gunicorn (POSIX) and /proc to see its workers")


@contextlib.contextmanager
def module_gunicorn(request, tmp_path_factory, name, **options):
    """One real gunicorn for a whole module, on a fresh database of the engine the module
    fixture is parametrised with (request.param); stopped, its database dropped, after."""
    needs_processes()

    folder = tmp_path_factory.mktemp(name)
    databases = None
    if request.param == "postgresql":
        databases = PostgresDatabases(request.getfixturevalue("postgres_server"))
        database = databases(name)
    else:
        database = folder / "wallet.db"
    running = Gunicorn(database, name=name, log_dir=folder, **options)
    try:
        yield running.start()
    finally:
        running.stop()
        forget_stores([database])
        if databases is not None:
            databases.close()


