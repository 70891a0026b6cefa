"""How the books' rows are shown: amounts as decimal text, times as ISO 8601, and a wallet
with the wins its player's screen does not show yet."""

from money.units import iso, now_ms, show_in_ms, to_text
from schemas import MAX_DELAY_MS
from store.schema import CREDITED


def game_view(db, game):
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
        "bet": to_text(db, game["bet"], currency),
        "payout": game["payout"],  # the multiplier, as the provider sent it
        "profit": game["profit"],
        "credit": None if game["credit"] is None else to_text(db, game["credit"], currency),
        "balance_update_delay": game["balance_update_delay"],
        "started_at": iso(game["started_at"]),
        "start_time": iso(game["start_time"]),
        "settled_at": iso(game["settled_at"]),
        "finish_time": iso(game["finish_time"]),
        "refunded_at": iso(game["refunded_at"]),
    }


def wallet_row(db, player_id, currency):
    """A player's wallet in a currency (id, balance), or None."""
    return db.execute(
        "SELECT id, balance FROM wallets WHERE player_id = ? AND currency = ?", [player_id, currency]
    ).fetchone()


def wallet_view(db, player_id, currency, now=None):
    """Return a wallet as the API shows it, or None if the player has none in that currency.

    `display_balance` leaves out the payouts whose animation is still running, so the
    operator's frontend can show each win when the game shows it.
    """
    now = now_ms() if now is None else now
    wallet = wallet_row(db, player_id, currency)
    if wallet is None:
        return None
    balance = wallet["balance"]
    rows = db.execute(
        "SELECT game_id, credit, balance_update_delay, finish_time, settled_at FROM games "
        f"WHERE wallet_id = ? AND settled_at >= ? AND {CREDITED} ORDER BY settled_at, game_id",  # a partial index
        [wallet["id"], now - MAX_DELAY_MS],
    ).fetchall()
    waits = [(row["game_id"], row["credit"],
              show_in_ms(row["balance_update_delay"], row["finish_time"], row["settled_at"], now)) for row in rows]
    pending = [(game_id, credit, wait) for game_id, credit, wait in waits if wait > 0]
    # A withdrawal or a bet may have spent wins not shown yet: the display never goes below
    # zero, and the pending amounts are cut (the first to show kept whole) so that the display
    # plus what is still to show is always the balance.
    display = max(balance - sum(credit for _, credit, _ in pending), 0)
    left, shown = balance - display, {}
    for game_id, credit, _ in sorted(pending, key=lambda item: item[2]):
        shown[game_id] = min(credit, left)
        left -= shown[game_id]
    pending = [(game_id, shown[game_id], wait) for game_id, _, wait in pending if shown[game_id] > 0]
    return {
        "player_id": player_id,
        "currency": currency,
        "balance": to_text(db, balance, currency),
        "display_balance": to_text(db, display, currency),
        "pending": [
            {"game_id": game_id, "amount": to_text(db, credit, currency), "show_in_ms": wait}
            for game_id, credit, wait in pending
        ],
    }


def player_wallets(db, player_id, now=None):
    """Return every wallet of a player, by currency (an empty list for an unknown player)."""
    now = now_ms() if now is None else now
    currencies = db.execute(
        "SELECT currency FROM wallets WHERE player_id = ? ORDER BY currency", [player_id]
    ).fetchall()
    return [wallet_view(db, player_id, row["currency"], now) for row in currencies]
