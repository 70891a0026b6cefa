"""Property test: random deposits, withdrawals, starts, finishes and verbatim retries.

The service is driven only over HTTP (Flask's test client) and checked after every step
against an independent model kept in integer minor units with exact fractions.
"""

import dataclasses
import itertools
from fractions import Fraction

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

import app as app_module
import db
from harness.samples import ADMIN_TOKEN, CALLBACK_TOKEN, FINISH, START, body, store_settings
from tests.support import Raw, books, dumps

PLAYERS = ("alice", "bob", "zoë")
DECIMALS = {"USD": 2, "EUR": 2, "BTC": 8}
CURRENCIES = tuple(DECIMALS)
GAME_IDS = ("g-1", "g-2", "g-3", "g-4", 7, "7", 8)  # 7 and "7" are the same game
REFERENCES = ("ref-1", "ref-2", "ref-3", "ref-4", "ref-5")
LIMIT = 10**12  # amounts are refused at or above this many currency units
MAX_MINOR = 10**18  # ... and above this many minor units; no balance may exceed it either
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Amounts the provider's floats really produce, and classic half-way cases.
ARTEFACTS = (0.1 + 0.2, 1.1 * 3, 0.1 * 3, 2.675, 1.005, 0.125, 0.135, 0.015, 0.045, 1.15, 4.35, 1e-05, 1.5e-08)
PAYOUTS = (0, 1, 2.5, "2.50", 0.3333, "0.3333", 1.0625, 0.5, 1.5, 0.1 + 0.2, 1000)


class Share(Fraction):
    """Stands for this share of the model's current balance, as a decimal text."""

    def __repr__(self):
        return f"Share({self.numerator}/{self.denominator})"


def exact(value):
    """The exact value the service reads: the JSON text of a number, or a numeric string."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return Fraction(str(value))
    return Fraction(repr(value))  # json.dumps writes a float as its repr


def to_minor(value, currency):
    """Round to minor units, half to even (round() of a Fraction is half-to-even)."""
    return round(exact(value) * 10 ** DECIMALS[currency])


def as_text(minor, currency):
    """A balance as the API must show it: plain decimal text with the currency's decimals."""
    places = DECIMALS[currency]
    whole, part = divmod(minor, 10**places)
    return f"{whole}.{part:0{places}d}" if places else str(whole)


def amounts(max_units):
    """Positive amounts as decimal strings, exact JSON numbers, ints and floats (some round to 0)."""
    scale = st.sampled_from([1, 10, 1000, max_units])
    decimal_text = st.tuples(scale, st.integers(0, 10)).flatmap(
        lambda sp: st.decimals(min_value=0, max_value=sp[0], places=sp[1], allow_nan=False, allow_infinity=False)
    ).map(lambda d: format(d, "f"))
    return st.one_of(
        decimal_text,
        decimal_text.map(Raw),
        scale.flatmap(lambda top: st.integers(0, top)),
        scale.flatmap(lambda top: st.floats(min_value=0, max_value=top, allow_nan=False, allow_infinity=False)),
        st.sampled_from(ARTEFACTS),
    )


def payouts(max_units):
    """Win multipliers: the usual ones, random decimals and floats."""
    return st.one_of(
        st.sampled_from(PAYOUTS),
        st.decimals(min_value=0, max_value=100, places=4, allow_nan=False, allow_infinity=False).map(
            lambda d: Raw(format(d, "f"))
        ),
        st.floats(min_value=0, max_value=100, allow_nan=False, allow_infinity=False),
        st.integers(0, max_units),
    )


@dataclasses.dataclass(frozen=True)
class Sent:
    """One request as sent (url and raw body, for verbatim retries) and what it says."""

    kind: str  # deposit | withdrawal | start | finish
    url: str
    raw: bytes
    player: str
    currency: str
    amount: object  # the amount or bet exactly as written in the body
    reference: str = None
    game_id: object = None
    status: str = None
    payout: object = None

    def __repr__(self):
        return f"Sent({self.kind}, {self.url}, {self.raw.decode()})"


@dataclasses.dataclass
class Game:
    player: str
    currency: str
    bet: int
    status: str = "open"  # open | won | lost | unpaid
    payout: Fraction = None
    credit: int = None


def make_machine(max_units):
    """A state machine whose amounts and payout multipliers go up to max_units."""
    amount, payout = amounts(max_units), payouts(max_units)
    share_or_amount = st.one_of(amount, st.sampled_from([Share(1), Share(1, 2), Share(1, 3)]))
    players, currencies = st.sampled_from(PLAYERS), st.sampled_from(CURRENCIES)
    game_ids, statuses = st.sampled_from(GAME_IDS), st.sampled_from(["win", "lose"])
    references = st.one_of(st.sampled_from(REFERENCES), st.none())  # None: a fresh reference

    class WalletMachine(RuleBasedStateMachine):
        deposits = Bundle("deposits")  # every deposit sent, whatever its answer
        starts = Bundle("starts")  # every start sent
        sent = Bundle("sent")  # withdrawals and finishes

        new_database = None  # set by the test: makes a fresh database on the test's engine

        def __init__(self):
            super().__init__()
            self.database = self.new_database(f"example-{next(EXAMPLES)}")
            self.app = app_module.create_app({
                **store_settings(self.database),
                "CALLBACK_TOKEN": CALLBACK_TOKEN,
                "ADMIN_TOKEN": ADMIN_TOKEN,
                "CURRENCY_DECIMALS": "USD=2,EUR=2,BTC=8",
                "CALLBACK_ALLOWED_IPS": "",
                "TRUSTED_PROXIES": "0",
                "SQLITE_SYNCHRONOUS": "OFF",  # durability is not under test; speed is welcome
                "LOG_LEVEL": "WARNING",
            })
            self.client = self.app.test_client()
            self.balances = {}  # (player, currency) -> minor units; a key per existing wallet
            self.games = {}  # str(game id) -> Game, for accepted starts only
            self.operations = {}  # reference -> (kind, player, currency, minor, first answer)
            self.touched = set()  # every (player, currency) a request named
            self.fresh = itertools.count(1)

        def teardown(self):
            db.close_all(self.app)

        # --- building requests -----------------------------------------------------------

        def _resolve(self, value, player, currency):
            if not isinstance(value, Share):
                return value
            minor = self.balances.get((player, currency), 0) * value
            return as_text(int(minor), currency) if minor >= 1 else "1"

        def _movement(self, kind, player, currency, amount, reference):
            amount = self._resolve(amount, player, currency)
            reference = reference or f"fresh-{next(self.fresh)}"
            url = f"/api/players/{player}/{kind}s"
            raw = dumps({"currency": currency, "amount": amount, "reference": reference}).encode()
            return Sent(kind, url, raw, player, currency, amount, reference=reference)

        def _start(self, game_id, player, currency, bet):
            bet = self._resolve(bet, player, currency)
            raw = dumps(body(START, **{
                "game.id": game_id, "game.bet": bet, "data.bet": bet, "data.allBetAmount": bet,
                "session.playerId": player, "session.currency": currency})).encode()
            return Sent("start", f"/callback/{CALLBACK_TOKEN}", raw, player, currency, bet, game_id=game_id)

        def _finish(self, game_id, player, currency, bet, status, payout):
            raw = dumps(body(FINISH, **{
                "game.id": game_id, "game.status": status, "game.payout": payout, "game.bet": bet,
                "session.playerId": player, "session.currency": currency})).encode()
            return Sent("finish", f"/callback/{CALLBACK_TOKEN}", raw, player, currency, bet,
                        game_id=game_id, status=status, payout=payout)

        # --- rules -----------------------------------------------------------------------

        @rule(target=deposits, player=players, currency=currencies, amount=amount, reference=references)
        def deposit(self, player, currency, amount, reference):
            return self.send(self._movement("deposit", player, currency, amount, reference))

        @rule(target=sent, player=players, currency=currencies, amount=share_or_amount, reference=references)
        def withdraw(self, player, currency, amount, reference):
            return self.send(self._movement("withdrawal", player, currency, amount, reference))

        @rule(target=sent, deposit=deposits, amount=share_or_amount, reference=references)
        def withdraw_from_a_deposited_wallet(self, deposit, amount, reference):
            return self.send(self._movement("withdrawal", deposit.player, deposit.currency, amount, reference))

        @rule(target=starts, game_id=game_ids, player=players, currency=currencies, bet=share_or_amount)
        def start(self, game_id, player, currency, bet):
            return self.send(self._start(game_id, player, currency, bet))

        @rule(target=starts, deposit=deposits, game_id=game_ids, bet=share_or_amount)
        def start_on_a_deposited_wallet(self, deposit, game_id, bet):
            return self.send(self._start(game_id, deposit.player, deposit.currency, bet))

        @rule(target=sent, game_id=game_ids, player=players, currency=currencies, bet=amount,
              status=statuses, payout=payout)
        def finish(self, game_id, player, currency, bet, status, payout):
            return self.send(self._finish(game_id, player, currency, bet, status, payout))

        @rule(target=sent, start=starts, status=statuses, payout=payout, other_id_type=st.booleans(),
              rounded_bet=st.booleans())
        def finish_a_started_game(self, start, status, payout, other_id_type, rounded_bet):
            """Finish on the terms of an earlier start: the id as number or text, the bet as sent or rounded."""
            game_id, bet = start.game_id, start.amount
            if other_id_type and str(game_id).isdigit():
                game_id = str(game_id) if isinstance(game_id, int) else int(game_id)
            if rounded_bet and to_minor(bet, start.currency) > 0:
                bet = as_text(to_minor(bet, start.currency), start.currency)
            return self.send(self._finish(game_id, start.player, start.currency, bet, status, payout))

        @rule(request=st.one_of(deposits, starts, sent))
        def retry(self, request):
            """Deliver an earlier request again, byte for byte."""
            self.send(request)

        # --- sending and the model -------------------------------------------------------

        def send(self, request):
            headers = ADMIN if request.kind in ("deposit", "withdrawal") else {}
            response = self.client.post(request.url, data=request.raw, content_type="application/json",
                                        headers=headers)
            answer = response.get_json(silent=True)
            self.touched.add((request.player, request.currency))
            assert response.status_code < 500, (response.status_code, answer)
            model = {"deposit": self._expect_movement, "withdrawal": self._expect_movement,
                     "start": self._expect_start, "finish": self._expect_finish}[request.kind]
            model(request, response.status_code, answer)
            return request

        def _invalid(self, value, currency):
            """Whether the service must refuse the amount (400): too large, or rounds to 0."""
            return exact(value) >= LIMIT or not 0 < to_minor(value, currency) <= MAX_MINOR

        def _expect_movement(self, request, status, answer):
            kind, player, currency = request.kind, request.player, request.currency
            if self._invalid(request.amount, currency):
                assert status == 400, (status, answer)
                return
            minor = to_minor(request.amount, currency)
            previous = self.operations.get(request.reference)
            if previous is not None:
                if previous[:4] == (kind, player, currency, minor):
                    assert (status, answer) == (200, previous[4])
                else:
                    assert (status, answer["error"]) == (409, "reference_conflict"), (status, answer)
                return
            balance = self.balances.get((player, currency))
            if kind == "withdrawal" and (balance is None or balance < minor):
                assert (status, answer["error"]) == (409, "insufficient_funds"), (status, answer)
                return
            balance = (balance or 0) + (minor if kind == "deposit" else -minor)
            if balance > MAX_MINOR:
                assert (status, answer["error"]) == (409, "balance_limit"), (status, answer)
                return
            assert status == 201, (status, answer)
            assert (answer["player_id"], answer["currency"]) == (player, currency)
            assert answer["balance"] == as_text(balance, currency), (answer, balance)
            self.balances[player, currency] = balance
            self.operations[request.reference] = (kind, player, currency, minor, answer)

        def _expect_start(self, request, status, answer):
            player, currency = request.player, request.currency
            if self._invalid(request.amount, currency):
                assert status == 400, (status, answer)
                return
            bet = to_minor(request.amount, currency)
            game = self.games.get(str(request.game_id))
            if game is not None:
                if (game.player, game.currency, game.bet) != (player, currency, bet):
                    assert (status, answer["error"]) == (409, "conflict"), (status, answer)
                else:
                    assert (status, answer) == (200, {"result": True})
                return
            balance = self.balances.get((player, currency))
            accepted = balance is not None and balance >= bet
            assert (status, answer) == (200, {"result": accepted}), (status, answer, balance, bet)
            if accepted:
                self.balances[player, currency] = balance - bet
                self.games[str(request.game_id)] = Game(player, currency, bet)

        def _expect_finish(self, request, status, answer):
            player, currency = request.player, request.currency
            if self._invalid(request.amount, currency) or exact(request.payout) >= LIMIT:
                assert status == 400, (status, answer)
                return
            bet, payout = to_minor(request.amount, currency), exact(request.payout)
            game = self.games.get(str(request.game_id))
            if game is None or (game.player, game.currency, game.bet) != (player, currency, bet):
                assert (status, answer["error"]) == (409, "conflict"), (status, answer)
                return
            settled = "won" if request.status == "win" else "lost"
            if game.status != "open":
                if ({"unpaid": "won"}.get(game.status, game.status), game.payout) == (settled, payout):
                    assert (status, answer) == (200, {})
                else:
                    assert (status, answer["error"]) == (409, "conflict"), (status, answer)
                return
            credit = round(bet * payout) if settled == "won" else 0
            assert (status, answer) == (200, {}), (status, answer)
            if self.balances[player, currency] + credit > MAX_MINOR:  # held unpaid: nothing credited
                game.credit, game.status, game.payout = None, "unpaid", payout
                return
            game.credit, game.status, game.payout = credit, settled, payout
            self.balances[player, currency] += game.credit

        # --- after every step ------------------------------------------------------------

        @invariant()
        def balances_read_over_http_match_the_model(self):
            for player, currency in sorted(self.touched):  # books() shows no other wallet exists
                response = self.client.get(f"/api/players/{player}/balances/{currency}", headers=ADMIN)
                if (player, currency) in self.balances:
                    expected = as_text(self.balances[player, currency], currency)
                    assert response.status_code == 200, (player, currency, response.status_code)
                    assert response.json["balance"] == expected, (player, currency, response.json, expected)
                else:
                    assert response.status_code == 404, (player, currency, response.status_code)

        @invariant()
        def books_balance_and_match_the_model(self):
            state = books(self.database)  # balance = ledger sum, never negative
            assert state["wallets"] == self.balances
            settled = {game_id: (status, bet, credit) for game_id, status, bet, credit in state["games"]
                       if status != "declined"}
            assert settled == {game_id: (game.status, game.bet, game.credit)
                               for game_id, game in self.games.items()}

    return WalletMachine


# Everyday amounts: up to 1000 units, and multipliers up to 1000.
EverydayWallet = make_machine(1000)
# Every amount the API accepts: up to (not including) 10^12 units.
FullRangeWallet = make_machine(LIMIT - 1)

SETTINGS = settings(max_examples=60, stateful_step_count=25, deadline=None)


EXAMPLES = itertools.count(1)


def test_everyday_amounts_keep_the_books_and_match_the_model(new_database, monkeypatch):
    monkeypatch.setattr(EverydayWallet, "new_database", staticmethod(new_database))
    run_state_machine_as_test(EverydayWallet, settings=SETTINGS)


def test_every_accepted_amount_keeps_the_books_and_matches_the_model(new_database, monkeypatch):
    monkeypatch.setattr(FullRangeWallet, "new_database", staticmethod(new_database))
    run_state_machine_as_test(FullRangeWallet, settings=SETTINGS)
