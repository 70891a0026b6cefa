"""Identifiers mean one thing: no control or other non-printing characters, currency codes,
the operator's list of currencies, and no NUL in any stored text."""

import json
from urllib.parse import quote

import pytest

import db

from harness.samples import FINISH, START, body

# Each is refused in every identifier: player, currency, game id, session id, reference.
HIDDEN = {
    "NUL": "p\x00",
    "bell": "p\x07",
    "newline": "p\n",
    "tab": "p\tq",
    "DEL": "p\x7f",
    "C1 control": "p\x85",
    "zero-width space": "p\u200b",
    "right-to-left override": "p\u202e",
    "BOM": "\ufeffp",
    "no-break space": "p\u00a0q",
    "line separator": "p\u2028",
    "only spaces": "   ",
}
PRINTABLE = ["player 42", "zoë", "игрок-7", "🎰", "a" * 255, "p.q_r:s@t"]


def _deposit(wallet, player="player-42", currency="USD", reference="r-1", amount="1.00"):
    return wallet.client.post(f"/api/players/{quote(player, safe='')}/deposits", headers=wallet.admin,
                              json={"currency": currency, "amount": amount, "reference": reference})


@pytest.mark.parametrize("value", HIDDEN.values(), ids=HIDDEN.keys())
@pytest.mark.parametrize("field", ["reference", "currency"])
def test_a_deposit_body_identifier_that_does_not_print_is_refused(wallet, field, value):
    response = _deposit(wallet, **{field: value})
    assert response.status_code == 400, response.json
    assert response.json["error"] == "validation_error"
    assert list(response.json["fields"]) == [field]
    assert wallet.books()["wallets"] == {}


@pytest.mark.parametrize("value", HIDDEN.values(), ids=HIDDEN.keys())
def test_a_path_identifier_that_does_not_print_is_refused_on_every_route(wallet, value):
    wallet.deposit("10.00")
    assert wallet.start(game_id="open").json == {"result": True}
    before = wallet.books()
    routes = [
        ("POST", "/api/players/{}/deposits", "player_id"),
        ("POST", "/api/players/{}/withdrawals", "player_id"),
        ("GET", "/api/players/{}/balances", "player_id"),
        ("GET", "/api/players/{}/balances/USD", "player_id"),
        ("GET", "/api/players/player-42/balances/{}", "currency"),
        ("GET", "/api/players/{}/ledger", "player_id"),
        ("GET", "/api/games/{}", "game_id"),
        ("POST", "/api/games/{}/refund", "game_id"),
    ]
    for method, path, field in routes:
        response = wallet.client.open(path.format(quote(value, safe="")), method=method, headers=wallet.admin,
                                      json={"currency": "USD", "amount": "1", "reference": "r"})
        assert response.status_code == 400, (path, response.json)
        assert response.json["message"] == "The path is invalid.", path
        assert list(response.json["fields"]) == [field], path
    assert wallet.books() == before


@pytest.mark.parametrize("value", HIDDEN.values(), ids=HIDDEN.keys())
@pytest.mark.parametrize("path", ["session.playerId", "session.id", "session.currency", "game.id"])
@pytest.mark.parametrize("template", [START, FINISH], ids=["start", "finish"])
def test_a_callback_identifier_that_does_not_print_is_refused(wallet, template, path, value):
    wallet.deposit("10.00")
    assert wallet.start(game_id="g-1").json == {"result": True}
    before = wallet.books()
    response = wallet.callback(body(template, **{path: value}))
    assert response.status_code == 400, response.json
    parent, leaf = path.split(".")
    assert list(response.json["fields"]) == [parent] and list(response.json["fields"][parent]) == [leaf]
    assert wallet.books() == before
    assert wallet.audit()[-1]["outcome"] == "invalid"


@pytest.mark.parametrize("path", ["type", "session.gameId", "game.round"])
def test_nul_is_refused_in_every_stored_text_field(wallet, path):
    """PostgreSQL cannot store U+0000 in text; the game's name and round are stored too."""
    wallet.deposit("10.00")
    before = wallet.books()
    response = wallet.callback(body(START, **{path: "x\x00y"}))
    assert response.status_code == 400, response.json
    assert "NUL" in json.dumps(response.json["fields"])
    assert wallet.books() == before


def test_text_that_is_not_an_identifier_may_hold_other_characters(wallet):
    """A game's name or round is kept as sent unless it is blank or holds a NUL."""
    wallet.deposit("10.00")
    response = wallet.start(**{"session.gameId": "Mines\t🎰", "game.round": "1\u200b"})
    assert response.json == {"result": True}
    game = wallet.client.get("/api/games/g-1", headers=wallet.admin).json
    assert (game["game_name"], game["round"]) == ("Mines\t🎰", "1\u200b")


@pytest.mark.parametrize("value", PRINTABLE)
def test_printing_identifiers_are_accepted_everywhere(wallet, value):
    assert _deposit(wallet, player=value, reference=value).status_code == 201
    assert wallet.deposit("10.00", player=value).status_code == 201
    assert wallet.start(game_id=value, player=value, **{"session.id": value}).json == {"result": True}
    assert wallet.finish(game_id=value, player=value, **{"session.id": value}).json == {}
    assert wallet.balance(player=quote(value, safe="")) == "12.50"


@pytest.mark.parametrize("code, accepted", [
    ("USD", True), ("USDT_TRC20", True), ("usdc-polygon", True), ("1INCH", True), ("X" * 20, True),
    ("X" * 21, False), ("-USD", False), ("_USD", False), ("US D", False), ("USD!", False),
    ("U$D", False), ("ÜSD", False), ("", False),
])
def test_currency_codes_are_letters_digits_underscores_and_dashes(make_app, code, accepted):
    app = make_app(CURRENCY_DECIMALS="")  # every well-formed code is open
    client = app.test_client()
    response = client.post("/api/players/p/deposits", headers={"Authorization": "Bearer admin-7d1e-secret"},
                           json={"currency": code, "amount": "1", "reference": "r"})
    if accepted:
        assert response.status_code == 201, response.json
        assert response.json["balance"] == "1.00000000"  # not configured: 8 decimals
    else:
        assert response.status_code == 400 and list(response.json["fields"]) == ["currency"], response.json


def test_a_currency_code_in_currency_decimals_must_be_well_formed(make_app):
    with pytest.raises(db.StartupError, match="not CURRENCY=DECIMALS"):
        make_app(CURRENCY_DECIMALS="USD=2,US D=2")


# --- CURRENCY_DECIMALS is the operator's list of currencies -----------------------------------


def test_a_deposit_in_a_currency_outside_the_list_is_refused_with_how_to_add_it(wallet):
    response = wallet.deposit("10.00", currency="UDS")  # a typo of USD
    assert response.status_code == 400, response.json
    assert response.json["error"] == "unknown_currency"
    assert "CURRENCY_DECIMALS" in response.json["message"] and "UDS=<decimals>" in response.json["message"]
    assert list(response.json["fields"]) == ["currency"]
    assert wallet.books()["wallets"] == {}


def test_the_refusal_opens_nothing_so_the_currency_can_be_added_later(make_app, wallet):
    assert wallet.deposit("10.00", currency="UDS").status_code == 400
    later = make_app(CURRENCY_DECIMALS="USD=2,UDS=4")  # would refuse to start had UDS been fixed at 8
    response = later.test_client().post(
        "/api/players/player-42/deposits", headers=wallet.admin,
        json={"currency": "UDS", "amount": "1", "reference": "r-uds"})
    assert response.status_code == 201 and response.json["balance"] == "1.0000"


def test_a_currency_the_books_already_hold_stays_usable(make_app, wallet):
    unlisted = make_app(CURRENCY_DECIMALS="")  # e.g. before the operator set the list
    assert unlisted.test_client().post(
        "/api/players/player-42/deposits", headers=wallet.admin,
        json={"currency": "DOGE", "amount": "5", "reference": "r-doge"}).status_code == 201
    assert wallet.deposit("1", currency="DOGE").status_code == 201  # the listed app: still held
    assert wallet.balance(currency="DOGE") == "6.00000000"
    assert wallet.withdraw("6", currency="DOGE").status_code == 201


def test_a_start_in_a_currency_outside_the_list_is_declined(wallet):
    """The provider cannot be told 400 for a currency; no wallet holds it, so "No balance"."""
    wallet.deposit("10.00")
    response = wallet.start(currency="UDS")
    assert (response.status_code, response.json) == (200, {"result": False})
    assert wallet.audit()[-1]["outcome"] == "declined"
    assert wallet.balance() == "10.00"


# --- the CLI: the same rules, exit 1 naming the field -----------------------------------------


@pytest.mark.parametrize("args, field", [
    (["deposit", "p\x07", "USD", "1"], "player_id"),
    (["deposit", "player-42", "US\u200bD", "1"], "currency"),
    (["deposit", "player-42", "USD", "1", "--reference", "r\n1"], "reference"),
    (["withdraw", "p\u202e", "USD", "1"], "player_id"),
    (["balance", "p\x00"], "player_id"),
    (["balance", "player-42", "U SD"], "currency"),
    (["refund", "g\x1b[31m"], "game_id"),
    (["ledger", "p\x00"], "player_id"),
    (["ledger", "player-42", "--currency", "US D"], "currency"),
    (["games", "--player", "p\u2028"], "player_id"),
    (["callbacks", "--game-id", "g\x00"], "game_id"),
])
def test_the_cli_refuses_the_same_identifiers(runner, wallet, args, field):
    wallet.deposit("1.00")
    before = wallet.books()
    result = runner.invoke(args=["wallet", *args])
    assert result.exit_code == 1, result.output
    assert "invalid input" in result.output and f'"{field}"' in result.output, result.output
    assert wallet.books() == before


def test_the_cli_refuses_a_currency_outside_the_list(runner, wallet):
    result = runner.invoke(args=["wallet", "deposit", "player-42", "UDS", "1"])
    assert result.exit_code == 1 and "unknown_currency" in result.output, result.output
    assert wallet.books()["wallets"] == {}


# --- the audit keeps what a refused callback said, safely -------------------------------------


def test_labels_of_a_refused_callback_are_stored_escaped(wallet, capsys):
    payload = body(START, **{"type": "start\x00", "game.id": "g\x00\n1", "session.playerId": "p\u202e"})
    capsys.readouterr()
    response = wallet.callback(payload)
    assert response.status_code == 400
    row = wallet.audit()[-1]
    assert (row["type"], row["game_id"], row["player_id"]) == ('"start\\u0000"', '"g\\u0000\\n1"', '"p\\u202e"')
    assert [json.loads(row[key]) for key in ("type", "game_id", "player_id")] == ["start\x00", "g\x00\n1", "p\u202e"]
    [line] = capsys.readouterr().err.splitlines()  # the callback's log line (wsgi.errors)
    assert "callback " in line and "\x00" not in line and "\u202e" not in line


def test_a_numeric_game_id_is_audited_under_the_id_its_game_is_stored_under(wallet, runner):
    wallet.deposit("10.00")
    start = json.dumps(body(START, **{"game.id": "@"})).replace('"@"', "7.0")
    finish = json.dumps(body(FINISH, **{"game.id": "@"})).replace('"@"', "7E0")
    refused = json.dumps(body(FINISH, **{"game.id": "@", "game.bet": -1})).replace('"@"', "7.00")
    assert wallet.callback(start.encode()).json == {"result": True}
    assert wallet.callback(finish.encode()).json == {}
    assert wallet.callback(refused.encode()).status_code == 400  # the id was valid: audited under it too
    assert wallet.callback(json.dumps(body(START, **{"game.id": "@"})).replace('"@"', "7.5").encode()).status_code == 400
    assert [row["game_id"] for row in wallet.audit()] == ["7", "7", "7", '"7.5"']  # 7.5: no id, kept as sent
    detail = wallet.client.get("/api/games/7", headers=wallet.admin).json
    assert [(row["type"], row["outcome"]) for row in detail["callbacks"]] == [
        ("start", "accepted"), ("finish", "accepted"), ("finish", "invalid")]
    listed = wallet.client.get("/api/callbacks?game_id=7", headers=wallet.admin).json["callbacks"]
    assert len(listed) == 3
    cli = runner.invoke(args=["wallet", "callbacks", "--game-id", "7", "--json"])
    assert cli.exit_code == 0 and len(json.loads(cli.output)["callbacks"]) == 3
