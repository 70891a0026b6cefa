"""Reading the books: paged history (games, ledger, callbacks) and the reconciliation.

Nothing here writes. Amounts are shown and checked with money/units.py, the same arithmetic
the rules (wallet.py) settle with.
"""

import base64
import collections
import decimal
import itertools
import json

from money.refusals import ApiError
from money.units import iso, to_text, win_credit
from money.views import game_view
from schemas import storable
from store.schema import COMMON, TABLES, uncommon


def encode_cursor(*key):
    """Make an opaque cursor from a row's sort key."""
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def decode_cursor(cursor, types):
    """Read a cursor back into its sort key; a cursor we did not make is a 400."""
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(key, list) or [type(part) for part in key] != list(types):
            raise ValueError
        for part in key:
            if type(part) is int and not -(2**63) <= part < 2**63:
                raise ValueError  # SQLite's integers are 64-bit
            if type(part) is str and (not storable(part) or "\x00" in part):
                raise ValueError  # text no engine stores: PostgreSQL's text holds no U+0000
        return key
    except (ValueError, UnicodeError, RecursionError):
        raise ApiError(400, "validation_error", "Invalid cursor.", {"cursor": ["Invalid cursor."]}) from None


def _page(db, rows, limit, key, view):
    items = [view(db, row) for row in rows[:limit]]
    next_cursor = encode_cursor(*key(rows[limit - 1])) if len(rows) > limit else None
    return items, next_cursor


def list_games(db, player_id=None, status=None, since=None, limit=50, cursor=None):
    """Games, newest start first, filtered by player, status and start time."""
    where, params = [], []
    for column, value in (("player_id", player_id), ("status", status)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        where.append("started_at >= ?")
        params.append(since)
    if cursor is not None:
        started_at, game_id = decode_cursor(cursor, (int, str))
        where.append("(started_at < ? OR (started_at = ? AND game_id < ?))")
        params += [started_at, started_at, game_id]
    sql = "SELECT * FROM games" + (" WHERE " + " AND ".join(where) if where else "")
    rows = db.execute(sql + " ORDER BY started_at DESC, game_id DESC LIMIT ?", [*params, limit + 1]).fetchall()
    games, next_cursor = _page(db, rows, limit, lambda row: (row["started_at"], row["game_id"]), game_view)
    return {"games": games, "next_cursor": next_cursor}


def ledger_view(db, row):
    """A ledger row as the API shows it."""
    return {
        "id": row["id"],
        "player_id": row["player_id"],
        "currency": row["currency"],
        "kind": row["kind"],
        "amount": to_text(db, row["amount"], row["currency"]),
        "balance_after": to_text(db, row["balance_after"], row["currency"]),
        "game_id": row["game_id"],
        "reference": row["reference"],
        "note": row["note"],
        "created_at": iso(row["created_at"]),
    }


LEDGER_SQL = (
    "SELECT l.*, w.player_id, w.currency FROM ledger l JOIN wallets w ON w.id = l.wallet_id"
)


def list_ledger(db, player_id, currency=None, limit=50, cursor=None):
    """A player's ledger rows, newest first."""
    where, params = ["w.player_id = ?"], [player_id]
    if currency is not None:
        where.append("w.currency = ?")
        params.append(currency)
    if cursor is not None:
        where.append("l.id < ?")
        params.append(decode_cursor(cursor, (int,))[0])
    rows = db.execute(
        f"{LEDGER_SQL} WHERE {' AND '.join(where)} ORDER BY l.id DESC LIMIT ?", [*params, limit + 1]
    ).fetchall()
    entries, next_cursor = _page(db, rows, limit, lambda row: (row["id"],), ledger_view)
    return {"entries": entries, "next_cursor": next_cursor}


def callback_view(db, row):
    """An audit row as the API shows it, with the raw body as text."""
    body = row["body"]
    return {
        "id": row["id"],
        "received_at": iso(row["received_at"]),
        "type": row["type"],
        "game_id": row["game_id"],
        "player_id": row["player_id"],
        "outcome": row["outcome"],
        "reason": row["reason"],
        "status_code": row["status_code"],
        "response": row["response"],
        "body": None if body is None else bytes(body).decode("utf-8", errors="replace"),
        "duration_ms": row["duration_ms"],
    }


def list_callbacks(db, outcome=None, type=None, game_id=None, limit=50, cursor=None):
    """The audit log, newest first."""
    where, params = [], []
    for column, value in (("outcome", outcome), ("type", type), ("game_id", game_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
            if column in COMMON and value not in COMMON[column]:
                where.append(uncommon(column))  # so that its partial index is used (store/schema.py)
    if cursor is not None:
        where.append("id < ?")
        params.append(decode_cursor(cursor, (int,))[0])
    sql = "SELECT * FROM callbacks" + (" WHERE " + " AND ".join(where) if where else "")
    rows = db.execute(sql + " ORDER BY id DESC LIMIT ?", [*params, limit + 1]).fetchall()
    items, next_cursor = _page(db, rows, limit, lambda row: (row["id"],), callback_view)
    return {"callbacks": items, "next_cursor": next_cursor}


def game_detail(db, game_id):
    """One game with its ledger rows and every callback received for it, or None."""
    game = db.execute("SELECT * FROM games WHERE game_id = ?", [game_id]).fetchone()
    if game is None:
        return None
    ledger = db.execute(f"{LEDGER_SQL} WHERE l.game_id = ? ORDER BY l.id", [game_id]).fetchall()
    audit = db.execute("SELECT * FROM callbacks WHERE game_id = ? ORDER BY id", [game_id]).fetchall()
    return {
        **game_view(db, game),
        "ledger": [ledger_view(db, row) for row in ledger],
        "callbacks": [callback_view(db, row) for row in audit],
    }


# --- reconciliation ---------------------------------------------------------------------

TOTALS = {"deposit": "deposited", "withdrawal": "withdrawn", "bet": "staked", "payout": "paid_out", "refund": "refunded"}


# SQLite's sum() of 64-bit integers fails once a total passes 2^63 (a currency's lifetime
# turnover can), and PostgreSQL's would come back as NUMERIC: so every total here is summed
# as its high and low 32 bits apart, each partial sum far inside 64 bits on either engine,
# and Python adds the two exactly.
SPLIT = 2**32


def exact_sum(column, name="total"):
    """SQL for two columns, `<name>_high` and `<name>_low`, whose `total()` is the exact sum
    of a 64-bit integer column."""
    return f"sum({column} / {SPLIT}) AS {name}_high, sum({column} % {SPLIT}) AS {name}_low"


def total(row, name="total"):
    """The exact sum from exact_sum's two partial sums in `row` (0 when there were no rows)."""
    return int(row[f"{name}_high"] or 0) * SPLIT + int(row[f"{name}_low"] or 0)


def size(db):
    """The books' size, roughly: the highest ledger id (an index lookup on both engines)."""
    return db.execute("SELECT max(id) AS top FROM ledger").fetchone()["top"] or 0


def reconcile(db):
    """Check the books, from one consistent snapshot; return a summary and every discrepancy
    (ok when there are none).

    Every wallet equals the sum of its ledger and is not negative; every game's ledger rows
    match its state (declined: none; open: its bet; won/lost: bet and payout, the payout
    bet x multiplier on a win (paid whole, or in parts by settlements) and 0 on a loss; unpaid:
    bet and less than the win; refunded: bet and a refund cancelling it);
    no ledger row points at a missing game.
    """
    with db.snapshot():
        return _reconcile(db)


def _reconcile(db):
    problems = []
    wallets = 0
    for w in db.stream(
        f"SELECT w.id, w.player_id, w.currency, w.balance, {exact_sum('l.amount')} "
        "FROM wallets w LEFT JOIN ledger l ON l.wallet_id = w.id GROUP BY w.id ORDER BY w.id"
    ):
        wallets += 1
        name, balance = f"wallet {w['player_id']}/{w['currency']}", w["balance"]
        ledger_sum = total(w)
        if balance != ledger_sum:
            problems.append(f"{name}: balance {balance} != ledger sum {ledger_sum} (minor units)")
        if balance < 0:
            problems.append(f"{name}: negative balance {balance}")

    # Walk games and the ledger's game rows side by side, both in game_id order: constant
    # memory however long the history.
    ledger = itertools.groupby(
        db.stream(
            "SELECT game_id, kind, amount, wallet_id FROM ledger WHERE game_id IS NOT NULL ORDER BY game_id, id"
        ),
        key=lambda row: row["game_id"],
    )
    group = next(ledger, None)
    games_by_status = collections.Counter()
    for game in db.stream("SELECT game_id, status, wallet_id, bet, payout FROM games ORDER BY game_id"):
        games_by_status[game["status"]] += 1
        while group is not None and group[0] < game["game_id"]:
            problems.append(_orphans(*group))
            group = next(ledger, None)
        rows = []
        if group is not None and group[0] == game["game_id"]:
            rows = sorted((row["kind"], row["amount"], row["wallet_id"]) for row in group[1])
            group = next(ledger, None)
        if game["status"] in ("won", "unpaid"):
            problem = _win_problem(game, rows)
            if problem:
                problems.append(f"game {game['game_id']} ({game['status']}): ledger {rows} but {problem}")
            continue
        expected = _expected_movements(game)
        if expected is None:
            problems.append(f"game {game['game_id']}: unknown status {game['status']!r}")
        elif rows != sorted((kind, amount, game["wallet_id"]) for kind, amount in expected):
            problems.append(
                f"game {game['game_id']} ({game['status']}): ledger {rows} but its state needs {sorted(expected)}"
            )
    while group is not None:
        problems.append(_orphans(*group))
        group = next(ledger, None)
    for row in db.execute(
        "SELECT kind, count(*) AS n FROM ledger WHERE (kind IN ('bet', 'payout', 'refund') AND game_id IS NULL) "
        "OR (kind IN ('deposit', 'withdrawal') AND reference IS NULL) GROUP BY kind"
    ):
        problems.append(f"{row['n']} {row['kind']} ledger row(s) without their game id or reference")

    totals = collections.defaultdict(lambda: {label: 0 for label in TOTALS.values()})
    for row in db.execute(
        f"SELECT w.currency, l.kind, {exact_sum('l.amount')} FROM ledger l JOIN wallets w ON w.id = l.wallet_id "
        "GROUP BY w.currency, l.kind"
    ).fetchall():
        currency, kind = row["currency"], row["kind"]
        if kind not in TOTALS:
            problems.append(f"ledger rows of unknown kind {kind!r}")
            continue
        totals[currency][TOTALS[kind]] += abs(total(row))
    return {
        "ok": not problems,
        "newest": _newest(db),
        "server": db.position(),
        "wallets": wallets,
        "games": dict(sorted(games_by_status.items())),
        "totals": {
            currency: {label: to_text(db, amount, currency) for label, amount in sums.items()}
            for currency, sums in sorted(totals.items())
        },
        "discrepancies": problems,
    }


def _newest(db):
    """The newest ledger and audit rows (id and time): of two copies of the books (an old primary
    and the standby promoted in its place), the one whose newest rows are older lacks the rest."""
    newest = {}
    for table, column in (("ledger", "created_at"), ("callbacks", "received_at")):
        row = db.execute(f"SELECT id, {column} FROM {table} ORDER BY id DESC LIMIT 1").fetchone()
        newest[table] = None if row is None else {"id": row["id"], "at": iso(row[column])}
    return newest


def summary(db):
    """Row counts of every table and, per currency, the exact sums of the wallets' balances
    and of their ledger rows: what must be equal on both sides of a copy. Read it inside
    `db.snapshot()` (the copy's own, on the source)."""
    rows = {table: db.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"] for table in TABLES}
    balances = {row["currency"]: total(row) for row in db.execute(
        f"SELECT currency, {exact_sum('balance')} FROM wallets GROUP BY currency ORDER BY currency")}
    ledger = {row["currency"]: total(row) for row in db.execute(
        f"SELECT w.currency, {exact_sum('l.amount')} FROM ledger l JOIN wallets w ON w.id = l.wallet_id "
        "GROUP BY w.currency ORDER BY w.currency")}
    return {"rows": rows, "balances": balances, "ledger": ledger}


def _orphans(game_id, rows):
    found = sorted((row["kind"], row["amount"], row["wallet_id"]) for row in rows)
    return f"ledger rows {found} point at game {game_id!r}, which does not exist"


def _win_problem(game, rows):
    """What is wrong with a won game's ledger rows (None when nothing is): its bet, and payouts
    of its win, bet x multiplier: all of it when `won` (one row from its finish, or several
    from the operator's settlements), less than all (each row more than 0) when `unpaid`."""
    wallet_id, win = game["wallet_id"], win_credit(game["bet"], decimal.Decimal(game["payout"]))
    payouts = [amount for kind, amount, wallet in rows if kind == "payout" and wallet == wallet_id]
    if sorted(rows) != sorted([("bet", -game["bet"], wallet_id)] + [("payout", amount, wallet_id) for amount in payouts]):
        return f"its state needs its bet {-game['bet']} and payouts of its win {win}, nothing else"
    if game["status"] == "won" and (not payouts or sum(payouts) != win):
        return f"its payouts must sum to its win {win}"
    if game["status"] == "unpaid" and (sum(payouts) >= win or any(amount <= 0 for amount in payouts)):
        return f"its payouts must be each above 0 and sum to less than its win {win}"
    return None


def _expected_movements(game):
    """The (kind, amount) ledger rows a game's state calls for; None for an unknown state."""
    bet = game["bet"]
    if game["status"] == "declined":
        return []
    if game["status"] == "open":
        return [("bet", -bet)]
    if game["status"] == "lost":
        return [("bet", -bet), ("payout", 0)]
    if game["status"] == "refunded":
        return [("bet", -bet), ("refund", bet)]
    return None



# --- the console's reads: each bounded, each on an index ---------------------------------

DAY_MS = 86_400_000
COUNT_CAP = 10_000  # counts shown on the overview stop here ("10,000 or more")
ATTENTION = ("conflict", "invalid", "error", "held")  # callback outcomes someone should look at (held: a win owed)


def capped_count(db, table, condition, params=()):
    """How many rows of `table` match `condition`, counting at most COUNT_CAP + 1 of them."""
    return db.execute(f"SELECT count(*) AS n FROM (SELECT 1 FROM {table} WHERE {condition} LIMIT ?) AS capped",
                      [*params, COUNT_CAP + 1]).fetchone()["n"]


def count_stale(db, cutoff_ms):
    """Open bets started before `cutoff_ms` (the index on status and start), at most COUNT_CAP + 1."""
    return capped_count(db, "games", "status = 'open' AND started_at < ?", [cutoff_ms])


def list_stale(db, cutoff_ms, limit=100, cursor=None):
    """Open bets started before `cutoff_ms`, oldest first, a page at a time."""
    where, params = ["status = 'open'", "started_at < ?"], [cutoff_ms]
    if cursor is not None:
        started_at, game_id = decode_cursor(cursor, (int, str))
        where.append("(started_at > ? OR (started_at = ? AND game_id > ?))")
        params += [started_at, started_at, game_id]
    rows = db.execute(f"SELECT * FROM games WHERE {' AND '.join(where)} ORDER BY started_at, game_id LIMIT ?",
                      [*params, limit + 1]).fetchall()
    games, next_cursor = _page(db, rows, limit, lambda row: (row["started_at"], row["game_id"]), game_view)
    return {"games": games, "next_cursor": next_cursor}


def count_attention(db):
    """Callbacks answered conflict, invalid, error or held (their partial index), at most COUNT_CAP + 1."""
    outcomes = ", ".join(f"'{outcome}'" for outcome in ATTENTION)
    return capped_count(db, "callbacks", f"outcome IN ({outcomes}) AND {uncommon('outcome')}")


def first_callback_since(db, since_ms):
    """The id of the first callback received at or after `since_ms` (None if none): a binary
    search over the ids, which grow with the time of receipt, each step one primary-key read."""
    # Apart: SQLite reads min() or max() off the primary key only when it is the one aggregate.
    low = db.execute("SELECT min(id) AS low FROM callbacks").fetchone()["low"]
    high = db.execute("SELECT max(id) AS high FROM callbacks").fetchone()["high"]
    if high is None:
        return None
    if db.execute("SELECT received_at FROM callbacks WHERE id = ?", [high]).fetchone()["received_at"] < since_ms:
        return None
    first = "SELECT id, received_at FROM callbacks WHERE id >= ? ORDER BY id LIMIT 1"
    while low < high:  # the smallest id whose first callback at or after it is recent enough
        middle = (low + high) // 2
        if db.execute(first, [middle]).fetchone()["received_at"] >= since_ms:
            high = middle
        else:
            low = middle + 1
    return db.execute(first, [low]).fetchone()["id"]


def outcomes_since(db, since_ms, scan_cap=200_000):
    """Callbacks received since `since_ms`, counted by outcome: {outcome: n}, and whether the
    count stopped at the last `scan_cap` callbacks (a busy hour)."""
    first = first_callback_since(db, since_ms)
    if first is None:
        return {}, False
    newest = db.execute("SELECT max(id) AS newest FROM callbacks").fetchone()["newest"]
    start = max(first, newest - scan_cap + 1)
    counts = {row["outcome"]: row["n"] for row in db.execute(
        "SELECT outcome, count(*) AS n FROM callbacks WHERE id >= ? GROUP BY outcome ORDER BY outcome", [start])}
    return counts, start > first


def liabilities(db):
    """What the wallets hold, per currency: {currency: (wallets, total in minor units)}."""
    return {row["currency"]: (row["wallets"], total(row)) for row in db.execute(
        f"SELECT currency, count(*) AS wallets, {exact_sum('balance')} FROM wallets GROUP BY currency ORDER BY currency")}


def find_players(db, text, limit=50):
    """Players whose id is `text` or starts with it, in id order (the index on wallets), and
    whether there are more."""
    rows = db.execute(
        "SELECT DISTINCT player_id FROM wallets WHERE player_id >= ? AND player_id < ? ORDER BY player_id LIMIT ?",
        [text, text + "\U0010ffff", limit + 1]).fetchall()
    players = [row["player_id"] for row in rows if row["player_id"].startswith(text)]
    return players[:limit], len(rows) > limit


REPORT_FIELDS = ("rounds", "stakes", "payouts", "refunds", "ggr")


def daily_report(db, since_ms, until_ms, by_game=False):
    """Per day (UTC, by the start's receipt) and currency, and per game name if `by_game`:
    rounds (accepted bets), stakes, payouts, refunds and GGR (stakes - payouts - refunds),
    amounts in minor units, for the games started in [since_ms, until_ms); a declined start is
    no round. One statement per day through the index on the start's time, all in one
    snapshot: grouping a day's rows costs far less than sorting a month's (measured, 1,000,000
    games: 0.6 of one statement grouping by day), and no statement runs long."""
    game = ", game_name" if by_game else ""
    refunds = "CASE WHEN status = 'refunded' THEN bet END"
    statement = (
        f"SELECT currency{game}, count(*) AS rounds, {exact_sum('bet', 'bets')}, {exact_sum('credit', 'credits')}, "
        f"{exact_sum(refunds, 'refunds')} FROM games "
        f"WHERE started_at >= ? AND started_at < ? AND status <> 'declined' GROUP BY currency{game}")
    lines = []
    with db.snapshot():
        for day in range(since_ms - since_ms % DAY_MS, until_ms, DAY_MS):
            rows = db.execute(statement, [max(day, since_ms), min(day + DAY_MS, until_ms)]).fetchall()
            for row in sorted(rows, key=lambda row: (row["currency"], (row["game_name"] or "") if by_game else "")):
                stakes, payouts, refunded = total(row, "bets"), total(row, "credits"), total(row, "refunds")
                lines.append({"day": day, "currency": row["currency"], "game_name": row["game_name"] if by_game else None,
                              "rounds": row["rounds"], "stakes": stakes, "payouts": payouts, "refunds": refunded,
                              "ggr": stakes - payouts - refunded})
    return lines
