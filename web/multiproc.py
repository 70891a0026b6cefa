"""The life of PROMETHEUS_MULTIPROC_DIR under gunicorn, run by the master (gunicorn.conf.py).

prometheus_client's multiprocess mode keeps each worker's counters in files of its own
(`counter_<pid>.db`, `histogram_<pid>.db`) and sums every file at each scrape (web/metrics.py).
So the directory must exist, empty, before the first worker imports prometheus_client, and a
dead worker's files must neither vanish (its counts would go backwards: a counter reset to
Prometheus) nor pile up (prometheus/client_python#236, #443, #518, #566: thousands of files
after months of worker restarts, and a scrape that reads them all). Here:

- `prepare()`, in `on_starting`: the directory the operator set, or a new one made for this
  master when none is set, emptied of every file a previous run left;
- `worker_exited(pid)`, in `child_exit`: `mark_process_dead` (the live-gauge files go) and the
  dead worker's counter and histogram files folded into one archive per kind (`counter_0.db`,
  `histogram_0.db`: pid 0 is never a worker), so the directory holds the live workers' files
  and two more however often workers restart, and every total stays what it was;
- `remove()`, in `on_exit`: the directory goes if it was made here.

A fold and a scrape exclude each other with a lock file in the directory (`scraping()`):
a scrape never sees a dead worker's counts twice (its file and the archive) or not at all.

The master never imports prometheus_client before `prepare()` has set the variable: its
workers are forked from it, and prometheus_client decides at import whether it writes files.
"""

import collections
import contextlib
import fcntl
import glob
import os
import shutil
import sys
import tempfile

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
ARCHIVE_PID = 0
LOCK_NAME = "fold.lock"  # not *.db: never read as metrics
_made = None  # the directory prepare() created, removed by remove()


class Refused(RuntimeError):
    """The metrics cannot be right as the service was started: it must not start."""


def directory():
    """The multiprocess directory, or None when prometheus_client runs in one process."""
    return os.environ.get(VARIABLE) or None


def prepare():
    """Make (when the operator set none) and empty the directory; set it for the workers.

    Refused when prometheus_client is already loaded in the master (gunicorn's --preload
    imports the app there): the workers, forked from it, would each count alone, and a scrape
    would show one worker's numbers as the service's.
    """
    global _made
    if "prometheus_client" in sys.modules:
        raise Refused("--preload loads the app, and its metrics, before the metrics' directory is set: "
                      "each worker would count alone; remove --preload")
    path = directory()
    if path is None:
        path = _made = tempfile.mkdtemp(prefix="wallet-metrics-")
        os.environ[VARIABLE] = path
    os.makedirs(path, exist_ok=True)
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)
    return path


def remove():
    """Remove the directory if prepare() made it."""
    global _made
    if _made is not None:
        shutil.rmtree(_made, ignore_errors=True)
        _made = None


@contextlib.contextmanager
def _locked(path, operation):
    with open(os.path.join(path, LOCK_NAME), "a") as lock:
        fcntl.flock(lock, operation)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def scraping(path):
    """Hold while reading the files for a scrape: no fold happens meanwhile."""
    return _locked(path, fcntl.LOCK_SH)


def worker_exited(pid):
    """Drop a dead worker's live gauges and fold its counters and histograms into the archive."""
    path = directory()
    if path is None:
        return
    from prometheus_client import multiprocess
    from prometheus_client.mmap_dict import MmapedDict

    with _locked(path, fcntl.LOCK_EX):
        multiprocess.mark_process_dead(pid, path)
        for kind in ("counter", "histogram"):
            dead = os.path.join(path, f"{kind}_{pid}.db")
            if not os.path.exists(dead):
                continue
            archive = os.path.join(path, f"{kind}_{ARCHIVE_PID}.db")
            totals = collections.defaultdict(float)
            for source in (archive, dead):
                if os.path.exists(source):
                    # A histogram's file holds its _sum and each bucket's own count (the
                    # scrape accumulates them): every kept value is summed as it is.
                    for key, value, _, _ in MmapedDict.read_all_values_from_file(source):
                        totals[key] += value
            folded = archive + ".new"  # not *.db until it is whole
            target = MmapedDict(folded)
            for key, value in totals.items():
                target.write_value(key, value, 0.0)
            target.close()
            os.replace(folded, archive)
            os.remove(dead)
