"""Hostile input, fuzzed: random JSON, mutated callbacks, broken bytes, bad tokens and addresses.

Every property is checked over HTTP (Flask's test client) against a funded wallet with open
games, so start, finish, duplicate, conflict and refund paths are all reachable:

- never a 5xx; every answer is JSON, and every 4xx is {"error": ..., "message": ...};
- bad input moves nothing: wallets, ledger, games and operations are exactly as before;
- input that may be valid (a mutated callback, a plausible movement, a refund) keeps the books:
  balance = ledger sum, never negative (tests.support.books() asserts both on every read);
- callbacks never create a wallet, and every authorised callback leaves one audit row.

The regression tests at the end pin the 500s this fuzzing found, each as the smallest input.
"""

import base64
import copy
import ipaddress
import itertools
import json
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from money import refusals
import schemas
from harness.samples import ADMIN_TOKEN, CALLBACK_TOKEN, FINISH, START, body
from tests.support import Pairs, Raw, Wallet, dumps, query

SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=SLOW_IS_FINE)
FEW = settings(max_examples=25, deadline=None, suppress_health_check=SLOW_IS_FINE)
LIMIT = 64 * 1024  # MAX_CONTENT_LENGTH
_ids = itertools.count(1)


def fresh(prefix):
    """An id no earlier example used (hypothesis replays examples against the same database)."""
    return f"{prefix}-{next(_ids)}"


# --- writing JSON the way an attacker would --------------------------------------------------


def nested(depth, kind):
    if kind == "list":
        return Raw("[" * depth + "]" * depth)
    return Raw('{"a": ' * depth + "0" + "}" * depth)


NUMBER_LITERALS = [
    "1e400", "-1e400", "1e-400", "1E+999999999999999999", "1e99999999999999999999",
    "1e-99999999999999999999", str(10**30), str(-(10**30)), "1" + "0" * 5000, "NaN", "Infinity",
    "-Infinity", "-0", "0e0", "0.0", "1.0", "999999999999.995", "0.005", "0.004", "1e12",
    "1e-7", "2.675", "0.1", "12345678901234567890.123456789012345678901234567890",
]
# Numeric strings: plain decimals, which amounts accept, and with exponents, which they refuse.
NUMERIC_STRINGS = st.from_regex(r"-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,25})?", fullmatch=True)
ODD_STRINGS = st.sampled_from([
    "", " ", "  1", "1 ", "0x10", "1_000", "+1", ".5", "1.", "01", "NaN", "nan", "Infinity",
    "-Infinity", "inf", "1e400", "-0", "true", "null", "[]", "{}", "p" * 256, "x" * 5000,
    "\u0000", "é", "\u202e", "🎰", "USD\n", "start ", "START", "win ", "in_progress",
])
# JSON allows escapes of lone surrogates, which no Python str from st.text() holds.
SURROGATES = st.sampled_from(['"x\\ud800"', '"\\udfff"', '"\\ud83c"', '"a\\udc00b"']).map(Raw)
STRINGS = st.one_of(st.text(max_size=30), ODD_STRINGS, NUMERIC_STRINGS)
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    STRINGS,
    SURROGATES,
    st.sampled_from(NUMBER_LITERALS).map(Raw),
    st.builds(nested, st.sampled_from([1, 2, 30, 63, 64, 300, 900, 990, 1500, 20000]), st.sampled_from(["list", "object"])),
)
KEYS = st.one_of(
    st.sampled_from(["type", "session", "game", "data", "roundData", "time", "id", "playerId",
                     "gameId", "currency", "status", "bet", "payout", "profit", "round",
                     "allBetAmount", "balanceUpdateDelay", "amount", "reference", ""]),
    st.text(max_size=10),
)


def _containers(children):
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(KEYS, children, max_size=5),
        # an object that repeats its first key: always refused, whatever its values
        st.lists(st.tuples(KEYS, children), max_size=4).map(lambda pairs: Pairs(pairs + pairs[:1])),
    )


VALUES = st.recursive(LEAVES, _containers, max_leaves=15)

# --- callbacks: templates with mutated fields ------------------------------------------------

DELETE = object()
FIELDS = [
    "type", "session", "session.id", "session.playerId", "session.gameId", "session.currency",
    "session.extra", "game", "game.id", "game.status", "game.bet", "game.payout", "game.profit",
    "game.round", "game.extra", "data", "data.bet", "data.allBetAmount", "data.balanceUpdateDelay",
    "roundData", "time", "extra",
    # names fields are loaded as, refused where sent (schemas._Open)
    "session.player_id", "data.balance_update_delay", "round_data",
]
PLAUSIBLE = {
    "type": ["start", "finish", "rollback", "Start"],
    "session.playerId": ["player-42", "player-43", "nobody"],
    "session.currency": ["USD", "EUR", "BTC", "usd"],
    "game.status": ["win", "lose", "in_progress"],
    "game.bet": [1, "1", 1.0, "1.00", 2, 0.5, "0.005", 0.015, 10**11, "999999999999.99"],
    "game.payout": [0, 1, 2.5, "2.50", 1e-7, 3, 10**11, "999999999999"],
    "game.profit": [0, -1, 1.5],
    "game.round": [1, "2"],
    "data.bet": [1, "1"],
    "data.allBetAmount": [0, 1],
    "data.balanceUpdateDelay": [0, 3500, 600000, 1.5],
    "time": [0, 1663249396, 1663249721934, 10**11, 10**14],
}


@st.composite
def mutations(draw):
    """1 to 4 (dotted path, new value or DELETE) pairs; plausible values, half of them, reach
    settlement, duplicates and conflicts."""
    changes = []
    for path in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4)):
        how = draw(st.sampled_from(["plausible", "plausible", "hostile", "delete"]))
        if how == "plausible" and path in PLAUSIBLE:
            changes.append((path, draw(st.sampled_from(PLAUSIBLE[path]))))
        else:
            changes.append((path, DELETE if how == "delete" else draw(VALUES)))
    return changes


def mutate(template, changes):
    data = copy.deepcopy(template)
    for path, value in changes:
        *parents, leaf = path.split(".")
        target = data
        for key in parents:
            target = target.get(key) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            continue  # an earlier change replaced the parent
        if value is DELETE:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return data


# --- raw bodies --------------------------------------------------------------------------

CONTENT_TYPES = st.sampled_from([
    "application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
    "application/problem+json", "APPLICATION/JSON", "text/plain", "text/json", "application/jsonx",
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", None,
])
JUNK = st.sampled_from([
    b"\xff", b"\xfe\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xef\xbb\xbf", b"}", b"]", b",",
    b'"', b"\\", b"NaN", b"nan", b"+1", b"01", b".5", b"0x10", b"\n", b"//", b"/*", b"'",
])


@st.composite
def broken_bytes(draw, valid):
    """Random bytes, or a valid body truncated, spliced with junk, or with a key twice."""
    raw = dumps(valid).encode()
    how = draw(st.sampled_from(["random", "truncate", "splice", "duplicate", "encoding"]))
    if how == "random":
        return draw(st.binary(max_size=300))
    if how == "truncate":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if how == "splice":
        at = draw(st.integers(0, len(raw)))
        cut = draw(st.integers(0, 3))
        return raw[:at] + draw(JUNK) + raw[at + cut:]
    if how == "duplicate":
        key = draw(st.sampled_from(['"type": ', '"bet": ', '"payout": ', '"id": ', '"amount": ',
                                    '"currency": ', '"reference": ', '"playerId": ']))
        if key.encode() not in raw:
            return raw + b"{"
        return raw.replace(key.encode(), key.encode() + b'"0", ' + key.encode(), 1)
    encoding = draw(st.sampled_from(["utf-16", "utf-32", "latin-1", "utf-8-sig"]))
    return dumps(valid).replace("player-42", "plåyer-42").encode(encoding)


# --- checks ------------------------------------------------------------------------------


def check_answer(response):
    """Never a 5xx, always JSON; a 4xx says what went wrong in "error" and "message"."""
    assert response.status_code < 500, (response.status_code, response.data[:300])
    assert response.is_json, (response.status_code, response.data[:300])
    answer = response.get_json()
    if response.status_code >= 400:
        assert isinstance(answer, dict), answer
        assert isinstance(answer.get("error"), str) and answer["error"], answer
        assert isinstance(answer.get("message"), str) and answer["message"], answer
    return answer


def audit_count(wallet):
    return query(wallet.database, "SELECT count(*) FROM callbacks")[0][0]


def check_callback(wallet, response, before, audited_before):
    """After a callback: only an answered 200 may move money; no wallet is ever created."""
    answer = check_answer(response)
    after = wallet.books()  # asserts balance = ledger sum and never negative
    assert after["wallets"].keys() == before["wallets"].keys()
    assert after["operations"] == before["operations"]
    if response.status_code != 200:
        assert after == before, (response.status_code, answer)
    elif answer == {"result": False}:
        assert (after["wallets"], after["ledger"]) == (before["wallets"], before["ledger"])
    assert audit_count(wallet) == audited_before + 1  # every answered callback is kept
    return answer


@pytest.fixture
def seeded(make_app):
    """A funded wallet in two currencies, an open game, a settled one and a declined one."""
    app = make_app()
    wallet = Wallet(app.test_client(), app)
    assert wallet.deposit("1000000.00").status_code == 201
    assert wallet.deposit("50.00", currency="EUR").status_code == 201
    assert wallet.deposit("5.00", player="player-43").status_code == 201
    assert wallet.start(game_id="open-1").json == {"result": True}
    assert wallet.start(game_id="won-1").json == {"result": True}
    assert wallet.finish(game_id="won-1").status_code == 200
    assert wallet.start(game_id="declined-1", bet=100, player="player-43").json == {"result": False}
    return wallet


# --- the callback endpoint ---------------------------------------------------------------


def test_random_json_bodies_never_5xx_and_move_nothing(seeded):
    @FUZZ
    @given(VALUES)
    def check(payload):
        before, audited = seeded.books(), audit_count(seeded)
        response = seeded.callback(dumps(payload).encode())
        check_callback(seeded, response, before, audited)
        assert seeded.books() == before  # random JSON is never a valid start or finish

    check()


@pytest.mark.parametrize("template", ["start", "finish"])
def test_mutated_callbacks_never_5xx_and_keep_the_books(seeded, template):
    @FUZZ
    @given(mutations(), st.sampled_from(["fresh", "open", "refunded", "settled"]))
    def check(changes, game_state):
        game_id = fresh("m")
        if game_state != "fresh":  # a game the mutated callback can settle, repeat or conflict with
            assert seeded.start(game_id=game_id).json == {"result": True}
        if game_state == "refunded":
            assert seeded.client.post(f"/api/games/{game_id}/refund", headers=seeded.admin).status_code == 200
        if game_state == "settled":
            assert seeded.finish(game_id=game_id).json == {}
        base = body(START if template == "start" else FINISH, **{"game.id": game_id})
        payload = mutate(base, changes)
        before, audited = seeded.books(), audit_count(seeded)
        check_callback(seeded, seeded.callback(dumps(payload).encode()), before, audited)

    check()


def test_callbacks_load_alike_on_the_hot_path_and_through_schema_load():
    """schemas._load_valid (the loop that loads plainly valid callbacks) returns only what
    Schema.load returns for the same body, and never accepts a body Schema.load refuses."""

    one_leaf = st.tuples(st.sampled_from(FIELDS), st.one_of(LEAVES, ODD_STRINGS, *map(st.sampled_from, PLAUSIBLE.values())))

    @settings(max_examples=800, deadline=None, suppress_health_check=SLOW_IS_FINE)
    @given(st.sampled_from([START, FINISH]), st.one_of(mutations(), one_leaf.map(lambda change: [change])))
    def check(template, changes):
        try:
            payload = schemas.parse_json(dumps(mutate(template, changes)).encode())
        except refusals.ApiError:
            return  # not JSON the service parses
        if not isinstance(payload, dict):
            return
        schema = schemas.callback_schema if payload.get("type") in schemas.HANDLED_TYPES else schemas.envelope_schema
        try:
            expected = schema.load(payload)
        except ValidationError:
            expected = None
        try:
            loaded = schemas._load_valid(schema, payload)
        except (schemas._NotPlain, ValidationError):
            return  # left to Schema.load
        assert expected is not None, payload
        assert loaded == expected, payload

    check()


def test_broken_bytes_and_content_types_never_5xx_and_move_nothing(seeded):
    @FUZZ
    @given(st.sampled_from([START, FINISH]).flatmap(broken_bytes), CONTENT_TYPES)
    def check(raw, content_type):
        before, audited = seeded.books(), audit_count(seeded)
        response = seeded.callback(raw, content_type=content_type)
        answer = check_callback(seeded, response, before, audited)
        if content_type is None or "json" not in content_type.lower():
            assert response.status_code == 415, answer

    check()


def test_oversize_bodies_get_413_and_move_nothing(seeded):
    @FEW
    @given(st.integers(LIMIT + 1, 3 * LIMIT), st.sampled_from(["callback", "deposits", "withdrawals"]),
           st.sampled_from(["json", "padding", "bytes"]))
    def check(size, target, shape):
        if shape == "json":  # a valid body made too large by an unknown field
            template = START if target == "callback" else {"currency": "USD", "amount": "1", "reference": "r"}
            payload = dumps({**template, "pad": "x" * size}).encode()
        elif shape == "padding":
            payload = dumps(START).encode() + b" " * size
        else:
            payload = b"\xff" * size
        before = seeded.books()
        if target == "callback":
            response = seeded.callback(payload)
        else:
            response = seeded.client.post(f"/api/players/player-42/{target}", headers=seeded.admin,
                                          data=payload, content_type="application/json")
        assert response.status_code == 413, response.status_code
        assert check_answer(response)["error"] == "request_entity_too_large"
        assert seeded.books() == before

    check()


# --- the operator API --------------------------------------------------------------------

SEGMENTS = st.one_of(
    st.sampled_from(["player-42", "player-43", "open-1", "won-1", "declined-1", "USD", "EUR",
                     "nobody", "p" * 300, " ", ".", "..", "%", "a/b", "a?b=c", "a#b", "é"]),
    st.text(min_size=1, max_size=20),
)


QUERY_TEXT = st.one_of(STRINGS, st.sampled_from([
    "0", "1", "-1", "500", "501", "1e3", "1.5", "999999999999999999", "2022-09-15",
    "2022-09-15T12:00:00", "2022-09-15T12:00:00+14:00", "0001-01-01", "9999-12-31T23:59:59",
    "0001-01-01T00:00:00+14:00", "open", "won", "lost", "refunded", "declined", "accepted",
    "invalid", "ignored", "start", "finish", "USD", "9" * 30, "\u00b2", "9" * 5000,
]))


def b64(raw):
    return base64.urlsafe_b64encode(raw).decode()


CURSOR_PARTS = st.one_of(st.integers(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=10),
                         st.floats(allow_nan=False), st.none(), st.booleans())
CURSORS = st.one_of(
    st.sampled_from([b'[1, "\\ud800"]', b'["\\udfff"]', b"[" * 100_000, b"[" * 990 + b"]" * 990]).map(b64),
    st.lists(st.one_of(CURSOR_PARTS, st.lists(CURSOR_PARTS, max_size=2)), max_size=3)
    .map(lambda key: b64(json.dumps(key).encode())),
    st.dictionaries(st.text(max_size=3), CURSOR_PARTS, max_size=2).map(lambda key: b64(json.dumps(key).encode())),
    st.binary(max_size=20).map(b64),
    st.text(max_size=20),
    st.sampled_from(["", "=", "====", "!!", "e30", "W10", "W10=", "WyJ4Il0", "WzEsMl0="]),
)
QUERY_KEYS = st.sampled_from(["limit", "cursor", "status", "player_id", "since", "outcome", "type",
                              "game_id", "currency", "unknown", ""])
QUERY = st.one_of(
    st.lists(st.tuples(QUERY_KEYS, st.one_of(QUERY_TEXT, CURSORS)), max_size=4)
    .map(lambda pairs: urllib.parse.urlencode(pairs)),
    st.text(alphabet="abcdefghilmnoprstuy_=&%;+0123456789fFzZ", max_size=40),  # broken escapes too
)


def quote(segment):
    return urllib.parse.quote(segment, safe="")


@st.composite
def operator_requests(draw):
    """(method, url, client keyword arguments, whether a correct request may move money)."""
    kind = draw(st.sampled_from(["movement", "movement", "refund", "balances", "game", "list", "reconcile"]))
    if kind == "movement":
        player = draw(st.one_of(st.just("player-42"), st.just("player-43"), SEGMENTS))
        movement = {"currency": "USD", "amount": "1.50", "reference": fresh("ref")}
        shape = draw(st.sampled_from(["mutated", "mutated", "random", "bytes"]))
        if shape == "mutated":
            plausible = st.sampled_from(["USD", "EUR", "BTC", "1", "0.01", "1e-3", "5e2", 2.675, 10**11])
            changes = draw(st.lists(st.tuples(
                st.sampled_from(["currency", "amount", "reference", "extra"]),
                st.one_of(plausible, plausible, VALUES, st.just(DELETE))), max_size=3))
            raw = dumps(mutate(movement, changes)).encode()
        elif shape == "random":
            raw = dumps(draw(VALUES)).encode()
        else:
            raw = draw(broken_bytes(movement))
        url = f"/api/players/{quote(player)}/{draw(st.sampled_from(['deposits', 'withdrawals']))}"
        content_type = draw(st.one_of(st.just("application/json"), CONTENT_TYPES))
        return "POST", url, {"data": raw, "content_type": content_type}, True
    if kind == "refund":
        game_id = draw(st.one_of(st.sampled_from(["open-1", "won-1", "declined-1", "nope"]), SEGMENTS))
        return "POST", f"/api/games/{quote(game_id)}/refund", {}, True
    if kind == "balances":
        url = f"/api/players/{quote(draw(SEGMENTS))}/balances"
        if draw(st.booleans()):
            url += "/" + quote(draw(SEGMENTS))
        return "GET", url, {}, False
    if kind == "game":
        return "GET", f"/api/games/{quote(draw(SEGMENTS))}", {}, False
    if kind == "reconcile":
        return "GET", "/api/reconcile", {"query_string": draw(QUERY)}, False
    path = draw(st.sampled_from(["/api/games", "/api/callbacks", "/api/players/player-42/ledger"]))
    return "GET", path, {"query_string": draw(QUERY)}, False


def test_operator_api_never_5xx_and_moves_nothing_on_bad_input(seeded):
    @FUZZ
    @given(operator_requests())
    def check(request):
        method, url, kwargs, may_move = request
        before = seeded.books()
        response = seeded.client.open(url, method=method, headers=seeded.admin, **kwargs)
        answer = check_answer(response)
        after = seeded.books()  # asserts balance = ledger sum and never negative
        if not (may_move and response.status_code in (200, 201)):
            assert after == before, (response.status_code, answer)

    check()


def test_list_endpoints_follow_and_refuse_cursors_without_5xx(seeded):
    """Real cursors work; a real cursor cut, extended or with one character changed is a 400 or works."""
    for index in range(3):
        seeded.deposit("1.00", reference=f"page-{index}")
    paths = ["/api/games", "/api/callbacks", "/api/players/player-42/ledger"]
    cursors = {path: seeded.client.get(path, headers=seeded.admin, query_string={"limit": 1}).json["next_cursor"]
               for path in paths}
    assert all(cursors.values())

    @FUZZ
    @given(st.sampled_from(paths), st.data())
    def check(path, data):
        cursor = cursors[path]
        at = data.draw(st.integers(0, len(cursor)))
        edit = data.draw(st.sampled_from(["cut", "extend", "replace"]))
        char = data.draw(st.sampled_from("AZaz09-_=+/%"))
        cursor = {"cut": cursor[:at], "extend": cursor[:at] + char + cursor[at:],
                  "replace": cursor[:at] + char + cursor[at + 1:]}[edit]
        response = seeded.client.get(path, headers=seeded.admin, query_string={"cursor": cursor, "limit": 1})
        check_answer(response)
        assert response.status_code in (200, 400), response.status_code

    check()


# --- who may call ------------------------------------------------------------------------


# Characters a client can put in a URL (percent-encoded as UTF-8): st.characters() alone also
# draws lone surrogates (U+D800-U+DFFF), which no client can encode, so a test drawing one fails
# in urllib, not in the service. st.text() never draws them.
URL_CHARACTERS = st.characters(exclude_categories=["Cs"])


def _token_variants(token):
    """The real token truncated, extended, case-changed or with one character changed."""
    return st.one_of(
        st.integers(0, len(token) - 1).map(lambda n: token[:n]),
        st.text(min_size=1, max_size=3).map(lambda extra: token + extra),
        st.text(min_size=1, max_size=3).map(lambda extra: extra + token),
        st.just(token.upper()), st.just(token.swapcase()), st.just(token.title()),
        st.tuples(st.integers(0, len(token) - 1), URL_CHARACTERS).map(
            lambda edit: token[: edit[0]] + edit[1] + token[edit[0] + 1:]),
        st.text(max_size=40),
        st.just(ADMIN_TOKEN if token == CALLBACK_TOKEN else CALLBACK_TOKEN),
    ).filter(lambda guess: guess != token)


def test_wrong_callback_tokens_are_refused_and_move_nothing(seeded):
    @FUZZ
    @given(_token_variants(CALLBACK_TOKEN), st.sampled_from(["start", "finish"]))
    def check(token, kind):
        before, audited = seeded.books(), audit_count(seeded)
        template, game_id = (START, fresh("t")) if kind == "start" else (FINISH, "open-1")
        payload = body(template, **{"game.id": game_id})
        response = seeded.client.post(f"/callback/{quote(token)}", json=payload)
        check_answer(response)
        assert 400 <= response.status_code < 500, response.status_code
        assert seeded.books() == before
        assert audit_count(seeded) == audited  # refused callers are not kept

    check()


HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=40)


def test_wrong_admin_tokens_are_refused_and_move_nothing(seeded):
    headers = st.one_of(
        _token_variants(ADMIN_TOKEN).filter(lambda guess: guess.strip() != ADMIN_TOKEN)
        .map(lambda guess: f"Bearer {guess}"),
        st.sampled_from(["Basic", "Token", "Bearer:", "Bearer\t", "Bear", ""])
        .map(lambda scheme: f"{scheme} {ADMIN_TOKEN}"),
        HEADER_TEXT,
    ).filter(lambda header: all(32 <= ord(char) <= 255 and char != "\x7f" for char in header))

    @FUZZ
    @given(headers, st.sampled_from(["deposit", "withdraw", "refund", "balance", "list"]))
    def check(header, action):
        before = seeded.books()
        auth = {"Authorization": header}
        movement = {"currency": "USD", "amount": "1", "reference": fresh("r")}
        player = "/api/players/player-42"
        response = {
            "deposit": lambda: seeded.client.post(f"{player}/deposits", headers=auth, json=movement),
            "withdraw": lambda: seeded.client.post(f"{player}/withdrawals", headers=auth, json=movement),
            "refund": lambda: seeded.client.post("/api/games/open-1/refund", headers=auth),
            "balance": lambda: seeded.client.get("/api/players/player-42/balances/USD", headers=auth),
            "list": lambda: seeded.client.get("/api/callbacks", headers=auth),
        }[action]()
        assert response.status_code == 401, (header, response.status_code)
        assert check_answer(response)["error"] == "unauthorized"
        assert seeded.books() == before

    check()


ALLOWED = "203.0.113.0/24, 2001:db8::/64"
NETWORKS = [ipaddress.ip_network(item.strip()) for item in ALLOWED.split(",")]
HOPS = st.one_of(
    st.sampled_from(["203.0.113.7", "203.0.113.255", "198.51.100.1", "10.0.0.2", "127.0.0.1",
                     "2001:db8::1", "2001:db8:0:1::1", "::1", "::ffff:203.0.113.7"]),
    st.ip_addresses().map(str),
    st.sampled_from(["unknown", "not-an-ip", "203.0.113.7:443", "[2001:db8::1]", "203.0.113", "_hidden"]),
)


def _allowed(address):
    try:
        client = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(client in network for network in NETWORKS)


@pytest.mark.parametrize("trusted", [0, 1, 2])
def test_allow_list_believes_exactly_the_trusted_forwarded_hops(make_app, trusted):
    """With N trusted proxies, the Nth X-Forwarded-For entry from the right is the client,
    if there are that many; otherwise (and always with 0) the socket's address is."""
    app = make_app(CALLBACK_ALLOWED_IPS=ALLOWED, TRUSTED_PROXIES=str(trusted))
    wallet = Wallet(app.test_client(), app)
    wallet.deposit("1000.00")

    @FUZZ
    @given(HOPS, st.lists(HOPS, max_size=4), st.booleans())
    def check(remote, hops, send_header):
        client = remote
        if trusted and send_header and len(hops) >= trusted:
            client = hops[-trusted]
        headers = {"X-Forwarded-For": ", ".join(hops), "X-Real-IP": "203.0.113.7",
                   "Forwarded": "for=203.0.113.7"} if send_header else {}
        before = wallet.books()
        response = wallet.start(game_id=fresh("ip"), request={"environ_base": {"REMOTE_ADDR": remote},
                                                               "headers": headers})
        check_answer(response)
        if _allowed(client):
            assert (response.status_code, response.json) == (200, {"result": True}), (remote, hops)
        else:
            assert (response.status_code, response.json["error"]) == (403, "forbidden"), (remote, hops)
            assert wallet.books() == before

    check()


# --- regressions: each of these was a 500 ------------------------------------------------


def _refused(response):
    """A 400 with the JSON error body."""
    assert response.status_code == 400, (response.status_code, response.data[:200])
    assert response.json["error"] in ("validation_error", "malformed_json"), response.json


@pytest.mark.parametrize("target", ["deposit", "game.bet", "game.payout", "data.balanceUpdateDelay"])
def test_numeric_string_with_an_exponent_beyond_decimal_limits_is_not_a_500(seeded, target):
    """decimal.Decimal() of a numeric *string* past the decimal module's exponent limits
    raises InvalidOperation: it must be an invalid amount."""
    huge = "1e99999999999999999999"
    if target == "deposit":
        response = seeded.client.post("/api/players/player-42/deposits", headers=seeded.admin,
                                      json={"currency": "USD", "amount": huge, "reference": "r"})
    else:
        response = seeded.callback(body(START if target == "game.bet" else FINISH,
                                        **{"game.id": "open-1", target: huge}))
    _refused(response)


@pytest.mark.parametrize("path", ["/api/games", "/api/callbacks", "/api/players/player-42/ledger"])
def test_cursor_with_an_integer_beyond_64_bits_is_not_a_500(seeded, path):
    """SQLite cannot bind an integer beyond 64 bits (OverflowError)."""
    key = [10**30, "g"] if path == "/api/games" else [10**30]
    cursor = b64(json.dumps(key).encode())
    response = seeded.client.get(path, headers=seeded.admin, query_string={"cursor": cursor})
    _refused(response)


@pytest.mark.parametrize("path", ["/api/games", "/api/callbacks", "/api/players/player-42/ledger"])
def test_cursor_nested_deeply_is_not_a_500(seeded, path):
    """Decoding it raises RecursionError, not ValueError."""
    response = seeded.client.get(path, headers=seeded.admin, query_string={"cursor": b64(b"[" * 100_000)})
    _refused(response)


def test_cursor_with_a_lone_surrogate_is_not_a_500(seeded):
    """The game id of a /api/games cursor may be "\\ud800": SQLite cannot bind it."""
    response = seeded.client.get("/api/games", headers=seeded.admin,
                                 query_string={"cursor": b64(b'[1, "\\ud800"]')})
    _refused(response)


@pytest.mark.parametrize("since", ["9" * 30, "\u00b2", "9" * 5000],
                         ids=["beyond-64-bits", "superscript-two", "5000-digits"])
def test_since_that_is_not_a_small_ascii_number_is_not_a_500(seeded, since):
    """'²' is a digit to str.isdigit() but not to int(); 4300+ digits pass int()'s limit;
    30 digits overflow SQLite."""
    _refused(seeded.client.get("/api/games", headers=seeded.admin, query_string={"since": since}))


def test_deeply_nested_label_is_not_a_500(seeded):
    """Nesting just shallower than the JSON parser's recursion limit parsed, then made
    the audit label's json.dumps raise RecursionError; now anything past 64 levels is refused."""
    template = json.dumps(body(START, **{"game.id": "open-1", "type": "@"}))
    for depth in (600, 900, 990):
        payload = template.replace('"@"', "[" * depth + "]" * depth)
        _refused(seeded.callback(payload.encode()))


def test_nesting_is_refused_beyond_64_levels(seeded):
    """roundData is free-form: 64 levels deep (counting the body itself) is a callback, 65 is not."""
    template = json.dumps(body(START, **{"game.id": "@id", "roundData": "@"}))
    deep = {depth: template.replace('"@"', "[" * (depth - 1) + "]" * (depth - 1)) for depth in (64, 65)}
    accepted = seeded.callback(deep[64].replace("@id", fresh("deep")).encode())
    assert (accepted.status_code, accepted.json) == (200, {"result": True})
    refused = seeded.callback(deep[65].replace("@id", fresh("deep")).encode())
    assert (refused.status_code, refused.json["error"]) == (400, "malformed_json")
    assert "nested more than 64 deep" in refused.json["message"]


@pytest.mark.parametrize("field", ["type", "session.playerId", "session.currency", "game.id", "game.round"])
def test_lone_surrogate_escape_is_not_a_500(seeded, field):
    """JSON allows "\\ud800"; json.loads makes it a lone surrogate, which SQLite cannot bind
    (in the audit row for "type", in the settlement for the rest)."""
    payload = json.dumps(body(START, **{"game.id": fresh("s"), field: "@"})).replace('"@"', '"x\\ud800"')
    _refused(seeded.callback(payload.encode()))


@pytest.mark.parametrize("field", ["currency", "reference"])
def test_lone_surrogate_escape_in_a_movement_is_not_a_500(seeded, field):
    payload = json.dumps({"currency": "USD", "amount": "1", "reference": fresh("r"), field: "@"})
    response = seeded.client.post("/api/players/player-42/deposits", headers=seeded.admin,
                                  data=payload.replace('"@"', '"x\\udfff"'), content_type="application/json")
    _refused(response)
