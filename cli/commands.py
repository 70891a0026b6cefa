"""`flask --app app wallet ...`: the operator API's deposits, withdrawals and balances from a shell.

Exit codes, the same for every command: 0 done; 1 failed, it could not be done (refused
input, e.g. an identifier or amount the API would answer 400; no database; the database
unavailable); 2 a usage error (click's own: an unknown option, a missing argument, an
argument that is not UTF-8); 3 done, and found a problem (the books do not balance, a copy
differs from its source).
"""

import decimal
import json
import os
import sys
import uuid

import click
from flask import current_app
from flask.cli import AppGroup
from marshmallow import ValidationError

import db
import replication
import schemas
import store
import wallet
from money import books
from money.refusals import ApiError
from money.views import player_wallets, wallet_view
from store.copy import check_new_file, copy_books, new_file


class _Text(click.ParamType):
    """A command-line string SQLite can store: an argument that was not UTF-8 cannot be."""

    name = "text"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not schemas.storable(value):
            self.fail(f"{value!r} is not valid UTF-8 text", param, ctx)
        return value


TEXT = _Text()

EXIT_PROBLEM = 3


class _WalletGroup(AppGroup):
    """The `wallet` commands; a database that is away is one line and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except db.DatabaseUnavailable as exc:
            raise click.ClickException(f"the database is unavailable: {exc}") from None
        except store.ConfigurationError as exc:
            raise click.ClickException(str(exc)) from None


wallet_cli = _WalletGroup(
    "wallet",
    help="Move and read money, refund stuck bets, reconcile, list history, back up, copy the books.\n\n"
    "Exit codes: 0 done, 1 failed (refused input, database missing or unavailable), "
    "2 usage error, 3 found a problem (the books do not balance, a copy differs).",
)


def _echo(data):
    click.echo(json.dumps(data, indent=2))


def _move(kind, player, currency, amount, reference):
    def move():
        schemas.path_schema.load({"player_id": player})
        body = schemas.movement_schema.load(
            {"currency": currency, "amount": amount, "reference": reference or f"cli-{uuid.uuid4().hex}"}
        )
        return body, wallet.move_funds(db.get_db(), kind, player, body["currency"], body["amount"], body["reference"])

    body, (status, view) = _fail_on_api_error(move)
    if status == 200:
        click.echo(f"reference {body['reference']!r} was already applied; nothing moved", err=True)
    _echo(view)


def _movement_command(name, kind, help_text):
    @wallet_cli.command(name, help=help_text)
    @click.argument("player", type=TEXT)
    @click.argument("currency", type=TEXT)
    @click.argument("amount")
    @click.option("--reference", type=TEXT, help="Idempotency key; a repeat with the same one moves nothing.")
    def command(player, currency, amount, reference):
        _move(kind, player, currency, amount, reference)

    return command


deposit = _movement_command("deposit", "deposit", "Credit AMOUNT of CURRENCY to PLAYER's wallet.")
withdraw = _movement_command(
    "withdraw", "withdrawal", "Debit AMOUNT of CURRENCY from PLAYER's wallet (refused above the balance)."
)


@wallet_cli.command("balance")
@click.argument("player", type=TEXT)
@click.argument("currency", required=False, type=TEXT)
def balance(player, currency):
    """Show PLAYER's wallet in CURRENCY, or in every currency."""
    _identifiers(player_id=player, currency=currency)
    if currency is None:
        _echo({"player_id": player, "balances": player_wallets(db.get_db(), player)})
        return
    view = wallet_view(db.get_db(), player, currency)
    if view is None:
        raise click.ClickException(f"player {player!r} has no {currency} wallet")
    _echo(view)


def _identifiers(**values):
    """Refuse (exit 1, naming the field) an identifier the API would refuse in its path."""
    _fail_on_api_error(schemas.path_schema.load, {k: v for k, v in values.items() if v is not None})


def _fail_on_api_error(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except ValidationError as exc:
        raise click.ClickException(f"invalid input: {json.dumps(exc.messages)}") from None
    except ApiError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None


@wallet_cli.command("refund")
@click.argument("game_id", type=TEXT)
def refund(game_id):
    """Return GAME_ID's stake to its wallet (a bet whose finish never came)."""
    _identifiers(game_id=game_id)
    _status, body = _fail_on_api_error(wallet.refund_game, db.get_db(), game_id)
    _echo(body)


@wallet_cli.command("settle")
@click.argument("game_id", type=TEXT)
def settle(game_id):
    """Pay GAME_ID's win held unpaid (its finish could not credit it), as much as its wallet can take.

    List such games with `wallet games --status unpaid`; if the wallet is at its largest
    balance, withdraw from it first. Run it again until `owed` is 0.
    """
    _identifiers(game_id=game_id)
    _status, body = _fail_on_api_error(wallet.settle_game, db.get_db(), game_id)
    _echo(body)


# --older-than's bounds: past 10^11 s (3,000 years) no bet is older, and the cutoff would not fit
# the database's 64-bit integers; below REFUND_MINIMUM_S a bet's finish may well be on its way
# (a game can run for minutes), so refund-stale asks for --yes.
MAX_AGE_S = 10**11
REFUND_MINIMUM_S = 3600


def _checked_age(ctx, param, value):
    if value is not None and not 0 <= value <= MAX_AGE_S:
        raise click.ClickException(f"--older-than must be between 0 and {MAX_AGE_S:,} seconds, not {value}")
    return value


def _older_than(function):
    return click.option(
        "--older-than", "older_than", type=int, required=True, metavar="SECONDS", callback=_checked_age,
        help="Only bets whose start was received more than SECONDS ago.",
    )(function)


@wallet_cli.command("stale")
@_older_than
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def stale(older_than, as_json):
    """List open bets older than --older-than seconds."""
    games = wallet.stale_games(db.get_db(), older_than * 1000)
    _print_items(games, GAME_COLUMNS, as_json, {"games": games})


@wallet_cli.command("refund-stale")
@_older_than
@click.option("--dry-run", is_flag=True, help="Only list what would be refunded.")
@click.option("--yes", is_flag=True, help=f"Refund bets younger than {REFUND_MINIMUM_S} s too.")
def refund_stale(older_than, dry_run, yes):
    """Refund every open bet older than --older-than seconds, each in its own transaction.

    Safe while callbacks flow: a game whose finish arrives meanwhile is skipped. Below
    --older-than 3600 it needs --yes: a younger bet's winning finish may be on its way, and
    a refunded game's finish is refused.
    """
    if older_than < REFUND_MINIMUM_S and not dry_run and not yes:
        raise click.ClickException(
            f"--older-than {older_than} would refund bets started less than {REFUND_MINIMUM_S} s ago, whose "
            "finish (a win) may be on its way and would then be refused: list them with --dry-run, and "
            "add --yes to refund them anyway")
    totals = {}
    for game in wallet.stale_games(db.get_db(), older_than * 1000):
        label = f"{game['game_id']}  {game['player_id']}  {game['bet']} {game['currency']}  started {game['started_at']}"
        if not dry_run:
            try:
                wallet.refund_game(db.get_db(), game["game_id"])
            except ApiError as exc:  # settled (or refunded) since it was listed
                click.echo(f"skipped  {label}: {exc.message}")
                continue
        click.echo(f"{'would refund' if dry_run else 'refunded'}  {label}")
        count, amount = totals.get(game["currency"], (0, decimal.Decimal(0)))
        totals[game["currency"]] = (count + 1, amount + decimal.Decimal(game["bet"]))
    verb = "would refund" if dry_run else "refunded"
    if not totals:
        click.echo(f"{verb}: nothing (no open bet older than {older_than} s)")
    for currency, (count, amount) in sorted(totals.items()):
        click.echo(f"total {verb}: {count} bet(s), {amount} {currency}")


@wallet_cli.command("reconcile")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def reconcile(as_json):
    """Check that the books balance; exit 3 (found a problem) if they do not, 1 if they could not be checked."""
    report = books.reconcile(db.get_db())
    if as_json:
        _echo(report)
    else:
        click.echo(f"wallets: {report['wallets']}")
        click.echo("games: " + (", ".join(f"{k} {v}" for k, v in report["games"].items()) or "none"))
        for currency, sums in report["totals"].items():
            click.echo(f"{currency}: " + ", ".join(f"{label} {amount}" for label, amount in sums.items()))
        newest = [f"{table} row {row['id']} of {row['at']}" for table, row in report["newest"].items() if row]
        click.echo("newest: " + (", ".join(newest) or "nothing yet"))
        if report["server"]:
            # After a failover two servers may hold the books: the one with the older newest rows lacks the rest.
            click.echo(f"server: {report['server']}")
        for problem in report["discrepancies"]:
            click.echo(f"DISCREPANCY: {problem}")
        click.echo("the books balance" if report["ok"] else f"{len(report['discrepancies'])} discrepancies")
    if not report["ok"]:
        raise SystemExit(EXIT_PROBLEM)


GAME_COLUMNS = ("game_id", "status", "player_id", "currency", "bet", "payout", "credit", "started_at")
LEDGER_COLUMNS = ("id", "created_at", "currency", "kind", "amount", "balance_after", "game_id", "reference")
CALLBACK_COLUMNS = ("id", "received_at", "type", "game_id", "player_id", "outcome", "status_code", "reason")


def _print_items(items, columns, as_json, document):
    """Print a list as a readable table, or the whole document as JSON."""
    if as_json:
        _echo(document)
        return
    if not items:
        click.echo("nothing found")
        return
    rows = [[("" if item[column] is None else str(item[column])) for column in columns] for item in items]
    widths = [max([len(column)] + [len(row[i]) for row in rows]) for i, column in enumerate(columns)]
    for row in [list(columns)] + rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    if document.get("next_cursor"):
        click.echo(f"more: --cursor {document['next_cursor']}")


def _page_options(function):
    function = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(function)
    function = click.option("--cursor", help="Continue from a previous page.")(function)
    return click.option("--limit", default=50, show_default=True, help="Rows per page (at most 500).")(function)


def _print_page(query_schema, list_items, key, columns, as_json, options, *arguments):
    """Validate the options as the API validates its query string, then print one page."""
    query = _fail_on_api_error(query_schema.load, {k: v for k, v in options.items() if v is not None})
    document = _fail_on_api_error(list_items, db.get_db(), *arguments, **query)
    _print_items(document[key], columns, as_json, document)


@wallet_cli.command("games")
@click.option("--player", "player_id", type=TEXT)
@click.option("--status", type=click.Choice(schemas.GAME_STATUSES))
@click.option("--since", help="ISO 8601 time or epoch milliseconds.")
@_page_options
def games(as_json, **query):
    """List games, newest start first."""
    _print_page(schemas.games_query, books.list_games, "games", GAME_COLUMNS, as_json, query)


@wallet_cli.command("ledger")
@click.argument("player_id", type=TEXT)
@click.option("--currency", type=TEXT)
@_page_options
def ledger(player_id, as_json, **query):
    """List PLAYER_ID's ledger rows, newest first."""
    _identifiers(player_id=player_id)
    _print_page(schemas.ledger_query, books.list_ledger, "entries", LEDGER_COLUMNS, as_json, query, player_id)


@wallet_cli.command("callbacks")
@click.option("--outcome", type=click.Choice(schemas.CALLBACK_OUTCOMES))
@click.option("--type", type=TEXT)
@click.option("--game-id", type=TEXT)
@_page_options
def callbacks(as_json, **query):
    """List the callbacks received (the audit log), newest first."""
    _print_page(schemas.callbacks_query, books.list_callbacks, "callbacks", CALLBACK_COLUMNS, as_json, query)


@wallet_cli.command("backup")
@click.argument("path", type=TEXT)
def backup(path):
    """Write an online, consistent copy of the books to a new SQLite file at PATH (never overwrites).

    Exit 0 only once the file is there, opens and its books balance (3 when they do not).
    """
    source = db.get_db()
    try:
        with new_file(path) as written:
            source.backup(written)
            copy = store.SQLiteStore(written, create=False)
            try:
                report = books.reconcile(copy)
            finally:
                copy.close()
    except store.ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, db.DatabaseUnavailable) as exc:  # e.g. a full disk or a directory we may not write to
        raise click.ClickException(f"cannot write {path}: {exc}") from None
    if not report["ok"]:
        click.echo(f"backed up {source.label} to {path}, but its books do not balance: "
                   f"{len(report['discrepancies'])} discrepancies (see `wallet reconcile`)")
        raise SystemExit(EXIT_PROBLEM)
    click.echo(f"backed up {source.label} to {path}; the copy opens and its books balance")


@wallet_cli.command("copy")
@click.argument("target")
def copy(target):
    """Copy the whole books into an empty TARGET: a PostgreSQL URL or a new SQLite file path.

    The copy is one consistent snapshot of the configured books, written in one transaction;
    then both sides are compared (rows per table, per-currency sums of balances and ledger)
    and the target reconciled. Exit 3 if anything differs.
    """
    source = db.get_db()
    if not store.is_database_url(target):
        try:
            check_new_file(target)
        except store.ConfigurationError as exc:
            raise click.ClickException(f"{exc} (copy into a new SQLite file or an empty PostgreSQL database)") from None
    try:
        destination = store.open_store(target)
    except db.DatabaseUnavailable as exc:
        raise click.ClickException(f"cannot reach {target if not store.is_database_url(target) else 'the target'}: {exc}") from None
    try:
        with source.snapshot():
            copied = copy_books(source, destination, _progress("copying"))
            expected = books.summary(source)
        with destination.snapshot():
            found = books.summary(destination)
        report = books.reconcile(destination)
    finally:
        destination.close()
    problems = _print_copy(source.label, destination.label, copied, expected, found, report)
    if problems:
        click.echo(f"the copy differs from its source: {problems} problem(s)")
        raise SystemExit(EXIT_PROBLEM)
    click.echo(f"copied and checked: {destination.label} holds the same books and they balance")


def _print_copy(source, destination, copied, expected, found, report):
    """Print what was copied and compared; return how many things differ."""
    problems = 0
    click.echo(f"from {source}")
    click.echo(f"to   {destination}")
    for table, count in copied.items():
        same = expected["rows"][table] == found["rows"][table] == count
        problems += not same
        click.echo(f"{table:<11} source {expected['rows'][table]:>12,}  target {found['rows'][table]:>12,}"
                   + ("" if same else "  DIFFERS"))
    for label in ("balances", "ledger"):
        for currency in sorted(set(expected[label]) | set(found[label])):
            left, right = expected[label].get(currency), found[label].get(currency)
            problems += left != right
            click.echo(f"{currency} sum of {label}: source {left} target {right} (minor units)"
                       + ("" if left == right else "  DIFFERS"))
    for problem in report["discrepancies"]:
        click.echo(f"DISCREPANCY in the target: {problem}")
    return problems + len(report["discrepancies"])


def _progress(verb):
    """Report progress on a terminal (stderr); stay quiet in a pipe or under cron."""
    if not sys.stderr.isatty():
        return None
    shown = {"table": None}

    def show(table, rows):
        if shown["table"] not in (None, table):
            click.echo(err=True)
        shown["table"] = table
        click.echo(f"\r{verb} {table}: {rows:,} rows", nl=False, err=True)

    return show


@wallet_cli.command("replication")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the fields /healthz adds).")
def replication_status(as_json):
    """Show whether Litestream replicates the database and when it last synced.

    Exit status: 0 replication ok, 1 replication is off (LITESTREAM_REPLICA_URL unset, and
    no service reports replicating the database), 3 replication failing.

    Run from a shell without the service's LITESTREAM_REPLICA_URL, it says so and shows what the
    service replicating DATABASE_PATH reports (its /healthz says the same), if one ever did.
    """
    config = current_app.config
    url = config["LITESTREAM_REPLICA_URL"]
    if url is None:
        if config.get("DATABASE_URL"):
            raise click.ClickException("replication is off: the books are in PostgreSQL (DATABASE_URL), which "
                                       "Litestream does not replicate; use the database's own backups")
        database = os.path.abspath(config["DATABASE_PATH"])
        if not os.path.exists(replication.status_path(database)):
            raise click.ClickException(
                f"this shell's environment has no LITESTREAM_REPLICA_URL, and no service on this machine has "
                f"reported replicating {database}: replication is off, or the service runs elsewhere or "
                "with another DATABASE_PATH; ask its /healthz (curl -s https://<your-host>/healthz), which "
                "reports `replication` when it is on")
        click.echo(f"this shell's environment has no LITESTREAM_REPLICA_URL; the service replicating {database} "
                   f"reports this (its /healthz says the same; {replication.status_path(database)}):", err=True)
    report = replication.status(config["DATABASE_PATH"])
    if as_json:
        _echo(report)
    else:
        click.echo(f"replication: {report['replication']}")
        click.echo(f"replica: {replication.redact(url) if url else 'not in this shell (LITESTREAM_REPLICA_URL)'}")
        click.echo(f"last sync: {report['replication_last_sync'] or 'none'}")
        if "replication_error" in report:
            click.echo(f"error: {report['replication_error']}")
    if report["replication"] != "ok":
        raise SystemExit(EXIT_PROBLEM)
