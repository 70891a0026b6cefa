import copy
import itertools
import json
import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import Verbosity, settings

import app as app_module
import db

CALLBACK_TOKEN = "cb-9f2c4e1a-secret"
ADMIN_TOKEN = "admin-7d1e-secret"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"  # the provider's examples, copied

# CI (.ci/run runs with CI=true) loads "wallet-ci": hypothesis's own "ci" profile (the same
# examples on every run, no example database, no deadline, the blob that replays a failure)
# plus every example tried printed (pytest shows that output for failing tests only). A CI run
# fails for a reason a re-run reproduces, never by chance. Local runs keep exploring: new random
# examples each run, the .hypothesis/ database replaying the last failure. Test modules build
# their settings objects when imported, after this file, so they inherit the profile.
settings.register_profile("wallet-ci", parent=settings.get_profile("ci"), verbosity=Verbosity.verbose)
if os.environ.get("CI") == "true":
    settings.load_profile("wallet-ci")

START = {
    "type": "start",
    "session": {"id": "9f2c4e1a", "playerId": "player-42", "gameId": "Mines", "currency": "USD"},
    "game": {"id": "g-1", "status": "in_progress", "payout": 0, "profit": 0, "bet": 1, "round": 1},
    "data": {"bet": 1, "allBetAmount": 1},
    "roundData": {},
    "time": 1663249396,
}
FINISH = {
    "type": "finish",
    "session": {"id": "9f2c4e1a", "playerId": "player-42", "gameId": "Mines", "currency": "USD"},
    "game": {"id": "g-1", "status": "win", "payout": 2.5, "profit": 1.5, "bet": 1, "round": 1},
    "data": {"balanceUpdateDelay": 3500},
    "time": 1663249721934,
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Tests configure the app explicitly; the machine's environment must not leak in."""
    for key in app_module.ENVIRONMENT:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def make_app(tmp_path):
    """Build apps on one fresh database in tmp_path; close their connections afterwards."""
    made = []

    def make(**config):
        settings = {
            "DATABASE_PATH": str(tmp_path / "wallet.db"),
            "CALLBACK_TOKEN": CALLBACK_TOKEN,
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "CURRENCY_DECIMALS": "USD=2,EUR=2,BTC=8",
        }
        settings.update(config)
        made.append(app_module.create_app(settings))
        return made[-1]

    yield make
    for each in made:
        db.close_all(each)


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def body(template, **changes):
    """A copy of a callback template with dotted-path changes: body(START, **{"game.bet": 5})."""
    data = copy.deepcopy(template)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        target = data
        for key in parents:
            target = target[key]
        if value is DELETE:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return data


DELETE = object()


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

    def books(self):
        """Everything money-related, read straight from the database file."""
        return books(self.app.config["DATABASE_PATH"])


def books(path):
    """Wallets, ledger, games and operations as plain data, checking balance = ledger sum."""
    with sqlite3.connect(path) as conn:
        wallets = conn.execute(
            "SELECT w.player_id, w.currency, w.balance, "
            "(SELECT coalesce(sum(amount), 0) FROM ledger l WHERE l.wallet_id = w.id) FROM wallets w"
        ).fetchall()
        for player, currency, balance, ledger_sum in wallets:
            assert balance == ledger_sum, f"{player}/{currency}: balance {balance} != ledger {ledger_sum}"
            assert balance >= 0, f"{player}/{currency} is negative"
        state = {
            "wallets": {(p, c): b for p, c, b, _ in wallets},
            "ledger": conn.execute("SELECT wallet_id, amount, kind, game_id, reference FROM ledger ORDER BY id").fetchall(),
            "games": conn.execute("SELECT game_id, status, bet, credit FROM games ORDER BY game_id").fetchall(),
            "operations": conn.execute("SELECT reference, amount FROM operations ORDER BY reference").fetchall(),
        }
    conn.close()
    return state


def audit(path):
    """The audit table as dicts, oldest first."""
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(row) for row in conn.execute("SELECT * FROM callbacks ORDER BY id")]
    conn.close()
    return rows


@pytest.fixture
def wallet(client, app):
    return Wallet(client, app)


@pytest.fixture
def gunicorn(tmp_path):
    """Start real gunicorn servers (tests/live.py) for a test; stop them all afterwards.

    gunicorn("name", workers=3, **environment) serves tmp_path/name.db, started.
    """
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs gunicorn (POSIX) and /proc to see its workers")
    from live import Gunicorn  # live imports this module's tokens

    servers = []

    def start(name="wallet", **options):
        servers.append(Gunicorn(tmp_path / f"{name}.db", **options))
        return servers[-1].start()

    yield start
    for server in servers:
        server.stop()
