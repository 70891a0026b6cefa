"""Crash test: gunicorn killed with SIGKILL mid-traffic, restarted on the same database.

Clients play games (start, then finish) as fast as they can; the master and both workers
are killed at once while requests are in flight. After a restart on the same database:
every answered start has exactly one debit and every answered finish exactly one credit;
an unanswered request happened wholly (money and audit row) or not at all; the provider's
retry of every callback of the run changes nothing already applied; the books reconcile.
"""

import collections
import decimal
from concurrent.futures import ThreadPoolExecutor

from harness.live import Progress, play
from tests.support import audit, books, query

CLIENTS = 12
TRAFFIC = 200  # answers before the kill
FUNDS = decimal.Decimal("100000.00")  # enough that no start is declined
def ledger_rows(database):
    return query(database, "SELECT id, wallet_id, amount, kind, game_id FROM ledger")


def test_a_killed_server_loses_nothing_answered_and_applies_nothing_twice(gunicorn, make_app):
    server = gunicorn("crash", workers=2)
    database = server.database
    for player in range(4):
        server.deposit(f"player-{player}", str(FUNDS))

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        progress = Progress()
        runs = [pool.submit(play, server, client, "c", progress) for client in range(CLIENTS)]
        progress.wait(TRAFFIC)
        server.kill()  # master and workers, SIGKILL, mid-request
        games = [game for run in runs for game in run.result()]

    answered = [(game, kind) for game in games for kind, answer in game.answers.items() if answer is not None]
    unanswered = [(game, kind) for game in games for kind, answer in game.answers.items() if answer is None]
    assert len(answered) > 100, "too little traffic before the kill to prove anything"
    assert len(unanswered) == CLIENTS  # each client stops at its first request without an answer
    for game, kind in answered:
        assert game.answers[kind] == (200, {"result": True} if kind == "start" else {}), (game.id, kind)

    server = gunicorn("crash", database=database, workers=2)  # the same books: recovery, schema already there
    state = books(database)  # balance = ledger sum, never negative
    rows = collections.defaultdict(list)
    for _, amount, kind, game_id, _ in state["ledger"]:
        rows[kind, game_id].append(amount)
    applied = collections.Counter(
        (row["type"], row["game_id"]) for row in audit(database) if row["outcome"] == "accepted")

    for game in games:
        if "start" in game.answers:
            debits = rows["bet", game.id]
            assert debits in ([], [-game.bet_minor()]), (game.id, debits)
            if game.answers["start"] is not None:
                assert debits == [-game.bet_minor()], (game.id, "answered start without its debit")
            assert applied["start", game.id] == len(debits), (game.id, "debit and audit row disagree")
        if "finish" in game.answers:
            credits = rows["payout", game.id]
            assert credits in ([], [game.credit_minor()]), (game.id, credits)
            if game.answers["finish"] is not None:
                assert credits == [game.credit_minor()], (game.id, "answered finish without its credit")
            assert applied["finish", game.id] == len(credits), (game.id, "credit and audit row disagree")
    reconcile = make_app(database=database).test_cli_runner().invoke(args=["wallet", "reconcile"])
    assert reconcile.exit_code == 0, reconcile.output

    # The provider retries everything it sent, each game in its order: nothing applies twice.
    before = set(ledger_rows(database))

    def retry(game):
        return [(kind, server.callback(game.payload(kind))) for kind in ("start", "finish") if kind in game.answers]

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        retried = list(pool.map(retry, games))
    for game, answers in zip(games, retried):
        for kind, answer in answers:
            assert answer == (200, {"result": True} if kind == "start" else {}), (game.id, kind, answer)

    after = set(ledger_rows(database))
    assert before <= after, "a retry changed a ledger row that was already there"
    state = books(database)
    rows = collections.defaultdict(list)
    for _, amount, kind, game_id, _ in state["ledger"]:
        rows[kind, game_id].append(amount)
    expected = {f"player-{player}": int(FUNDS * 100) for player in range(4)}
    for game in games:
        assert rows["bet", game.id] == [-game.bet_minor()], game.id
        expected[game.player] -= game.bet_minor()
        if "finish" in game.answers:
            assert rows["payout", game.id] == [game.credit_minor()], game.id
            expected[game.player] += game.credit_minor()
    assert {player: balance for (player, _), balance in state["wallets"].items()} == expected
    reconcile = make_app(database=database).test_cli_runner().invoke(args=["wallet", "reconcile"])
    assert reconcile.exit_code == 0, reconcile.output
    server.assert_healthy()

