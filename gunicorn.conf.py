"""gunicorn's settings, read from its working directory: the Procfile's line and the README's
local gunicorn line use them unchanged.

Replication (LITESTREAM_REPLICA_URL): the master starts one Litestream for the whole service
before any worker serves, and stops it when gunicorn stops. See replication.py.
Metrics (/metrics): the master keeps prometheus_client's multiprocess directory, made and
emptied before the workers start, a dead worker's counts folded in. See web/multiproc.py.
"""

# --- Worker class ---------------------------------------------------------------------------
# Every core, no stalls (web/serving.py says how): the master deals the connections to the
# workers in turn, so kept-alive connections spread over every worker (and core); a worker reads
# each request in its main loop and hands a thread only a whole one, so clients that send their
# request slowly (or never finish it) hold no thread, and a database call that blocks holds
# only its own thread (with its own connection, db.get_db). gunicorn's own refusals (bad
# framing, the limits below) answer the JSON error body: serving.JsonRefusals overrides the
# Worker.handle_error all worker classes share.
import os

import replication
from web import multiproc
from web.serving import Dealer, WalletWorker, binds, check_before_serving, refuse

worker_class = WalletWorker
# Threads per worker: each serves one request at a time with its own database connection.
# sqlite3 and psycopg release the GIL while they wait, so a commit's fsync or a long read holds
# its thread only. Writes take turns on the database anyway: more threads add connections and
# GIL hand-offs, not callbacks per second.
threads = 4
worker_connections = 1000  # per worker: open connections, idle or slow ones included
# A request must arrive whole within this many seconds (the worker drops a client that is
# slower, and gives it no thread meanwhile), and an idle kept-alive connection stays open as
# long: longer than a PaaS router keeps one (Heroku's: 90 s), so the router, not gunicorn,
# closes it and never reuses a closed one.
keepalive = 95
# gunicorn's control socket (gunicornc) is not used here, and every master on a machine would
# share its one default path (~/.gunicorn/gunicorn.ctl): two instances on one host would clash.
control_socket_disable = True

# gunicorn's own default address, and METRICS_PORT's when set (serving.binds); --bind or
# GUNICORN_CMD_ARGS="--bind ..." replace both.
try:
    bind = binds(os.environ)
except ValueError as error:
    refuse(error)

# --- HTTP limits (README: "Refused by gunicorn") --------------------------------------------
# The request line (method, path, query, version) may be 8190 bytes, gunicorn's largest: the
# longest request the API serves, GET /api/games with every filter and the cursor at their
# longest (255 four-byte characters percent-encoded), is about 7,300. Past it: JSON 414.
limit_request_line = 8190
# At most 100 header fields of at most 8190 bytes each (gunicorn's defaults). Past: JSON 431.
limit_request_fields = 100
limit_request_field_size = 8190

# --- Before any worker starts, and at exit ----------------------------------------------------


def on_starting(server):
    """Restore a lost database from its replica and start replicating (when configured), then
    check the app: a wrong setting or an unreachable database stops the service here, with one
    clear line. The metrics' directory is ready before anything forks."""
    try:
        multiproc.prepare()
        replication.on_starting(server)
    except (multiproc.Refused, replication.ConfigurationError) as error:
        refuse(error)
    check_before_serving(server)
    multiproc.prepare()  # empty again: the check's child may have written its (zero) counters


_dealer = None


def when_ready(server):
    """Start dealing connections to the workers (only to workers of WalletWorker's kind: a
    worker class given on the command line accepts for itself)."""
    global _dealer
    if issubclass(server.worker_class, WalletWorker):
        _dealer = Dealer(server.LISTENERS, server.log)
        _dealer.start()


def pre_fork(server, worker):
    if _dealer is not None:
        _dealer.add(worker)


def post_fork(server, worker):
    if _dealer is not None:
        _dealer.in_worker(worker)


def child_exit(server, worker):
    multiproc.worker_exited(worker.pid)
    if _dealer is not None:
        _dealer.remove(worker)


def on_exit(server):
    replication.on_exit(server)
    multiproc.remove()
