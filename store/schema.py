"""The books' tables and indexes, once, for both engines.

Column types are Python types: int is a 64-bit integer (money is always integer minor
units), str text, bytes a blob, float a double. An `id` integer primary key is assigned
by the database; a `never_negative` column is refused below zero by the database itself
(a trigger in SQLite, a CHECK in PostgreSQL). Each engine renders this into its own DDL.
"""

TABLES = {
    "wallets": {
        "columns": {"id": int, "player_id": str, "currency": str, "balance": int, "updated_at": int},
        "pk": "id",
        "not_null": {"player_id", "currency", "balance", "updated_at"},
        "never_negative": "balance",  # enforced by the database too: the last line of defence
    },
    "currencies": {
        "columns": {"currency": str, "decimals": int},
        "pk": "currency",
        "not_null": {"decimals"},
    },
    "ledger": {
        "columns": {
            "id": int,
            "wallet_id": int,
            "amount": int,  # signed, minor units
            "balance_after": int,
            "kind": str,  # deposit | withdrawal | bet | payout | refund
            "game_id": str,
            "reference": str,
            "created_at": int,  # epoch ms
            "note": str,  # who moved the money by hand and why (added after 1.0: NULL on older rows)
        },
        "pk": "id",
        "not_null": {"wallet_id", "amount", "balance_after", "kind", "created_at"},
        "foreign_keys": [("wallet_id", "wallets", "id")],
    },
    "games": {
        "columns": {
            "game_id": str,
            "status": str,  # declined | open | won | lost | refunded
            "player_id": str,
            "currency": str,
            "wallet_id": int,
            "bet": int,  # minor units, as debited
            "session_id": str,
            "game_name": str,
            "round": str,
            "all_bet_amount": str,
            "round_data": str,  # JSON
            "start_time": int,  # provider's time of the start, epoch ms
            "started_at": int,  # our receipt of the start, epoch ms
            "payout": str,  # the multiplier, exact decimal text
            "profit": str,
            "credit": int,  # minor units credited by the finish
            "balance_update_delay": int,  # ms
            "finish_time": int,  # provider's time of the finish, epoch ms
            "settled_at": int,  # our receipt of the finish, epoch ms
            "refunded_at": int,  # epoch ms
            "refund_response": str,  # JSON body of the refund's answer, replayed on a repeat
        },
        "pk": "game_id",
        "not_null": {"status", "player_id", "currency", "bet", "started_at"},
    },
    "operations": {
        "columns": {
            "reference": str,
            "kind": str,  # deposit | withdrawal
            "player_id": str,
            "currency": str,
            "amount": int,
            "response": str,  # JSON body of the first answer, replayed on a repeat
            "created_at": int,
        },
        "pk": "reference",
        "not_null": {"kind", "player_id", "currency", "amount", "response", "created_at"},
    },
    "callbacks": {
        "columns": {
            "id": int,
            "received_at": int,
            "type": str,
            "game_id": str,
            "player_id": str,
            "outcome": str,  # accepted | declined | duplicate | conflict | invalid | ignored | error
            "reason": str,
            "status_code": int,
            "response": str,
            "body": bytes,  # raw request body, as received
            "duration_ms": float,
        },
        "pk": "id",
        "not_null": {"received_at", "outcome", "status_code"},
    },
}
# Partial indexes hold only the rows their queries look for, so that the everyday callback (an
# accepted start or finish, not a win) writes none of their pages: every index page a commit
# changes is written and synced to the log, the larger part of a commit (measured, issue 13).
# A query meant to use one states its condition too (books.py, wallet.py): that is how both
# engines know the index holds every row the query can want.
COMMON = {"outcome": ("accepted",), "type": ("start", "finish")}  # the audit's everyday values


def uncommon(column):
    """The condition of an audit column's partial index: none of its everyday values."""
    values = ", ".join(f"'{value}'" for value in COMMON[column])
    return f"{column} NOT IN ({values})"


CREDITED = "credit > 0"
# (table, columns, unique, condition or None); named as sqlite-utils names them,
# idx_<table>_<columns>, and a partial one with `_partial` after.
INDEXES = (
    ("wallets", ("player_id", "currency"), True, None),
    ("ledger", ("wallet_id", "id"), False, None),
    ("ledger", ("game_id",), False, None),
    ("games", ("wallet_id", "settled_at"), False, CREDITED),  # a wallet's pending wins
    ("games", ("status", "started_at"), False, None),
    ("games", ("started_at", "game_id"), False, None),
    ("games", ("player_id", "started_at"), False, None),
    ("callbacks", ("game_id",), False, None),
    ("callbacks", ("outcome", "id"), False, uncommon("outcome")),
    ("callbacks", ("type", "id"), False, uncommon("type")),
)
# Made whole by earlier versions, now partial (above): dropped where found.
REPLACED_INDEXES = ("idx_games_wallet_id_settled_at", "idx_callbacks_outcome_id", "idx_callbacks_type_id")


def missing_columns(present):
    """The columns of TABLES that a database made by an earlier version lacks, as (table,
    column, type): `present` maps each table to the names of its columns. Every column added
    after a table's first version may be NULL, so adding it to existing rows is all an
    upgrade needs."""
    return [(name, column, kind) for name, table in TABLES.items() if name in present
            for column, kind in table["columns"].items() if column not in present[name]]


def index_name(table, columns, condition=None):
    return f"idx_{table}_{'_'.join(columns)}" + ("_partial" if condition else "")


def index_statements(indexes=INDEXES, replaced=REPLACED_INDEXES):
    """The DDL that brings indexes up to date, in the SQL both engines speak: drop those
    `replaced`, create `indexes` (entries of INDEXES) where missing."""
    return [f"DROP INDEX IF EXISTS {name}" for name in replaced] + [
        f"CREATE {'UNIQUE ' if unique else ''}INDEX IF NOT EXISTS {index_name(table, columns, condition)} "
        f"ON {table} ({', '.join(columns)})" + (f" WHERE {condition}" if condition else "")
        for table, columns, unique, condition in indexes
    ]

