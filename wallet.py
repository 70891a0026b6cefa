"""Every balance rule: settlement of start/finish, refunds, deposits and withdrawals.

Each movement runs in one store transaction (store/) that writes the balance change, its
ledger row and (for callbacks) the audit row together, so a crash leaves all or none; the
rules know nothing of the engine underneath.
"""

import dataclasses
import decimal
import functools
import json
import time

from marshmallow import ValidationError

from money.refusals import ApiError, error_body
from money.units import MAX_MINOR, currency_decimals, now_ms, to_minor, to_text, win_credit
from money.views import game_view, wallet_row, wallet_view
from store import ConfigurationError


def check_currency_decimals(db):
    """Refuse to serve if the configured CURRENCY_DECIMALS contradict a currency the books hold."""
    for row in db.execute("SELECT currency, decimals FROM currencies").fetchall():
        currency, stored = row["currency"], row["decimals"]
        if db.configured_decimals.get(currency, stored) != stored:
            raise ConfigurationError(
                f"CURRENCY_DECIMALS gives {currency}={db.configured_decimals[currency]}, but {currency} is "
                f"stored with {stored} decimals and balances are kept in minor units; "
                f"set {currency}={stored}"
            )


def _minor_or_invalid(db, amount, currency, *path):
    """Round an amount to minor units; one that rounds to 0, or beyond MAX_MINOR, is invalid."""
    minor = to_minor(db, amount, currency)
    if 0 < minor <= MAX_MINOR:
        return minor
    places = currency_decimals(db, currency)
    if minor <= 0:
        problem = f"Rounds to 0 in {currency} ({places} decimals)."
    else:
        problem = f"Too large: at most {to_text(db, MAX_MINOR, currency)} {currency} ({places} decimals)."
    message = {path[-1]: [problem]}
    for field in reversed(path[:-1]):
        message = {field: message}
    raise ValidationError(message)


class BalanceLimit(ApiError):
    """A credit would take a wallet past MAX_MINOR (409 balance_limit); nothing moved."""

    def __init__(self):
        super().__init__(409, "balance_limit", "The credit would take the wallet past the largest balance it can hold.")


def _move(db, wallet_id, amount, kind, now, game_id=None, reference=None, note=None):
    """Change a balance and write its ledger row; the only place a balance changes.

    `note` says who moved the money by hand and why (the console's operator); it is kept on
    the ledger row.

    Returns the wallet's id, or None (and changes nothing) when there is no such wallet or it
    would go negative; refuses (BalanceLimit, 409) a credit that would take it past MAX_MINOR.
    """
    row = db.execute(
        "UPDATE wallets SET balance = balance + ?, updated_at = ? "
        "WHERE id = ? AND balance + ? BETWEEN 0 AND ? RETURNING id, balance",
        [amount, now, wallet_id, amount, MAX_MINOR],
    ).fetchone()
    if row is None and amount > 0:
        raise BalanceLimit()
    if row is None:
        return None
    ledger_id = db.execute(
        "INSERT INTO ledger (wallet_id, amount, balance_after, kind, game_id, reference, created_at, note) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        [row["id"], amount, row["balance"], kind, game_id, reference, now, note],
    ).fetchone()["id"]
    db.wrote("ledger", ledger_id, now)  # books that lose it later went back in time (a failover)
    return row["id"]


# --- callbacks ---------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """What a callback came to: the answer to send and the reason kept in the audit."""

    status: int
    body: dict
    outcome: str  # accepted | declined | duplicate | conflict | held | invalid | ignored
    reason: str
    moved: int = 0  # minor units an accepted start debited or an accepted finish credited

    @functools.cached_property
    def text(self):
        """The answer's JSON, made once: the bytes sent and what the audit keeps."""
        return json.dumps(self.body, separators=(",", ":"))


def _conflict(reason):
    return Outcome(409, error_body("conflict", reason), "conflict", reason)


def _started_otherwise(db, game_id, started, says, kind):
    """The 409 for a `kind` callback (start, finish) whose game was started by another player,
    in another currency or for another bet than it says; None when they agree. `started` is
    the game's row, `says` (player_id, currency, bet)."""
    player_id, currency, bet = started["player_id"], started["currency"], started["bet"]
    if (player_id, currency, bet) == says:
        return None
    return _conflict(
        f"game {game_id} was started by {player_id} for {to_text(db, bet, currency)} {currency}; "
        f"this {kind} says {says[0]} for {to_text(db, says[2], says[1])} {says[1]}"
    )


def apply_callback(db, callback, audit):
    """Settle one validated callback and write its audit row, all in one transaction."""
    kind = callback["type"]
    with db.transaction():
        if kind in ("start", "finish"):
            db.lock("game", callback["game"]["id"])  # a game's callbacks take turns, on every instance
            bet = _minor_or_invalid(db, callback["game"]["bet"], callback["session"]["currency"], "game", "bet")
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
        "start_time = excluded.start_time "  # not started_at: the games list's order never changes
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
    wallet_id = opened["wallet_id"]
    if wallet_id is not None and _move(db, wallet_id, -bet, "bet", now, game_id=game_id) is not None:
        return Outcome(200, {"result": True}, "accepted", f"debited {to_text(db, bet, currency)} {currency}", bet)
    db.execute("UPDATE games SET status = 'declined' WHERE game_id = ?", [game_id])
    if wallet_id is None:
        return Outcome(200, {"result": False}, "declined", "no such wallet")
    balance = db.execute("SELECT balance FROM wallets WHERE id = ?", [wallet_id]).fetchone()["balance"]
    why = f"balance {to_text(db, balance, currency)} {currency} is below the bet"
    return Outcome(200, {"result": False}, "declined", why)


def _repeated_start(db, game_id, player_id, currency, bet):
    """Answer a start whose game was already accepted: as before, or 409 if it differs."""
    game = db.execute("SELECT status, player_id, currency, bet FROM games WHERE game_id = ?", [game_id]).fetchone()
    conflict = _started_otherwise(db, game_id, game, (player_id, currency, bet), "start")
    if conflict is not None:
        return conflict
    if game["status"] == "refunded":
        return Outcome(200, {"result": False}, "duplicate", f"game {game_id} was refunded")
    return Outcome(200, {"result": True}, "duplicate", f"bet of game {game_id} already accepted ({game['status']})")


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
    too_large = credit > MAX_MINOR  # more than any wallet can take at once: held unpaid
    settled = db.execute(
        SETTLE_FINISH,
        [
            "unpaid" if too_large else new_status,
            _text(payout),
            _text(result.get("profit")),
            None if too_large else credit,
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
        return _unsettled_finish(db, game_id, player_id, currency, bet, new_status, payout)
    if too_large:
        return _held(db, game_id, credit, currency)
    try:
        _move(db, settled["wallet_id"], credit, "payout", now, game_id=game_id)
    except BalanceLimit:
        db.execute("UPDATE games SET status = 'unpaid', credit = NULL WHERE game_id = ?", [game_id])
        return _held(db, game_id, credit, currency)
    return Outcome(200, {}, "accepted", f"{new_status}: credited {to_text(db, credit, currency)} {currency}", credit)


def _held(db, game_id, credit, currency):
    """The answer to a win the wallet cannot take (it would pass MAX_MINOR): the finish is taken
    (200 {}: the provider must not retry for ever) and the game held `unpaid`, owing the win,
    for the operator to settle (settle_game)."""
    return Outcome(200, {}, "held", (
        f"won {to_text(db, credit, currency)} {currency}, which would take the wallet past its largest balance "
        f"({to_text(db, MAX_MINOR, currency)} {currency}): held unpaid, owed; settle it with "
        f"`wallet settle` or POST /api/games/<game_id>/settle"))


def _unsettled_finish(db, game_id, player_id, currency, bet, new_status, payout):
    """Why a finish settled nothing: a repeat (answered as before) or a conflict."""
    game = db.execute(
        "SELECT status, player_id, currency, bet, payout FROM games WHERE game_id = ?", [game_id]
    ).fetchone()
    if game is None or game["status"] == "declined":
        return _conflict(f"game {game_id} has no accepted start")
    status, stored_payout = game["status"], game["payout"]
    conflict = _started_otherwise(db, game_id, game, (player_id, currency, bet), "finish")
    if conflict is not None:
        return conflict
    if status == "refunded":
        return _conflict(f"game {game_id} was refunded; its finish cannot be settled")
    if status == "open":
        raise RuntimeError(f"game {game_id} is open and matches its finish, yet SETTLE_FINISH settled nothing")
    if status == "unpaid":  # a win held unpaid: its repeat is a repeat of that win
        status = "won"
    if status != new_status or decimal.Decimal(stored_payout) != payout:
        return _conflict(
            f"game {game_id} was settled as {status} with payout {stored_payout}; "
            f"this finish says {new_status} with payout {payout}"
        )
    return Outcome(200, {}, "duplicate", f"game {game_id} already settled ({game[0]})")


def _text(number):
    return None if number is None else str(number)


def _insert_audit(db, audit, result, response_text=None):
    audit_id = db.execute(
        "INSERT INTO callbacks (received_at, type, game_id, player_id, outcome, reason, "
        "status_code, response, body, duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
    ).fetchone()["id"]
    db.wrote("callbacks", audit_id, audit["received_at"])


def record_callback(db, audit, result, response_text):
    """Keep a callback that never reached settlement (invalid input) in the audit table."""
    with db.transaction():
        _insert_audit(db, audit, result, response_text)


# --- refunds of bets that never got a finish --------------------------------------------


def refund_game(db, game_id, note=None):
    """Return an open bet's stake to its wallet, once; return (HTTP status, body).

    `note` (who refunded it and why) goes on the refund's ledger row. A repeat answers the
    first answer again and moves nothing (the first refund's note stays). A settled game cannot be
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
        if game["status"] == "unpaid":
            raise ApiError(409, "conflict", f"Game {game_id!r} was won and its win is owed (unpaid): settle it "
                                            "(`wallet settle`, POST /api/games/<game_id>/settle); a refund would drop the win.")
        if game["status"] != "open":
            raise ApiError(409, "conflict", f"Game {game_id!r} is already settled ({game['status']}); it cannot be refunded.")
        _move(db, game["wallet_id"], game["bet"], "refund", now, game_id=game_id, note=note)
        refunded = {**dict(game), "status": "refunded", "refunded_at": now}
        body = {"game": game_view(db, refunded), "wallet": wallet_view(db, game["player_id"], game["currency"], now)}
        db.execute(
            "UPDATE games SET status = 'refunded', refunded_at = ?, refund_response = ? WHERE game_id = ?",
            [now, json.dumps(body), game_id],
        )
    return 200, body


def owed(db, game):
    """What a won game still owes its wallet, in minor units: its win less the payouts made."""
    paid = sum(row["amount"] for row in db.execute(
        "SELECT amount FROM ledger WHERE game_id = ? AND kind = 'payout'", [game["game_id"]]).fetchall())
    return win_credit(game["bet"], decimal.Decimal(game["payout"])) - paid


def settle_game(db, game_id, note=None):
    """Pay a win held unpaid (its finish could not credit it: the wallet would have passed
    MAX_MINOR) with a payout ledger row; return (HTTP status, body).

    Pays as much of what is owed as the wallet can take now; once all is paid the game is
    `won`. Room is made by withdrawing from the wallet (e.g. paying the player out). A settled
    game answers again and moves nothing; any other game is a 409 (404 if unknown). `note`
    (who settled it and why) goes on the payout's ledger row.
    """
    now = now_ms()
    with db.transaction():
        db.lock("game", game_id)  # a settlement and the game's other movements take turns
        game = db.execute("SELECT * FROM games WHERE game_id = ?", [game_id]).fetchone()
        if game is None or game["status"] == "declined":
            raise ApiError(404, "not_found", f"No accepted bet has game id {game_id!r}.")
        if game["status"] not in ("unpaid", "won"):
            raise ApiError(409, "conflict", f"Game {game_id!r} is {game['status']}: only a win held unpaid "
                                            "(its finish could not credit it) is settled here.")
        currency, paid = game["currency"], 0
        if game["status"] == "unpaid":
            due = owed(db, game)
            balance = db.execute("SELECT balance FROM wallets WHERE id = ?", [game["wallet_id"]]).fetchone()["balance"]
            paid = min(due, MAX_MINOR - balance)
            if paid <= 0:
                raise ApiError(409, "balance_limit", (
                    f"The wallet holds {to_text(db, balance, currency)} {currency}, its largest balance: withdraw "
                    f"from it first (game {game_id!r} still owes {to_text(db, due, currency)} {currency})."))
            _move(db, game["wallet_id"], paid, "payout", now, game_id=game_id, note=note)
            if paid == due:
                db.execute("UPDATE games SET status = 'won' WHERE game_id = ?", [game_id])
        game = db.execute("SELECT * FROM games WHERE game_id = ?", [game_id]).fetchone()
        return 200, {
            "game": game_view(db, game),
            "wallet": wallet_view(db, game["player_id"], currency, now),
            "paid": to_text(db, paid, currency),
            "owed": to_text(db, owed(db, game), currency),
        }


def stale_games(db, older_than_ms, now=None):
    """Return the open bets whose bet was taken more than `older_than_ms` ago, oldest first.

    The bet's ledger row says when: a game's started_at is its first start's, which for a start
    declined and retried is earlier than the bet."""
    cutoff = (now_ms() if now is None else now) - older_than_ms
    rows = db.execute(
        "SELECT g.* FROM games g JOIN ledger l ON l.game_id = g.game_id AND l.kind = 'bet' "
        "WHERE g.status = 'open' AND g.started_at < ? AND l.created_at < ? ORDER BY g.started_at, g.game_id",
        [cutoff, cutoff],
    ).fetchall()
    return [game_view(db, row) for row in rows]


# --- the operator's deposits, withdrawals and balances ----------------------------------


def move_funds(db, kind, player_id, currency, amount, reference, note=None):
    """Deposit or withdraw once per reference; return (HTTP status, wallet body).

    `note` (who moved it and why) goes on the ledger row; it is not part of what a repeat
    must match: the first movement's note stays.

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
                [currency, currency_decimals(db, currency)],
            )
        minor = _minor_or_invalid(db, amount, currency, "amount")
        previous = db.execute(
            "SELECT kind, player_id, currency, amount, response FROM operations WHERE reference = ?",
            [reference],
        ).fetchone()
        if previous is not None:
            said = (previous["kind"], previous["player_id"], previous["currency"], previous["amount"])
            if said != (kind, player_id, currency, minor):
                raise ApiError(
                    409,
                    "reference_conflict",
                    f"reference {reference!r} was already used for a {previous['kind']} of "
                    f"{to_text(db, previous['amount'], previous['currency'])} {previous['currency']} "
                    f"for player {previous['player_id']}",
                )
            return 200, json.loads(previous["response"])
        if kind == "deposit":
            db.execute(
                "INSERT INTO wallets (player_id, currency, balance, updated_at) VALUES (?, ?, 0, ?) "
                "ON CONFLICT (player_id, currency) DO NOTHING",
                [player_id, currency, now],
            )
        wallet = wallet_row(db, player_id, currency)
        signed = minor if kind == "deposit" else -minor
        if wallet is None or not _move(db, wallet["id"], signed, kind, now, reference=reference, note=note):
            balance = to_text(db, wallet["balance"] if wallet else 0, currency)
            raise ApiError(
                409,
                "insufficient_funds",
                f"cannot withdraw {to_text(db, minor, currency)} {currency}: the balance is {balance}",
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
    configured = db.configured_decimals
    if not configured or currency in configured:
        return
    if db.execute("SELECT 1 FROM currencies WHERE currency = ?", [currency]).fetchone() is None:
        message = (f"{currency} is not one of the currencies in CURRENCY_DECIMALS "
                   f"({', '.join(sorted(configured))}); to open it, add {currency}=<decimals> to "
                   f"CURRENCY_DECIMALS and restart the service (and give the CLI the same setting).")
        raise ApiError(400, "unknown_currency", message, {"currency": [message]})
