"""What the bench prints: each round's figures, the profiles of its workers, and the summary at
the end (medians over the repetitions, the ratios, the targets met or missed)."""

import collections
import dataclasses
import os
import re
import statistics
import sys
from pathlib import Path

from bench.servers import worker_class

TARGETS = {"postgresql/sqlite": 0.75, "preloaded/empty": 0.9, "project/reference": 0.9,
           "replicated/unreplicated": 0.9, "p99 ms": 100}


def log(*parts):
    print(*parts, flush=True)


def print_result(args, r):
    c = r["counts"]
    log(f"callbacks in the {args.seconds:g} s window: {r['callbacks']:,} -> {r['per_second']:,.0f} callbacks/s "
        f"(measured sends: {c['start']:,} start, {c['finish']:,} finish, {c['duplicate']:,} duplicate; "
        f"all sends incl. warm-up: {c['all start'] + c['all finish'] + c['all duplicate']:,})")
    log(f"latency ms: p50 {r['p50']:.1f}  p95 {r['p95']:.1f}  p99 {r['p99']:.1f}  max {r['max']:.1f}")
    log(f"errors: {r['errors']}" + "".join(f"\n  {sample}" for sample in r["error_samples"]))
    log(f"balances: {'all as expected' if not r['wrong_balances'] else r['wrong_balances']}")
    for pid in r["workers"]:
        start, end = r["rss_start"].get(pid), r["rss_end"].get(pid)
        log(f"worker {pid} RSS: start {fmt_kb(start)}, end {fmt_kb(end)}")
    n = max(r["callbacks"], 1)
    database = ("" if r["db_cpu"] is None else
                f"PostgreSQL server {r['db_cpu']:.1f} s ({r['db_cpu'] / n * 1e3:.2f} ms/callback), ")
    log(f"CPU in the window: workers {r['server_cpu']:.1f} s ({r['server_cpu'] / n * 1e3:.2f} ms/callback), "
        f"{database}load generator {r['client_cpu']:.1f} s ({r['client_cpu'] / n * 1e3:.2f} ms/callback, "
        f"{args.client_processes} processes), anything else {r['others']:.1f} s, "
        f"machine idle+iowait {r['idle']:.0%}")
    if "replica_lag" in r:
        lag = "never (within 60 s)" if r["replica_lag"] is None else f"{r['replica_lag']:.2f} s"
        cpu = ("no supervisor found" if r["replication_cpu"] is None else
               f"{r['replication_cpu']:.2f} s CPU ({r['replication_cpu'] / n * 1e3:.2f} ms/callback)")
        log(f"replication: Litestream and its supervisor {cpu}; {r['uploads']:,} LTX files uploaded in the window "
            f"({r['uploads'] / args.seconds:.1f}/s, one object store PUT each); /healthz reported a sync holding "
            f"the last answer {lag} after it")
    if r["others"] > 0.1 * args.seconds * len(os.sched_getaffinity(0)):
        log(f"WARNING: other processes used {r['others']:.1f} CPU-seconds of the window "
            f"({r['others'] / args.seconds / len(os.sched_getaffinity(0)):.0%} of the machine): "
            f"the figures are depressed; rerun on a quiet machine")


def fmt_kb(kb):
    return "gone" if kb is None else f"{kb / 1024:.1f} MiB"


def print_profiles(profile_dir):
    import pstats

    files = sorted(str(p) for p in Path(profile_dir).glob("worker-*.prof"))
    if not files:
        log(f"profile: no worker profile written in {profile_dir}")
        return
    stats = pstats.Stats(*files, stream=sys.stdout)
    log(f"\nprofile of the workers ({len(files)} files in {profile_dir}), top 25 by cumulative time:")
    stats.sort_stats("cumulative").print_stats(25)
    log("top 25 by own time:")
    stats.sort_stats("tottime").print_stats(25)


def print_spy(spy_dir, callbacks, args, top=20):
    """py-spy's samples of every worker, merged, as a share of the samples and as milliseconds
    of a worker's time per callback (holding the GIL, or wall time with --py-spy-clock wall): per
    function, inclusive (line numbers dropped; the frames in nearly every sample, gunicorn's
    outer loop, left out); per line where the worker was, with the line that called it (for
    a database call, the caller's line names the statement: COMMIT, the UPDATE...); per file."""
    stacks = collections.Counter()
    for path in sorted(Path(spy_dir).glob("worker-*.txt")):
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if count.isdigit():
                stacks[stack] += int(count)
    total = sum(stacks.values())
    if not total:
        log(f"py-spy: no samples in {spy_dir}")
        return
    inclusive, own, files = collections.Counter(), collections.Counter(), collections.Counter()
    for stack, count in stacks.items():
        frames = stack.split(";")
        own[" < ".join(reversed(frames[-2:]))] += count
        files[re.sub(r"^.*\((.*?)(:\d+)?\)$", r"\1", frames[-1])] += count
        for function in {re.sub(r":\d+\)$", ")", frame) for frame in frames}:
            inclusive[function] += count
    per_callback = 1000 / args.py_spy_rate / max(callbacks, 1)  # ms of a worker per sample, per callback

    def show(title, counter, skip=lambda count: False):
        log(title)
        log(f"  {'share':>6} {'ms/cb':>7}  frame")
        shown = [(frame, count) for frame, count in counter.most_common() if not skip(count)][:top]
        for frame, count in shown:
            log(f"  {count / total:>6.1%} {count * per_callback:>7.3f}  {frame}")

    clock = ("wall clock: waits included, a sync worker waiting for its next request sits in its accept loop"
             if args.py_spy_clock == "wall" else "holding the GIL: Python code running, database calls' own work left out")
    log(f"\npy-spy: {total:,} samples of the workers at {args.py_spy_rate}/s over {args.seconds:g} s ({clock}); "
        f"{total * per_callback:.3f} ms of worker time per callback; raw stacks in {spy_dir}")
    show(f"top {top} functions, inclusive (those in over 99% of the samples left out):", inclusive,
         skip=lambda count: count > 0.99 * total)
    show(f"top {top} lines, own (where the worker was < the line that called it):", own)
    show(f"top {top} files, own:", files)


def summarise(args, configs, results):
    """One row per configuration (medians over the repetitions), the ratios, the targets."""
    rows = {}
    for config in configs:
        runs = results[config]
        rows[config] = {
            "per_second": statistics.median(r["per_second"] for r in runs),
            "p50": statistics.median(r["p50"] for r in runs),
            "p99": statistics.median(r["p99"] for r in runs),
            "max": max(r["max"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "cpu": statistics.median(r["server_cpu"] / max(r["callbacks"], 1) * 1e3 for r in runs),
            "db_cpu": (None if runs[0]["db_cpu"] is None else
                       statistics.median(r["db_cpu"] / max(r["callbacks"], 1) * 1e3 for r in runs)),
            "balances": all(not r["wrong_balances"] for r in runs),
            "books": all(r["books"] for r in runs),
        }
        if config.replicated:
            rows[config].update(
                replication_cpu=(None if any(r["replication_cpu"] is None for r in runs) else
                                 statistics.median(r["replication_cpu"] / max(r["callbacks"], 1) * 1e3 for r in runs)),
                uploads=statistics.median(r["uploads"] / args.seconds for r in runs),
                lag=None if any(r["replica_lag"] is None for r in runs) else max(r["replica_lag"] for r in runs),
                copy=all(r["copy"] for r in runs),
            )
    median = f" (medians of {args.repeat} repetitions)" if args.repeat > 1 else ""
    log(f"\n=== summary{median}: {args.connections} connections, synchronous={args.synchronous}, "
        f"LOG_LEVEL={args.log_level}, worker class {worker_class()} (gunicorn.conf.py) ===")
    log(f"{'engine':<10} {'app':<9} {'inst x wrk':>10} {'games':>10} {'callbacks/s':>11} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'max ms':>7} {'errors':>6} {'worker CPU':>10} {'db CPU':>7} {'balances':>8} {'books':>5}"
        + (f" {'replica':>7} {'copy':>5}" if args.replication else ""))
    for config, row in rows.items():
        db_cpu = "-" if row["db_cpu"] is None else f"{row['db_cpu']:.2f}"
        replica = ""
        if args.replication:  # the replica, and the copy restored from it
            copy = "-" if "copy" not in row else "ok" if row["copy"] else "WRONG"
            kind = "file" if config.replicated else "off" if config.engine == "sqlite" else "-"
            replica = f" {kind:>7} {copy:>5}"
        log(f"{config.engine:<10} {config.app:<9} {f'{config.instances} x {args.workers}':>10} {config.games:>10,} "
            f"{row['per_second']:>11,.0f} {row['p50']:>7.1f} {row['p99']:>7.1f} {row['max']:>7.1f} "
            f"{row['errors']:>6} {row['cpu']:>10.2f} {db_cpu:>7} {'ok' if row['balances'] else 'WRONG':>8} "
            f"{'ok' if row['books'] else 'WRONG':>5}{replica}")
    log("(worker CPU and db CPU: milliseconds per callback; db CPU is the embedded PostgreSQL server's"
        + ("; replica: Litestream to a file replica, or off; copy: the replica restored by hand has the "
           "database's balances and its books balance)" if args.replication else ")"))

    def met(ok):
        return "met" if ok else "MISSED"

    targets = [
        f"p99 < {TARGETS['p99 ms']} ms (the project's rounds): "
        f"{met(all(row['p99'] < TARGETS['p99 ms'] for config, row in rows.items() if config.app == 'project'))}",
        f"zero errors: {met(not any(row['errors'] for row in rows.values()))}",
    ]

    def pairs(field, numerator, denominator):
        for config in rows:
            if getattr(config, field) == numerator:
                other = dataclasses.replace(config, **{field: denominator})
                if other in rows:
                    yield config, other

    log("")
    for top, bottom in pairs("engine", "postgresql", "sqlite"):
        ratio = rows[top]["per_second"] / max(rows[bottom]["per_second"], 1e-9)
        what = f"{top.app}, {top.instances} x {args.workers} workers, {'empty' if not top.games else f'{top.games:,} games'}"
        log(f"PostgreSQL / SQLite ({what}): {rows[top]['per_second']:,.0f} / {rows[bottom]['per_second']:,.0f} "
            f"callbacks/s = {ratio:.2f}")
        if top.app == "project":
            targets.append(f"PostgreSQL >= {TARGETS['postgresql/sqlite']} x SQLite ({what}): "
                           f"{met(ratio >= TARGETS['postgresql/sqlite'])}")
    for top, bottom in pairs("games", args.games_preloaded, 0):
        if not args.games_preloaded or top.app != "project":
            continue
        ratio = rows[top]["per_second"] / max(rows[bottom]["per_second"], 1e-9)
        what = f"{top.engine}, {top.instances} x {args.workers} workers"
        log(f"preloaded / empty ({what}): {rows[top]['per_second']:,.0f} / {rows[bottom]['per_second']:,.0f} "
            f"callbacks/s = {ratio:.2f}")
        targets.append(f"{args.games_preloaded:,} preloaded >= {TARGETS['preloaded/empty']} x empty ({what}): "
                       f"{met(ratio >= TARGETS['preloaded/empty'])}")
    for top, bottom in pairs("app", "project", "reference"):
        ratio = rows[top]["per_second"] / max(rows[bottom]["per_second"], 1e-9)
        what = f"{top.engine}, {top.instances} x {args.workers} workers"
        cpu = rows[top]["cpu"] / max(rows[bottom]["cpu"], 1e-9)
        db_cpu = ""
        if rows[top]["db_cpu"] is not None:
            db_cpu = (f"; PostgreSQL server CPU per callback {rows[top]['db_cpu']:.2f} / "
                      f"{rows[bottom]['db_cpu']:.2f} ms")
        log(f"project / reference ({what}): {rows[top]['per_second']:,.0f} / {rows[bottom]['per_second']:,.0f} "
            f"callbacks/s = {ratio:.2f}; p99 {rows[top]['p99']:.1f} / {rows[bottom]['p99']:.1f} ms; "
            f"worker CPU per callback {rows[top]['cpu']:.2f} / {rows[bottom]['cpu']:.2f} ms (x {cpu:.2f}){db_cpu}")
        targets.append(f"project >= {TARGETS['project/reference']} x reference ({what}): "
                       f"{met(ratio >= TARGETS['project/reference'])}")
    for top, bottom in pairs("replicated", True, False):
        ratio = rows[top]["per_second"] / max(rows[bottom]["per_second"], 1e-9)
        what = f"{top.engine} {top.app}, {top.instances} x {args.workers} workers, empty"
        row = rows[top]
        cpu = "?" if row["replication_cpu"] is None else f"{row['replication_cpu']:.2f}"
        lag = "never (within 60 s)" if row["lag"] is None else f"{row['lag']:.2f} s"
        log(f"replicated / unreplicated ({what}): {row['per_second']:,.0f} / {rows[bottom]['per_second']:,.0f} "
            f"callbacks/s = {ratio:.2f}; p99 {row['p99']:.1f} / {rows[bottom]['p99']:.1f} ms; Litestream and its "
            f"supervisor {cpu} ms CPU per callback; {row['uploads']:.1f} LTX files uploaded/s; /healthz reported "
            f"a sync holding the last answer {lag} after it{' (the slowest round)' if args.repeat > 1 else ''}; "
            f"restored by hand: {'the same balances, books balance' if row['copy'] else 'WRONG'}")
        targets.append(f"replicated >= {TARGETS['replicated/unreplicated']} x unreplicated ({what}): "
                       f"{met(ratio >= TARGETS['replicated/unreplicated'])}")
        targets.append(f"replicated p99 < {TARGETS['p99 ms']} ms ({what}): {met(row['p99'] < TARGETS['p99 ms'])}")
    if len(args.instances) > 1:
        for config in rows:
            if config.instances != args.instances[0]:
                base = dataclasses.replace(config, instances=args.instances[0])
                if base not in rows:  # a replicated round has one instance only
                    continue
                ratio = rows[config]["per_second"] / max(rows[base]["per_second"], 1e-9)
                log(f"{config.instances} / {base.instances} instances ({config.engine} {config.app}, "
                    f"{config.games:,} games): {ratio:.2f}")
    log(f"\ntargets (set for 2 workers per instance, synchronous=FULL, 16 connections; this run: "
        f"{args.workers} workers per instance, synchronous={args.synchronous}, {args.connections} connections):")
    for target in targets:
        log(f"  {target}")
    return any(not row["balances"] or not row["books"] or row.get("copy") is False or row["errors"]
               for row in rows.values())
