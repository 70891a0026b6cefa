"""Flask's wiring of the store: a connection per thread serving, reused across requests.

The store itself (store/) knows nothing of Flask; this module opens it for the app, hands it
to a request (`get_db`), frees it at the request's end, and keeps the outage state that lets
every request get its 503 within seconds while the database is away.
"""

import contextlib
import os
import threading
import time

import click
from flask import current_app, g
from flask.cli import with_appcontext

import wallet
from store import ConfigurationError, DatabaseUnavailable, check_url, configured_target, describe_url, open_store

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
# While the database is away every request must still get its 503 within seconds: one thread
# of a worker at a time opens a connection, another waits at most QUEUE_TIMEOUT_S for it, and
# once the database failed a request
# the others are answered at once for RETRY_AFTER_S (the 503's Retry-After); so a queue of
# callbacks drains instead of taking turns to time out. Meanwhile one request at a time, at
# most one per PROBE_INTERVAL_S, is let through to try it (the probe): once one gets an
# answer, the worker serves again, not a second later.
QUEUE_TIMEOUT_S = 5
RETRY_AFTER_S = 1
PROBE_INTERVAL_S = 0.1
# /healthz waits less for its turn to open a connection: a worker that cannot get one that
# fast (the database slow to answer a connection) is not one to send traffic to.
HEALTH_WAIT_S = 2


class StartupError(click.ClickException):
    """The service or a command cannot start as configured; one clear line, exit code 1."""


@contextlib.contextmanager
def refusing():
    """Turn the store's and the rules' ConfigurationError into one line and exit code 1."""
    try:
        yield
    except ConfigurationError as error:
        raise StartupError(str(error)) from None


def get_db(wait=QUEUE_TIMEOUT_S):
    """Return a store for the current request or command, taken from this process's idle
    connections or opened if there is none (a thread waits at most `wait` seconds for its turn
    to open one).

    Each thread serving a request uses a connection of its own from its first statement to the
    end of the request (release_db gives it back), so a request that waits on the database
    (a commit's fsync, a long read) holds up no other; connections are kept for the next
    request, so their setup runs once. A connection the database dropped is replaced here.
    """
    store = g.get("wallet_db")
    if store is not None:
        return store
    state = current_app.extensions["wallet_db"]
    probe = time.monotonic() < state["retry_at"] and _probe(state)
    try:
        if state["pid"] != os.getpid():  # forked: the parent's connections are not ours to use
            state.update(idle=[], pid=os.getpid())
        try:
            store = state["idle"].pop()
        except IndexError:
            store = None
        if probe and store is not None and store.usable():
            try:
                store.ping()  # a connection from before the outage may be dead without knowing it yet
            except DatabaseUnavailable:
                store.discard()
        if store is None or not store.usable():
            if store is not None:
                store.close()
            if not state["opening"].acquire(timeout=wait):
                raise DatabaseUnavailable(f"waited {wait} s for a connection to {state['label']}")
            try:
                if not probe and time.monotonic() < state["retry_at"]:  # it failed the request this one waited behind
                    raise DatabaseUnavailable(state["last_error"], away=False)
                store = _open(current_app, state)
            finally:
                state["opening"].release()
    except BaseException:
        state["probing"] = state["probing"] and not probe
        raise
    g.wallet_db = store
    return store


def _probe(state):
    """In the back-off after a failure: make this request the probe that tries the database
    again (True), unless one is under way or was let through under PROBE_INTERVAL_S ago, when
    it is answered 503 at once."""
    now = time.monotonic()
    if state["probing"] or now < state["probe_at"]:
        raise DatabaseUnavailable(state["last_error"], away=False)
    state.update(probing=True, probe_at=now + PROBE_INTERVAL_S)
    return True


def _open(app, state):
    """Open a store (one thread at a time, see get_db); on the first opening in this process
    also create the schema (or check it exists, for a command) and check the currencies'
    decimals."""
    try:
        config = app.config
        with refusing():
            # A serving process keeps one watermark across its connections: the books it
            # answered from cannot be swapped for older ones (a failover's old primary) unnoticed.
            store = open_store(configured_target(config), config["SQLITE_SYNCHRONOUS"], create=state["create"],
                               replicated=config.get("LITESTREAM_REPLICA_URL") is not None,
                               watermark=(state["watermark"] or True) if state["create"] else None)
        store.configured_decimals = config["CURRENCY_DECIMALS"]
        try:
            if not state["prepared"]:
                _prepare(app, store, state["create"])
                state["prepared"] = True
        except BaseException:
            store.close()
            raise
    except DatabaseUnavailable as error:
        outage(app, error)
        raise
    state.update(prepared=True, watermark=store.watermark)
    if store.passed_over and store.passed_over != state["passed_over"]:
        # A server holding older books came back writable (an old primary): a split brain to end.
        state["passed_over"] = store.passed_over
        app.logger.error("%s", store.passed_over)
    recovered(app)
    return store


def _prepare(app, store, create):
    if create:
        durability = store.durability()
        if durability is not None:  # once per process, at its first connection
            can_lose, says = durability
            (app.logger.warning if can_lose else app.logger.info)(says)
        store.create_schema()
    elif not store.has_schema():
        raise StartupError(f"{store.label} holds no wallet tables; create them with 'flask --app app init-db'")
    with refusing():
        wallet.check_currency_decimals(store)


def outage(app, error):
    """Log that the database is away, once per outage (not once per request); a command
    says so itself, as its error."""
    state = app.extensions["wallet_db"]
    if error.away:
        state["retry_at"] = time.monotonic() + RETRY_AFTER_S
        state["last_error"] = f"{error} (a moment ago; tried again after {RETRY_AFTER_S} s)"
        if state["pid"] == os.getpid():  # the idle connections are from before: opened anew after it
            idle, state["idle"] = state["idle"], []
            for store in idle:
                with contextlib.suppress(Exception):
                    store.close()
    if not state["create"]:
        return
    if state["outage_since"] is None:
        state["outage_since"] = time.monotonic()
        state["alarmed"] = error.alarm
        app.logger.error("database unavailable (%s): answering 503 until it is back: %s", state["label"], error)
    elif error.alarm and not state["alarmed"]:
        state["alarmed"] = True
        app.logger.error("%s", error)


def recovered(app):
    """The database answered: serve again at once, and log the end of an outage."""
    state = app.extensions["wallet_db"]
    state.update(retry_at=0.0, probing=False)
    if state["outage_since"] is not None:
        app.logger.warning("database available again after %.1f s (%s)",
                           time.monotonic() - state["outage_since"], state["label"])
        state["outage_since"] = None


def release_db(exc=None):
    """At the end of a request or command: never leave a transaction open, keep the store for
    the next request, and note the end of an outage when the books served this request."""
    store = g.pop("wallet_db", None)
    if store is None:
        return
    state = current_app.extensions["wallet_db"]
    try:
        if not store.usable():
            store.close()
            store = None
        elif store.in_transaction():
            store.rollback()
    except Exception:  # a connection that fails even to roll back is replaced next time
        store.close()
        store = None
    if store is not None and state["pid"] == os.getpid():
        state["idle"].append(store)
    if state["retry_at"] or state["probing"] or state["outage_since"] is not None:  # not on the everyday path
        if g.pop("wallet_db_failed", False):
            state["probing"] = False  # a failed probe: the next may try after PROBE_INTERVAL_S
        else:
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
    """Close this app's idle connections (the tests call it; workers simply exit)."""
    state = app.extensions["wallet_db"]
    if state["pid"] == os.getpid():
        while state["idle"]:
            state["idle"].pop().close()
    state.update(idle=[], pid=os.getpid())


@click.command("init-db")
@with_appcontext
def init_db_command():
    """Create the database (a SQLite file) and its tables if missing."""
    config = current_app.config
    try:
        with refusing():
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
        with refusing():
            check_url(url)
            label = describe_url(url)
    else:
        label = f"SQLite file {os.path.abspath(app.config['DATABASE_PATH'])}"
    app.extensions["wallet_db"] = {
        "idle": [], "pid": os.getpid(), "opening": threading.Lock(), "create": create,
        "prepared": False, "label": label, "outage_since": None, "retry_at": 0.0,
        "last_error": None, "probing": False, "probe_at": 0.0, "alarmed": False, "watermark": None,
        "passed_over": None,
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
