"""Exact JSON parsing and the marshmallow schemas for callbacks and the operator API."""

import collections
import datetime
import decimal
import functools
import json
import re
import unicodedata

from marshmallow import INCLUDE, Schema, ValidationError, fields, missing, validate, validates_schema
from marshmallow.decorators import VALIDATES_SCHEMA

from money.refusals import ApiError

AMOUNT_LIMIT = decimal.Decimal(10) ** 12  # in currency units, exclusive
MAX_DELAY_MS = 600_000
SECONDS_BELOW = 10**11  # an epoch below this is in seconds, otherwise milliseconds
MAX_EPOCH_MS = 10**14  # far beyond any real clock; keeps stored values sane
EPOCH_DIGITS = re.compile(r"^[0-9]{1,15}$")  # epoch milliseconds in a query string; ASCII digits only
MAX_DEPTH = 64  # objects and arrays inside each other; a callback needs 3
SHOWN_DUPLICATES = 5  # duplicate keys an error message names; a body may repeat thousands
# "unpaid": won, but the win would have taken the wallet past its largest balance; owed until
# the operator settles it (wallet.settle_game).
GAME_STATUSES = ("open", "won", "lost", "refunded", "declined", "unpaid")
# "held": a finish whose win was held unpaid; "error": a callback answered with a 5xx (kept in
# the audit by callbacks.audit_and_log).
CALLBACK_OUTCOMES = ("accepted", "declined", "duplicate", "conflict", "held", "invalid", "ignored", "error")


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
    if raw.count(b"{") + raw.count(b"[") >= MAX_DEPTH or b"\\ud" in raw.lower():
        _check_tree(payload)  # only a body that could nest that deep or hold a surrogate escape
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
            raise ApiError(400, "malformed_json", "A string holds a lone surrogate (\\ud800-\\udfff).")


def storable(text):
    """Whether the text can be stored at all: one holding a lone surrogate (a JSON "\\ud800"
    escape, or a command-line argument that was not UTF-8) cannot be encoded. Checked where
    text comes in: JSON bodies, cursors and the CLI's arguments. (U+0000, which PostgreSQL
    cannot store in text, is refused by the rules of the fields that are stored as text.)"""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- what text may hold --------------------------------------------------------------------
#
# Each rule is one regular expression, checked here with re.fullmatch and published as is in
# /openapi.json as the field's `pattern`: the document and the check cannot disagree. The
# expressions use only character classes written as \uXXXX ranges, which Python and the
# ECMA-262 dialect of JSON Schema read alike (no \s, \w or "." whose meaning differs).


def _char_class(predicate):
    """A regex character class body: the characters of the Basic Multilingual Plane (lone
    surrogates aside, which parse_json already refuses) for which `predicate` holds."""
    ranges, start = [], None
    for code in [*range(0xD800), *range(0xE000, 0x10000), None]:
        if code is not None and predicate(chr(code)):
            start = code if start is None else start
            end = code
        elif start is not None:
            ranges.append(f"\\u{start:04x}" + (f"-\\u{end:04x}" if end > start else ""))
            start = None
    return "".join(ranges)


# Characters no identifier may hold: Unicode controls (Cc), format characters (Cf: zero-width
# and bidirectional marks, the BOM...) and separators (Z*) other than the plain space. They do
# not print, so two ids differing only by them would look the same to a person.
NON_PRINTING = _char_class(lambda char: unicodedata.category(char) in ("Cc", "Cf", "Zs", "Zl", "Zp") and char != " ")
SPACES = _char_class(str.isspace)  # what Python's str.strip() removes
# An identifier (player, game id, session id, reference; a currency has its own rule below):
# printing characters and spaces, at least one of them not a space.
IDENTIFIER = re.compile(f"^[^{NON_PRINTING}]*[^ {NON_PRINTING}][^{NON_PRINTING}]*$")
# Any other stored text (callback type, game name, round): not blank, and no NUL, which
# PostgreSQL cannot store in text.
TEXT = re.compile(f"^[^\\u0000]*[^\\u0000{SPACES}][^\\u0000]*$")
# A currency code: letters, digits, '_' and '-', starting with a letter or digit (USDT_TRC20).
CURRENCY = re.compile("^[A-Za-z0-9][A-Za-z0-9_-]{0,19}$")


class Pattern(validate.Regexp):
    """The whole value must match (Regexp's re.match lets "$" match before a final newline).

    apispec documents a Regexp's pattern, so the field's `pattern` in /openapi.json is this one.
    """

    def __call__(self, value):
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self.error)
        return value


def printable(text):
    """Whether text is a well-formed identifier (the IDENTIFIER rule)."""
    return isinstance(text, str) and IDENTIFIER.fullmatch(text) is not None


# A numeric string is a decimal in plain notation (JSON's, without an exponent): "1.50".
PLAIN_NUMBER = re.compile(r"^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?$")


class Amount(fields.Field):
    """A finite decimal from a JSON number or a plain numeric string, below 10^12 in magnitude.

    `minimum` is the sign rule: "positive" (> 0), "zero" (>= 0) or None (any sign). schema()
    states the same rule in JSON Schema for /openapi.json: a number within the bounds, or a
    string matching the pattern, which spells out the same bounds digit by digit.
    """

    default_error_messages = {
        "invalid": 'Not a valid number: send a JSON number or a plain decimal string such as "1.50".',
        "too_large": "Must be below 10^12.",
        "positive": "Must be greater than 0.",
        "zero": "Must be 0 or more.",
    }
    PATTERNS = {  # a string of at most 12 integer digits is below 10^12
        "positive": r"^(?:[1-9][0-9]{0,11}(?:\.[0-9]+)?|0\.[0-9]*[1-9][0-9]*)$",
        "zero": r"^(?:0|[1-9][0-9]{0,11})(?:\.[0-9]+)?$",
        None: r"^-?(?:0|[1-9][0-9]{0,11})(?:\.[0-9]+)?$",
    }

    def __init__(self, minimum=None, **kwargs):
        super().__init__(**kwargs)
        self.minimum = minimum

    def _deserialize(self, value, attr, data, **kwargs):
        negative_text = isinstance(value, str) and value.startswith("-")
        if isinstance(value, str) and PLAIN_NUMBER.fullmatch(value):
            value = decimal.Decimal(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            value = decimal.Decimal(value)
        if not isinstance(value, decimal.Decimal) or not value.is_finite():
            raise self.make_error("invalid")
        return self._check(value, negative_text)

    def _check(self, value, negative_text):
        if self.minimum == "positive" and (value <= 0 or negative_text):
            raise self.make_error("positive")
        if self.minimum == "zero" and (value < 0 or negative_text):  # "-0" is not written as >= 0
            raise self.make_error("zero")
        if value.copy_abs() >= AMOUNT_LIMIT:
            raise self.make_error("too_large")
        return value

    def schema(self):
        """The rule as JSON Schema."""
        number = {"type": "number", "exclusiveMaximum": int(AMOUNT_LIMIT)}
        number.update({"positive": {"exclusiveMinimum": 0}, "zero": {"minimum": 0}}.get(
            self.minimum, {"exclusiveMinimum": -int(AMOUNT_LIMIT)}))
        return {"anyOf": [number, {"type": "string", "pattern": self.PATTERNS[self.minimum]}]}


class Milliseconds(Amount):
    """A number of milliseconds, 0 to 600000 (a fraction rounds half-to-even); loads as an int."""

    def __init__(self, **kwargs):
        super().__init__(minimum="zero", **kwargs)

    def _check(self, value, negative_text):
        if not 0 <= value <= MAX_DELAY_MS or negative_text:
            raise ValidationError(f"Must be between 0 and {MAX_DELAY_MS}.")
        return int(value.to_integral_value(rounding=decimal.ROUND_HALF_EVEN))

    def schema(self):
        """The rule as JSON Schema."""
        pattern = r"^(?:(?:0|[1-9][0-9]{0,4}|[1-5][0-9]{5})(?:\.[0-9]+)?|600000(?:\.0+)?)$"
        return {"anyOf": [{"type": "number", "minimum": 0, "maximum": MAX_DELAY_MS},
                          {"type": "string", "pattern": pattern}]}


class Text(fields.String):
    """A non-blank string of at most 255 characters without NUL (TEXT)."""

    rule = Pattern(TEXT, error="Must not be blank or hold a NUL character.")

    def __init__(self, **kwargs):
        super().__init__(validate=[validate.Length(min=1, max=255), self.rule], **kwargs)


class Identifier(Text):
    """A non-blank string of at most 255 printing characters (IDENTIFIER): ids and references."""

    rule = Pattern(IDENTIFIER, error="Must not be blank or hold control or other non-printing characters.")


class Currency(fields.String):
    """A currency code (CURRENCY)."""

    def __init__(self, **kwargs):
        error = "Must be a currency code: 1 to 20 letters, digits, '_' or '-', starting with a letter or digit."
        super().__init__(validate=Pattern(CURRENCY, error=error), **kwargs)


def _whole(value):
    """A JSON number with no fraction as an int: JSON Schema's `integer` includes 7.0 and 7e2."""
    if isinstance(value, decimal.Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value) if value.adjusted() < 20 else value  # past 10^20: refused as it is
    return value


class _OrInteger:
    """A string, or an integer below 10^18 in magnitude (never a boolean), kept as text: the
    provider's ids may arrive as numbers."""

    INTEGER_LIMIT = 10**18

    def _deserialize(self, value, attr, data, **kwargs):
        value = _whole(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= self.INTEGER_LIMIT:
                raise ValidationError("An integer id must be below 10^18 in magnitude.")
            value = str(value)
        return super()._deserialize(value, attr, data, **kwargs)


class TextOrInteger(_OrInteger, Text):
    """Text, or an integer kept as text (game.round)."""


class IdentifierOrInteger(_OrInteger, Identifier):
    """An identifier, or an integer kept as text (game.id)."""


def game_id_or_none(value):
    """The id a game sent as `value` is stored under (7.0 and 7E0 are game "7"), or None when
    it is no valid game id."""
    try:
        return callback_schema.load_fields["game"].schema.load_fields["id"].deserialize(value)
    except ValidationError:
        return None


class EpochMillis(fields.Integer):
    """An integer epoch; below 10^11 it is seconds, otherwise milliseconds. Loads as ms."""

    def __init__(self, **kwargs):
        super().__init__(strict=True, validate=validate.Range(min=0, max=MAX_EPOCH_MS), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(_whole(value), attr, data, **kwargs)
        return value * 1000 if 0 <= value < SECONDS_BELOW else value


class _Open(Schema):
    """Undocumented fields are allowed at every level and kept: the provider may add some.

    Except under a name a field is loaded as (`player_id`, the field sent as `playerId`):
    marshmallow keeps undocumented fields after the checked ones, so such a key would replace
    the checked value with one nobody checked. It is refused."""

    class Meta:
        unknown = INCLUDE

    @functools.cached_property
    def _loaded_as(self):
        """The names fields are loaded as where they are sent as another."""
        return {name: field.data_key for name, field in self.load_fields.items() if field.data_key not in (None, name)}

    @validates_schema(pass_original=True)
    def _no_field_under_its_loaded_name(self, data, original_data, **kwargs):
        if isinstance(original_data, dict) and not original_data.keys().isdisjoint(self._loaded_as):
            raise ValidationError({name: [f"Unknown field: this value is sent as {sent!r}."]
                                   for name, sent in self._loaded_as.items() if name in original_data})


class SessionSchema(_Open):
    id = Identifier(required=True)
    player_id = Identifier(required=True, data_key="playerId")
    game_name = Text(required=True, data_key="gameId")  # a game's name, e.g. "Mines"
    currency = Currency(required=True)


class GameSchema(_Open):
    id = IdentifierOrInteger(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["in_progress", "win", "lose"]))
    bet = Amount(required=True, minimum="positive")
    payout = Amount(minimum="zero")
    profit = Amount()
    round = TextOrInteger()


class DataSchema(_Open):
    bet = Amount(minimum="positive")
    all_bet_amount = Amount(data_key="allBetAmount", minimum="zero")
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


HANDLED_TYPES = ("start", "finish")
# A type that reads as `start` or `finish` but is not exactly it ("Finish", "finish ",
# "ｆｉｎｉｓｈ", "fin\u200bish"): the same letters in any case or compatibility form (NFKC, then
# case-folded), with spaces or non-printing characters anywhere. Answered 200 {} as an unknown
# type, the provider would take a finish for settled while nothing moved: so it is refused
# (400 naming `type`). /openapi.json publishes it as a pattern an other type must not match.
_IGNORABLE = _char_class(lambda char: unicodedata.category(char) in ("Cc", "Cf", "Zs", "Zl", "Zp") or char.isspace())


def _spelled(words):
    """A regex matching each of `words` written in any case or compatibility form, with spaces
    or non-printing characters anywhere."""
    letters = set("".join(words))
    forms = collections.defaultdict(list)  # letter -> the characters that fold to it
    for code in [*range(0xD800), *range(0xE000, 0x10000)]:
        if chr(code).isascii() or not chr(code).isalpha():  # an ASCII letter folds by its case alone
            continue
        folded = unicodedata.normalize("NFKC", chr(code)).casefold()
        if folded in letters:
            forms[folded].append(f"\\u{code:04x}")
    gap = f"[{_IGNORABLE}]*"
    spelled = [gap + gap.join(f"[{letter}{letter.upper()}{''.join(forms[letter])}]" for letter in word) + gap
               for word in words]
    return "^(?:" + "|".join(spelled) + ")$"


NEAR_HANDLED_TYPE = re.compile(_spelled(HANDLED_TYPES))


class EnvelopeSchema(_Open):
    type = Text(required=True)

    @validates_schema
    def _not_a_misspelt_handled_type(self, data, **kwargs):
        if NEAR_HANDLED_TYPE.fullmatch(data["type"]):
            raise ValidationError({"type": [
                f"Must be exactly one of {', '.join(HANDLED_TYPES)} (this reads as one of them but is not "
                "spelled exactly so), or another type."]})


callback_schema = CallbackSchema()
envelope_schema = EnvelopeSchema()


def load_callback(payload):
    """Validate a callback; a type other than start/finish only needs a non-blank `type`.

    A plainly valid callback is loaded by `_load_valid`; anything else by Schema.load, whose
    result or errors are the answer (see below).
    """
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": ["The callback must be a JSON object."]})
    schema = callback_schema if payload.get("type") in HANDLED_TYPES else envelope_schema
    try:
        return _load_valid(schema, payload)
    except (_NotPlain, ValidationError):
        return schema.load(payload)  # raises every error, each where Schema.load puts it


# --- the callback's hot path ----------------------------------------------------------------
# Schema.load drives each field through a closure, an error store and hook lookups. On a
# callback (19 fields in 4 nested schemas) that machinery cost twice what the fields' own checks
# do (68 us against 22 us a callback in a loop, measured; 0.08 ms of a worker's CPU per
# callback served, a tenth of it). The provider's callbacks are valid nearly always, so
# `_load_valid` runs the same marshmallow fields and validators in a plain loop, as
# Schema.load and Field.deserialize would on a valid body: a field missing (its load_default)
# or None (when allowed), else its _deserialize and then its validators; nested schemas
# recursively; undocumented keys kept (INCLUDE); then the schema's @validates_schema rules.
# It returns only when every check passed. At the first sign of anything else it gives up, and
# Schema.load loads the body from the start: the errors a client sees are always Schema.load's.
# _check_plain refuses at import a schema using what the loop does not mirror; a property test
# (tests/test_fuzz.py) holds both to the same result.


class _NotPlain(Exception):
    """Not a body `_load_valid` loads: leave it to Schema.load."""


def _load_valid(schema, data):
    if type(data) is not dict:
        raise _NotPlain
    result = {}
    for name, field in schema.load_fields.items():
        key = name if field.data_key is None else field.data_key
        value = data.get(key, missing)
        if value is missing:
            if field.required:
                raise _NotPlain
            value = field.load_default() if callable(field.load_default) else field.load_default
        elif value is None:
            if not field.allow_none:
                raise _NotPlain
        elif type(field) is fields.Nested:
            value = _load_valid(field.schema, value)
        else:
            value = field._deserialize(value, key, data)  # raises ValidationError when invalid
            for validator in field.validators:
                if validator(value) is False:
                    raise _NotPlain
        if value is not missing:
            result[name] = value
    unknown = data.keys() - schema._plain_keys
    if unknown:
        if schema.unknown != INCLUDE:
            raise _NotPlain
        result.update((key, data[key]) for key in unknown)
    for method, _many, options in schema._hooks[VALIDATES_SCHEMA]:
        original = (data,) if options.get("pass_original") else ()
        getattr(schema, method)(result, *original, partial=None, many=False, unknown=schema.unknown)
    return result


def _check_plain(schema):
    """Refuse (at import) a schema that uses what `_load_valid` does not do as Schema.load."""
    def require(condition, what):
        if not condition:  # not an assert: those vanish under `python -O`
            raise TypeError(f"{type(schema).__name__}: {what}, which schemas._load_valid does not do")

    used = {tag for tag, hooks in schema._hooks.items() if hooks} - {VALIDATES_SCHEMA}
    require(not used, f"hooks {sorted(map(str, used))}")
    require(not schema.many and not schema.partial, "many or partial")
    require(not any(many for _, many, _ in schema._hooks[VALIDATES_SCHEMA]), "a validator of many")
    for name, field in schema.load_fields.items():
        require(field.attribute is None and not field.pre_load and not field.post_load,
                f"{name}: an attribute, pre_load or post_load")
        if isinstance(field, fields.Nested):
            require(type(field) is fields.Nested and not field.many and not field.validators
                    and field.unknown is None, f"{name}: a Nested of its own kind, many, validators or unknown")
            _check_plain(field.schema)
    schema._plain_keys = frozenset(name if f.data_key is None else f.data_key for name, f in schema.load_fields.items())


_check_plain(callback_schema)
_check_plain(envelope_schema)


class MovementSchema(Schema):
    """A deposit or withdrawal asked for by the operator's site."""

    currency = Currency(required=True)
    amount = Amount(required=True, minimum="positive")
    reference = Identifier(required=True)


class PathSchema(Schema):
    """The identifiers an operator API path may carry; each is checked where present."""

    player_id = Identifier()
    currency = Currency()
    game_id = Identifier()


movement_schema = MovementSchema()
path_schema = PathSchema()


class Since(fields.Field):
    """A moment as epoch milliseconds, or an ISO 8601 date or date-time (UTC when no offset is
    given), which includes every RFC 3339 one: "t"/"z" in lower case, a leap second (:60, read
    as the next second) and the year 0000 (before every record). Loads as epoch ms."""

    default_error_messages = {"invalid": "Not an ISO 8601 time or epoch milliseconds."}

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise self.make_error("invalid")
        if EPOCH_DIGITS.fullmatch(value):
            return int(value)
        text, extra_ms = value.upper(), 0
        leap = LEAP_SECOND.search(text)
        if leap:
            text, extra_ms = text[: leap.start()] + ":59" + text[leap.end():], 1000
        year_zero = text.startswith("0000-")
        if year_zero:
            text = "0001" + text[4:]
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise self.make_error("invalid") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        if year_zero:
            extra_ms -= 366 * 86_400_000  # read as the same day of 0001, less a (leap) year
        return int(moment.timestamp() * 1000) + extra_ms


LEAP_SECOND = re.compile(r"(?<=T[0-9]{2}:[0-9]{2}):60(?=[.Z+-]|$)")


class Cursor(fields.String):
    """A `next_cursor` from a previous page; empty means none (the first page)."""

    def _deserialize(self, value, attr, data, **kwargs):
        return super()._deserialize(value, attr, data, **kwargs) or None


class Limit(fields.Integer):
    """Rows per page, 1 to 500, in ASCII digits (int() alone would also read " 5" or "٥")."""

    def __init__(self, **kwargs):
        super().__init__(load_default=50, validate=validate.Range(min=1, max=500), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and not EPOCH_DIGITS.fullmatch(value):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class _Page(Schema):
    limit = Limit()
    cursor = Cursor(load_default=None)


class GamesQuery(_Page):
    player_id = Identifier(load_default=None)
    status = fields.String(
        load_default=None, validate=validate.OneOf(GAME_STATUSES)
    )
    since = Since(load_default=None)


class LedgerQuery(_Page):
    currency = Currency(load_default=None)


class CallbacksQuery(_Page):
    outcome = fields.String(
        load_default=None,
        validate=validate.OneOf(CALLBACK_OUTCOMES),
    )
    type = Text(load_default=None)
    game_id = Identifier(load_default=None)


games_query = GamesQuery()
ledger_query = LedgerQuery()
callbacks_query = CallbacksQuery()


def load(schema, data, part):
    """Validate one part of a request ("path", "query string") with `schema`; refuse it with a
    400 that says which part was wrong. (A body's errors reach errors.py's ValidationError
    handler, which says "request body".)"""
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise ApiError(400, "validation_error", f"The {part} is invalid.", exc.messages) from None
