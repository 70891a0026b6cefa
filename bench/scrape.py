"""Does scraping GET /metrics slow the callbacks? Callbacks/s with a scraper asking for /metrics
every second against none, on SQLite, their rounds alternated in one run, printed with the
ratio (issue 21's target: at least 0.97), and what one scrape costs the workers in CPU.

Each round is bench/callbacks.py's round, through its own code (gunicorn as the Procfile runs
it, a fresh database, 16 funded players, 16 provider clients playing start/finish with 10%
re-sends, every answer checked, the books reconciled after the round); the scraped rounds add a
thread here that asks /metrics once a second with METRICS_TOKEN, as Prometheus would.

    .venv/bin/python bench/scrape.py                  # 2 rounds of 10 s each, alternated
    .venv/bin/python bench/scrape.py --repeat 3       # medians of 3 each
    .venv/bin/python bench/scrape.py --interval 0.2   # a scraper five times as eager
    .venv/bin/python bench/scrape.py --games-preloaded 1000000   # and a scrape's cost on 1M games
"""

import argparse
import http.client
import importlib.util
import statistics
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_callbacks", HERE / "callbacks.py")
load = importlib.util.module_from_spec(_spec)  # not "callbacks": that is the service's module
_spec.loader.exec_module(load)

METRICS_TOKEN = "bench-metrics-token-51c0"
TARGET = 0.97


class Scraper(threading.Thread):
    """GET /metrics every `interval` seconds until stopped; keeps each scrape's duration."""

    def __init__(self, port, interval):
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.stopped = threading.Event()
        self.durations, self.failures = [], []

    def run(self):
        while not self.stopped.wait(self.interval):
            began = time.perf_counter()
            try:
                status, body = load.request("GET", self.port, "/metrics",
                                            headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
            except (OSError, http.client.HTTPException) as error:
                status, body = None, repr(error).encode()
            self.durations.append(time.perf_counter() - began)
            if status != 200 or b"wallet_callbacks_total" not in body:
                self.failures.append(f"{status} {body[:200]!r}")


def round_(args, engine, workdir, scraped, number):
    """One round on a fresh database: (callbacks/s, the workers' CPU per callback, failed)."""
    name = f"r{number}-{'scraped' if scraped else 'quiet'}"
    target = engine.new_database(name)
    env = load.service_env(args, engine.settings(target))
    env["METRICS_TOKEN"] = METRICS_TOKEN
    load.init_db(env)
    server = load.Server(env, load.APPS["project"], workdir, args, name)
    scraper = None
    try:
        if not server.wait_ready():
            raise SystemExit(f"gunicorn did not start (log: {server.log_path})")
        players = [f"bench-{i:03d}" for i in range(args.players)]
        for i, player in enumerate(players):
            status, body = load.admin("POST", server.port, f"/api/players/{player}/deposits",
                                      {"currency": "USD", "amount": load.DEPOSIT, "reference": f"{name}-{i}"})
            if status != 201:
                raise SystemExit(f"deposit for {player} failed: {status} {body}")
        if scraped:
            scraper = Scraper(server.port, args.interval)
            scraper.start()
        result = load.run_load([server], engine, args, players, number)
    finally:
        if scraper is not None:
            scraper.stopped.set()
            scraper.join()
        server.stop()
    books = load.reconcile(env, f"{name}: ")
    engine.drop(target)
    line = (f"{name}: {result['per_second']:,.0f} callbacks/s, p99 {result['p99']:.1f} ms, "
            f"errors {result['errors']}, worker CPU {result['server_cpu'] / max(result['callbacks'], 1) * 1000:.2f} ms"
            " per callback")
    if scraper is not None:
        durations = sorted(scraper.durations)
        line += (f"; {len(durations)} scrapes, median {statistics.median(durations) * 1000:.1f} ms, "
                 f"max {durations[-1] * 1000:.1f} ms, failed {len(scraper.failures)}")
    load.log(line)
    failed = result["errors"] or not books or (scraper is not None and (scraper.failures or not scraper.durations))
    return result["per_second"], result["server_cpu"] / max(result["callbacks"], 1), bool(failed)


def scrape_cost(args, engine, workdir, template=None, scrapes=300):
    """The workers' CPU per scrape, scraped back to back with no load: a figure a busy machine
    hardly changes, unlike callbacks/s. On a new database, or a copy of `template` (a history
    of settled games, bench/callbacks.py's --games-preloaded)."""
    target = engine.new_database(f"cost-{'preloaded' if template else 'empty'}", template)
    env = load.service_env(args, engine.settings(target))
    env["METRICS_TOKEN"] = METRICS_TOKEN
    if template is None:
        load.init_db(env)
    server = load.Server(env, load.APPS["project"], workdir, args, "cost")
    try:
        if not server.wait_ready():
            raise SystemExit(f"gunicorn did not start (log: {server.log_path})")
        headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        load.request("GET", server.port, "/metrics", headers=headers)
        workers = server.worker_pids()
        before = sum(load.cpu_seconds(pid) for pid in workers)
        for _ in range(scrapes):
            status, _ = load.request("GET", server.port, "/metrics", headers=headers)
            assert status == 200, status
        return (sum(load.cpu_seconds(pid) for pid in workers) - before) / scrapes
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
        gunicorn_arg=[], interval=cli.interval)
    rates, cpu = {False: [], True: []}, {False: [], True: []}
    failed = False
    with tempfile.TemporaryDirectory(prefix="wallet-bench-scrape-") as workdir:
        engine = load.SQLiteEngine(args, workdir)
        load.log(f"{load.worker_class()} workers x {args.workers}, {args.connections} connections, "
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
            load.init_db(load.service_env(args, engine.settings(template)))
            began = time.perf_counter()
            engine.load(template, load.history(cli.games_preloaded, 1000, args.game_ids))
            load.log(f"{cli.games_preloaded:,} settled games loaded in {time.perf_counter() - began:.0f} s")
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
