"""GET /openapi.json: an OpenAPI 3.1 document generated from the marshmallow schemas (apispec).

The request schemas are the ones the service validates with (schemas.py); the response
schemas below describe the JSON the views return, and tests/test_openapi.py checks real
answers against them.
"""

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, current_app, jsonify
from marshmallow import Schema, fields

import schemas

bp = Blueprint("openapi", __name__)

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


class ReconcileSchema(Schema):
    ok = fields.Boolean(required=True)
    wallets = fields.Integer(required=True)
    games = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    totals = fields.Dict(keys=fields.String(), values=fields.Dict(keys=fields.String(), values=Money()), required=True)
    discrepancies = fields.List(fields.String(), required=True)


class StartAnswerSchema(Schema):
    result = fields.Boolean(required=True)


def _amount(self, field, **kwargs):
    """Amounts are accepted as JSON numbers or numeric strings."""
    if isinstance(field, schemas.Amount):
        return {"type": ["number", "string"], "description": "A decimal amount, below 10^12."}
    if isinstance(field, schemas.TextOrInteger):
        return {"type": ["string", "integer"]}
    return {}


def _json(schema, description="OK"):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": _json("Error", "Invalid input: malformed JSON or a validation error (with `fields`)."),
    "401": _json("Error", "Missing or wrong bearer token."),
    "403": _json("Error", "ADMIN_TOKEN is not configured."),
}
ADMIN = [{"bearer": []}]


def _parameters(schema, location):
    return [{"in": location, "schema": schema}]


def build_spec():
    """Build the OpenAPI document."""
    plugin = MarshmallowPlugin()
    spec = APISpec("Callback wallet", "1.0.0", "3.1.0", plugins=[plugin],
                   info={"description": "The provider's start/finish callbacks and the operator's API."})
    plugin.converter.add_attribute_function(_amount)
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for name, schema in [
        ("Error", ErrorSchema), ("Callback", schemas.CallbackSchema), ("Movement", schemas.MovementSchema),
        ("Wallet", WalletSchema), ("Balances", BalancesSchema), ("GameRecord", GameViewSchema),
        ("GameDetail", GameDetailSchema), ("GamesPage", GamesPageSchema), ("LedgerPage", LedgerPageSchema),
        ("CallbacksPage", CallbacksPageSchema), ("Refund", RefundSchema), ("Reconcile", ReconcileSchema),
        ("StartAnswer", StartAnswerSchema),
    ]:
        spec.components.schema(name, schema=schema)

    callback = {
        "summary": "The provider's start / finish callback",
        "description": "`start` answers `{\"result\": true|false}`, `finish` and any other type `{}`. "
        "With CALLBACK_TOKEN set the path is /callback/{token}.",
        "requestBody": {"required": True, "content": {"application/json": {"schema": "Callback"}}},
        "responses": {
            "200": {"description": "Settled, declined, a duplicate, or an ignored type",
                    "content": {"application/json": {"schema": {"oneOf": [
                        {"$ref": "#/components/schemas/StartAnswer"}, {"type": "object", "maxProperties": 0}]}}}},
            "400": ERRORS["400"],
            "403": _json("Error", "Wrong token or address."),
            "409": _json("Error", "A repeat that contradicts what is stored, or a finish with no accepted start."),
            "413": _json("Error", "Body over 64 KiB."),
            "415": _json("Error", "Not application/json."),
        },
    }
    spec.path("/callback", operations={"post": callback})
    spec.path("/callback/{token}", operations={"post": callback},
              parameters=[{"in": "path", "name": "token", "required": True, "schema": {"type": "string"}}])
    player = {"in": "path", "name": "player_id", "required": True, "schema": {"type": "string"}}
    movement = {
        "security": ADMIN,
        "requestBody": {"required": True, "content": {"application/json": {"schema": "Movement"}}},
        "responses": {
            "201": _json("Wallet", "Applied"),
            "200": _json("Wallet", "The same reference and body again: the first answer"),
            "409": _json("Error", "`reference_conflict`, or `insufficient_funds` for a withdrawal"),
            **ERRORS,
        },
    }
    spec.path("/api/players/{player_id}/deposits", parameters=[player],
              operations={"post": {"summary": "Deposit", **movement}})
    spec.path("/api/players/{player_id}/withdrawals", parameters=[player],
              operations={"post": {"summary": "Withdraw", **movement}})
    spec.path("/api/players/{player_id}/balances", parameters=[player], operations={
        "get": {"summary": "A player's wallets", "security": ADMIN,
                "responses": {"200": _json("Balances"), **ERRORS}}})
    spec.path("/api/players/{player_id}/balances/{currency}", parameters=[
        player, {"in": "path", "name": "currency", "required": True, "schema": {"type": "string"}}],
        operations={"get": {"summary": "One wallet", "security": ADMIN,
                            "responses": {"200": _json("Wallet"), "404": _json("Error", "No such wallet"), **ERRORS}}})
    spec.path("/api/players/{player_id}/ledger", parameters=[player], operations={
        "get": {"summary": "A player's ledger, newest first", "security": ADMIN,
                "parameters": _parameters(schemas.LedgerQuery, "query"),
                "responses": {"200": _json("LedgerPage"), **ERRORS}}})
    game = {"in": "path", "name": "game_id", "required": True, "schema": {"type": "string"}}
    spec.path("/api/games", operations={
        "get": {"summary": "Games, newest start first", "security": ADMIN,
                "parameters": _parameters(schemas.GamesQuery, "query"),
                "responses": {"200": _json("GamesPage"), **ERRORS}}})
    spec.path("/api/games/{game_id}", parameters=[game], operations={
        "get": {"summary": "A game with its ledger rows and callbacks", "security": ADMIN,
                "responses": {"200": _json("GameDetail"), "404": _json("Error", "No such game"), **ERRORS}}})
    spec.path("/api/games/{game_id}/refund", parameters=[game], operations={
        "post": {"summary": "Refund an open bet (idempotent)", "security": ADMIN,
                 "responses": {"200": _json("Refund"), "404": _json("Error", "No accepted bet"),
                               "409": _json("Error", "Already settled"), **ERRORS}}})
    spec.path("/api/callbacks", operations={
        "get": {"summary": "The audit log of callbacks, newest first", "security": ADMIN,
                "parameters": _parameters(schemas.CallbacksQuery, "query"),
                "responses": {"200": _json("CallbacksPage"), **ERRORS}}})
    spec.path("/api/reconcile", operations={
        "get": {"summary": "Check that the books balance", "security": ADMIN,
                "responses": {"200": _json("Reconcile"), **ERRORS}}})
    spec.path("/healthz", operations={"get": {"summary": "Health after a database round-trip", "responses": {
        "200": {"description": "Healthy; with LITESTREAM_REPLICA_URL set, also `replication` (ok or "
                "failing), `replication_last_sync` and, when failing, `replication_error`"},
        "503": {"description": "The database is unusable"}}}})
    return spec.to_dict()


@bp.get("/openapi.json")
def openapi_json():
    """Serve the OpenAPI document (no token needed)."""
    document = current_app.extensions.get("openapi")
    if document is None:
        document = current_app.extensions["openapi"] = build_spec()
    return jsonify(document)
