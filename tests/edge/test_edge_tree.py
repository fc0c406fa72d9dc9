"""Tree aggregation equals the hand-computed weighted average; costs; FedAvg and gossip exchanges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onerec.edge.grouping import kmeans_groups
from onerec.edge.tree import (
    AggregatorAdam,
    Link,
    ServerAdam,
    Tree,
    add_public_nodes,
    build_tree,
    gossip_cost,
    gossip_round,
    model_bytes,
    reattach,
    server_tree,
    tree_aggregate,
    tree_cost,
    weighted_average,
)
from onerec.errors import ConfigError


def _states(values: list[float]) -> list[dict[str, torch.Tensor]]:
    return [{"w": torch.full((2, 3), v), "b": torch.tensor([v, -v])} for v in values]


def _toy_tree() -> Tree:
    """Devices 0,1 in group A and 2,3,4 in group B; a root over both. Periods 2 and 4."""
    return Tree(children=[[np.array([0, 1]), np.array([2, 3, 4])], [np.array([0, 1])]],
                heads=[np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[0.0, 0.0]])], periods=[2, 4])


def test_weighted_average_by_hand() -> None:
    avg = weighted_average(_states([1.0, 3.0]), [1, 3])
    assert torch.allclose(avg["w"], torch.full((2, 3), 2.5)) and torch.allclose(avg["b"], torch.tensor([2.5, -2.5]))


def test_tree_aggregation_equals_hand_computed_weighted_average() -> None:
    tree, samples = _toy_tree(), np.array([1, 1, 2, 2, 4])
    states = _states([1.0, 2.0, 3.0, 4.0, 5.0])
    groups = tree_aggregate(tree, states, samples, level=1)
    # A: (1 + 2) / 2 = 1.5;  B: (2*3 + 2*4 + 4*5) / 8 = 4.25
    assert [float(s["w"][0, 0]) for s in groups] == pytest.approx([1.5, 1.5, 4.25, 4.25, 4.25])
    root = tree_aggregate(tree, states, samples, level=2)
    # (1 + 2 + 6 + 8 + 20) / 10 = 3.7, the same as (2 * 1.5 + 8 * 4.25) / 10
    assert [float(s["b"][1]) for s in root] == pytest.approx([-3.7] * 5)
    assert tree_aggregate(tree, states, samples, level=0) == states
    assert [tree.fired(t) for t in (1, 2, 3, 4, 8)] == [0, 1, 0, 2, 2]


def test_server_tree_is_fedavg() -> None:
    states, samples = _states([0.0, 10.0, 20.0]), np.array([2, 1, 1])
    out = tree_aggregate(server_tree(3, np.array([0.5, 0.5]), 5), states, samples, level=1)
    assert all(float(s["w"][1, 2]) == pytest.approx(7.5) for s in out)  # (0 + 10 + 20) / 4


def test_tree_cost_by_hand() -> None:
    tree = _toy_tree()
    pos = np.array([[0.0, 0.0], [0.0, 2.0], [1.0, 0.0], [1.0, 1.0], [4.0, 0.0]])
    link = Link(base_ms=1.0, ms_per_unit=10.0, bandwidth_mbps=8.0)  # 8 Mbit/s = 1000 bytes per ms
    p = 500  # bytes: 0.5 ms on the wire
    n_bytes, ms, byte_distance = tree_cost(tree, pos, 1, p, link)
    # devices 1, 3, 4 up and down (0 and 2 are the heads); slowest link: device 4 to head (1, 0): 1 + 30 + 0.5, twice
    assert n_bytes == 2 * 3 * p and ms == pytest.approx(2 * 31.5)
    # links of lengths 2 (device 1), 1 (device 3), 3 (device 4), each crossed twice
    assert byte_distance == pytest.approx(2 * p * (2 + 1 + 3))
    n_bytes, ms, byte_distance = tree_cost(tree, pos, 2, p, link)
    # plus head (1, 0) to the root head (0, 0): 1 + 10 + 0.5, twice, over a link of length 1
    assert n_bytes == 2 * 4 * p and ms == pytest.approx(2 * 31.5 + 2 * 11.5)
    assert byte_distance == pytest.approx(2 * p * (2 + 1 + 3 + 1))


def test_built_tree_levels_cover_every_device_once() -> None:
    rng = np.random.default_rng(0)
    pos = rng.random((100, 2))
    groups = kmeans_groups(pos, 10)
    two = build_tree(pos, groups, fanout=[], periods=[5, 20])
    three = build_tree(pos, groups, fanout=[4], periods=[5, 10, 40])
    assert two.depth == 2 and three.depth == 3 and len(three.children[1]) == 3
    for tree in (two, three):
        for level in range(1, tree.depth + 1):
            assert sorted(np.concatenate(tree.leaves(level)).tolist()) == list(range(100))
        assert len(tree.leaves(tree.depth)) == 1
    with pytest.raises(ConfigError, match=r"edge\.periods"):
        build_tree(pos, groups, fanout=[], periods=[5, 12])
    with pytest.raises(ConfigError, match="give 2 periods"):
        build_tree(pos, groups, fanout=[], periods=[5])


def test_gossip_round_and_cost() -> None:
    states, samples = _states([1.0, 4.0]), np.array([3, 1])
    new, picked = gossip_round(states, samples, np.random.default_rng(0), peers=1)
    assert picked.tolist() == [[1], [0]]
    assert all(float(s["w"][0, 0]) == pytest.approx(1.75) for s in new)  # (3 * 1 + 4) / 4
    p = model_bytes(states[0])
    assert p == 8 * 4
    n_bytes, ms, byte_distance = gossip_cost(np.array([[0.0, 0.0], [0.3, 0.4]]), picked, p,
                                             Link(base_ms=0.0, ms_per_unit=100.0, bandwidth_mbps=1e9))
    assert n_bytes == 2 * p and ms == pytest.approx(50.0, abs=1e-3)
    assert byte_distance == pytest.approx(2 * p * 0.5)  # two pulls over the one link of length 0.5
    with pytest.raises(ConfigError, match=r"edge\.gossip_peers"):
        gossip_round(states, samples, np.random.default_rng(0), peers=2)


def test_dead_group_aggregator_reattaches_its_devices_to_the_root() -> None:
    tree, samples = _toy_tree(), np.array([1, 1, 2, 2, 4])
    pos = np.array([[0.0, 0.0], [0.0, 2.0], [1.0, 0.0], [1.0, 1.0], [4.0, 0.0]])
    after = reattach(tree, pos, group=1)  # group B (devices 2, 3, 4) loses its aggregator
    assert [c.tolist() for c in after.children[0]] == [[0, 1], [2], [3], [4]]
    assert after.children[1][0].tolist() == [0, 1, 2, 3]
    states = _states([1.0, 2.0, 3.0, 4.0, 5.0])
    # group rounds: A still averages (1.5); B's devices no longer average with each other
    assert [float(s["w"][0, 0]) for s in tree_aggregate(after, states, samples, 1)] == pytest.approx(
        [1.5, 1.5, 3.0, 4.0, 5.0])
    # root rounds: the same weighted average of everybody as before the fault, 3.7
    assert [float(s["w"][0, 0]) for s in tree_aggregate(after, states, samples, 2)] == pytest.approx([3.7] * 5)
    # before: devices 1, 3, 4 to their heads, head (1, 0) to the root; after: device 1 to its head, devices
    # 2, 3, 4 to the root head (0, 0) -- the same 4 links, B's now go further
    assert tree_cost(tree, pos, 2, 10, Link())[0] == tree_cost(after, pos, 2, 10, Link())[0] == 2 * 4 * 10
    assert tree_cost(after, pos, 2, 10, Link())[1] > tree_cost(tree, pos, 2, 10, Link())[1]
    assert reattach(server_tree(5, np.zeros(2), 1), pos, group=0) is None  # FedAvg's server: nothing left


def test_dead_aggregators_above_the_groups() -> None:
    """A middle node's aggregator dies: its groups move up to the root, one node each. The root's dies: the groups
    go on averaging inside, nothing mixes them; the nodes' indices and a bad level are checked."""
    # devices 0..5 in groups {0,1}, {2,3}, {4,5}; level 2: node 0 over groups 0 and 1, node 1 over group 2; a root
    tree = Tree(children=[[np.array([0, 1]), np.array([2, 3]), np.array([4, 5])], [np.array([0, 1]), np.array([2])],
                          [np.array([0, 1])]],
                heads=[np.array([[0.0, 0], [1, 0], [5, 0]]), np.array([[0.0, 0], [5, 0]]), np.array([[0.0, 0]])],
                periods=[1, 2, 4])
    pos = np.array([[0.0, 0], [0, 1], [1, 0], [1, 1], [5, 0], [5, 1]])
    samples, states = np.array([1, 1, 1, 1, 2, 2]), _states([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    after = reattach(tree, pos, group=0, level=2)  # node 0 of level 2 loses its aggregator
    assert [c.tolist() for c in after.children[0]] == [[0, 1], [2, 3], [4, 5]]  # the groups stay as they were
    assert [c.tolist() for c in after.children[1]] == [[0], [2], [1]]  # group 1 its own node, appended
    assert after.children[2][0].tolist() == [0, 1, 2] and after.heads[1].tolist() == [[0, 0], [5, 0], [1, 0]]
    # level-2 rounds no longer mix groups 0 and 1; the root still averages everybody (weighted: 32 / 8)
    assert [float(s["w"][0, 0]) for s in tree_aggregate(after, states, samples, 2)] == pytest.approx(
        [1.5, 1.5, 3.5, 3.5, 5.5, 5.5])
    assert [float(s["w"][0, 0]) for s in tree_aggregate(after, states, samples, 3)] == pytest.approx([4.0] * 6)
    # group 1's head now sends straight to the root's head at (0, 0): 2 links each way from level 2 up, as before
    assert tree_cost(after, pos, 3, 10, Link())[0] == tree_cost(tree, pos, 3, 10, Link())[0]
    root_dead = reattach(tree, pos, group=0, level=3)
    assert root_dead.depth == 2 and root_dead.periods == [1, 2] and len(root_dead.children[1]) == 2
    # its top rounds average each level-2 subtree apart: {0,1,2,3} and {4,5}
    assert [float(s["w"][0, 0]) for s in tree_aggregate(root_dead, states, samples, 2)] == pytest.approx(
        [2.5, 2.5, 2.5, 2.5, 5.5, 5.5])
    # the toy tree's root dies, then group B's aggregator: group A still averages, B's devices are alone
    twice = reattach(reattach(_toy_tree(), pos[:5], group=0, level=2), pos[:5], group=1, level=1)
    assert twice.depth == 1 and [c.tolist() for c in twice.children[0]] == [[0, 1], [2], [3], [4]]
    assert [float(s["w"][0, 0]) for s in tree_aggregate(twice, states[:5], samples[:5], 1)] == pytest.approx(
        [1.5, 1.5, 3.0, 4.0, 5.0])
    with pytest.raises(ConfigError, match=r"a fault at level 4: the tree has levels 1..3"):
        reattach(tree, pos, group=0, level=4)
    with pytest.raises(ConfigError, match=r"a fault in node 2 of level 2, which has 2 nodes"):
        reattach(tree, pos, group=2, level=2)


def test_public_nodes_by_hand() -> None:
    """E-Tree's public nodes: group A (devices 0, 1) also takes in device 4, the one of group B nearest to A's
    head and not B's head; a group round averages A over 0, 1, 4 and B over 2, 3, 4, and device 4 takes the mean of
    the two by their samples; the root counts every device once."""
    tree, samples = _toy_tree(), np.array([1, 1, 2, 2, 4])
    pos = np.array([[0.0, 0.0], [0.0, 2.0], [1.0, 0.0], [1.0, 1.0], [0.5, 0.0]])
    pub = add_public_nodes(tree, pos, 1)
    assert [p.tolist() for p in pub.public] == [[4], [1]]  # B takes in device 1 (A's head is device 0)
    assert pub.memberships() == {1: [0, 1], 4: [1, 0]}
    states = _states([1.0, 2.0, 3.0, 4.0, 5.0])
    a = (1 * 1 + 1 * 2 + 4 * 5) / 6  # A: devices 0, 1 and the public 4
    b = (1 * 2 + 2 * 3 + 2 * 4 + 4 * 5) / 9  # B: devices 2, 3, 4 and the public 1
    got = [float(s["w"][0, 0]) for s in tree_aggregate(pub, states, samples, 1)]
    assert got == pytest.approx([a, (6 * a + 9 * b) / 15, b, b, (9 * b + 6 * a) / 15])
    # a root round: every device the root's average of the two groups, each weighted by its own devices' samples
    assert [float(s["w"][0, 0]) for s in tree_aggregate(pub, states, samples, 2)] == pytest.approx(
        [(2 * a + 8 * b) / 10] * 5)
    # bytes: each public device sends to its second group's head and back, besides the tree's own links
    link = Link()
    assert tree_cost(pub, pos, 1, 10, link)[0] == tree_cost(tree, pos, 1, 10, link)[0] + 2 * 2 * 10
    assert add_public_nodes(tree, pos, 0) is tree
    # group B's aggregator dies: its public device goes, A keeps its own
    after = reattach(pub, pos, group=1)
    assert [p.tolist() for p in after.public] == [[4], [], [], []]
    with pytest.raises(ConfigError, match=r"edge\.public_nodes=-1"):
        add_public_nodes(tree, pos, -1)


def test_a_dead_root_takes_its_adam_along() -> None:
    """With Adam at the root only (server_lr), the groups of a tree whose root died keep plain averaging."""
    tree = _toy_tree()
    adam = AggregatorAdam(server_lr=0.1, group_lr=None, start=[torch.zeros(2)], tree=tree)
    rootless = reattach(tree, np.zeros((5, 2)), group=0, level=2)
    assert adam.rate(tree, 2) == 0.1 and adam.rate(rootless, rootless.depth) is None
    averages = {0: [torch.ones(2)], 1: [torch.full((2,), 2.0)]}
    assert all(torch.equal(adam.step(rootless, 1, averages)[n][0], averages[n][0]) for n in averages)


def test_server_adam_follows_its_formula() -> None:
    """Two global rounds by hand: g = w - average; Adam's bias-corrected step on g from the round before's model."""
    lr, b1, b2, eps = 0.1, 0.9, 0.99, 1e-6
    w = torch.tensor([1.0, -2.0, 0.5])
    server = ServerAdam(lr, [w], (b1, b2), eps)
    m = v = torch.zeros(3)
    for t, avg in enumerate((torch.tensor([0.9, -1.0, 0.5]), torch.tensor([0.7, -1.5, 0.6])), start=1):
        g = w - avg
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
        (got,) = server.step([avg])
        assert torch.allclose(got, w, atol=1e-6)
    # the first step moves every coordinate towards the average by ~lr, whatever the distance
    s2 = ServerAdam(0.1, [torch.zeros(2)])
    assert torch.allclose(s2.step([torch.tensor([-1e-3, 5.0])])[0], torch.tensor([-0.1, 0.1]), atol=1e-3)


def _adam_by_hand(lr: float, w: torch.Tensor, avgs: list[torch.Tensor]) -> list[torch.Tensor]:
    """ServerAdam's formula: the models after each average in ``avgs``, from ``w`` (b1 0.9, b2 0.99, eps 1e-6)."""
    m = v = torch.zeros_like(w)
    out = []
    for t, avg in enumerate(avgs, start=1):
        g = w - avg
        m, v = 0.9 * m + 0.1 * g, 0.99 * v + 0.01 * g * g
        w = w - lr * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.99 ** t)).sqrt() + 1e-6)
        out.append(w)
    return out


def test_aggregator_adam_steps_each_node_and_restarts_the_ones_below() -> None:
    """edge.group_lr / edge.server_lr on the toy tree: each group takes Adam's step from its own reference and
    moments; the root from the start; after a root round the groups measure from the root's model."""
    tree, start = _toy_tree(), torch.tensor([1.0, -1.0])
    adam = AggregatorAdam(server_lr=0.2, group_lr=0.1, start=[start], tree=tree)
    a1, b1 = torch.tensor([0.5, -0.5]), torch.tensor([2.0, -3.0])
    out = adam.step(tree, 1, {0: [a1], 1: [b1]})
    assert torch.allclose(out[0][0], _adam_by_hand(0.1, start, [a1])[0], atol=1e-6)
    assert torch.allclose(out[1][0], _adam_by_hand(0.1, start, [b1])[0], atol=1e-6)
    root_avg = torch.tensor([1.2, -1.8])
    (root,) = adam.step(tree, 2, {0: [root_avg]})[0]
    assert torch.allclose(root, _adam_by_hand(0.2, start, [root_avg])[0], atol=1e-6)
    # group A's second round: pseudo-gradient from the root's model, its own moments from round one
    a2 = torch.tensor([0.8, -1.2])
    g1, g2 = start - a1, root - a2
    m = 0.9 * 0.1 * g1 + 0.1 * g2
    v = 0.99 * 0.01 * g1 * g1 + 0.01 * g2 * g2
    want = root - 0.1 * (m / (1 - 0.9 ** 2)) / ((v / (1 - 0.99 ** 2)).sqrt() + 1e-6)
    assert torch.allclose(adam.step(tree, 1, {0: [a2]})[0][0], want, atol=1e-6)


def test_aggregator_adam_without_a_rate_and_after_a_fault() -> None:
    """A level without a rate keeps the plain average (and still restarts the nodes below); a node first seen on a
    re-attached tree keeps its first average, then steps from it."""
    tree, start = _toy_tree(), torch.zeros(2)
    adam = AggregatorAdam(server_lr=None, group_lr=0.1, start=[start], tree=tree)
    adam.step(tree, 1, {0: [torch.ones(2)], 1: [torch.ones(2)]})
    root_avg = torch.tensor([3.0, 3.0])
    assert torch.equal(adam.step(tree, 2, {0: [root_avg]})[0][0], root_avg)
    assert all(torch.equal(opt.w[0], root_avg) for opt in adam.nodes.values())
    after = reattach(tree, np.array([[0.0, 0], [0, 0], [1, 0], [1, 0], [1, 0]]), group=1)
    first = {n: [torch.full((2,), float(n))] for n in range(len(after.children[0]))}
    out = adam.step(after, 1, first)  # not the run's first tree
    assert torch.equal(out[1][0], first[1][0]) and torch.equal(out[2][0], first[2][0])  # new nodes: the average
    assert not torch.equal(out[0][0], first[0][0])  # group A's node is the same devices: it steps
    (stepped,) = adam.step(after, 1, {2: [torch.full((2,), 3.0)]})[2]
    assert torch.allclose(stepped, _adam_by_hand(0.1, torch.full((2,), 2.0), [torch.full((2,), 3.0)])[0])
