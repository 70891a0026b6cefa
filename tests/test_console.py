"""The operator's console through Flask's test client, on both engines: its gate (sign-in,
cookie, CSRF, idle expiry, slowing wrong tokens, headers), its actions with the operator's
note on the ledger, escaping, and the reads it adds to the books (tests/test_console_browser.py
drives the same pages in a real Chromium)."""

import csv
import html
import io
import logging
import re
import time

import pytest

import db
from harness.samples import ADMIN_TOKEN
from money import books
from tests.support import execute, forget_stores, query

SECRET = "console-secret-for-tests"
EVIL = "<img src=x onerror=alert(1)>"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def console_app(make_app):
    return make_app(SECRET_KEY=SECRET)


@pytest.fixture
def console(console_app):
    return Console(console_app.test_client())


class Console:
    """A browser's view of the console: the cookie jar of a test client, and its forms."""

    def __init__(self, client):
        self.client = client
        self.csrf = None

    def get(self, path, **kwargs):
        response = self.client.get(path, **kwargs)
        found = CSRF.search(response.get_data(as_text=True))
        if found:
            self.csrf = found.group(1)
        return response

    def post(self, path, data, csrf=True):
        return self.client.post(path, data={**data, **({"csrf_token": self.csrf} if csrf else {})})

    def sign_in(self, name="ann", token=ADMIN_TOKEN):
        self.get("/console/sign-in")
        return self.post("/console/sign-in", {"name": name, "token": token})


def signed_in(console):
    response = console.sign_in()
    assert response.status_code == 302 and response.headers["Location"] == "/console/", response.text
    console.get("/console/")
    return console


def test_without_a_secret_key_the_console_is_off_and_the_start_says_so(make_app, caplog):
    with caplog.at_level(logging.INFO):
        app = make_app()
    said = [record.getMessage() for record in caplog.records if "console" in record.getMessage()]
    assert said == ["the operator's console (/console/) is off: set SECRET_KEY (and ADMIN_TOKEN) to turn it on"]
    response = app.test_client().get("/console/sign-in")
    assert response.status_code == 404
    assert "set SECRET_KEY" in response.text
    assert "Set-Cookie" not in response.headers
    # With SECRET_KEY but no ADMIN_TOKEN there is nothing to sign in with: off too.
    response = make_app(SECRET_KEY=SECRET, ADMIN_TOKEN=None).test_client().get("/console/sign-in")
    assert response.status_code == 404 and "ADMIN_TOKEN" in response.text


def test_every_page_needs_signing_in(console):
    for path in ("/console/", "/console/players?q=a", "/console/players/p", "/console/games", "/console/games/g",
                 "/console/attention", "/console/reports", "/console/reports.csv"):
        response = console.get(path)
        assert response.status_code == 302 and response.headers["Location"] == "/console/sign-in", path


def test_the_session_cookie_is_signed_http_only_strict_and_secure_unless_said_otherwise(make_app):
    for settings, secure in (({}, True), ({"CONSOLE_INSECURE_COOKIE": "1"}, False)):
        response = Console(make_app(SECRET_KEY=SECRET, **settings).test_client()).sign_in()
        cookie = response.headers["Set-Cookie"]
        assert cookie.startswith("wallet_console=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "Path=/console/" in cookie and "Expires=" in cookie
        assert ("Secure" in cookie.split("; ")) is secure
        # Over plain HTTP a Secure cookie would not come back: the form says how to go on.
        page = make_app(SECRET_KEY=SECRET, **settings).test_client().get("/console/sign-in").text
        assert ('id="plain-http"' in page) is secure


def test_a_cookie_signed_with_another_key_is_no_session(make_app, console):
    other = Console(make_app(SECRET_KEY="another key").test_client())
    other.sign_in()
    forged = other.client.get_cookie("wallet_console", path="/console/").value
    console.client.set_cookie("wallet_console", forged, path="/console/")
    assert console.get("/console/").status_code == 302


def test_the_token_goes_in_a_posted_form_never_a_url(console):
    response = console.get(f"/console/sign-in?token={ADMIN_TOKEN}&name=ann")
    assert response.status_code == 200 and "Sign in" in response.text
    assert console.get("/console/").status_code == 302


def test_wrong_tokens_are_slowed_down(console):
    assert console.sign_in(token="wrong").status_code == 401
    response = console.sign_in()  # the right one, at once: still refused, without trying it
    assert response.status_code == 429 and "wait" in response.text
    assert console.get("/console/").status_code == 302
    time.sleep(1.05)
    assert console.sign_in().status_code == 302


def test_headers_forbid_scripts_other_hosts_and_frames(console):
    signed_in(console)
    for path in ("/console/sign-in", "/console/", "/console/games/none"):
        headers = console.get(path).headers
        policy = headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        assert "script-src" not in policy and "unsafe-inline" not in policy and "http" not in policy
        assert headers["X-Frame-Options"] == "DENY" and headers["Referrer-Policy"] == "no-referrer"


def test_a_post_without_the_csrf_token_changes_nothing(console, wallet):
    wallet.deposit("5.00")
    assert wallet.start("g-open").json == {"result": True}
    signed_in(console)
    for data in ({}, {"csrf_token": "forged"}):
        response = console.client.post("/console/refunds", data={"game": "g-open", "note": "stuck", **data})
        assert response.status_code == 400 and "CSRF" in response.text
        response = console.client.post("/console/players/player-42/movements", data={
            "kind": "deposit", "currency": "USD", "amount": "1", "reference": "r", "note": "n", **data})
        assert response.status_code == 400
    assert wallet.balance() == "4.00"
    assert query(wallet.database, "SELECT status FROM games") == [("open",)]
    # Signing out is a form too: without the token the session stays.
    assert console.client.post("/console/sign-out").status_code == 400
    assert console.get("/console/").status_code == 200
    assert console.post("/console/sign-out", {}).status_code == 302
    assert console.get("/console/").status_code == 302


def test_an_idle_session_is_signed_out(console):
    signed_in(console)
    with console.client.session_transaction("/console/") as session:
        session["seen"] -= 31 * 60
    response = console.get("/console/")
    assert response.status_code == 302 and response.headers["Location"] == "/console/sign-in"


def test_a_refund_and_a_deposit_carry_the_operator_and_the_reason(console, wallet, client):
    wallet.deposit("5.00")
    assert wallet.start("g-open", bet=2).json == {"result": True}
    signed_in(console)
    assert console.get("/console/refunds?game=g-open").status_code == 200
    assert console.post("/console/refunds", {"game": "g-open", "note": ""}).status_code == 400  # a reason is needed
    assert wallet.balance() == "3.00"
    response = console.post("/console/refunds", {"game": "g-open", "note": "provider  never finished"})
    assert response.status_code == 302 and response.headers["Location"] == "/console/games/g-open"
    assert "refunded 2.00 USD" in console.get("/console/games/g-open").text
    assert wallet.balance() == "5.00"
    console.post("/console/refunds", {"game": "g-open", "note": "again"})  # a repeat moves nothing
    assert wallet.balance() == "5.00"

    console.get("/console/players/player-42")
    move = {"kind": "withdrawal", "currency": "USD", "amount": "1.25", "reference": "desk-1", "note": "cash out"}
    assert console.post("/console/players/player-42/movements", move).status_code == 302
    assert console.post("/console/players/player-42/movements", move).status_code == 302  # the same reference
    assert wallet.balance() == "3.75"
    refused = console.post("/console/players/player-42/movements", {**move, "amount": "2"})
    assert "already used" in console.get(refused.headers["Location"]).text
    assert wallet.balance() == "3.75"
    too_much = console.post("/console/players/player-42/movements", {**move, "amount": "99", "reference": "desk-2"})
    assert "cannot withdraw" in console.get(too_much.headers["Location"]).text

    ledger = client.get("/api/players/player-42/ledger", headers=wallet.admin).json["entries"]
    assert [(row["kind"], row["amount"], row["note"]) for row in ledger] == [
        ("withdrawal", "-1.25", "console ann: cash out"),
        ("refund", "2.00", "console ann: provider never finished"),
        ("bet", "-2.00", None),
        ("deposit", "5.00", None),
    ]
    page = console.get("/console/players/player-42").text
    assert "console ann: cash out" in page and "console ann: provider never finished" in page


def test_every_id_is_text_never_markup(console, wallet):
    wallet.deposit("5.00", player=EVIL)
    assert wallet.start(f"{EVIL}-game", player=EVIL, **{"session.gameId": EVIL}).json == {"result": True}
    signed_in(console)
    pages = [console.get(f"/console/players?q={EVIL[:4]}"), console.get("/console/games"),
             console.get("/console/attention?older_than=0"), console.get("/console/reports?by_game=1"),
             console.get("/console/"), console.get("/console/refunds?game=" + EVIL + "-game")]
    player = console.client.get("/console/players/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")
    game = console.client.get("/console/games/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E-game")
    for response in (*pages, player, game):
        assert response.status_code == 200, response.text
        assert "<img" not in response.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in player.text and "&lt;img" in game.text
    csv_text = console.get("/console/reports.csv?by_game=1").text
    assert list(csv.reader(io.StringIO(csv_text)))[1][2] == EVIL  # plain text in a CSV: no formula, no markup


def test_a_raw_body_is_shown_as_sent_only_indented(console, wallet):
    raw = b'{"type": "start", "game": {"id": "g-dup", "bet": 2.675, "payout": 1e400}, "game": {"id": "<b>"}}'
    assert wallet.callback(raw).status_code == 400  # a repeated key: refused, kept in the audit
    signed_in(console)
    page = html.unescape(console.get("/console/attention?outcome=invalid").text)
    assert '"bet": 2.675,\n    "payout": 1e400\n  }' in page
    assert page.count('"game": {') == 2 and '"id": "<b>"' in page


def test_bad_console_input_is_a_page_saying_what(console):
    signed_in(console)
    for path in ("/console/reports?since=yesterday", "/console/reports?since=2020-01-01&until=2026-01-01",
                 "/console/attention?older_than=x", "/console/games?status=nope", "/console/games?cursor=xyz",
                 "/console/players/p?cursor=%00", "/console/attention?outcome=accepted"):
        response = console.get(path)
        assert response.status_code == 400, path
        assert response.mimetype == "text/html"


def test_text_no_engine_stores_finds_nothing_and_changes_nothing(console, wallet):
    wallet.deposit("5.00")
    assert wallet.start("g-open").json == {"result": True}
    signed_in(console)
    response = console.get("/console/players?q=player%00")
    assert response.status_code == 200 and "No player" in response.text
    console.get("/console/refunds?game=g-open")
    assert console.post("/console/refunds", {"game": "g-open", "note": "stuck\x00"}).status_code == 400
    assert console.post("/console/refunds", {"game": "g\x00", "note": "stuck"}).status_code == 302
    assert query(wallet.database, "SELECT status FROM games") == [("open",)]


def test_the_database_away_is_a_503_page(app_on, tmp_path):
    console = Console(app_on("postgresql://127.0.0.1:1/nowhere?connect_timeout=1", SECRET_KEY=SECRET).test_client())
    signed_in_response = console.sign_in()  # signing in needs no database
    assert signed_in_response.status_code == 302
    response = console.get("/console/")
    assert response.status_code == 503 and response.mimetype == "text/html"
    assert response.headers["Retry-After"] == "1" and "database is unavailable" in response.text


def test_the_report_adds_up_to_the_reconciliation(console, wallet, client):
    wallet.deposit("100.00")
    for n, (bet, status, payout) in enumerate([(1, "win", 2.5), (2, "lose", 0), (3, None, None), (0.35, "win", 3.3)]):
        assert wallet.start(f"g{n}", bet=bet, **{"session.gameId": "Mines" if n % 2 else "Dice"}).json == {"result": True}
        if status:
            wallet.finish(f"g{n}", status=status, payout=payout, bet=bet, **{"session.gameId": "Mines" if n % 2 else "Dice"})
    client.post("/api/games/g2/refund", headers=wallet.admin)
    signed_in(console)
    totals = client.get("/api/reconcile", headers=wallet.admin).json["totals"]["USD"]
    for by_game in ("", "1"):
        rows = list(csv.DictReader(io.StringIO(console.get(f"/console/reports.csv?by_game={by_game}").text)))
        assert sum(int(row["rounds"]) for row in rows) == 4
        for column, label in (("stakes", "staked"), ("payouts", "paid_out"), ("refunds", "refunded")):
            assert sum(_cents(row[column]) for row in rows) == _cents(totals[label]), column
        assert sum(_cents(row["ggr"]) for row in rows) == _cents(totals["staked"]) - _cents(totals["paid_out"]) - _cents(totals["refunded"])
    assert "The books balance." in console.get("/console/reports?reconcile=1").text


def _cents(text):
    return round(float(text) * 100)


def test_an_earlier_database_gains_the_note_column(database, make_app, wallet):
    wallet.deposit("1.00")
    db.close_all(wallet.app)
    execute(database, "ALTER TABLE ledger DROP COLUMN note")  # as 1.0 made it
    forget_stores()
    app = make_app()
    client = app.test_client()
    entries = client.get("/api/players/player-42/ledger", headers=wallet.admin).json["entries"]
    assert [(row["amount"], row["note"]) for row in entries] == [("1.00", None)]
    assert query(database, "SELECT amount, note FROM ledger") == [(100, None)]


def test_the_last_hour_counts_callbacks_by_outcome(wallet, app):
    wallet.deposit("5.00")
    wallet.start("a")
    wallet.start("a")
    wallet.finish("nope")
    with app.app_context():
        store = db.get_db()
        counts, capped = books.outcomes_since(store, 0)
        assert counts == {"accepted": 1, "duplicate": 1, "conflict": 1} and not capped
        assert books.outcomes_since(store, 2**62) == ({}, False)
        assert books.outcomes_since(store, 0, scan_cap=2) == ({"duplicate": 1, "conflict": 1}, True)
        moments = query(wallet.database, "SELECT id, received_at FROM callbacks ORDER BY id")
        for _, received_at in moments:
            expected = min(callback_id for callback_id, at in moments if at >= received_at)
            assert books.first_callback_since(store, received_at) == expected
        assert books.count_attention(store) == 1


def test_a_win_held_unpaid_is_listed_and_paid_from_its_page_with_the_note(console, wallet, client):
    assert wallet.deposit("9999999999", currency="BTC").status_code == 201  # just under 10^18 minor units
    assert wallet.start("whale", bet=1, currency="BTC").json == {"result": True}
    assert wallet.finish("whale", bet=1, currency="BTC", payout=3).json == {}  # 3 BTC won, 2 BTC of room
    signed_in(console)
    assert "whale" in console.get("/console/attention?outcome=held").text
    page = console.get("/console/games/whale").text
    assert "Pay the win" in page
    assert console.post("/console/games/whale/settle", {"note": "paid"}, csrf=False).status_code == 400
    assert console.post("/console/games/whale/settle", {"note": ""}).status_code == 400  # a reason is needed
    assert wallet.balance(currency="BTC") == "9999999998.00000000"
    response = console.post("/console/games/whale/settle", {"note": "whale ticket 12"})
    assert response.status_code == 302 and response.headers["Location"] == "/console/games/whale"
    assert "paid 2.00000000 BTC; still owed 1.00000000" in console.get("/console/games/whale").text
    assert wallet.balance(currency="BTC") == "10000000000.00000000"
    ledger = client.get("/api/players/player-42/ledger?currency=BTC", headers=wallet.admin).json["entries"]
    assert (ledger[0]["kind"], ledger[0]["amount"], ledger[0]["note"]) == ("payout", "2.00000000", "console ann: whale ticket 12")
    refused = console.post("/console/games/whale/settle", {"note": "again"})  # no room left: nothing moves
    assert "nothing paid" in console.get(refused.headers["Location"]).text
    assert wallet.balance(currency="BTC") == "10000000000.00000000"


def test_a_form_without_a_stated_length_or_awaiting_continue_is_refused_unread(console):
    """A chunked body or an Expect: 100-continue would be read by a serving thread at the
    client's pace; a browser sends neither, so the console refuses both before reading."""
    console.get("/console/sign-in")
    form = f"name=ann&token={ADMIN_TOKEN}&csrf_token={console.csrf}".encode()
    chunked = console.client.post("/console/sign-in", input_stream=io.BytesIO(form),
                                  content_type="application/x-www-form-urlencoded",
                                  headers={"Transfer-Encoding": "chunked"})
    assert chunked.status_code == 411 and "Content-Length" in chunked.text
    waiting = console.client.post("/console/sign-in", data=form, content_type="application/x-www-form-urlencoded",
                                  headers={"Expect": "100-continue"})
    assert waiting.status_code == 411
    assert console.get("/console/").status_code == 302  # still not signed in
    assert console.post("/console/sign-in", {"name": "ann", "token": ADMIN_TOKEN}).status_code == 302


def test_refunding_many_games_at_once_keeps_the_session_cookie_small(console, wallet):
    """The result of each refund rides in the signed session cookie; a selection of 40 is summed
    up in two lines, so the cookie stays within what a browser keeps (4 KB)."""
    wallet.deposit("100.00")
    games = [f"stuck-{n:02d}-{'x' * 40}" for n in range(40)]
    for game_id in games:
        assert wallet.start(game_id, bet=1).json == {"result": True}
    signed_in(console)
    response = console.post("/console/refunds", {"game": games + ["no-such-game"], "note": "provider outage"})
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert len(cookie) < 4096, len(cookie)
    page = console.get(response.headers["Location"]).text
    assert "Refunded 40 of 41 games" in page and "Not refunded: 1 of 41 games" in page
    assert wallet.balance() == "100.00"
