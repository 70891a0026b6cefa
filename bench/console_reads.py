"""How long the operator's console pages take on a large history, beside the API's own page.

Fills a database with N settled games (bench/callbacks.py's history: 30 days, 2 ledger and
2 audit rows per game), then, in this process through Flask's test client, signs in and times
each console page (the median of --repeat) beside the reference measured in the same run:
`GET /api/games` (the API's first page, an index read) and a full scan of the games table
(`SELECT count(*), sum(bet) FROM games`, what a report would cost without its range index).

    .venv/bin/python bench/console_reads.py                        # SQLite, 1,000,000 games
    .venv/bin/python bench/console_reads.py --engine both          # and an embedded PostgreSQL
    .venv/bin/python bench/console_reads.py --games 100000 --repeat 5

A console page holds its worker's connection for as long as it takes: the reports and long
lists must stay within a second or two (issue 22).
"""

import argparse
import re
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: bench.*, harness, app
import app as app_module  # noqa: E402
import db  # noqa: E402
from bench.engines import PostgresEngine, SQLiteEngine  # noqa: E402
from bench.fill import history  # noqa: E402
from bench.servers import init_db  # noqa: E402
from harness.samples import ADMIN_TOKEN, store_settings  # noqa: E402

PAGES = (
    ("overview", "/console/"),
    ("players: prefix", "/console/players?q=hist-0001"),
    ("player page", "/console/players/hist-000123"),
    ("games: first page", "/console/games"),
    ("games: one status", "/console/games?status=lost"),
    ("needs attention", "/console/attention"),
    ("report: 7 days", "/console/reports"),
    ("report: 31 days", "/console/reports?since={month_ago}"),
    ("report: 31 days by game", "/console/reports?since={month_ago}&by_game=1"),
    ("report CSV: 31 days by game", "/console/reports.csv?since={month_ago}&by_game=1"),
)


def timed(call, repeat):
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def measure(engine, args, workdir):
    target = engine.new_database(f"console_{args.games}")
    init_db(types.SimpleNamespace(synchronous="NORMAL", log_level="WARNING"), target)
    began = time.perf_counter()
    engine.load(target, history(args.games, args.players, "objectid"))
    print(f"\n{engine.name}: {args.games:,} games over 30 days, {args.players:,} wallets, "
          f"loaded in {time.perf_counter() - began:.0f} s", flush=True)
    app = app_module.create_app({**store_settings(target), "ADMIN_TOKEN": ADMIN_TOKEN,
                                 "SECRET_KEY": "bench", "CURRENCY_DECIMALS": "USD=2", "LOG_LEVEL": "WARNING"})
    client = app.test_client()
    page = client.get("/console/sign-in").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert client.post("/console/sign-in", data={"csrf_token": csrf, "name": "bench",
                                                   "token": ADMIN_TOKEN}).status_code == 302
    month_ago = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 30 * 86400))

    def get(path, headers=None):
        response = client.get(path, headers=headers)
        assert response.status_code == 200, (path, response.status_code, response.get_data(as_text=True)[:500])

    def full_scan():
        with app.app_context():
            db.get_db().execute("SELECT count(*), sum(bet) FROM games").fetchone()

    api_page = timed(lambda: get("/api/games", {"Authorization": f"Bearer {ADMIN_TOKEN}"}), args.repeat)
    scan = timed(full_scan, args.repeat)
    print(f"  reference: GET /api/games {api_page * 1000:8.1f} ms; full scan of games {scan * 1000:8.1f} ms")
    print(f"  {'page':32} {'ms':>9} {'/ API page':>11} {'/ full scan':>12}")
    worst = 0
    for name, path in PAGES:
        took = timed(lambda: get(path.format(month_ago=month_ago)), args.repeat)
        worst = max(worst, took)
        print(f"  {name:32} {took * 1000:9.1f} {took / api_page:11.1f} {took / scan:12.2f}", flush=True)
    db.close_all(app)
    engine.drop(target)
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--games", type=int, default=1_000_000)
    parser.add_argument("--players", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", help="a PostgreSQL server to use instead of an embedded one")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="console-bench-")
    engines = []
    if args.engine in ("sqlite", "both"):
        engines.append(SQLiteEngine(args, workdir))
    if args.engine in ("postgresql", "both"):
        engines.append(PostgresEngine(types.SimpleNamespace(
            database_url=args.database_url, keep=False, synchronous="NORMAL")))
    try:
        for engine in engines:
            worst = measure(engine, args, workdir)
            print(f"  slowest page: {worst:.2f} s (target: within a second or two)")
    finally:
        for engine in engines:
            engine.close(False)


if __name__ == "__main__":
    main()
