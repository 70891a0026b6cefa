"""The embedded default: the books in one SQLite file (WAL mode, `BEGIN IMMEDIATE` writes)."""

import contextlib
import fcntl
import os
import sqlite3
import threading
import time

import sqlite_utils

from store.base import ConfigurationError, DatabaseUnavailable, Store
from store.schema import TABLES, index_statements, missing_columns

BUSY_TIMEOUT_MS = 10_000
# With Litestream replicating (replication.py) it checkpoints the WAL itself once it has
# copied it. At SQLite's default of 1,000 pages every commit would also try a checkpoint
# that Litestream's read transaction holds back: 10% more CPU per callback in the workers,
# measured. 10,000 pages (40 MiB) still bounds the WAL while Litestream is not running.
REPLICATED_AUTOCHECKPOINT_PAGES = 10_000
# A process's writers (its threads, each with a connection of its own) take turns on a lock per
# database before the writers' flock (see transaction): one thread per process polls the flock,
# and the next one of the process is woken as soon as the last is done.
_process_writers = {}  # path -> threading.Lock
os.register_at_fork(after_in_child=_process_writers.clear)


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
            raise ConfigurationError(
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
            raise ConfigurationError(f"SQLite could not switch {self.path} to WAL mode (it stays {mode!r})")

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
        which with several busy workers leaves one waiting for tens of milliseconds; the flock is
        tried again every 2 ms at most, by one thread of a process at a time (the others wait
        on a lock of the process's, which hands over at once).
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
            if self._queue:
                fcntl.flock(self._writers, fcntl.LOCK_UN)
                _process_writers[self.path].release()

    def _queue_up(self):
        """Take the process's turn, then the writers' flock, waiting at most busy_timeout in all:
        while another process holds the flock the wait is short sleeps (the worker's other
        threads run meanwhile)."""
        if self._writers is None:
            self._writers = os.open(self.path + "-writers", os.O_RDWR | os.O_CREAT, 0o600)
        deadline, pause = time.monotonic() + BUSY_TIMEOUT_MS / 1000, 0.0002
        turn = _process_writers.setdefault(self.path, threading.Lock())
        if not turn.acquire(timeout=BUSY_TIMEOUT_MS / 1000):
            raise DatabaseUnavailable(f"SQLite: {self.path} stayed locked for {BUSY_TIMEOUT_MS // 1000} s")
        while True:
            try:
                fcntl.flock(self._writers, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    turn.release()
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
            for name, column, kind in missing_columns({name: set(self.db[name].columns_dict) for name in TABLES}):
                self.db[name].add_column(column, kind)  # a database an earlier version made
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
