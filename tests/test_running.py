"""Running it: health, start-up configuration, and the guard on currency decimals."""

import pytest
from psycopg.conninfo import conninfo_to_dict

import app as app_module
import db
from tests.support import execute


def test_healthz_is_ok_after_a_database_round_trip(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "ok"}


def test_healthz_is_503_when_the_database_is_unusable(app, client, database):
    execute(database, "DROP TABLE ledger")
    execute(database, "DROP TABLE wallets")
    response = client.get("/healthz")
    assert response.status_code == 503 and response.json["status"] == "unavailable"


def test_sqlite_configuration_comes_from_the_environment(monkeypatch, tmp_path):
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


def test_database_url_from_the_environment_selects_postgresql(monkeypatch, tmp_path, new_postgres_database):
    url = new_postgres_database()
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DATABASE_PATH", str(tmp_path / "unused.db"))
    app = app_module.create_app({"CALLBACK_TOKEN": "x"})
    try:
        with app.app_context():
            assert db.get_db().execute("SELECT current_database()").fetchone()[0] == conninfo_to_dict(url)["dbname"]
        assert not (tmp_path / "unused.db").exists()  # SQLite is not touched
    finally:
        db.close_all(app)


def test_sqlite_synchronous_is_full_by_default(tmp_path):
    app = app_module.create_app({"DATABASE_PATH": str(tmp_path / "wallet.db")})
    try:
        with app.app_context():
            assert db.get_db().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        db.close_all(app)


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
    with pytest.raises(db.StartupError):
        make_app(**config)


def test_changing_a_currencys_decimals_after_use_refuses_to_start(make_app, wallet):
    wallet.deposit("10.00")  # USD has 2 decimals: the wallet holds 1000 minor units
    with pytest.raises(db.StartupError, match="USD is stored with 2 decimals"):
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


# Fault injection: a trigger that fails a deposit's last insert, after the currency's row was
# written in the same transaction (SQLite: rolling back on its own, as after a full disk).
FAILING_INSERT = {
    "sqlite": ["CREATE TRIGGER fail BEFORE INSERT ON operations BEGIN SELECT RAISE(ROLLBACK, 'disk full'); END"],
    "postgresql": [
        "CREATE FUNCTION fail() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER fail BEFORE INSERT ON operations FOR EACH ROW EXECUTE FUNCTION fail()",
    ],
}


def test_a_first_deposit_that_failed_half_way_does_not_fix_the_currencys_decimals(make_app, wallet, engine):
    """After a transaction fails half-way (SQLite even rolls back on its own after a full disk
    or an I/O error), the connection must forget the decimals it read in it too."""
    for statement in FAILING_INSERT[engine]:
        wallet.sql(statement)
    response = wallet.deposit("1.00")
    assert response.status_code == 500 and response.json["error"] == "internal_error"
    wallet.sql("DROP TRIGGER fail" + (" ON operations" if engine == "postgresql" else ""))
    other = make_app(CURRENCY_DECIMALS="")  # another process fixes USD at 8 decimals first
    result = other.test_cli_runner().invoke(args=["wallet", "deposit", "player-42", "USD", "0.00000001"])
    assert result.exit_code == 0, result.output
    assert wallet.balance() == "0.00000001"
