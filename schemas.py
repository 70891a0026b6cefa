"""Exact JSON parsing and the marshmallow schemas for callbacks and the operator API."""

import collections
import datetime
import decimal
import json
import re

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema

from errors import ApiError

AMOUNT_LIMIT = decimal.Decimal(10) ** 12  # in currency units, exclusive
MAX_DELAY_MS = 600_000
SECONDS_BELOW = 10**11  # an epoch below this is in seconds, otherwise milliseconds
MAX_EPOCH_MS = 10**14  # far beyond any real clock; keeps stored values sane
JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
EPOCH_DIGITS = re.compile(r"[0-9]{1,15}")  # epoch milliseconds in a query string; ASCII digits only
MAX_DEPTH = 64  # objects and arrays inside each other; a callback needs 3
SHOWN_DUPLICATES = 5  # duplicate keys an error message names; a body may repeat thousands
GAME_STATUSES = ("open", "won", "lost", "refunded", "declined")
CALLBACK_OUTCOMES = ("accepted", "declined", "duplicate", "conflict", "invalid", "ignored")


def _reject_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def _unique_keys(pairs):
    """Build a JSON object from its (key, value) pairs, refusing a key given twice.

    Linear in the number of keys, found or not: a 60 KiB object holds thousands of keys, and
    counting each key against all the others cost half a second of a worker's CPU.
    """
    obj = dict(pairs)
    if len(obj) != len(pairs):
        duplicates = sorted(key for key, count in collections.Counter(key for key, _ in pairs).items() if count > 1)
        named = ", ".join(map(repr, duplicates[:SHOWN_DUPLICATES]))
        more = len(duplicates) - SHOWN_DUPLICATES
        raise ValueError(f"duplicate key(s) {named}" + (f" and {more} more" if more > 0 else ""))
    return obj


def parse_json(raw):
    """Parse a UTF-8 JSON body with every number exact (Decimal or int), never a float.

    NaN, Infinity and duplicate keys are refused: a money message must mean one thing.
    """
    if not raw:
        raise ApiError(400, "malformed_json", "The request body is empty; send a JSON object.")
    try:
        payload = json.loads(
            raw.decode("utf-8"),
            parse_float=decimal.Decimal,
            parse_constant=_reject_constant,
            object_pairs_hook=_unique_keys,
        )
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "The request body is not valid UTF-8.") from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "The JSON is nested too deeply.") from None
    except (ValueError, decimal.InvalidOperation) as exc:
        # json.JSONDecodeError is a ValueError; so are huge integers and our refusals.
        raise ApiError(400, "malformed_json", f"The request body is not valid JSON: {exc}") from None
    _check_tree(payload)
    return payload


def _check_tree(payload):
    """Refuse, without recursing, nesting past MAX_DEPTH and strings holding a lone surrogate.

    Both parse (JSON allows "\\ud800"), but a lone surrogate cannot be stored in SQLite and
    a structure nested near the parser's limit breaks whatever recurses into it next.
    """
    stack = [(payload, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise ApiError(400, "malformed_json", f"The JSON is nested more than {MAX_DEPTH} deep.")
            if isinstance(value, dict):
                stack.extend((key, depth) for key in value)
                value = value.values()
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str) and not storable(value):
            raise ApiError(400, "malformed_json", "A string holds a lone surrogate (\\ud800-\\udfff) or U+0000.")


def storable(text):
    """Whether every engine can store the text: one holding a lone surrogate (a JSON
    "\\ud800" escape, or a command-line argument that was not UTF-8) cannot be encoded, and
    PostgreSQL's text cannot hold U+0000. Checked where text comes in: JSON bodies, cursors
    and the CLI's arguments."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Amount(fields.Field):
    """A finite decimal below 10^12 in magnitude, from a JSON number or a numeric string."""

    default_error_messages = {
        "invalid": "Not a valid number.",
        "too_large": "Must be below 10^12.",
    }

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and JSON_NUMBER.fullmatch(value):
            try:
                value = decimal.Decimal(value)
            except decimal.InvalidOperation:  # an exponent beyond the decimal module's limits
                raise self.make_error("invalid") from None
        elif isinstance(value, int) and not isinstance(value, bool):
            value = decimal.Decimal(value)
        if not isinstance(value, decimal.Decimal) or not value.is_finite():
            raise self.make_error("invalid")
        if value.copy_abs() >= AMOUNT_LIMIT:
            raise self.make_error("too_large")
        return value


class Text(fields.String):
    """A non-blank string of at most 255 characters, storable by every engine."""

    def __init__(self, **kwargs):
        super().__init__(validate=[validate.Length(min=1, max=255), _not_blank, _storable], **kwargs)


def _not_blank(value):
    if not value.strip():
        raise ValidationError("Must not be blank.")


def _storable(value):
    if not storable(value):
        raise ValidationError("Must not hold U+0000 or a lone surrogate.")


class TextOrInteger(Text):
    """A string or an integer (never a boolean), kept as text: the provider's ids."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        return super()._deserialize(value, attr, data, **kwargs)


class EpochMillis(fields.Integer):
    """An integer epoch; below 10^11 it is seconds, otherwise milliseconds. Loads as ms."""

    def __init__(self, **kwargs):
        super().__init__(strict=True, validate=validate.Range(min=0, max=MAX_EPOCH_MS), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        return value * 1000 if 0 <= value < SECONDS_BELOW else value


class Milliseconds(Amount):
    """A whole number of milliseconds (a fraction rounds half-to-even), 0 to 600000."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if not 0 <= value <= MAX_DELAY_MS:
            raise ValidationError(f"Must be between 0 and {MAX_DELAY_MS}.")
        return int(value.to_integral_value(rounding=decimal.ROUND_HALF_EVEN))


POSITIVE = validate.Range(min=0, min_inclusive=False)
NOT_NEGATIVE = validate.Range(min=0)


class _Open(Schema):
    """Undocumented fields are allowed at every level and kept: the provider may add some."""

    class Meta:
        unknown = INCLUDE


class SessionSchema(_Open):
    id = Text(required=True)
    player_id = Text(required=True, data_key="playerId")
    game_name = Text(required=True, data_key="gameId")
    currency = Text(required=True)


class GameSchema(_Open):
    id = TextOrInteger(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["in_progress", "win", "lose"]))
    bet = Amount(required=True, validate=POSITIVE)
    payout = Amount(validate=NOT_NEGATIVE)
    profit = Amount()
    round = TextOrInteger()


class DataSchema(_Open):
    bet = Amount(validate=POSITIVE)
    all_bet_amount = Amount(data_key="allBetAmount", validate=NOT_NEGATIVE)
    balance_update_delay = Milliseconds(data_key="balanceUpdateDelay", load_default=0)


class CallbackSchema(_Open):
    type = Text(required=True)
    session = fields.Nested(SessionSchema, required=True)
    game = fields.Nested(GameSchema, required=True)
    data = fields.Nested(DataSchema, load_default=dict)
    round_data = fields.Raw(data_key="roundData", allow_none=True)
    time = EpochMillis(load_default=None)

    @validates_schema
    def _finish_rules(self, data, **kwargs):
        if data["type"] != "finish":
            return
        if data["game"]["status"] == "in_progress":
            raise ValidationError({"status": ["A finish must be 'win' or 'lose'."]}, "game")
        if "payout" not in data["game"]:
            raise ValidationError({"payout": ["Missing data for required field."]}, "game")


class EnvelopeSchema(_Open):
    type = Text(required=True)


callback_schema = CallbackSchema()
envelope_schema = EnvelopeSchema()
HANDLED_TYPES = ("start", "finish")


def load_callback(payload):
    """Validate a callback; a type other than start/finish only needs a non-blank `type`."""
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": ["The callback must be a JSON object."]})
    envelope = envelope_schema.load(payload)
    if envelope["type"] not in HANDLED_TYPES:
        return envelope
    return callback_schema.load(payload)


class MovementSchema(Schema):
    """A deposit or withdrawal asked for by the operator's site."""

    currency = Text(required=True)
    amount = Amount(required=True, validate=POSITIVE)
    reference = Text(required=True)


movement_schema = MovementSchema()
player_schema = Schema.from_dict({"player_id": Text(required=True)})()


class Since(fields.Field):
    """A moment as ISO 8601 (UTC when no offset is given) or epoch milliseconds; loads as ms."""

    default_error_messages = {"invalid": "Not an ISO 8601 time or epoch milliseconds."}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and EPOCH_DIGITS.fullmatch(value):
            return int(value)
        try:
            moment = datetime.datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise self.make_error("invalid") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        return int(moment.timestamp() * 1000)


class _Page(Schema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    cursor = fields.String(load_default=None)


class GamesQuery(_Page):
    player_id = Text(load_default=None)
    status = fields.String(
        load_default=None, validate=validate.OneOf(GAME_STATUSES)
    )
    since = Since(load_default=None)


class LedgerQuery(_Page):
    currency = Text(load_default=None)


class CallbacksQuery(_Page):
    outcome = fields.String(
        load_default=None,
        validate=validate.OneOf(CALLBACK_OUTCOMES),
    )
    type = Text(load_default=None)
    game_id = Text(load_default=None)


games_query = GamesQuery()
ledger_query = LedgerQuery()
callbacks_query = CallbacksQuery()
