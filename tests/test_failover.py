"""The database's failover, with two real PostgreSQL servers: a primary and its streaming
standby (harness/postgres_servers.py), the service given both in one URL with
target_session_attrs=read-write, as docs/postgresql.md tells an operator to.

- synchronous replication: a promotion under traffic loses nothing answered; a standby gone
  turns callbacks into 503s within the COMMIT limit (nothing hangs) and their retries settle once;
- both modes: an old primary that comes back writable gets no write, and books that lost
  answered callbacks (an asynchronous failover) are refused, naming both states;
- a server that cannot be written fails /healthz; the replication mode is logged at start.

How long the 503s last around a promotion is measured by bench/failover_drill.py, not here.
"""

import collections
import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from harness.live import Gunicorn, flask_cli
from harness.postgres_servers import Pair
from harness.samples import CALLBACK_TOKEN, START, body
from tests.support import Wallet, books, query, retrying_providers

import db
from store import postgres

_names = itertools.count(1)


def fresh_database(pair):
    name = f"failover_{next(_names)}"
    pair.create_database(name)
    return name


@pytest.fixture(scope="module")
def shared_pair():
    """One pair for the tests that leave it as they found it: synchronous unless a test says."""
    pair = Pair(synchronous=True)
    yield pair
    pair.close()


@pytest.fixture
def new_pair():
    """Pairs of the test's own, for the tests that promote the standby or stop the primary."""
    made = []

    def make(synchronous):
        made.append(Pair(synchronous=synchronous))
        return made[-1]

    yield make
    for pair in made:
        pair.close()


def until_answered(send, timeout=30, pause=0.1):
    """Send until the answer is not a 503 (the provider retrying); every answer, in order."""
    answers, deadline = [], time.monotonic() + timeout
    while True:
        answers.append(send())
        if answers[-1].status_code != 503:
            return answers
        assert answers[-1].json["error"] == "database_unavailable", answers[-1].json
        assert time.monotonic() < deadline, f"still 503 after {timeout} s: {answers[-1].json}"
        time.sleep(pause)


def started(game, player="player-42"):
    return body(START, **{"game.id": game, "session.playerId": player})


def ledger(url):
    return query(url, "SELECT kind, game_id, amount FROM ledger ORDER BY id")


def messages(caplog, level="ERROR"):
    return [record.getMessage() for record in caplog.records if record.levelname == level]


# --- what the service says of the replication it runs on ------------------------------------


@pytest.mark.parametrize("synchronous", [True, False], ids=["synchronous", "asynchronous"])
def test_the_replication_mode_is_logged_at_start_with_a_warning_when_answers_can_be_lost(
        shared_pair, app_on, caplog, synchronous):
    shared_pair.set_synchronous(synchronous)
    try:
        with caplog.at_level("INFO"):
            app_on(shared_pair.url(fresh_database(shared_pair)))
        lines = [(r.levelname, r.getMessage()) for r in caplog.records if "PostgreSQL replication" in r.getMessage()]
        assert len(lines) == 1, lines
        level, line = lines[0]
        if synchronous:
            assert level == "INFO" and "synchronous (synchronous_standby_names = '*'" in line, line
            assert f"not confirm within {postgres.COMMIT_TIMEOUT_S} s is answered 503" in line
        else:
            assert level == "WARNING" and "asynchronous" in line and "can be lost" in line, line
    finally:
        shared_pair.set_synchronous(True)


# --- a server that cannot be written ----------------------------------------------------------


def test_a_standby_reached_by_mistake_fails_healthz_and_takes_no_callback(shared_pair, app_on, caplog):
    name = fresh_database(shared_pair)
    primary = app_on(shared_pair.primary.uri(name))  # creates the schema, which reaches the standby
    shared_pair.wait_replayed()
    with caplog.at_level("INFO"):
        app = app_on(shared_pair.standby.uri(name))
        wallet = Wallet(app.test_client(), app)
        health = app.test_client().get("/healthz")
        start = wallet.start()
    assert health.status_code == 503 and health.json["error"] == "database_unavailable", health.json
    assert "cannot be written" in health.json["message"] and "standby" in health.json["message"]
    assert start.status_code == 503 and start.json["error"] == "database_unavailable"
    assert len(messages(caplog)) == 1, messages(caplog)  # the outage, once
    assert primary.test_client().get("/healthz").status_code == 200


def test_a_primary_set_read_only_fails_healthz_until_it_is_writable_again(shared_pair, app_on):
    app = app_on(shared_pair.url(fresh_database(shared_pair)))
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    shared_pair.primary.execute("ALTER SYSTEM SET default_transaction_read_only = on")
    shared_pair.primary.execute("SELECT pg_reload_conf()")
    try:
        time.sleep(0.2)  # the reload reaches the session at its next statement's start
        down = client.get("/healthz")
        assert down.status_code == 503 and "answers read-only" in down.json["message"], down.json
    finally:
        shared_pair.primary.execute("ALTER SYSTEM RESET default_transaction_read_only")
        shared_pair.primary.execute("SELECT pg_reload_conf()")
    time.sleep(db.RETRY_AFTER_S + 0.1)  # the 503's back-off
    assert client.get("/healthz").status_code == 200
    assert Wallet(client, app).deposit("1.00").status_code == 201


# --- a synchronous standby that is gone ------------------------------------------------------


def test_a_synchronous_standby_gone_answers_503_within_the_commit_limit_and_nothing_hangs(shared_pair, tmp_path):
    """Callbacks in flight in a real gunicorn worker while the synchronous standby is stopped:
    each gets the JSON 503 (the request's own timeout would fail the test if one hung), so
    does /healthz or it answers 200; with the standby back, the provider's retries settle each
    game once (a cancelled COMMIT was kept on the primary: the retry finds it applied)."""
    server = Gunicorn(shared_pair.url(fresh_database(shared_pair)), name="syncgone", log_dir=tmp_path,
                      workers=1).start()
    try:
        server.deposit("player-42", "100.00")
        shared_pair.standby.stop()
        limit = postgres.COMMIT_TIMEOUT_S + 2 * postgres.CANCEL_TIMEOUT_S + 2  # a hang, not a slow answer
        games = [f"gone-{n}" for n in range(3)]
        with ThreadPoolExecutor(max_workers=4) as pool:
            sent = [pool.submit(server.request, "POST", f"/callback/{CALLBACK_TOKEN}",
                                started(game), None, limit) for game in games]
            time.sleep(0.5)
            began = time.monotonic()
            health = server.request("GET", "/healthz", timeout=limit)
            health_seconds = time.monotonic() - began
            answers = [future.result() for future in sent]
        print(f"/healthz answered {health[0]} in {health_seconds:.2f} s while COMMITs waited for the standby")
        assert health[0] in (200, 503), health
        assert [status for status, _ in answers] == [503] * len(games), answers
        assert all(answer["error"] == "database_unavailable" for _, answer in answers), answers

        shared_pair.standby.start()
        shared_pair.set_synchronous(True)
        for game in games:
            deadline = time.monotonic() + 20
            while (answer := server.request("POST", f"/callback/{CALLBACK_TOKEN}", started(game)))[0] == 503:
                assert time.monotonic() < deadline, answer
                time.sleep(0.2)
            assert answer == (200, {"result": True}), answer
        bets = [row for row in ledger(server.database) if row[0] == "bet"]
        assert sorted(game for _, game, _ in bets) == games  # one debit each, whatever was cancelled
        assert server.balance("player-42") == 97
        server.assert_healthy()  # no traceback, no worker killed for hanging
    finally:
        server.stop()


# --- a promotion under traffic ------------------------------------------------------------------


def test_a_promotion_under_traffic_loses_nothing_answered_in_synchronous_mode(new_pair, tmp_path, app_on):
    """Four provider clients, each retrying a 503 until answered, while the primary is stopped
    at once and the standby promoted: the workers follow it without a restart, answering only
    JSON 503s meanwhile, and every callback answered 200 is on the promoted server, once."""
    pair = new_pair(synchronous=True)
    server = Gunicorn(pair.url(fresh_database(pair)), name="promotion", log_dir=tmp_path, workers=2).start()
    try:
        for player in range(4):
            server.deposit(f"player-{player}", "100000.00")
        with retrying_providers(server, player=lambda client: f"player-{client}", pause=0.1) as answers:
            time.sleep(0.6)
            pair.primary.stop()  # immediate: a crash
            pair.standby.promote()
            promoted = time.monotonic()
            deadline = promoted + 20
            while not any(at > promoted and answer[0] == 200 for tries in answers.values() for at, answer in tries):
                assert time.monotonic() < deadline, "the workers never followed the promoted standby"
                time.sleep(0.1)
            time.sleep(0.5)

        every = [answer for tries in answers.values() for _, answer in tries]
        assert {status for status, _ in every} <= {200, 503}, collections.Counter(status for status, _ in every)
        assert all(answer["error"] == "database_unavailable" for status, answer in every if status == 503)
        assert any(status == 503 for status, _ in every), "no callback met the failover"
        rows = collections.Counter((kind, game) for kind, game, _ in ledger(server.database))
        for (game_id, kind), tries in answers.items():
            assert tries[-1][1] == (200, {"result": True} if kind == "start" else {}), (game_id, kind, tries[-1])
            assert rows["bet" if kind == "start" else "payout", game_id] == 1, (game_id, kind, "answered, not there")
        assert sum(count for (kind, _), count in rows.items() if kind != "deposit") == len(answers)
        reconcile = app_on(server.database).test_cli_runner().invoke(args=["wallet", "reconcile"])
        assert reconcile.exit_code == 0 and "timeline 2" in reconcile.output, reconcile.output
        server.assert_healthy()
    finally:
        server.stop()


# --- books that went back in time --------------------------------------------------------------


@pytest.mark.parametrize("synchronous", [True, False], ids=["synchronous", "asynchronous"])
def test_the_old_primary_back_writable_gets_no_write(new_pair, app_on, caplog, synchronous):
    """The primary crashes, the standby is promoted and serves, and the old primary comes back
    as it was (writable, its books from before the crash). When the service's connection drops,
    libpq finds the old primary first in the URL: the service passes it over for the promoted
    one (an error logged once, naming both); with the promoted one gone too it refuses to
    write at all (503, /healthz 503) rather than write to the old books."""
    pair = new_pair(synchronous=synchronous)
    name = fresh_database(pair)
    app = app_on(pair.url(name))
    wallet = Wallet(app.test_client(), app)
    assert wallet.deposit("100.00").status_code == 201
    for n in range(3):
        assert wallet.start(game_id=f"before-{n}").json == {"result": True}
    pair.wait_replayed()  # this test is about the old primary, not what asynchronous replication loses
    pair.primary.stop()
    pair.standby.promote()
    until_answered(lambda: wallet.start(game_id="after-0"))
    pair.primary.start()  # back as it was: writable, timeline 1
    old = pair.primary.uri(name)
    old_books = ledger(old)

    with caplog.at_level("INFO"):
        assert pair.standby.drop_service_connections() == 1  # a brief drop
        for n in range(1, 4):
            assert until_answered(lambda: wallet.start(game_id=f"after-{n}"))[-1].json == {"result": True}
    passed = [m for m in messages(caplog) if "passed over" in m]
    assert len(passed) == 1, messages(caplog)
    assert "timeline 1" in passed[0] and "timeline 2" in passed[0] and "writing to" in passed[0], passed[0]
    assert ledger(old) == old_books  # no write reached the old primary
    promoted_bets = [game for kind, game, _ in ledger(pair.standby.uri(name)) if kind == "bet"]
    assert promoted_bets == [f"before-{n}" for n in range(3)] + [f"after-{n}" for n in range(4)]

    caplog.clear()
    with caplog.at_level("INFO"):
        pair.standby.stop()  # now only the old primary answers
        refused = [wallet.start(game_id=f"refused-{n}") for n in range(3)]
        time.sleep(db.RETRY_AFTER_S + 0.1)
        refused.append(wallet.start(game_id="refused-3"))
        health = app.test_client().get("/healthz")
    assert {answer.status_code for answer in refused} == {503} and health.status_code == 503
    alarms = [m for m in messages(caplog) if "refusing to write to" in m]
    assert len(alarms) == 1, (messages(caplog), [answer.json for answer in refused], health.json)  # once
    assert "timeline 1" in alarms[0] and "timeline 2" in alarms[0] and "this worker wrote" in alarms[0], alarms[0]
    assert ledger(old) == old_books


def test_a_promoted_standby_without_the_callbacks_answered_last_is_refused(new_pair, app_on, caplog):
    """Asynchronous replication: callbacks answered while the standby was not receiving, then
    the primary lost and the standby promoted. The worker that answered them refuses the promoted
    books (503, an error naming what is missing) rather than write to them as if nothing had
    happened; `wallet reconcile` on both servers shows which one holds the newer books."""
    pair = new_pair(synchronous=False)
    name = fresh_database(pair)
    url = pair.url(name)
    app = app_on(url)
    wallet = Wallet(app.test_client(), app)
    assert wallet.deposit("100.00").status_code == 201
    assert wallet.start(game_id="kept").json == {"result": True}
    pair.wait_replayed()
    pair.standby.stop("fast")  # lagging behind: asynchronous commits do not wait for it
    assert wallet.start(game_id="lost").json == {"result": True}  # answered 200...
    pair.primary.stop()
    pair.standby.start()
    pair.standby.promote()  # ...and absent from the promoted books

    with caplog.at_level("INFO"):
        answers = [wallet.start(game_id="next") for _ in range(2)]
        time.sleep(db.RETRY_AFTER_S + 0.1)
        answers.append(wallet.start(game_id="next"))
    assert [answer.status_code for answer in answers] == [503] * 3
    alarms = [m for m in messages(caplog) if "refusing to write to" in m]
    assert len(alarms) == 1 and "lacks" in alarms[0] and "callbacks row" in alarms[0], messages(caplog)
    promoted = pair.standby.uri(name)
    assert [game for kind, game, _ in ledger(promoted) if kind == "bet"] == ["kept"]  # nothing written

    pair.primary.start()  # the lost books, for comparison (a reconciliation with the provider)
    reports = {}
    for where, target in (("promoted", promoted), ("old", pair.primary.uri(name))):
        result = flask_cli("wallet", "reconcile", "--json", DATABASE_URL=target, CURRENCY_DECIMALS="USD=2")
        assert result.returncode == 0, result.stderr  # each copy balances on its own...
        reports[where] = json.loads(result.stdout)
    # ...and says where it stands: the promoted one on timeline 2, lacking the newer rows.
    assert "timeline 2" in reports["promoted"]["server"] and "timeline 1" in reports["old"]["server"], reports
    assert reports["promoted"]["newest"]["callbacks"]["id"] < reports["old"]["newest"]["callbacks"]["id"], reports
    assert books(promoted)["wallets"][("player-42", "USD")] == 9900
    assert books(pair.primary.uri(name))["wallets"][("player-42", "USD")] == 9800
