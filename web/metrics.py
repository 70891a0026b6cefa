"""GET /metrics: the service's numbers in Prometheus' text format, for monitoring (/healthz
stays the load balancer's check). Behind `Authorization: Bearer <METRICS_TOKEN>`, a token of
its own, so that a scraper cannot move money; without one on METRICS_PORT only (a port for a
platform's scraper that cannot send a header, reached by its private network alone).

Two kinds of numbers:
- counted as they happen, in whichever worker answered: callbacks by type and outcome and
  their durations (counted once each, where every callback's log line is written:
  callbacks.audit_and_log), stakes and payouts in minor units, requests answered 503 while the
  database was away. Under gunicorn they are prometheus_client's multiprocess values, a file
  per worker in PROMETHEUS_MULTIPROC_DIR (web/multiproc.py keeps the directory), summed at
  each scrape over every worker, dead ones included. They start at 0 when the service starts.
- read from the books when scraped, by the process answering the scrape, each by an index:
  open bets and the oldest one's age, refunds, the wallets' balances (the operator's
  liability), the currencies' decimals; and the database and replication state. When the
  database is away the scrape still answers, with wallet_database_up 0.

Every label comes from a fixed set: a callback's type is start, finish or other, its outcome
one of OUTCOMES; a currency is one the books hold (a callback in another moves nothing).
"""

import datetime
import time

from flask import Blueprint, Response, current_app, request
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector

import db
import replication
import schemas
from money import books
from web import api, multiproc

bp = Blueprint("metrics", __name__)

TYPES = ("start", "finish", "other")
# The audit's outcomes, and the two a callback gets without an audit row: refused for its token
# or address (unauthorised), answered 503 while the database was away (unavailable).
OUTCOMES = schemas.CALLBACK_OUTCOMES + ("unavailable", "unauthorised")
# From 1 ms to 10 s: the providers' patience is 4 s (Scorpio Play) to 10 s (Tom Horn).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 10.0)

# Where the counters live in one process (`flask run`, the tests); under gunicorn their values
# are in PROMETHEUS_MULTIPROC_DIR, which prometheus_client read when it was imported.
_DIRECTORY = multiproc.directory()
disable_created_metrics()  # no *_created series: multiprocess mode has none either
_LOCAL = CollectorRegistry()
CALLBACKS = Counter("wallet_callbacks", "Callbacks answered, by type and outcome (as in the audit; "
                    "unauthorised: refused for the token or address, unavailable: 503, the database away).",
                    ["type", "outcome"], registry=_LOCAL)
DURATION = Histogram("wallet_callback_duration_seconds", "Time from a callback's arrival to its answer.",
                     ["type"], buckets=BUCKETS, registry=_LOCAL)
STAKED = Counter("wallet_staked_minor", "Bets debited by accepted starts, in the currency's minor units.",
                 ["currency"], registry=_LOCAL)
PAID_OUT = Counter("wallet_paid_out_minor", "Credits of accepted finishes (stake included), in minor units.",
                   ["currency"], registry=_LOCAL)
UNAVAILABLE = Counter("wallet_database_unavailable", "Requests answered 503 because the database was away.",
                      registry=_LOCAL)
for _type in TYPES:  # every series exists from the start: a rate over it is 0, not absent
    DURATION.labels(_type)
    for _outcome in OUTCOMES:
        CALLBACKS.labels(_type, _outcome)
UNAVAILABLE.inc(0)


def count_callback(kind, outcome, seconds, moved=None):
    """Count one answered callback: `kind` its type as sent (anything but start and finish
    counts as other), `outcome` one of OUTCOMES, `moved` (currency, minor units) when an
    accepted start debited or an accepted finish credited."""
    kind = kind if kind in ("start", "finish") else "other"
    CALLBACKS.labels(kind, outcome if outcome in OUTCOMES else "error").inc()
    DURATION.labels(kind).observe(seconds)
    if moved is not None:
        (STAKED if kind == "start" else PAID_OUT).labels(moved[0]).inc(moved[1])


@bp.after_app_request
def count_unavailable(response):
    """Count every request answered 503 because the database was away (any path)."""
    if response.status_code == 503 and (response.get_json(silent=True) or {}).get("error") == "database_unavailable":
        UNAVAILABLE.inc()
    return response


@bp.get("/metrics")
def metrics():
    """Answer the metrics in Prometheus' text format."""
    if not _on_metrics_port(current_app.config["METRICS_PORT"]):
        api.require_bearer("METRICS_TOKEN", "The metrics endpoint")
    families = _replication(current_app.config)
    try:
        currencies, read = _books(db.get_db())
        families += read
        up = 1
        for currency in currencies:  # each currency's counters exist from its first scrape, at 0
            STAKED.labels(currency)
            PAID_OUT.labels(currency)
    except db.DatabaseUnavailable as exc:
        db.unavailable(exc)  # logged once per outage, as for any request
        up = 0
    families.append(GaugeMetricFamily("wallet_database_up", "1 when the scrape could read the books, else 0.",
                                      value=up))
    # Version 0.0.4 of the text format: what every Prometheus 2 reads (the text is the same).
    return Response(_counted() + generate_latest(_Fixed(families)), content_type=CONTENT_TYPE_PLAIN_0_0_4)


def _on_metrics_port(port):
    """Whether the request came in on METRICS_PORT, which gunicorn listens on for a scraper that
    cannot send a token: known from the connection's own socket, never from what the client says."""
    sock = request.environ.get("gunicorn.socket")
    if port is None or sock is None:
        return False
    try:
        return sock.getsockname()[1] == port
    except OSError:
        return False


def _counted():
    """The counters, summed over every worker's file under gunicorn."""
    if _DIRECTORY is None:
        return generate_latest(_LOCAL)
    with multiproc.scraping(_DIRECTORY):
        return generate_latest(_Files(_DIRECTORY))


class _Files(CollectorRegistry):
    """The counters of every worker, read from their files (the registry a scrape renders)."""

    def __init__(self, path):
        super().__init__(auto_describe=False)
        MultiProcessCollector(self, path)


class _Fixed(CollectorRegistry):
    """A registry rendering the given metric families, read for this scrape."""

    def __init__(self, families):
        super().__init__(auto_describe=False)
        self.families = families

    def collect(self):
        return iter(self.families)


# Each read of the games takes the index on (status, started_at) to the few rows it wants: the
# open bets (those in play and the stuck ones) and the refunded ones, never every game.
# currencies and wallets hold a row per currency and per player's currency, not per game.
OPEN_BETS = "SELECT currency, count(*) AS bets FROM games WHERE status = 'open' GROUP BY currency"
OLDEST_OPEN = "SELECT min(started_at) AS started_at FROM games WHERE status = 'open'"
REFUNDED = f"SELECT currency, {books.exact_sum('bet')} FROM games WHERE status = 'refunded' GROUP BY currency"
BALANCES = f"SELECT currency, {books.exact_sum('balance')} FROM wallets GROUP BY currency"
CURRENCIES = "SELECT currency, decimals FROM currencies"


def _books(store):
    """The currencies the books hold and the values read from them, from one consistent snapshot."""
    with store.snapshot():
        decimals = {row["currency"]: row["decimals"] for row in store.execute(CURRENCIES).fetchall()}
        open_bets = {row["currency"]: row["bets"] for row in store.execute(OPEN_BETS).fetchall()}
        oldest = store.execute(OLDEST_OPEN).fetchone()["started_at"]
        refunded = {row["currency"]: books.total(row) for row in store.execute(REFUNDED).fetchall()}
        balances = {row["currency"]: books.total(row) for row in store.execute(BALANCES).fetchall()}
    currencies = sorted(set(decimals) | set(balances) | set(open_bets))
    families = {
        "open": GaugeMetricFamily("wallet_open_bets", "Bets accepted and not yet finished or refunded.",
                                  labels=["currency"]),
        "refunded": CounterMetricFamily("wallet_refunded_minor", "Stakes of refunded bets, in minor units "
                                        "(read from the books: every refund, by the API or the CLI).",
                                        labels=["currency"]),
        "liability": GaugeMetricFamily("wallet_liability_minor", "The wallets' total balance, in minor units: "
                                       "what the operator owes its players.", labels=["currency"]),
        "decimals": GaugeMetricFamily("wallet_currency_decimals", "A currency's decimals: "
                                      "a minor unit is 10^-decimals of it.", labels=["currency"]),
    }
    for currency in currencies:
        families["open"].add_metric([currency], open_bets.get(currency, 0))
        families["refunded"].add_metric([currency], refunded.get(currency, 0))
        families["liability"].add_metric([currency], balances.get(currency, 0))
        if currency in decimals:
            families["decimals"].add_metric([currency], decimals[currency])
    age = 0.0 if oldest is None else max(time.time() - oldest / 1000, 0.0)
    return currencies, [*families.values(), GaugeMetricFamily(
        "wallet_oldest_open_bet_age_seconds", "Seconds since the oldest open bet's start arrived (0: none open).",
        value=age)]


def _replication(config):
    """wallet_replication_up and _lag_seconds, when replication is on (LITESTREAM_REPLICA_URL)."""
    if config.get("LITESTREAM_REPLICA_URL") is None:
        return []
    state = replication.status(config["DATABASE_PATH"])
    last_sync = state.get("replication_last_sync")
    lag = float("inf") if last_sync is None else max(time.time() - _epoch(last_sync), 0.0)
    return [
        GaugeMetricFamily("wallet_replication_up", "1 while replication works (as /healthz says), else 0.",
                          value=1 if state["replication"] == "ok" else 0),
        GaugeMetricFamily("wallet_replication_lag_seconds", "Seconds since the last moment known to be on "
                          "the replica (+Inf: none yet).", value=lag),
    ]


def _epoch(iso):
    return datetime.datetime.fromisoformat(iso).timestamp()
