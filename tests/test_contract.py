"""The contract: Schemathesis (a third-party API tester) against a real gunicorn, from its own
/openapi.json.

Every check Schemathesis has and every phase (examples, coverage, fuzzing, stateful through the
document's links), with the callback token in the callback URL and the operator's bearer token,
from fixed seeds and a fixed number of examples, so a run reproduces. Players are funded and the
callbacks' players, currencies, game ids and bets are drawn from a few known values four times
in five, and the document's examples are the provider's start and finish, so starts are accepted, finishes settle them and refunds find open bets: the money paths,
not only the refusals. Any finding fails the test with Schemathesis's report; the only failures
dropped are the three refusals the document states in words (tests/contract_hooks.py).

Schemathesis runs as its CLI, in a subprocess: it runs every phase under one configuration and
prints a report a reader can replay (`st replay <id>`), which its pytest integration (one test
per operation and phase) would split up.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.samples import ADMIN_TOKEN, CALLBACK_TOKEN

TESTS = Path(__file__).resolve().parent
# A fixed seed per engine: the suite stays fast, and each engine meets other generated input.
SEEDS = {"sqlite": 1, "postgresql": 2}
EXAMPLES = 30  # per operation and phase; each seed takes about 20 s on 2 shared cores
PLAYERS = ["player-42", "player-7"]  # player-42: the document's example callbacks play for it
CURRENCIES = ["USD", "EUR"]
GAME_IDS = ["g-1", "g-2", "g-3", "g-4"]


def config(url):
    """schemathesis.toml: tokens, every check, known values for the money paths."""
    known = {  # the callbacks' values are one player and currency, so a finish can meet its start
        "player": [PLAYERS[0]], "players": PLAYERS, "currency": [CURRENCIES[0]], "currencies": CURRENCIES,
        "games": GAME_IDS, "bets": [1, "2.50"], "amounts": ["1", "0.50", 25], "payouts": [0, 1, "2.5"],
    }
    bindings = {
        "body.session.playerId": "player", "body.session.currency": "currency", "body.game.id": "games",
        "body.game.bet": "bets", "body.game.payout": "payouts", "body.currency": "currencies",
        "body.amount": "amounts", "path.player_id": "players", "path.currency": "currencies",
        "path.game_id": "games",
    }
    lines = [
        f'base-url = "{url}"',
        "[generation]",
        f"max-examples = {EXAMPLES}",
        "[checks]",
        "enabled = true",
        "[auth.openapi.bearer]",
        f'bearer = "{ADMIN_TOKEN}"',
        "[parameters]",
        f'"path.token" = "{CALLBACK_TOKEN}"',
        *(f'"{key}" = {{ dictionary = "{name}", probability = 0.8 }}' for key, name in bindings.items()),
        *(f"[dictionaries.{name}]\nvalues = {json.dumps(values)}" for name, values in known.items()),
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def contract_server(gunicorn):
    """The service under contract: a real gunicorn on a fresh database, its players funded."""
    server = gunicorn("contract", workers=2, currency_decimals="USD=2,EUR=2")
    for player in PLAYERS:
        for currency in CURRENCIES:
            server.deposit(player, "1000000", reference=f"fund-{player}-{currency}", currency=currency)
    return server


def test_the_service_keeps_its_openapi_contract(contract_server, tmp_path, engine):
    server, seed = contract_server, SEEDS[engine]
    (tmp_path / "schemathesis.toml").write_text(config(server.url))
    command = [
        sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
        "--config-file", str(tmp_path / "schemathesis.toml"), "--no-color", "run", f"{server.url}/openapi.json",
        "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful", "--seed", str(seed),
        "--generation-database", "none", "--workers", "1",
    ]
    environment = {**os.environ, "SCHEMATHESIS_HOOKS": "contract_hooks",
                   "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(command, cwd=tmp_path, env=environment, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=600)
    report = run.stdout + run.stderr
    if run.returncode != 0:
        pytest.fail(f"Schemathesis found something (exit {run.returncode}):\n{report}", pytrace=False)
    print(report)  # shown with pytest -rP

    # The money paths were reached, and none of it broke the books or the server.
    status, accepted = server.admin("GET", "/api/callbacks?outcome=accepted&limit=500")
    assert status == 200
    kinds = [record["type"] for record in accepted["callbacks"]]
    print(f"accepted callbacks: {kinds.count('start')} start, {kinds.count('finish')} finish")
    assert {"start", "finish"} <= set(kinds), f"no accepted start and finish: {kinds}\n{report}"
    status, books = server.admin("GET", "/api/reconcile")
    assert status == 200 and books["ok"], books["discrepancies"]
    server.assert_healthy()
    assert CALLBACK_TOKEN not in server.log()  # the app logs a token by position only
