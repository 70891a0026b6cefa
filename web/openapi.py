"""GET /openapi.json: an OpenAPI 3.1 document generated from the marshmallow schemas (apispec).

The request schemas are the ones the service validates with (schemas.py); the response
schemas below describe the JSON the views return, and tests/test_openapi.py checks real
answers against them.
"""

import copy
import json
from pathlib import Path

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, current_app, jsonify
from marshmallow import Schema, fields

import schemas

bp = Blueprint("openapi", __name__)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"  # the provider's callbacks, as the README shows them

Money = fields.String  # amounts are answered as decimal strings, e.g. "11.50"


class ErrorSchema(Schema):
    error = fields.String(required=True, metadata={"description": "Stable machine-readable code."})
    message = fields.String(required=True)
    field_messages = fields.Dict(data_key="fields", metadata={"description": "Per-field messages, on validation errors."})


class PendingSchema(Schema):
    game_id = fields.String(required=True)
    amount = Money(required=True)
    show_in_ms = fields.Integer(required=True, metadata={"description": "Wait before showing this win."})


class WalletSchema(Schema):
    player_id = fields.String(required=True)
    currency = fields.String(required=True)
    balance = Money(required=True)
    display_balance = Money(required=True, metadata={"description": "Balance less the pending wins."})
    pending = fields.List(fields.Nested(PendingSchema), required=True)


class BalancesSchema(Schema):
    player_id = fields.String(required=True)
    balances = fields.List(fields.Nested(WalletSchema), required=True)


class GameViewSchema(Schema):
    game_id = fields.String(required=True)
    status = fields.String(required=True, metadata={"enum": list(schemas.GAME_STATUSES)})
    player_id = fields.String(required=True)
    currency = fields.String(required=True)
    game_name = fields.String(allow_none=True)
    session_id = fields.String(allow_none=True)
    round = fields.String(allow_none=True)
    bet = Money(required=True)
    payout = fields.String(allow_none=True, metadata={"description": "The multiplier, as sent."})
    profit = fields.String(allow_none=True)
    credit = Money(allow_none=True)
    balance_update_delay = fields.Integer(allow_none=True)
    started_at = fields.String(required=True, metadata={"format": "date-time"})
    start_time = fields.String(allow_none=True, metadata={"format": "date-time"})
    settled_at = fields.String(allow_none=True, metadata={"format": "date-time"})
    finish_time = fields.String(allow_none=True, metadata={"format": "date-time"})
    refunded_at = fields.String(allow_none=True, metadata={"format": "date-time"})


class LedgerEntrySchema(Schema):
    id = fields.Integer(required=True)
    player_id = fields.String(required=True)
    currency = fields.String(required=True)
    kind = fields.String(required=True, metadata={"enum": ["deposit", "withdrawal", "bet", "payout", "refund"]})
    amount = Money(required=True, metadata={"description": "Signed."})
    balance_after = Money(required=True)
    game_id = fields.String(allow_none=True)
    reference = fields.String(allow_none=True)
    note = fields.String(allow_none=True, metadata={
        "description": "Who moved the money from the operator's console, and why; null otherwise."})
    created_at = fields.String(required=True, metadata={"format": "date-time"})


class CallbackRecordSchema(Schema):
    id = fields.Integer(required=True)
    received_at = fields.String(required=True, metadata={"format": "date-time"})
    type = fields.String(allow_none=True)
    game_id = fields.String(allow_none=True)
    player_id = fields.String(allow_none=True)
    outcome = fields.String(required=True, metadata={"enum": list(schemas.CALLBACK_OUTCOMES)})
    reason = fields.String(allow_none=True)
    status_code = fields.Integer(required=True)
    response = fields.String(allow_none=True, metadata={"description": "The body answered."})
    body = fields.String(allow_none=True, metadata={"description": "The raw body received."})
    duration_ms = fields.Float(allow_none=True)


class GameDetailSchema(GameViewSchema):
    ledger = fields.List(fields.Nested(LedgerEntrySchema), required=True)
    callbacks = fields.List(fields.Nested(CallbackRecordSchema), required=True)


class GamesPageSchema(Schema):
    games = fields.List(fields.Nested(GameViewSchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


class LedgerPageSchema(Schema):
    entries = fields.List(fields.Nested(LedgerEntrySchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


class CallbacksPageSchema(Schema):
    callbacks = fields.List(fields.Nested(CallbackRecordSchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


class RefundSchema(Schema):
    game = fields.Nested(GameViewSchema, required=True)
    wallet = fields.Nested(WalletSchema, required=True)


class SettlementSchema(RefundSchema):
    paid = Money(required=True, metadata={"description": "Credited by this settlement (0 on a repeat)."})
    owed = Money(required=True, metadata={"description": "Still owed: settle again once the wallet has room."})


class NewestRowSchema(Schema):
    id = fields.Integer(required=True)
    at = fields.String(required=True, metadata={"format": "date-time"})


class ReconcileSchema(Schema):
    ok = fields.Boolean(required=True)
    newest = fields.Dict(keys=fields.String(), values=fields.Nested(NewestRowSchema, allow_none=True), required=True,
                         metadata={"description": "The newest ledger and callbacks rows: of two copies of the books "
                                                  "(an old primary and its promoted standby), the older lacks the rest."})
    server = fields.String(allow_none=True, required=True,
                           metadata={"description": "PostgreSQL: the server's state (writable or standby, timeline)."})
    wallets = fields.Integer(required=True)
    games = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    totals = fields.Dict(keys=fields.String(), values=fields.Dict(keys=fields.String(), values=Money()), required=True)
    discrepancies = fields.List(fields.String(), required=True)


class StartAnswerSchema(Schema):
    result = fields.Boolean(required=True)


class HealthSchema(Schema):
    status = fields.String(required=True, metadata={"enum": ["ok", "unavailable"]})
    error = fields.String(metadata={"enum": ["database_unavailable"], "description": "On 503 only."})


def _field_rules(self, field, **kwargs):
    """State the rules schemas.py checks that apispec cannot read from a field by itself."""
    if isinstance(field, schemas.Milliseconds):
        return {**field.schema(), "description": "Milliseconds, 0 to 600000 (a fraction rounds half-to-even)."}
    if isinstance(field, schemas.Amount):
        return {**field.schema(), "description": AMOUNT_TEXT}
    if isinstance(field, schemas._OrInteger):
        limit = field.INTEGER_LIMIT - 1
        return {"type": ["string", "integer"], "minimum": -limit, "maximum": limit}
    if isinstance(field, schemas.EpochMillis):
        return {"description": "Epoch seconds (below 10^11) or milliseconds: an integer (1.5 is refused)."}
    if isinstance(field, schemas.Since):
        return {"anyOf": [{"type": "string", "pattern": schemas.EPOCH_DIGITS.pattern},
                          {"type": "string", "format": "date-time"}, {"type": "string", "format": "date"}],
                "description": "Epoch milliseconds, or an ISO 8601 date or date-time (UTC when no offset is given)."}
    if isinstance(field, schemas.Cursor):
        return {"type": "string", "pattern": "^[A-Za-z0-9_=-]*$",
                "description": "The `next_cursor` of the previous page (empty: the first page). "
                "A value the service did not hand out is refused with 400."}
    return {}


AMOUNT_TEXT = (
    "A decimal in currency units: a JSON number, or a string in plain notation (\"1.50\"), below "
    "10^12. It is rounded half-to-even to the currency's decimals; an amount that rounds to 0, or "
    "past 10^18 minor units, is refused with 400 (a rule of the currency, which a schema cannot state)."
)


def _json(schema, description="OK"):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": _json("Error", "Invalid input: malformed JSON, or a validation error whose `fields` names "
                 "what was wrong; the message says which part of the request (path, query string or body)."),
    "401": _json("Error", "Missing or wrong bearer token."),
    "403": _json("Error", "ADMIN_TOKEN is not configured."),
}
BODY_ERRORS = {
    "413": _json("Error", "Body over 64 KiB."),
    "415": _json("Error", "Not application/json."),
}
ADMIN = [{"bearer": []}]


def _parameters(schema, location):
    return [{"in": location, "schema": schema}]


def _path(name, schema):
    return {"in": "path", "name": name, "required": True, "schema": schema}


def _identifier():
    """An identifier in a path, as schemas.Identifier checks it."""
    return {"type": "string", "minLength": 1, "maxLength": 255, "pattern": schemas.IDENTIFIER.pattern}


def _link(operation, description, **parameters):
    return {"operationId": operation, "description": description, "parameters": parameters}


def _callback_variants(components):
    """Split the Callback schema in three, as the service reads a callback: a `start`, a
    `finish` (status win or lose, and a payout) or any other type, which needs only a `type`."""
    callback = components.pop("Callback")
    start = copy.deepcopy(callback)
    start["properties"]["type"] = {"const": "start"}
    finish = copy.deepcopy(start)
    finish["properties"]["type"] = {"const": "finish"}
    finish["properties"]["game"] = {"$ref": "#/components/schemas/FinishGame"}
    game = copy.deepcopy(components["Game"])
    game["properties"]["status"] = {**game["properties"]["status"], "enum": ["win", "lose"]}
    game["required"] = sorted({*game["required"], "payout"})
    components["FinishGame"] = game
    other = {"type": "object", "required": ["type"], "properties": {"type": {
        **callback["properties"]["type"],
        "not": {"anyOf": [{"enum": list(schemas.HANDLED_TYPES)}, {"pattern": schemas.NEAR_HANDLED_TYPE.pattern}]}}},
        "description": "Any other callback type: answered 200 {} and kept for review. A type that reads as "
                       "start or finish without being spelled exactly so (another case or width, spaces or "
                       "non-printing characters) is refused with 400."}
    components.update(StartCallback=start, FinishCallback=finish, OtherCallback=other)
    components["Callback"] = {"oneOf": [{"$ref": f"#/components/schemas/{name}"}
                                        for name in ("StartCallback", "FinishCallback", "OtherCallback")]}


def build_spec():
    """Build the OpenAPI document."""
    plugin = MarshmallowPlugin()
    spec = APISpec("Callback wallet", "1.0.0", "3.1.0", plugins=[plugin],
                   info={"description": "The provider's start/finish callbacks and the operator's API. "
                         "Every answer of the app is JSON. A request line longer than gunicorn's limit "
                         "(4094 bytes by default) is refused with 414 by the server, before the app."})
    plugin.converter.add_attribute_function(_field_rules)
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for name, schema in [
        ("Error", ErrorSchema), ("Callback", schemas.CallbackSchema), ("Movement", schemas.MovementSchema),
        ("Wallet", WalletSchema), ("Balances", BalancesSchema), ("GameRecord", GameViewSchema),
        ("GameDetail", GameDetailSchema), ("GamesPage", GamesPageSchema), ("LedgerPage", LedgerPageSchema),
        ("CallbacksPage", CallbacksPageSchema), ("Refund", RefundSchema), ("Settlement", SettlementSchema),
        ("Reconcile", ReconcileSchema),
        ("StartAnswer", StartAnswerSchema), ("Health", HealthSchema),
    ]:
        spec.components.schema(name, schema=schema)

    game_link = {"GetGame": _link("getGame", "The game this callback was about", game_id="$request.body#/game/id"),
                 "RefundGame": _link("refundGame", "Refund it if its bet is open", game_id="$request.body#/game/id")}
    callback = {
        "summary": "The provider's start / finish callback",
        "description": "`start` answers `{\"result\": true|false}`, `finish` and any other type `{}`. "
        "With CALLBACK_TOKEN set the path is /callback/{token}; while rotating, CALLBACK_TOKEN holds "
        "two tokens (old,new) and both paths work.",
        "requestBody": {"required": True, "content": {"application/json": {"schema": "Callback", "examples": {
            name: {"summary": summary, "value": json.loads((EXAMPLES / f"{name}.json").read_text())}
            for name, summary in [("start", "A 1.00 USD bet"), ("finish-win", "Its win: 2.5 times the bet")]}}}},
        "responses": {
            "200": {"description": "Settled, declined, a duplicate, or an ignored type",
                    "content": {"application/json": {"schema": {"oneOf": [
                        {"$ref": "#/components/schemas/StartAnswer"}, {"type": "object", "maxProperties": 0}]}}},
                    "links": game_link},
            "400": ERRORS["400"],
            "403": _json("Error", "Wrong token or address (or no token while CALLBACK_TOKEN is set)."),
            "409": _json("Error", "A repeat that contradicts what is stored, or a finish with no accepted start."),
            **BODY_ERRORS,
        },
    }
    spec.path("/callback", operations={"post": {**callback, "operationId": "callback"}})
    spec.path("/callback/{token}", parameters=[_path("token", {"type": "string"})], operations={"post": {
        **callback, "operationId": "callbackWithToken", "responses": {
            **callback["responses"], "404": _json("Error", "CALLBACK_TOKEN is not set: the URL is /callback.")}}})
    player = _path("player_id", _identifier())
    movement = {
        "security": ADMIN,
        "requestBody": {"required": True, "content": {"application/json": {"schema": "Movement", "examples": {
            "usd": {"value": {"currency": "USD", "amount": "10.00", "reference": "dep-0001"}}}}}},
        "responses": {
            "201": {**_json("Wallet", "Applied"), "links": {
                "GetWallet": _link("getWallet", "The wallet moved", player_id="$request.path.player_id",
                                   currency="$response.body#/currency"),
                "GetLedger": _link("getLedger", "Its ledger", player_id="$request.path.player_id")}},
            "200": _json("Wallet", "The same reference and body again: the first answer"),
            "400": _json("Error", ERRORS["400"]["description"] + " A deposit in a currency outside a set "
                         "CURRENCY_DECIMALS that the books do not hold: `unknown_currency`."),
            "409": _json("Error", "`reference_conflict`, `insufficient_funds` for a withdrawal, "
                         "`balance_limit` for a deposit past the largest balance"),
            **{key: ERRORS[key] for key in ("401", "403")},
            **BODY_ERRORS,
        },
    }
    spec.path("/api/players/{player_id}/deposits", parameters=[player],
              operations={"post": {"summary": "Deposit", "operationId": "deposit", **movement}})
    spec.path("/api/players/{player_id}/withdrawals", parameters=[player],
              operations={"post": {"summary": "Withdraw", "operationId": "withdraw", **movement}})
    spec.path("/api/players/{player_id}/balances", parameters=[player], operations={
        "get": {"summary": "A player's wallets", "operationId": "getWallets", "security": ADMIN,
                "responses": {"200": _json("Balances"), **ERRORS}}})
    spec.path("/api/players/{player_id}/balances/{currency}", parameters=[
        player, _path("currency", {"type": "string", "pattern": schemas.CURRENCY.pattern})],
        operations={"get": {"summary": "One wallet", "operationId": "getWallet", "security": ADMIN,
                            "responses": {"200": _json("Wallet"), "404": _json("Error", "No such wallet"), **ERRORS}}})
    spec.path("/api/players/{player_id}/ledger", parameters=[player], operations={
        "get": {"summary": "A player's ledger, newest first", "operationId": "getLedger", "security": ADMIN,
                "parameters": _parameters(schemas.LedgerQuery, "query"),
                "responses": {"200": {**_json("LedgerPage"), "links": {
                    "GetGame": _link("getGame", "The game of the newest row", game_id="$response.body#/entries/0/game_id")}},
                    **ERRORS}}})
    game = _path("game_id", _identifier())
    spec.path("/api/games", operations={
        "get": {"summary": "Games, newest start first", "operationId": "getGames", "security": ADMIN,
                "parameters": _parameters(schemas.GamesQuery, "query"),
                "responses": {"200": {**_json("GamesPage"), "links": {
                    "GetGame": _link("getGame", "The newest game", game_id="$response.body#/games/0/game_id"),
                    "RefundGame": _link("refundGame", "Refund the newest game", game_id="$response.body#/games/0/game_id"),
                    "GetWallet": _link("getWallet", "Its wallet", player_id="$response.body#/games/0/player_id",
                                       currency="$response.body#/games/0/currency")}},
                    **ERRORS}}})
    spec.path("/api/games/{game_id}", parameters=[game], operations={
        "get": {"summary": "A game with its ledger rows and callbacks", "operationId": "getGame", "security": ADMIN,
                "responses": {"200": {**_json("GameDetail"), "links": {
                    "RefundGame": _link("refundGame", "Refund it", game_id="$response.body#/game_id")}},
                    "404": _json("Error", "No such game"), **ERRORS}}})
    spec.path("/api/games/{game_id}/refund", parameters=[game], operations={
        "post": {"summary": "Refund an open bet (idempotent)", "operationId": "refundGame", "security": ADMIN,
                 "responses": {"200": {**_json("Refund"), "links": {
                     "GetWallet": _link("getWallet", "The wallet refunded", player_id="$response.body#/wallet/player_id",
                                        currency="$response.body#/wallet/currency")}},
                               "404": _json("Error", "No accepted bet"),
                               "409": _json("Error", "Already settled"), **ERRORS}}})
    spec.path("/api/games/{game_id}/settle", parameters=[game], operations={
        "post": {"summary": "Pay a win held unpaid, as much as its wallet can take", "operationId": "settleGame",
                 "description": "A finish whose win would take the wallet past its largest balance is answered "
                                "200 {} and its game held `unpaid` (list them with `GET /api/games?status=unpaid`). "
                                "This pays what is owed with a payout ledger row, as much as the wallet can take; "
                                "once all is paid the game is `won`, and a repeat answers the same, moving nothing.",
                 "security": ADMIN,
                 "responses": {"200": {**_json("Settlement"), "links": {
                     "GetWallet": _link("getWallet", "The wallet paid", player_id="$response.body#/wallet/player_id",
                                        currency="$response.body#/wallet/currency")}},
                               "404": _json("Error", "No accepted bet"),
                               "409": _json("Error", "`conflict`: not a won game; `balance_limit`: the wallet is at "
                                                     "its largest balance, withdraw from it first"), **ERRORS}}})
    spec.path("/api/callbacks", operations={
        "get": {"summary": "The audit log of callbacks, newest first", "operationId": "getCallbacks", "security": ADMIN,
                "parameters": _parameters(schemas.CallbacksQuery, "query"),
                "responses": {"200": _json("CallbacksPage"), **ERRORS}}})
    spec.path("/api/reconcile", operations={
        "get": {"summary": "Check that the books balance", "operationId": "reconcile", "security": ADMIN,
                "responses": {"200": _json("Reconcile"), **ERRORS,
                              "503": _json("Error", "`busy`: a reconciliation is already running on the worker "
                                           "that took the request; retry after Retry-After seconds, or run "
                                           "`flask --app app wallet reconcile` for large books.")}}})
    spec.path("/healthz", operations={"get": {"summary": "Health after a database round-trip", "operationId": "health",
                                              "responses": {"200": _json("Health", "Healthy"),
                                                            "503": _json("Health", "The database is unusable")}}})
    document = spec.to_dict()
    _callback_variants(document["components"]["schemas"])
    return document


@bp.get("/openapi.json")
def openapi_json():
    """Serve the OpenAPI document (no token needed)."""
    document = current_app.extensions.get("openapi")
    if document is None:
        document = current_app.extensions["openapi"] = build_spec()
    return jsonify(document)
