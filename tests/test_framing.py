"""HTTP framing against a real gunicorn, in raw bytes over a socket: what a client can do to a
request before any JSON is parsed.

One gunicorn (2 workers, started as the Procfile does, so it reads gunicorn.conf.py) serves
the module; each test compares the books before and after. Every answer must be JSON, never
a 5xx, and a body is taken whole or refused whole, however it is framed.
"""

import json
import socket
import time
from urllib.parse import quote

import pytest

from harness.samples import ADMIN_TOKEN, CALLBACK_TOKEN, START, body
from tests.support import ENGINES, audit, books, module_gunicorn

LIMIT = 64 * 1024  # MAX_CONTENT_LENGTH
CALLBACK = f"/callback/{CALLBACK_TOKEN}"
ADMIN = f"Authorization: Bearer {ADMIN_TOKEN}"


@pytest.fixture(scope="module", params=ENGINES)
def server(request, tmp_path_factory):
    """`gunicorn --workers 2 app:create_app()` on a fresh database of each engine, with one
    funded player."""
    with module_gunicorn(request, tmp_path_factory, "framing", workers=2) as running:
        running.deposit("player-42", "100.00")
        yield running


@pytest.fixture
def untouched(server):
    """Assert the test moved nothing and crashed nothing: the books are as they were."""
    before = books(server.database)
    yield
    assert books(server.database) == before
    server.assert_healthy()


def chunked(data, size=None):
    """`data` as a chunked body: one chunk, or chunks of `size` bytes."""
    size = size or len(data) or 1
    pieces = [data[at:at + size] for at in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def message(path, framing, data=b"", method="POST", headers=()):
    """A request in bytes. framing: "length" (Content-Length), "chunked" (one chunk),
    "chunks" (1 KiB chunks), or bytes to send as they are after a chunked header."""
    lines = [f"{method} {path} HTTP/1.1", "Host: wallet", "Content-Type: application/json", *headers]
    if framing == "length":
        lines.append(f"Content-Length: {len(data)}")
        payload = data
    else:
        lines.append("Transfer-Encoding: chunked")
        payload = {"chunked": chunked(data), "chunks": chunked(data, 1024)}.get(framing, framing)
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + payload


def start_body(game_id, size=None):
    """A valid start of 1.00 for player-42, padded with spaces (still valid JSON) to `size` bytes."""
    raw = json.dumps(body(START, **{"game.id": game_id})).encode()
    return raw if size is None else raw + b" " * (size - len(raw))


def deposit_body(reference, size=None):
    raw = json.dumps({"currency": "USD", "amount": "5.00", "reference": reference}).encode()
    return raw if size is None else raw + b" " * (size - len(raw))


def last_audit(server):
    return audit(server.database)[-1]


FRAMINGS = ["length", "chunked", "chunks"]


# --- 1. a body past the limit is refused whole, however it is framed --------------------------


@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_callback_past_the_limit_is_refused_whole(server, untouched, framing):
    """The first 64 KiB are a valid start; what follows is junk. Nothing of it is settled."""
    data = start_body(f"big-{framing}", LIMIT) + b"x" * 80_000
    answer = server.raw(message(CALLBACK, framing, data))
    assert answer.status == 413, answer
    assert answer.json["error"] == "request_entity_too_large"
    row = last_audit(server)
    assert (row["outcome"], row["status_code"], row["body"]) == ("invalid", 413, None)


@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_callback_of_exactly_the_limit_is_taken_whole(server, framing):
    answer = server.raw(message(CALLBACK, framing, start_body(f"exact-{framing}", LIMIT)))
    assert (answer.status, answer.json) == (200, {"result": True})
    assert len(last_audit(server)["body"]) == LIMIT
    # ...and one byte more is refused.
    answer = server.raw(message(CALLBACK, framing, start_body(f"over-{framing}", LIMIT + 1)))
    assert answer.status == 413, answer


@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_deposit_past_the_limit_is_refused_whole(server, untouched, framing):
    data = deposit_body(f"big-deposit-{framing}", LIMIT) + b"x" * 80_000
    answer = server.raw(message("/api/players/player-42/deposits", framing, data, headers=[ADMIN]))
    assert answer.status == 413, answer
    assert answer.json["error"] == "request_entity_too_large"


# --- 2. a body that cannot be read is the client's fault: 400, never a 5xx ---------------------

UNREADABLE = [
    ("chunk size not hex", b"zz\r\n{}\r\n0\r\n\r\n"),
    ("chunk size empty", b"\r\n{}\r\n0\r\n\r\n"),
    ("chunk without its CRLF", b"2\r\n{}XX0\r\n\r\n"),
    ("chunk extension invalid", b"2;=\r\n{}\r\n0\r\n\r\n"),
    ("chunked body cut short", b"400\r\n" + start_body("cut-chunk")),
    ("no last chunk", chunked(start_body("no-last-chunk"))[:-5]),
    ("last chunk without the final CRLF", chunked(start_body("no-final-crlf"))[:-2]),
]


@pytest.mark.parametrize("name, payload", UNREADABLE, ids=[name for name, _ in UNREADABLE])
@pytest.mark.parametrize("path, headers", [(CALLBACK, []), ("/api/players/player-42/deposits", [ADMIN])],
                         ids=["callback", "deposit"])
def test_an_unreadable_chunked_body_is_a_400(server, untouched, path, headers, name, payload):
    answer = server.raw(message(path, payload, headers=headers))
    assert answer.status == 400, answer
    assert answer.json["error"] == "unreadable_body" and answer.json["message"]
    if path == CALLBACK:
        row = last_audit(server)
        assert (row["outcome"], row["status_code"], row["body"]) == ("invalid", 400, None)
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("path, headers, data", [
    (CALLBACK, [], start_body("short-length")),
    ("/api/players/player-42/deposits", [ADMIN], deposit_body("short-length")),
], ids=["callback", "deposit"])
def test_a_body_shorter_than_its_content_length_is_a_400(server, untouched, path, headers, data):
    """The client announces more than it sends, then closes its side."""
    request = message(path, "length", data, headers=headers).replace(
        f"Content-Length: {len(data)}".encode(), f"Content-Length: {len(data) + 100}".encode())
    answer = server.raw(request)
    assert answer.status == 400, answer
    assert answer.json["error"] == "unreadable_body"
    assert f"after {len(data)} of the {len(data) + 100} bytes" in answer.json["message"]
    if path == CALLBACK:
        assert (last_audit(server)["outcome"], last_audit(server)["status_code"]) == ("invalid", 400)


def test_a_client_gone_mid_body_is_audited_as_invalid_and_logs_no_error(server, untouched):
    """The provider hangs up halfway through a start: no answer can be sent, nothing moves,
    the audit says why, and nothing is logged as a server error."""
    rows = len(audit(server.database))
    assert server.raw(message(CALLBACK, b"400\r\n" + start_body("gone")), close="all") is None
    deadline = time.monotonic() + 10
    while len(audit(server.database)) == rows and time.monotonic() < deadline:
        time.sleep(0.05)
    row = last_audit(server)
    assert (row["outcome"], row["status_code"], row["body"]) == ("invalid", 400, None)
    assert "could not be read" in row["reason"]
    for marker in ("Traceback", "[ERROR]", "internal_error"):
        assert marker not in server.log()


# --- 8. gunicorn's own refusals answer JSON too ------------------------------------------------

DEPOSIT_HEAD = f"POST /api/players/player-42/deposits HTTP/1.1\r\nHost: wallet\r\n{ADMIN}\r\n"
DEPOSIT = deposit_body("refused-by-gunicorn")
REFUSED = [
    ("two Content-Length headers", 400, f"Content-Length: {len(DEPOSIT)}\r\nContent-Length: {len(DEPOSIT)}\r\n"),
    ("a negative Content-Length", 400, "Content-Length: -1\r\n"),
    ("a Content-Length that is no number", 400, "Content-Length: 1e3\r\n"),
    ("Transfer-Encoding and Content-Length", 400,
     f"Transfer-Encoding: chunked\r\nContent-Length: {len(DEPOSIT)}\r\n"),
    ("chunked twice", 400, "Transfer-Encoding: chunked, chunked\r\n"),
    ("a coding but not chunked", 400, "Transfer-Encoding: gzip\r\n"),
    ("an unknown transfer coding", 400, "Transfer-Encoding: zstd-ish\r\n"),  # gunicorn says 501
    ("two Content-Type headers", 400, "Content-Type: application/json\r\nContent-Type: text/plain\r\n"),
    ("an unmet Expect", 417, "Expect: 200-ok\r\n"),
    ("a header name with a space", 400, "Content Length: 3\r\n"),
    ("a header past 8190 bytes", 431, "X-Pad: " + "x" * 8190 + "\r\n"),
    ("101 headers", 431, "".join(f"X-Pad-{n}: x\r\n" for n in range(101))),
]


@pytest.mark.parametrize("name, status, headers", REFUSED, ids=[name for name, _, _ in REFUSED])
def test_gunicorns_own_refusals_are_json(server, untouched, name, status, headers):
    answer = server.raw((DEPOSIT_HEAD + "Content-Type: application/json\r\n" * ("Content-Type" not in headers)
                         + headers + "\r\n").encode() + DEPOSIT)
    assert answer.status == status, answer
    assert set(answer.json) == {"error", "message"} and answer.json["message"], answer
    assert answer.json["error"] == {400: "bad_request", 417: "expectation_failed",
                                    431: "request_header_fields_too_large"}[status]
    assert answer.headers["connection"] == "close"
    assert "Invalid request from ip=127.0.0.1" in server.log()  # gunicorn still logs each one


@pytest.mark.parametrize("line", [
    b"GET /healthz\r\n",  # no version
    b"get /healthz HTTP/1.1\r\n",  # lower-case method
    b"GET /healthz HTTP/2.7\r\n",
    b"GET healthz HTTP/1.1\r\n",
    b"GET /health\xffz HTTP/1.1\r\n",  # a raw byte that should have been percent-encoded
    b"GET /healthz HTTP/1.1\n",  # bare LF
], ids=["no version", "lower-case method", "HTTP/2.7", "no slash", "raw byte", "bare LF"])
def test_a_malformed_request_line_is_a_json_400(server, untouched, line):
    answer = server.raw(line + b"Host: wallet\r\n\r\n")
    assert answer.status == 400, answer
    assert answer.json["error"] == "bad_request"


def test_the_request_line_limit_is_gunicorns_largest_and_answers_json_414(server, untouched):
    def line_of(length):
        head, tail = "GET /", " HTTP/1.1"
        return (head + "x" * (length - len(head) - len(tail)) + tail).encode()
    assert len(line_of(8190)) == 8190
    fits = server.raw(line_of(8190) + b"\r\nHost: wallet\r\n\r\n")
    assert fits.status == 404 and fits.json["error"] == "not_found"  # through to the app
    too_long = server.raw(line_of(8191) + b"\r\nHost: wallet\r\n\r\n")
    assert too_long.status == 414, too_long
    assert too_long.json == {"error": "request_uri_too_long",
                             "message": "URI Too Long: Request Line is too large (8191 > 8190)"}


def test_the_longest_request_the_api_serves_fits_the_request_line(server):
    """GET /api/games with every filter at its longest: a player id and a cursor holding a game
    id of 255 four-byte characters, percent-encoded. It is longer than gunicorn's default
    limit (4094), which would refuse it."""
    player, game = "🎰" * 255, "🎰" * 255
    for game_id in (game, game[:-1] + "a"):  # declined (the player has no wallet): nothing moves
        start = body(START, **{"game.id": game_id, "session.playerId": player})
        assert server.callback(start) == (200, {"result": False})
    query = f"player_id={quote(player)}&status=declined&since={quote('2000-01-01T00:00:00.000+00:00')}&limit=1"
    status, first = server.admin("GET", f"/api/games?{query}")
    assert status == 200 and first["next_cursor"], first
    line = f"GET /api/games?{query}&cursor={quote(first['next_cursor'])} HTTP/1.1".encode()
    assert 7000 < len(line) <= 8190
    answer = server.raw(line + f"\r\nHost: wallet\r\n{ADMIN}\r\n\r\n".encode())
    assert answer.status == 200, answer
    pages = [first["games"][0]["game_id"], *(each["game_id"] for each in answer.json["games"])]
    assert sorted(pages) == sorted([game, game[:-1] + "a"])


SLOW_CLIENTS = 48


def test_clients_that_never_finish_their_request_stall_nobody(server):
    """Forty-eight connections that send part of a request head and then nothing (the slowloris
    attack) hold no worker: callbacks, reads and /healthz are answered as usual meanwhile."""
    server.deposit("slow-player", "10.00", reference="fund-slow-player")
    slow = []
    try:
        for _ in range(SLOW_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # ...and never the blank line
            slow.append(sock)
        time.sleep(0.5)  # every connection accepted by a worker by now
        for n in range(3):
            # A stalled server answers only when gunicorn's worker timeout (30 s) ends a slow
            # client; 10 s tells that apart from a normal answer on any machine.
            game = body(START, **{"game.id": f"slowloris-{n}", "game.bet": 1, "session.playerId": "slow-player"})
            assert server.request("POST", CALLBACK, game, timeout=10) == (200, {"result": True})
            assert server.request("GET", "/healthz", timeout=10)[0] == 200
            status, wallet = server.request("GET", "/api/players/slow-player/balances/USD",
                                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
            assert status == 200 and wallet["balance"] == f"{9 - n}.00"
    finally:
        for sock in slow:
            sock.close()
    server.assert_healthy()
