"""A round: one configuration (engine, app, history, instances, replicated or not) served on a
fresh database, its players funded, the load driven, its balances and books checked."""

import dataclasses
import time
from pathlib import Path

from bench import reference
from bench.checks import check_copy, check_reference, minor_units, reconcile
from bench.clients import run_load
from bench.fill import history
from bench.report import log, print_profiles, print_result, print_spy
from bench.servers import STARTUP_SECONDS, Server, init_db

DEPOSIT = "1000000.00"


@dataclasses.dataclass(frozen=True)
class Config:
    """What a round serves: the engine, the app (project or reference), the history preloaded,
    the number of instances (independent gunicorn masters) on the one database, and whether
    the service replicates it (LITESTREAM_REPLICA_URL, a file replica: SQLite only)."""

    engine: str
    app: str
    games: int
    instances: int
    replicated: bool = False

    def label(self, workers):
        history = "empty" if not self.games else f"{self.games:,} games"
        replicated = ", replicated to a file replica" if self.replicated else ""
        return f"{self.engine} {self.app}, {self.instances} x {workers} workers, {history}{replicated}"


def prepare_templates(args, engines):
    """Per engine, one database holding the preloaded history, copied for each preloaded round."""
    templates = {}
    if not args.games_preloaded:
        return templates
    for name, engine in engines.items():
        target = engine.new_database(f"template_{args.games_preloaded}")
        init_db(args, target)
        began = time.perf_counter()
        engine.load(target, history(args.games_preloaded, args.history_players, args.game_ids))
        log(f"fill ({name}): {args.games_preloaded:,} games, {args.history_players:,} wallets, "
            f"{2 * args.games_preloaded:,} ledger and {2 * args.games_preloaded:,} audit rows in "
            f"{time.perf_counter() - began:.1f} s, written out ({engine.size(target) / 2**20:,.0f} MiB); "
            f"each preloaded round gets a copy")
        templates[name] = target
    return templates


def run_round(args, engines, config, templates, workdir, repetition, number):
    """Serve a fresh database, fund the players, drive the load, check balances and books."""
    engine = engines[config.engine]
    name = (f"r{number}-{config.engine}-{config.app}-{config.games}-{config.instances}"
            + ("-replicated" if config.replicated else ""))
    log(f"\n=== round {number}: {config.label(args.workers)}"
        + (f", repetition {repetition + 1}/{args.repeat}" if args.repeat > 1 else "") + " ===")
    target = engine.new_database(name, templates[config.engine] if config.games else None)
    if config.app == "reference":
        reference.create_schema(target, args.synchronous)
    elif not config.games:
        init_db(args, target)  # a preloaded copy has its schema
    served, replica = {}, None
    if config.replicated:  # set for gunicorn only: the CLI refuses to create a replicated database
        replica = Path(workdir) / f"{name}-replica"
        served = {"LITESTREAM_REPLICA_URL": replica.as_uri()}
    profile_dir = spy_dir = None
    if args.profile:
        profile_dir = Path(args.profile) / name
        profile_dir.mkdir(parents=True, exist_ok=True)
    if args.py_spy:
        spy_dir = Path(args.py_spy) / name
    servers = []
    try:
        for i in range(config.instances):  # started together, as instances booting at once
            servers.append(Server(target, config.app, args, f"{name}-{i + 1}", workdir, profile_dir, **served).launch())
        try:
            for server in servers:
                server.ready(STARTUP_SECONDS)
        except RuntimeError as error:
            log(error)
            raise SystemExit(f"round {number}: gunicorn did not start (log in {workdir}, kept with --keep)")
        first = servers[0]
        players = [f"bench-{i:03d}" for i in range(args.players)]
        before = {}
        for i, player in enumerate(players):
            status, body = first.admin("POST", f"/api/players/{player}/deposits",
                                       {"currency": "USD", "amount": DEPOSIT, "reference": f"bench-{name}-{i}"})
            if status != 201:
                raise SystemExit(f"deposit for {player} failed: {status} {body}")
            before[player] = minor_units(body["balance"])
        log(f"{config.instances} gunicorn master(s) (pids {', '.join(str(s.process.pid) for s in servers)}) "
            f"on 127.0.0.1 ports {', '.join(str(s.port) for s in servers)}, workers "
            f"{[s.worker_pids() for s in servers]}; {len(players)} players funded with {DEPOSIT} USD")
        if replica:
            waited = first.wait_replicating()
            log(f"replication: supervisor and Litestream pids {servers[0].replication_pids()}, replica "
                f"{replica.as_uri()}; " + (f"/healthz reported replication ok after {waited:.1f} s" if waited is not None
                                           else "WARNING: /healthz never reported replication ok; loading anyway"))
        result = run_load(servers, engine, args, players, repetition, spy_dir, replica)
        if replica:  # before anything else asks the service for anything
            result["replica_lag"] = first.replica_lag(result["last_answer"])
        # every player's balance: what it held, minus accepted bets, plus wins (nothing twice)
        wrong = []
        for player in players:
            status, body = first.admin("GET", f"/api/players/{player}/balances/USD")
            expected = before[player] + result["moves"].get(player, 0)
            got = minor_units(body["balance"]) if status == 200 else None
            if got != expected:
                wrong.append(f"{player}: balance {got} minor units, expected {expected}")
        result["wrong_balances"] = wrong
    finally:
        for server in servers:
            server.stop()
    print_result(args, result)
    if profile_dir:
        print_profiles(profile_dir)
    if spy_dir:
        print_spy(spy_dir, result["callbacks"], args)
    result["books"] = reconcile(args, target) if config.app == "project" else check_reference(target)
    result["copy"] = check_copy(args, target, replica, workdir, name) if replica else None
    if not args.keep:
        engine.drop(target)
    return result
