"""Devices, CPU threads and memory measurement."""

from __future__ import annotations

import math
import os
import resource
import sys
from pathlib import Path

import torch

from domix.errors import DomixError


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DomixError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DomixError(f"device {name!r} asked for, but this torch sees no CUDA GPU; use --device cpu")
    return device


def autocast(dtype: str | None, device: torch.device | str):
    """The forward passes' mixed precision (``--autocast``): matrix products in ``dtype`` while the weights and
    the optimizer stay in theirs (torch.autocast); a no-op context for None."""
    from contextlib import nullcontext

    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[dtype])


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated (on CUDA) or the process's peak resident memory (on CPU).

    The CPU figure is the process's high-water mark since it started.
    """
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)


THREADS_ENV = "DOMIX_THREADS"


def cores_given(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPU cores this process may use: its affinity (taskset, a container's cpuset), capped by a
    cgroup CPU quota (a container limited to 2 CPUs on a 64-core host), which torch does not read."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota(cgroup)
    return max(1, min(cores, quota)) if quota else cores


def _cgroup_quota(root: Path) -> int | None:
    """Cores allowed by the cgroup's CPU bandwidth limit (v2 ``cpu.max``, v1 ``cfs_quota_us``), None without one."""
    try:
        if (root / "cpu.max").exists():
            quota, period = (root / "cpu.max").read_text().split()[:2]
        else:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def configure_threads() -> int:
    """Set torch's CPU threads to the cores this process is given (``cores_given``), so that jobs run side
    by side on their own cores do not oversubscribe them: more threads than cores spend their time
    waiting at OpenMP barriers. DOMIX_THREADS or OMP_NUM_THREADS, when set, decide instead. Returns the count."""
    chosen = os.environ.get(THREADS_ENV) or os.environ.get("OMP_NUM_THREADS")
    try:
        threads = max(1, int(chosen)) if chosen else cores_given()
    except ValueError:
        raise DomixError(f"{THREADS_ENV if os.environ.get(THREADS_ENV) else 'OMP_NUM_THREADS'}={chosen!r} is not a "
                         "number of threads; set it to a whole number such as 2, or unset it") from None
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
