"""The books on disk: one seam (store/base.py) over two engines, SQLite and PostgreSQL.

Nothing here knows Flask, the money rules or the schemas of requests: the rules take a store
and plain values. This module chooses the engine from a target, once.
"""

import os
import urllib.parse

from store.base import ConfigurationError, DatabaseUnavailable, Store
from store.sqlite import SQLiteStore

__all__ = ["ConfigurationError", "DatabaseUnavailable", "Store", "SQLiteStore", "open_store", "configured_target",
           "check_url", "is_database_url", "describe_url"]

POSTGRES_SCHEMES = ("postgresql", "postgres")


def describe_url(url):
    """Where a PostgreSQL URL points, for logs: host, port and database, never the password."""
    from store.postgres import describe  # psycopg is loaded only for PostgreSQL

    return describe(url)


def is_database_url(target):
    """Whether `target` names a database by URL (any `scheme://`) rather than a SQLite file."""
    return "://" in os.fspath(target)


def check_url(url, what="DATABASE_URL"):
    """Refuse a database URL of any scheme but PostgreSQL's, naming the accepted ones."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in POSTGRES_SCHEMES:
        accepted = " or ".join(f"{name}://" for name in POSTGRES_SCHEMES)
        advice = ("unset it to keep the books in the SQLite file at DATABASE_PATH" if what == "DATABASE_URL"
                  else "or give a SQLite file's path")
        raise ConfigurationError(
            f"{what} must be a PostgreSQL URL ({accepted}...), not {scheme + '://' if scheme else repr(url[:20])}; {advice}"
        )


def open_store(target, synchronous="FULL", create=True, replicated=False, watermark=None):
    """Open the books at `target`: a PostgreSQL URL, or else a SQLite file path (`replicated`:
    Litestream copies its WAL off the machine). A URL of another scheme is refused, never
    taken for a file name. `watermark` (PostgreSQL; a SQLite file does not fail over): a
    serving process's store.postgres.Watermark, or True for a new one; the store then refuses
    a server that cannot be written or holds older books than it."""
    if is_database_url(target):
        check_url(os.fspath(target), what="a database URL")
        from store.postgres import PostgresStore, Watermark  # psycopg is loaded only for PostgreSQL

        return PostgresStore(target, watermark=Watermark() if watermark is True else watermark)
    return SQLiteStore(target, synchronous, create=create, writers_queue=True, replicated=replicated)


def configured_target(config):
    """The configured store: DATABASE_URL if set, else the SQLite file DATABASE_PATH."""
    return config.get("DATABASE_URL") or config["DATABASE_PATH"]
