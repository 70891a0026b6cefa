"""`flask --app app simulate ...`: play games against a running service as the provider does.

Sends the provider's real `start`/`finish` callbacks over HTTP, checks every answer, keeps
exact expected totals (Decimal, rounded half-to-even as the service does) and, with
--admin-token, compares the player's balance before and after through the operator API.
It never opens the database: it only talks HTTP, like the provider.
"""

import dataclasses
import decimal
import http.client
import json
import random
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request

import click

GAME_NAMES = ("Mines", "Plinko", "Roulette", "Dice", "Sweets")
MULTIPLIERS = tuple(decimal.Decimal(text) for text in ("0.5", "1", "1.5", "2", "2.5", "10"))
LOSE_CHANCE = 0.45
RANDOM_MULTIPLIER_CHANCE = 0.3  # of wins: a random multiplier with 1-4 decimal places
DELAY_MS = (1000, 3500)
TIMEOUT_SECONDS = 30
# Exact arithmetic for amounts: enough digits that nothing rounds except where we say so.
EXACT = decimal.Context(
    prec=100, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.InvalidOperation, decimal.Overflow]
)
ZERO = decimal.Decimal(0)


# --- what is played ----------------------------------------------------------------------


@dataclasses.dataclass
class Game:
    """One game as drawn before it is played: the same seed always draws the same games."""

    number: int
    game_id: str
    name: str
    status: str  # win | lose
    multiplier: decimal.Decimal  # the finish's `payout`; 0 on a lose
    delay_ms: int


def draw_game(rng, seed, number):
    """Draw a game's name, outcome and display delay; its id is unique on every run."""
    name = rng.choice(GAME_NAMES)
    status, multiplier = draw_outcome(rng)
    delay_ms = rng.randint(*DELAY_MS)
    # The id must never repeat, even when a seed is replayed against the same database.
    game_id = f"sim-{seed}-{number}-{secrets.token_hex(4)}"
    return Game(number, game_id, name, status, multiplier, delay_ms)


def draw_outcome(rng):
    """Draw ("lose", 0) or ("win", multiplier) from the list or, sometimes, a random decimal."""
    if rng.random() < LOSE_CHANCE:
        return "lose", ZERO
    if rng.random() < RANDOM_MULTIPLIER_CHANCE:
        places = rng.randint(1, 4)
        return "win", decimal.Decimal(rng.randint(1, 5 * 10**places)).scaleb(-places)
    return "win", rng.choice(MULTIPLIERS)


def round_amount(amount, decimals):
    """Round an amount to `decimals` places, half-to-even (the service's rule)."""
    return amount.quantize(decimal.Decimal(1).scaleb(-decimals), context=EXACT)


def expected_credit(staked, game, decimals):
    """What a finish should credit: the debited bet x the multiplier on a win, 0 on a lose."""
    if game.status == "lose":
        return round_amount(ZERO, decimals)
    return round_amount(EXACT.multiply(staked, game.multiplier), decimals)


# --- the callbacks, shaped as the provider sends them ------------------------------------


def now_ms():
    """Return the current time in epoch milliseconds, as the provider's `time`."""
    return time.time_ns() // 1_000_000


def start_body(game, session, player, currency, bet):
    """Build a `start` callback: may this player bet `bet`?"""
    body = {
        "type": "start",
        "session": {"id": session["id"], "playerId": player, "gameId": game.name, "currency": currency},
        "game": {"id": game.game_id, "status": "in_progress", "payout": ZERO, "profit": ZERO,
                 "bet": bet, "round": 1},
        "data": {"bet": bet, "allBetAmount": EXACT.add(session["total"], bet)},
        "time": now_ms(),
    }
    if game.name == "Roulette":  # only games with several outcomes per bet send roundData
        body["roundData"] = {}
    return body


def finish_body(game, session, player, currency, bet):
    """Build a `finish` callback: the outcome, with `payout` a multiplier of the bet."""
    profit = EXACT.subtract(EXACT.multiply(bet, game.multiplier), bet)
    return {
        "type": "finish",
        "session": {"id": session["id"], "playerId": player, "gameId": game.name, "currency": currency},
        "game": {"id": game.game_id, "status": game.status, "payout": game.multiplier,
                 "profit": profit, "bet": bet, "round": 1},
        "data": {"balanceUpdateDelay": game.delay_ms},
        "time": now_ms(),
    }


def encode(value):
    """Serialise to JSON with every Decimal as an exact JSON number (json.dumps knows no Decimal)."""
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(key)}: {encode(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(encode(item) for item in value) + "]"
    return json.dumps(value)


def compact(answer):
    """Show an answer body on one short line."""
    return answer if isinstance(answer, str) else json.dumps(answer, separators=(",", ":"), default=str)


# --- HTTP --------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Treat a redirect as an answer: following one would turn a POST into a GET and drop it."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class Service:
    """The running service, seen from outside: its callback URL and its operator API."""

    def __init__(self, url, token, admin_token):
        self.url = url
        path = "/callback" if token is None else "/callback/" + urllib.parse.quote(token, safe="")
        self.callback_url = url + path
        self.shown_callback_url = url + ("/callback" if token is None else "/callback/<token>")
        self.admin_token = admin_token
        self.opener = urllib.request.build_opener(_NoRedirect)

    def request(self, method, url, data=None, headers=None, shown_url=None):
        """Send one request; return (status, parsed JSON or text). Network errors are failures."""
        shown = f"{method} {shown_url or url}"
        request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
        try:
            with self.opener.open(request, timeout=TIMEOUT_SECONDS) as response:
                return response.status, _parse(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, _parse(exc.read())
        except urllib.error.URLError as exc:
            raise click.ClickException(f"{shown}: cannot reach the service: {exc.reason}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise click.ClickException(f"{shown}: {type(exc).__name__}: {exc or 'no answer'}") from None

    def callback(self, body):
        """POST a callback; return (status, answer)."""
        headers = {"Content-Type": "application/json"}
        return self.request("POST", self.callback_url, encode(body).encode(), headers, self.shown_callback_url)

    def balance(self, player, currency):
        """Read a balance through the operator API; None when the player has no such wallet."""
        path = f"/api/players/{urllib.parse.quote(player, safe='')}/balances/{urllib.parse.quote(currency, safe='')}"
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        status, answer = self.request("GET", self.url + path, headers=headers)
        if status == 404:
            return None
        if status != 200 or not isinstance(answer, dict) or "balance" not in answer:
            raise click.ClickException(f"GET {self.url + path}: {describe(status, answer)}")
        return decimal.Decimal(answer["balance"])


def _parse(raw):
    """Parse an answer as JSON (numbers exact); keep anything else as text."""
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text, parse_float=decimal.Decimal)
    except ValueError:
        return text.strip()[:300]


def describe(status, answer):
    """Describe an unexpected answer: status, and the service's error code and message."""
    if isinstance(answer, dict) and "error" in answer:
        text = f"{answer['error']}: {answer.get('message', '')}"
        if "fields" in answer:
            text += f" {compact(answer['fields'])}"
        return f"HTTP {status} {text}"
    return f"HTTP {status} {compact(answer)}"


# --- playing -----------------------------------------------------------------------------


def send(service, game, body, duplicates):
    """Send a callback (twice with --duplicates, which must get the identical answer)."""
    status, answer = service.callback(body)
    if duplicates:
        again = service.callback(body)
        if again != (status, answer):
            raise click.ClickException(
                f"game {game.game_id}: the retried {body['type']} was answered {describe(*again)}, "
                f"the first {describe(status, answer)}"
            )
    return status, answer


def play(service, game, session, options):
    """Play one game: start, then finish if the bet was accepted; return its printed line and sums."""
    player, currency, bet = options["player"], options["currency"], options["bet"]
    status, answer = send(service, game, start_body(game, session, player, currency, bet), options["duplicates"])
    if status != 200 or answer not in ({"result": True}, {"result": False}):
        raise click.ClickException(f"game {game.game_id}: start answered {describe(status, answer)}")
    times = "(x2)" if options["duplicates"] else ""
    answers = f"start={compact(answer)}{times}"
    if answer == {"result": False}:
        return game_line(game, options, "declined", "-", answers), None, None

    session["total"] = EXACT.add(session["total"], bet)
    staked = round_amount(bet, options["decimals"])
    status, answer = send(service, game, finish_body(game, session, player, currency, bet), options["duplicates"])
    if status != 200 or answer != {}:
        raise click.ClickException(f"game {game.game_id}: finish answered {describe(status, answer)}")
    credit = expected_credit(staked, game, options["decimals"])
    outcome = f"{game.status} x{game.multiplier:f}"
    answers += f" finish={compact(answer)}{times}"
    return game_line(game, options, outcome, f"{credit:f}", answers), staked, credit


def game_line(game, options, outcome, credit, answers):
    """Format a game's line: id, game name, bet, outcome and multiplier, credit, answers."""
    return (f"{game.game_id:<{options['id_width']}}  {game.name:<8}  bet {options['bet']}  "
            f"{outcome:<14}  credit {credit}  {answers}")


def parse_bet(ctx, param, value):
    """Click callback: the bet as an exact positive Decimal."""
    try:
        bet = decimal.Decimal(value)
    except decimal.InvalidOperation:
        raise click.BadParameter(f"{value!r} is not a decimal number") from None
    if not bet.is_finite() or bet <= 0:
        raise click.BadParameter(f"{value!r} is not a positive amount")
    return decimal.Decimal(format(bet, "f"))  # 1E+2 becomes 100: shown and sent as plain digits


def parse_url(ctx, param, value):
    """Click callback: an http(s) base URL, without a trailing slash."""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.BadParameter(f"{value!r} is not an http:// or https:// URL")
    return value.rstrip("/")


@click.command("simulate")
@click.option("--url", required=True, callback=parse_url, help="The service's base URL, e.g. http://127.0.0.1:8000.")
@click.option("--token", help="CALLBACK_TOKEN: callbacks go to URL/callback/TOKEN (else URL/callback).")
@click.argument("player")
@click.argument("currency")
@click.option("--games", "count", type=click.IntRange(min=1), required=True, help="How many games to play.")
@click.option("--bet", default="1.00", show_default=True, callback=parse_bet, help="Each game's bet, a decimal.")
@click.option("--seed", type=int, help="Replay the same games and outcomes (the game ids stay unique).")
@click.option("--duplicates", is_flag=True, help="Send every callback twice, as a retrying provider would.")
@click.option("--admin-token", help="ADMIN_TOKEN: compare the balance before and after through the API.")
@click.option("--decimals", type=click.IntRange(0, 18), default=2, show_default=True,
              help="The currency's decimals, for the expected credits.")
def simulate_command(url, token, player, currency, count, bet, seed, duplicates, admin_token, decimals):
    """Play games against a running service as the provider does, and check the money.

    Each game is a `start` and, if the bet is accepted, a `finish` that loses or wins a
    multiplier of the bet. Exits non-zero on any unexpected answer, a network error, a
    retry answered differently (--duplicates), or a balance that is not the expected one.
    """
    if round_amount(bet, decimals) <= 0:
        raise click.BadParameter(f"{bet} rounds to 0 with {decimals} decimals", param_hint="--bet")
    if seed is None:
        seed = random.SystemRandom().randrange(1_000_000)
    service = Service(url, token, admin_token)
    options = {"player": player, "currency": currency, "bet": bet, "duplicates": duplicates, "decimals": decimals,
               "id_width": len(f"sim-{seed}-{count}-") + 8}
    click.echo(f"simulating {count} game(s) for {player} in {currency} at {service.shown_callback_url}, "
               f"bet {bet}, seed {seed}{', every callback twice' if duplicates else ''}")
    before = service.balance(player, currency) if admin_token else None  # read first: fail early

    rng = random.Random(seed)
    sessions = {name: {"id": f"sim-{secrets.token_hex(4)}", "total": ZERO} for name in GAME_NAMES}
    staked_total = credited_total = round_amount(ZERO, decimals)
    accepted = 0
    for number in range(1, count + 1):
        game = draw_game(rng, seed, number)
        line, staked, credit = play(service, game, sessions[game.name], options)
        click.echo(line)
        if staked is not None:
            accepted += 1
            staked_total = EXACT.add(staked_total, staked)
            credited_total = EXACT.add(credited_total, credit)

    change = EXACT.subtract(credited_total, staked_total)
    click.echo(f"games played: {count}")
    click.echo(f"accepted: {accepted}, declined: {count - accepted}")
    click.echo(f"total staked: {staked_total:f} {currency}")
    click.echo(f"total credited: {credited_total:f} {currency}")
    click.echo(f"expected balance change: {change:+f} {currency}")
    if admin_token:
        check_balance(service, player, currency, before, change)


def check_balance(service, player, currency, before, change):
    """Print the expected and actual balance (no wallet counts as 0); fail if they differ."""
    found = service.balance(player, currency)
    after = ZERO if found is None else found
    expected = EXACT.add(ZERO if before is None else before, change)
    click.echo(f"balance before: {shown_balance(before, currency)}")
    click.echo(f"expected balance: {expected:f} {currency}")
    click.echo(f"actual balance: {shown_balance(found, currency)}")
    if after != expected:
        raise click.ClickException(
            f"balance mismatch: expected {expected:f} {currency}, the service holds {after:f} "
            f"(off by {EXACT.subtract(after, expected):+f})"
        )
    click.echo("the balance matches")


def shown_balance(balance, currency):
    """Show a balance read from the service; a missing wallet is 0."""
    return f"0 {currency} (no wallet)" if balance is None else f"{balance:f} {currency}"
