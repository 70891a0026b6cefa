"""The Flask CLI: the same deposits, withdrawals and balances as the API."""

import json

from harness.live import flask_cli
from harness.samples import store_settings


def test_init_db_creates_the_schema(runner, app):
    result = runner.invoke(args=["init-db"])
    assert result.exit_code == 0 and "Database ready: " in result.output, result.output


def test_deposit_withdraw_and_balance(runner, wallet):
    result = runner.invoke(args=["wallet", "deposit", "player-42", "USD", "10.005", "--reference", "cli-1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["balance"] == "10.00"  # half-to-even
    result = runner.invoke(args=["wallet", "withdraw", "player-42", "USD", "2.5"])
    assert result.exit_code == 0 and json.loads(result.output)["balance"] == "7.50"
    result = runner.invoke(args=["wallet", "balance", "player-42", "USD"])
    assert json.loads(result.output)["balance"] == wallet.balance() == "7.50"
    result = runner.invoke(args=["wallet", "balance", "player-42"])
    assert [w["currency"] for w in json.loads(result.output)["balances"]] == ["USD"]


def test_repeated_reference_moves_nothing(runner, wallet):
    args = ["wallet", "deposit", "player-42", "USD", "3", "--reference", "cli-1"]
    assert runner.invoke(args=args).exit_code == 0
    again = runner.invoke(args=args)
    assert again.exit_code == 0 and "already applied" in again.stderr
    assert wallet.balance() == "3.00"
    conflict = runner.invoke(args=["wallet", "deposit", "player-42", "USD", "4", "--reference", "cli-1"])
    assert conflict.exit_code == 1 and "reference_conflict" in conflict.output


def test_refusals_exit_non_zero_and_move_nothing(runner, wallet):
    wallet.deposit("1.00")
    before = wallet.books()
    for args in (
        ["wallet", "withdraw", "player-42", "USD", "5"],
        ["wallet", "deposit", "player-42", "USD", "ten"],
        ["wallet", "deposit", "player-42", "USD", "--", "-1"],
        ["wallet", "deposit", "player-42", "USD", "NaN"],
        ["wallet", "balance", "player-42", "EUR"],
    ):
        result = runner.invoke(args=args)
        assert result.exit_code == 1 and "Error:" in result.output, (args, result.output)
    assert wallet.books() == before


def test_an_argument_that_was_not_utf8_is_refused(runner, wallet):
    # Python turns an undecodable argv byte into a lone surrogate, which SQLite cannot store.
    for args in (["deposit", "player-\udcff", "USD", "1"], ["deposit", "player-42", "US\udcff", "1"],
                 ["deposit", "player-42", "USD", "1", "--reference", "r-\udcff"],
                 ["balance", "player-\udcff"], ["refund", "g-\udcff"], ["ledger", "player-\udcff"],
                 ["games", "--player", "p-\udcff"], ["callbacks", "--game-id", "g-\udcff"]):
        result = runner.invoke(args=["wallet", *args])
        assert result.exit_code == 2 and "is not valid UTF-8 text" in result.output, (args, result.output)
    assert wallet.books()["wallets"] == {}


def test_a_command_refuses_a_database_that_is_not_there(new_database, engine):
    """A command pointed at the wrong place says so in one line (exit 1) and creates nothing:
    a SQLite file that does not exist, a PostgreSQL database without the wallet's tables."""
    target = new_database("elsewhere")  # SQLite: a path with no file; PostgreSQL: an empty database
    result = flask_cli("wallet", "reconcile", **store_settings(target))
    assert result.returncode == 1, result
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    expected = f"Error: no database at {target}" if engine == "sqlite" else "holds no wallet tables"
    assert expected in result.stderr and "init-db" in result.stderr
    created = flask_cli("init-db", **store_settings(target))
    assert created.returncode == 0, created
    assert flask_cli("wallet", "reconcile", **store_settings(target)).returncode == 0


def test_a_command_pointed_at_a_missing_folder_creates_nothing(tmp_path):
    missing = tmp_path / "wrong" / "path.db"
    result = flask_cli("wallet", "balance", "player-42", DATABASE_PATH=str(missing))
    assert result.returncode == 1 and str(missing) in result.stderr
    assert not (tmp_path / "wrong").exists()
