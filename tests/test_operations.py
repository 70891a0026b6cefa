"""Day-to-day operation: refunds of stuck bets, reconciliation, history and backups."""

import collections
import os
import signal
import subprocess
import sys
import itertools
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import store
from store import schema
from money import units
import db
import schemas
import wallet as wallet_rules
from harness.samples import FINISH, START, body, store_settings
from harness.live import ROOT
from tests.support import books, execute, play_a_little, query, refund, store_for


def get(wallet, url, **params):
    return wallet.client.get(url, headers=wallet.admin, query_string=params)


# --- refunds ----------------------------------------------------------------------------


def test_refund_returns_the_stake_once(wallet):
    wallet.deposit("10.00")
    wallet.start(bet="2.50")
    first = refund(wallet, "g-1")
    assert first.status_code == 200
    assert first.json["game"]["status"] == "refunded" and first.json["game"]["bet"] == "2.50"
    assert first.json["wallet"]["balance"] == "10.00"
    wallet.deposit("1.00")
    again = refund(wallet, "g-1")
    assert again.status_code == 200 and again.json == first.json
    assert wallet.balance() == "11.00"
    kinds = [row[2] for row in wallet.books()["ledger"]]
    assert kinds == ["deposit", "bet", "refund", "deposit"]


def test_refund_of_a_settled_or_unknown_game_is_refused(wallet):
    wallet.deposit("10.00")
    wallet.start(bet=1)
    wallet.finish(payout=2)
    before = wallet.books()
    settled = refund(wallet, "g-1")
    assert settled.status_code == 409 and settled.json["error"] == "conflict"
    assert refund(wallet, "nope").status_code == 404
    wallet.start(game_id="declined", bet=1000)
    assert refund(wallet, "declined").status_code == 404
    assert wallet.books()["wallets"] == before["wallets"]


def test_after_a_refund_finish_is_refused_and_a_repeated_start_declined(wallet):
    wallet.deposit("10.00")
    wallet.start(bet=1)
    refund(wallet, "g-1")
    before = wallet.books()
    assert wallet.finish(payout=2).status_code == 409
    assert wallet.start(bet=1).json == {"result": False}
    assert wallet.books() == before


def test_cli_refund(runner, wallet):
    wallet.deposit("10.00")
    wallet.start(bet=3)
    result = runner.invoke(args=["wallet", "refund", "g-1"])
    assert result.exit_code == 0 and json.loads(result.output)["wallet"]["balance"] == "10.00"
    result = runner.invoke(args=["wallet", "refund", "missing"])
    assert result.exit_code == 1 and "not_found" in result.output


def age_start(wallet, game_id, seconds):
    """Pretend a start was received, and its bet taken, `seconds` ago."""
    wallet.sql("UPDATE games SET started_at = started_at - ? WHERE game_id = ?", [seconds * 1000, game_id])
    wallet.sql("UPDATE ledger SET created_at = created_at - ? WHERE game_id = ? AND kind = 'bet'", [seconds * 1000, game_id])


def test_stale_lists_and_refund_stale_refunds_old_open_bets(runner, wallet):
    wallet.deposit("10.00")
    for game_id in ("old-1", "old-2", "new", "settled"):
        wallet.start(game_id=game_id, bet=1)
    wallet.finish(game_id="settled", bet=1, payout=0, status="lose")
    for game_id in ("old-1", "old-2", "settled"):
        age_start(wallet, game_id, 7200)

    listed = runner.invoke(args=["wallet", "stale", "--older-than", "3600", "--json"])
    assert [g["game_id"] for g in json.loads(listed.output)["games"]] == ["old-1", "old-2"]
    table = runner.invoke(args=["wallet", "stale", "--older-than", "3600"])
    assert table.exit_code == 0 and "old-1" in table.output and "new" not in table.output.split()

    dry = runner.invoke(args=["wallet", "refund-stale", "--older-than", "3600", "--dry-run"])
    assert dry.exit_code == 0 and "total would refund: 2 bet(s), 2.00 USD" in dry.output
    assert wallet.balance() == "6.00"

    done = runner.invoke(args=["wallet", "refund-stale", "--older-than", "3600"])
    assert done.exit_code == 0 and "total refunded: 2 bet(s), 2.00 USD" in done.output
    assert wallet.balance() == "8.00"
    none = runner.invoke(args=["wallet", "stale", "--older-than", "3600"])
    assert (none.exit_code, none.output) == (0, "nothing found\n")
    again = runner.invoke(args=["wallet", "refund-stale", "--older-than", "3600"])
    assert again.exit_code == 0 and "nothing" in again.output


@pytest.mark.parametrize("command", ["stale", "refund-stale"])
@pytest.mark.parametrize("seconds", ["99999999999999999999", "-1", "100000000001"])
def test_an_age_out_of_range_is_refused_in_one_line(runner, wallet, command, seconds):
    done = runner.invoke(args=["wallet", command, "--older-than", seconds])
    assert done.exit_code == 1 and isinstance(done.exception, SystemExit), done.exception  # no traceback
    assert done.output.splitlines() == [
        f"Error: --older-than must be between 0 and 100,000,000,000 seconds, not {seconds}"], done.output


def test_refund_stale_below_an_hour_needs_yes(runner, wallet):
    wallet.deposit("10.00")
    wallet.start(game_id="young", bet=1)
    age_start(wallet, "young", 600)
    refused = runner.invoke(args=["wallet", "refund-stale", "--older-than", "300"])  # no stdin: never a prompt
    assert refused.exit_code == 1 and "add --yes to refund them anyway" in refused.output, refused.output
    assert len(refused.output.splitlines()) == 1 and wallet.balance() == "9.00"
    dry = runner.invoke(args=["wallet", "refund-stale", "--older-than", "300", "--dry-run"])
    assert dry.exit_code == 0 and "would refund  young" in dry.output
    done = runner.invoke(args=["wallet", "refund-stale", "--older-than", "300", "--yes"])
    assert done.exit_code == 0 and "refunded  young" in done.output and wallet.balance() == "10.00"


# --- reconciliation ---------------------------------------------------------------------


def test_reconcile_passes_on_healthy_books(runner, wallet):
    play_a_little(wallet)
    report = get(wallet, "/api/reconcile").json
    assert report["ok"] is True and report["discrepancies"] == []
    assert report["wallets"] == 2
    assert report["games"] == {"declined": 1, "lost": 1, "open": 1, "refunded": 1, "won": 1}
    assert report["totals"]["USD"] == {
        "deposited": "10.00", "withdrawn": "1.00", "staked": "5.00", "paid_out": "3.00", "refunded": "1.00"}
    result = runner.invoke(args=["wallet", "reconcile"])
    assert result.exit_code == 0 and "the books balance" in result.output


DROP_NEVER_NEGATIVE = {  # the database's own guard, so that a corruption can get past it
    "sqlite": "DROP TRIGGER wallets_never_negative",
    "postgresql": "ALTER TABLE wallets DROP CONSTRAINT wallets_never_negative",
}


@pytest.mark.parametrize(
    "corruption, finding",
    [
        ("UPDATE wallets SET balance = balance + 1 WHERE currency = 'USD'", "!= ledger sum"),
        ("UPDATE ledger SET amount = amount + 1 WHERE kind = 'payout' AND game_id = 'won'", "(won)"),
        ("UPDATE games SET payout = '2' WHERE game_id = 'won'", "(won)"),
        ("UPDATE games SET status = 'won', payout = '2' WHERE game_id = 'lost'", "(won)"),
        ("DELETE FROM ledger WHERE kind = 'refund'", "(refunded)"),
        ("UPDATE games SET status = 'open' WHERE game_id = 'lost'", "(open)"),
        ("DELETE FROM games WHERE game_id = 'open'", "does not exist"),
        ("UPDATE ledger SET game_id = NULL WHERE kind = 'bet' AND game_id = 'open'", "without their game id"),
    ],
)
def test_reconcile_finds_a_corrupted_row(runner, wallet, corruption, finding, engine):
    play_a_little(wallet)
    wallet.sql(DROP_NEVER_NEGATIVE[engine])
    wallet.sql(corruption)
    report = get(wallet, "/api/reconcile").json
    assert report["ok"] is False
    assert any(finding in problem for problem in report["discrepancies"]), report["discrepancies"]
    result = runner.invoke(args=["wallet", "reconcile"])
    assert result.exit_code == 3 and "DISCREPANCY" in result.output


def test_reconcile_sums_exactly_past_64_bit_totals(runner, wallet):
    """Ten deposit-and-withdrawal pairs of 10^10 BTC (10^18 minor units each, the largest a
    movement may be) take the currency's lifetime totals past 2^63: still summed exactly."""
    for n in range(10):
        assert wallet.deposit("10000000000", currency="BTC", reference=f"big-in-{n}").status_code == 201
        assert wallet.withdraw("10000000000", currency="BTC", reference=f"big-out-{n}").status_code == 201
    report = get(wallet, "/api/reconcile")
    assert report.status_code == 200 and report.json["ok"] is True, report.json
    totals = report.json["totals"]["BTC"]
    assert totals["deposited"] == totals["withdrawn"] == "100000000000.00000000"
    result = runner.invoke(args=["wallet", "reconcile"])
    assert result.exit_code == 0 and "deposited 100000000000.00000000" in result.output


# --- history ----------------------------------------------------------------------------


def test_games_are_listed_newest_first_with_filters_and_cursor(wallet):
    play_a_little(wallet)
    everything = get(wallet, "/api/games").json
    assert [g["game_id"] for g in everything["games"]] == ["declined", "refunded", "open", "lost", "won"]
    assert everything["next_cursor"] is None
    assert [g["game_id"] for g in get(wallet, "/api/games", status="open").json["games"]] == ["open"]
    assert [g["game_id"] for g in get(wallet, "/api/games", status="declined").json["games"]] == ["declined"]
    assert get(wallet, "/api/games", player_id="nobody").json == {"games": [], "next_cursor": None}

    seen, cursor = [], None
    while True:
        page = get(wallet, "/api/games", limit=2, **({"cursor": cursor} if cursor else {})).json
        seen += [g["game_id"] for g in page["games"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [g["game_id"] for g in everything["games"]]


def test_games_since_takes_iso_or_epoch_milliseconds(wallet):
    wallet.deposit("10.00")
    wallet.start(game_id="old", bet=1)
    age_start(wallet, "old", 3600)
    wallet.start(game_id="recent", bet=1)
    cut = units.now_ms() - 60_000
    by_ms = get(wallet, "/api/games", since=str(cut)).json["games"]
    by_iso = get(wallet, "/api/games", since=units.iso(cut)).json["games"]
    assert [g["game_id"] for g in by_ms] == [g["game_id"] for g in by_iso] == ["recent"]


def test_a_declined_game_is_listed_as_declined_until_accepted(wallet):
    wallet.start(bet=5)
    assert get(wallet, "/api/games/g-1").json["status"] == "declined"
    wallet.deposit("5.00")
    wallet.start(bet=5)
    assert get(wallet, "/api/games", status="declined").json["games"] == []
    assert get(wallet, "/api/games/g-1").json["status"] == "open"


@pytest.mark.parametrize("params", [
    {"limit": "0"}, {"limit": "501"}, {"limit": "ten"}, {"status": "pending"}, {"since": "last week"},
    {"cursor": "not-a-cursor"}, {"colour": "blue"},
])
def test_bad_list_parameters_are_a_400(wallet, params):
    response = get(wallet, "/api/games", **params)
    assert response.status_code == 400 and response.json["error"] == "validation_error"


def test_game_detail_has_its_ledger_and_callbacks(wallet):
    wallet.deposit("10.00")
    wallet.start(bet=1)
    wallet.start(bet=1)
    wallet.finish(payout=2)
    detail = get(wallet, "/api/games/g-1").json
    assert (detail["status"], detail["payout"], detail["credit"]) == ("won", "2", "2.00")
    assert [(row["kind"], row["amount"]) for row in detail["ledger"]] == [("bet", "-1.00"), ("payout", "2.00")]
    assert [c["outcome"] for c in detail["callbacks"]] == ["accepted", "duplicate", "accepted"]
    assert json.loads(detail["callbacks"][0]["body"])["type"] == "start"
    assert get(wallet, "/api/games/none").status_code == 404


def test_player_ledger_pages_newest_first(wallet):
    play_a_little(wallet)
    usd = get(wallet, "/api/players/player-42/ledger", currency="USD").json
    kinds = [row["kind"] for row in usd["entries"]]
    assert kinds == ["refund", "bet", "bet", "payout", "bet", "payout", "bet", "withdrawal", "deposit"]
    assert usd["entries"][0]["balance_after"] == wallet.balance()
    page = get(wallet, "/api/players/player-42/ledger", limit=3).json
    assert len(page["entries"]) == 3 and page["next_cursor"]
    rest = get(wallet, "/api/players/player-42/ledger", limit=500, cursor=page["next_cursor"]).json
    assert len(page["entries"]) + len(rest["entries"]) == 10 and rest["next_cursor"] is None


def test_callbacks_audit_log_filters(wallet):
    wallet.deposit("1.00")
    wallet.start(bet=1)
    wallet.start(bet=2)  # conflict
    wallet.callback(b"{oops")
    conflicts = get(wallet, "/api/callbacks", outcome="conflict").json["callbacks"]
    assert len(conflicts) == 1 and conflicts[0]["status_code"] == 409 and '"bet": 2' in conflicts[0]["body"]
    invalid = get(wallet, "/api/callbacks", outcome="invalid").json["callbacks"]
    assert invalid[0]["body"] == "{oops"
    assert len(get(wallet, "/api/callbacks", game_id="g-1").json["callbacks"]) == 2
    assert len(get(wallet, "/api/callbacks", type="start").json["callbacks"]) == 2
    assert len(wallet.audit()) == 3


def test_every_audit_filter_finds_exactly_its_callbacks(wallet):
    """Everyday outcomes and types are left out of their partial indexes (store/schema.py): a filter finds
    the same rows whichever way it is answered."""
    wallet.deposit("1.00")
    wallet.start(game_id="a")  # accepted
    wallet.start(game_id="a")  # duplicate
    wallet.start(game_id="a", bet=2)  # conflict
    wallet.start(game_id="b", bet=5)  # declined
    wallet.finish(game_id="a", status="lose", payout=0)  # accepted
    wallet.callback(body(START, type="rollback"))  # ignored
    wallet.callback(b"{oops")  # invalid
    audit = get(wallet, "/api/callbacks", limit=500).json["callbacks"]
    assert len(audit) == 7
    present_types = {row["type"] for row in audit if row["type"] is not None}
    for column, values in (("outcome", schemas.CALLBACK_OUTCOMES), ("type", present_types | {"none-such"})):
        for value in values:
            found = get(wallet, "/api/callbacks", **{column: value}, limit=500).json["callbacks"]
            assert [row["id"] for row in found] == [row["id"] for row in audit if row[column] == value], (column, value)
    both = get(wallet, "/api/callbacks", outcome="accepted", type="finish").json["callbacks"]
    assert [(row["game_id"], row["type"]) for row in both] == [("a", "finish")]


QUERIES_ON_PARTIAL_INDEXES = [  # as money/books.py and wallet.py ask them
    ("idx_callbacks_outcome_id_partial", f"SELECT id FROM callbacks WHERE outcome = ? AND {schema.uncommon('outcome')} "
                                         "ORDER BY id DESC LIMIT 50", ["conflict"]),
    ("idx_callbacks_type_id_partial", f"SELECT id FROM callbacks WHERE type = ? AND {schema.uncommon('type')} "
                                      "ORDER BY id DESC LIMIT 50", ["rollback"]),
    ("idx_games_wallet_id_settled_at_partial", "SELECT game_id FROM games WHERE wallet_id = ? AND settled_at >= ? "
                                               f"AND {schema.CREDITED} ORDER BY settled_at, game_id", [1, 0]),
]


@pytest.mark.parametrize("index, sql, params", QUERIES_ON_PARTIAL_INDEXES, ids=[q[0] for q in QUERIES_ON_PARTIAL_INDEXES])
def test_the_queries_of_partial_indexes_can_use_them(wallet, index, sql, params):
    """A partial index serves only queries that state its condition; on an empty table the
    planners prefer a scan, so PostgreSQL is told to avoid one where it can."""
    if store.is_database_url(wallet.database):
        execute(wallet.database, "SET enable_seqscan = off")
        plan = query(wallet.database, "EXPLAIN " + sql, params)
        execute(wallet.database, "RESET enable_seqscan")
    else:
        plan = query(wallet.database, "EXPLAIN QUERY PLAN " + sql, params)
    assert index in str(plan), plan


def test_a_finish_settles_its_game_found_by_its_key(wallet):
    """The finish's UPDATE also matches status, player, currency and bet. A worker's connection
    runs it as a prepared statement, whose generic plan PostgreSQL chooses once, on whatever
    statistics a young table has: that plan must still find the game by its key, not walk an
    index of the player's games or of the open ones. (With the match written as separate
    conditions, the generic plan took the player's index.)"""
    params = ["won", "2", "1", 200, 0, 1, 1, "g1", "p", "USD", 100]
    if store.is_database_url(wallet.database):
        numbers = itertools.count(1)
        sql = re.sub(r"\?", lambda _: f"${next(numbers)}", wallet_rules.SETTLE_FINISH)
        execute(wallet.database, f"PREPARE settle_finish AS {sql}")
        execute(wallet.database, "SET plan_cache_mode = force_generic_plan")
        try:
            literals = ", ".join(f"'{value}'" if isinstance(value, str) else str(value) for value in params)
            plan = query(wallet.database, f"EXPLAIN EXECUTE settle_finish({literals})")
        finally:
            execute(wallet.database, "RESET plan_cache_mode")
            execute(wallet.database, "DEALLOCATE settle_finish")
        assert "Index Scan using games_pkey" in str(plan) and "idx_" not in str(plan), plan
    else:
        plan = query(wallet.database, "EXPLAIN QUERY PLAN " + wallet_rules.SETTLE_FINISH, params)
        assert "sqlite_autoindex_games_1 (game_id=?)" in str(plan), plan


def test_indexes_an_earlier_version_made_whole_are_replaced_by_partial_ones(make_app, database):
    app = make_app()
    db.close_all(app)
    for name in schema.REPLACED_INDEXES:  # as an earlier version left them
        execute(database, f"DROP INDEX IF EXISTS {name}_partial")
        column = {"idx_games_wallet_id_settled_at": "games (wallet_id, settled_at)",
                  "idx_callbacks_outcome_id": "callbacks (outcome, id)", "idx_callbacks_type_id": "callbacks (type, id)"}[name]
        execute(database, f"CREATE INDEX {name} ON {column}")
    make_app()  # the service starts on it
    names = {schema.index_name(table, columns, condition) for table, columns, _, condition in schema.INDEXES}
    if store.is_database_url(database):
        present = {row[0] for row in query(database, "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}
    else:
        present = {row[0] for row in query(database, "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert names <= present and not present & set(schema.REPLACED_INDEXES), present


def test_cli_history_tables_and_json(runner, wallet):
    play_a_little(wallet)
    games = runner.invoke(args=["wallet", "games", "--status", "won"])
    assert games.exit_code == 0 and games.output.splitlines()[0].split()[:2] == ["game_id", "status"]
    assert "won" in games.output.splitlines()[1]
    as_json = json.loads(runner.invoke(args=["wallet", "games", "--json", "--limit", "2"]).output)
    assert len(as_json["games"]) == 2 and as_json["next_cursor"]
    ledger = runner.invoke(args=["wallet", "ledger", "player-42", "--currency", "BTC"])
    assert ledger.exit_code == 0 and "1.00000000" in ledger.output
    callbacks = json.loads(runner.invoke(args=["wallet", "callbacks", "--json", "--outcome", "declined"]).output)
    assert [c["game_id"] for c in callbacks["callbacks"]] == ["declined"]
    bad = runner.invoke(args=["wallet", "games", "--since", "someday"])
    assert bad.exit_code == 1 and "invalid input" in bad.output


# --- backups ----------------------------------------------------------------------------


def test_backup_is_a_consistent_copy_and_never_overwrites(runner, wallet, tmp_path):
    play_a_little(wallet)
    target = tmp_path / "backup.db"
    result = runner.invoke(args=["wallet", "backup", str(target)])
    assert result.exit_code == 0, result.output
    assert books(str(target)) == wallet.books()
    again = runner.invoke(args=["wallet", "backup", str(target)])
    assert again.exit_code == 1 and "exists" in again.output


def test_backup_creates_its_directory_and_reports_what_it_cannot_write(runner, wallet, tmp_path):
    play_a_little(wallet)
    target = tmp_path / "backups" / "daily" / "wallet.db"
    result = runner.invoke(args=["wallet", "backup", str(target)])
    assert result.exit_code == 0, result.output
    assert books(str(target)) == wallet.books()
    (tmp_path / "a-file").write_text("")
    denied = runner.invoke(args=["wallet", "backup", str(tmp_path / "a-file" / "wallet.db")])
    assert denied.exit_code == 1 and "cannot write" in denied.output, denied.output
    assert not isinstance(denied.exception, OSError)  # a clear message, not a traceback


@pytest.mark.parametrize("target", ["", " ", ":memory:", "file:{tmp}/uri.db?mode=rwc", "file:uri.db", "FILE:x.db",
                                    "{tmp}/folder/", "{tmp}/exists.db", "{tmp}/dangling", "{tmp}/a-directory"])
def test_backup_refuses_what_is_not_a_plain_path_to_a_new_file_in_one_line(runner, wallet, tmp_path, monkeypatch, target):
    play_a_little(wallet)
    monkeypatch.chdir(tmp_path)  # where SQLite would have made a stray 'file:' folder
    (tmp_path / "exists.db").write_bytes(b"not mine")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere.db")
    (tmp_path / "a-directory").mkdir()
    before = sorted(path.name for path in tmp_path.rglob("*"))
    result = runner.invoke(args=["wallet", "backup", target.format(tmp=tmp_path)])
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1, result.output
    assert sorted(path.name for path in tmp_path.rglob("*")) == before  # nothing written, no folder made
    assert (tmp_path / "exists.db").read_bytes() == b"not mine"


@pytest.mark.parametrize("target", ["file:{tmp}/uri.db?mode=rwc", "file:uri.db", ":memory:", "", "{tmp}/dangling"])
def test_copy_refuses_what_is_not_a_plain_path_to_a_new_file_and_makes_no_folder(runner, wallet, tmp_path, monkeypatch, target):
    play_a_little(wallet)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere.db")
    before = sorted(path.name for path in tmp_path.rglob("*"))
    result = runner.invoke(args=["wallet", "copy", target.format(tmp=tmp_path)])
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1, result.output
    assert sorted(path.name for path in tmp_path.rglob("*")) == before


def test_a_backup_exits_0_only_with_a_file_that_opens_and_reconciles(runner, wallet, tmp_path):
    play_a_little(wallet)
    target = tmp_path / "new" / "backup.db"
    result = runner.invoke(args=["wallet", "backup", str(target)])
    assert result.exit_code == 0 and "its books balance" in result.output, result.output
    assert [path.name for path in (tmp_path / "new").iterdir()] == ["backup.db"]  # no temporary file left
    assert books(str(target)) == wallet.books()
    wallet.sql("UPDATE wallets SET balance = balance + 1")  # books that do not balance: copied, and said
    skewed = runner.invoke(args=["wallet", "backup", str(tmp_path / "skewed.db")])
    assert skewed.exit_code == 3 and "do not balance" in skewed.output, skewed.output
    assert (tmp_path / "skewed.db").exists()


def test_two_backups_racing_for_one_name_one_wins_and_the_other_leaves_its_file(wallet, tmp_path):
    from harness.live import flask_cli

    play_a_little(wallet)
    padding = b"x" * 2000  # enough audit rows that a backup takes a while: time to stop it half-way
    books_store = store_for(wallet.database)
    with books_store.transaction():
        books_store.executemany(
            "INSERT INTO callbacks (received_at, outcome, status_code, body) VALUES (?, 'ignored', 200, ?)",
            [(n, padding) for n in range(20_000)])
    target = tmp_path / "race.db"
    environment = {**os.environ, **store_settings(wallet.database), "CURRENCY_DECIMALS": "USD=2,EUR=2,BTC=8"}
    first = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "wallet", "backup", str(target)],
                             cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".race.db.*.partial")):  # the first is past its checks, writing
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.0005)
    first.send_signal(signal.SIGSTOP)
    try:
        second = flask_cli("wallet", "backup", str(target), **store_settings(wallet.database),
                           CURRENCY_DECIMALS="USD=2,EUR=2,BTC=8")
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=60)
    assert second.returncode == 0, second
    assert first.returncode == 1 and "written meanwhile" in err and len(err.splitlines()) == 1, (out, err)
    assert books(str(target)) == wallet.books()  # the winner's file, whole
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".race")] == []


# --- against a live gunicorn, while callbacks flow -------------------------------------------


def _finish_all(server, games, answered):
    """Send each game's finish (a win at x2) in parallel, recording the answers."""

    def send(game_id):
        answered[game_id] = server.callback(body(FINISH, **{
            "game.id": game_id, "game.status": "win", "game.payout": 2, "game.bet": 1,
            "session.playerId": "stuck-player"}))

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(send, games))


def test_refund_stale_racing_finishes_never_refunds_and_pays_one_game(gunicorn, make_app):
    server = gunicorn("race", workers=2)
    server.deposit("stuck-player", "1000.00")
    games = [f"stuck-{n}" for n in range(300)]
    for game_id in games:
        start = body(START, **{"game.id": game_id, "game.bet": 1, "session.playerId": "stuck-player"})
        assert server.callback(start) == (200, {"result": True})

    answered = {}
    # Built before the finishes flow: the race is the job's refunds against the finishes, and a
    # worker's threads settle those in parallel, faster than the app is made on a busy machine.
    cron = make_app(database=server.database).test_cli_runner()
    finishing = threading.Thread(target=_finish_all, args=(server, games, answered))
    finishing.start()
    deadline = time.monotonic() + 30
    while len(answered) < 20:  # the finishes are flowing: now the cron job runs
        assert finishing.is_alive() and time.monotonic() < deadline, "the finishes stopped"
        time.sleep(0.001)
    result = cron.invoke(args=["wallet", "refund-stale", "--older-than", "0", "--yes"])
    finishing.join()

    assert result.exit_code == 0, result.output
    refunded = set(re.findall(r"^refunded  (stuck-\d+) ", result.output, re.M))
    paid = {game_id for game_id, answer in answered.items() if answer == (200, {})}
    refused = {game_id for game_id, (status, answer) in answered.items()
               if status == 409 and "was refunded" in answer["message"]}
    assert paid and refunded, "the race did not happen: every game went one way"
    assert paid | refused == set(games) and not paid & refused
    assert refunded == refused  # a refunded game's finish is refused, and only those
    rows = collections.defaultdict(list)
    state = books(server.database)
    for _, amount, kind, game_id, _ in state["ledger"]:
        rows[game_id].append((kind, amount))
    for game_id in games:
        expected = [("bet", -100), ("refund", 100)] if game_id in refunded else [("bet", -100), ("payout", 200)]
        assert rows[game_id] == expected, game_id
    assert state["wallets"][("stuck-player", "USD")] == 100000 - 100 * len(paid) + 200 * len(paid)
    assert f"total refunded: {len(refunded)} bet(s)" in result.output
    reconcile = cron.invoke(args=["wallet", "reconcile"])
    assert reconcile.exit_code == 0, reconcile.output


def test_backup_taken_during_writes_opens_and_reconciles(gunicorn, make_app, tmp_path):
    server = gunicorn("live", workers=2)
    server.deposit("busy-player", "1000000.00")
    stop, statuses = threading.Event(), collections.Counter()

    def play():
        for n in itertools.count():
            game_id = f"busy-{n}"
            if stop.is_set():
                return
            for payload in (body(START, **{"game.id": game_id, "session.playerId": "busy-player"}),
                            body(FINISH, **{"game.id": game_id, "session.playerId": "busy-player"})):
                statuses[server.callback(payload)[0]] += 1

    def more_games(count=30):
        """Wait until `count` more callbacks were answered: progress, however slow the machine."""
        target, deadline = sum(statuses.values()) + count, time.monotonic() + 60
        while sum(statuses.values()) < target:
            assert time.monotonic() < deadline and all(t.is_alive() for t in playing), "the games stopped"
            time.sleep(0.01)

    playing = [threading.Thread(target=play) for _ in range(3)]  # the same games thrice: duplicates too
    for thread in playing:
        thread.start()
    more_games()
    app = make_app(database=server.database)
    copies = [tmp_path / f"backup-{n}.db" for n in range(3)]
    for copy in copies:
        result = app.test_cli_runner().invoke(args=["wallet", "backup", str(copy)])
        assert result.exit_code == 0, result.output
        more_games()  # games go on between copies, and after the last
    stop.set()
    for thread in playing:
        thread.join()

    settled = []
    for copy in copies + [server.database]:
        state = books(copy)  # opens; every balance equals its ledger sum
        settled.append(sum(status == "won" for _, status, _, _ in state["games"]))
        restored = make_app(database=copy).test_cli_runner().invoke(args=["wallet", "reconcile"])
        assert restored.exit_code == 0, restored.output
    assert 0 < settled[0] <= settled[-2] < settled[-1], "the copies were not taken while games were played"
    assert list(statuses) == [200]
