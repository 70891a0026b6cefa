"""Settlement of start/finish callbacks: what is debited, credited, answered and kept."""

import json
import re

import pytest

from harness.samples import DELETE, FINISH, START, body
from tests.support import EXAMPLES, Wallet, query


def test_start_debits_the_bet_and_answers_true(wallet):
    wallet.deposit("10.00")
    response = wallet.start(bet=1.25)
    assert response.status_code == 200 and response.json == {"result": True}
    assert wallet.balance() == "8.75"
    books = wallet.books()
    assert [row[1:4] for row in books["ledger"]] == [(1000, "deposit", None), (-125, "bet", "g-1")]
    assert books["games"] == [("g-1", "open", 125, None)]


@pytest.mark.parametrize("player, currency", [("nobody", "USD"), ("player-42", "EUR")])
def test_start_for_an_unknown_player_or_currency_is_declined(wallet, player, currency):
    wallet.deposit("10.00")
    response = wallet.start(player=player, currency=currency)
    assert response.json == {"result": False}
    assert wallet.books()["wallets"] == {("player-42", "USD"): 1000}


def test_start_above_the_balance_is_declined_and_moves_nothing(wallet):
    wallet.deposit("1.00")
    assert wallet.start(bet="1.01").json == {"result": False}
    assert wallet.balance() == "1.00"
    assert wallet.start(game_id="g-2", bet="1.00").json == {"result": True}
    assert wallet.balance() == "0.00"


def test_declined_start_is_evaluated_afresh_when_repeated(wallet):
    assert wallet.start(bet=5).json == {"result": False}
    wallet.deposit("5.00")
    assert wallet.start(bet=5).json == {"result": True}
    assert wallet.balance() == "0.00"
    assert wallet.books()["games"] == [("g-1", "open", 500, None)]


def test_a_declined_start_says_why_and_its_game_stays_declined(wallet):
    assert wallet.start(game_id="g-none", player="nobody").json == {"result": False}
    wallet.deposit("1.00")
    assert wallet.start(game_id="g-low", bet="1.01").json == {"result": False}
    assert [(row["game_id"], row["outcome"], row["reason"]) for row in wallet.audit()] == [
        ("g-none", "declined", "no such wallet"),
        ("g-low", "declined", "balance 1.00 USD is below the bet"),
    ]
    [(wallet_id,)] = query(wallet.database, "SELECT id FROM wallets")
    games = query(wallet.database, "SELECT game_id, status, player_id, wallet_id, bet FROM games ORDER BY game_id")
    assert games == [("g-low", "declined", "player-42", wallet_id, 101), ("g-none", "declined", "nobody", None, 100)]
    assert [row[2] for row in wallet.books()["ledger"]] == ["deposit"]


def test_a_start_or_finish_that_contradicts_its_games_start_is_a_conflict_saying_how(wallet):
    wallet.deposit("10.00")
    assert wallet.start(game_id="g", bet="1.25").json == {"result": True}
    for send, kind, says in [
        (lambda: wallet.start(game_id="g", bet="2"), "start", "player-42 for 2.00 USD"),
        (lambda: wallet.finish(game_id="g", bet="1.25", player="someone-else"), "finish", "someone-else for 1.25 USD"),
    ]:
        answer = send()
        reason = f"game g was started by player-42 for 1.25 USD; this {kind} says {says}"
        assert (answer.status_code, answer.json) == (409, {"error": "conflict", "message": reason})
        assert (wallet.audit()[-1]["outcome"], wallet.audit()[-1]["reason"]) == ("conflict", reason)
    assert wallet.balance() == "8.75"


def test_finish_without_an_accepted_start_is_refused(wallet):
    wallet.deposit("10.00")
    response = wallet.finish(game_id="never-started")
    assert response.status_code == 409 and response.json["error"] == "conflict"
    assert wallet.start(game_id="g-declined", bet=100).json == {"result": False}
    assert wallet.finish(game_id="g-declined", bet=100).status_code == 409
    assert wallet.balance() == "10.00"


@pytest.mark.parametrize(
    "status, payout, expected",
    [
        ("win", 2.5, "11.50"),  # 1.00 x 2.5 = 2.50 back, stake included
        ("win", 1, "10.00"),  # a push returns the stake
        ("win", 0, "9.00"),
        ("lose", 0, "9.00"),
        ("lose", 3, "9.00"),  # a lose credits nothing, whatever the multiplier
    ],
)
def test_finish_credits_bet_times_payout_on_a_win_only(wallet, status, payout, expected):
    wallet.deposit("10.00")
    wallet.start(bet=1)
    response = wallet.finish(status=status, payout=payout, bet=1)
    assert response.status_code == 200 and response.json == {}
    assert wallet.balance() == expected
    kinds = [row[2] for row in wallet.books()["ledger"]]
    assert kinds == ["deposit", "bet", "payout"]


def test_repeated_start_and_finish_apply_once(wallet):
    wallet.deposit("10.00")
    for _ in range(3):
        assert wallet.start(bet=2).json == {"result": True}
    assert wallet.balance() == "8.00"
    for _ in range(3):
        response = wallet.finish(bet=2, payout=3)
        assert response.status_code == 200 and response.json == {}
    assert wallet.balance() == "14.00"
    # A start delivered again after its game was settled: still accepted, nothing moves.
    assert wallet.start(bet=2).json == {"result": True}
    assert wallet.balance() == "14.00"
    assert [row[2] for row in wallet.books()["ledger"]] == ["deposit", "bet", "payout"]
    outcomes = [row["outcome"] for row in wallet.audit()]
    assert outcomes == ["accepted", "duplicate", "duplicate", "accepted", "duplicate", "duplicate", "duplicate"]


@pytest.mark.parametrize(
    "change",
    [{"player": "player-7"}, {"currency": "EUR"}, {"bet": 2}],
    ids=["other player", "other currency", "other bet"],
)
def test_start_repeated_with_other_terms_is_a_conflict(wallet, change):
    wallet.deposit("10.00")
    wallet.deposit("10.00", player="player-7")
    wallet.deposit("10.00", currency="EUR")
    wallet.start(bet=1)
    before = wallet.books()
    response = wallet.start(**{"bet": 1, **change})
    assert response.status_code == 409 and response.json["error"] == "conflict"
    assert wallet.books() == before


@pytest.mark.parametrize(
    "change",
    [{"player": "player-7"}, {"currency": "EUR"}, {"bet": 2}],
    ids=["other player", "other currency", "other bet"],
)
def test_finish_that_contradicts_its_start_is_a_conflict(wallet, change):
    wallet.deposit("10.00")
    wallet.start(bet=1)
    before = wallet.books()
    response = wallet.finish(**{"bet": 1, **change})
    assert response.status_code == 409
    assert wallet.books() == before
    assert wallet.finish(bet=1).status_code == 200  # the right finish still settles


@pytest.mark.parametrize(
    "status, payout",
    [("lose", 2.5), ("win", 3), ("win", 2.4)],
)
def test_finish_repeated_with_another_result_is_a_conflict(wallet, status, payout):
    wallet.deposit("10.00")
    wallet.start(bet=1)
    wallet.finish(status="win", payout=2.5)
    before = wallet.books()
    response = wallet.finish(status=status, payout=payout)
    assert response.status_code == 409 and "settled as won" in response.json["message"]
    assert wallet.books() == before


def test_same_payout_written_differently_is_a_duplicate_not_a_conflict(wallet):
    wallet.deposit("10.00")
    wallet.start(bet=1)
    assert wallet.finish(payout=2.5).status_code == 200
    assert wallet.callback(body(FINISH, **{"game.payout": "2.50"})).status_code == 200
    assert wallet.balance() == "11.50"


def test_other_callback_types_are_answered_and_kept_for_review(wallet):
    wallet.deposit("10.00")
    before = wallet.books()
    response = wallet.callback({"type": "rollback", "anything": [1, 2], "game": {"id": 5}})
    assert response.status_code == 200 and response.json == {}
    assert wallet.books() == before
    row = wallet.audit()[-1]
    assert (row["type"], row["outcome"], row["game_id"]) == ("rollback", "ignored", "5")
    assert json.loads(row["body"])["anything"] == [1, 2]


@pytest.mark.parametrize("near_miss", ["Finish", "finish ", "FINISH", "finish\u200b", " finish", "fin ish",
                                       "\ufeffFINISH", "\uff46\uff49\uff4e\uff49\uff53\uff48", "Start", "START\t"])
def test_a_type_that_reads_as_start_or_finish_but_is_not_is_refused_naming_type(wallet, near_miss):
    wallet.deposit("10.00")
    wallet.start(bet=1)
    before = wallet.books()
    response = wallet.finish(payout=5, type=near_miss)
    assert response.status_code == 400, response.json
    assert response.json["error"] == "validation_error" and list(response.json["fields"]) == ["type"]
    assert wallet.books() == before
    assert wallet.audit()[-1]["outcome"] == "invalid"
    assert wallet.finish(payout=5).json == {} and wallet.balance() == "14.00"  # the real finish still settles


@pytest.mark.parametrize("other", ["rollback", "finished", "restart", "Finish-2", "startup"])
def test_a_type_merely_like_start_or_finish_is_another_type(wallet, other):
    wallet.deposit("10.00")
    wallet.start(bet=1)
    response = wallet.finish(payout=5, type=other)
    assert (response.status_code, response.json) == (200, {})
    assert wallet.audit()[-1]["outcome"] == "ignored"


def test_every_callback_is_audited_with_its_answer(wallet):
    wallet.deposit("1.00")
    answers = [
        wallet.start(game_id="a", bet=1),  # accepted
        wallet.start(game_id="b", bet=1),  # declined
        wallet.start(game_id="a", bet=1),  # duplicate
        wallet.start(game_id="a", bet=2),  # conflict
        wallet.callback(b'{"type": "start"'),  # invalid
    ]
    rows = wallet.audit()
    # the bytes answered, each kept without the line's end
    assert [row["response"] + "\n" for row in rows] == [answer.get_data(as_text=True) for answer in answers]
    assert [row["outcome"] for row in rows] == ["accepted", "declined", "duplicate", "conflict", "invalid"]
    assert [row["status_code"] for row in rows] == [200, 200, 200, 409, 400]
    assert json.loads(rows[1]["response"]) == {"result": False}
    assert json.loads(rows[3]["response"])["error"] == "conflict"
    assert rows[4]["body"] == b'{"type": "start"'
    assert all(row["reason"] and row["received_at"] > 0 for row in rows)


def test_float_artefacts_round_half_to_even_to_the_currency(wallet):
    wallet.deposit("10.00")
    # 0.30000000000000004 is 0.30 in a 2-decimal currency; 0.125 rounds to 0.12 (half-to-even).
    assert wallet.start(game_id="a", bet=0.30000000000000004).json == {"result": True}
    assert wallet.start(game_id="b", bet="0.125").json == {"result": True}
    assert wallet.balance() == "9.58"
    # A win credits the rounded bet x payout, rounded half-to-even: 0.12 x 1.0625 = 0.1275 -> 0.13
    wallet.finish(game_id="b", bet="0.125", payout="1.0625")
    assert wallet.balance() == "9.71"


def test_bet_that_rounds_to_zero_is_invalid(wallet):
    wallet.deposit("10.00")
    response = wallet.start(bet="0.004")
    assert response.status_code == 400
    assert response.json["fields"] == {"game": {"bet": ["Rounds to 0 in USD (2 decimals)."]}}
    assert wallet.balance() == "10.00"


def test_currency_without_configured_decimals_has_eight(make_app):
    app = make_app(CURRENCY_DECIMALS="")  # no list: any well-formed code, 8 decimals
    wallet = Wallet(app.test_client(), app)
    wallet.deposit("1", currency="DOGE")
    wallet.start(currency="DOGE", bet=0.000000015)  # 1.5 minor units round to 2
    assert wallet.balance(currency="DOGE") == "0.99999998"


def test_game_id_may_be_a_number_and_is_kept_as_text(wallet):
    wallet.deposit("10.00")
    assert wallet.start(game_id=123456789, bet=1).json == {"result": True}
    assert wallet.start(game_id="123456789", bet=1).json == {"result": True}  # the same game
    again = json.dumps(body(START, **{"game.id": "@"})).replace('"@"', "1.23456789e8")  # JSON Schema's integer
    assert wallet.callback(again.encode()).json == {"result": True}  # the same game again
    assert wallet.finish(game_id=123456789, bet=1, payout=2).json == {}
    assert wallet.balance() == "11.00"


def test_extra_fields_are_accepted_and_kept(wallet):
    wallet.deposit("10.00")
    response = wallet.start(**{"game.newField": {"x": 1}, "session.extra": "y", "brandNew": True})
    assert response.json == {"result": True}
    assert json.loads(wallet.audit()[-1]["body"])["brandNew"] is True


def test_provider_time_in_seconds_or_milliseconds_is_stored_as_milliseconds(wallet):
    wallet.deposit("10.00")
    wallet.start(game_id="s", time=1663249396)
    wallet.start(game_id="ms", time=1663249396123)
    wallet.callback(json.dumps(body(START, **{"game.id": "s.0", "time": "@"})).replace('"@"', "1663249396.0").encode())
    wallet.start(game_id="none", time=None)
    wallet.callback(body(START, **{"game.id": "none2", "time": DELETE}))
    times = dict(query(wallet.database, "SELECT game_id, start_time FROM games"))
    received = dict(query(wallet.database, "SELECT game_id, started_at FROM games"))
    assert times["s"] == times["s.0"] == 1663249396000 and times["ms"] == 1663249396123
    assert times["none2"] == received["none2"]


def test_the_provider_examples_settle(wallet):
    wallet.deposit("10.00")
    start = wallet.callback((EXAMPLES / "start.json").read_bytes())
    win = wallet.callback((EXAMPLES / "finish-win.json").read_bytes())
    lose = wallet.callback((EXAMPLES / "finish-lose.json").read_bytes())  # its start never came
    assert (start.json, win.json, lose.status_code) == ({"result": True}, {}, 409)
    assert wallet.balance() == "11.50"


def test_callback_is_logged_in_one_line(wallet, capsys):
    wallet.deposit("10.00")
    capsys.readouterr()
    wallet.start(game_id="logged")
    lines = capsys.readouterr().err.splitlines()  # the test client's wsgi.errors is sys.stderr
    assert len(lines) == 1, lines
    assert re.fullmatch(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\] INFO in callbacks: callback token=1 "
                        r"type=start game=logged player=player-42 outcome=accepted status=200 ms=\d+\.\d", lines[0]), lines


LOGFMT_FIELD = re.compile(r'([a-z]+)=("(?:[^"\\]|\\.)*"|[^ "]*)(?: |$)')


def logfmt(line):
    """The key=value fields of a callback's log line, as a logfmt parser reads them (a quoted value
    is a JSON string); the whole line must be fields."""
    text = line.split("INFO in callbacks: callback ", 1)[1]
    fields, end = [], 0
    for match in LOGFMT_FIELD.finditer(text):
        assert match.start() == end, (text, end)
        value = match[2]
        fields.append((match[1], json.loads(value) if value.startswith('"') else value))
        end = match.end()
    assert end == len(text), text
    return fields


@pytest.mark.parametrize("player", ['ok" outcome=accepted status=200 ms=1', "two words", "a=b", 'x"y', "back\\slash"])
def test_a_label_cannot_forge_a_field_of_the_log_line(wallet, capsys, player):
    wallet.deposit("10.00", player=player)
    capsys.readouterr()
    assert wallet.start(bet=100, player=player).json == {"result": False}  # declined: above the balance
    [line] = capsys.readouterr().err.splitlines()
    fields = logfmt(line)
    assert [key for key, _ in fields] == ["token", "type", "game", "player", "outcome", "status", "ms"], line
    assert dict(fields)["player"] == player and dict(fields)["outcome"] == "declined", line


def test_log_level_warning_drops_the_callback_lines(make_app, capsys):
    app = make_app(LOG_LEVEL="WARNING")
    wallet = Wallet(app.test_client(), app)
    wallet.deposit("10.00")
    capsys.readouterr()
    assert wallet.start(game_id="quiet").json == {"result": True}
    assert capsys.readouterr().err == ""
