"""Load benchmark of the provider callbacks (`start` / `finish`) against a real gunicorn, on
SQLite, on PostgreSQL, or both in one run, beside the least code that does the same work.

    .venv/bin/python bench/callbacks.py                               # SQLite, 10 s, empty database
    .venv/bin/python bench/callbacks.py --engine both                 # PostgreSQL / SQLite (issue 8)
    .venv/bin/python bench/callbacks.py --engine both --instances 2   # two gunicorn masters, one database
    .venv/bin/python bench/callbacks.py --engine both --games-preloaded 1000000  # and preloaded / empty
    .venv/bin/python bench/callbacks.py --engine both --reference     # project / reference (issue 13)
    .venv/bin/python bench/callbacks.py --replication --repeat 3      # Litestream on / off (issue 9)

How it measures, what it prints and the targets: docs/benchmarks.md. This file reads the
options and runs the rounds; the rest of bench/ does the work (fill.py the preloaded history,
engines.py the fresh databases, servers.py gunicorn and the flask CLI, clients.py the load,
measure.py the readings, checks.py the books, rounds.py a round, report.py the printing).
"""

import argparse
import dataclasses
import os
import platform
import shutil
import sys
import tempfile
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: bench.*, harness, store
import replication  # noqa: E402  (its litestream, for --replication)
import store  # noqa: E402  (which URLs are PostgreSQL's)
from bench.engines import ENGINES, PostgresEngine, SQLiteEngine  # noqa: E402
from bench.report import log, summarise  # noqa: E402
from bench.rounds import Config, prepare_templates, run_round  # noqa: E402
from bench.servers import py_spy_executable, worker_class  # noqa: E402


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help: the module docstring as written, and every option's default."""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--engine", choices=["sqlite", "postgresql", "both"],
                        help="where the books are: SQLite files, PostgreSQL databases, or both in alternate "
                             "rounds with their ratio (default: sqlite, or postgresql with --database-url)")
    parser.add_argument("--database-url", metavar="URL",
                        help="a PostgreSQL server to use instead of starting an embedded one: postgresql://... "
                             "whose role may CREATE DATABASE (each round gets a new database there, dropped "
                             "after it; the URL's own database is only used to create them)")
    parser.add_argument("--reference", action="store_true",
                        help="also run the least-code reference wallet (bench/reference.py) on each engine, "
                             "alternating with the project on an empty database, and print project / reference")
    parser.add_argument("--replication", action="store_true",
                        help="issue 9: serve each SQLite round of the project on an empty database with one "
                             "instance a second time, with LITESTREAM_REPLICA_URL set to a new file replica in the "
                             "temporary directory (the service runs Litestream itself), alternating with it; print "
                             "Litestream's CPU, its uploads and its sync lag, restore the replica by hand and check "
                             "it, and print replicated / unreplicated. SQLite only: refused with --engine "
                             "postgresql; with --engine both the PostgreSQL rounds run unreplicated")
    parser.add_argument("--instances", type=int, nargs="+", default=[1], metavar="N",
                        help="independent gunicorn masters serving the one database, each with --workers; the "
                             "connections are spread over them. Several values: rounds for each")
    parser.add_argument("--workers", type=int, default=2,
                        help="gunicorn workers per instance (WEB_CONCURRENCY); their class is gunicorn.conf.py's")
    parser.add_argument("--connections", type=int, default=16, help="concurrent provider clients")
    parser.add_argument("--seconds", type=float, default=10, help="measured load per round")
    parser.add_argument("--warmup", type=float, default=1,
                        help="seconds of load before the measurement (answers checked, not counted)")
    parser.add_argument("--games-preloaded", type=int, default=0, metavar="N",
                        help="settled games bulk-loaded before the load (once per engine, then copied for each "
                             "round); also runs rounds on an empty database and prints preloaded / empty")
    parser.add_argument("--no-baseline", action="store_true",
                        help="with --games-preloaded, skip the rounds on an empty database")
    parser.add_argument("--repeat", type=int, default=1,
                        help="repetitions of every round, in alternating order (ABBA); the summary and the "
                             "ratios use the medians (one noisy moment on a shared machine does not decide it)")
    parser.add_argument("--duplicates", type=float, default=0.1,
                        help="probability, after each callback, of re-sending one already sent")
    parser.add_argument("--synchronous", default="FULL", choices=["OFF", "NORMAL", "FULL", "EXTRA"],
                        type=str.upper,
                        help="durability: SQLite's SQLITE_SYNCHRONOUS; on PostgreSQL FULL/EXTRA is "
                             "synchronous_commit=on, NORMAL/OFF synchronous_commit=off")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        help="LOG_LEVEL of the project and the reference; INFO (the service's default) writes "
                             "one log line per callback, WARNING none (the README's rows are at INFO)")
    parser.add_argument("--client-processes", type=int, default=2,
                        help="load-generator processes; the connections are threads spread over them")
    parser.add_argument("--players", type=int, default=16, help="funded players the clients bet for")
    parser.add_argument("--history-players", type=int, default=1000,
                        help="wallets the preloaded games are spread over")
    parser.add_argument("--game-ids", choices=["objectid", "random"], default="objectid",
                        help="objectid: time-ordered hex like the provider's; random: 96 random bits")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (SQLite databases, gunicorn logs) and the PostgreSQL "
                             "databases (and the embedded server's data, stopped)")
    parser.add_argument("--profile", metavar="DIR",
                        help="run each worker under cProfile, keep the profiles in DIR and print them "
                             "merged per round (slower: for where the time goes, not for the figures; its "
                             "gunicorn -c file stands in for gunicorn.conf.py, so not with --replication)")
    parser.add_argument("--profile-clock", choices=["wall", "cpu"], default="wall",
                        help="wall: waits for the write lock and the fsync show up (in "
                             "sqlite3 execute); cpu: only what the workers compute")
    parser.add_argument("--py-spy", metavar="DIR",
                        help="sample every worker with py-spy (pip install py-spy) during the measured window, "
                             "keep the raw stacks in DIR and print, per round, the top functions and lines "
                             "with their milliseconds per callback (it perturbs the figures a little)")
    parser.add_argument("--py-spy-rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--py-spy-clock", choices=["gil", "wall"], default="gil",
                        help="gil: sample a worker only while it holds the GIL (where its Python code spends "
                             "CPU; the C work of a database call, done without the GIL, is left out); wall: "
                             "every moment, waits included (the commit's fsync, the write lock, the next request)")
    parser.add_argument("--gunicorn-arg", action="append", default=[], metavar="ARG",
                        help="extra gunicorn argument, repeatable, e.g. --gunicorn-arg=-c "
                             "--gunicorn-arg=/tmp/hooks.py for your own worker hooks (a -c file "
                             "replaces gunicorn.conf.py: load it first, as --profile's does; not with "
                             "--replication)")
    args = parser.parse_args()
    for name in ("workers", "connections", "repeat", "client_processes", "players", "history_players",
                 "py_spy_rate"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if any(n < 1 for n in args.instances):
        parser.error("--instances must be at least 1")
    if args.seconds <= 0 or args.warmup < 0 or args.games_preloaded < 0 or not 0 <= args.duplicates <= 1:
        parser.error("--seconds must be above 0, --warmup and --games-preloaded not negative, "
                     "--duplicates between 0 and 1")
    if args.engine is None:
        args.engine = "postgresql" if args.database_url else "sqlite"
    if args.database_url and args.engine == "sqlite":
        parser.error("--database-url is a PostgreSQL server: use it with --engine postgresql or both")
    if args.database_url and urllib.parse.urlsplit(args.database_url).scheme not in store.POSTGRES_SCHEMES:
        parser.error("--database-url must be a postgresql:// URL")
    if args.reference and args.games_preloaded and args.no_baseline:
        parser.error("--reference runs on an empty database, beside the project's empty rounds: drop --no-baseline")
    if args.replication:
        if args.engine == "postgresql":
            parser.error("--replication measures Litestream, which streams the SQLite file: LITESTREAM_REPLICA_URL "
                         "does not apply to PostgreSQL (it has its own replicas). Use --engine sqlite, or --engine "
                         "both (its PostgreSQL rounds then run unreplicated)")
        if 1 not in args.instances:
            parser.error("--replication replicates one service per database (the service refuses a second): "
                         "include 1 in --instances")
        if args.games_preloaded and args.no_baseline:
            parser.error("--replication replicates the rounds on an empty database: drop --no-baseline")
        if args.profile or any(arg == "--config" or arg.startswith(("-c", "--config="))
                               for arg in args.gunicorn_arg):
            parser.error("--replication starts gunicorn as the service does, with the repository's gunicorn.conf.py "
                         "and its replication hooks: not with --profile or a -c in --gunicorn-arg (--py-spy "
                         "shows where the time goes)")
        try:
            replication.litestream_binary()
        except replication.ConfigurationError as error:
            parser.error(f"--replication: {error}")
    if args.py_spy and py_spy_executable() is None:
        parser.error("--py-spy needs py-spy: pip install py-spy")

    engine_names = ENGINES if args.engine == "both" else (args.engine,)
    games = ([0] if not args.games_preloaded or not args.no_baseline else []) + (
        [args.games_preloaded] if args.games_preloaded else [])
    apps = ["project"] + (["reference"] if args.reference else [])
    # Engines innermost, so that SQLite and PostgreSQL rounds alternate; a replicated round right
    # after its unreplicated twin.
    configs = []
    for config in (Config(engine, app, n, instances)
                   for n in games for instances in args.instances for app in apps for engine in engine_names
                   if not (app == "reference" and n)):
        configs.append(config)
        if (args.replication and config.engine == "sqlite" and config.app == "project" and not config.games
                and config.instances == 1):
            configs.append(dataclasses.replace(config, replicated=True))

    log(f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), Python "
        f"{platform.python_version()}, {platform.platform()}")
    log(f"settings: {', '.join(f'{n} x {args.workers}' for n in args.instances)} gunicorn workers "
        f"(instances x workers; worker class {worker_class()} from gunicorn.conf.py), {args.connections} "
        f"connections over {args.client_processes} client processes, synchronous={args.synchronous}, "
        f"{args.games_preloaded:,} games preloaded, duplicates {args.duplicates:.0%}, {args.seconds:g} s measured "
        f"after {args.warmup:g} s warm-up, game ids {args.game_ids}, LOG_LEVEL={args.log_level}"
        f"{f', PROFILED ({args.profile_clock} clock)' if args.profile else ''}"
        f"{', SAMPLED by py-spy' if args.py_spy else ''}")
    if args.replication:
        log("replication (issue 9): Litestream to a file replica in the temporary directory, on vs off, for "
            + "; ".join(dataclasses.replace(config, replicated=False).label(args.workers)
                        for config in configs if config.replicated)
            + " (SQLite only, one service per database, on an empty database)"
            + ("; the PostgreSQL rounds run unreplicated: replication streams the SQLite file"
               if args.engine == "both" else ""))
    workdir = tempfile.mkdtemp(prefix="wallet-bench-")
    log(f"temporary directory: {workdir}")
    engines, results = {}, {config: [] for config in configs}
    try:
        for name in engine_names:
            engines[name] = SQLiteEngine(args, workdir) if name == "sqlite" else PostgresEngine(args)
            log(f"{name}: {engines[name].describe(args)}")
        templates = prepare_templates(args, engines)
        number = 0
        for repetition in range(args.repeat):  # ABBA: a drift in the machine hits every config alike
            for config in (configs if repetition % 2 == 0 else configs[::-1]):
                number += 1
                results[config].append(run_round(args, engines, config, templates, workdir, repetition, number))
    finally:
        for engine in engines.values():
            engine.close(args.keep)
        if args.keep:
            log(f"kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    failed = summarise(args, configs, results)
    if failed:
        log("FAILED: errors, wrong balances or books that do not balance"
            + (" (a replica restored by hand included)" if args.replication else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
