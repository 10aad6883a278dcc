"""How many CPUs this process may use, and torch's thread count from it (containers included)."""

from __future__ import annotations

import os
from pathlib import Path


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (a container's limit), or None when unlimited."""

    def v2() -> list[str]:  # cpu.max: "<quota|max> <period>"
        return (root / "cpu.max").read_text().split()

    def v1() -> list[str]:
        return [(root / "cpu" / name).read_text().strip() for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us")]

    for read in (v2, v1):
        try:
            quota, period = read()[:2]
            if quota not in ("max", "-1") and float(period) > 0:
                return float(quota) / float(period)
        except (OSError, ValueError):
            continue
    return None


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (rounded down, at least 1)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(count, int(limit))) if limit is not None else count


def default_torch_threads() -> int:
    """Torch's CPU threads unless set: `OMP_NUM_THREADS` if the environment sets it, else usable cores - 1.

    Torch's own default, a thread per core, collapses next to any other CPU load: every parallel
    region waits for its slowest thread, and one thread preempted stalls them all (docs/benchmarks.md,
    bench/threads.py). Leaving a core keeps the event loop, decoding and a neighbour off the torch threads.
    """
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return int(omp)
    return max(1, usable_cpus() - 1)
