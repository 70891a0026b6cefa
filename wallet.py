"""Every balance rule: minor units, settlement of start/finish, deposits and withdrawals.

Each movement runs in one store transaction (db.py) that writes the balance change, its
ledger row and (for callbacks) the audit row together, so a crash leaves all or none; the
rules know nothing of the engine underneath.
"""

import dataclasses
import datetime
import decimal
import functools
import json
import time

from flask import current_app
from marshmallow import ValidationError

from db import CREDITED, StartupError, get_db
from errors import ApiError, error_body
from schemas import CURRENCY, MAX_DELAY_MS

DEFAULT_DECIMALS = 8
# The largest amount, in minor units, a movement or a balance may reach: far inside SQLite's
# 64-bit integers, whose overflow would silently turn money into floating point.
MAX_MINOR = 10**18
# Exact arithmetic: enough precision that multiplying two parsed amounts never rounds,
# and half-to-even wherever we do round (to a currency's minor unit).
EXACT = decimal.Context(
    prec=decimal.MAX_PREC,
    Emax=decimal.MAX_EMAX,
    Emin=decimal.MIN_EMIN,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[decimal.InvalidOperation, decimal.Overflow, decimal.DivisionByZero],
)


def now_ms():
    """Return the current time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def parse_currency_decimals(text):
    """Parse `USD=2,EUR=2` into {"USD": 2, "EUR": 2}; raise ValueError on anything else."""
    decimals = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        currency, sep, places = (piece.strip() for piece in item.partition("="))
        if not sep or not CURRENCY.fullmatch(currency) or not places.isdigit() or int(places) > 18:
            raise ValueError(
                f"CURRENCY_DECIMALS entry {item!r} is not CURRENCY=DECIMALS (a code of letters, "
                f"digits, '_' or '-', and 0-18)"
            )
        decimals[currency] = int(places)
    return decimals


def currency_decimals(currency, db=None):
    """Return a currency's decimals: as fixed in the database at its first deposit, else
    CURRENCY_DECIMALS, else 8. Balances are stored in minor units, so once a currency holds
    money its decimals never change (a CLI run without the server's environment included).
    Because they never change, a connection remembers them once read: a callback needs them
    several times (rounding, checking, formatting) and need not ask the database each time.
    """
    db = db or get_db()  # the request's, or the store a caller reads (a copy's target)
    fixed = db.fixed_decimals
    if currency not in fixed:
        row = db.execute("SELECT decimals FROM currencies WHERE currency = ?", [currency]).fetchone()
        if row is None:
            return current_app.config["CURRENCY_DECIMALS"].get(currency, DEFAULT_DECIMALS)
        fixed[currency] = row[0]
    return fixed[currency]


def check_currency_decimals(db, configured):
    """Refuse to start if CURRENCY_DECIMALS contradicts a currency the database already holds."""
    for currency, stored in db.execute("SELECT currency, decimals FROM currencies").fetchall():
        if configured.get(currency, stored) != stored:
            raise StartupError(
                f"CURRENCY_DECIMALS gives {currency}={configured[currency]}, but {currency} is "
                f"stored with {stored} decimals and balances are kept in minor units; "
                f"set {currency}={stored}"
            )


def to_minor(amount, currency):
    """Convert a decimal amount to integer minor units, rounding half-to-even."""
    scaled = EXACT.scaleb(amount, currency_decimals(currency))
    return int(scaled.to_integral_value(rounding=decimal.ROUND_HALF_EVEN, context=EXACT))


def to_text(minor, currency, db=None):
    """Format integer minor units as a decimal string with the currency's decimals."""
    return format(decimal.Decimal(minor).scaleb(-currency_decimals(currency, db), context=EXACT), "f")


def win_credit(bet_minor, payout):
    """Return what a win credits: the (already rounded) bet times the payout multiplier.

    The provider's `payout` is a multiplier of the bet, as its reference integration
    settles it: 2.5 pays 2.5 x bet (stake included), 1 returns the stake, 0 pays nothing.
    """
    product = EXACT.multiply(decimal.Decimal(bet_minor), payout)
    return int(product.to_integral_value(rounding=decimal.ROUND_HALF_EVEN, context=EXACT))


def show_in_ms(delay_ms, callback_ms, received_ms, now):
    """Milliseconds the player's screen should still wait before showing a payout.

    The animation lasts `delay_ms` from when the provider sent the finish; the time the
    callback spent in transit is already gone. A callback time later than its receipt
    (clock skew) counts as the receipt, and the wait never exceeds the delay itself.
    (The provider page's example, max(now - callback.time, 0), ignores the delay.)
    """
    sent = min(callback_ms, received_ms)
    return max(0, min(delay_ms, delay_ms - (now - sent)))


def _minor_or_invalid(amount, currency, *path):
    """Round an amount to minor units; one that rounds to 0, or beyond MAX_MINOR, is invalid."""
    minor = to_minor(amount, currency)
    if 0 < minor <= MAX_MINOR:
        return minor
    places = currency_decimals(currency)
    if minor <= 0:
        problem = f"Rounds to 0 in {currency} ({places} decimals)."
    else:
        problem = f"Too large: at most {to_text(MAX_MINOR, currency)} {currency} ({places} decimals)."
    message = {path[-1]: [problem]}
    for field in reversed(path[:-1]):
        message = {field: message}
    raise ValidationError(message)


def _move(db, wallet_id, amount, kind, now, game_id=None, reference=None):
    """Change a balance and write its ledger row; the only place a balance changes.

    Returns the wallet's id, or None (and changes nothing) when there is no such wallet or it
    would go negative; refuses (409) a credit that would take it past MAX_MINOR.
    """
    row = db.execute(
        "UPDATE wallets SET balance = balance + ?, updated_at = ? "
        "WHERE id = ? AND balance + ? BETWEEN 0 AND ? RETURNING id, balance",
        [amount, now, wallet_id, amount, MAX_MINOR],
    ).fetchone()
    if row is None and amount > 0:
        raise ApiError(409, "balance_limit", "The credit would take the wallet past the largest balance it can hold.")
    if row is None:
        return None
    db.execute(
        "INSERT INTO ledger (wallet_id, amount, balance_after, kind, game_id, reference, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [row[0], amount, row[1], kind, game_id, reference, now],
    )
    return row[0]


def _wallet_row(db, player_id, currency):
    return db.execute(
        "SELECT id, balance FROM wallets WHERE player_id = ? AND currency = ?", [player_id, currency]
    ).fetchone()


# --- callbacks ---------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """What a callback came to: the answer to send and the reason kept in the audit."""

    status: int
    body: dict
    outcome: str  # accepted | declined | duplicate | conflict | invalid | ignored
    reason: str

    @functools.cached_property
    def text(self):
        """The answer's JSON, made once: the bytes sent and what the audit keeps."""
        return json.dumps(self.body, separators=(",", ":"))


def _conflict(reason):
    return Outcome(409, error_body("conflict", reason), "conflict", reason)


def _started_otherwise(game_id, started, says, kind):
    """The 409 for a `kind` callback (start, finish) whose game was started by another player,
    in another currency or for another bet than it says; None when they agree. `started` and
    `says` are (player_id, currency, bet)."""
    if tuple(started) == says:
        return None
    return _conflict(
        f"game {game_id} was started by {started[0]} for {to_text(started[2], started[1])} {started[1]}; "
        f"this {kind} says {says[0]} for {to_text(says[2], says[1])} {says[1]}"
    )


def apply_callback(db, callback, audit):
    """Settle one validated callback and write its audit row, all in one transaction."""
    kind = callback["type"]
    with db.transaction():
        if kind in ("start", "finish"):
            db.lock("game", callback["game"]["id"])  # a game's callbacks take turns, on every instance
            bet = _minor_or_invalid(callback["game"]["bet"], callback["session"]["currency"], "game", "bet")
        if kind == "start":
            result = _start(db, callback, bet, audit["received_at"])
        elif kind == "finish":
            result = _finish(db, callback, bet, audit["received_at"])
        else:
            result = Outcome(200, {}, "ignored", f"callback type {kind!r} is not handled; kept for review")
        _insert_audit(db, audit, result)
    return result


def _start(db, cb, bet, now):
    """Debit the bet if the wallet holds it; a repeat of an accepted start changes nothing.

    The game is written first, new (or, if its start was declined, taken again) and open, with
    its wallet's id, and the bet debited after it: only a repeat reads the game
    (_repeated_start). A bet the wallet cannot hold marks the game declined.
    """
    game_id, session = cb["game"]["id"], cb["session"]
    player_id, currency = session["player_id"], session["currency"]
    data = cb.get("data", {})
    opened = db.execute(
        "INSERT INTO games (game_id, status, player_id, currency, wallet_id, bet, session_id, "
        "game_name, round, all_bet_amount, round_data, start_time, started_at) "
        "VALUES (?, 'open', ?, ?, (SELECT id FROM wallets WHERE player_id = ? AND currency = ?), "
        "?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (game_id) DO UPDATE SET status = excluded.status, "
        "player_id = excluded.player_id, currency = excluded.currency, "
        "wallet_id = excluded.wallet_id, bet = excluded.bet, session_id = excluded.session_id, "
        "game_name = excluded.game_name, round = excluded.round, "
        "all_bet_amount = excluded.all_bet_amount, round_data = excluded.round_data, "
        "start_time = excluded.start_time, started_at = excluded.started_at "
        "WHERE games.status = 'declined' RETURNING wallet_id",
        [
            game_id,
            player_id,
            currency,
            player_id,
            currency,
            bet,
            session["id"],
            session["game_name"],
            cb["game"].get("round"),
            _text(data.get("all_bet_amount")),
            json.dumps(cb["round_data"], default=str) if "round_data" in cb else None,
            cb["time"] if cb["time"] is not None else now,
            now,
        ],
    ).fetchone()
    if opened is None:  # the game is there, and not declined
        return _repeated_start(db, game_id, player_id, currency, bet)
    wallet_id = opened[0]
    if wallet_id is not None and _move(db, wallet_id, -bet, "bet", now, game_id=game_id) is not None:
        return Outcome(200, {"result": True}, "accepted", f"debited {to_text(bet, currency)} {currency}")
    db.execute("UPDATE games SET status = 'declined' WHERE game_id = ?", [game_id])
    if wallet_id is None:
        return Outcome(200, {"result": False}, "declined", "no such wallet")
    balance = db.execute("SELECT balance FROM wallets WHERE id = ?", [wallet_id]).fetchone()[0]
    why = f"balance {to_text(balance, currency)} {currency} is below the bet"
    return Outcome(200, {"result": False}, "declined", why)


def _repeated_start(db, game_id, player_id, currency, bet):
    """Answer a start whose game was already accepted: as before, or 409 if it differs."""
    game = db.execute("SELECT status, player_id, currency, bet FROM games WHERE game_id = ?", [game_id]).fetchone()
    conflict = _started_otherwise(game_id, game[1:4], (player_id, currency, bet), "start")
    if conflict is not None:
        return conflict
    if game[0] == "refunded":
        return Outcome(200, {"result": False}, "duplicate", f"game {game_id} was refunded")
    return Outcome(200, {"result": True}, "duplicate", f"bet of game {game_id} already accepted ({game[0]})")


# A finish settles its game in one statement, matching only an open game started as the finish
# says. The match is one CASE so that it is checked on the game its key finds: as separate
# conditions a planner may look the game up by the index on its player or on its status
# instead (PostgreSQL's generic plan of the prepared statement did: it walked every game of the
# player, measured). tests/test_operations.py checks the plan.
SETTLE_FINISH = (
    "UPDATE games SET status = ?, payout = ?, profit = ?, credit = ?, balance_update_delay = ?, "
    "finish_time = ?, settled_at = ? "
    "WHERE game_id = ? AND CASE WHEN status = 'open' AND player_id = ? AND currency = ? AND bet = ? "
    "THEN 1 END = 1 RETURNING wallet_id"
)


def _finish(db, cb, bet, now):
    """Credit bet x payout on a win (nothing on a lose) once; a repeat changes nothing.

    The game is settled by one UPDATE that matches only an open game started as this finish
    says (SETTLE_FINISH), then credited: only a finish that settles nothing reads the game, to
    say why (_unsettled_finish).
    """
    game_id, session, result = cb["game"]["id"], cb["session"], cb["game"]
    player_id, currency = session["player_id"], session["currency"]
    new_status = "won" if result["status"] == "win" else "lost"
    payout = result["payout"]
    credit = win_credit(bet, payout) if new_status == "won" else 0
    too_large = credit > MAX_MINOR
    settled = not too_large and db.execute(
        SETTLE_FINISH,
        [
            new_status,
            _text(payout),
            _text(result.get("profit")),
            credit,
            cb.get("data", {}).get("balance_update_delay", 0),
            cb["time"] if cb["time"] is not None else now,
            now,
            game_id,
            player_id,
            currency,
            bet,
        ],
    ).fetchone()
    if not settled:
        return _unsettled_finish(db, game_id, player_id, currency, bet, new_status, payout, too_large)
    _move(db, settled[0], credit, "payout", now, game_id=game_id)
    return Outcome(200, {}, "accepted", f"{new_status}: credited {to_text(credit, currency)} {currency}")


def _unsettled_finish(db, game_id, player_id, currency, bet, new_status, payout, too_large):
    """Why a finish settled nothing: a repeat (answered as before), a conflict, or a win too
    large to credit (`too_large`: then it was not tried)."""
    game = db.execute(
        "SELECT status, player_id, currency, bet, payout FROM games WHERE game_id = ?", [game_id]
    ).fetchone()
    if game is None or game[0] == "declined":
        return _conflict(f"game {game_id} has no accepted start")
    status, stored_payout = game[0], game[4]
    conflict = _started_otherwise(game_id, game[1:4], (player_id, currency, bet), "finish")
    if conflict is not None:
        return conflict
    if status == "refunded":
        return _conflict(f"game {game_id} was refunded; its finish cannot be settled")
    if status == "open":
        if too_large:
            raise ValidationError({"game": {"payout": ["The win (bet x payout) is too large to credit."]}})
        raise RuntimeError(f"game {game_id} is open and matches its finish, yet SETTLE_FINISH settled nothing")
    if status != new_status or decimal.Decimal(stored_payout) != payout:
        return _conflict(
            f"game {game_id} was settled as {status} with payout {stored_payout}; "
            f"this finish says {new_status} with payout {payout}"
        )
    return Outcome(200, {}, "duplicate", f"game {game_id} already settled ({status})")


def _text(number):
    return None if number is None else str(number)


def _insert_audit(db, audit, result, response_text=None):
    db.execute(
        "INSERT INTO callbacks (received_at, type, game_id, player_id, outcome, reason, "
        "status_code, response, body, duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            audit["received_at"],
            audit.get("type"),
            audit.get("game_id"),
            audit.get("player_id"),
            result.outcome,
            result.reason,
            result.status,
            response_text if response_text is not None else result.text,
            audit.get("body"),
            (time.perf_counter() - audit["started"]) * 1000,
        ],
    )


def record_callback(db, audit, result, response_text):
    """Keep a callback that never reached settlement (invalid input) in the audit table."""
    with db.transaction():
        _insert_audit(db, audit, result, response_text)


# --- refunds of bets that never got a finish --------------------------------------------


def refund_game(db, game_id):
    """Return an open bet's stake to its wallet, once; return (HTTP status, body).

    A repeat answers the first answer again and moves nothing. A settled game cannot be
    refunded (409); the game's later `finish` is refused and a repeated `start` declined.
    """
    now = now_ms()
    with db.transaction():
        db.lock("game", game_id)  # a refund and the game's finish take turns
        game = db.execute("SELECT * FROM games WHERE game_id = ?", [game_id]).fetchone()
        if game is None or game["status"] == "declined":
            raise ApiError(404, "not_found", f"No accepted bet has game id {game_id!r}.")
        if game["status"] == "refunded":
            return 200, json.loads(game["refund_response"])
        if game["status"] != "open":
            raise ApiError(409, "conflict", f"Game {game_id!r} is already settled ({game['status']}); it cannot be refunded.")
        _move(db, game["wallet_id"], game["bet"], "refund", now, game_id=game_id)
        refunded = {**dict(game), "status": "refunded", "refunded_at": now}
        body = {"game": game_view(refunded), "wallet": wallet_view(db, game["player_id"], game["currency"], now)}
        db.execute(
            "UPDATE games SET status = 'refunded', refunded_at = ?, refund_response = ? WHERE game_id = ?",
            [now, json.dumps(body), game_id],
        )
    return 200, body


def stale_games(db, older_than_ms, now=None):
    """Return the open bets whose start was received more than `older_than_ms` ago, oldest first."""
    cutoff = (now_ms() if now is None else now) - older_than_ms
    rows = db.execute(
        "SELECT * FROM games WHERE status = 'open' AND started_at < ? ORDER BY started_at, game_id", [cutoff]
    ).fetchall()
    return [game_view(row) for row in rows]


def game_view(game):
    """Return a games row as the API shows it: amounts as decimal strings, times as ISO 8601."""
    currency = game["currency"]
    return {
        "game_id": game["game_id"],
        "status": game["status"],
        "player_id": game["player_id"],
        "currency": currency,
        "game_name": game["game_name"],
        "session_id": game["session_id"],
        "round": game["round"],
        "bet": to_text(game["bet"], currency),
        "payout": game["payout"],  # the multiplier, as the provider sent it
        "profit": game["profit"],
        "credit": None if game["credit"] is None else to_text(game["credit"], currency),
        "balance_update_delay": game["balance_update_delay"],
        "started_at": iso(game["started_at"]),
        "start_time": iso(game["start_time"]),
        "settled_at": iso(game["settled_at"]),
        "finish_time": iso(game["finish_time"]),
        "refunded_at": iso(game["refunded_at"]),
    }


def iso(ms):
    """Format epoch milliseconds as ISO 8601 UTC (None stays None)."""
    if ms is None:
        return None
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the operator's deposits, withdrawals and balances ----------------------------------


def move_funds(db, kind, player_id, currency, amount, reference):
    """Deposit or withdraw once per reference; return (HTTP status, wallet body).

    A repeat of the same reference with the same request answers the first answer again
    (200) and moves nothing; with another request it is a 409. A withdrawal above the
    balance is refused with 409 and leaves the reference unused.
    """
    now = now_ms()
    with db.transaction():
        db.lock("reference", reference)  # a reference replayed on two instances at once moves money once
        if kind == "deposit":
            _refuse_unknown_currency(db, currency)
            db.execute(
                "INSERT INTO currencies (currency, decimals) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [currency, currency_decimals(currency)],
            )
        minor = _minor_or_invalid(amount, currency, "amount")
        previous = db.execute(
            "SELECT kind, player_id, currency, amount, response FROM operations WHERE reference = ?",
            [reference],
        ).fetchone()
        if previous is not None:
            if tuple(previous[:4]) != (kind, player_id, currency, minor):
                raise ApiError(
                    409,
                    "reference_conflict",
                    f"reference {reference!r} was already used for a {previous[0]} of "
                    f"{to_text(previous[3], previous[2])} {previous[2]} for player {previous[1]}",
                )
            return 200, json.loads(previous[4])
        if kind == "deposit":
            db.execute(
                "INSERT INTO wallets (player_id, currency, balance, updated_at) VALUES (?, ?, 0, ?) "
                "ON CONFLICT (player_id, currency) DO NOTHING",
                [player_id, currency, now],
            )
        wallet = _wallet_row(db, player_id, currency)
        signed = minor if kind == "deposit" else -minor
        if wallet is None or not _move(db, wallet[0], signed, kind, now, reference=reference):
            balance = to_text(wallet[1] if wallet else 0, currency)
            raise ApiError(
                409,
                "insufficient_funds",
                f"cannot withdraw {to_text(minor, currency)} {currency}: the balance is {balance}",
            )
        body = wallet_view(db, player_id, currency, now)
        db.execute(
            "INSERT INTO operations (reference, kind, player_id, currency, amount, response, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [reference, kind, player_id, currency, minor, json.dumps(body), now],
        )
    return 201, body


def _refuse_unknown_currency(db, currency):
    """Refuse (400 unknown_currency) a currency outside a set CURRENCY_DECIMALS, the operator's
    list of currencies, unless the books already hold it: a typo must not open a currency."""
    configured = current_app.config["CURRENCY_DECIMALS"]
    if not configured or currency in configured:
        return
    if db.execute("SELECT 1 FROM currencies WHERE currency = ?", [currency]).fetchone() is None:
        message = (f"{currency} is not one of the currencies in CURRENCY_DECIMALS "
                   f"({', '.join(sorted(configured))}); to open it, add {currency}=<decimals> to "
                   f"CURRENCY_DECIMALS and restart the service (and give the CLI the same setting).")
        raise ApiError(400, "unknown_currency", message, {"currency": [message]})


def wallet_view(db, player_id, currency, now=None):
    """Return a wallet as the API shows it, or None if the player has none in that currency.

    `display_balance` leaves out the payouts whose animation is still running, so the
    operator's frontend can show each win when the game shows it.
    """
    now = now_ms() if now is None else now
    wallet = _wallet_row(db, player_id, currency)
    if wallet is None:
        return None
    rows = db.execute(
        "SELECT game_id, credit, balance_update_delay, finish_time, settled_at FROM games "
        f"WHERE wallet_id = ? AND settled_at >= ? AND {CREDITED} ORDER BY settled_at, game_id",  # a partial index
        [wallet[0], now - MAX_DELAY_MS],
    ).fetchall()
    waits = [(game_id, credit, show_in_ms(delay, sent, received, now)) for game_id, credit, delay, sent, received in rows]
    pending = [(game_id, credit, wait) for game_id, credit, wait in waits if wait > 0]
    # A withdrawal or a bet may have spent wins not shown yet: the display never goes below
    # zero, and the pending amounts are cut (the first to show kept whole) so that the display
    # plus what is still to show is always the balance.
    display = max(wallet[1] - sum(credit for _, credit, _ in pending), 0)
    left, shown = wallet[1] - display, {}
    for game_id, credit, _ in sorted(pending, key=lambda item: item[2]):
        shown[game_id] = min(credit, left)
        left -= shown[game_id]
    pending = [(game_id, shown[game_id], wait) for game_id, _, wait in pending if shown[game_id] > 0]
    return {
        "player_id": player_id,
        "currency": currency,
        "balance": to_text(wallet[1], currency),
        "display_balance": to_text(display, currency),
        "pending": [
            {"game_id": game_id, "amount": to_text(credit, currency), "show_in_ms": wait}
            for game_id, credit, wait in pending
        ],
    }


def player_wallets(db, player_id):
    """Return every wallet of a player, by currency (an empty list for an unknown player)."""
    now = now_ms()
    currencies = db.execute(
        "SELECT currency FROM wallets WHERE player_id = ? ORDER BY currency", [player_id]
    ).fetchall()
    return [wallet_view(db, player_id, currency, now) for (currency,) in currencies]
