"""The CPU runtime: torch's threads, and how the C allocator hands memory back.

torch's default intra-op thread count can oversubscribe a CPU: hyper-threads count as cores, and every process that
``torchrun`` starts on a machine takes all of them. :func:`set_threads` gives each process its share of the physical
cores it may run on, unless ``train.threads`` (or ``OMP_NUM_THREADS``) says otherwise.

torch on CPU allocates every tensor with the C library's ``malloc``. glibc serves a large block (from 128 KB up to
32 MB, a threshold it moves as blocks come and go) by a fresh ``mmap`` and unmaps it on ``free``, and returns free
memory at the top of its heap to the kernel: the next search then touches new pages, and the kernel zeroes each one
on its first touch (about 0.5 ms a MB here). Beam search at batch 64, beam 128 allocates blocks of several MB at
every step (the cache's keys and values, the logits) and, with the static KV cache, two of ~100 MB a search: a fifth
of its time went to page faults.
:func:`keep_freed_memory` tells glibc to keep what is freed for the next allocation; the ``onerec`` command calls it
at start (``ONEREC_MALLOC=system`` keeps glibc's defaults). Measured: ``benchmarks/allocator.py``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_kept = False
_one_arena = False


def _mallopt():
    """glibc's ``mallopt`` through ctypes, or None (another C library: macOS, musl's no-op, Windows)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def keep_freed_memory(*, one_arena: bool = False) -> bool:
    """Make glibc's ``malloc`` keep freed memory in this process for reuse: no ``mmap`` per large block
    (``M_MMAP_MAX`` 0: blocks come from the heap, and a block no heap can hold still falls back to ``mmap``) and no
    returning of the heap's free top to the kernel below 2 GB (``M_TRIM_THRESHOLD``). The process's resident memory
    then stays at its peak instead of shrinking between searches; the peak itself does not grow (measured,
    ``benchmarks/allocator.py``).

    ``one_arena``: also one arena for every thread (``M_ARENA_MAX`` 1), for a process whose large searches run on a
    worker thread (``onerec serve``): another thread's arena grows in heaps of at most 64 MB, so its larger blocks
    would still be mapped and unmapped each time. Off by default, because threads that allocate at the same moment
    then take turns on one lock. Call it before the threads start (a thread keeps the arena it first used).

    Returns True when the policy is in force: False with ``ONEREC_MALLOC=system``, on a C library without
    ``mallopt``, or if glibc refuses. Calling it again changes nothing but may add ``one_arena``."""
    global _kept, _one_arena
    if os.environ.get("ONEREC_MALLOC", "").strip().lower() == "system":
        return False
    if _kept and (_one_arena or not one_arena):
        return True  # already in force, as asked
    mallopt = _mallopt()
    if mallopt is None:
        return _kept
    if not _kept:
        _kept = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    if _kept and one_arena:
        _one_arena = mallopt(_M_ARENA_MAX, 1) == 1
    return _kept


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` has put its policy in force in this process."""
    return _kept
