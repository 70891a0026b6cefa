"""The provider simulator (`flask --app app simulate`) playing against a real gunicorn.

One gunicorn (2 workers) serves the whole module; every test uses its own player. The
simulator runs in-process through Flask's CLI runner, and once as a real subprocess.
"""

import decimal
import os
import re
import subprocess
import sys

import pytest

import app as app_module
import db
from cli import simulator
from harness.live import ROOT, free_port
from harness.samples import ADMIN_TOKEN, CALLBACK_TOKEN
from tests.support import ENGINES, audit, books, module_gunicorn

GAME_LINE = re.compile(r"^(sim-\S+)\s+\S+\s+bet (\S+)\s+(win|lose|declined)\s+(?:x\S+\s+)?credit (\S+)", re.M)

@pytest.fixture(scope="module", params=ENGINES)
def server(request, tmp_path_factory):
    """`gunicorn --workers 2 app:create_app()` on a fresh database of each engine, for the
    whole module."""
    with module_gunicorn(request, tmp_path_factory, "simulator", workers=2) as running:
        yield running


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """urllib honours *_proxy variables: never send the local test traffic through one."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")


@pytest.fixture
def simulate(tmp_path, server):
    """Run `flask simulate --url <server> --token ... ARGS` in-process; return the click result."""
    # The CLI's app has its own database: the simulator only talks HTTP to the server.
    app = app_module.create_app({"DATABASE_PATH": str(tmp_path / "cli.db"), "CURRENCY_DECIMALS": "USD=2"})

    def run(*args, token=CALLBACK_TOKEN, url=None):
        return app.test_cli_runner().invoke(
            args=["simulate", "--url", url or server.url, "--token", token, *args])

    yield run
    db.close_all(app)


def balances_of(output):
    """The expected and actual balance lines of the simulator's output."""
    expected = re.search(r"^expected balance: (\S+) USD$", output, re.M).group(1)
    actual = re.search(r"^actual balance: (\S+) USD", output, re.M).group(1)
    return decimal.Decimal(expected), decimal.Decimal(actual)


def games_of(output):
    """{game id: (bet, outcome, credit)} from the simulator's per-game lines."""
    return {game_id: (bet, outcome, credit) for game_id, bet, outcome, credit in GAME_LINE.findall(output)}


def minor(text):
    return int(decimal.Decimal(text) * 100)


@pytest.mark.parametrize("duplicates", [False, True], ids=["once", "duplicates"])
def test_simulated_games_settle_exactly(server, simulate, duplicates):
    player = f"sim-player-{'dup' if duplicates else 'once'}"
    server.deposit(player, "100.00")
    flags = ["--duplicates"] if duplicates else []
    # A 0.25 bet makes ties (0.25 x 0.5 = 0.125 -> 0.12, x 1.5 = 0.375 -> 0.38): half-to-even matters.
    result = simulate(player, "USD", "--games", "25", "--bet", "0.25", "--seed", "11",
                      "--admin-token", ADMIN_TOKEN, *flags)

    assert result.exit_code == 0, result.output
    expected, actual = balances_of(result.output)
    assert expected == actual
    assert "games played: 25" in result.output and "accepted: 25, declined: 0" in result.output
    state = books(server.database)  # asserts every balance equals its ledger sum
    assert state["wallets"][(player, "USD")] == minor(actual)
    played = games_of(result.output)
    assert len(played) == 25
    stored = {game_id: (status, bet, credit) for game_id, status, bet, credit in state["games"]}
    for game_id, (bet, outcome, credit) in played.items():
        assert stored[game_id] == ({"win": "won", "lose": "lost"}[outcome], minor(bet), minor(credit))
    outcomes = [row["outcome"] for row in audit(server.database) if row["game_id"] in played]
    assert outcomes.count("accepted") == 50
    assert outcomes.count("duplicate") == (50 if duplicates else 0)
    assert len(outcomes) == (100 if duplicates else 50)


def test_a_player_without_a_wallet_is_declined_and_nothing_moves(server, simulate):
    result = simulate("sim-nobody", "USD", "--games", "3", "--admin-token", ADMIN_TOKEN, "--duplicates")
    assert result.exit_code == 0, result.output
    assert "accepted: 0, declined: 3" in result.output
    assert "balance before: 0 USD (no wallet)" in result.output
    assert balances_of(result.output) == (0, 0)
    assert ("sim-nobody", "USD") not in books(server.database)["wallets"]


def test_the_command_line_runs_as_a_subprocess(server, tmp_path):
    """The real entry point, with a small balance so that some bets may be declined."""
    server.deposit("sim-subprocess", "3.00")
    env = {key: value for key, value in os.environ.items() if key not in app_module.ENVIRONMENT}
    env.update(DATABASE_PATH=str(tmp_path / "cli.db"), no_proxy="127.0.0.1")  # never opened: it talks HTTP
    completed = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "simulate", "--url", server.url,
         "--token", CALLBACK_TOKEN, "sim-subprocess", "USD", "--games", "15", "--bet", "0.50",
         "--seed", "5", "--admin-token", ADMIN_TOKEN],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    expected, actual = balances_of(completed.stdout)
    assert expected == actual
    played = games_of(completed.stdout)
    declined = sum(outcome == "declined" for _, outcome, _ in played.values())
    assert f"accepted: {15 - declined}, declined: {declined}" in completed.stdout
    assert books(server.database)["wallets"][("sim-subprocess", "USD")] == minor(actual)


def test_a_wrong_token_fails_clearly_and_moves_nothing(server, simulate):
    server.deposit("sim-wrong-token", "10.00")
    result = simulate("sim-wrong-token", "USD", "--games", "3", "--admin-token", ADMIN_TOKEN, token="not-the-token")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # a ClickException, not a crash
    assert "HTTP 403 forbidden: Missing or wrong callback token" in result.output
    assert "not-the-token" not in result.output  # the URL is shown with the token masked
    assert "Traceback" not in result.output
    assert books(server.database)["wallets"][("sim-wrong-token", "USD")] == 1000


def test_an_unreachable_service_fails_clearly(simulate):
    result = simulate("sim-player", "USD", "--games", "1", url=f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "cannot reach the service" in result.output and "Traceback" not in result.output


def test_a_balance_other_than_expected_fails(server, simulate):
    # Told USD has 3 decimals, the simulator expects 0.125 bets; the service debits 0.12.
    server.deposit("sim-decimals", "10.00")
    result = simulate("sim-decimals", "USD", "--games", "4", "--bet", "0.125", "--decimals", "3", "--seed", "2",
                      "--admin-token", ADMIN_TOKEN)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "balance mismatch: expected" in result.output
    books(server.database)  # the service's own books still balance


@pytest.mark.parametrize("answers, message", [
    ([(200, {"result": True}), (200, {"result": False})],
     'the retried start was answered HTTP 200 {"result":false}, the first HTTP 200 {"result":true}'),
    ([(502, "<html>Bad Gateway</html>")] * 2, "start answered HTTP 502 <html>Bad Gateway</html>"),
], ids=["retry-differs", "bad-gateway"])
def test_a_retry_answered_differently_or_a_5xx_is_a_failure(simulate, monkeypatch, answers, message):
    """A service (or proxy) that misbehaves: stubbed, since the real one answers correctly."""
    replies = iter(answers)
    monkeypatch.setattr(simulator.Service, "callback", lambda self, body: next(replies))
    result = simulate("sim-stub", "USD", "--games", "1", "--duplicates")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert message in result.output
