"""The least code that does the callback wallet's durable work: issue 13's reference.

What a wallet must do and no more, on the project's stack (Flask, served by gunicorn with the
repository's gunicorn.conf.py) and engines: one database connection per worker process; each
callback one transaction that looks the game up by id, debits or credits the wallet with a
ledger row and records the game; idempotent by game id (a repeated start or finish moves
nothing); no validation. Plus the least the project's features cost: the raw body and the
answer in an audit row indexed by game id, in the same transaction, and one log line per
callback (at LOG_LEVEL, INFO by default, as the service).

- SQLite (DATABASE_PATH): WAL, `synchronous` from SQLITE_SYNCHRONOUS (FULL by default),
  `BEGIN IMMEDIATE`, as the project.
- PostgreSQL (DATABASE_URL): the same statements; READ COMMITTED with the project's locking
  idea: an advisory lock on the transaction's key (the game id) until it ends, and the
  balance changed by a conditional UPDATE, which PostgreSQL re-checks on the row it locks.

It answers what bench/callbacks.py sends: POST /callback/<CALLBACK_TOKEN> with the provider's
`start` ({"result": true|false}) and `finish` ({}); POST /api/players/<p>/deposits
{"currency", "amount", "reference"} (201 {"balance"}; no token, not idempotent: the bench
never repeats one), GET /api/players/<p>/balances/<currency> and GET /healthz. Amounts have
2 decimals. The bench creates the schema (create_schema) before gunicorn starts, and checks
the books (check_books) after the load.
"""

import contextlib
import decimal
import hmac
import json
import os
import sqlite3
import threading
import time

from flask import Flask, abort, request

# As the project's store/postgres.py: psycopg waits for the server in C, so both are measured alike.
os.environ.setdefault("PSYCOPG_WAIT_FUNC", "wait_c")

SCHEMA = """
CREATE TABLE IF NOT EXISTS wallets (id {id}, player_id TEXT NOT NULL, currency TEXT NOT NULL,
    balance BIGINT NOT NULL CHECK (balance >= 0), UNIQUE (player_id, currency));
CREATE TABLE IF NOT EXISTS ledger (id {id}, wallet_id BIGINT NOT NULL, amount BIGINT NOT NULL,
    kind TEXT NOT NULL, game_id TEXT, reference TEXT);
CREATE TABLE IF NOT EXISTS games (game_id TEXT PRIMARY KEY, wallet_id BIGINT, bet BIGINT NOT NULL,
    status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (id {id}, game_id TEXT, body {blob}, answer TEXT);
CREATE INDEX IF NOT EXISTS audit_game_id ON audit (game_id)
"""


class Books:
    """One connection; `run` takes SQL written once for both engines, with `?` placeholders."""

    def __init__(self, target, synchronous="FULL"):
        self.postgres = target.startswith(("postgresql://", "postgres://"))
        if self.postgres:
            import psycopg

            self.conn = psycopg.connect(target, autocommit=True)
        else:
            self.conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=10)
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute(f"PRAGMA synchronous = {synchronous}")

    def run(self, sql, *params):
        return self.conn.execute(sql.replace("?", "%s") if self.postgres else sql, params)

    @contextlib.contextmanager
    def transaction(self, key):
        """One write transaction, serialised with every other one on `key`."""
        if self.postgres:
            self.run("BEGIN")
            self.run("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", key)
        else:
            self.run("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.run("ROLLBACK")
            raise
        self.run("COMMIT")


def minor(amount):
    return int((decimal.Decimal(amount) * 100).to_integral_value(decimal.ROUND_HALF_EVEN))


def start(db, game, session):
    """Debit the bet once per game id; a start declined for its balance may be tried again."""
    seen = db.run("SELECT status FROM games WHERE game_id = ?", game["id"]).fetchone()
    if seen and seen[0] != "declined":
        return {"result": True}
    bet = minor(game["bet"])
    wallet = db.run("UPDATE wallets SET balance = balance - ? WHERE player_id = ? AND currency = ? "
                    "AND balance >= ? RETURNING id", bet, session["playerId"], session["currency"], bet).fetchone()
    if wallet:
        db.run("INSERT INTO ledger (wallet_id, amount, kind, game_id) VALUES (?, ?, 'bet', ?)", wallet[0], -bet, game["id"])
    db.run("INSERT INTO games (game_id, wallet_id, bet, status) VALUES (?, ?, ?, ?) ON CONFLICT (game_id) "
           "DO UPDATE SET wallet_id = excluded.wallet_id, bet = excluded.bet, status = excluded.status",
           game["id"], wallet and wallet[0], bet, "open" if wallet else "declined")
    return {"result": bool(wallet)}


def finish(db, game):
    """Credit bet x payout on a win (a 0 payout row on a loss), once per game id."""
    row = db.run("SELECT wallet_id, bet FROM games WHERE game_id = ? AND status = 'open'", game["id"]).fetchone()
    if row:
        won = game["status"] == "win"
        credit = int((row[1] * decimal.Decimal(game["payout"])).to_integral_value(decimal.ROUND_HALF_EVEN)) if won else 0
        db.run("UPDATE wallets SET balance = balance + ? WHERE id = ?", credit, row[0])
        db.run("INSERT INTO ledger (wallet_id, amount, kind, game_id) VALUES (?, ?, 'payout', ?)", row[0], credit, game["id"])
        db.run("UPDATE games SET status = ? WHERE game_id = ?", "won" if won else "lost", game["id"])
    return {}


def create_app():
    app = Flask(__name__)
    app.logger.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
    target = os.environ.get("DATABASE_URL") or os.environ["DATABASE_PATH"]
    token = os.environ.get("CALLBACK_TOKEN", "").encode()
    lock, opened = threading.Lock(), {}  # one connection per worker, one request at a time on it

    def books():
        if opened.get("pid") != os.getpid():
            opened.update(pid=os.getpid(), books=Books(target, os.environ.get("SQLITE_SYNCHRONOUS", "FULL")))
        return opened["books"]

    @app.post("/callback/<key>")
    def callback(key):
        began = time.perf_counter()
        if not hmac.compare_digest(key.encode(), token):
            abort(403)
        raw = request.get_data()
        cb = json.loads(raw, parse_float=decimal.Decimal)
        game = cb["game"]
        with lock, books().transaction(f"game:{game['id']}") as db:
            kind = cb["type"]
            answer = start(db, game, cb["session"]) if kind == "start" else finish(db, game) if kind == "finish" else {}
            db.run("INSERT INTO audit (game_id, body, answer) VALUES (?, ?, ?)", game["id"], raw, json.dumps(answer))
        app.logger.info("callback type=%s game=%s answer=%s ms=%.1f", kind, game["id"], answer,
                        (time.perf_counter() - began) * 1000)
        return answer

    @app.post("/api/players/<player>/deposits")
    def deposit(player):
        body = json.loads(request.get_data(), parse_float=decimal.Decimal)
        amount, currency = minor(body["amount"]), body["currency"]
        with lock, books().transaction(f"deposit:{body['reference']}") as db:
            db.run("INSERT INTO wallets (player_id, currency, balance) VALUES (?, ?, 0) "
                   "ON CONFLICT (player_id, currency) DO NOTHING", player, currency)
            wallet = db.run("UPDATE wallets SET balance = balance + ? WHERE player_id = ? AND currency = ? "
                            "RETURNING id, balance", amount, player, currency).fetchone()
            db.run("INSERT INTO ledger (wallet_id, amount, kind, reference) VALUES (?, ?, 'deposit', ?)",
                   wallet[0], amount, body["reference"])
        return {"balance": str(decimal.Decimal(wallet[1]).scaleb(-2))}, 201

    @app.get("/api/players/<player>/balances/<currency>")
    def balance(player, currency):
        with lock:
            row = books().run("SELECT balance FROM wallets WHERE player_id = ? AND currency = ?",
                              player, currency).fetchone()
        return {"balance": str(decimal.Decimal(row[0]).scaleb(-2))} if row else abort(404)

    @app.get("/healthz")
    def healthz():
        with lock:
            books().run("SELECT 1").fetchone()
        return {"status": "ok"}

    return app


# --- for the bench: before and after the load ---------------------------------------------


def create_schema(target, synchronous="FULL"):
    """Create the tables (and, on SQLite, switch the file to WAL) before any worker starts."""
    db = Books(target, synchronous)
    types = ({"id": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "blob": "BYTEA"} if db.postgres
             else {"id": "INTEGER PRIMARY KEY", "blob": "BLOB"})
    for statement in SCHEMA.split(";"):
        db.run(statement.format(**types))
    db.conn.close()


def check_books(target):
    """What does not add up: a balance other than its ledger's sum, a game whose ledger rows do
    not match its status (open: its bet; won or lost: bet and payout; declined: none)."""
    db = Books(target)
    problems = [f"wallet {w}: balance {b}, ledger sum {s}" for w, b, s in db.run(
        "SELECT w.id, w.balance, coalesce(sum(l.amount), 0) FROM wallets w LEFT JOIN ledger l "
        "ON l.wallet_id = w.id GROUP BY w.id, w.balance HAVING w.balance <> coalesce(sum(l.amount), 0)")]
    problems += [f"game {g}: {status} with {n} ledger rows" for g, status, n in db.run(
        "SELECT g.game_id, g.status, count(l.id) FROM games g LEFT JOIN ledger l ON l.game_id = g.game_id "
        "GROUP BY g.game_id, g.status "
        "HAVING count(l.id) <> CASE g.status WHEN 'open' THEN 1 WHEN 'declined' THEN 0 ELSE 2 END")]
    counts = {table: db.run(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("wallets", "games", "audit")}
    db.conn.close()
    return problems, counts
