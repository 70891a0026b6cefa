"""GET /metrics: its token, what it counts and reads, and the same numbers under a real gunicorn
whose workers each count their own (prometheus_client's multiprocess mode)."""

import os
import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

import db
import store
from harness.live import Gunicorn, free_port, workers_of
from harness.samples import ADMIN_TOKEN, FINISH, START, body
from tests.support import Wallet, execute, query
from tests.test_concurrency import fire
from web import metrics

METRICS_TOKEN = "metrics-5b0e-secret"
SCRAPER = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def samples(text):
    """{(sample name, ((label, value), ...)): value} of an exposition."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape(client):
    response = client.get("/metrics", headers=SCRAPER)
    assert response.status_code == 200, response.data
    assert response.content_type == "text/plain; version=0.0.4; charset=utf-8"
    return samples(response.get_data(as_text=True))


def callbacks(numbers, type_, outcome):
    return numbers[("wallet_callbacks_total", (("outcome", outcome), ("type", type_)))]


def per_currency(numbers, name):
    return {dict(labels)["currency"]: value for (sample, labels), value in numbers.items() if sample == name}


@pytest.fixture
def scraped(make_app):
    """An app with METRICS_TOKEN, its test client's Wallet, and its scrapes."""
    app = make_app(METRICS_TOKEN=METRICS_TOKEN)
    return Wallet(app.test_client(), app)


# --- the token -----------------------------------------------------------------------------


def test_without_metrics_token_the_metrics_are_refused_saying_how_to_set_it(client):
    response = client.get("/metrics", headers=SCRAPER)
    assert response.status_code == 403
    assert response.json["error"] == "metrics_token_not_configured"
    assert "METRICS_TOKEN" in response.json["message"]


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {METRICS_TOKEN}", f"Bearer {ADMIN_TOKEN}",
                                    f"Bearer {METRICS_TOKEN}x"])
def test_a_missing_or_wrong_token_is_401_and_the_admin_token_is_not_the_scrapers(scraped, header):
    response = scraped.client.get("/metrics", headers={"Authorization": header} if header else {})
    assert response.status_code == 401 and response.json["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    # ...and the scraper's token moves no money.
    refused = scraped.client.post("/api/players/p/deposits", headers=SCRAPER,
                                  json={"currency": "USD", "amount": "1", "reference": "r"})
    assert refused.status_code == 401


# --- what it counts --------------------------------------------------------------------------


def test_every_callback_is_counted_once_by_type_and_outcome(scraped):
    before = scrape(scraped.client)
    scraped.deposit("10.00")
    scraped.start(bet=2)                                     # accepted
    scraped.start(bet=2)                                     # duplicate
    scraped.start(game_id="g-2", bet=50)                     # declined
    scraped.finish(bet=2, payout=2.5)                        # accepted, 5.00 credited
    scraped.finish(game_id="g-9")                            # conflict: no start
    scraped.callback(body(START, type="<rollback>\n"))       # another type: ignored, as "other"
    scraped.callback(b"{not json")                           # invalid
    scraped.callback(body(START), token="wrong")             # unauthorised
    after = scrape(scraped.client)
    expected = {("start", "accepted"): 1, ("start", "duplicate"): 1, ("start", "declined"): 1,
                ("finish", "accepted"): 1, ("finish", "conflict"): 1, ("other", "ignored"): 1,
                ("other", "invalid"): 1, ("other", "unauthorised"): 1}
    for type_ in metrics.TYPES:
        for outcome in metrics.OUTCOMES:
            delta = callbacks(after, type_, outcome) - callbacks(before, type_, outcome)
            assert delta == expected.get((type_, outcome), 0), (type_, outcome)
    labels = {dict(labels).get("type") for (name, labels) in after if name == "wallet_callbacks_total"}
    assert labels == {"start", "finish", "other"}  # the type sent never becomes a label
    durations = {type_: after[("wallet_callback_duration_seconds_count", (("type", type_),))]
                 - before[("wallet_callback_duration_seconds_count", (("type", type_),))] for type_ in metrics.TYPES}
    assert durations == {"start": 3, "finish": 2, "other": 3}
    staked = per_currency(after, "wallet_staked_minor_total")["USD"] - per_currency(before, "wallet_staked_minor_total").get("USD", 0)
    paid = per_currency(after, "wallet_paid_out_minor_total")["USD"] - per_currency(before, "wallet_paid_out_minor_total").get("USD", 0)
    assert (staked, paid) == (200, 500)


def test_the_durations_resolve_a_millisecond_to_ten_seconds(scraped):
    numbers = scrape(scraped.client)
    bounds = sorted(float(dict(labels)["le"]) for (name, labels) in numbers
                    if name == "wallet_callback_duration_seconds_bucket" and dict(labels)["type"] == "start")
    assert bounds[0] == 0.001 and 10.0 in bounds and 4.0 in bounds and bounds[-1] == float("inf")


def test_the_books_are_read_at_scrape_time(scraped):
    scraped.deposit("10.00")
    scraped.deposit("3.00", player="p2")
    scraped.deposit("0.5", currency="BTC")
    scraped.start(game_id="old", bet=1)
    scraped.start(game_id="new", bet=2)
    scraped.start(game_id="won", bet=1)
    scraped.finish(game_id="won", bet=1, payout=3)
    scraped.start(game_id="stuck", bet="0.25", player="p2")
    scraped.sql("UPDATE games SET started_at = started_at - 7200000 WHERE game_id = 'old'")  # two hours ago
    assert scraped.client.post("/api/games/stuck/refund", headers=scraped.admin).status_code == 200
    numbers = scrape(scraped.client)
    assert per_currency(numbers, "wallet_open_bets") == {"USD": 2, "BTC": 0}
    assert 7199 < numbers[("wallet_oldest_open_bet_age_seconds", ())] < 7300
    assert per_currency(numbers, "wallet_refunded_minor_total") == {"USD": 25, "BTC": 0}
    balances = {currency: sum(balance for (_, c), balance in scraped.books()["wallets"].items() if c == currency)
                for currency in ("USD", "BTC")}
    assert per_currency(numbers, "wallet_liability_minor") == balances == {"USD": 900 + 300, "BTC": 50_000_000}
    assert per_currency(numbers, "wallet_currency_decimals") == {"USD": 2, "BTC": 8}
    assert numbers[("wallet_database_up", ())] == 1


def test_with_the_database_away_the_scrape_answers_database_up_0(scraped, engine, tmp_path):
    scraped.deposit("10.00")
    before = scrape(scraped.client)
    assert before[("wallet_database_up", ())] == 1
    db.close_all(scraped.app)
    if engine == "sqlite":
        (tmp_path / "folder").mkdir()  # a folder where the database file would be: it cannot open
        scraped.app.config["DATABASE_PATH"] = str(tmp_path / "folder")
    else:
        scraped.app.config["DATABASE_URL"] = "postgresql://wallet@127.0.0.1:1/wallet"  # nothing listens there
    away = scraped.start(game_id="g-away")
    assert away.status_code == 503
    numbers = scrape(scraped.client)
    assert numbers[("wallet_database_up", ())] == 0
    assert not per_currency(numbers, "wallet_liability_minor")  # nothing read, nothing made up
    assert callbacks(numbers, "start", "unavailable") == callbacks(before, "start", "unavailable") + 1
    assert numbers[("wallet_database_unavailable_total", ())] >= before[("wallet_database_unavailable_total", ())] + 1


SCRAPE_QUERIES = [  # (query, params, the index each engine must use)
    ("open_bets", metrics.OPEN_BETS, "idx_games_status_started_at"),
    ("oldest_open", metrics.OLDEST_OPEN, "idx_games_status_started_at"),
    ("refunded", metrics.REFUNDED, "idx_games_status_started_at"),
]


@pytest.mark.parametrize("sql, index", [q[1:] for q in SCRAPE_QUERIES], ids=[q[0] for q in SCRAPE_QUERIES])
def test_the_scrapes_reads_of_games_use_an_index(wallet, sql, index):
    """Each read of the games table at a scrape takes an index to the few rows it wants (open
    or refunded games), never a walk over every game: cheap on 1,000,000 games. (PostgreSQL
    is told to avoid a scan where it can: on a small table it would rightly prefer one.)"""
    if store.is_database_url(wallet.database):
        execute(wallet.database, "SET enable_seqscan = off")
        plan = str(query(wallet.database, "EXPLAIN " + sql))
        execute(wallet.database, "RESET enable_seqscan")
    else:
        plan = str(query(wallet.database, "EXPLAIN QUERY PLAN " + sql))
    assert index in plan and "Seq Scan on games" not in plan and "SCAN games" not in plan, plan


# --- under gunicorn: every worker's numbers, summed ----------------------------------------------


def play(server, games, prefix):
    """`games` starts, then their finishes, each sent at once by concurrent clients (so that
    every worker answers some): all accepted."""
    ids = [{"game.id": f"{prefix}-{n}", "session.playerId": "player-42"} for n in range(games)]
    for template, extra in ((START, {}), (FINISH, {"game.payout": 2})):
        answers = fire(server, [body(template, **changes, **extra) for changes in ids])
        assert all(status == 200 for status, _ in answers), answers


def gunicorn_numbers(server):
    status, text = server.request("GET", "/metrics", headers=SCRAPER)
    assert status == 200, text
    return samples(text)


def test_the_workers_counts_add_up_and_survive_a_worker_restart(gunicorn, tmp_path):
    """Two workers count the callbacks each answered; a scrape, answered by either, sums both.
    A worker that dies (here killed) is replaced and its counts stay in the totals, folded into
    one file: the directory holds the live workers' files and the fold's, however many restarts."""
    directory = tmp_path / "prometheus"
    server = gunicorn("counted", workers=2, METRICS_TOKEN=METRICS_TOKEN, PROMETHEUS_MULTIPROC_DIR=str(directory))
    server.deposit("player-42", "1000.00")
    games = 0
    while len(server.serving_pids()) < 2 and games < 150:  # until both workers have answered some
        play(server, 30, f"a{games}")
        games += 30
    assert len(server.serving_pids()) == 2, "both workers should have answered callbacks"
    for _ in range(4):  # whichever worker answers the scrape
        numbers = gunicorn_numbers(server)
        assert callbacks(numbers, "start", "accepted") == games and callbacks(numbers, "finish", "accepted") == games
        assert sum(value for (name, _), value in numbers.items() if name == "wallet_callbacks_total") == 2 * games
    assert per_currency(numbers, "wallet_staked_minor_total") == {"USD": 100 * games}
    assert per_currency(numbers, "wallet_paid_out_minor_total") == {"USD": 200 * games}

    for restart in range(3):
        victim = sorted(server.workers)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = workers_of(server.process.pid)
            if victim not in now and len(now) == 2:
                break
            time.sleep(0.05)
        server.workers = workers_of(server.process.pid)
        assert victim not in server.workers and len(server.workers) == 2, server.log()
        play(server, 5, f"r{restart}")
    numbers = gunicorn_numbers(server)
    games += 15
    assert callbacks(numbers, "start", "accepted") == games and callbacks(numbers, "finish", "accepted") == games
    assert numbers[("wallet_callback_duration_seconds_count", (("type", "start"),))] == games
    assert per_currency(numbers, "wallet_staked_minor_total") == {"USD": 100 * games}
    files = sorted(path.name for path in directory.glob("*.db"))
    live = sorted(f"{kind}_{pid}.db" for kind in ("counter", "histogram") for pid in server.workers)
    assert set(files) <= set(live) | {"counter_0.db", "histogram_0.db"}, files
    assert {"counter_0.db", "histogram_0.db"} <= set(files), files


def test_without_prometheus_multiproc_dir_the_service_makes_its_own_and_removes_it(gunicorn, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    server = gunicorn("own-dir", workers=2, METRICS_TOKEN=METRICS_TOKEN, TMPDIR=str(scratch))
    made = list(scratch.glob("wallet-metrics-*"))
    assert len(made) == 1, made
    server.deposit("player-42", "10.00")
    play(server, 3, "own")
    assert callbacks(gunicorn_numbers(server), "start", "accepted") == 3
    server.stop()
    assert server.process.returncode == 0 and "Traceback" not in server.log(), server.log()  # on_exit ran
    assert not made[0].exists()


@pytest.mark.parametrize("directory", [None, "prometheus"])
def test_preloading_the_app_is_refused(database, tmp_path, directory):
    """--preload loads the app, and prometheus_client, in the master before it can set the
    directory: every worker would count alone, so the service refuses to start, saying why."""
    settings = {}
    if directory:
        (tmp_path / directory).mkdir()
        settings["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / directory)
    code, log = Gunicorn(database, log_dir=tmp_path, METRICS_TOKEN=METRICS_TOKEN, GUNICORN_CMD_ARGS="--preload",
                         **settings).refused()
    assert code != 0 and "The service cannot start: --preload loads the app, and its metrics" in log, log


@pytest.mark.parametrize("port", ["0", "65536", "metrics", "-1"])
def test_a_metrics_port_that_is_no_port_refuses_to_start(make_app, port):
    with pytest.raises(db.StartupError, match=r"METRICS_PORT must be a TCP port \(1-65535\), not '"):
        make_app(METRICS_PORT=port)


class OnPlatformPorts(Gunicorn):
    """gunicorn bound as on a platform: on $PORT and METRICS_PORT (gunicorn.conf.py), no --bind."""

    def command(self):
        command = super().command()
        at = command.index("--bind")
        del command[at:at + 2]
        self.env["PORT"] = str(self.port)
        return command


def test_on_metrics_port_alone_the_metrics_need_no_token(engine, database, tmp_path):
    """For a platform's scraper that cannot send a header (Fly's): /metrics without a token on
    METRICS_PORT, and only there; a Host header naming that port changes nothing."""
    metrics_port = free_port()
    server = OnPlatformPorts(database, name="ports", log_dir=tmp_path, METRICS_TOKEN=METRICS_TOKEN,
                             METRICS_PORT=str(metrics_port))
    try:
        server.start()
        assert server.request("GET", "/metrics")[0] == 401
        assert server.request("GET", "/metrics", headers={"Host": f"127.0.0.1:{metrics_port}"})[0] == 401
        assert server.request("GET", "/metrics", headers=SCRAPER)[0] == 200
        on_metrics_port = Gunicorn(database)
        on_metrics_port.port = metrics_port
        status, text = on_metrics_port.request("GET", "/metrics")
        assert status == 200 and "wallet_database_up 1.0" in text
        assert on_metrics_port.request("GET", "/api/players/p/balances")[0] == 401  # the rest as anywhere
    finally:
        server.stop()
