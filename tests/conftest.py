"""The fixtures: an app on a fresh database of each engine (SQLite, a real PostgreSQL), its
test client and CLI runner, and real gunicorn servers. Shared helpers are in tests/support.py."""

import os

import pytest
import hypothesis

import app as app_module
import db
from harness.live import Gunicorn
from harness.samples import ADMIN_TOKEN, CALLBACK_TOKEN, store_settings
from tests.support import ENGINES, PostgresDatabases, Wallet, forget_stores, needs_processes, start_postgres

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


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Tests configure the app explicitly; the machine's environment must not leak in. The
    helpers' connections are closed after each test (its files and databases go)."""
    for key in app_module.ENVIRONMENT:
        monkeypatch.delenv(key, raising=False)
    yield
    forget_stores()


# --- the two engines: every test that touches the store runs on both --------------------

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


@pytest.fixture
def new_database(engine, tmp_path, request):
    """Make fresh, empty databases on the test's engine: new_database("name") returns what
    DATABASE_URL (PostgreSQL) or DATABASE_PATH (SQLite) is set to."""
    if engine == "sqlite":
        yield lambda name="wallet": str(tmp_path / f"{name}.db")
    else:
        yield request.getfixturevalue("new_postgres_database")


@pytest.fixture
def new_postgres_database(postgres_server):
    """Make fresh, empty PostgreSQL databases (for the tests of what only PostgreSQL has);
    each is dropped after the test."""
    databases = PostgresDatabases(postgres_server)
    yield databases
    databases.close()


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


@pytest.fixture
def wallet(client, app):
    return Wallet(client, app)


@pytest.fixture
def gunicorn(tmp_path, new_database):
    """Start real gunicorn servers (harness/live.py) for a test; stop them all afterwards.

    gunicorn("name", workers=3, **environment) serves a fresh database of the test's engine
    (`database=` another server's `.database` to run a second instance on the same books).
    """
    needs_processes()

    servers = []

    def start(name="wallet", database=None, **options):
        servers.append(Gunicorn(database or new_database(name), name=name, log_dir=tmp_path, **options))
        return servers[-1].start()

    yield start
    for server in servers:
        server.stop()
