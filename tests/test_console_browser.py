"""The operator's console in a real headless Chromium (Debian's `chromium`, driven by
Playwright), served by a real gunicorn on each engine: sign in, find a player, open a game
and its callbacks, refund a stuck bet, download the CSV, and the CSRF and escaping cases.

A screenshot of each page goes to tests/artifacts/screenshots/ (ignored by git: a run's
pictures, for a person to look at). One browser serves the whole run; each test has a fresh context (no cookies).
"""

import csv
import decimal
import os
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest

from harness.samples import CALLBACK_TOKEN, FINISH, START, body
from tests.support import ENGINES, execute, module_gunicorn

CHROMIUM = os.environ.get("CONSOLE_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parent / "artifacts" / "screenshots"
OPERATOR = "Ann (support desk)"
EVIL = "<img src=x onerror=alert(1)>"
HOUR_MS = 3_600_000


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the run. Outside CI a machine without it skips these tests,
    saying why; under CI=true (.ci/run installs it) it must start."""
    try:
        from playwright.sync_api import sync_playwright

        if not Path(CHROMIUM).exists():
            raise FileNotFoundError(f"{CHROMIUM} (install Debian's chromium package)")
        playwright = sync_playwright().start()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"no Chromium to drive here ({type(exc).__name__}: {exc})")
    try:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    except Exception as exc:
        playwright.stop()
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"Chromium did not start ({type(exc).__name__}: {exc})")
    yield launched
    launched.close()
    playwright.stop()


@pytest.fixture(scope="module", params=ENGINES)
def served(request, tmp_path_factory):
    """A gunicorn with the console on, on each engine, holding the books the tests look at:
    settled games, two bets stuck for two hours, a finish for no game, a refused body, and a
    player whose id (and game and game name) is markup."""
    with module_gunicorn(request, tmp_path_factory, f"console-{request.param}", workers=1,
                         currency_decimals="USD=2,EUR=2", SECRET_KEY="browser-test-secret",
                         CONSOLE_INSECURE_COOKIE="1") as server:
        server.engine = request.param
        server.deposit("player-42", "50.00", reference="fund-42")
        assert server.admin("POST", f"/api/players/{quote(EVIL, safe='')}/deposits",
                            {"currency": "USD", "amount": "10.00", "reference": "fund-evil"})[0] == 201
        for game_id, bet, outcome in (("g-won", 2, ("win", 2.5)), ("g-lost", 1, ("lose", 0)),
                                      ("g-stuck-1", 3, None), ("g-stuck-2", 4, None), ("g-fresh", 1, None)):
            start = body(START, **{"game.id": game_id, "game.bet": bet})
            assert server.callback(start) == (200, {"result": True})
            if outcome:
                finish = body(FINISH, **{"game.id": game_id, "game.bet": bet, "game.status": outcome[0],
                                         "game.payout": outcome[1]})
                assert server.callback(finish) == (200, {})
        assert server.callback(body(START, **{"game.id": f"{EVIL}-game", "session.playerId": EVIL,
                                              "session.gameId": EVIL}))[0] == 200
        assert server.callback(body(FINISH, **{"game.id": "g-ghost"}))[0] == 409
        assert server.request("POST", f"/callback/{CALLBACK_TOKEN}", b'{"type": "start", "game":')[0] == 400
        execute(server.database, "UPDATE games SET started_at = started_at - ? WHERE game_id LIKE 'g-stuck-%'",
                [2 * HOUR_MS])
        yield server


@pytest.fixture
def page(browser, served):
    """A fresh browser context (no cookies) on the served console; fails the test on any
    script dialog or Content-Security-Policy report, which a page that runs nothing never has."""
    context = browser.new_context(base_url=served.url, viewport={"width": 1280, "height": 860},
                                  accept_downloads=True)
    tab = context.new_page()
    problems = []
    tab.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    tab.on("console", lambda message: problems.append(f"console: {message.text}") if message.type == "error" else None)
    yield tab
    context.close()
    assert problems == []


def shot(page, served, name):
    """Keep a picture of the page (from the SQLite run: the PostgreSQL one shows the same pages)."""
    if served.engine == "sqlite":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


def sign_in(page, served):
    page.goto("/console/")
    assert page.url.endswith("/console/sign-in")
    shot(page, served, "sign-in")
    page.fill("input[name=name]", OPERATOR)
    page.fill("input[name=token]", "admin-7d1e-secret")
    page.click("button[type=submit]")
    assert page.url.endswith("/console/")


def api(served, path):
    status, answer = served.admin("GET", path)
    assert status == 200, answer
    return answer


def test_sign_in_overview_player_and_game(page, served):
    sign_in(page, served)
    assert page.locator("h1").inner_text() == "Overview"
    assert ("SQLite file wallet.db" if served.engine == "sqlite" else "PostgreSQL database") in (
        page.locator(".card").first.inner_text())
    assert page.locator("#stale-count").inner_text() == "2"  # the two stuck bets
    assert page.locator("#attention-count").inner_text() == "2"  # the finish for no game, the refused body
    assert page.locator("svg.chart title").text_content() == "Callbacks in the last hour by outcome"
    assert sorted(page.locator("svg.chart text.label").all_text_contents()) == ["accepted", "conflict", "invalid"]
    shot(page, served, "overview")

    page.click("text=Players")
    page.fill("input[name=q]", "player-4")
    page.click("button:has-text('Find')")
    shot(page, served, "players")
    page.click("ul.results >> text=player-42")
    assert page.locator("h1 .id").inner_text() == "player-42"
    assert page.locator("table.wallets td.balance").inner_text() == api(served, "/api/players/player-42/balances/USD")["balance"]
    shot(page, served, "player")

    page.click("table.games >> text=g-won")
    assert page.locator("h1 .id").inner_text() == "g-won"
    callbacks = page.locator("article.callback")
    assert callbacks.count() == 2
    assert '"status": "win"' in callbacks.nth(1).locator("pre").inner_text()  # the body, pretty-printed
    assert "credited 5.00 USD" in callbacks.nth(1).inner_text()  # our reason
    shot(page, served, "game")

    page.click("text=Games")
    page.select_option("select[name=status]", "open")
    page.click("button:has-text('Filter')")
    assert sorted(page.locator("table.games tbody tr td:first-child").all_inner_texts()) == [
        f"{EVIL}-game", "g-fresh", "g-stuck-1", "g-stuck-2"]
    shot(page, served, "games")

    page.click("text=Needs attention")
    assert "g-ghost has no accepted start" in page.locator("article.callback").first.inner_text()
    shot(page, served, "attention")

    page.click("button:has-text('Sign out')")
    page.goto("/console/")
    assert page.url.endswith("/console/sign-in")


def test_refund_a_stuck_bet(page, served):
    sign_in(page, served)
    before = decimal.Decimal(api(served, "/api/players/player-42/balances/USD")["balance"])
    page.click("#stale-count")
    page.click("tr:has-text('g-stuck-1') >> text=Refund…")
    assert page.locator("h1").inner_text() == "Refund 1 bet?"
    page.fill("input[name=note]", "provider never sent the finish")
    shot(page, served, "confirm-refund")
    page.click("button:has-text('Confirm refund')")
    assert page.locator("h1 .status").inner_text() == "refunded"
    assert "refunded 3.00 USD to player-42" in page.locator(".flash").inner_text()
    refund_row = page.locator("table.ledger tbody tr").last
    assert "refund" in refund_row.inner_text()
    assert f"console {OPERATOR}: provider never sent the finish" in refund_row.inner_text()

    page.click("h1 ~ dl >> text=player-42")
    after = decimal.Decimal(page.locator("table.wallets td.balance").inner_text())
    assert after == before + 3
    assert decimal.Decimal(api(served, "/api/players/player-42/balances/USD")["balance"]) == after
    newest = api(served, "/api/players/player-42/ledger?limit=1")["entries"][0]
    assert (newest["kind"], newest["amount"], newest["game_id"]) == ("refund", "3.00", "g-stuck-1")
    first_row = page.locator("table.ledger tbody tr").first.inner_text()
    assert "refund" in first_row and "3.00" in first_row and OPERATOR in first_row
    shot(page, served, "player-after-refund")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    shot(page, served, "player-phone")


def test_the_csv_adds_up_to_the_api(page, served):
    sign_in(page, served)
    page.click("text=Reports")
    shot(page, served, "reports")
    with page.expect_download() as download:
        page.click("#csv")
    rows = list(csv.DictReader(Path(download.value.path()).read_text(encoding="utf-8").splitlines()))
    totals = api(served, "/api/reconcile")["totals"]["USD"]
    money = {column: sum(decimal.Decimal(row[column]) for row in rows if row["currency"] == "USD")
             for column in ("stakes", "payouts", "refunds", "ggr")}
    assert money["stakes"] == decimal.Decimal(totals["staked"])
    assert money["payouts"] == decimal.Decimal(totals["paid_out"])
    assert money["refunds"] == decimal.Decimal(totals["refunded"])
    assert money["ggr"] == money["stakes"] - money["payouts"] - money["refunds"]
    games = api(served, "/api/games?limit=500")["games"]
    assert sum(int(row["rounds"]) for row in rows) == len([game for game in games if game["status"] != "declined"])
    page.click("button:has-text('Run the reconciliation')")
    assert page.locator("#reconciliation").inner_text() == "The books balance."


def test_a_post_without_the_csrf_token_changes_nothing(page, served):
    sign_in(page, served)
    # The browser's own session cookie goes with it; only the form's token is missing or wrong.
    for form in ({"game": "g-stuck-2", "note": "x"}, {"game": "g-stuck-2", "note": "x", "csrf_token": "guess"}):
        answer = page.request.post("/console/refunds", form=form, max_redirects=0)
        assert answer.status == 400 and "CSRF" in answer.text()
    assert api(served, "/api/games/g-stuck-2")["status"] == "open"
    # A form posted from another site carries no cookie at all (SameSite=Strict): sent to sign in.
    other = page.context.browser.new_context()
    try:
        answer = other.request.post(f"{served.url}/console/refunds", form={"game": "g-stuck-2", "note": "x"},
                                    max_redirects=0)
        assert answer.status == 400
    finally:
        other.close()
    assert api(served, "/api/games/g-stuck-2")["status"] == "open"


def test_markup_in_ids_is_shown_as_text(page, served):
    sign_in(page, served)
    page.click("text=Players")
    page.fill("input[name=q]", "<img")
    page.click("button:has-text('Find')")
    page.click("ul.results a")
    assert page.locator("h1 .id").inner_text() == EVIL
    assert page.locator("img").count() == 0
    shot(page, served, "markup-player")
    page.click(f"table.games >> text={EVIL}-game")
    assert page.locator("h1 .id").inner_text() == f"{EVIL}-game"
    assert page.locator("dl.facts").inner_text().count(EVIL) == 2  # the player and the game name
    assert page.locator("img").count() == 0
    page.goto("/console/reports?by_game=1")
    assert EVIL in page.locator("table.report").inner_text()
    assert page.locator("img").count() == 0
