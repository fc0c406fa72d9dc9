"""The machine record every results file carries (`onerec.bench.machine`), and how merged results
keep the machines of parts that ran on different kinds of machine."""

from __future__ import annotations

import pytest

from onerec.bench import machine
from onerec.bench.amazon import METRICS, merge_results
from onerec.bench.scientific import merge_scientific

AMD = {"platform": "Linux", "cpu": "AMD EPYC 7B13", "cpu_count": 2, "torch": "2.13.0+cpu", "gpu": None, "threads": 1}
XEON = {**AMD, "cpu": "Intel(R) Xeon(R) Processor"}


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Point the module at a written /proc/cpuinfo (its cache cleared before and after)."""
    path = tmp_path / "cpuinfo"
    monkeypatch.setattr(machine, "CPUINFO", path)
    machine._cpuinfo.cache_clear()
    yield path
    machine._cpuinfo.cache_clear()


def test_cpu_model_and_flags_come_from_cpuinfo(cpuinfo):
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n"
                       "flags\t\t: fpu sse avx512f avx512_bf16\n\nprocessor\t: 1\nmodel name\t: other\n")
    assert machine.cpu_model() == "AMD EPYC 7B13 64-Core Processor"
    assert machine.cpu_has("amx_bf16", "avx512_bf16") and not machine.cpu_has("amx_bf16")
    assert not machine.cpu_has("avx512")  # whole flags, not substrings of other flags


def test_without_cpuinfo_the_platform_names_the_cpu(cpuinfo):
    # cpuinfo was never written: no such file
    assert machine.cpu_model()  # platform.processor() or platform.machine()
    assert not machine.cpu_has("avx2")


def test_machine_info_records_the_machine_the_load_and_extras():
    info = machine.machine_info(note="a training on the other core", faiss="1.9")
    assert info["cpu"] and info["cpu_count"] >= 1 and info["threads"] >= 1 and info["torch"]
    assert "loadavg_1m" in info and info["note"] == "a training on the other core" and info["faiss"] == "1.9"
    assert "note" not in machine.machine_info()
    assert machine.same_machine(info, machine.machine_info())  # the load and notes aside


def test_machine_info_records_the_allocator_policy(monkeypatch):
    from onerec import threads

    monkeypatch.setattr(threads, "_kept", False)
    assert machine.machine_info()["malloc"] == "system"
    monkeypatch.setattr(threads, "_kept", True)  # what keep_freed_memory leaves when glibc took the policy
    assert machine.machine_info()["malloc"] == "kept"


def _amazon_part(seed: int, machine_: dict) -> dict:
    run = {"seed": seed, "models": {"onerec": {**{m: 0.1 for m in METRICS}, "train_seconds": 1.0, "steps": 5}}}
    return {"seeds": [seed], "models": ["onerec"], "onerec": {}, "runs": [run], "seconds": 1.0,
            "machine": machine_, "config": {"train": {"seed": seed}}}


def test_merged_results_list_each_parts_machine_when_they_differ():
    same = merge_results([_amazon_part(0, AMD), _amazon_part(1, {**AMD, "loadavg_1m": 1.7})])
    assert same["machine"] == AMD and "machines" not in same
    mixed = merge_results([_amazon_part(1, XEON), _amazon_part(0, AMD)])
    assert mixed["machines"] == [{"models": ["onerec"], "seeds": [0], "machine": AMD},
                                 {"models": ["onerec"], "seeds": [1], "machine": XEON}]
    # a merged file merged again contributes its own list; SASRec run apart keeps its machine too
    sasrec = {**_amazon_part(0, AMD), "models": ["sasrec-ce"], "sasrec-ce": {}, "onerec": None}
    joined = merge_results([mixed, sasrec])
    assert [m["machine"]["cpu"] for m in joined["machines"]] == [AMD["cpu"], XEON["cpu"], AMD["cpu"]]
    assert joined["machines"][2]["models"] == ["sasrec-ce"]


def test_merged_scientific_results_list_each_parts_machine_when_they_differ():
    def part(seed: int, machine_: dict) -> dict:
        row = {"seed": seed, **{m: 0.1 for m in METRICS}}
        return {"benchmark": "amazon2018-scientific-indexes", "seeds": [seed], "seconds": 1.0, "date": "2026-11-25",
                "command": "c", "note": "", "machine": machine_, "config": {"train": {"seed": seed}},
                "indexes": {"ours": {"per_seed": [row]}}}

    assert "machines" not in merge_scientific([part(0, AMD), part(1, AMD)])
    out = merge_scientific([part(0, AMD), part(1, XEON)])
    assert out["machines"] == [{"indexes": ["ours"], "seeds": [0], "machine": AMD},
                               {"indexes": ["ours"], "seeds": [1], "machine": XEON}]
