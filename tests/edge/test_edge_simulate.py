"""The single-process simulation: schemes learn, bytes and clock follow the cost model, FedAvg averages."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch

from onerec.config import SasrecConfig
from onerec.edge.devices import partition_dirichlet
from onerec.edge.simulate import EdgeSettings, _Fleet, device_data, make_groups, run_scheme
from onerec.edge.tree import Link, server_tree, tree_aggregate
from onerec.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

N_ITEMS, N_USERS = 30, 120
LISTS = pa.list_(pa.int64())
CFG = SasrecConfig(d_model=16, n_layers=1, n_heads=1, dropout=0.0, max_len=8, lr=1e-2)
FAST = EdgeSettings(local_steps=20, batch_size=8, lr=1e-2, group_size=3, periods=[2, 4], eval_every=10,
                    signature_steps=2, step_ms=10.0, link=Link(base_ms=1.0, ms_per_unit=0.0, bandwidth_mbps=1e12))


@pytest.fixture(scope="module")
def world():
    """Item i is followed by i+1; users fall into 3 clusters by their starting item (the non-IID label)."""
    rng = np.random.default_rng(0)
    starts = rng.integers(N_ITEMS, size=N_USERS)
    seqs = [(s + np.arange(rng.integers(6, 12))) % N_ITEMS for s in starts]
    train = pa.table({"user_id": np.arange(N_USERS), "items": pa.array([q[:-1].tolist() for q in seqs], LISTS)})
    test = pa.table({"user_id": np.arange(N_USERS), "history": pa.array([q[:-1].tolist() for q in seqs], LISTS),
                     "targets": pa.array([[int(q[-1])] for q in seqs], LISTS)})
    devices = partition_dirichlet(starts * 3 // N_ITEMS, 6, alpha=0.3, seed=0)
    return devices, device_data(devices, train, test, CFG.max_len)


def test_fedavg_bytes_clock_and_learning(world) -> None:
    devices, data = world
    out = run_scheme("fedavg", devices, data, N_ITEMS, CFG, FAST)
    p = out["model_bytes"]
    assert p == sum(t.numel() * 4 for t in _Fleet(1, N_ITEMS, CFG, 0.01, 0).recs[0].model.state_dict().values())
    final = out["final"]
    assert final["exchanges"] == final["top_rounds"] == 10 and final["bytes"] == 10 * 2 * 6 * p
    # every device to the server at the plane's centre and back, every round
    dist = np.linalg.norm(devices.positions - 0.5, axis=-1).sum()
    assert final["byte_distance"] == pytest.approx(10 * 2 * p * dist)
    # 20 steps of 10 ms; each round: up + down at 1 ms latency (infinite bandwidth, no distance term)
    assert final["sim_s"] == pytest.approx((20 * 10 + 10 * 2 * 1.0) / 1e3, rel=1e-6)
    assert [c["step"] for c in out["curve"]] == [10, 20]
    assert final["ndcg@10"] > 0.3  # random ranking: ~10/30 recall, ndcg ~0.15


def test_local_moves_nothing_and_etree_counts_levels(world) -> None:
    devices, data = world
    local = run_scheme("local", devices, data, N_ITEMS, CFG, FAST)
    assert local["final"]["bytes"] == 0 and local["final"]["exchanges"] == 0
    etree = run_scheme("etree", devices, data, N_ITEMS, CFG, dataclasses.replace(FAST, grouping="distance"))
    p = etree["model_bytes"]
    # 2 groups of 3 + a root over the 2 heads; 10 group rounds (4 devices send: the heads' models stay put),
    # 5 of them also root rounds (1 head sends to the other)
    assert etree["final"]["exchanges"] == 10 and etree["final"]["bytes"] == (10 * 4 + 5 * 1) * 2 * p
    assert etree["final"]["top_rounds"] == 5
    gossip = run_scheme("gossip", devices, data, N_ITEMS, CFG, FAST)
    assert gossip["final"]["bytes"] == 10 * 6 * p
    central = run_scheme("central", devices, data, N_ITEMS, CFG, dataclasses.replace(FAST, local_steps=10))
    assert central["final"]["ndcg@10"] > 0.3


def test_fleet_aggregation_is_the_weighted_average_of_trained_models(world) -> None:
    devices, data = world
    fleet = _Fleet(devices.n, N_ITEMS, CFG, 1e-2, 0)
    for d in range(devices.n):
        fleet.step(d, data.windows[d], 8)
    before = fleet.states()
    key = "item_emb.weight"
    expect = sum(int(n) * before[d][key].clone() for d, n in enumerate(data.samples)) / data.samples.sum()
    fleet.load(tree_aggregate(server_tree(devices.n, np.zeros(2), 1), before, data.samples, 1))
    for d in range(devices.n):
        assert torch.allclose(fleet.recs[d].model.state_dict()[key], expect, atol=1e-6)
    assert fleet.recs[0].model.item_emb.weight.data_ptr() != fleet.recs[1].model.item_emb.weight.data_ptr()


def test_bad_scheme_names_the_key(world) -> None:
    devices, data = world
    with pytest.raises(ConfigError, match=r"edge\.scheme"):
        run_scheme("fedprox", devices, data, N_ITEMS, CFG, FAST)
    with pytest.raises(ConfigError, match=r"edge\.optimizer='adagrad'"):
        run_scheme("fedavg", devices, data, N_ITEMS, CFG, dataclasses.replace(FAST, optimizer="adagrad"))
    with pytest.raises(ConfigError, match=r"edge\.server_lr=0\.0 must be > 0"):
        run_scheme("fedavg", devices, data, N_ITEMS, CFG, dataclasses.replace(FAST, server_lr=0.0))


def test_sgd_devices_take_plain_gradient_steps(world) -> None:
    """optimizer="sgd": a local step is w - lr * grad (FedAvg's local update), whose average over devices is the
    average of their gradients; Adam's per-coordinate normalisation is not."""
    _, data = world
    fleet = _Fleet(2, N_ITEMS, CFG, 0.5, 0, optimizer="sgd")
    model = fleet.recs[0].model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fleet.step(0, data.windows[0], 8)
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert isinstance(fleet.opts[0], torch.optim.SGD)
    for name, param in model.named_parameters():
        assert torch.allclose(param.detach(), before[name] - 0.5 * grads[name], atol=1e-6), name
    assert any(not torch.equal(model.state_dict()[k], before[k]) for k in before)


def test_a_dead_aggregator_stops_fedavg_but_not_etree(world) -> None:
    devices, data = world
    faulty = dataclasses.replace(FAST, fail_step=9, grouping="distance")
    fedavg = run_scheme("fedavg", devices, data, N_ITEMS, CFG, faulty)
    p = fedavg["model_bytes"]
    assert fedavg["final"]["exchanges"] == 4 and fedavg["final"]["bytes"] == 4 * 2 * 6 * p  # steps 2, 4, 6, 8 only
    etree = run_scheme("etree", devices, data, N_ITEMS, CFG, faulty, keep_states=True)
    assert etree["final"]["exchanges"] == 10  # the groups' devices now average at the root's head
    assert all(torch.equal(s["item_emb.weight"], etree["states"][0]["item_emb.weight"]) for s in etree["states"])


def test_a_dead_root_leaves_etree_its_groups(world) -> None:
    """The root's aggregator dies: E-Tree's groups go on averaging inside (every group round still moves bytes),
    no global round follows, and the groups' models drift apart."""
    devices, data = world
    faulty = dataclasses.replace(FAST, fail_step=9, fail_level=2, grouping="distance")
    etree = run_scheme("etree", devices, data, N_ITEMS, CFG, faulty, keep_states=True)
    whole = run_scheme("etree", devices, data, N_ITEMS, CFG, dataclasses.replace(faulty, fail_step=None))
    assert etree["final"]["exchanges"] == whole["final"]["exchanges"] == 10  # steps 2, 4, .., 20 (4, 8, .. at the top)
    assert etree["final"]["top_rounds"] == 2 and whole["final"]["top_rounds"] == 5  # steps 4 and 8 only
    groups = make_groups(devices, data, N_ITEMS, CFG, faulty)
    heads = [etree["states"][int(np.flatnonzero(groups == g)[0])]["item_emb.weight"] for g in np.unique(groups)]
    for g in np.unique(groups):  # inside a group one model (the last exchange was a group round, step 20)
        for d in np.flatnonzero(groups == g):
            assert torch.equal(etree["states"][int(d)]["item_emb.weight"], heads[int(g)])
    assert not torch.equal(heads[0], heads[1])  # across groups: apart


def test_server_adam_steps_at_global_rounds_only(world, monkeypatch) -> None:
    """edge.server_lr: E-Tree's root rounds (not its group rounds) and FedAvg's rounds go through ServerAdam, and
    afterwards every device holds the server's model; edge.group_lr: each group's rounds, one step per group."""
    import onerec.edge.tree as tree_mod

    calls = []

    class Counting(tree_mod.ServerAdam):
        def step(self, average):
            calls.append(len(average))
            return super().step(average)

    monkeypatch.setattr(tree_mod, "ServerAdam", Counting)
    devices, data = world
    s = dataclasses.replace(FAST, server_lr=0.01, grouping="distance")
    out = run_scheme("etree", devices, data, N_ITEMS, CFG, s, keep_states=True)
    assert len(calls) == out["final"]["top_rounds"] == 5  # 20 steps, root every 4 (groups every 2)
    last = out["states"]
    assert all(torch.equal(last[0][k], st[k]) for st in last for k in st)  # step 20 is a root round
    calls.clear()
    plain = run_scheme("fedavg", devices, data, N_ITEMS, CFG, FAST)
    adam = run_scheme("fedavg", devices, data, N_ITEMS, CFG, dataclasses.replace(FAST, server_lr=0.01))
    assert len(calls) == 10 and adam["final"]["ndcg@10"] != plain["final"]["ndcg@10"]
    calls.clear()
    groups = run_scheme("etree", devices, data, N_ITEMS, CFG, dataclasses.replace(s, server_lr=None, group_lr=0.01))
    assert len(calls) == 5 * 2  # group rounds at steps 2, 6, 10, 14, 18; 6 devices in 2 groups of 3
    plain = run_scheme("etree", devices, data, N_ITEMS, CFG, dataclasses.replace(s, server_lr=None))
    assert groups["final"]["ndcg@10"] != plain["final"]["ndcg@10"]
    with pytest.raises(ConfigError, match=r"edge\.group_lr=-1\.0 must be > 0"):
        run_scheme("etree", devices, data, N_ITEMS, CFG, dataclasses.replace(s, group_lr=-1.0))
