"""The replication supervisor: `python -m replication.supervisor DATABASE MASTER_PID`, started by
the gunicorn master (replication.on_starting). Restores, runs and watches Litestream, and writes
the state readers report (see replication/__init__.py). Standard library only.
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

from replication import (
    FAILING_AFTER,
    HEALTHY_RUN,
    READY_TIMEOUT,
    REQUEST_TIMEOUT,
    RESTART_DELAYS,
    SHUTDOWN_SYNC_TIMEOUT,
    STOP_TIMEOUT,
    WATCH_INTERVAL,
    ConfigurationError,
    _alive,
    _iso,
    litestream_binary,
    log,
    meta_path,
    redact,
    replica_url,
    status_path,
)

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
        log.warning("replication: restored %s from %s as it was replicated at %s, in %d ms; %s",
                    self.database, redact(self.url), self.replicated_at(summary.get("txid")),
                    summary.get("duration_ms", 0), _newest_callback(self.database))

    def replicated_at(self, txid):
        """When the replica first held transaction `txid` (Litestream's internal number, which
        tells an operator nothing): the earliest time of the replica's files ending at it."""
        listed = subprocess.run([self.binary, "ltx", "-level", "all", "-json", self.url],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True)
        try:
            times = [entry["timestamp"] for entry in json.loads(listed.stdout) if entry.get("max_txid") == txid]
            return _iso(min(_seconds(text) for text in times))
        except (ValueError, TypeError, KeyError, AttributeError):  # no such file listed, or not Litestream's JSON
            return "an unknown time (`litestream ltx` lists the replica's files)"

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
    """The supervisor: `python -m replication.supervisor DATABASE MASTER_PID`, started by on_starting()."""
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
