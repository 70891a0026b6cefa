"""Amounts in integer minor units, each currency's decimals, and times as the books keep them.

A currency's decimals are fixed in the books (`currencies`) at its first deposit; until then
they come from the operator's CURRENCY_DECIMALS, which reaches here through the store
(`store.configured_decimals`, set by whoever opened it), else 8.
"""

import datetime
import decimal
import time

from schemas import CURRENCY

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


def iso(ms):
    """Format epoch milliseconds as ISO 8601 UTC (None stays None)."""
    if ms is None:
        return None
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


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


def currency_decimals(db, currency):
    """Return a currency's decimals: as fixed in the books at its first deposit, else the
    store's configured CURRENCY_DECIMALS, else 8. Balances are stored in minor units, so once a
    currency holds money its decimals never change (a CLI run without the server's environment
    included). Because they never change, a connection remembers them once read: a callback
    needs them several times (rounding, checking, formatting) and need not ask each time.
    """
    fixed = db.fixed_decimals
    if currency not in fixed:
        row = db.execute("SELECT decimals FROM currencies WHERE currency = ?", [currency]).fetchone()
        if row is None:
            return db.configured_decimals.get(currency, DEFAULT_DECIMALS)
        fixed[currency] = row["decimals"]
    return fixed[currency]


def to_minor(db, amount, currency):
    """Convert a decimal amount to integer minor units, rounding half-to-even."""
    scaled = EXACT.scaleb(amount, currency_decimals(db, currency))
    return int(scaled.to_integral_value(rounding=decimal.ROUND_HALF_EVEN, context=EXACT))


def to_text(db, minor, currency):
    """Format integer minor units as a decimal string with the currency's decimals."""
    return format(decimal.Decimal(minor).scaleb(-currency_decimals(db, currency), context=EXACT), "f")


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
