"""GET /openapi.json documents the API, and real answers have the documented shape."""

import re

import pytest

import schemas
from tests.support import play_a_little, refund


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
    callback = spec["components"]["schemas"]["StartCallback"]
    assert {"type", "session", "game", "data", "roundData", "time"} <= set(callback["properties"])
    assert spec["components"]["schemas"]["Error"]["required"] == ["error", "message"]
    amount = spec["components"]["schemas"]["Movement"]["properties"]["amount"]
    assert [branch["type"] for branch in amount["anyOf"]] == ["number", "string"]


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


def _walk(value):
    """Every (key, value) of every object in a JSON document."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def test_the_document_uses_only_standard_keywords(spec):
    assert not [key for key, _ in _walk(spec) if key.startswith("x-")]


def test_the_document_states_each_amount_rule(spec):
    components = spec["components"]["schemas"]
    positive = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 10**12}
    not_negative = {"type": "number", "minimum": 0, "exclusiveMaximum": 10**12}
    for schema, name, number in [
        ("Movement", "amount", positive), ("Game", "bet", positive), ("Data", "bet", positive),
        ("Game", "payout", not_negative), ("Data", "allBetAmount", not_negative),
        ("Game", "profit", {"type": "number", "exclusiveMinimum": -(10**12), "exclusiveMaximum": 10**12}),
        ("Data", "balanceUpdateDelay", {"type": "number", "minimum": 0, "maximum": 600000}),
    ]:
        [documented_number, documented_string] = components[schema]["properties"][name]["anyOf"]
        assert documented_number == number, (schema, name)
        assert documented_string["type"] == "string" and documented_string["pattern"], (schema, name)
    time = components["StartCallback"]["properties"]["time"]
    assert (time["minimum"], time["maximum"], "integer" in time["type"]) == (0, 10**14, True)


AMOUNT_TEXTS = ["0", "0.00", "-0", "-1", "1", "1.5", "0.001", "01", "1.", ".5", "1e3", "1E-2", " 1", "+1",
                "999999999999.999", "1000000000000", "100000000000.5", "600000", "600000.0", "600000.1"]


@pytest.mark.parametrize("schema_name, field", [
    ("Movement", "amount"), ("Game", "payout"), ("Game", "profit"), ("Data", "balanceUpdateDelay"),
])
def test_an_amount_string_is_accepted_exactly_when_the_documented_pattern_matches(spec, schema_name, field):
    pattern = re.compile(spec["components"]["schemas"][schema_name]["properties"][field]["anyOf"][1]["pattern"])
    schema = {"Movement": schemas.MovementSchema, "Game": schemas.GameSchema, "Data": schemas.DataSchema}[schema_name]
    for text in AMOUNT_TEXTS:
        errors = schema(partial=True).validate({field: text})
        assert (field not in errors) == bool(pattern.fullmatch(text)), (field, text, errors)


@pytest.mark.parametrize("schema_name, field", [
    ("Movement", "reference"), ("Movement", "currency"), ("Session", "playerId"), ("Session", "gameId"),
])
def test_text_is_accepted_exactly_when_the_documented_pattern_matches(spec, schema_name, field):
    documented = spec["components"]["schemas"][schema_name]["properties"][field]
    pattern = re.compile(documented["pattern"])
    schema = {"Movement": schemas.MovementSchema, "Session": schemas.SessionSchema}[schema_name]
    for text in ["p", "player 42", "USDT_TRC20", "zoë", " ", "", "p\x00", "p\n", "p\u200b", "p\u00a0",
                 "-USD", "a" * 255, "a" * 256, "Mines\t", "\t"]:
        errors = schema(partial=True).validate({field: text})
        documented_valid = bool(pattern.fullmatch(text)) and len(text) <= documented.get("maxLength", 255)
        assert (field not in errors) == documented_valid, (field, repr(text), errors)


def test_a_finish_needs_payout_and_a_result_and_another_type_only_a_type(spec):
    components = spec["components"]["schemas"]
    variants = [item["$ref"].rsplit("/", 1)[1] for item in components["Callback"]["oneOf"]]
    assert variants == ["StartCallback", "FinishCallback", "OtherCallback"]
    assert components["FinishCallback"]["properties"]["type"] == {"const": "finish"}
    assert components["FinishGame"]["properties"]["status"]["enum"] == ["win", "lose"]
    assert "payout" in components["FinishGame"]["required"]
    assert components["OtherCallback"]["required"] == ["type"]
    excluded = components["OtherCallback"]["properties"]["type"]["not"]["anyOf"]
    assert excluded[0] == {"enum": ["start", "finish"]}
    near_miss = re.compile(excluded[1]["pattern"])  # what the service refuses as a misspelt start or finish
    assert all(near_miss.search(text) for text in ("Finish", "finish ", "FINISH", "finish\u200b", "\uff33tart"))
    assert not any(near_miss.search(text) for text in ("rollback", "finished", "restart", "fin-ish"))


def test_an_other_type_with_only_a_type_is_answered_as_documented(wallet):
    response = wallet.callback({"type": "rollback"})
    assert (response.status_code, response.json) == (200, {})


@pytest.mark.parametrize("path, method, status", [
    ("/api/players/{player_id}/deposits", "post", "415"), ("/api/players/{player_id}/deposits", "post", "413"),
    ("/api/players/{player_id}/withdrawals", "post", "415"),
    ("/api/players/{player_id}/withdrawals", "post", "413"),
    ("/callback/{token}", "post", "404"), ("/callback/{token}", "post", "413"), ("/healthz", "get", "503"),
])
def test_every_answer_the_service_gives_is_documented(spec, path, method, status):
    assert status in spec["paths"][path][method]["responses"]


def test_health_and_audit_outcomes_are_documented(spec, client):
    health = spec["components"]["schemas"]["Health"]
    assert client.get("/healthz").json["status"] in health["properties"]["status"]["enum"]
    outcome = spec["components"]["schemas"]["CallbackRecord"]["properties"]["outcome"]
    assert "error" in outcome["enum"]
    [parameter] = [p for p in spec["paths"]["/api/callbacks"]["get"]["parameters"] if p["name"] == "outcome"]
    assert "error" in parameter["schema"]["enum"]


def test_links_name_operations_that_exist(spec):
    operations = {operation["operationId"] for item in spec["paths"].values() for operation in item.values()
                  if isinstance(operation, dict) and "operationId" in operation}
    links = [link for key, value in _walk(spec) if key == "links" for link in value.values()]
    assert len(links) >= 8
    assert {link["operationId"] for link in links} <= operations
    deposit = spec["paths"]["/api/players/{player_id}/deposits"]["post"]["responses"]["201"]["links"]
    assert deposit["GetWallet"]["parameters"] == {"player_id": "$request.path.player_id",
                                                  "currency": "$response.body#/currency"}
    games = spec["paths"]["/api/games"]["get"]["responses"]["200"]["links"]
    assert games["RefundGame"]["parameters"] == {"game_id": "$response.body#/games/0/game_id"}


def test_since_is_typed(spec):
    [since] = [p for p in spec["paths"]["/api/games"]["get"]["parameters"] if p["name"] == "since"]
    assert all(branch["type"] == "string" for branch in since["schema"]["anyOf"])
    assert [branch.get("format") for branch in since["schema"]["anyOf"]] == [None, "date-time", "date"]
