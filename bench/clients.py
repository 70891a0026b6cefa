"""The load: provider clients, each on its own HTTP connection, looping start / finish (and
re-sending a recent callback now and then), spread over client processes; and the measured
window they are driven through, with the readings taken around it."""

import array
import collections
import contextlib
import http.client
import json
import multiprocessing
import random
import resource
import subprocess
import threading
import time

from bench.measure import CLK_TCK, cpu_seconds, ltx_files, machine_idle, rss_kb
from bench.servers import py_spy
from harness.samples import CALLBACK_TOKEN

BET = "1.00"  # as sent in the callback's JSON
BET_MINOR = 100
WIN_PAYOUT = 2
DUPLICATE_WINDOW = 32  # a duplicate re-sends one of the client's last 32 callbacks

START = (
    '{"type": "start", "session": {"id": "%s", "playerId": "%s", "gameId": "Mines", '
    '"currency": "USD"}, "game": {"id": "%s", "status": "in_progress", "payout": 0, '
    '"profit": 0, "bet": ' + BET + ', "round": 1}, "data": {"bet": ' + BET + ', '
    '"allBetAmount": ' + BET + '}, "roundData": {}, "time": %d}'
)
FINISH = (
    '{"type": "finish", "session": {"id": "%s", "playerId": "%s", "gameId": "Mines", '
    '"currency": "USD"}, "game": {"id": "%s", "status": "%s", "payout": %s, "profit": %s, '
    '"bet": ' + BET + ', "round": 1}, "data": {"balanceUpdateDelay": 1000}, "time": %d}'
)
EXPECTED_START = {"result": True}
EXPECTED_FINISH = {}


def client_thread(client, port, players, duplicates, game_ids, repetition, start_at, measure_at, stop_at, out):
    """One provider connection: start/finish games until stop_at, checking every answer.

    Its game ids are new in every repetition, as if the rounds shared a database.
    """
    rng = random.Random(f"{repetition}-{client}")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    path = f"/callback/{CALLBACK_TOKEN}"
    headers = {"Content-Type": "application/json"}
    latencies, ends = array.array("d"), array.array("d")
    counts = collections.Counter()
    player_moves = collections.Counter()  # player -> minor units moved
    errors, sent = [], collections.deque(maxlen=DUPLICATE_WINDOW)
    last_answer = 0.0  # when the last callback answered 200 came back (monotonic)
    player = players[client % len(players)]
    session = f"bench-session-{client}"
    sequence = repetition << 32

    def send(body, expected, kind):
        nonlocal last_answer
        began = time.monotonic()
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            status, raw = None, repr(exc).encode()
        ended = time.monotonic()
        if began >= measure_at:
            latencies.append(ended - began)
            ends.append(ended)
            counts[kind] += 1
        counts["all " + kind] += 1
        ok = False
        if status == 200:
            last_answer = ended
            with contextlib.suppress(ValueError):
                ok = json.loads(raw) == expected
        if not ok:
            counts["errors"] += 1
            if len(errors) < 5:
                errors.append(f"{kind}: {status} {raw[:300]!r}")
            if status is None:
                time.sleep(0.01)
        return ok

    def maybe_duplicate():
        if sent and rng.random() < duplicates:
            body, expected = rng.choice(sent)
            send(body, expected, "duplicate")

    while time.monotonic() < start_at:
        time.sleep(min(0.01, max(start_at - time.monotonic(), 0)))
    while time.monotonic() < stop_at:
        sequence += 1
        if game_ids == "random":
            game_id = f"{rng.getrandbits(96):024x}"
        else:
            game_id = f"{int(time.time()):08x}{client:04x}{sequence:012x}"
        start = (START % (session, player, game_id, int(time.time()))).encode()
        if send(start, EXPECTED_START, "start"):
            player_moves[player] -= BET_MINOR
        sent.append((start, EXPECTED_START))
        maybe_duplicate()
        # the finish is sent even past stop_at: no game is left open
        won = rng.random() < 0.5
        finish = (FINISH % (session, player, game_id, "win" if won else "lose",
                            WIN_PAYOUT if won else 0, 1 if won else -1, int(time.time() * 1000))).encode()
        if send(finish, EXPECTED_FINISH, "finish") and won:
            player_moves[player] += BET_MINOR * WIN_PAYOUT
        sent.append((finish, EXPECTED_FINISH))
        maybe_duplicate()
    conn.close()
    out.append({
        "latencies": latencies.tobytes(), "ends": ends.tobytes(), "counts": dict(counts),
        "moves": dict(player_moves), "errors": errors, "last_answer": last_answer,
    })


def client_process(clients, ports, players, duplicates, game_ids, repetition, start_at, measure_at, stop_at,
                   queue):
    """Some of the clients, as threads; client c talks to instance c mod the instances."""
    out = []
    threads = [
        threading.Thread(
            target=client_thread,
            args=(c, ports[c % len(ports)], players, duplicates, game_ids, repetition, start_at, measure_at,
                  stop_at, out),
        )
        for c in clients
    ]
    for thread in threads:
        thread.start()
    while time.monotonic() < measure_at:
        time.sleep(0.005)
    cpu_at_measure = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    while time.monotonic() < stop_at:
        time.sleep(0.005)
    cpu_at_stop = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    for thread in threads:
        thread.join()
    queue.put({"results": out, "cpu": cpu_at_stop - cpu_at_measure})


def run_load(servers, engine, args, players, repetition, spy_dir=None, replica=None):
    """Drive the load over every instance; return the figures of the measured window (with
    `replica`, a file replica's path, also the LTX files uploaded to it in the window)."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    processes_n = max(1, min(args.client_processes, args.connections))
    ports = [server.port for server in servers]
    start_at = time.monotonic() + 0.5
    measure_at = start_at + args.warmup
    stop_at = measure_at + args.seconds
    procs = [
        context.Process(
            target=client_process,
            args=(list(range(i, args.connections, processes_n)), ports, players, args.duplicates,
                  args.game_ids, repetition, start_at, measure_at, stop_at, queue),
        )
        for i in range(processes_n)
    ]
    for proc in procs:
        proc.start()
    workers = [pid for server in servers for pid in server.worker_pids()]
    helpers = [pid for server in servers for pid in server.replication_pids()]  # supervisor, Litestream
    time.sleep(max(start_at - time.monotonic(), 0))
    rss_start = {pid: rss_kb(pid) for pid in workers}
    time.sleep(max(measure_at - time.monotonic(), 0))
    cpu_start = {pid: cpu_seconds(pid) for pid in workers + helpers}
    db_start = engine.cpu()
    idle_start = machine_idle()
    uploads_start = ltx_files(replica)
    spies = py_spy(workers, args, spy_dir) if spy_dir else []
    time.sleep(max(stop_at - time.monotonic(), 0))
    cpu_end = {pid: cpu_seconds(pid) for pid in workers + helpers}
    db_end = engine.cpu()
    idle_end = machine_idle()
    uploads_end = ltx_files(replica)
    reports = [queue.get(timeout=args.seconds + 120) for _ in procs]
    for proc in procs:
        proc.join()
    for spy in spies:
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
    rss_end = {pid: rss_kb(pid) for server in servers for pid in server.worker_pids()}

    latencies, counts, moves, errors = array.array("d"), collections.Counter(), collections.Counter(), []
    in_window, last_answer = 0, 0.0
    for report in reports:
        for result in report["results"]:
            last_answer = max(last_answer, result["last_answer"])
            lat, ends = array.array("d"), array.array("d")
            lat.frombytes(result["latencies"])
            ends.frombytes(result["ends"])
            latencies.extend(lat)
            in_window += sum(1 for end in ends if end <= stop_at)
            counts.update(result["counts"])
            moves.update(result["moves"])
            errors.extend(result["errors"])
    ordered = sorted(latencies)

    def pct(q):
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] * 1000

    jiffies = max(idle_end[1] - idle_start[1], 1)
    idle = (idle_end[0] - idle_start[0]) / jiffies
    server_cpu = sum(cpu_end[p] - cpu_start[p] for p in workers)
    db_cpu = None
    if db_start is not None:
        db_cpu = sum(seconds - db_start.get(pid, 0.0) for pid, seconds in db_end.items())
    replication_cpu = sum(cpu_end[p] - cpu_start[p] for p in helpers) if helpers else None
    client_cpu = sum(report["cpu"] for report in reports)
    busy = (jiffies - (idle_end[0] - idle_start[0])) / CLK_TCK
    others = max(busy - server_cpu - (db_cpu or 0.0) - (replication_cpu or 0.0) - client_cpu,
                 0.0)  # this script, py-spy, other people
    return {
        "callbacks": in_window,
        "per_second": in_window / args.seconds,
        "p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "max": pct(1.0),
        "counts": counts, "errors": counts["errors"], "error_samples": errors, "moves": moves,
        "rss_start": rss_start, "rss_end": rss_end, "workers": workers,
        "server_cpu": server_cpu, "db_cpu": db_cpu, "client_cpu": client_cpu, "idle": idle, "others": others,
        "replication_cpu": replication_cpu,
        "uploads": None if replica is None else len(uploads_end - uploads_start),
        # the last callback answered, as a wall-clock time (what /healthz's last sync is compared with)
        "last_answer": last_answer + time.time() - time.monotonic() if last_answer else None,
    }
