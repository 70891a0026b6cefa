"""SQLite connection, pragmas, schema and the one way to open a write transaction."""

import contextlib
import os
import sqlite3
import threading
import time

import click
import sqlite_utils
from flask import current_app
from flask.cli import with_appcontext

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
BUSY_TIMEOUT_MS = 10_000
# With Litestream replicating (replication.py) it checkpoints the WAL itself once it has
# copied it. At SQLite's default of 1,000 pages every commit would also try a checkpoint
# that Litestream's read transaction holds back: 10% more CPU per callback in the workers,
# measured. 10,000 pages (40 MiB) still bounds the WAL while Litestream is not running.
REPLICATED_AUTOCHECKPOINT_PAGES = 10_000


def connect(path, synchronous="FULL", replicated=False):
    """Open a connection with the pragmas every connection needs, set once."""
    # isolation_level=None: the sqlite3 module never opens transactions behind our
    # back, so `transaction()` below is the only place one begins.
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    conn.row_factory = sqlite3.Row  # rows read by index or by column name
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    _enable_wal(conn)
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")
    if replicated:
        conn.execute(f"PRAGMA wal_autocheckpoint = {REPLICATED_AUTOCHECKPOINT_PAGES}")
    db = sqlite_utils.Database(conn, execute_plugins=False)
    db.fixed_decimals = {}  # currency -> decimals once read from `currencies`, see wallet.py
    return db


def _enable_wal(conn):
    """Switch the file to WAL, waiting for the lock like any writer would.

    Turning a new file into WAL needs an exclusive lock, and SQLite answers "database is
    locked" at once instead of calling the busy handler when another worker booting at the
    same moment holds it; so retry here for as long as busy_timeout would have waited.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)
    if mode.lower() != "wal":  # SQLite keeps the old mode where WAL is impossible
        raise RuntimeError(f"SQLite could not switch the database to WAL mode (it stays {mode!r})")


@contextlib.contextmanager
def transaction(db):
    """Run the block in one `BEGIN IMMEDIATE` transaction: commit on success, roll back on error.

    IMMEDIATE takes the write lock before the first read, so a read-check-write in the
    block cannot interleave with another worker's (a deferred transaction would fail
    with "database is locked" when two readers both try to upgrade).
    """
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.conn.execute("COMMIT")
    except BaseException:
        # Whatever failed (the block, the commit, or SQLite rolling back on its own after a
        # full disk), forget decimals read in it: they may be this transaction's own insert.
        db.fixed_decimals.clear()
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise


def create_schema(db):
    """Create the tables and indexes if missing; safe when several workers start at once."""
    with transaction(db):
        db["wallets"].create(
            {"id": int, "player_id": str, "currency": str, "balance": int, "updated_at": int},
            pk="id",
            not_null={"player_id", "currency", "balance", "updated_at"},
            if_not_exists=True,
        )
        db["wallets"].create_index(["player_id", "currency"], unique=True, if_not_exists=True)
        db["currencies"].create(
            {"currency": str, "decimals": int}, pk="currency", not_null={"decimals"}, if_not_exists=True
        )
        db["ledger"].create(
            {
                "id": int,
                "wallet_id": int,
                "amount": int,  # signed, minor units
                "balance_after": int,
                "kind": str,  # deposit | withdrawal | bet | payout | refund
                "game_id": str,
                "reference": str,
                "created_at": int,  # epoch ms
            },
            pk="id",
            not_null={"wallet_id", "amount", "balance_after", "kind", "created_at"},
            foreign_keys=[("wallet_id", "wallets", "id")],
            if_not_exists=True,
        )
        db["ledger"].create_index(["wallet_id", "id"], if_not_exists=True)
        db["ledger"].create_index(["game_id"], if_not_exists=True)
        db["games"].create(
            {
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
            pk="game_id",
            not_null={"status", "player_id", "currency", "bet", "started_at"},
            if_not_exists=True,
        )
        db["games"].create_index(["wallet_id", "settled_at"], if_not_exists=True)
        db["games"].create_index(["status", "started_at"], if_not_exists=True)
        db["games"].create_index(["started_at", "game_id"], if_not_exists=True)
        db["games"].create_index(["player_id", "started_at"], if_not_exists=True)
        db["operations"].create(
            {
                "reference": str,
                "kind": str,  # deposit | withdrawal
                "player_id": str,
                "currency": str,
                "amount": int,
                "response": str,  # JSON body of the first answer, replayed on a repeat
                "created_at": int,
            },
            pk="reference",
            not_null={"kind", "player_id", "currency", "amount", "response", "created_at"},
            if_not_exists=True,
        )
        db["callbacks"].create(
            {
                "id": int,
                "received_at": int,
                "type": str,
                "game_id": str,
                "player_id": str,
                "outcome": str,  # accepted | declined | duplicate | conflict | invalid | ignored
                "reason": str,
                "status_code": int,
                "response": str,
                "body": bytes,  # raw request body, as received
                "duration_ms": float,
            },
            pk="id",
            not_null={"received_at", "outcome", "status_code"},
            if_not_exists=True,
        )
        db["callbacks"].create_index(["game_id"], if_not_exists=True)
        db["callbacks"].create_index(["outcome", "id"], if_not_exists=True)
        db["callbacks"].create_index(["type", "id"], if_not_exists=True)
        # Last line of defence: no code path may take a wallet below zero.
        db.execute(
            """CREATE TRIGGER IF NOT EXISTS wallets_never_negative
            BEFORE UPDATE OF balance ON wallets WHEN NEW.balance < 0
            BEGIN SELECT RAISE(ABORT, 'wallet balance would go negative'); END"""
        )


def get_db():
    """Return this worker thread's connection, opening it on first use.

    One connection per worker thread, reused across requests, so pragmas are set once
    per connection rather than per request. A forked process opens its own.
    """
    state = current_app.extensions["wallet_db"]
    local = state["local"]
    if getattr(local, "pid", None) != os.getpid():
        config = current_app.config
        local.db = connect(config["DATABASE_PATH"], config["SQLITE_SYNCHRONOUS"],
                           config.get("LITESTREAM_REPLICA_URL") is not None)
        local.pid = os.getpid()
        state["opened"].append(local.db)
    return local.db


def release_db(exc=None):
    """Never leave a transaction open on a reused connection after a request."""
    db = getattr(current_app.extensions["wallet_db"]["local"], "db", None)
    if db is not None and db.conn.in_transaction:
        db.fixed_decimals.clear()
        db.conn.execute("ROLLBACK")


def close_all(app):
    """Close every connection this app opened (the tests call it; workers simply exit)."""
    state = app.extensions["wallet_db"]
    for db in state["opened"]:
        db.close()
    state["opened"].clear()
    state["local"] = threading.local()


@click.command("init-db")
@with_appcontext
def init_db_command():
    """Create the database schema if it is missing."""
    path = current_app.config["DATABASE_PATH"]
    create_schema(get_db())
    click.echo(f"Database ready: {path}")


def init_app(app):
    """Create the schema once at start-up and wire teardown and the `init-db` command."""
    synchronous = app.config["SQLITE_SYNCHRONOUS"].upper()
    if synchronous not in SYNCHRONOUS_MODES:
        raise RuntimeError(f"SQLITE_SYNCHRONOUS must be one of {', '.join(SYNCHRONOUS_MODES)}")
    app.config["SQLITE_SYNCHRONOUS"] = synchronous
    app.extensions["wallet_db"] = {"local": threading.local(), "opened": []}
    path = app.config["DATABASE_PATH"]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with connect(path, synchronous) as schema_db:
        create_schema(schema_db)
    app.teardown_appcontext(release_db)
    app.cli.add_command(init_db_command)


def backup(db, path):
    """Copy the database to a new file while it keeps serving (one consistent snapshot)."""
    db.execute("VACUUM INTO ?", [os.fspath(path)])
