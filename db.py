"""The store layer: one seam over the two engines, the schema, and the Flask wiring.

Every money rule (wallet.py) and every read (books.py) talks to a `Store` through four
operations: `execute` a statement written in the SQL both engines speak (`?` placeholders,
`ON CONFLICT`, `RETURNING`), run a block in one serialised write `transaction`, `lock` a
key inside it, and read from one consistent `snapshot`. What differs between SQLite (the
embedded default, here) and PostgreSQL (`DATABASE_URL`, postgres.py) stays behind them:
connecting, locking, DDL, placeholders, backup, and the errors that mean "the database is
away", which every engine turns into `DatabaseUnavailable` (answered 503: the provider
retries, and idempotency settles the retry).
"""

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
import urllib.parse

import click
import sqlite_utils
from flask import current_app, g
from flask.cli import with_appcontext

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
BUSY_TIMEOUT_MS = 10_000
# While the database is away every request must still get its 503 within seconds: one waits
# at most QUEUE_TIMEOUT_S for its worker's connection, and once the database failed a request
# the others are answered at once for RETRY_AFTER_S (the 503's Retry-After) before it is tried
# again; so a queue of callbacks drains instead of taking turns to time out.
QUEUE_TIMEOUT_S = 5
RETRY_AFTER_S = 1
POSTGRES_SCHEMES = ("postgresql", "postgres")
# With Litestream replicating (replication.py) it checkpoints the WAL itself once it has
# copied it. At SQLite's default of 1,000 pages every commit would also try a checkpoint
# that Litestream's read transaction holds back: 10% more CPU per callback in the workers,
# measured. 10,000 pages (40 MiB) still bounds the WAL while Litestream is not running.
REPLICATED_AUTOCHECKPOINT_PAGES = 10_000


class DatabaseUnavailable(Exception):
    """The database cannot be reached, timed out, or lost a statement's outcome: answer 503.

    `away`: the database as a whole is (other requests are answered at once for a moment, see
    get_db); not for one statement that ran out of time, nor for a request answered without
    trying it."""

    def __init__(self, message, away=True):
        super().__init__(message)
        self.away = away


class StartupError(click.ClickException):
    """The service or a command cannot start as configured; one clear line, exit code 1."""


# --- the schema, once, for both engines -------------------------------------------------
# Column types are Python types: int is a 64-bit integer (money is always integer minor
# units), str text, bytes a blob, float a double. An `id` integer primary key is assigned
# by the database; a `never_negative` column is refused below zero by the database itself
# (a trigger in SQLite, a CHECK in PostgreSQL). Each engine renders this into its own DDL.

TABLES = {
    "wallets": {
        "columns": {"id": int, "player_id": str, "currency": str, "balance": int, "updated_at": int},
        "pk": "id",
        "not_null": {"player_id", "currency", "balance", "updated_at"},
        "never_negative": "balance",  # enforced by the database too: the last line of defence
    },
    "currencies": {
        "columns": {"currency": str, "decimals": int},
        "pk": "currency",
        "not_null": {"decimals"},
    },
    "ledger": {
        "columns": {
            "id": int,
            "wallet_id": int,
            "amount": int,  # signed, minor units
            "balance_after": int,
            "kind": str,  # deposit | withdrawal | bet | payout | refund
            "game_id": str,
            "reference": str,
            "created_at": int,  # epoch ms
        },
        "pk": "id",
        "not_null": {"wallet_id", "amount", "balance_after", "kind", "created_at"},
        "foreign_keys": [("wallet_id", "wallets", "id")],
    },
    "games": {
        "columns": {
            "game_id": str,
            "status": str,  # declined | open | won | lost | refunded
            "player_id": str,
            "currency": str,
            "wallet_id": int,
            "bet": int,  # minor units, as debited
            "session_id": str,
            "game_name": str,
            "round": str,
            "all_bet_amount": str,
            "round_data": str,  # JSON
            "start_time": int,  # provider's time of the start, epoch ms
            "started_at": int,  # our receipt of the start, epoch ms
            "payout": str,  # the multiplier, exact decimal text
            "profit": str,
            "credit": int,  # minor units credited by the finish
            "balance_update_delay": int,  # ms
            "finish_time": int,  # provider's time of the finish, epoch ms
            "settled_at": int,  # our receipt of the finish, epoch ms
            "refunded_at": int,  # epoch ms
            "refund_response": str,  # JSON body of the refund's answer, replayed on a repeat
        },
        "pk": "game_id",
        "not_null": {"status", "player_id", "currency", "bet", "started_at"},
    },
    "operations": {
        "columns": {
            "reference": str,
            "kind": str,  # deposit | withdrawal
            "player_id": str,
            "currency": str,
            "amount": int,
            "response": str,  # JSON body of the first answer, replayed on a repeat
            "created_at": int,
        },
        "pk": "reference",
        "not_null": {"kind", "player_id", "currency", "amount", "response", "created_at"},
    },
    "callbacks": {
        "columns": {
            "id": int,
            "received_at": int,
            "type": str,
            "game_id": str,
            "player_id": str,
            "outcome": str,  # accepted | declined | duplicate | conflict | invalid | ignored | error
            "reason": str,
            "status_code": int,
            "response": str,
            "body": bytes,  # raw request body, as received
            "duration_ms": float,
        },
        "pk": "id",
        "not_null": {"received_at", "outcome", "status_code"},
    },
}
# Partial indexes hold only the rows their queries look for, so that the everyday callback (an
# accepted start or finish, not a win) writes none of their pages: every index page a commit
# changes is written and synced to the log, the larger part of a commit (measured, issue 13).
# A query meant to use one states its condition too (books.py, wallet.py): that is how both
# engines know the index holds every row the query can want.
COMMON = {"outcome": ("accepted",), "type": ("start", "finish")}  # the audit's everyday values


def uncommon(column):
    """The condition of an audit column's partial index: none of its everyday values."""
    values = ", ".join(f"'{value}'" for value in COMMON[column])
    return f"{column} NOT IN ({values})"


CREDITED = "credit > 0"
# (table, columns, unique, condition or None); named as sqlite-utils names them,
# idx_<table>_<columns>, and a partial one with `_partial` after.
INDEXES = (
    ("wallets", ("player_id", "currency"), True, None),
    ("ledger", ("wallet_id", "id"), False, None),
    ("ledger", ("game_id",), False, None),
    ("games", ("wallet_id", "settled_at"), False, CREDITED),  # a wallet's pending wins
    ("games", ("status", "started_at"), False, None),
    ("games", ("started_at", "game_id"), False, None),
    ("games", ("player_id", "started_at"), False, None),
    ("callbacks", ("game_id",), False, None),
    ("callbacks", ("outcome", "id"), False, uncommon("outcome")),
    ("callbacks", ("type", "id"), False, uncommon("type")),
)
# Made whole by earlier versions, now partial (above): dropped where found.
REPLACED_INDEXES = ("idx_games_wallet_id_settled_at", "idx_callbacks_outcome_id", "idx_callbacks_type_id")


def index_name(table, columns, condition=None):
    return f"idx_{table}_{'_'.join(columns)}" + ("_partial" if condition else "")


def index_statements(indexes=INDEXES, replaced=REPLACED_INDEXES):
    """The DDL that brings indexes up to date, in the SQL both engines speak: drop those
    `replaced`, create `indexes` (entries of INDEXES) where missing."""
    return [f"DROP INDEX IF EXISTS {name}" for name in replaced] + [
        f"CREATE {'UNIQUE ' if unique else ''}INDEX IF NOT EXISTS {index_name(table, columns, condition)} "
        f"ON {table} ({', '.join(columns)})" + (f" WHERE {condition}" if condition else "")
        for table, columns, unique, condition in indexes
    ]


# --- the seam ------------------------------------------------------------------------------


class Store:
    """A connection to the books. One per process, used by one request at a time.

    execute(sql, params): run one statement (SQL with `?` placeholders); returns a cursor
        with fetchone()/fetchall() whose rows read by position or by column name. Read a
        statement's rows before the next one: an engine may run them all on one cursor.
    stream(sql, params): iterate over a large result without holding it all in memory.
    transaction(): a block that commits whole or not at all, serialised against every
        other writer on the engine's terms; `lock(kind, key)` inside it serialises the
        rest of the block with every other transaction locking the same key.
    snapshot(): a read-only block in which every read sees one consistent state.
    """

    label = None  # where the books are, for logs and messages (never a password)

    def __init__(self):
        self.fixed_decimals = {}  # currency -> decimals once read from `currencies`, see wallet.py

    # Engines implement these.
    def execute(self, sql, params=()):
        raise NotImplementedError

    def executemany(self, sql, rows):
        raise NotImplementedError

    def stream(self, sql, params=()):
        raise NotImplementedError

    def transaction(self):
        raise NotImplementedError

    def lock(self, kind, key):
        raise NotImplementedError

    def snapshot(self):
        raise NotImplementedError

    def create_schema(self):
        raise NotImplementedError

    def table_names(self):
        raise NotImplementedError

    def in_transaction(self):
        raise NotImplementedError

    def rollback(self):
        """Roll back a transaction left open (the request ended without finishing it)."""
        raise NotImplementedError

    def after_bulk_load(self):
        """Make the database assign new ids above those copied in (see copy_books)."""

    def backup(self, path):
        """Write one consistent copy of the books to a new SQLite file at `path` (which the
        service itself can open and reconcile)."""
        target = SQLiteStore(path)
        try:
            with self.snapshot():
                copy_books(self, target)
        finally:
            target.close()

    def usable(self):
        """Whether the connection can still be used (a lost one is replaced by get_db)."""
        return True

    def discard(self):
        """Forget the connection after an error that may have left it unusable."""

    def close(self):
        raise NotImplementedError

    # Shared by both engines.
    def ping(self):
        """One round-trip through the books; any failure means the database is unusable."""
        try:
            self.execute("SELECT count(*) FROM wallets WHERE id = 0").fetchone()
        except DatabaseUnavailable:
            raise
        except Exception as error:  # e.g. its tables are gone: not servable either
            raise DatabaseUnavailable(f"{self.label}: {error}") from None

    def has_schema(self):
        return set(TABLES) <= set(self.table_names())

    def is_empty(self):
        """Whether no table of the books holds a row (missing tables count as empty)."""
        present = set(self.table_names())
        return all(self.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is None
                   for table in TABLES if table in present)

    def forget_cached(self):
        """Forget what was read inside a transaction that did not commit."""
        self.fixed_decimals.clear()


class SQLiteStore(Store):
    """The embedded default: one file in WAL mode, `BEGIN IMMEDIATE` for every write.

    The callback path runs on the sqlite3 connection itself; sqlite-utils creates the tables
    (the indexes are the DDL both engines share: sqlite-utils makes no partial index).
    """

    def __init__(self, path, synchronous="FULL", create=True, writers_queue=False, replicated=False):
        super().__init__()
        self.path = os.fspath(path)
        self.label = f"SQLite file {self.path}"
        if not create and not os.path.exists(self.path):
            raise StartupError(
                f"no database at {self.path}: set DATABASE_PATH to the service's database, "
                "or create one with 'flask --app app init-db'"
            )
        if create:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        try:
            # isolation_level=None: the sqlite3 module never opens transactions behind our
            # back, so `transaction()` and `snapshot()` are the only places one begins.
            self.conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
            )
            self.conn.row_factory = sqlite3.Row  # rows read by index or by column name
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._enable_wal()
            self.conn.execute(f"PRAGMA synchronous = {synchronous}")
            self.conn.execute("PRAGMA foreign_keys = ON")
            if replicated:
                self.conn.execute(f"PRAGMA wal_autocheckpoint = {REPLICATED_AUTOCHECKPOINT_PAGES}")
        except sqlite3.Error as error:
            raise _sqlite_error(error) from None
        self.db = sqlite_utils.Database(self.conn, execute_plugins=False)
        # The file the service's writers queue on (see transaction), opened at the first write:
        # a store that only reads (a command on a backup) leaves nothing beside the file.
        self._queue, self._writers = writers_queue, None

    def _enable_wal(self):
        """Switch the file to WAL, waiting for the lock like any writer would.

        Turning a new file into WAL needs an exclusive lock, and SQLite answers "database is
        locked" at once instead of calling the busy handler when another worker booting at
        the same moment holds it; so retry here for as long as busy_timeout would have waited.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        if mode.lower() != "wal":  # SQLite keeps the old mode where WAL is impossible
            raise StartupError(f"SQLite could not switch {self.path} to WAL mode (it stays {mode!r})")

    def execute(self, sql, params=()):
        try:
            return self.conn.execute(sql, params)
        except sqlite3.Error as error:
            raise _sqlite_error(error) from None

    def executemany(self, sql, rows):
        try:
            self.conn.executemany(sql, rows)
        except sqlite3.Error as error:
            raise _sqlite_error(error) from None

    stream = execute  # the sqlite3 cursor already reads row by row

    @contextlib.contextmanager
    def transaction(self):
        """`BEGIN IMMEDIATE`: the write lock is taken before the first read, so a read-check-
        write in the block cannot interleave with another process's (a deferred transaction
        would fail with "database is locked" when two readers both try to upgrade).

        The service's own processes first queue on an flock of a file beside the database:
        SQLite makes a writer that finds the lock taken sleep and retry (1, 2, 5 ... 100 ms),
        which with several busy workers leaves one waiting for tens of milliseconds, and a
        gevent worker's every connection with it; the flock is tried again every 2 ms at most.
        BEGIN IMMEDIATE still guards against any other writer.
        """
        if self._queue:
            self._queue_up()
        try:
            self.execute("BEGIN IMMEDIATE")
            try:
                yield self
                self.execute("COMMIT")
            except BaseException:
                # Whatever failed (the block, the commit, or SQLite rolling back on its own after a
                # full disk), forget decimals read in it: they may be this transaction's own insert.
                self.forget_cached()
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        finally:
            if self._writers is not None:
                fcntl.flock(self._writers, fcntl.LOCK_UN)

    def _queue_up(self):
        """Take the writers' flock, waiting at most busy_timeout: while another process holds it
        the wait is short sleeps (a gevent worker serves its other connections meanwhile)."""
        if self._writers is None:
            self._writers = os.open(self.path + "-writers", os.O_RDWR | os.O_CREAT, 0o600)
        deadline, pause = time.monotonic() + BUSY_TIMEOUT_MS / 1000, 0.0002
        while True:
            try:
                fcntl.flock(self._writers, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DatabaseUnavailable(f"SQLite: {self.path} stayed locked for {BUSY_TIMEOUT_MS // 1000} s") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.002)

    def lock(self, kind, key):
        """Nothing to do: `BEGIN IMMEDIATE` already serialises every write transaction."""

    @contextlib.contextmanager
    def snapshot(self):
        """A deferred read transaction: WAL keeps its first read's state until it ends."""
        self.execute("BEGIN")
        try:
            yield self
        finally:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")

    def table_names(self):
        return self.db.table_names()

    def create_schema(self):
        """Create the tables and indexes if missing; safe when several workers start at once."""
        with self.transaction():
            for name, table in TABLES.items():
                self.db[name].create(
                    table["columns"],
                    pk=table["pk"],
                    not_null=table["not_null"],
                    foreign_keys=table.get("foreign_keys"),
                    if_not_exists=True,
                )
            for statement in index_statements():
                self.execute(statement)
            for name, table in TABLES.items():
                column = table.get("never_negative")
                if column:
                    self.execute(
                        f"""CREATE TRIGGER IF NOT EXISTS {name}_never_negative
                        BEFORE UPDATE OF {column} ON {name} WHEN NEW.{column} < 0
                        BEGIN SELECT RAISE(ABORT, '{name}.{column} would go negative'); END"""
                    )

    def backup(self, path):
        """Copy the database to a new file while it keeps serving (one consistent snapshot)."""
        self.execute("VACUUM INTO ?", [os.fspath(path)])

    def in_transaction(self):
        return self.conn.in_transaction

    def rollback(self):
        self.forget_cached()
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def close(self):
        self.conn.close()
        if self._writers is not None:
            os.close(self._writers)
            self._writers = None


# SQLite's primary result codes that mean the file cannot be used right now (locked past
# busy_timeout, I/O failure, full disk, cannot be opened, read-only): the database is away,
# not the request wrong. Anything else (a constraint, a bug) stays what it is.
_SQLITE_UNAVAILABLE = {5, 6, 8, 10, 13, 14, 15}  # BUSY LOCKED READONLY IOERR FULL CANTOPEN PROTOCOL


def _sqlite_error(error):
    if getattr(error, "sqlite_errorcode", 0) & 0xFF in _SQLITE_UNAVAILABLE:
        return DatabaseUnavailable(f"SQLite: {error}")
    return error


# --- choosing the store ---------------------------------------------------------------------


def describe_url(url):
    """Where a PostgreSQL URL points, for logs: host, port and database, never the password."""
    from postgres import describe

    return describe(url)


def is_database_url(target):
    """Whether `target` names a database by URL (any `scheme://`) rather than a SQLite file."""
    return "://" in os.fspath(target)


def check_url(url, what="DATABASE_URL"):
    """Refuse a database URL of any scheme but PostgreSQL's, naming the accepted ones."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in POSTGRES_SCHEMES:
        accepted = " or ".join(f"{name}://" for name in POSTGRES_SCHEMES)
        advice = ("unset it to keep the books in the SQLite file at DATABASE_PATH" if what == "DATABASE_URL"
                  else "or give a SQLite file's path")
        raise StartupError(
            f"{what} must be a PostgreSQL URL ({accepted}...), not {scheme + '://' if scheme else repr(url[:20])}; {advice}"
        )


def open_store(target, synchronous="FULL", create=True, replicated=False):
    """Open the books at `target`: a PostgreSQL URL, or else a SQLite file path (`replicated`:
    Litestream copies its WAL off the machine). A URL of another scheme is refused, never
    taken for a file name."""
    if is_database_url(target):
        check_url(os.fspath(target), what="a database URL")
        from postgres import PostgresStore  # psycopg is loaded only for PostgreSQL

        return PostgresStore(target)
    return SQLiteStore(target, synchronous, create=create, writers_queue=True, replicated=replicated)


def configured_target(config):
    """The configured store: DATABASE_URL if set, else the SQLite file DATABASE_PATH."""
    return config.get("DATABASE_URL") or config["DATABASE_PATH"]


# --- moving the books between stores ------------------------------------------------------

COPY_ORDER = ("currencies", "wallets", "ledger", "games", "operations", "callbacks")  # parents first
COPY_BATCH = 2_000


def copy_books(source, target, progress=None):
    """Copy every row of the books from `source` into an empty `target`, in one transaction
    on the target; return the number of rows per table. Call it inside `source.snapshot()`,
    so the copy is one consistent state however busy the source is.

    `progress(table, rows_so_far)` is called as rows arrive (for a progress display).
    """
    assert set(COPY_ORDER) == set(TABLES)
    target.create_schema()
    if not target.is_empty():
        raise StartupError(f"{target.label} already holds books; copy only into an empty database")
    counts = {}
    with target.transaction():
        for table in COPY_ORDER:
            columns = list(TABLES[table]["columns"])
            insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            rows = source.stream(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {TABLES[table]['pk']}")
            counts[table] = 0
            batch = []
            for row in rows:
                batch.append(tuple(row))
                if len(batch) == COPY_BATCH:
                    target.executemany(insert, batch)
                    counts[table] += len(batch)
                    batch = []
                    if progress:
                        progress(table, counts[table])
            if batch:
                target.executemany(insert, batch)
                counts[table] += len(batch)
            if progress:
                progress(table, counts[table])
        target.after_bulk_load()
    return counts


# --- Flask wiring: one store per process, used by one request at a time ---------------------


def get_db():
    """Return this process's store for the current request or command, opening it if needed.

    One connection per process, reused across requests, so its setup runs once; a lock lets
    one request (thread or greenlet) at a time use it, from its first statement to the end of
    the request. A connection the database dropped is replaced here, at the next request.
    """
    store = g.get("wallet_db")
    if store is not None:
        return store
    state = current_app.extensions["wallet_db"]
    if time.monotonic() < state["retry_at"]:
        raise DatabaseUnavailable(state["last_error"], away=False)
    if not state["lock"].acquire(timeout=QUEUE_TIMEOUT_S):
        raise DatabaseUnavailable(f"waited {QUEUE_TIMEOUT_S} s for this worker's connection to {state['label']}")
    try:
        if time.monotonic() < state["retry_at"]:  # it failed the request this one waited behind
            raise DatabaseUnavailable(state["last_error"], away=False)
        store = state["store"]
        if store is None or state["pid"] != os.getpid() or not store.usable():
            store = _open(current_app, state)
    except BaseException:
        state["lock"].release()
        raise
    g.wallet_db = store
    return store


def _open(app, state):
    """(Re)open the store; on its first opening in this process also create the schema (or
    check it exists, for a command) and check the currencies' decimals."""
    if state["store"] is not None and state["pid"] == os.getpid():
        with contextlib.suppress(Exception):
            state["store"].close()
    state["store"] = None
    try:
        config = app.config
        store = open_store(configured_target(config), config["SQLITE_SYNCHRONOUS"], create=state["create"],
                           replicated=config.get("LITESTREAM_REPLICA_URL") is not None)
        try:
            if not state["prepared"]:
                _prepare(app, store, state["create"])
        except BaseException:
            store.close()
            raise
    except DatabaseUnavailable as error:
        outage(app, error)
        raise
    state.update(store=store, pid=os.getpid(), prepared=True)
    recovered(app)
    return store


def _prepare(app, store, create):
    import wallet  # wallet imports this module

    if create:
        store.create_schema()
    elif not store.has_schema():
        raise StartupError(f"{store.label} holds no wallet tables; create them with 'flask --app app init-db'")
    with app.app_context():
        wallet.check_currency_decimals(store, app.config["CURRENCY_DECIMALS"])


def outage(app, error):
    """Log that the database is away, once per outage (not once per request); a command
    says so itself, as its error."""
    state = app.extensions["wallet_db"]
    if error.away:
        state["retry_at"] = time.monotonic() + RETRY_AFTER_S
        state["last_error"] = f"{error} (a moment ago; tried again after {RETRY_AFTER_S} s)"
    if state["outage_since"] is None and state["create"]:
        state["outage_since"] = time.monotonic()
        app.logger.error("database unavailable (%s): answering 503 until it is back: %s", state["label"], error)


def recovered(app):
    state = app.extensions["wallet_db"]
    if state["outage_since"] is not None:
        app.logger.warning("database available again after %.1f s (%s)",
                           time.monotonic() - state["outage_since"], state["label"])
        state["outage_since"] = None


def release_db(exc=None):
    """At the end of a request or command: never leave a transaction open, free the store,
    and note the end of an outage when the books served this request."""
    store = g.pop("wallet_db", None)
    if store is None:
        return
    state = current_app.extensions["wallet_db"]
    try:
        if not store.usable():
            store.discard()
        elif store.in_transaction():
            store.rollback()
    except Exception:  # a connection that fails even to roll back is replaced next time
        store.discard()
    finally:
        state["lock"].release()
    if state["outage_since"] is not None and not g.pop("wallet_db_failed", False):
        recovered(current_app)


def unavailable(error):
    """Note a DatabaseUnavailable raised while serving: log the outage once, drop a
    connection that may be broken."""
    outage(current_app, error)
    g.wallet_db_failed = True
    store = g.get("wallet_db")
    if store is not None and not store.usable():
        store.discard()


def close_all(app):
    """Close this app's connection (the tests call it; workers simply exit)."""
    state = app.extensions["wallet_db"]
    if state["store"] is not None and state["pid"] == os.getpid():
        state["store"].close()
    state.update(store=None, pid=None)


@click.command("init-db")
@with_appcontext
def init_db_command():
    """Create the database (a SQLite file) and its tables if missing."""
    config = current_app.config
    try:
        store = open_store(configured_target(config), config["SQLITE_SYNCHRONOUS"])
        store.create_schema()
    except DatabaseUnavailable as error:
        raise StartupError(f"cannot reach the database: {error}") from None
    store.close()
    click.echo(f"Database ready: {store.label}")


def init_app(app, create=True):
    """Check the store's configuration, open it once if serving (creating the schema), and
    wire teardown and the `init-db` command.

    `create=False` (a `flask` command other than `run`): nothing is opened until a command
    needs the books, and then a missing database is refused instead of created.
    """
    synchronous = app.config["SQLITE_SYNCHRONOUS"].upper()
    if synchronous not in SYNCHRONOUS_MODES:
        raise StartupError(f"SQLITE_SYNCHRONOUS must be one of {', '.join(SYNCHRONOUS_MODES)}")
    app.config["SQLITE_SYNCHRONOUS"] = synchronous
    url = app.config.get("DATABASE_URL")
    if url:
        check_url(url)
        label = describe_url(url)
    else:
        label = f"SQLite file {os.path.abspath(app.config['DATABASE_PATH'])}"
    app.extensions["wallet_db"] = {
        "lock": threading.RLock(), "store": None, "pid": None, "create": create,
        "prepared": False, "label": label, "outage_since": None, "retry_at": 0.0,
        "last_error": None,
    }
    app.teardown_appcontext(release_db)
    app.cli.add_command(init_db_command)
    if create:
        app.logger.info("books: %s", label)
        try:
            with app.app_context():
                get_db()
        except DatabaseUnavailable:
            pass  # logged by outage(); every request answers 503 and retries until it is back
