"""The machine a measurement ran on, as every results file records it (``onerec bench`` and the
scripts in ``benchmarks/``): one definition so that results from different scripts name their
machine alike, with the CPU's model and the load when the measurement started (a figure taken
while other jobs shared the cores says so by its load, not by a hand-written claim)."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch

CPUINFO = Path("/proc/cpuinfo")


@cache
def _cpuinfo() -> str:
    try:
        return CPUINFO.read_text()
    except OSError:  # not Linux, or no procfs
        return ""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s first ``model name``), else what :mod:`platform` knows."""
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine()


def cpu_has(*flags: str) -> bool:
    """Whether the CPU lists any of ``flags`` (e.g. ``avx512_bf16``) in ``/proc/cpuinfo``'s flags
    (False where there is no such file)."""
    listed: set[str] = set()
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            listed.update(value.split())
            break
    return any(f in listed for f in flags)


def machine_info(note: str = "", **extra: Any) -> dict[str, Any]:
    """Platform, CPU model and count, Python, torch, GPU (None without CUDA), torch threads, the
    1-minute load average at the call (None where the OS has none), the allocator policy (``"kept"``:
    :func:`onerec.threads.keep_freed_memory` is in force, as in the ``onerec`` command; else ``"system"``),
    then ``note`` (free text: what shared the machine) and ``extra`` (library versions, ...) when given."""
    from onerec.threads import freed_memory_kept

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        load: float | None = round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # no load average on this OS (AttributeError: Windows)
        load = None
    info: dict[str, Any] = {
        "platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__, "gpu": gpu,
        "threads": torch.get_num_threads(), "loadavg_1m": load,
        "malloc": "kept" if freed_memory_kept() else "system",
    }
    if note:
        info["note"] = note
    return {**info, **extra}


def same_machine(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two recorded machines are the same kind (the load and notes aside)."""
    keys = ("platform", "cpu", "cpu_count", "torch", "gpu", "threads")
    a, b = a or {}, b or {}
    return all(a.get(k) == b.get(k) for k in keys)



def record_machines(merged: dict[str, Any], parts: list[dict[str, Any]], label: Callable[[dict], dict]) -> None:
    """Set a merged results file's ``machines``: each part's machine beside what it ran (``label(part)``,
    e.g. its models and seeds), parts that were merged before contributing their own list; none when
    every part ran on the same kind of machine (the merged file's ``machine`` then says it)."""
    rows: list[dict[str, Any]] = []
    for p in parts:
        rows.extend(p.get("machines") or [{**label(p), "machine": p.get("machine")}])
    merged.pop("machines", None)
    if any(not same_machine(rows[0]["machine"], r["machine"]) for r in rows):
        merged["machines"] = rows


def matmul_rate_cpu(n: int = 2048, repeats: int = 5) -> float:
    """fp32 FLOP/s of a plain n x n x n matrix product on this CPU (median of ``repeats``, after one untimed): the
    reference rate the training benchmarks divide a step's achieved FLOP/s by."""
    import statistics
    import time

    a, b = torch.randn(n, n), torch.randn(n, n)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        a @ b
        if i:
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)
