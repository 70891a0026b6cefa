"""The store's contract: what every engine does, and the errors it answers with.

Every money rule (wallet.py) and every read (money/books.py) talks to a `Store` through four
operations: `execute` a statement written in the SQL both engines speak (`?` placeholders,
`ON CONFLICT`, `RETURNING`), run a block in one serialised write `transaction`, `lock` a
key inside it, and read from one consistent `snapshot`. What differs between SQLite (the
embedded default, store/sqlite.py) and PostgreSQL (`DATABASE_URL`, store/postgres.py) stays
behind them: connecting, locking, DDL, placeholders, backup, and the errors that mean "the
database is away", which every engine turns into `DatabaseUnavailable` (answered 503: the
provider retries, and idempotency settles the retry).
"""

from store.schema import TABLES


class DatabaseUnavailable(Exception):
    """The database cannot be reached, timed out, or lost a statement's outcome: answer 503.

    `away`: the database as a whole is (other requests are answered at once for a moment, see
    db.get_db); not for one statement that ran out of time, nor for a request answered without
    trying it. `alarm`: logged as an error even during an outage already logged (once per
    outage), e.g. books that went back in time."""

    alarm = False

    def __init__(self, message, away=True):
        super().__init__(message)
        self.away = away


class ConfigurationError(Exception):
    """The books cannot be used as configured (a wrong URL, a missing file, settings that
    contradict what the books hold); the message is one line that says what to do."""


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
    watermark = None  # PostgreSQL, a serving process: what it has seen of its books
    passed_over = None  # PostgreSQL: a server passed over when connecting, and why (for the log)

    def __init__(self):
        self.fixed_decimals = {}  # currency -> decimals once read from `currencies`, see money/units.py
        # The operator's CURRENCY_DECIMALS, for currencies the books do not hold yet: set by
        # whoever opens the store for the service (db.py), so the rules need no configuration.
        self.configured_decimals = {}

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
        raise NotImplementedError

    def usable(self):
        """Whether the connection can still be used (a lost one is replaced by get_db)."""
        return True

    def discard(self):
        """Forget the connection after an error that may have left it unusable."""

    def close(self):
        raise NotImplementedError

    def wrote(self, table, row_id, at):
        """Note a `ledger` or `callbacks` row (its id and time) written in the transaction under
        way: an engine that can fail over checks that the books it reconnects to still hold it."""

    def durability(self):
        """None, or (whether a failover can lose answered callbacks, one line saying why)."""
        return None

    def position(self):
        """Where the server holding the books stands (to compare two copies), or None."""
        return None

    # Shared by both engines.
    PING = "SELECT count(*) FROM wallets WHERE id = 0"

    def ping(self):
        """One round-trip through the books; any failure means the database is unusable, and
        so do books that cannot be written (check_writable)."""
        try:
            row = self.execute(self.PING).fetchone()
        except DatabaseUnavailable:
            raise
        except Exception as error:  # e.g. its tables are gone: not servable either
            raise DatabaseUnavailable(f"{self.label}: {error}") from None
        self.check_writable(row)

    def check_writable(self, ping_row):
        """Raise DatabaseUnavailable if the ping's row says the books cannot be written."""

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

