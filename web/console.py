"""The operator's console under /console/: the books in a browser, and the few actions a
support desk needs (refund a stuck bet, deposit, withdraw), server-rendered with Jinja.

Reads go through books.py, every movement through wallet.py's rules (the note saying who
did it and why goes on the ledger row). Signing in takes ADMIN_TOKEN on a form; the session
is Flask's cookie signed with SECRET_KEY (no SECRET_KEY: no console). Every POST carries the
session's CSRF token; no page runs a script (the Content-Security-Policy allows none).
"""

import csv
import datetime
import hmac
import io
import json
import secrets
import threading
import time
from pathlib import Path

from flask import (Blueprint, Response, current_app, flash, redirect, render_template, request,
                   send_file, session, url_for)
from marshmallow import ValidationError

import db
import replication
import schemas
import wallet
from money import books
from money.refusals import ApiError
from money.units import now_ms, to_text
from money.views import player_wallets
from store import describe_url
from web import charts

HERE = Path(__file__).resolve().parent
bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates")

# No script, no other host, no frame: the pages are HTML, one stylesheet and inline SVG.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
PUBLIC = {"console.sign_in", "console.stylesheet", "console.icon"}  # what answers before signing in
IDLE_SECONDS = 30 * 60  # a session unused this long is signed out
STALE_MINUTES = 60  # "needs attention": open bets older than this, by default
FLASHED_ONE_BY_ONE = 5  # refunds said one by one; more are summed up (the flashes ride in the cookie)
NOTE_MAX = 200
NAME_MAX = 64
REPORT_MAX_DAYS = 366
SLOW_DOWN_MAX_S = 60


def init_app(app):
    """Register the console with its session cookie's settings; return whether it is on
    (SECRET_KEY set: the caller says so in the log when it is not)."""
    config = app.config
    config["SECRET_KEY"] = (config.get("SECRET_KEY") or "").strip() or None
    config["CONSOLE_INSECURE_COOKIE"] = str(config.get("CONSOLE_INSECURE_COOKIE") or "").strip().lower() in ("1", "true", "yes", "on")
    config.setdefault("CONSOLE_IDLE_SECONDS", IDLE_SECONDS)
    config.update(
        SESSION_COOKIE_NAME="wallet_console",
        SESSION_COOKIE_PATH="/console/",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=not config["CONSOLE_INSECURE_COOKIE"],
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(seconds=config["CONSOLE_IDLE_SECONDS"]),
    )
    app.extensions["console_failures"] = {"lock": threading.Lock(), "by_address": {}}
    app.register_blueprint(bp)
    return config["SECRET_KEY"] is not None


# --- the gate: enabled, signed in, idle expiry, CSRF ---------------------------------------


class ConsoleRefusal(Exception):
    """A console request refused with an HTML page: status and what to tell the operator."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


@bp.before_request
def gate():
    """Refuse everything while disabled; send a visitor not signed in (or idle too long) to the
    sign-in form; refuse a POST without the session's CSRF token."""
    config = current_app.config
    if config["SECRET_KEY"] is None or config["ADMIN_TOKEN"] is None:
        raise ConsoleRefusal(404, "The console is disabled: set SECRET_KEY and ADMIN_TOKEN and restart the service.")
    if request.endpoint in ("console.stylesheet", "console.icon"):
        return None
    now = time.time()
    if "operator" in session and now - session.get("seen", 0) > config["CONSOLE_IDLE_SECONDS"]:
        session.clear()
        flash("Signed out after a while without use: sign in again.")
    if request.method == "POST":
        # A browser posts a form with its length stated and no Expect: the worker has read such a
        # body whole before a thread serves it (web/serving.py). A chunked body, or one awaiting
        # 100-continue, would be read by the thread itself, as slowly as an unsigned-in client
        # likes: refused before reading.
        if request.headers.get("Transfer-Encoding") or request.headers.get("Expect"):
            raise ConsoleRefusal(411, "A form is posted with a Content-Length and no Expect header; nothing was changed.")
        given = request.form.get("csrf_token", "")
        if not hmac.compare_digest(given.encode(), session.get("csrf", "").encode()) or not given:
            raise ConsoleRefusal(400, "This form is out of date or was not sent from the console (no valid "
                                      "CSRF token); nothing was changed. Reload the page and try again.")
    if "operator" not in session and request.endpoint not in PUBLIC:
        return redirect(url_for("console.sign_in"))
    if "operator" in session:
        session["seen"] = now
    schemas.load(schemas.path_schema, request.view_args or {}, "path")
    return None


@bp.after_request
def security_headers(response):
    response.headers.update(SECURITY_HEADERS)
    return response


@bp.app_template_global()
def csrf_token():
    """The session's CSRF token (made at the first form), for every form that posts."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


@bp.errorhandler(ConsoleRefusal)
def refused(exc):
    return render_template("console/error.html", status=exc.status, message=exc.message), exc.status


@bp.errorhandler(ApiError)
def api_refusal(exc):
    fields = exc.fields or {}
    return render_template("console/error.html", status=exc.status, message=exc.message, fields=fields), exc.status


@bp.errorhandler(db.DatabaseUnavailable)
def database_away(exc):
    db.unavailable(exc)
    message = f"The database is unavailable ({exc}). Nothing was changed by this page; try again shortly."
    response = Response(render_template("console/error.html", status=503, message=message), 503)
    response.headers["Retry-After"] = str(db.RETRY_AFTER_S)
    return response


# --- signing in and out ----------------------------------------------------------------------


def _slowed(address):
    """Seconds an address must still wait before its next sign-in attempt (0: go ahead)."""
    failures = current_app.extensions["console_failures"]
    with failures["lock"]:
        _, until = failures["by_address"].get(address, (0, 0))
    return max(0, until - time.monotonic())


def _failed(address):
    """A wrong token: the next attempt from this address waits 1 s, then 2, 4... up to a minute."""
    failures = current_app.extensions["console_failures"]
    with failures["lock"]:
        table = failures["by_address"]
        if len(table) > 10_000:  # forget the oldest half rather than grow without end
            for key in sorted(table, key=lambda key: table[key][1])[: len(table) // 2]:
                del table[key]
        count, _ = table.get(address, (0, 0))
        table[address] = (count + 1, time.monotonic() + min(2**count, SLOW_DOWN_MAX_S))


@bp.context_processor
def plain_http():
    """Whether the Secure session cookie would not come back (a plain HTTP page): the sign-in
    form then says how to go on."""
    return {"plain_http": current_app.config["SESSION_COOKIE_SECURE"] and not request.is_secure}


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in():
    """The sign-in form: the operator's name and ADMIN_TOKEN, posted, never in a URL."""
    if request.method == "GET":
        return render_template("console/sign_in.html")
    address = request.remote_addr or "?"
    wait = _slowed(address)
    if wait:
        return render_template("console/sign_in.html", error=f"Too many wrong tokens: wait {wait:.0f} s and try again."), 429
    name = request.form.get("name", "").strip()
    token = request.form.get("token", "")
    if not hmac.compare_digest(token.encode(), current_app.config["ADMIN_TOKEN"].encode()):
        _failed(address)
        current_app.logger.warning("console: a wrong admin token from %s", address)
        return render_template("console/sign_in.html", error="Wrong token."), 401
    if not name or len(name) > NAME_MAX or not schemas.IDENTIFIER.match(name):
        return render_template("console/sign_in.html", error=f"Give your name (1 to {NAME_MAX} printing characters): "
                                                              "it goes with every refund and movement you make."), 400
    current_app.extensions["console_failures"]["by_address"].pop(address, None)
    session.clear()
    session.permanent = True
    session.update(operator=name, seen=time.time(), csrf=secrets.token_urlsafe(32))
    current_app.logger.info("console: %s signed in from %s", name, address)
    return redirect(url_for("console.overview"))


@bp.post("/sign-out")
def sign_out():
    session.clear()
    flash("Signed out.")
    return redirect(url_for("console.sign_in"))


@bp.get("/console.css")
def stylesheet():
    return send_file(HERE / "static" / "console.css", mimetype="text/css", max_age=3600)


@bp.get("/icon.svg")
def icon():
    return send_file(HERE / "static" / "icon.svg", mimetype="image/svg+xml", max_age=3600)


# --- pages -----------------------------------------------------------------------------------


def _money(minor, currency):
    return to_text(db.get_db(), minor, currency)


def _age(iso_text):
    """How long ago an ISO 8601 time was, in words."""
    if not iso_text:
        return None
    moment = datetime.datetime.fromisoformat(iso_text.replace("Z", "+00:00"))
    seconds = int((datetime.datetime.now(datetime.timezone.utc) - moment).total_seconds())
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _day(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).date().isoformat()


def _where():
    """The books' engine and name, for the overview: a SQLite file's name (not its folder), a
    PostgreSQL server's host, port and database (never a password)."""
    config = current_app.config
    if config.get("DATABASE_URL"):
        return describe_url(config["DATABASE_URL"])
    return f"SQLite file {Path(config['DATABASE_PATH']).name}"


def _per_currency(lines):
    """Sum report lines (books.daily_report) per currency."""
    sums = {}
    for line in lines:
        into = sums.setdefault(line["currency"], dict.fromkeys(books.REPORT_FIELDS, 0))
        for field in books.REPORT_FIELDS:
            into[field] += line[field]
    return sums


@bp.get("/")
def overview():
    """The books at a glance: database and replication, liability, today, the last hour."""
    store = db.get_db()
    now = now_ms()
    today = now - now % books.DAY_MS
    liabilities = {currency: (count, _money(amount, currency))
                   for currency, (count, amount) in books.liabilities(store).items()}
    today_sums = _per_currency(books.daily_report(store, today, today + books.DAY_MS))
    today_text = {currency: {field: (value if field == "rounds" else _money(value, currency))
                             for field, value in sums.items()} for currency, sums in today_sums.items()}
    outcomes, capped = books.outcomes_since(store, now - 3_600_000)
    stale = books.count_stale(store, now - STALE_MINUTES * 60_000)
    attention = books.count_attention(store)
    replicated = replication.health(current_app.config)
    chart = charts.bar_chart([(outcome, count, f"{count:,}") for outcome, count in sorted(outcomes.items())],
                             "Callbacks in the last hour by outcome")
    return render_template(
        "console/overview.html", database=_where(), replication=replicated,
        last_sync_age=_age(replicated.get("replication_last_sync")), liabilities=liabilities,
        today=today_text, today_day=_day(today), outcomes=outcomes, capped=capped, chart=chart,
        stale=stale, attention=attention, cap=books.COUNT_CAP, stale_minutes=STALE_MINUTES)


@bp.get("/players")
def players():
    """Find players by id, exact or prefix."""
    text = request.args.get("q", "")
    found, more = ([], False)
    if schemas.IDENTIFIER.match(text):  # no player's id holds anything else
        found, more = books.find_players(db.get_db(), text)
        if len(found) == 1 and found[0] == text:
            return redirect(url_for("console.player", player_id=text))
    return render_template("console/players.html", q=text, found=found, more=more)


@bp.get("/players/<player_id>")
def player(player_id):
    """A player's wallets, ledger (with the balance after each row) and games."""
    store = db.get_db()
    query = _query(schemas.ledger_query, ("currency", "cursor"))
    wallets = player_wallets(store, player_id)
    ledger = books.list_ledger(store, player_id, currency=query["currency"], cursor=query["cursor"])
    games = books.list_games(store, player_id=player_id, limit=20,
                             cursor=_query(schemas.games_query, (), {"cursor": request.args.get("games_cursor")})["cursor"])
    return render_template("console/player.html", player_id=player_id, wallets=wallets, ledger=ledger,
                           games=games, currency=query["currency"],
                           currencies=sorted(current_app.config["CURRENCY_DECIMALS"]))


@bp.post("/players/<player_id>/movements")
def movement(player_id):
    """A deposit or withdrawal, with the API's rules and idempotency (one per reference)."""
    kind = request.form.get("kind")
    if kind not in ("deposit", "withdrawal"):
        raise ConsoleRefusal(400, "Choose deposit or withdrawal.")
    note = _note()
    try:
        body = schemas.movement_schema.load({key: request.form.get(key, "") for key in ("currency", "amount", "reference")})
        status, answer = wallet.move_funds(db.get_db(), kind, player_id, body["currency"], body["amount"],
                                           body["reference"], note=note)
    except ValidationError as exc:
        flash("Nothing moved: " + "; ".join(f"{field}: {' '.join(map(str, problems))}"
                                            for field, problems in exc.messages.items()), "error")
    except ApiError as exc:
        flash(f"Nothing moved: {exc.message}", "error")
    else:
        if status == 201:
            flash(f"{kind.capitalize()} of {body['amount']} {body['currency']} recorded; the balance is {answer['balance']}.")
        else:
            flash(f"Reference {body['reference']} was already used for this {kind}: nothing moved again.")
    return redirect(url_for("console.player", player_id=player_id))


@bp.get("/games")
def games():
    """Games, newest first, with the API's filters."""
    query = _query(schemas.games_query, ("player_id", "status", "since", "cursor"))
    listing = books.list_games(db.get_db(), **query)
    return render_template("console/games.html", listing=listing, filters=query, args=request.args,
                           statuses=schemas.GAME_STATUSES)


@bp.get("/games/<game_id>")
def game(game_id):
    """One game: its state, ledger rows and every callback received for it."""
    detail = books.game_detail(db.get_db(), game_id)
    if detail is None:
        raise ConsoleRefusal(404, f"No game has id {game_id!r}.")
    for callback in detail["callbacks"]:
        callback["pretty"] = _pretty(callback["body"])
    return render_template("console/game.html", game=detail)


@bp.get("/refunds")
def confirm_refunds():
    """Ask for confirmation (and a reason) before refunding the games chosen."""
    chosen = list(dict.fromkeys(request.args.getlist("game")))[:100]
    if not chosen:
        flash("Choose at least one game to refund.", "error")
        return redirect(url_for("console.attention"))
    for game_id in chosen:
        schemas.load(schemas.path_schema, {"game_id": game_id}, "game id")
    store = db.get_db()
    found = [books.game_detail(store, game_id) for game_id in chosen]
    return render_template("console/confirm_refunds.html", games=[game for game in found if game],
                           missing=[game_id for game_id, game in zip(chosen, found) if game is None])


@bp.post("/refunds")
def refunds():
    """Refund each game posted, each in its own transaction, with the operator's note."""
    chosen = list(dict.fromkeys(request.form.getlist("game")))[:100]
    note = _note()
    store = db.get_db()
    refunded, refused = [], []
    for game_id in chosen:
        try:
            schemas.load(schemas.path_schema, {"game_id": game_id}, "game id")
            _, body = wallet.refund_game(store, game_id, note=note)
        except ApiError as exc:
            refused.append(f"Game {game_id}: not refunded: {exc.message}")
        else:
            refunded.append(f"Game {game_id}: refunded {body['game']['bet']} {body['game']['currency']} to "
                            f"{body['game']['player_id']}; the balance is {body['wallet']['balance']}.")
    # The messages ride in the signed session cookie (about 4 KB at most): a few are said one by
    # one, a larger selection in one line each for what was refunded and what was not.
    if len(chosen) <= FLASHED_ONE_BY_ONE:
        for message in refunded:
            flash(message)
        for message in refused:
            flash(message, "error")
    else:
        if refunded:
            flash(f"Refunded {len(refunded)} of {len(chosen)} games (their ledger rows carry your note).")
        if refused:
            flash(f"Not refunded: {len(refused)} of {len(chosen)} games; the first: {refused[0]}", "error")
    if len(chosen) == 1:
        return redirect(url_for("console.game", game_id=chosen[0]))
    return redirect(url_for("console.attention"))


@bp.post("/games/<game_id>/settle")
def settle(game_id):
    """Pay a win held unpaid (wallet.settle_game), as much as the wallet can take, with the note."""
    note = _note()
    try:
        _, body = wallet.settle_game(db.get_db(), game_id, note=note)
    except ApiError as exc:
        flash(f"Game {game_id}: nothing paid: {exc.message}", "error")
    else:
        flash(f"Game {game_id}: paid {body['paid']} {body['game']['currency']}; still owed {body['owed']}; "
              f"the balance is {body['wallet']['balance']}.")
    return redirect(url_for("console.game", game_id=game_id))


@bp.get("/attention")
def attention():
    """Open bets older than a threshold, and callbacks that were refused or failed."""
    try:
        minutes = int(request.args.get("older_than", STALE_MINUTES))
        if not 0 <= minutes <= 10**6:
            raise ValueError
    except ValueError:
        raise ConsoleRefusal(400, "older_than is a number of minutes (0 to 1,000,000).") from None
    store = db.get_db()
    stale = books.list_stale(store, now_ms() - minutes * 60_000, cursor=_cursor("stale_cursor"))
    shown = request.args.get("outcome", "conflict")
    if shown not in (*books.ATTENTION, "unsettled"):
        raise ConsoleRefusal(400, f"outcome is one of {', '.join(books.ATTENTION)} or unsettled.")
    filters = {"outcome": "conflict", "type": "finish"} if shown == "unsettled" else {"outcome": shown}
    audit = books.list_callbacks(store, limit=20, cursor=_cursor("cursor"), **filters)
    for callback in audit["callbacks"]:
        callback["pretty"] = _pretty(callback["body"])
    return render_template("console/attention.html", stale=stale, minutes=minutes, audit=audit, shown=shown,
                           tabs=(*books.ATTENTION, "unsettled"))


@bp.get("/reports")
def reports():
    """Per day and currency (and game name): stakes, payouts, refunds, GGR and rounds, with a
    chart; and the reconciliation when asked for."""
    since, until, by_game = _report_range()
    lines = _report_lines(since, until, by_game)
    result = books.reconcile(db.get_db()) if request.args.get("reconcile") else None
    chart_currencies = sorted({line["currency"] for line in lines})
    ggr_charts = []
    for currency in chart_currencies:
        per_day = {}
        for line in lines:
            if line["currency"] == currency:
                per_day[line["day"]] = per_day.get(line["day"], 0) + line["ggr_minor"]
        ggr_charts.append(charts.bar_chart(
            [(day, minor, _money(minor, currency)) for day, minor in sorted(per_day.items())],
            f"GGR per day in {currency}"))
    return render_template("console/reports.html", lines=lines, since=_day(since), until=_day(until - books.DAY_MS),
                           by_game=by_game, charts=zip(chart_currencies, ggr_charts), reconciliation=result,
                           csv_args={"since": _day(since), "until": _day(until - books.DAY_MS),
                                     **({"by_game": "1"} if by_game else {})})


@bp.get("/reports.csv")
def report_csv():
    """The report as CSV (amounts as exact decimal text)."""
    since, until, by_game = _report_range()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["day", "currency", *(["game_name"] if by_game else []), *books.REPORT_FIELDS])
    for line in _report_lines(since, until, by_game):
        writer.writerow([line["day"], _cell(line["currency"]), *([_cell(line["game_name"])] if by_game else []),
                         *(line[field] for field in books.REPORT_FIELDS)])
    name = f"report-{_day(since)}-to-{_day(until - books.DAY_MS)}{'-by-game' if by_game else ''}.csv"
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


# --- helpers ---------------------------------------------------------------------------------


def _query(schema, names, values=None):
    """Load the query string's `names` (blank ones left out) with an API schema; 400 if invalid."""
    source = values if values is not None else {name: request.args.get(name) for name in names}
    return schemas.load(schema, {name: value for name, value in source.items() if value}, "query string")


def _cursor(name):
    return _query(schemas.games_query, (), {"cursor": request.args.get(name)})["cursor"]


def _note():
    """What goes on the ledger row: the signed-in operator and the reason they gave."""
    reason = " ".join(request.form.get("note", "").split())
    if not reason or len(reason) > NOTE_MAX or not schemas.IDENTIFIER.match(reason):
        raise ConsoleRefusal(400, f"Say why (a note of 1 to {NOTE_MAX} printing characters): it is kept with the movement. "
                                  "Nothing was changed.")
    return f"console {session['operator']}: {reason}"


class _Literal(str):
    """A JSON number or constant exactly as the body wrote it (2.675, 1e400, NaN)."""


class _Pairs(list):
    """A JSON object's members in order, a repeated key kept: the body as sent, not as read."""


def _pretty(body):
    """A raw body as text: indented when it is JSON (every number, key and repeat as written),
    as received otherwise."""
    if body is None:
        return None
    try:
        value = json.loads(body, parse_float=_Literal, parse_int=_Literal, parse_constant=_Literal,
                           object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        return body
    try:
        return _indent(value, "")
    except RecursionError:
        return body


def _indent(value, margin):
    inner = margin + "  "
    if isinstance(value, _Pairs):
        if not value:
            return "{}"
        return "{\n" + ",\n".join(f"{inner}{json.dumps(key, ensure_ascii=False)}: {_indent(item, inner)}"
                                  for key, item in value) + f"\n{margin}}}"
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[\n" + ",\n".join(inner + _indent(item, inner) for item in value) + f"\n{margin}]"
    if isinstance(value, _Literal):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _report_range():
    """The report's days: since and until (inclusive) as YYYY-MM-DD, by default the last 7;
    returned as [since, until) in epoch ms."""
    now = now_ms()
    today = now - now % books.DAY_MS
    try:
        since = _date_ms(request.args.get("since")) if request.args.get("since") else today - 6 * books.DAY_MS
        until = (_date_ms(request.args.get("until")) if request.args.get("until") else today) + books.DAY_MS
    except ValueError:
        raise ConsoleRefusal(400, "since and until are dates, YYYY-MM-DD.") from None
    if not 0 < (until - since) // books.DAY_MS <= REPORT_MAX_DAYS:
        raise ConsoleRefusal(400, f"Choose 1 to {REPORT_MAX_DAYS} days, since before until.")
    return since, until, bool(request.args.get("by_game"))


def _date_ms(text):
    day = datetime.date.fromisoformat(text)
    return int(datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.timezone.utc).timestamp()) * 1000


def _report_lines(since, until, by_game):
    lines = []
    for line in books.daily_report(db.get_db(), since, until, by_game):
        currency = line["currency"]
        lines.append({"day": _day(line["day"]), "currency": currency, "game_name": line["game_name"],
                      "rounds": line["rounds"], "ggr_minor": line["ggr"],
                      **{field: _money(line[field], currency) for field in books.REPORT_FIELDS if field != "rounds"}})
    return lines


def _cell(text):
    """A CSV cell that a spreadsheet will not read as a formula."""
    if text and text[0] in "=+-@\t\r":
        return "'" + text
    return text
