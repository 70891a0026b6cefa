"""Moving the books between stores: one consistent snapshot, one transaction on the target."""

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

