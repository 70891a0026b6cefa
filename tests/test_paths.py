"""Identifiers in paths mean one thing: each segment decoded on its own, "/" inside an id as %2F,
bytes that are not UTF-8 refused instead of folding into U+FFFD."""

import pytest

from harness.samples import ADMIN_TOKEN, CALLBACK_TOKEN, START, body
from tests.support import books

MOVEMENT = {"currency": "USD", "amount": "1.00", "reference": "path-1"}
# (method, path with {bad} in one segment, the field it names, JSON body)
ROUTES = [
    ("POST", "/api/players/{bad}/deposits", "player_id", MOVEMENT),
    ("POST", "/api/players/{bad}/withdrawals", "player_id", MOVEMENT),
    ("GET", "/api/players/{bad}/balances", "player_id", None),
    ("GET", "/api/players/{bad}/balances/USD", "player_id", None),
    ("GET", "/api/players/player-42/balances/{bad}", "currency", None),
    ("GET", "/api/players/{bad}/ledger", "player_id", None),
    ("GET", "/api/games/{bad}", "game_id", None),
    ("POST", "/api/games/{bad}/refund", "game_id", None),
    ("POST", "/callback/{bad}", "token", body(START)),
]


@pytest.mark.parametrize("bad", ["%FF", "%FE", "player%FF", "%C3", "%ED%A0%80"])
@pytest.mark.parametrize("method, path, field, payload", ROUTES, ids=[r[1] for r in ROUTES])
def test_a_segment_that_is_not_utf8_is_refused_naming_the_field(wallet, method, path, field, payload, bad):
    wallet.deposit("10.00")
    assert wallet.start(game_id="g-1").json == {"result": True}
    before, audited = wallet.books(), len(wallet.audit())
    response = wallet.client.open(path.format(bad=bad), method=method, headers=wallet.admin, json=payload)
    assert response.status_code == 400, response.json
    assert response.json["error"] == "validation_error"
    assert list(response.json["fields"]) == [field]
    assert wallet.books() == before
    assert len(wallet.audit()) == audited  # not a callback: no token was checked


def test_invalid_utf8_never_reaches_the_wallet_its_replacement_character_names(wallet):
    """%FF and %FE used to decode to U+FFFD, the id of a real (if odd) player."""
    assert wallet.deposit("5.00", player="\ufffd").status_code == 201
    for raw in ("%FF", "%FE", "%FF%FE"):
        assert wallet.client.get(f"/api/players/{raw}/balances", headers=wallet.admin).status_code == 400
        response = wallet.client.post(f"/api/players/{raw}/deposits", headers=wallet.admin, json=MOVEMENT)
        assert response.status_code == 400
    assert wallet.books()["wallets"] == {("\ufffd", "USD"): 500}
    answer = wallet.client.get("/api/players/%EF%BF%BD/balances", headers=wallet.admin).json
    assert answer["player_id"] == "\ufffd" and answer["balances"][0]["balance"] == "5.00"


@pytest.mark.parametrize("game_id", ["round/7", "a/b/c", "x/refund", "/leading", "100%/sure"])
def test_a_game_id_holding_a_slash_can_be_read_and_refunded(wallet, game_id):
    encoded = game_id.replace("%", "%25").replace("/", "%2F")
    wallet.deposit("10.00")
    assert wallet.start(game_id=game_id, bet=2).json == {"result": True}
    shown = wallet.client.get(f"/api/games/{encoded}", headers=wallet.admin)
    assert shown.status_code == 200 and shown.json["game_id"] == game_id
    refunded = wallet.client.post(f"/api/games/{encoded}/refund", headers=wallet.admin)
    assert refunded.status_code == 200, refunded.json
    assert refunded.json["game"]["game_id"] == game_id and refunded.json["game"]["status"] == "refunded"
    assert wallet.balance() == "10.00"


def test_a_slash_left_unencoded_separates_segments(wallet):
    """`/api/games/x/refund` is the refund of game "x", and `/api/games/round/7/refund` no route:
    neither touches game "x/refund" or "round/7"."""
    wallet.deposit("10.00")
    for game_id in ("round/7", "x/refund", "x"):
        assert wallet.start(game_id=game_id).json == {"result": True}
    before = wallet.books()
    assert wallet.client.post("/api/games/round/7/refund", headers=wallet.admin).status_code == 404
    assert wallet.client.get("/api/games/x/refund", headers=wallet.admin).status_code == 405
    assert wallet.books() == before
    assert wallet.client.post("/api/games/x/refund", headers=wallet.admin).json["game"]["game_id"] == "x"
    assert {g: s for g, s, _, _ in wallet.books()["games"]} == {"round/7": "open", "x/refund": "open", "x": "refunded"}


def test_a_player_id_holding_a_slash_is_one_player(wallet):
    assert wallet.client.post("/api/players/a%2Fb/deposits", headers=wallet.admin, json=MOVEMENT).status_code == 201
    assert wallet.books()["wallets"] == {("a/b", "USD"): 100}
    assert wallet.client.get("/api/players/a%2Fb/balances/USD", headers=wallet.admin).json["balance"] == "1.00"
    assert wallet.client.get("/api/players/a/b/balances/USD", headers=wallet.admin).status_code == 404


def test_through_a_real_gunicorn(gunicorn):
    """gunicorn's PATH_INFO has already decoded %2F and %FF; the router reads the path as sent."""
    server = gunicorn(workers=1)
    server.deposit("player-42", "10.00")
    assert server.callback(body(START, **{"game.id": "round/7"})) == (200, {"result": True})
    before = books(server.database)
    token = CALLBACK_TOKEN.encode()
    for request, status in [
        (b"GET /api/players/%FF/balances", 400),
        (b"POST /api/players/player%FE/deposits", 400),
        (b"POST /callback/" + token + b"%FF", 400),
        (b"GET /api/games/round%2F7", 200),
        (b"GET /api/games/round/7", 404),
    ]:
        answer = server.raw(request + b" HTTP/1.1\r\nHost: wallet\r\nContent-Length: 0\r\n"
                            + f"Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n".encode())
        assert answer.status == status, (request, answer)
        assert answer.json["game_id" if status == 200 else "error"]
    assert books(server.database) == before
    refund = server.raw(b"POST /api/games/round%2F7/refund HTTP/1.1\r\nHost: wallet\r\nContent-Length: 0\r\n"
                        + f"Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n".encode())
    assert refund.status == 200 and refund.json["game"]["game_id"] == "round/7", refund
    assert server.balance("player-42") == 10
