"""What a round checks once its load is over: the books reconcile (the project's own
`wallet reconcile`, or the reference's check), and a replica restored by hand holds the same
balances as the database and books that balance."""

import contextlib
import decimal
import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import replication  # its litestream
from bench import reference
from bench.report import log
from bench.servers import cli


def check_copy(args, target, replica, workdir, name):
    """Restore the replica by hand, as an operator would, once the service has stopped (and
    Litestream made its last sync): the copy must hold the database's balances, and its books
    must balance. Prints what it found; returns whether both hold."""
    copy = Path(workdir) / f"{name}-restored.db"
    command = [replication.litestream_binary(), "restore", "-integrity-check", "full", "-o", str(copy),
               replica.as_uri()]
    began = time.perf_counter()
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        log(f"restored copy: `litestream restore` of {replica.as_uri()} did not finish within 300 s")
        return False
    if done.returncode != 0 or not copy.exists():
        log(f"restored copy: `litestream restore` of {replica.as_uri()} failed (exit {done.returncode}):\n"
            f"{(done.stderr or done.stdout)[-2000:]}")
        return False
    seconds = time.perf_counter() - began
    balances = "SELECT player_id, currency, balance FROM wallets ORDER BY player_id, currency"
    with contextlib.closing(sqlite3.connect(target)) as live, contextlib.closing(sqlite3.connect(copy)) as restored:
        same = live.execute(balances).fetchall() == restored.execute(balances).fetchall()
        counts = [conn.execute("SELECT count(*) FROM callbacks").fetchone()[0] for conn in (restored, live)]
    log(f"restored copy (litestream restore -integrity-check full, {seconds:.1f} s): {counts[0]:,} callbacks "
        f"(the database: {counts[1]:,}); balances {'the same as' if same else 'DIFFERENT from'} the database's")
    books = reconcile(args, str(copy), "restored copy: ")
    if not args.keep:
        for suffix in ("", "-wal", "-shm", "-writers"):  # the CLI's writers' queue file too
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{copy}{suffix}")
        shutil.rmtree(replica, ignore_errors=True)
    return same and books


def minor_units(text):
    return int(decimal.Decimal(text).scaleb(2))


def reconcile(args, target, what=""):
    """`flask --app app wallet reconcile --json` on the round's database (or the copy of it)."""
    began = time.perf_counter()
    done = cli(args, target, "wallet", "reconcile", "--json")
    seconds = time.perf_counter() - began
    try:
        report = json.loads(done.stdout)
    except ValueError:
        log(f"reconcile: no JSON (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return False
    games = ", ".join(f"{k} {v:,}" for k, v in report["games"].items())
    verdict = "ok, the books balance" if report["ok"] else f"{len(report['discrepancies'])} discrepancies"
    log(f"{what}reconcile ({seconds:.1f} s, exit {done.returncode}): {verdict}; wallets {report['wallets']:,}; "
        f"games: {games}")
    for problem in report["discrepancies"][:10]:
        log(f"  DISCREPANCY: {problem}")
    return report["ok"] and done.returncode == 0


def check_reference(target):
    """The reference's books: every balance equals its ledger, every game's ledger rows match."""
    problems, counts = reference.check_books(target)
    log(f"reference books: {'ok, they balance' if not problems else f'{len(problems)} discrepancies'}; "
        + ", ".join(f"{table} {n:,}" for table, n in counts.items()))
    for problem in problems[:10]:
        log(f"  DISCREPANCY: {problem}")
    return not problems
