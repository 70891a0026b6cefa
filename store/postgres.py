"""The PostgreSQL store (`DATABASE_URL`): what PostgreSQL does differently, behind store.base.Store.

Loaded only when DATABASE_URL is set, so a SQLite deployment never imports psycopg.
- Connecting: psycopg 3 in autocommit mode (transactions are begun explicitly), with
  connect, statement and TCP timeouts so a database that is away answers within seconds.
- Locking: READ COMMITTED plus an advisory lock on the key a transaction works on (a game
  id, a deposit's reference): two instances settling the same game take turns, and every
  balance change is a conditional UPDATE that PostgreSQL re-checks on the row it locked.
- DDL: the schema of store.schema.TABLES as PostgreSQL types; text sorts bytewise (COLLATE "C") as in
  SQLite, so paging cursors and the reconciliation's ordered walk mean the same on both.
- Placeholders: the SQL is written with `?`; psycopg wants `%s` (see _Statement).
- Failover (docs/postgresql.md): a COMMIT waits at most COMMIT_TIMEOUT_S (a synchronous
  standby that is gone would hold it for ever); a serving process refuses a server that
  cannot be written or that holds older books than it already answered from (Watermark).
"""

import contextlib
import datetime
import itertools
import os
import select
import time

# psycopg waits for the server in C, without the GIL: the worker's other threads (each with a
# connection of its own, db.get_db) run meanwhile. It would wait in Python if it found gevent's
# patched select in the process (0.5 ms more of a worker's CPU per callback, measured when the
# service ran on gevent): said here so that it never does. (Set before psycopg is imported.)
os.environ.setdefault("PSYCOPG_WAIT_FUNC", "wait_c")

import psycopg  # noqa: E402
import psycopg.errors  # noqa: E402
from psycopg.conninfo import conninfo_to_dict  # noqa: E402

from store.base import ConfigurationError, DatabaseUnavailable, Store  # noqa: E402
from store.copy import copy_books  # noqa: E402
from store.schema import INDEXES, REPLACED_INDEXES, TABLES, index_name, index_statements, missing_columns  # noqa: E402
from store.sqlite import SQLiteStore  # noqa: E402

# Set only where the URL does not say otherwise.
CONNECT_DEFAULTS = {
    "connect_timeout": "5",  # seconds per host tried
    "application_name": "callback-wallet",
    # A peer that vanished without closing the connection (a failover, a lost host) is
    # noticed within seconds instead of the kernel's hours.
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",  # ms: unacknowledged data
}
STATEMENT_TIMEOUT_MS = 5_000  # also bounds waiting for a lock
# statement_timeout does not cover a COMMIT's wait for a synchronous standby: without a bound
# of our own a standby that is gone holds every callback for ever. Past COMMIT_TIMEOUT_S the
# COMMIT is cancelled (PostgreSQL then keeps it locally, unconfirmed) and answered 503: its
# outcome is unknown to the provider, whose retry settles it once. Below the 4-10 s providers
# wait for an answer.
COMMIT_TIMEOUT_S = 3
CANCEL_TIMEOUT_S = 2  # for the cancel request to be delivered, then as long for the COMMIT's answer
IDLE_IN_TRANSACTION_TIMEOUT_MS = 30_000  # a worker that died mid-transaction frees its locks
SCHEMA_LOCK = 0x77A11E7  # advisory lock key held while creating the schema
TYPES = {int: "BIGINT", str: 'TEXT COLLATE "C"', bytes: "BYTEA", float: "DOUBLE PRECISION"}
# Errors that mean the database is away (refused, dropped, timed out, shut down, failed over
# to a read-only standby), not that the statement was wrong.
UNAVAILABLE = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.errors.ReadOnlySqlTransaction,
    psycopg.errors.IdleInTransactionSessionTimeout,
)
# What a connection learns of its server, in the round trip that sets the session up.
SERVER_STATE = (
    "SELECT pg_is_in_recovery(), current_setting('transaction_read_only'), "
    "current_setting('synchronous_standby_names'), current_setting('synchronous_commit'), "
    "CASE WHEN has_function_privilege('pg_control_system()', 'EXECUTE') "
    "THEN (SELECT system_identifier FROM pg_control_system()) END, "
    "CASE WHEN NOT pg_is_in_recovery() THEN pg_walfile_name(pg_current_wal_lsn()) END"
)
# The rows a serving process notes as it commits them (Watermark): table -> its time column.
MARKED = {"ledger": "created_at", "callbacks": "received_at"}
# synchronous_commit levels at which a COMMIT returns before a synchronous standby has the
# transaction on disk: a failover can lose it even with synchronous_standby_names set.
NOT_WAITING_FOR_STANDBY = ("off", "local")


def describe(url):
    """Where a URL points, for logs and messages: host, port, database; never the password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error as error:
        raise ConfigurationError(f"DATABASE_URL is not a valid PostgreSQL URL: {_one_line(error)}") from None
    host = info.get("host") or info.get("hostaddr") or "the default socket"
    port = info.get("port") or "5432"
    return f"PostgreSQL database {info.get('dbname') or info.get('user') or '(default)'!r} on {host} port {port}"


class Row(tuple):
    """A result row readable by position or by column name, like sqlite3.Row."""

    __slots__ = ()
    columns = {}

    def __getitem__(self, key):
        return tuple.__getitem__(self, self.columns[key] if isinstance(key, str) else key)

    def keys(self):
        return list(self.columns)


_row_classes = {}


def _row_class(description):
    """The Row class for a result's columns, made once per column list (tuple: no result)."""
    if description is None:
        return tuple
    names = tuple(column.name for column in description)
    cls = _row_classes.get(names)
    if cls is None:
        cls = _row_classes[names] = type("Row", (Row,), {"__slots__": (), "columns": {n: i for i, n in enumerate(names)}})
    return cls


def _described_rows(cursor):
    """psycopg row factory (a cursor of its own, e.g. a stream's): Row classes by column names."""
    return _row_class(cursor.description)


class _Statement:
    """A statement of ours as psycopg runs it: `?` placeholders turned into psycopg's `%s` (a
    literal `%` doubled; our SQL never quotes a `?`), and the Row class of its result, learnt
    from the first one (a result's `description` builds an object per column every time)."""

    __slots__ = ("text", "row")

    def __init__(self, sql):
        self.text = sql.replace("%", "%%").replace("?", "%s")
        self.row = None


_statements = {}


def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


def _ms_text(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class Server:
    """What a connection learnt of its server when it connected."""

    def __init__(self, host, row):
        self.host = host
        self.in_recovery, read_only, self.standby_names, self.synchronous_commit, system, walfile = row
        self.read_only = self.in_recovery or read_only == "on"
        self.system = None if system is None else str(system)
        self.timeline = int(walfile[:8], 16) if walfile else None
        self.newest = {}  # table -> its newest id, read where it matters (Watermark.went_back)

    def describe(self):
        parts = [f"{self.host}: " + ("a standby (read-only)" if self.in_recovery else
                                     "read-only" if self.read_only else "writable")]
        if self.timeline is not None:
            parts.append(f"timeline {self.timeline}" + (f" of system {self.system}" if self.system else ""))
        parts += [f"newest {table} row {newest}" for table, newest in self.newest.items()]
        return ", ".join(parts)

    def durability(self):
        """(whether a failover can lose answered callbacks, one line saying what replication
        the server runs)."""
        mode = (f"synchronous_standby_names = {self.standby_names!r}, "
                f"synchronous_commit = {self.synchronous_commit!r}")
        if not self.standby_names.strip():
            return True, (f"PostgreSQL replication: asynchronous or none ({mode}): if this server fails over to a "
                          "streaming standby, the callbacks answered in its last moments can be lost (answered 200 "
                          "and absent from the promoted server); synchronous replication loses none (docs/postgresql.md)")
        if self.synchronous_commit in NOT_WAITING_FOR_STANDBY:
            return True, (f"PostgreSQL replication: a synchronous standby is named but commits do not wait for it "
                          f"({mode}): a failover can lose callbacks answered in its last moments (docs/postgresql.md)")
        return False, (f"PostgreSQL replication: synchronous ({mode}): every answered callback is on the standby "
                       f"too; a COMMIT it does not confirm within {COMMIT_TIMEOUT_S} s is answered 503")


class BooksWentBack(DatabaseUnavailable):
    """The server reached holds older books than this process already answered from."""

    alarm = True


class Watermark:
    """What one serving process has seen of its books, to refuse books that went back in time.

    The server it wrote to (system identifier, timeline: a promotion starts a new timeline) and
    the newest ledger and audit rows it committed (id and time). A server it (re)connects to
    must hold those rows, and be on the same timeline or a later one of the same system: an old
    primary restarted writable after its standby was promoted fails both, and a standby
    promoted without the callbacks answered last (asynchronous replication) fails the first.
    Checked only when a connection is made, from what the COMMITs already returned."""

    def __init__(self):
        self.system, self.timeline, self.rows = None, None, {}

    def describe(self):
        parts = [f"{table} row {row_id} of {_ms_text(at)}" for table, (row_id, at) in sorted(self.rows.items())]
        if self.timeline is not None:
            parts.append(f"timeline {self.timeline}" + (f" of system {self.system}" if self.system else ""))
        return "this worker wrote " + ", ".join(parts) if parts else ""

    def went_back(self, conn, server):
        """Why `server` (on `conn`) holds older books than those seen, or None; its newest rows
        are noted in `server.newest` (for the message)."""
        why = []
        if (server.system is not None and server.system == self.system and None not in (server.timeline, self.timeline)
                and server.timeline < self.timeline):
            why.append(f"it is on timeline {server.timeline}, the books were already on timeline {self.timeline}")
        if self.rows:
            marked = sorted(self.rows.items())
            columns = [f"(SELECT {MARKED[table]} FROM {table} WHERE id = {int(row_id)}), (SELECT max(id) FROM {table})"
                       for table, (row_id, _) in marked]
            try:
                found = conn.execute(f"SELECT {', '.join(columns)}").fetchone()
            except psycopg.errors.UndefinedTable:
                return "it holds no wallet tables"
            missing = []
            for index, (table, (row_id, at)) in enumerate(marked):
                server.newest[table] = found[2 * index + 1]
                if found[2 * index] != at:
                    missing.append(f"{table} row {row_id}")
            if missing:
                why.append(f"it lacks {' and '.join(missing)}")
        return "; ".join(why) or None

    def note(self, server):
        """Remember the server written to (called once it is accepted)."""
        if server.system != self.system or self.timeline is None or (server.timeline or 0) > self.timeline:
            self.system, self.timeline = server.system, server.timeline


class PostgresStore(Store):
    """`watermark` (a serving process's, kept across its connections): refuse a server that
    cannot be written, or that holds older books than those the process answered from."""

    def __init__(self, url, watermark=None):
        super().__init__()
        self.label = describe(url)
        given = conninfo_to_dict(url)
        self._options = {key: value for key, value in CONNECT_DEFAULTS.items() if key not in given}
        self.watermark, self._written = watermark, {}
        self.passed_over = None  # see _accept
        self.conn = None
        try:
            self.conn, self.server = self._connect(url)
            if watermark is not None:
                self._accept(url, given)
        except UNAVAILABLE as error:
            self.discard()
            raise self._unavailable(error) from None
        except DatabaseUnavailable:
            self.discard()
            raise
        # Every statement runs on this one cursor: a cursor made per statement cost a fifth of
        # a statement's CPU, measured (so a statement's rows are read before the next one).
        self._statement = None
        self._cursor = self.conn.cursor(row_factory=self._rows)
        self._cursors = itertools.count()

    def _connect(self, url, **override):
        """A session with our timeouts, and what it learnt of its server: one round trip."""
        conn = psycopg.connect(url, autocommit=True, row_factory=_described_rows, **self._options, **override)
        try:
            cursor = conn.execute(
                f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}; "
                f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_TIMEOUT_MS}; {SERVER_STATE}"
            )
            while cursor.description is None and cursor.nextset():
                pass
            return conn, Server(conn.info.host, cursor.fetchone())
        except BaseException:
            conn.close()
            raise

    def _accept(self, url, given):
        """Keep this connection if its server can be written and holds the books seen; else
        try the URL's other hosts one by one (an old primary that came back writable is found
        first, the promoted standby after it); else refuse, naming both states. A server
        passed over is said in `passed_over`, for the log."""
        why = self._refusal(self.conn, self.server)
        if why is None:
            self.watermark.note(self.server)
            return
        refused = [f"{self.server.describe()} ({why})"]
        hosts = (given.get("host") or "").split(",")
        ports = (given.get("port") or "").split(",")
        for index, host in enumerate(hosts):
            if len(hosts) < 2 or host == self.server.host:
                continue
            port = ports[index] if len(ports) == len(hosts) else ports[0]
            try:
                conn, server = self._connect(url, host=host, **({"port": port} if port else {}))
            except UNAVAILABLE:
                continue
            why = self._refusal(conn, server)
            if why is not None:
                conn.close()
                refused.append(f"{server.describe()} ({why})")
                continue
            self.conn.close()
            self.conn, self.server = conn, server
            self.passed_over = f"PostgreSQL: passed over {'; '.join(refused)}{self._seen()}; writing to {server.describe()}"
            self.watermark.note(server)
            return
        error = DatabaseUnavailable if self.server.read_only else BooksWentBack
        raise error(f"PostgreSQL: refusing to write to {'; '.join(refused)}{self._seen()}")

    def _seen(self):
        seen = self.watermark.describe()
        return f"; {seen}" if seen else ""

    def _refusal(self, conn, server):
        """Why a serving process must not write to `server`, or None."""
        if server.read_only:
            return "it cannot be written: a standby, or read-only by setting"
        why = self.watermark.went_back(conn, server)
        return f"older books than already answered from: {why}" if why else None

    def durability(self):
        return self.server.durability()

    # The ping also says whether the books can be written (a standby, a server set read-only).
    PING = "SELECT count(*), current_setting('transaction_read_only') FROM wallets WHERE id = 0"

    def check_writable(self, ping_row):
        if ping_row[1] == "on":
            self.discard()  # the next request reconnects: target_session_attrs may find a writable host
            raise DatabaseUnavailable(f"PostgreSQL: {self.server.host} answers read-only: the books cannot be "
                                      "written there (a standby, or default_transaction_read_only)")

    def position(self):
        return self.server.describe()

    def wrote(self, table, row_id, at):
        """Note a ledger or audit row written in the transaction under way (see Watermark)."""
        self._written[table] = (row_id, at)

    def _rows(self, cursor):
        """psycopg row factory for our cursor: the Row class of the statement just run."""
        statement = self._statement
        if statement.row is None:
            statement.row = _row_class(cursor.description)
        return statement.row

    def _unavailable(self, error):
        self.forget_cached()
        # A statement past its timeout (a lock held long by another transaction) is that
        # statement's; the database itself answered.
        away = not isinstance(error, psycopg.errors.QueryCanceled)
        if away:
            # The connection is lost, or its server cannot be written: replaced at the next
            # request, where the URL's target_session_attrs=read-write may find another host.
            # (libpq does not always mark a connection lost when BEGIN or COMMIT found it so.)
            self.discard()
        return DatabaseUnavailable(f"PostgreSQL: {_one_line(error)}", away=away)

    def execute(self, sql, params=()):
        statement = _statements.get(sql)
        if statement is None:
            statement = _statements[sql] = _Statement(sql)
        self._statement = statement
        try:
            return self._cursor.execute(statement.text, params)
        except UNAVAILABLE as error:
            raise self._unavailable(error) from None
        except psycopg.errors.FeatureNotSupported as error:
            # After another instance added a column (a rolling upgrade), a statement this
            # connection prepared before answers "cached plan must not change result type":
            # nothing was done; the connection is replaced and the request answered 503.
            self.forget_cached()
            self.discard()
            raise DatabaseUnavailable(f"PostgreSQL: {_one_line(error)}", away=False) from None

    def executemany(self, sql, rows):
        try:
            with self.conn.cursor() as cursor:
                cursor.executemany(_Statement(sql).text, rows)
        except UNAVAILABLE as error:
            raise self._unavailable(error) from None

    def stream(self, sql, params=()):
        """A server-side cursor inside a transaction or snapshot (rows fetched in batches);
        outside one, a cursor of its own (not the one every other statement runs on)."""
        if not self.in_transaction():
            try:
                return self.conn.execute(_Statement(sql).text, params)
            except UNAVAILABLE as error:
                raise self._unavailable(error) from None
        return self._stream(sql, params)

    def _stream(self, sql, params):
        try:
            with self.conn.cursor(name=f"stream_{next(self._cursors)}") as cursor:
                cursor.itersize = 2_000
                cursor.execute(_Statement(sql).text, params)
                yield from cursor
        except UNAVAILABLE as error:
            raise self._unavailable(error) from None

    @contextlib.contextmanager
    def transaction(self):
        """READ COMMITTED; what must not interleave takes `lock()` first, and each balance
        change is one conditional UPDATE, which PostgreSQL re-evaluates on the latest row.

        (Not in psycopg's pipeline mode: it saves round trips, but waiting in C it polls the
        socket until the answer comes, 0.3 ms of a worker's CPU per callback, measured.)
        """
        self._written.clear()
        self._command(b"BEGIN")
        try:
            yield self
            self._commit()  # a dropped connection here: outcome unknown, answered 503
        except BaseException:
            self.rollback()
            raise
        if self.watermark is not None and self._written:
            self.watermark.rows.update(self._written)

    def _commit(self):
        """COMMIT, waiting for its answer at most COMMIT_TIMEOUT_S; past it cancel the wait
        (for a synchronous standby that is gone, the usual cause) and answer 503 whatever
        comes: PostgreSQL keeps such a transaction locally, but it may not be on the standby."""
        pgconn = self.conn.pgconn
        try:
            pgconn.send_query(b"COMMIT")
            result = self._result_within(COMMIT_TIMEOUT_S)
            if result is None:
                self.conn.cancel_safe(timeout=CANCEL_TIMEOUT_S)
                late = self._result_within(CANCEL_TIMEOUT_S)
                if late is None:
                    self.discard()
                raise DatabaseUnavailable(
                    f"PostgreSQL: the COMMIT was not confirmed within {COMMIT_TIMEOUT_S} s (a synchronous standby "
                    "that does not answer?); it may have been kept")
        except UNAVAILABLE as error:
            raise self._unavailable(error) from None
        self._check_command(result, b"COMMIT")

    def _result_within(self, seconds):
        """The last result of the query sent, or None if it did not all come within `seconds`."""
        pgconn, deadline, result = self.conn.pgconn, time.monotonic() + seconds, None
        while True:
            while pgconn.is_busy():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not _readable(pgconn.socket, remaining):
                    return None
                pgconn.consume_input()
            latest = pgconn.get_result()
            if latest is None:
                return result
            result = latest

    def _command(self, command):
        """Run BEGIN or COMMIT through libpq itself (psycopg's pq layer), not a cursor: they
        take no parameters and return no rows, and through a cursor the two cost a worker
        0.03 ms more CPU per callback (issue 13, measured).

        libpq waits for the answer in C, as psycopg does here (wait_c above), within the same
        timeouts (CONNECT_DEFAULTS and the session's); unlike psycopg it does not wake up for
        a signal meanwhile, so a worker told to stop at once stops when the answer comes (for
        a server that vanished, within the TCP timeouts above)."""
        try:
            result = self.conn.pgconn.exec_(command)
        except UNAVAILABLE as error:
            raise self._unavailable(error) from None
        self._check_command(result, command)

    def _check_command(self, result, command):
        if result.status != psycopg.pq.ExecStatus.COMMAND_OK:
            # Neither fails for a reason of its own: the connection or the server did.
            raise self._unavailable(psycopg.errors.error_from_result(result))
        if result.command_status != command:
            # A COMMIT of a transaction a failed statement aborted answers ROLLBACK: nothing
            # was written (only if an error inside the block was swallowed, which none is).
            raise DatabaseUnavailable(f"PostgreSQL: {command.decode()} answered {result.command_status.decode()}",
                                         away=False)

    def lock(self, kind, key):
        """Hold an advisory lock on (kind, key) until the transaction ends."""
        self.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", [f"{kind}:{key}"])

    @contextlib.contextmanager
    def snapshot(self):
        """REPEATABLE READ, READ ONLY; no statement timeout: a reconciliation or a copy reads
        the whole books, however long they have grown (it takes no lock a writer waits for)."""
        self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        self.execute("SET LOCAL statement_timeout = 0")
        try:
            yield self
        finally:
            self.rollback()

    def in_transaction(self):
        return self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def rollback(self):
        self.forget_cached()
        if self.usable() and self.in_transaction():
            try:
                self.conn.execute("ROLLBACK")
            except UNAVAILABLE:
                self.discard()

    def usable(self):
        return self.conn is not None and not self.conn.closed and not self.conn.broken

    def discard(self):
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()

    def close(self):
        self.discard()

    def backup(self, path):
        """Copy the books, as one snapshot, into a new SQLite file the service can open."""
        target = SQLiteStore(path)
        try:
            with self.snapshot():
                copy_books(self, target)
        finally:
            target.close()

    def table_names(self):
        return [row[0] for row in self.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]

    def _missing(self):
        tables = set(self.table_names())
        indexes = {row[0] for row in self.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}
        present = {}
        for table, column in self.execute(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"):
            present.setdefault(table, set()).add(column)
        return ([name for name in TABLES if name not in tables],
                [index for index in INDEXES if index_name(*index[:2], index[3]) not in indexes],
                [name for name in REPLACED_INDEXES if name in indexes],
                missing_columns({name: present[name] for name in tables if name in present}))

    def create_schema(self):
        """Create what is missing (and drop REPLACED_INDEXES), under an advisory lock so
        instances booting together take turns; when nothing is missing no DDL runs at all, so
        an instance starting beside an older one that is serving takes no lock on its tables."""
        if not any(self._missing()):
            return
        with self.transaction():
            self.execute("SELECT pg_advisory_xact_lock(?)", [SCHEMA_LOCK])
            tables, indexes, replaced, columns = self._missing()  # another instance may have made them meanwhile
            for name in tables:
                self.execute(_table_ddl(name, TABLES[name]))
            for name, column, kind in columns:  # a database an earlier version made
                self.execute(f"ALTER TABLE {name} ADD COLUMN {column} {TYPES[kind]}")
            for statement in index_statements(indexes, replaced):
                self.execute(statement)

    def after_bulk_load(self):
        for name, table in TABLES.items():
            if table["pk"] == "id":
                self.execute(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), coalesce(max(id), 0) + 1, false) FROM {name}"
                )


def _readable(fd, seconds):
    """Wait until `fd` can be read (or has failed), at most `seconds`; in C, without the GIL:
    the worker's other threads serve meanwhile."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(seconds * 1000))


def _table_ddl(name, table):
    columns = []
    for column, kind in table["columns"].items():
        if column == table["pk"] == "id":
            columns.append("id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
            continue
        text = f"{column} {TYPES[kind]}"
        if column == table["pk"]:
            text += " PRIMARY KEY"
        elif column in table["not_null"]:
            text += " NOT NULL"
        if column == table.get("never_negative"):
            text += f" CONSTRAINT {name}_never_negative CHECK ({column} >= 0)"
        columns.append(text)
    for column, parent, parent_column in table.get("foreign_keys", ()):
        columns.append(f"FOREIGN KEY ({column}) REFERENCES {parent} ({parent_column})")
    return f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(columns)})"
