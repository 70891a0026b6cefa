"""Running it: health, start-up configuration, and the guard on currency decimals."""

import sqlite3

import pytest

import app as app_module
import db


def test_healthz_is_ok_after_a_database_round_trip(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "ok"}


def test_healthz_is_503_when_the_database_is_unusable(app, client):
    with sqlite3.connect(app.config["DATABASE_PATH"]) as conn:
        conn.execute("DROP TABLE ledger")
        conn.execute("DROP TABLE wallets")
    conn.close()
    response = client.get("/healthz")
    assert response.status_code == 503 and response.json["status"] == "unavailable"


def test_configuration_comes_from_the_environment(make_app, monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_PATH", str(tmp_path / "from-env.db"))
    monkeypatch.setenv("SQLITE_SYNCHRONOUS", "normal")
    app = app_module.create_app({"CALLBACK_TOKEN": "x"})
    try:
        assert app.config["DATABASE_PATH"] == str(tmp_path / "from-env.db")
        assert (tmp_path / "from-env.db").exists()
        with app.app_context():
            assert db.get_db().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
            assert db.get_db().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close_all(app)


def test_synchronous_is_full_by_default(app):
    with app.app_context():
        assert db.get_db().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


@pytest.mark.parametrize("config", [
    {"CURRENCY_DECIMALS": "USD"},
    {"CURRENCY_DECIMALS": "USD=two"},
    {"CURRENCY_DECIMALS": "USD=40"},
    {"CALLBACK_ALLOWED_IPS": "not-an-ip"},
    {"TRUSTED_PROXIES": "many"},
    {"TRUSTED_PROXIES": "-1"},
    {"SQLITE_SYNCHRONOUS": "SOMETIMES"},
])
def test_bad_configuration_refuses_to_start(make_app, config):
    with pytest.raises(RuntimeError):
        make_app(**config)


def test_changing_a_currencys_decimals_after_use_refuses_to_start(make_app, wallet):
    wallet.deposit("10.00")  # USD has 2 decimals: the wallet holds 1000 minor units
    with pytest.raises(RuntimeError, match="USD is stored with 2 decimals"):
        make_app(CURRENCY_DECIMALS="USD=8")
    assert wallet.balance() == "10.00"


def test_a_currency_keeps_its_decimals_when_the_setting_is_absent(make_app, wallet):
    wallet.deposit("10.00")
    # e.g. the CLI run without the server's environment: USD stays 2 decimals, not 8
    other = make_app(CURRENCY_DECIMALS="")
    result = other.test_cli_runner().invoke(args=["wallet", "deposit", "player-42", "USD", "0.015"])
    assert result.exit_code == 0, result.output
    assert wallet.balance() == "10.02"


def test_a_refused_first_deposit_does_not_fix_the_currencys_decimals(make_app, wallet):
    """A connection remembers decimals read from the database, but not from a rolled-back insert."""
    assert wallet.deposit("0.001").status_code == 400  # rounds to 0 USD cents: refused
    other = make_app(CURRENCY_DECIMALS="")  # another process fixes USD at 8 decimals first
    result = other.test_cli_runner().invoke(args=["wallet", "deposit", "player-42", "USD", "0.00000001"])
    assert result.exit_code == 0, result.output
    assert wallet.balance() == "0.00000001"


def test_a_first_deposit_sqlite_rolled_back_itself_does_not_fix_the_currencys_decimals(make_app, wallet):
    """After an error SQLite answers by rolling back on its own (a full disk, an I/O error),
    the connection must forget the decimals it read in that transaction too."""
    with sqlite3.connect(wallet.app.config["DATABASE_PATH"]) as conn:  # fault injection
        conn.execute("CREATE TRIGGER fail BEFORE INSERT ON operations BEGIN SELECT RAISE(ROLLBACK, 'disk full'); END")
    response = wallet.deposit("1.00")
    assert response.status_code == 500 and response.json["error"] == "internal_error"
    with sqlite3.connect(wallet.app.config["DATABASE_PATH"]) as conn:
        conn.execute("DROP TRIGGER fail")
    other = make_app(CURRENCY_DECIMALS="")  # another process fixes USD at 8 decimals first
    result = other.test_cli_runner().invoke(args=["wallet", "deposit", "player-42", "USD", "0.00000001"])
    assert result.exit_code == 0, result.output
    assert wallet.balance() == "0.00000001"
