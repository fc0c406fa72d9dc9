"""CPU thread defaults (:mod:`onerec.threads`): physical cores, shared among a machine's torchrun processes."""

from __future__ import annotations

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
