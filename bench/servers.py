"""The service under load: the project or the reference wallet served by gunicorn as the Procfile
runs it (harness/live.py's Gunicorn), its settings and the flask CLI beside it, what its /healthz
says about replication, and the profilers that can watch its workers (cProfile, py-spy)."""

import datetime
import http.client
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness.live import ROOT, Gunicorn, children, flask_cli, workers_of
from harness.samples import store_settings

APPS = {  # what gunicorn serves, from the repository root
    "project": "app:create_app()",
    "reference": "bench.reference:create_app()",
}
STARTUP_SECONDS = 60  # a preloaded database on a busy machine may take a while


def settings(args):
    """What the bench sets for the project and the reference alike, beside the tokens and the
    currency's decimals (harness/live.py sets those) and where the books are."""
    return {"SQLITE_SYNCHRONOUS": args.synchronous, "LOG_LEVEL": args.log_level}


def cli(args, target, *command):
    """`flask --app app COMMAND` on the books at `target`, with the service's settings."""
    return flask_cli(*command, timeout=None, CURRENCY_DECIMALS="USD=2", **store_settings(target), **settings(args))


def init_db(args, target):
    done = cli(args, target, "init-db")
    if done.returncode != 0:
        sys.exit(f"init-db failed:\n{done.stdout}{done.stderr}")


def worker_class():
    """The worker class gunicorn.conf.py chooses (the bench never overrides it)."""
    try:
        chosen = runpy.run_path(str(ROOT / "gunicorn.conf.py")).get("worker_class", "sync")
    except Exception as error:  # printed only: gunicorn itself will say what is wrong
        return f"unknown ({error})"
    return getattr(chosen, "__name__", chosen)


PROFILE_CONFIG = """
import cProfile, os, runpy, time
# -c replaces the repository's gunicorn.conf.py: take its settings (worker class, limits) first.
globals().update((k, v) for k, v in runpy.run_path("gunicorn.conf.py").items() if not k.startswith("__"))
_profiles = {}

def post_worker_init(worker):  # the app is loaded: profile the requests, not the imports
    _profiles[os.getpid()] = profile = cProfile.Profile(%s)
    profile.enable()

def worker_exit(server, worker):
    profile = _profiles.pop(os.getpid(), None)
    if profile is not None:
        profile.disable()
        profile.dump_stats(os.path.join(os.environ["BENCH_PROFILE_DIR"], "worker-%%d.prof" %% os.getpid()))
"""


class Server(Gunicorn):
    """One gunicorn master as the Procfile runs it, in its own process group.

    `python -m gunicorn APP` in the repository root, so gunicorn.conf.py decides the worker
    class and limits for the project and the reference alike; bound to loopback only; no
    control socket (several masters run at once); no access log (one line per request would
    be the bench's cost, not the service's). `launch()` it, then `ready()`: several instances
    boot at once."""

    def __init__(self, target, app, args, name, log_dir, profile_dir=None, **env):
        options = list(args.gunicorn_arg)
        if profile_dir:
            config = Path(log_dir) / "profile_conf.py"
            timer = "time.process_time" if args.profile_clock == "cpu" else "time.perf_counter"
            config.write_text(PROFILE_CONFIG % timer)
            options = ["-c", str(config), *options]
            env["BENCH_PROFILE_DIR"] = str(profile_dir)
        super().__init__(target, name=name, workers=args.workers, log_dir=log_dir, app=APPS[app],
                         options=options, access_log=False, **settings(args), **env)

    def worker_pids(self):
        """The master's children but the replication supervisor (with LITESTREAM_REPLICA_URL
        the master starts it before its workers, and it lives as long as the master)."""
        return sorted(workers_of(self.process.pid))

    def replication_pids(self):
        """The replication supervisor (a child of the master) and its children: Litestream."""
        supervisors = children(self.process.pid) - workers_of(self.process.pid)
        return sorted(supervisors.union(*(children(pid) for pid in supervisors)))

    def healthz(self):
        """What /healthz answers, or {} if it does not answer JSON."""
        try:
            _, answer = self.request("GET", "/healthz")
        except (OSError, http.client.HTTPException):
            return {}
        return answer if isinstance(answer, dict) else {}

    def wait_replicating(self, timeout=60):
        """Seconds until /healthz reports replication ok (a first sync known to be on the replica),
        or None if it did not within `timeout`."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if self.healthz().get("replication") == "ok":
                return time.monotonic() - began
            time.sleep(0.1)
        return None

    def replica_lag(self, answered_at, timeout=60):
        """Seconds from the last answer (a wall-clock time) until /healthz reports a sync that holds
        every callback: a replication_last_sync at or after it; None if not within `timeout`."""
        if answered_at is None:
            return None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.healthz().get("replication_last_sync")
            if last and last_sync(last) >= answered_at:
                return time.time() - answered_at
            time.sleep(0.05)
        return None


def last_sync(text):
    """/healthz's replication_last_sync as a wall-clock time."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def py_spy_executable():
    """The py-spy beside this interpreter or on the PATH; None if there is none."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


def py_spy(pids, args, directory):
    """Sample each worker's stacks for the measured window: only while it holds the GIL (its
    Python code running), or (--py-spy-clock wall) all the time, waits included."""
    directory.mkdir(parents=True, exist_ok=True)
    idle = ["--idle"] if args.py_spy_clock == "wall" else ["--gil"]
    executable = py_spy_executable()
    return [
        subprocess.Popen(
            [executable, "record", "--pid", str(pid), "--duration", str(max(1, round(args.seconds))),
             "--rate", str(args.py_spy_rate), "--format", "raw", "--nonblocking", *idle,
             "--output", str(directory / f"worker-{pid}.txt")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]
