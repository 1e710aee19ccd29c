"""How many CPU threads the offline tools use: as many as the process may run on, never more.

A process restricted to some cores (``taskset``, a batch scheduler's cpuset, a container's CPU
quota) still sees every core of the machine in ``os.cpu_count()``, and torch, OpenMP (FAISS) and
the BLAS behind numpy each start one thread per core they see. On a loaded or restricted machine
those threads fight for the same cores and every parallel step pays for it. :func:`usable_cores`
counts the cores this process may use (its CPU affinity, bounded by a cgroup CPU quota), and
:func:`limit_threads` sizes torch's, OpenMP's and the BLAS's pools to it, once, at the start of a
command.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
_CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _cgroup_quota() -> float | None:
    """The cgroup's CPU quota in cores (e.g. 2.5), or None when there is none or it is unreadable."""
    try:
        if _CGROUP_V2_MAX.exists():
            quota, period = _CGROUP_V2_MAX.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if _CGROUP_V1_QUOTA.exists():
            quota_us = int(_CGROUP_V1_QUOTA.read_text())
            return None if quota_us <= 0 else quota_us / int(_CGROUP_V1_PERIOD.read_text())
    except (OSError, ValueError) as exc:
        log.debug("cgroup CPU quota not readable (%s): using the affinity alone", exc)
    return None


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (``os.sched_getaffinity``; the machine's
    count where the platform has none), bounded by a cgroup CPU quota rounded up. At least 1.

    >>> usable_cores() >= 1
    True
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def limit_threads(requested: int | None = None) -> int:
    """Size torch's intra-op pool, OpenMP's (FAISS) and the BLAS's (numpy, through threadpoolctl)
    to ``requested`` threads, or to :func:`usable_cores` when None or 0. Returns the count (also
    logged, at debug level: ``timevis fit`` names it in its summary line)."""
    if requested is not None and requested < 0:
        from timevis_cli.errors import ConfigError

        raise ConfigError(f"threads={requested} is negative; use 0 (all usable cores) or a count")
    available = usable_cores()
    threads = requested or available
    import torch

    torch.set_num_threads(threads)
    limited = ["torch"]
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a declared dependency; only a broken install lacks it
        log.debug("threadpoolctl is not installed: the BLAS's threads are not limited")
    else:
        threadpool_limits(threads)  # BLAS and every OpenMP runtime loaded so far
        limited.append("BLAS/OpenMP")
    faiss = _loaded_faiss()
    if faiss is not None:
        faiss.omp_set_num_threads(threads)
        limited.append("faiss")
    log.debug(
        "using %d CPU thread(s) (%s; %d usable core(s)%s)",
        threads,
        ", ".join(limited),
        available,
        "" if requested is None or requested == 0 else ", as requested",
    )
    return threads


def _loaded_faiss():  # noqa: ANN202 - the faiss module, when a command has imported it
    """faiss if it is imported already (the kNN backends size its pool when they import it)."""
    return sys.modules.get("faiss")
