"""`torchrun --nproc_per_node=3 -m onerec edge RUN`: one device a process gives the single-process run's numbers
(E-Tree with KMA groups, FedAvg, gossip, local; SASRec and the generator), skips centralised training, and stops
on a device count other than the number of processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from onerec.cli import cli
from onerec.io import read_json

pytestmark = pytest.mark.usefixtures("one_thread")

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "-m", "onerec"]
# 3 devices in 2 KMA groups under a root; nothing drawn at random in training (dropout 0, SASRec's ce loss), so
# the two modes differ only in the order of float additions
THREE = ["edge.n_devices=3", "edge.group_size=2", "edge.periods=[2,4]", "edge.local_steps=4", "edge.eval_every=2",
         "edge.min_users=8", "edge.n_clusters=3", "train.threads=1"]
SASREC = [*THREE, "eval.sasrec.d_model=8", "eval.sasrec.n_layers=1", "eval.sasrec.max_len=8", "eval.sasrec.dropout=0"]


def _run_both(run, overrides: list[str]) -> tuple[dict, dict, str]:
    """(the single-process run's metrics, torchrun's, torchrun's stdout) of `onerec edge RUN overrides`."""
    res = CliRunner().invoke(cli, ["edge", str(run), *overrides])
    assert res.exit_code == 0, res.output + repr(res.exception)
    single = read_json(run / "edge" / "metrics.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*TORCHRUN, "edge", str(run), *overrides], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return single, read_json(run / "edge" / "metrics.json"), proc.stdout


def _assert_same_numbers(single: dict, multi: dict) -> None:
    assert single["mode"] == "simulation" and multi["mode"] == "processes"
    assert {k: v for k, v in multi.items() if k not in ("schemes", "mode", "skipped")} == \
        {k: v for k, v in single.items() if k not in ("schemes", "mode")}
    for name, got in multi["schemes"].items():
        want = single["schemes"][name]
        assert got["model_bytes"] == want["model_bytes"] and len(got["curve"]) == len(want["curve"]), name
        for a, b in zip(got["curve"], want["curve"]):
            assert a.keys() == b.keys()
            for k in a:  # accuracy, exchanges, bytes and the simulated clock at every curve point
                assert a[k] == pytest.approx(b[k], abs=1e-5), (name, a["step"], k)


@pytest.mark.slow  # torchrun starts 3 processes (~10 s on a shared 2-core machine), plus the single-process run
def test_torchrun_sasrec_equals_one_process(data_run, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(data_run, run)
    single, multi, out = _run_both(run, SASREC)
    assert set(single["schemes"]) == {"etree", "fedavg", "gossip", "local", "central"}
    assert set(multi["schemes"]) == {"etree", "fedavg", "gossip", "local"} and set(multi["skipped"]) == {"central"}
    _assert_same_numbers(single, multi)
    # E-Tree's step 2 is a group round, FedAvg's a round of every device: the schemes are not one another
    assert multi["schemes"]["etree"]["curve"][0]["bytes"] < multi["schemes"]["fedavg"]["curve"][0]["bytes"]
    assert out.count("edge scheme central skipped under torchrun") == 1  # rank 0 reports, once
    assert out.count("edge (sasrec on every device)") == 1


@pytest.mark.slow  # tokenizes, then the tiny generator on 3 devices in both modes: ~15 s
def test_torchrun_generator_equals_one_process(data_run, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(data_run, run)
    res = CliRunner().invoke(cli, ["tokenize", str(run)])
    assert res.exit_code == 0, res.output
    overrides = [*THREE, "edge.model=generator", "edge.schemes=[etree,gossip]", "edge.batch_size=8",
                 "model.dropout=0", "generate.beam_size=10"]
    single, multi, _ = _run_both(run, overrides)
    assert set(multi["schemes"]) == {"etree", "gossip"} and "skipped" not in multi
    _assert_same_numbers(single, multi)


def test_torchrun_with_another_device_count_names_both_and_the_fix(data_run, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun sets it; the check comes before joining any group
    res = CliRunner().invoke(cli, ["edge", str(data_run), *SASREC, "edge.n_devices=8"])
    message = str(res.exception)
    assert res.exit_code != 0 and "edge.n_devices=8" in message and "3 processes" in message
    assert "edge.n_devices=3" in message and "--nproc_per_node=8" in message
    res = CliRunner().invoke(cli, ["edge", str(data_run), *SASREC, "edge.schemes=[central]"])
    assert res.exit_code != 0 and "central" in str(res.exception) and "without torchrun" in str(res.exception)
    assert not (data_run / "edge").exists() and not (data_run / "edge.staging").exists()
