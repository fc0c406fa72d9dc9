"""CPU threads for torch: physical cores, shared out among the processes of one machine.

torch's default intra-op thread count can oversubscribe a CPU: hyper-threads count as cores, and every process that
``torchrun`` starts on a machine takes all of them. :func:`set_threads` gives each process its share of the physical
cores it may run on, unless ``train.threads`` (or ``OMP_NUM_THREADS``) says otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def physical_cores() -> int:
    """The physical cores among the CPUs this process may run on (hyper-thread siblings count once)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:  # not Linux, or no topology: count the CPU
            cores.add(str(cpu))
    return max(1, len(cores))


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set, else this process's share of the physical cores: all of them, divided by the
    number of processes torchrun started on this machine (``LOCAL_WORLD_SIZE``)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return max(1, physical_cores() // max(1, int(local) if local.isdigit() else 1))


def set_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads to ``requested`` (``train.threads``) or :func:`default_threads`; returns it."""
    n = int(requested) if requested else default_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
