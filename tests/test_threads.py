"""The CPU runtime (:mod:`onerec.threads`): thread defaults (physical cores, shared among a machine's torchrun
processes) and the allocator policy (glibc keeps freed memory)."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys

import pytest
import torch

from onerec import threads


def test_default_threads_share_the_physical_cores(monkeypatch, tmp_path):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    # 4 CPUs that are 2 cores with 2 hyper-threads each
    siblings = {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"}
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(siblings), raising=False)
    real = threads.Path.read_text

    def read_text(self, *a, **k):
        parts = self.parts
        if "topology" in parts:
            return siblings[int(parts[-3].removeprefix("cpu"))] + "\n"
        return real(self, *a, **k)

    monkeypatch.setattr(threads.Path, "read_text", read_text)
    assert threads.physical_cores() == 2 and threads.default_threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes on the machine: one core each
    assert threads.default_threads() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert threads.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's word wins
    assert threads.default_threads() == 3


def test_set_threads_takes_the_request_or_the_default(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert threads.set_threads(1) == 1 == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert threads.set_threads(None) == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


# a child process: a 256 MB block written and freed; prints whether the policy is on, and the resident memory (MB)
# before the block, with it, and after it was freed
_FREED_BLOCK = """
import ctypes, sys
from pathlib import Path
from onerec.threads import keep_freed_memory

def rss():
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024

kept = keep_freed_memory(one_arena=sys.argv[1] == "one_arena")
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = rss()
n = 256 << 20
seen = []

def block():  # on a thread of its own when asked: as onerec serve's batcher searches
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    seen.append(rss())
    libc.free(p)

if sys.argv[2] == "thread":
    import threading
    t = threading.Thread(target=block)
    t.start()
    t.join()
else:
    block()
print(kept, before, seen[0], rss())
"""


def _freed_block(policy: str, arenas: str = "arenas", where: str = "main") -> tuple[bool, float, float, float]:
    env = {**os.environ, "ONEREC_MALLOC": policy}
    out = subprocess.run([sys.executable, "-c", _FREED_BLOCK, arenas, where], env=env, check=True,
                         capture_output=True, text=True)
    kept, *mb = out.stdout.split()
    return kept == "True", *map(float, mb)


def test_keep_freed_memory_keeps_a_freed_block_for_reuse():
    if not threads.Path("/proc/self/status").exists() or not ctypes.util.find_library("c"):
        pytest.skip("needs Linux with glibc (/proc and libc.so.6)")
    kept, before, held, after = _freed_block("keep")
    if not kept:
        pytest.skip("this C library has no mallopt (not glibc): the policy cannot be set")
    assert held - before > 200  # the block was resident
    assert held - after < 50  # freed, it stays with the process (no munmap, no trim) for the next allocation
    kept, before, held, after = _freed_block("system")  # glibc's defaults: a block this size is unmapped on free
    assert not kept and held - before > 200 and held - after > 200
    # on another thread: its own arena cannot hold the block (heaps of 64 MB), so only one shared arena keeps it
    kept, before, held, after = _freed_block("keep", "arenas", "thread")
    assert kept and held - before > 200 and held - after > 200
    kept, before, held, after = _freed_block("keep", "one_arena", "thread")
    assert kept and held - before > 200 and held - after < 50


def test_the_onerec_command_sets_the_allocator_policy(monkeypatch):
    from onerec import cli

    calls = []
    monkeypatch.setattr(threads, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(cli.sys, "argv", ["onerec", "--help"])
    cli.main()
    assert calls == [1]  # `onerec ...` sets the policy before any command runs
