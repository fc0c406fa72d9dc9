"""The generator on edge devices: the same schemes as SASRec, trained by the project's training step."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from onerec.config import ModelConfig, TrainConfig
from onerec.edge.devices import Devices, partition_iid
from onerec.edge.simulate import EdgeSettings, GeneratorSpec, device_data, run_scheme
from onerec.edge.tree import Link
from onerec.features import HistoryFeaturizer, TrainExamples

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = EdgeSettings(local_steps=4, batch_size=8, lr=1e-2, group_size=2, periods=[2, 4], eval_every=2,
                        signature_steps=1, link=Link(base_ms=1.0, ms_per_unit=0.0, bandwidth_mbps=1e12))


@pytest.fixture
def setup(cyclic):
    ds, splits = cyclic
    rng = np.random.default_rng(0)
    codes = np.stack([np.arange(ds.n_items) // 5, np.arange(ds.n_items) % 5], axis=1)
    rng.shuffle(codes)
    mcfg = ModelConfig(d_model=16, n_heads=2, enc_layers=1, dec_layers=1, max_history=8, dropout=0.0)
    feat = HistoryFeaturizer(codes, mcfg.max_history)
    spec = GeneratorSpec(mcfg, codes, [8, 5], lambda t: TrainExamples(t, feat), feat, TrainConfig(), beam_size=10)
    devices = partition_iid(ds.n_users, 4, seed=0)
    return ds, spec, devices, device_data(devices, splits["train"], splits["test"], 8, spec)


def test_generator_fedavg_ends_with_one_model_and_central_runs(setup) -> None:
    ds, spec, devices, data = setup
    assert isinstance(data.windows[0], TrainExamples) and len(data.pooled) == int(data.samples.sum())
    out = run_scheme("fedavg", devices, data, ds.n_items, spec, SETTINGS, keep_states=True)
    first = out["states"][0]
    for st in out["states"][1:]:  # the last step (4) is a FedAvg round: every device holds the average
        assert all(torch.equal(first[k], st[k]) for k in first)
    assert [c["step"] for c in out["curve"]] == [2, 4] and 0.0 <= out["final"]["ndcg@10"] <= 1.0
    assert out["final"]["bytes"] == 2 * 2 * 4 * out["model_bytes"]
    local = run_scheme("local", devices, data, ds.n_items, spec, SETTINGS, keep_states=True)
    assert not all(torch.equal(local["states"][0][k], local["states"][1][k]) for k in first)
    central = run_scheme("central", devices, data, ds.n_items, spec, SETTINGS)
    assert central["final"]["bytes"] == 0 and 0.0 <= central["final"]["ndcg@10"] <= 1.0


def test_generator_etree_with_kma_groups(setup) -> None:
    ds, spec, devices, data = setup
    out = run_scheme("etree", devices, data, ds.n_items, spec, dataclasses.replace(SETTINGS, grouping="kma"))
    assert out["final"]["exchanges"] == 2 and out["final"]["bytes"] > 0


def test_generator_fedavg_round_is_the_weighted_average_of_the_local_models(setup, cyclic) -> None:
    """Until the first round a FedAvg device trains as a local-only one (same start, same batches): the round's
    model is the sample-weighted average of those local models, by hand, key by key (devices of 6 to 27 users)."""
    ds, spec, even, _ = setup
    bounds = [0, 6, 15, 33, ds.n_users]
    devices = Devices([np.arange(a, b) for a, b in itertools.pairwise(bounds)], even.positions, even.home)
    data = device_data(devices, cyclic[1]["train"], cyclic[1]["test"], 8, spec)
    assert len(set(data.samples.tolist())) == devices.n
    two = dataclasses.replace(SETTINGS, local_steps=2, periods=[2], eval_every=2)
    local = run_scheme("local", devices, data, ds.n_items, spec, two, keep_states=True)["states"]
    fedavg = run_scheme("fedavg", devices, data, ds.n_items, spec, two, keep_states=True)["states"]
    n = data.samples.astype(np.float64)
    for k in local[0]:
        expect = sum(float(n[d]) * local[d][k].double() for d in range(devices.n)) / n.sum()
        for d in range(devices.n):
            assert torch.allclose(fedavg[d][k].double(), expect, atol=1e-6), (k, d)
