"""Moving the books between stores: one consistent snapshot, one transaction on the target;
and the new SQLite file a backup or a copy is written to."""

import contextlib
import os
import tempfile

from store.base import ConfigurationError
from store.schema import TABLES

COPY_ORDER = ("currencies", "wallets", "ledger", "games", "operations", "callbacks")  # parents first
COPY_BATCH = 2_000


def copy_books(source, target, progress=None):
    """Copy every row of the books from `source` into an empty `target`, in one transaction
    on the target; return the number of rows per table. Call it inside `source.snapshot()`,
    so the copy is one consistent state however busy the source is.

    `progress(table, rows_so_far)` is called as rows arrive (for a progress display).
    """
    assert set(COPY_ORDER) == set(TABLES)
    target.create_schema()
    if not target.is_empty():
        raise ConfigurationError(f"{target.label} already holds books; copy only into an empty database")
    counts = {}
    with target.transaction():
        for table in COPY_ORDER:
            columns = list(TABLES[table]["columns"])
            insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            rows = source.stream(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {TABLES[table]['pk']}")
            counts[table] = 0
            batch = []
            for row in rows:
                batch.append(tuple(row))
                if len(batch) == COPY_BATCH:
                    target.executemany(insert, batch)
                    counts[table] += len(batch)
                    batch = []
                    if progress:
                        progress(table, counts[table])
            if batch:
                target.executemany(insert, batch)
                counts[table] += len(batch)
            if progress:
                progress(table, counts[table])
        target.after_bulk_load()
    return counts


def check_new_file(path):
    """Refuse (ConfigurationError) a SQLite target that is not a plain path to a new file: SQLite
    reads '' and ':memory:' as databases that are no file, and 'file:...' as a URI (a
    'file:' folder would be made here); an existing path, a dangling symlink included, would be
    written over or through."""
    text = os.fspath(path)
    if not text.strip() or text.strip() == ":memory:":
        raise ConfigurationError(f"{text!r} is no file name: give the path of a new file")
    if text[:5].lower() == "file:":
        raise ConfigurationError(f"{text!r} is a SQLite URI: give a plain path of a new file")
    if text.endswith(("/", os.sep)) or os.path.basename(text) in (".", ".."):
        raise ConfigurationError(f"{text!r} names a directory: give the path of a new file in it")
    if os.path.lexists(text):
        raise ConfigurationError(f"{text} exists; choose a new file name")


@contextlib.contextmanager
def new_file(path):
    """Write a new file at `path` whole or not at all: yield a temporary path beside it to write
    (and check); when the block succeeds, give it the name `path`, which is never replaced: if
    another writer took the name meanwhile, ConfigurationError, and its file stays as it is.
    The folders made for it, and the temporary file, are removed when it fails."""
    check_new_file(path)
    folder = os.path.dirname(os.path.abspath(path))
    made, missing = [], folder
    while not os.path.lexists(missing):
        made.append(missing)  # the deepest first
        missing = os.path.dirname(missing)
    temporary = None
    try:
        os.makedirs(folder, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".partial")
        os.close(handle)  # empty: SQLite writes a new database into an empty file
        yield temporary
        try:
            os.link(temporary, path)  # never replaces: fails if the name was taken meanwhile
        except FileExistsError:
            raise ConfigurationError(f"{path} exists (written meanwhile by another run?): left as it is") from None
    except BaseException:
        _remove(temporary)
        for directory in made:  # only those still empty
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        raise
    _remove(temporary)


def _remove(temporary):
    """Remove a temporary SQLite file and what SQLite may have left beside it."""
    if temporary is not None:
        for leftover in (temporary, f"{temporary}-wal", f"{temporary}-shm", f"{temporary}-journal"):
            with contextlib.suppress(OSError):
                os.remove(leftover)
