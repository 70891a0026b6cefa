"""Concurrency against a real gunicorn: several worker processes settling the same wallets at once.

The first tests start `gunicorn --workers 3` on a fresh database file (so the workers also
race to create the schema), fire many requests at the same moment from a thread pool, and
check that the money is exactly right: every accepted bet debited once, every win credited
once, no balance below zero, every balance equal to its ledger sum, no 5xx and no dead
worker. The last ones force what gunicorn only sometimes does: workers booting on a new
database at the same instant.
"""

import collections
import contextlib
import decimal
import json
import os
import random
import select
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import store
from store import postgres as postgres_store

from harness.live import ROOT, Instances
from harness.samples import FINISH, START, body, store_settings
from tests.support import audit, books, query

WORKERS = 3
THREADS = 32
CENT = decimal.Decimal("0.01")


@pytest.fixture(params=["one instance", "two instances"])
def server(request, gunicorn):
    """`gunicorn --workers 3 app:create_app()` on a fresh database (the workers race to create
    it); or two independent gunicorns of 2 workers on one database, as on two machines, each
    request going to the next instance in turn."""
    if request.param == "one instance":
        return gunicorn(workers=WORKERS)
    first = gunicorn("first", workers=2)
    return Instances([first, gunicorn("second", database=first.database, workers=2)])


def fire(server, payloads, threads=THREADS):
    """Send all callbacks at (nearly) the same moment; return [(status, body)] in order."""
    go = threading.Event()

    def send(payload):
        go.wait()
        return server.callback(payload)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(send, payload) for payload in payloads]
        go.set()  # every thread holds a request by now: release them together
        return [future.result() for future in futures]


def start(game_id, bet, player):
    return body(START, **{"game.id": game_id, "game.bet": bet, "session.playerId": player})


def finish(game_id, bet, player, status="win", payout=2.5):
    return body(FINISH, **{"game.id": game_id, "game.bet": bet, "game.status": status,
                           "game.payout": payout, "session.playerId": player})


def cents(amount):
    return int(decimal.Decimal(str(amount)).scaleb(2))


def assert_no_server_error(responses):
    errors = [answer for answer in responses if answer[0] >= 500]
    assert not errors, f"{len(errors)} answers were 5xx, e.g. {errors[0]}"


# --- the tests -----------------------------------------------------------------------------


def test_concurrent_starts_never_overdraw_a_balance(server):
    """Starts racing for one balance: exactly what the balance allows is accepted, once."""
    server.deposit("equal", "10.00", "dep-equal")
    server.deposit("mixed", "10.00", "dep-mixed")
    rng = random.Random(1)
    sizes = [0.25, 0.5, 1, 1.25, 2, 3.5]
    bets = {f"eq-{n}": ("equal", 1) for n in range(60)}
    bets.update({f"mx-{n}": ("mixed", rng.choice(sizes)) for n in range(40)})
    games = list(bets)
    rng.shuffle(games)

    responses = fire(server, [start(game, bets[game][1], bets[game][0]) for game in games])

    assert_no_server_error(responses)
    unexpected = [answer for answer in responses if answer[0] != 200 or answer[1] not in (
        {"result": True}, {"result": False})]
    assert not unexpected, unexpected
    accepted = {game for game, (_, answer) in zip(games, responses) if answer == {"result": True}}
    declined = set(games) - accepted

    equal_accepted = sorted(game for game in accepted if bets[game][0] == "equal")
    assert len(equal_accepted) == 10, f"{len(equal_accepted)} bets of 1.00 accepted on 10.00"
    assert server.balance("equal") == 0

    mixed = [game for game in games if bets[game][0] == "mixed"]
    mixed_spent = sum(cents(bets[game][1]) for game in mixed if game in accepted)
    mixed_left = 1000 - mixed_spent
    assert mixed_left >= 0
    assert server.balance("mixed") == decimal.Decimal(mixed_left).scaleb(-2)
    # Balances only went down, so a declined bet was above the balance at its turn and
    # therefore above the final balance too.
    wrongly_declined = [game for game in mixed if game in declined and cents(bets[game][1]) <= mixed_left]
    assert not wrongly_declined, (mixed_left, [(game, bets[game][1]) for game in wrongly_declined])

    state = books(server.database)
    bet_rows = [(game_id, amount) for _, amount, kind, game_id, _ in state["ledger"] if kind == "bet"]
    assert sorted(game_id for game_id, _ in bet_rows) == sorted(accepted), "one bet row per accepted game"
    assert all(amount == -cents(bets[game_id][1]) for game_id, amount in bet_rows)
    statuses = {game_id: status for game_id, status, _, _ in state["games"]}
    assert statuses == {game: "open" if game in accepted else "declined" for game in games}
    outcomes = collections.Counter(row["outcome"] for row in audit(server.database))
    assert outcomes == {"accepted": len(accepted), "declined": len(declined)}
    assert len(server.serving_pids()) > 1, "the requests were all served by one worker"
    server.assert_healthy()


def test_duplicate_deliveries_in_parallel_apply_once(server):
    """The same start, then the same finish, delivered 30 times at once: each counts once."""
    server.deposit("dup", "10.00", "dep-dup")

    starts = fire(server, [start("g-dup", 1, "dup")] * 30)
    assert starts == [(200, {"result": True})] * 30
    assert server.balance("dup") == decimal.Decimal("9.00")

    finishes = fire(server, [finish("g-dup", 1, "dup", "win", 2.5)] * 30)
    assert finishes == [(200, {})] * 30
    assert server.balance("dup") == decimal.Decimal("11.50")

    state = books(server.database)
    assert [row[1:4] for row in state["ledger"]] == [
        (1000, "deposit", None), (-100, "bet", "g-dup"), (250, "payout", "g-dup")]
    assert state["games"] == [("g-dup", "won", 100, 250)]
    outcomes = collections.Counter((row["type"], row["outcome"]) for row in audit(server.database))
    assert outcomes == {("start", "accepted"): 1, ("start", "duplicate"): 29,
                        ("finish", "accepted"): 1, ("finish", "duplicate"): 29}
    server.assert_healthy()


def test_mixed_traffic_settles_every_player_exactly(server):
    """Many players' games, start then finish, with duplicates, all at once: exact balances."""
    rng = random.Random(20240917)
    players = [f"p-{n}" for n in range(5)]
    bet_sizes = ["0.05", "0.25", "0.35", "1", "1.5", "2.37", "0.3"]
    # Payout multipliers chosen so bet x payout lands on half-cents (half-to-even) too.
    win_payouts = ["0.5", "1", "1.5", "2.5", "1.35", "3.3", "0.1"]
    deposits = {player: decimal.Decimal(rng.randint(80, 120)) for player in players}
    games = []
    for player in players:
        for n in range(30):
            outcome = rng.choice(["win", "lose"])
            payout = rng.choice(win_payouts) if outcome == "win" else "0"
            games.append((f"{player}-g{n}", player, rng.choice(bet_sizes), outcome, payout))

    expected, credits = dict(deposits), {}
    for game_id, player, bet, outcome, payout in games:
        bet = decimal.Decimal(bet)
        credit = decimal.Decimal(0)
        if outcome == "win":
            credit = (bet * decimal.Decimal(payout)).quantize(CENT, rounding=decimal.ROUND_HALF_EVEN)
        expected[player] += credit - bet
        credits[game_id] = cents(credit)
    for player in players:  # funded for every bet even if all wins settle last: none declined
        assert sum(decimal.Decimal(bet) for _, owner, bet, _, _ in games if owner == player) < deposits[player]

    for player in players:
        server.deposit(player, str(deposits[player]), f"dep-{player}")

    def payloads(game):
        game_id, player, bet, outcome, payout = game
        # Amounts travel as JSON numbers, e.g. 2.37 and 1.35, as the provider sends them.
        return (start(game_id, json.loads(bet), player),
                finish(game_id, json.loads(bet), player, outcome, json.loads(payout)))

    def chain(game):
        """The provider's order for one game: the start, and once it is answered, the finish."""
        first, last = payloads(game)
        return [server.callback(first), server.callback(last)]

    def copy_of(payload):
        return [server.callback(payload)]

    tasks = [(chain, game) for game in games]
    for game in games:  # duplicate deliveries, racing the originals
        first, last = payloads(game)
        tasks += [(copy_of, first)] * rng.choice([0, 0, 1, 2])
        tasks += [(copy_of, last)] * rng.choice([0, 0, 1, 2])
    rng.shuffle(tasks)
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = list(pool.map(lambda task: (task[0], task[0](task[1])), tasks))

    everything = [answer for _, answers in results for answer in answers]
    assert_no_server_error(everything)
    for kind, answers in results:
        if kind is chain:
            assert answers == [(200, {"result": True}), (200, {})], answers
    for kind, answers in results:
        for status, answer in answers:
            # A copy of a finish can overtake its start: the provider must retry it (409).
            assert (status, answer) in ((200, {"result": True}), (200, {})) or (
                status == 409 and answer["error"] == "conflict"
                and "has no accepted start" in answer["message"]), (status, answer)

    for player in players:
        assert server.balance(player) == expected[player], player
    state = books(server.database)
    assert {player: decimal.Decimal(minor).scaleb(-2) for (player, _), minor in state["wallets"].items()} == expected
    rows = collections.defaultdict(list)
    for _, amount, kind, game_id, _ in state["ledger"]:
        rows[kind, game_id].append(amount)
    for game_id, _, bet, _, _ in games:
        assert rows["bet", game_id] == [-cents(bet)], game_id
        # One payout row per settled game; one that credits nothing may also have none.
        allowed = [[credits[game_id]]] + ([[]] if credits[game_id] == 0 else [])
        assert rows["payout", game_id] in allowed, (game_id, rows["payout", game_id])
    settled = {game_id: (status, credit) for game_id, status, _, credit in state["games"]}
    assert settled == {game_id: ("won" if outcome == "win" else "lost", credits[game_id])
                       for game_id, _, _, outcome, _ in games}
    assert len(audit(server.database)) == len(everything)
    assert len(server.serving_pids()) > 1, "the requests were all served by one worker"
    server.assert_healthy()


# --- workers booting on a fresh database ---------------------------------------------------

# Imports the app once, then for each gate (a pipe the test closes, which wakes every such
# process at the same instant) builds the app on a fresh database, as a gunicorn worker does
# when it boots. Writes a mark on `ready` at each gate and at the end; prints failures.
BOOTING_WORKER = r"""
import json, os, sys, traceback
import app as app_module, db
stores, ready, gates = json.loads(sys.argv[1]), int(sys.argv[2]), [int(fd) for fd in sys.argv[3:]]
failures = []
for store, gate in zip(stores, gates):
    os.write(ready, b".")
    os.read(gate, 1)
    try:
        made = app_module.create_app({**store, "CALLBACK_TOKEN": "x",
            "ADMIN_TOKEN": "y", "CURRENCY_DECIMALS": "USD=2", "LOG_LEVEL": "WARNING"})
        with made.app_context():
            db.get_db().ping()  # a worker that could not reach its database would answer 503
        db.close_all(made)
    except Exception:
        lines = traceback.format_exc().strip().splitlines()
        failures.append(f"fresh database {store}: " + " / ".join(line.strip() for line in lines[-3:]))
os.write(ready, b".")
print(json.dumps(failures))
"""


class BootingWorkers:
    """Processes that build the app together, round after round, each on a new database."""

    def __init__(self, directory, workers, targets):
        self.directory, self.workers = directory, workers
        self.processes, self.logs = [], []
        self._ready, ready_write = os.pipe()
        gates = [os.pipe() for _ in targets]
        self._releases = [release for _, release in gates]
        try:
            for n in range(workers):
                self.logs.append(directory / f"worker-{n}.err")
                with open(self.logs[-1], "wb") as stderr:
                    self.processes.append(subprocess.Popen(
                        [sys.executable, "-c", BOOTING_WORKER, json.dumps([store_settings(t) for t in targets]), str(ready_write),
                         *(str(gate) for gate, _ in gates)],
                        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                        pass_fds=[ready_write, *(gate for gate, _ in gates)], text=True,
                    ))
        except BaseException:
            self.close()
            raise
        finally:
            for fd in (ready_write, *(gate for gate, _ in gates)):
                os.close(fd)

    def wait(self, timeout=20, fail=True):
        """Wait until every process is at its next gate (or done); False on timeout if not fail."""
        deadline, missing = time.monotonic() + timeout, self.workers
        while missing > 0:
            readable, _, _ = select.select([self._ready], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self._ready, missing) if readable else b""
            if not chunk:
                if readable or fail:
                    pytest.fail("the booting workers stopped answering:\n" + "\n".join(
                        log.read_text(errors="replace") for log in self.logs))
                return False
            missing -= len(chunk)
        return True

    def release(self, n):
        """Open gate n: every process builds the app on the n-th database at the same instant."""
        os.close(self._releases[n])
        self._releases[n] = None

    def failures(self):
        """Every process's failed boots, after the last round."""
        found = []
        for process, log in zip(self.processes, self.logs):
            out, _ = process.communicate(timeout=20)
            assert process.returncode == 0, log.read_text(errors="replace")
            found += json.loads(out)
        return found

    def close(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.communicate()
        for fd in (self._ready, *self._releases):
            if fd is not None:
                os.close(fd)
        self._releases = []

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def test_workers_booting_at_once_on_a_fresh_database_all_start(tmp_path, new_database):
    """Several workers (or instances) building the app on one new database at the same
    instant all succeed.

    gunicorn halts the whole server ("Worker failed to boot") when one worker's create_app()
    raises. The servers above boot several workers on a fresh database too, but gunicorn
    staggers their start; here the race is forced, round after round. (Contention makes it
    likelier: a pass on a quiet machine is weaker evidence than the deterministic test below.)
    """
    workers, rounds = 4, 25
    targets = [new_database(f"boot-{n}") for n in range(rounds)]
    with BootingWorkers(tmp_path, workers, targets) as booting:
        for n in range(rounds):
            booting.wait()
            booting.release(n)
        booting.wait()
        failures = booting.failures()
    assert not failures, (
        f"{len(failures)} of {workers * rounds} worker boots on a fresh database failed:\n"
        + "\n".join(failures[:5])
    )


@contextlib.contextmanager
def holding_the_schema_lock(engine, target):
    """What a booting worker holds while it creates the schema of a fresh database: SQLite's
    write lock on the new file (taken before WAL mode is even set), PostgreSQL's advisory
    lock on schema creation."""
    if engine == "sqlite":
        holder = sqlite3.connect(target, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        unlock = "COMMIT"
    else:
        holder = store.open_store(target)
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(?)", [postgres_store.SCHEMA_LOCK])
        unlock = "COMMIT"
    try:
        yield lambda: holder.execute(unlock)
    finally:
        holder.close()


def test_a_worker_booting_while_the_fresh_database_is_being_made_waits(tmp_path, new_database, engine):
    """A worker that boots while another creates the new database's schema waits its turn.

    A booting worker holds a lock while it prepares a fresh database; a worker booting in
    that moment must wait for the lock like any writer (SQLite's busy_timeout, PostgreSQL's
    advisory lock), not fail at once. The lock is held here on purpose.
    """
    target = new_database("boot-held")
    with holding_the_schema_lock(engine, target) as unlock:
        with BootingWorkers(tmp_path, 3, [target]) as booting:
            booting.wait()
            booting.release(0)
            # Correct workers are still waiting for the lock after a second; give it back.
            finished_while_locked = booting.wait(timeout=1.0, fail=False)
            unlock()
            if not finished_while_locked:
                booting.wait()
            failures = booting.failures()
    assert not failures, (
        f"{len(failures)} of 3 workers failed instead of waiting for the lock:\n" + "\n".join(failures)
    )
    assert not finished_while_locked, "the workers did not wait for the lock"
    assert books(target)["wallets"] == {}  # the schema is there
    if engine == "sqlite":
        assert query(target, "PRAGMA journal_mode") == [("wal",)]


def test_a_deposit_reference_replayed_at_once_moves_money_once(server):
    """The operator's site retrying one deposit 30 times at once (on every instance): one
    credit, one 201, and every other answer the same wallet with 200."""
    deposit = {"currency": "USD", "amount": "25.00", "reference": "dep-storm"}
    go = threading.Event()

    def send(_):
        go.wait()
        return server.admin("POST", "/api/players/storm/deposits", deposit)

    with ThreadPoolExecutor(max_workers=30) as pool:
        futures = [pool.submit(send, n) for n in range(30)]
        go.set()
        answers = [future.result() for future in futures]
    assert sorted(status for status, _ in answers) == [200] * 29 + [201]
    assert all(answer["balance"] == "25.00" for _, answer in answers), answers
    state = books(server.database)
    assert state["wallets"] == {("storm", "USD"): 2500}
    assert [row[2:] for row in state["ledger"]] == [("deposit", None, "dep-storm")]
    server.assert_healthy()


def test_a_refund_racing_its_games_finish_lets_exactly_one_happen(server):
    """For each open game, its refund and its finish are sent at the same instant (with two
    instances, often to different ones): exactly one of them moves money."""
    server.deposit("racer", "100.00", "dep-racer")
    games = [f"race-{n}" for n in range(40)]
    assert fire(server, [start(game, 1, "racer") for game in games]) == [(200, {"result": True})] * len(games)
    requests = []
    for game in games:
        requests += [("refund", game), ("finish", game)]
    random.Random(7).shuffle(requests)
    go = threading.Event()

    def send(request):
        kind, game = request
        go.wait()
        if kind == "refund":
            return server.admin("POST", f"/api/games/{game}/refund")
        return server.callback(finish(game, 1, "racer", "win", 2))

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = [pool.submit(send, request) for request in requests]
        go.set()
        answers = dict(zip(requests, (future.result() for future in futures)))
    assert_no_server_error(answers.values())
    refunded = {game for game in games if answers["refund", game][0] == 200}
    paid = {game for game in games if answers["finish", game] == (200, {})}
    assert refunded.isdisjoint(paid) and refunded | paid == set(games), (refunded, paid)
    assert refunded and paid, "the race did not happen: every game went one way"
    for game in refunded:
        assert answers["finish", game][0] == 409 and "was refunded" in answers["finish", game][1]["message"]
    for game in paid:
        assert answers["refund", game][0] == 409 and answers["refund", game][1]["error"] == "conflict"
    rows = collections.defaultdict(list)
    state = books(server.database)
    for _, amount, kind, game_id, _ in state["ledger"]:
        rows[game_id].append((kind, amount))
    for game in games:
        assert rows[game] == [("bet", -100), ("refund", 100) if game in refunded else ("payout", 200)], game
    assert state["wallets"][("racer", "USD")] == 10000 + 100 * len(paid)
    server.assert_healthy()
