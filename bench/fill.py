"""The history a preloaded round starts from: settled games consistent with the books, written
once for both engines, and its bulk load into SQLite or PostgreSQL."""

import decimal
import json
import os
import random
import sqlite3
import time

import store
from bench.report import log
from store.schema import TABLES

# (bet minor units, multiplier text): a few that round half-to-even (1 x 2.5 = 2.5 -> 2,
# 3 x 0.5 = 1.5 -> 2, 5 x 0.3 = 1.5 -> 2, 250 x 1.25 = 312.5 -> 312).
HISTORY_BETS = (100, 100, 100, 50, 250, 1000, 1, 3, 5, 20)
HISTORY_MULTIPLIERS = ("2", "2", "2.5", "1.5", "0.5", "10", "1.25", "0.3", "1")


def _history_outcomes():
    """(bet, status, payout text, credit, profit text) combinations; 45% of them lost."""
    combos = []
    for bet in HISTORY_BETS:
        for multiplier in HISTORY_MULTIPLIERS:
            product = decimal.Decimal(bet) * decimal.Decimal(multiplier)
            credit = int(product.to_integral_value(rounding=decimal.ROUND_HALF_EVEN))
            profit = (decimal.Decimal(multiplier) - 1) * decimal.Decimal(bet).scaleb(-2)
            combos.append((bet, "won", multiplier, credit, str(profit)))
    wins = len(combos)
    losses = [(bet, "lost", "0", 0, str(-decimal.Decimal(bet).scaleb(-2))) for bet in HISTORY_BETS]
    # weights: the wins share 55%, the losses 45%
    weights = [55 / wins] * wins + [45 / len(losses)] * len(losses)
    return combos + losses, weights


def history(games, players, game_ids, seed=1):
    """The rows of `games` settled games for `players` wallets: [(table, columns, rows)], parents
    first (PostgreSQL checks the ledger's foreign key). Written once for both engines;
    load_sqlite and load_postgres only differ in how the rows go in.

    The books balance: each wallet gets one deposit (an `operations` row and a ledger row)
    covering every bet it could lose, then per game a bet and a payout ledger row with the
    running balance_after, the game row and its two audit rows.
    """
    rng = random.Random(seed)
    combos, weights = _history_outcomes()
    picks = rng.choices(range(len(combos)), weights, k=games)
    now = int(time.time() * 1000)
    span = 30 * 24 * 3600 * 1000  # the history covers the last 30 days, up to an hour ago
    first = now - span - 3600 * 1000
    step = span / max(games, 1)
    per_wallet = -(-games // players)
    deposit = (per_wallet * max(HISTORY_BETS) // 100 + 1000) * 100  # whole units, in minor units
    if game_ids == "random":
        ids = [f"{rng.getrandbits(96):024x}" for _ in range(games)]
    else:  # like the provider's ids: time in seconds, then per-id bits
        ids = [f"{(first + int(k * step)) // 1000:08x}{rng.getrandbits(64):016x}" for k in range(games)]
    names = ("Mines", "Plinko", "Dice", "Roulette")
    final = [deposit] * players  # each wallet's balance after its history
    for k, pick in enumerate(picks):
        bet, _, _, credit, _ = combos[pick]
        final[k % players] += credit - bet
    deposit_text = f"{deposit // 100}.00"

    def player(w):
        return f"hist-{w:06d}"

    def game_rows():
        for k in range(games):
            bet, status, payout, credit, profit = combos[picks[k]]
            w = k % players
            started_at = first + int(k * step)
            settled_at = started_at + 1500
            yield (
                ids[k], status, player(w), "USD", w + 1, bet, f"s-{w}", names[k & 3], str(k),
                str(bet / 100), "{}", started_at - 40, started_at, payout, profit, credit, 1000,
                settled_at - 30, settled_at,
            )

    def ledger_rows():
        for w in range(players):
            yield (w + 1, deposit, deposit, "deposit", None, f"hist-dep-{w}", first - 1000)
        balances = [deposit] * players
        for k in range(games):
            bet, _, _, credit, _ = combos[picks[k]]
            w = k % players
            started_at = first + int(k * step)
            balance = balances[w] - bet
            yield (w + 1, -bet, balance, "bet", ids[k], None, started_at)
            balance += credit
            balances[w] = balance
            yield (w + 1, credit, balance, "payout", ids[k], None, started_at + 1500)

    def audit_rows():
        for k in range(games):
            bet, status, payout, credit, _ = combos[picks[k]]
            started_at = first + int(k * step)
            w = k % players
            yield (started_at, "start", ids[k], player(w), "accepted", f"debited {bet / 100:.2f} USD", 200,
                   '{"result": true}',
                   f'{{"type": "start", "game": {{"id": "{ids[k]}", "bet": {bet / 100:.2f}}}}}'.encode(), 1.0)
            yield (started_at + 1500, "finish", ids[k], player(w), "accepted",
                   f"{status}: credited {credit / 100:.2f} USD", 200, "{}",
                   f'{{"type": "finish", "game": {{"id": "{ids[k]}", "payout": {payout}}}}}'.encode(), 1.0)

    tables = [
        ("currencies", ("currency", "decimals"), [("USD", 2)]),
        ("wallets", ("id", "player_id", "currency", "balance", "updated_at"),
         [(w + 1, player(w), "USD", final[w], now - 3600 * 1000) for w in range(players)]),
        ("operations", ("reference", "kind", "player_id", "currency", "amount", "response", "created_at"),
         [(f"hist-dep-{w}", "deposit", player(w), "USD", deposit,
           json.dumps({"balance": deposit_text, "currency": "USD", "display_balance": deposit_text,
                       "pending": [], "player_id": player(w)}), first - 1000) for w in range(players)]),
        ("games", ("game_id", "status", "player_id", "currency", "wallet_id", "bet", "session_id", "game_name",
                   "round", "all_bet_amount", "round_data", "start_time", "started_at", "payout", "profit",
                   "credit", "balance_update_delay", "finish_time", "settled_at"), game_rows()),
        ("ledger", ("wallet_id", "amount", "balance_after", "kind", "game_id", "reference", "created_at"),
         ledger_rows()),
        ("callbacks", ("received_at", "type", "game_id", "player_id", "outcome", "reason", "status_code",
                       "response", "body", "duration_ms"), audit_rows()),
    ]
    for table, columns, _ in tables:  # the service's schema is the one truth
        unknown = set(columns) - set(TABLES[table]["columns"])
        assert not unknown, f"{table} has no column {unknown}"
    return tables


def load_sqlite(path, tables):
    """Insert the rows in one transaction with the journal and synchronous off (the caller
    fsyncs the file afterwards)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1000000")  # 1 GB: every index stays in memory
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    conn.execute("BEGIN")
    for table, columns, rows in tables:
        conn.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA locking_mode = NORMAL")
    conn.execute("PRAGMA journal_mode = WAL")  # what the service uses; it sets it again anyway
    conn.close()
    fd = os.open(path, os.O_RDONLY)
    try:  # write the fill out now, or the service's first checkpoint fsync would pay for it
        os.fsync(fd)
    finally:
        os.close(fd)


def load_postgres(url, tables):
    """COPY the rows in one transaction, make new ids start above the copied ones, then
    VACUUM ANALYZE (hint bits, visibility map and planner statistics now, not under load) and
    CHECKPOINT (the fill written out now, not by a checkpoint during the measurement)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction(), conn.cursor() as cursor:
            for table, columns, rows in tables:
                with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
    books = store.open_store(url, create=False)
    try:
        books.after_bulk_load()
    finally:
        books.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            log("note: no CHECKPOINT after the fill (the role may not); the first checkpoint "
                "during a round writes it out")

