"""The operator's API: deposits, withdrawals and balances, behind `Authorization: Bearer`."""

import contextlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import threading

from flask import Blueprint, current_app, jsonify, request

import schemas
import wallet
from db import get_db
from store import DatabaseUnavailable
from money import books
from money.refusals import ApiError
from money.views import player_wallets, wallet_view
from web import bodies

bp = Blueprint("api", __name__, url_prefix="/api")

# A reconciliation reads the whole books (on 1,000,000 games: tens of seconds of a core): one at
# a time per worker; one asked for meanwhile is refused with a 503 `busy` and Retry-After. Past
# RECONCILE_APART_ROWS ledger rows it runs in a process of its own at a low CPU priority (the
# CLI's `wallet reconcile --json`): its Python loop then holds neither this worker's GIL nor a
# core the callbacks want (two on 1,000,000 games slowed a start in their workers from 11 to
# 470 ms at most, measured); smaller books are reconciled here in a moment.
_reconciling = threading.Lock()
RECONCILE_RETRY_AFTER_S = 30
RECONCILE_APART_ROWS = 200_000
RECONCILE_NICENESS = 10


@bp.before_request
def require_admin_token():
    """Refuse every /api request without the configured ADMIN_TOKEN."""
    require_bearer("ADMIN_TOKEN", "The operator API")


def require_bearer(setting, what):
    """Refuse a request unless it sends the token configured as `setting`, as
    'Authorization: Bearer <token>' (compared in constant time): 401; without the setting,
    `what` is disabled: 403, saying how to set it."""
    expected = current_app.config[setting]
    if expected is None:
        raise ApiError(403, f"{setting.lower()}_not_configured",
                       f"{what} is disabled: set the {setting} environment variable "
                       f"and send it as 'Authorization: Bearer <{setting}>'.")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise ApiError(401, "unauthorized", f"Send 'Authorization: Bearer <{setting}>'.",
                       headers={"WWW-Authenticate": "Bearer"})


@bp.before_request
def check_path():
    """Refuse (400, naming the field) a player, currency or game id no identifier may be."""
    schemas.load(schemas.path_schema, request.view_args or {}, "path")


def _movement(kind, player_id):
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "Send the request as Content-Type: application/json.")
    body = schemas.movement_schema.load(schemas.parse_json(bodies.read_body()))
    status, wallet_body = wallet.move_funds(
        get_db(), kind, player_id, body["currency"], body["amount"], body["reference"]
    )
    return jsonify(wallet_body), status


@bp.post("/players/<player_id>/deposits")
def deposit(player_id):
    """Credit a player's wallet once per reference (201; a repeat answers 200 the same)."""
    return _movement("deposit", player_id)


@bp.post("/players/<player_id>/withdrawals")
def withdraw(player_id):
    """Debit a player's wallet once per reference; 409 insufficient_funds above the balance."""
    return _movement("withdrawal", player_id)


@bp.get("/players/<player_id>/balances")
def balances(player_id):
    """List a player's wallets in every currency."""
    return jsonify({"player_id": player_id, "balances": player_wallets(get_db(), player_id)})


@bp.get("/players/<player_id>/balances/<currency>")
def balance(player_id, currency):
    """Show one wallet; 404 if the player has none in that currency."""
    view = wallet_view(get_db(), player_id, currency)
    if view is None:
        raise ApiError(404, "not_found", f"Player {player_id!r} has no {currency} wallet.")
    return jsonify(view)


@bp.post("/games/<game_id>/refund")
def refund(game_id):
    """Return an open bet's stake to its wallet (a repeat answers the same, moving nothing)."""
    status, body = wallet.refund_game(get_db(), game_id)
    return jsonify(body), status


@bp.post("/games/<game_id>/settle")
def settle(game_id):
    """Pay a win held unpaid, as much as its wallet can take (a settled game answers the same)."""
    status, body = wallet.settle_game(get_db(), game_id)
    return jsonify(body), status


@bp.get("/games")
def games():
    """List games, newest start first."""
    query = schemas.load(schemas.games_query, request.args, "query string")
    return jsonify(books.list_games(get_db(), **query))


@bp.get("/games/<game_id>")
def game(game_id):
    """Show one game with its ledger rows and the callbacks received for it."""
    detail = books.game_detail(get_db(), game_id)
    if detail is None:
        raise ApiError(404, "not_found", f"No game has id {game_id!r}.")
    return jsonify(detail)


@bp.get("/players/<player_id>/ledger")
def ledger(player_id):
    """List a player's ledger rows, newest first."""
    query = schemas.load(schemas.ledger_query, request.args, "query string")
    return jsonify(books.list_ledger(get_db(), player_id, **query))


@bp.get("/callbacks")
def callbacks():
    """List the callbacks received (the audit log), newest first."""
    query = schemas.load(schemas.callbacks_query, request.args, "query string")
    return jsonify(books.list_callbacks(get_db(), **query))


@bp.get("/reconcile")
def reconcile():
    """Check that the books balance: one reconciliation at a time per worker."""
    if not _reconciling.acquire(blocking=False):
        raise ApiError(503, "busy",
                       "A reconciliation is already running on this worker; retry later, or run "
                       "'flask --app app wallet reconcile' beside the service for large books.",
                       headers={"Retry-After": str(RECONCILE_RETRY_AFTER_S)})
    try:
        store = get_db()
        if books.size(store) <= RECONCILE_APART_ROWS:
            return jsonify(books.reconcile(store))
        return jsonify(_reconcile_apart())
    finally:
        _reconciling.release()


def _reconcile_apart():
    """Run `flask --app app wallet reconcile --json` on this app's books, niced; its report."""
    config = current_app.config
    env = {key: value for key, value in os.environ.items()
           if key not in ("DATABASE_URL", "LITESTREAM_REPLICA_URL", "FLASK_APP")}
    env.update(DATABASE_PATH=str(config["DATABASE_PATH"]), SQLITE_SYNCHRONOUS=config["SQLITE_SYNCHRONOUS"],
               CURRENCY_DECIMALS=",".join(f"{code}={places}" for code, places in config["CURRENCY_DECIMALS"].items()))
    if config["DATABASE_URL"]:
        env["DATABASE_URL"] = config["DATABASE_URL"]
    command = [sys.executable, "-m", "flask", "--app", "app", "wallet", "reconcile", "--json"]
    if nice := shutil.which("nice"):
        command = [nice, "-n", str(RECONCILE_NICENESS), *command]
    current_app.logger.info("reconciling %s ledger rows in a process of its own", f"more than {RECONCILE_APART_ROWS:,}")
    done = subprocess.run(command, cwd=current_app.root_path, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False)
    if done.returncode in (0, 3):  # 3: the books do not balance (the report says how)
        with contextlib.suppress(ValueError):
            return json.loads(done.stdout)
    reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    raise DatabaseUnavailable(f"the reconciliation could not read the books: {reason}", away=False)
