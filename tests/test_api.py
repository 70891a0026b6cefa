"""The operator API: deposits and withdrawals once per reference, balances with pending wins."""

import decimal
import json

import pytest

import schemas
from money import units
from money.views import wallet_view
from tests.support import store_for


def test_deposit_creates_the_wallet_and_answers_201(wallet):
    response = wallet.deposit("12.5", reference="dep-1")
    assert response.status_code == 201
    assert response.json == {
        "player_id": "player-42", "currency": "USD", "balance": "12.50",
        "display_balance": "12.50", "pending": [],
    }


def test_same_reference_and_body_again_answers_the_first_answer_and_moves_nothing(wallet):
    first = wallet.deposit("5.00", reference="dep-1")
    wallet.deposit("1.00", reference="dep-2")
    again = wallet.deposit("5", reference="dep-1")  # the same amount, written differently
    assert again.status_code == 200 and again.json == first.json
    assert wallet.balance() == "6.00"
    assert len(wallet.books()["ledger"]) == 2


@pytest.mark.parametrize("change", [
    {"amount": "6.00"}, {"currency": "EUR"}, {"player": "player-7"},
])
def test_same_reference_with_another_body_is_a_conflict(wallet, change):
    wallet.deposit("5.00", reference="dep-1")
    before = wallet.books()
    response = wallet.deposit(**{"amount": "5.00", "reference": "dep-1", **change})
    assert response.status_code == 409 and response.json["error"] == "reference_conflict"
    assert wallet.books() == before


def test_a_reference_is_unique_across_deposits_and_withdrawals(wallet):
    wallet.deposit("5.00", reference="ref-1")
    response = wallet.withdraw("5.00", reference="ref-1")
    assert response.status_code == 409 and response.json["error"] == "reference_conflict"
    assert wallet.balance() == "5.00"


def test_withdrawal_debits_once_per_reference(wallet):
    wallet.deposit("10.00")
    first = wallet.withdraw("3.50", reference="wd-1")
    assert first.status_code == 201 and first.json["balance"] == "6.50"
    again = wallet.withdraw("3.50", reference="wd-1")
    assert again.status_code == 200 and again.json == first.json
    assert wallet.balance() == "6.50"


def test_withdrawal_above_the_balance_is_refused_and_keeps_its_reference_free(wallet):
    wallet.deposit("10.00")
    before = wallet.books()
    refused = wallet.withdraw("10.01", reference="wd-1")
    assert refused.status_code == 409 and refused.json["error"] == "insufficient_funds"
    assert wallet.books() == before
    assert wallet.withdraw("10.00", reference="wd-1").status_code == 201
    assert wallet.balance() == "0.00"


def test_withdrawal_from_an_unknown_wallet_is_insufficient_funds(wallet):
    response = wallet.withdraw("1", player="nobody")
    assert response.status_code == 409 and response.json["error"] == "insufficient_funds"
    assert wallet.books()["wallets"] == {}


def test_amounts_round_half_to_even_to_the_currency(wallet):
    assert wallet.deposit("0.125").json["balance"] == "0.12"
    assert wallet.deposit(0.135).json["balance"] == "0.26"  # 0.135 is exactly 0.135 here: to 0.14


def test_balances_lists_every_currency(wallet):
    wallet.deposit("1.00", currency="USD")
    wallet.deposit("0.5", currency="BTC")
    response = wallet.client.get("/api/players/player-42/balances", headers=wallet.admin)
    assert response.json["player_id"] == "player-42"
    assert [(w["currency"], w["balance"]) for w in response.json["balances"]] == [
        ("BTC", "0.50000000"), ("USD", "1.00")]


def test_unknown_player_has_no_balances_and_unknown_wallet_is_404(wallet):
    response = wallet.client.get("/api/players/nobody/balances", headers=wallet.admin)
    assert response.json == {"player_id": "nobody", "balances": []}
    response = wallet.client.get("/api/players/nobody/balances/USD", headers=wallet.admin)
    assert response.status_code == 404 and response.json["error"] == "not_found"


def test_a_win_is_credited_at_once_but_displayed_after_its_animation(wallet):
    wallet.deposit("10.00")
    wallet.start(bet=1)
    sent = units.now_ms()
    wallet.finish(payout=2.5, **{"time": sent, "data.balanceUpdateDelay": 3500})
    view = wallet.client.get("/api/players/player-42/balances/USD", headers=wallet.admin).json
    assert view["balance"] == "11.50"
    assert view["display_balance"] == "9.00"
    [pending] = view["pending"]
    assert pending["game_id"] == "g-1" and pending["amount"] == "2.50"
    assert 0 < pending["show_in_ms"] <= 3500


def test_a_win_whose_animation_is_over_is_not_pending(wallet):
    wallet.deposit("10.00")
    wallet.start(bet=1)
    wallet.finish(payout=2, **{"time": units.now_ms() - 5000, "data.balanceUpdateDelay": 3500})
    wallet.start(game_id="g-2", bet=1)
    wallet.finish(game_id="g-2", payout=2, **{"data.balanceUpdateDelay": 0})
    view = wallet.client.get("/api/players/player-42/balances/USD", headers=wallet.admin).json
    assert view["pending"] == [] and view["display_balance"] == view["balance"] == "12.00"


def test_a_pending_win_leaves_pending_once_its_delay_runs_out(wallet):
    """The clock is the view's argument: the same books read 100 ms and 1,600 ms after the finish
    was sent, with no sleep whose length the assertion would depend on."""
    wallet.deposit("10.00")
    wallet.start(bet=1)
    sent = units.now_ms()
    wallet.finish(payout=2, **{"time": sent, "data.balanceUpdateDelay": 1500})
    books = store_for(wallet.database)
    during = wallet_view(books, "player-42", "USD", now=sent + 100)
    assert during["pending"] == [{"game_id": "g-1", "amount": "2.00", "show_in_ms": 1400}]
    assert during["display_balance"] == "9.00" and during["balance"] == "11.00"
    after = wallet_view(books, "player-42", "USD", now=sent + 1600)
    assert after["pending"] == [] and after["display_balance"] == after["balance"] == "11.00"


def shown(view):
    """(balance, display_balance, {game: pending amount}), checking the display plus what is
    still to show is the balance."""
    pending = {item["game_id"]: item["amount"] for item in view["pending"]}
    total = decimal.Decimal(view["display_balance"]) + sum(map(decimal.Decimal, pending.values()))
    assert total == decimal.Decimal(view["balance"]), view
    return view["balance"], view["display_balance"], pending


def test_withdrawing_a_win_not_shown_yet_never_takes_the_display_below_zero(wallet):
    wallet.deposit("5.00")
    wallet.start(bet=1)
    wallet.finish(payout=3, **{"time": units.now_ms(), "data.balanceUpdateDelay": 600_000})
    assert shown(wallet.client.get("/api/players/player-42/balances/USD", headers=wallet.admin).json) == (
        "7.00", "4.00", {"g-1": "3.00"})
    withdrawn = wallet.withdraw("7.00")
    assert withdrawn.status_code == 201
    assert shown(withdrawn.json) == ("0.00", "0.00", {})
    assert shown(wallet.client.get("/api/players/player-42/balances/USD", headers=wallet.admin).json) == (
        "0.00", "0.00", {})


def test_a_win_partly_spent_shows_only_what_is_left_of_it(wallet):
    wallet.deposit("5.00")
    wallet.start(bet=1)
    wallet.finish(payout=3, **{"time": units.now_ms(), "data.balanceUpdateDelay": 600_000})
    assert shown(wallet.withdraw("6.00").json) == ("1.00", "0.00", {"g-1": "1.00"})
    [balances] = wallet.client.get("/api/players/player-42/balances", headers=wallet.admin).json["balances"]
    assert shown(balances) == ("1.00", "0.00", {"g-1": "1.00"})


def test_wins_spent_by_a_bet_keep_the_first_to_show_whole(wallet):
    wallet.deposit("1.00")
    now = units.now_ms()
    wallet.start(game_id="g-1", bet=1)
    wallet.finish(game_id="g-1", payout=3, **{"time": now, "data.balanceUpdateDelay": 600_000})
    wallet.start(game_id="g-2", bet=1)  # staked out of the 3.00 not shown yet
    wallet.finish(game_id="g-2", payout=2, **{"time": now, "data.balanceUpdateDelay": 300_000})
    view = wallet.client.get("/api/players/player-42/balances/USD", headers=wallet.admin).json
    assert shown(view) == ("4.00", "0.00", {"g-1": "2.00", "g-2": "2.00"})


@pytest.mark.parametrize(
    "delay, callback_ms, received_ms, now, expected",
    [
        (3500, 1_000, 1_200, 1_200, 3300),  # 200 ms in transit are already gone
        (3500, 1_000, 1_200, 4_000, 500),
        (3500, 1_000, 1_200, 4_500, 0),  # over
        (3500, 1_000, 1_200, 9_000, 0),
        (0, 1_000, 1_000, 1_000, 0),  # no delay: show at once
        (3500, 5_000, 1_200, 1_200, 3500),  # provider clock ahead: counts from receipt
        (3500, 1_000, 1_200, 500, 3500),  # never more than the delay itself
        (1000, 1663249721934, 1663249721934 + 40, 1663249721934 + 40, 960),
    ],
)
def test_show_in_ms(delay, callback_ms, received_ms, now, expected):
    assert units.show_in_ms(delay, callback_ms, received_ms, now) == expected


@pytest.mark.parametrize("amount, currency, expected", [
    ("0.00000002", "BTC", "0.00000002"),  # never scientific notation
    ("0.000001", "BTC", "0.00000100"),
    ("7", "USD", "7.00"),
    ("999999999999.99", "USD", "999999999999.99"),
])
def test_amounts_are_plain_decimal_strings_with_the_currency_decimals(wallet, amount, currency, expected):
    assert wallet.deposit(amount, currency=currency).json["balance"] == expected


@pytest.mark.parametrize("url, field", [
    ("/api/games?limit=0", "limit"),
    ("/api/games?limit=%205", "limit"),
    ("/api/games?status=lost-ish", "status"),
    ("/api/games?since=2022-02-30", "since"),
    ("/api/games?player_id=p%00", "player_id"),
    ("/api/callbacks?outcome=maybe", "outcome"),
    ("/api/players/player-42/ledger?currency=US%20D", "currency"),
])
def test_a_query_string_error_names_the_query_string_and_the_parameter(wallet, url, field):
    response = wallet.client.get(url, headers=wallet.admin)
    assert response.status_code == 400
    assert response.json["message"] == "The query string is invalid."
    assert list(response.json["fields"]) == [field]


@pytest.mark.parametrize("path", ["/api/games", "/api/callbacks", "/api/players/player-42/ledger"])
def test_an_empty_cursor_is_the_first_page(wallet, path):
    wallet.deposit("1.00")
    wallet.start()
    first = wallet.client.get(path, headers=wallet.admin)
    assert first.status_code == 200
    assert wallet.client.get(f"{path}?cursor=", headers=wallet.admin).json == first.json


@pytest.mark.parametrize("since, expected", [
    ("1663249396000", 1663249396000),
    ("2022-09-15", 1663200000000),
    ("2022-09-15T12:00:00+02:00", 1663236000000),
    ("2022-09-15t10:00:00z", 1663236000000),  # RFC 3339 allows lower case
    ("2016-12-31T23:59:60Z", 1483228800000),  # a leap second: the next second
])
def test_since_reads_epoch_milliseconds_and_iso_8601(since, expected):
    assert schemas.games_query.load({"since": since})["since"] == expected


def walk(wallet, limit=2, **query):
    """Walk GET /api/games from the first page to next_cursor = null, yielding the game ids seen
    so far after each page (the test acts between pages)."""
    seen, cursor = [], ""
    while True:
        page = wallet.client.get("/api/games", headers=wallet.admin,
                                 query_string={**query, "limit": limit, "cursor": cursor}).json
        seen += [game["game_id"] for game in page["games"]]
        yield seen
        cursor = page["next_cursor"]
        if cursor is None:
            return


@pytest.mark.parametrize("status", [None, "open"])
def test_a_walk_over_the_games_sees_every_row_that_existed_when_it_began(wallet, status):
    wallet.deposit("5.00")
    assert wallet.start(game_id="retried", bet=50).json == {"result": False}  # declined: the oldest row
    for game_id in ("a", "b", "c", "d", "e"):
        assert wallet.start(game_id=game_id, bet=1).json == {"result": True}
    query = {"status": status} if status else {}
    steps = walk(wallet, **query)
    next(steps)  # the first page
    wallet.deposit("100.00")
    assert wallet.start(game_id="retried", bet=50).json == {"result": True}  # taken again mid-walk
    assert wallet.start(game_id="new", bet=1).json == {"result": True}  # written during the walk
    *_, seen = steps
    assert len(seen) == len(set(seen))
    assert {"a", "b", "c", "d", "e", "retried"} <= set(seen)  # it kept its place: reached at the end
    assert seen[-1] == "retried"


def test_a_start_retried_after_its_decline_keeps_its_place_and_is_stale_by_its_bet(wallet, runner):
    wallet.deposit("1.00")
    assert wallet.start(game_id="retried", bet=5).json == {"result": False}
    first = wallet.client.get("/api/games/retried", headers=wallet.admin).json["started_at"]
    wallet.sql("UPDATE games SET started_at = started_at - 7200000 WHERE game_id = 'retried'")  # declined 2 h ago
    wallet.deposit("10.00")
    assert wallet.start(game_id="retried", bet=5).json == {"result": True}
    game = wallet.client.get("/api/games/retried", headers=wallet.admin).json
    assert game["status"] == "open" and game["started_at"] < first  # the first start's time, kept
    stale = runner.invoke(args=["wallet", "stale", "--older-than", "3600", "--json"])
    assert json.loads(stale.output)["games"] == []  # its bet was taken just now: not stale
