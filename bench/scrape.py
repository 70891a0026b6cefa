"""Does scraping GET /metrics slow the callbacks? Callbacks/s with a scraper asking for /metrics
every second against none, on SQLite, their rounds alternated in one run, printed with the
ratio (issue 21's target: at least 0.97), and what one scrape costs the workers in CPU.

Each round is bench/callbacks.py's round, through bench/'s own code (gunicorn as the Procfile
runs it, a fresh database, 16 funded players, 16 provider clients playing start/finish with 10%
re-sends, every answer checked, the books reconciled after the round); the scraped rounds add a
thread here that asks /metrics once a second with METRICS_TOKEN, as Prometheus would.

    .venv/bin/python bench/scrape.py                  # 2 rounds of 10 s each, alternated
    .venv/bin/python bench/scrape.py --repeat 3       # medians of 3 each
    .venv/bin/python bench/scrape.py --interval 0.2   # a scraper five times as eager
    .venv/bin/python bench/scrape.py --games-preloaded 1000000   # and a scrape's cost on 1M games
"""

import argparse
import http.client
import statistics
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: bench.*, harness
from bench.checks import reconcile  # noqa: E402
from bench.clients import run_load  # noqa: E402
from bench.engines import SQLiteEngine  # noqa: E402
from bench.fill import history  # noqa: E402
from bench.measure import cpu_seconds  # noqa: E402
from bench.report import log  # noqa: E402
from bench.rounds import DEPOSIT  # noqa: E402
from bench.servers import STARTUP_SECONDS, Server, init_db, worker_class  # noqa: E402

METRICS_TOKEN = "bench-metrics-token-51c0"
SCRAPER = {"Authorization": f"Bearer {METRICS_TOKEN}"}
TARGET = 0.97


class Scraper(threading.Thread):
    """GET /metrics every `interval` seconds until stopped; keeps each scrape's duration."""

    def __init__(self, server, interval):
        super().__init__(daemon=True)
        self.server, self.interval = server, interval
        self.stopped = threading.Event()
        self.durations, self.failures = [], []

    def run(self):
        while not self.stopped.wait(self.interval):
            began = time.perf_counter()
            try:
                status, text = self.server.request("GET", "/metrics", headers=SCRAPER)
            except (OSError, http.client.HTTPException) as error:
                status, text = None, repr(error)
            self.durations.append(time.perf_counter() - began)
            if status != 200 or "wallet_callbacks_total" not in str(text):
                self.failures.append(f"{status} {str(text)[:200]!r}")


def round_(args, engine, workdir, scraped, number):
    """One round on a fresh database: (callbacks/s, the workers' CPU per callback, failed)."""
    name = f"r{number}-{'scraped' if scraped else 'quiet'}"
    target = engine.new_database(name)
    init_db(args, target)
    server = Server(target, "project", args, name, workdir, METRICS_TOKEN=METRICS_TOKEN).launch()
    scraper = None
    try:
        server.ready(STARTUP_SECONDS)
        players = [f"bench-{i:03d}" for i in range(args.players)]
        for i, player in enumerate(players):
            status, body = server.admin("POST", f"/api/players/{player}/deposits",
                                        {"currency": "USD", "amount": DEPOSIT, "reference": f"{name}-{i}"})
            if status != 201:
                raise SystemExit(f"deposit for {player} failed: {status} {body}")
        if scraped:
            scraper = Scraper(server, args.interval)
            scraper.start()
        result = run_load([server], engine, args, players, number)
    finally:
        if scraper is not None:
            scraper.stopped.set()
            scraper.join()
        server.stop()
    books = reconcile(args, target, f"{name}: ")
    engine.drop(target)
    line = (f"{name}: {result['per_second']:,.0f} callbacks/s, p99 {result['p99']:.1f} ms, "
            f"errors {result['errors']}, worker CPU {result['server_cpu'] / max(result['callbacks'], 1) * 1000:.2f} ms"
            " per callback")
    if scraper is not None:
        durations = sorted(scraper.durations)
        line += (f"; {len(durations)} scrapes, median {statistics.median(durations) * 1000:.1f} ms, "
                 f"max {durations[-1] * 1000:.1f} ms, failed {len(scraper.failures)}")
    log(line)
    failed = result["errors"] or not books or (scraper is not None and (scraper.failures or not scraper.durations))
    return result["per_second"], result["server_cpu"] / max(result["callbacks"], 1), bool(failed)


def scrape_cost(args, engine, workdir, template=None, scrapes=300):
    """The workers' CPU per scrape, scraped back to back with no load: a figure a busy machine
    hardly changes, unlike callbacks/s. On a new database, or a copy of `template` (a history
    of settled games, bench/callbacks.py's --games-preloaded)."""
    name = f"cost-{'preloaded' if template else 'empty'}"
    target = engine.new_database(name, template)
    if template is None:
        init_db(args, target)
    server = Server(target, "project", args, name, workdir, METRICS_TOKEN=METRICS_TOKEN).launch()
    try:
        server.ready(STARTUP_SECONDS)
        server.request("GET", "/metrics", headers=SCRAPER)
        workers = server.worker_pids()
        before = sum(cpu_seconds(pid) for pid in workers)
        for _ in range(scrapes):
            status, _ = server.request("GET", "/metrics", headers=SCRAPER)
            assert status == 200, status
        return (sum(cpu_seconds(pid) for pid in workers) - before) / scrapes
    finally:
        server.stop()
        engine.drop(target)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of each kind (medians)")
    parser.add_argument("--seconds", type=float, default=10, help="measured load per round")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between two scrapes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--games-preloaded", type=int, default=0, metavar="N",
                        help="also measure a scrape's cost on N settled games (1,000 wallets)")
    cli = parser.parse_args()
    # bench/callbacks.py's defaults for everything else
    args = types.SimpleNamespace(
        seconds=cli.seconds, workers=cli.workers, connections=cli.connections, warmup=1.0, duplicates=0.1,
        synchronous="FULL", log_level="INFO", client_processes=2, players=16, game_ids="objectid",
        gunicorn_arg=[], interval=cli.interval, keep=False)
    rates, cpu = {False: [], True: []}, {False: [], True: []}
    failed = False
    with tempfile.TemporaryDirectory(prefix="wallet-bench-scrape-") as workdir:
        engine = SQLiteEngine(args, workdir)
        log(f"{worker_class()} workers x {args.workers}, {args.connections} connections, "
                 f"{engine.describe(args)}; a scrape every {args.interval} s in the scraped rounds")
        number = 0
        for _ in range(cli.repeat):
            for scraped in (False, True):
                number += 1
                rate, per_callback, bad = round_(args, engine, workdir, scraped, number)
                rates[scraped].append(rate)
                cpu[scraped].append(per_callback)
                failed |= bad
        cost = scrape_cost(args, engine, workdir)
        if cli.games_preloaded:
            template = engine.new_database("template")
            init_db(args, template)
            began = time.perf_counter()
            engine.load(template, history(cli.games_preloaded, 1000, args.game_ids))
            log(f"{cli.games_preloaded:,} settled games loaded in {time.perf_counter() - began:.0f} s")
            preloaded = scrape_cost(args, engine, workdir, template)
    quiet, scraped = statistics.median(rates[False]), statistics.median(rates[True])
    ratio = scraped / quiet
    print(f"\nnot scraped: {quiet:,.0f} callbacks/s; scraped every {args.interval} s: {scraped:,.0f} callbacks/s"
          f"{' (medians of ' + str(cli.repeat) + ')' if cli.repeat > 1 else ''}")
    print(f"scraped / not scraped: {ratio:.3f} (target {TARGET}: {'met' if ratio >= TARGET else 'missed'})")
    quiet_cpu, scraped_cpu = statistics.median(cpu[False]), statistics.median(cpu[True])
    print(f"the workers' CPU per callback: {quiet_cpu * 1000:.3f} ms not scraped, {scraped_cpu * 1000:.3f} ms scraped")
    print(f"one scrape costs the workers {cost * 1000:.2f} ms of CPU (back to back, no load): at one every "
          f"{args.interval} s, {cost / args.interval / (quiet * quiet_cpu) * 100:.2f}% of the CPU the workers spent "
          f"on callbacks at the not-scraped rate")
    if cli.games_preloaded:
        print(f"one scrape on {cli.games_preloaded:,} settled games costs the workers {preloaded * 1000:.2f} ms of CPU "
              f"({preloaded / cost:.2f} times the cost on an empty database)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
