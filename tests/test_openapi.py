"""GET /openapi.json documents the API, and real answers have the documented shape."""

import pytest

from test_operations import play_a_little, refund


@pytest.fixture
def spec(client):
    response = client.get("/openapi.json")  # no token needed
    assert response.status_code == 200
    return response.json


def test_the_document_covers_the_callback_and_the_operator_api(spec):
    assert spec["openapi"] == "3.1.0"
    assert {
        "/callback", "/callback/{token}", "/api/players/{player_id}/deposits",
        "/api/players/{player_id}/withdrawals", "/api/players/{player_id}/balances",
        "/api/players/{player_id}/balances/{currency}", "/api/players/{player_id}/ledger",
        "/api/games", "/api/games/{game_id}", "/api/games/{game_id}/refund", "/api/callbacks",
        "/api/reconcile", "/healthz",
    } <= set(spec["paths"])
    callback = spec["components"]["schemas"]["Callback"]
    assert {"type", "session", "game", "data", "roundData", "time"} <= set(callback["properties"])
    assert spec["components"]["schemas"]["Error"]["required"] == ["error", "message"]
    assert spec["components"]["schemas"]["Movement"]["properties"]["amount"]["type"] == ["number", "string"]


def documented(spec, name):
    return set(spec["components"]["schemas"][name]["properties"])


def test_answers_match_the_documented_schemas(wallet, spec):
    play_a_little(wallet)
    admin = wallet.admin
    deposit = wallet.deposit("1.00")
    assert set(deposit.json) == documented(spec, "Wallet")
    assert set(deposit.json["pending"] or [{}][0]) <= documented(spec, "Pending")
    page = wallet.client.get("/api/games", headers=admin).json
    assert set(page) == documented(spec, "GamesPage")
    assert all(set(game) == documented(spec, "GameRecord") for game in page["games"])
    detail = wallet.client.get("/api/games/won", headers=admin).json
    assert set(detail) == documented(spec, "GameDetail")
    assert set(detail["ledger"][0]) == documented(spec, "LedgerEntry")
    assert set(detail["callbacks"][0]) == documented(spec, "CallbackRecord")
    wallet.start(game_id="to-refund", bet=1)
    assert set(refund(wallet, "to-refund").json) == documented(spec, "Refund")
    assert set(wallet.client.get("/api/reconcile", headers=admin).json) == documented(spec, "Reconcile")
    error = wallet.client.get("/api/games/none", headers=admin).json
    assert set(error) <= documented(spec, "Error")
