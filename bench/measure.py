"""Readings of the machine during a measured window, from /proc: a process's RSS and CPU
seconds, the machine's idle time; and the LTX files Litestream uploaded to a file replica."""

import contextlib
import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_kb(pid):
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    return 0.0


def machine_idle():
    """(idle + iowait, total) jiffies of the whole machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return values[3] + values[4], sum(values[:8])


def ltx_files(replica):
    """The names of the LTX files in a file replica's level 0 (each upload of Litestream's
    is one: one object store PUT); None without a replica."""
    if replica is None:
        return None
    level = Path(replica) / "ltx" / "0"
    return {path.name for path in level.glob("*.ltx")} if level.is_dir() else set()

