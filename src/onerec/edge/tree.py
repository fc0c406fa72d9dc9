"""Aggregation on a tree of edge nodes (E-Tree), and the baselines' exchanges (FedAvg, gossip).

A tree has ``depth`` aggregation levels above the devices (level 0). Level 1 nodes are the device
groups (from :mod:`onerec.edge.grouping`); each higher level groups the heads of the level below by
distance, ``fanout[l]`` children a node, and the top level is one root. Each node is run by a *head*:
the child (device) nearest, in summed latency, to its children -- no central server. Level l averages
every ``periods[l]`` local steps; a period must divide the next one, so when level l fires every level
below fires too (E-Tree: groups aggregate often, higher levels rarely).

Aggregation is the sample-weighted average: a node's model is ``sum_c n_c w_c / sum_c n_c`` over its
children c, with n_c the samples under c. Done level by level this equals the weighted average over
all devices under the node, which the tests check by hand.

FedAvg is the depth-1 tree whose single node is headed by an outside server; gossip learning has no
tree: each device averages with ``peers`` random others (:func:`gossip_round`).

Cost model (simulated, not measured): a model transfer over a link takes ``latency + bytes /
bandwidth``; at an aggregation every child sends its model up and gets the average back (2 transfers,
2 x model bytes per child; nothing for the child that is the head itself), the levels go one after
another, and each level waits for its slowest link. Gossip: each device pulls its peers' models (one
transfer each), all devices at once. Besides bytes and time, each exchange counts its *byte-distance*: every
transfer's bytes times the length of its link (plane units), the load it puts on the network. A byte that
crosses a short link near the edge loads the network less than one that crosses the plane to a server, which
raw bytes do not tell.

Shapes: N = devices.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from onerec.edge.devices import latency_ms
from onerec.edge.grouping import kmeans_groups
from onerec.errors import ConfigError

State = dict[str, torch.Tensor]


def weighted_average(states: list[State], weights: np.ndarray | list[float]) -> State:
    """``sum_i w_i s_i / sum_i w_i`` key by key (float32 tensors)."""
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64) / float(np.sum(weights)), dtype=torch.float32)
    return {k: sum(wi * s[k] for wi, s in zip(w, states)) for k in states[0]}


class ServerAdam:
    """Adam where the models meet, at the top of the tree (FedAdam: Reddi et al., "Adaptive Federated Optimization",
    ICLR 2021; not part of E-Tree's paper). A global round's sample-weighted average is read as one step of a
    pseudo-gradient ``g = w - avg`` from the global model ``w`` of the round before, and the aggregator moves ``w`` by
    Adam's step on ``g`` instead of to the average:

        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
        w <- w - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    Adam's step does not depend on the scale of ``g``, so the devices' own learning rate sets only how far they drift
    between rounds; with plain SGD on the devices and a round after every local step this is Adam on the average of
    their gradients, i.e. centralised Adam on the pooled batch. ``eps`` is larger than an optimizer's usual 1e-8 so
    that a weight without any gradient, whose average differs from it by float rounding alone, does not take
    Adam's full-size step on that noise. The step is torch's own Adam, given ``g`` as the gradient.
    """

    def __init__(self, lr: float, weights: list[torch.Tensor], betas: tuple[float, float] = (0.9, 0.99),
                 eps: float = 1e-6) -> None:
        """``weights``: the global model before the first round (the devices' shared start)."""
        self.w = [torch.nn.Parameter(t.detach().clone(), requires_grad=False) for t in weights]
        self.opt = torch.optim.Adam(self.w, lr=lr, betas=betas, eps=eps)

    def step(self, average: list[torch.Tensor]) -> list[torch.Tensor]:
        """The new global model from this round's average (the same order of tensors as the start weights)."""
        for w, a in zip(self.w, average):
            w.grad = w.detach() - a
        self.opt.step()
        return [w.detach().clone() for w in self.w]

    def restart(self, weights: list[torch.Tensor]) -> None:
        """A node above handed its devices ``weights``: this node's next pseudo-gradient is measured from them
        (Adam's moments are kept)."""
        with torch.no_grad():
            for w, t in zip(self.w, weights):
                w.copy_(t)


class AggregatorAdam:
    """Adam at the aggregators of a tree: :class:`ServerAdam` with ``server_lr`` at the top level's node (E-Tree's
    root, FedAvg's server) and with ``group_lr`` at every node below it (E-Tree's groups and middle levels; a
    hierarchical FedAdam, not in E-Tree's paper). A round that fires level L averages levels 1..L plainly (the
    sample-weighted average over every device under each level-L node, :func:`tree_aggregate`) and then, where
    level L has a rate, each level-L node moves its own model by Adam's step on ``its model - that average`` and
    hands the result down. Every node keeps its own Adam state, keyed by its level and the devices under it (so a
    fault, which re-attaches one group's devices, keeps the other nodes' states). After a level-L round the nodes
    below L measure their next pseudo-gradient from the model handed down.

    Each process keeps the state of the nodes over its own devices only (the multi-process mode: a device's rank
    steps the nodes above it; all the ranks under one node compute the same step from the same average).
    """

    def __init__(self, server_lr: float | None, group_lr: float | None, start: list[torch.Tensor],
                 tree: Tree) -> None:
        """``start``: the devices' shared initial model, every node's first reference; ``tree``: the tree the run
        starts on (a node first seen on another, after a fault, has no reference yet)."""
        self.server_lr, self.group_lr, self.tree = server_lr, group_lr, tree
        self.start = [t.detach().clone() for t in start]
        self.nodes: dict[tuple[int, tuple[int, ...]], ServerAdam] = {}

    def rate(self, tree: Tree, level: int) -> float | None:
        # the top is the run's first tree's: when the root dies, its groups keep their own rate, not the root's
        return self.server_lr if level == self.tree.depth else self.group_lr

    def step(self, tree: Tree, level: int, models: dict[int, list[torch.Tensor]]) -> dict[int, list[torch.Tensor]]:
        """Level ``level``'s nodes' new models from their averages ``models`` (node index -> tensors; the nodes
        this process holds), or ``models`` unchanged where the level has no rate. A node first seen on a tree other
        than the run's first (re-attached after a fault) has no reference yet: its first round keeps the plain
        average, from which it measures the next. Either way the nodes below restart from the models handed down."""
        leaves, initial = tree.leaves(level), tree is self.tree
        rate = self.rate(tree, level)
        out = dict(models)
        if rate is not None:
            for node, average in models.items():
                key = (level, tuple(sorted(int(d) for d in leaves[node])))
                opt = self.nodes.get(key)
                if opt is None:
                    self.nodes[key] = opt = ServerAdam(rate, self.start if initial else average)
                    if not initial:  # no reference yet: this round keeps the average
                        continue
                out[node] = opt.step(average)
        owner = {int(d): node for node, devs in enumerate(leaves) for d in devs}
        for (lvl, devs), opt in self.nodes.items():  # the nodes below start from what was handed down
            if lvl < level and owner.get(devs[0]) in out:
                opt.restart(out[owner[devs[0]]])
        return out


def model_bytes(state: State) -> int:
    """Bytes of one model on the wire (its tensors, uncompressed)."""
    return int(sum(t.numel() * t.element_size() for t in state.values()))


@dataclass
class Link:
    """Network constants of the cost model."""

    base_ms: float = 5.0
    ms_per_unit: float = 100.0
    bandwidth_mbps: float = 100.0

    def transfer_ms(self, a: np.ndarray, b: np.ndarray, n_bytes: int) -> np.ndarray:
        """Time to move ``n_bytes`` from points a to b (broadcast over leading dims)."""
        lat = latency_ms(a, b, base_ms=self.base_ms, ms_per_unit=self.ms_per_unit)
        return lat + n_bytes * 8 / (self.bandwidth_mbps * 1e3)  # Mbit/s = 1e3 bits per ms


@dataclass
class Tree:
    """Levels of aggregation above the devices.

    Attributes:
        children: per level (1..depth), per node, the indices of its children in the level below
            (devices for level 1).
        heads: per level, float [nodes, 2] the position of each node's head.
        periods: per level, local steps between its aggregations.
        public: per level-1 node, devices of other groups that also take part in its rounds (E-Tree's *public
            nodes*, :func:`add_public_nodes`); None: none. A public device sends its model to each of its groups
            and takes their averages' sample-weighted mean; above level 1 every device counts once, in its own
            group.
    """

    children: list[list[np.ndarray]]
    heads: list[np.ndarray]
    periods: list[int]
    public: list[np.ndarray] | None = None

    def members(self, node: int) -> np.ndarray:
        """The devices that take part in level-1 node ``node``'s rounds: its own, then its public ones."""
        own = self.children[0][node]
        return own if not self.public else np.concatenate([own, self.public[node]]).astype(np.int64)

    def memberships(self) -> dict[int, list[int]]:
        """Per device in more than one level-1 group (a public device): its groups, its own first."""
        if not self.public:
            return {}
        out = {int(d): [g] for g, ch in enumerate(self.children[0]) for d in ch}
        for g, extra in enumerate(self.public):
            for d in extra:
                out[int(d)].append(g)
        return {d: gs for d, gs in out.items() if len(gs) > 1}

    @property
    def depth(self) -> int:
        return len(self.children)

    def leaves(self, level: int) -> list[np.ndarray]:
        """Per node of ``level`` (1-based), the devices under it."""
        under = [np.array([c]) for c in range(sum(len(ch) for ch in self.children[0]))]
        for lvl in range(level):
            under = [np.concatenate([under[c] for c in ch]) for ch in self.children[lvl]]
        return under

    def fired(self, step: int) -> int:
        """The highest level that aggregates after local step ``step`` (0: none)."""
        return max([lvl + 1 for lvl, p in enumerate(self.periods) if step % p == 0], default=0)


def _check_periods(periods: list[int]) -> None:
    if not periods or any(p < 1 for p in periods):
        raise ConfigError(f"edge.periods={periods}: need one positive period (local steps) per level. "
                          "Fix: e.g. edge.periods=[5,20]")
    for lo, hi in itertools.pairwise(periods):
        if hi % lo:
            raise ConfigError(f"edge.periods={periods}: each level's period must be a multiple of the level "
                              f"below's ({hi} is not a multiple of {lo}). Fix: e.g. edge.periods=[{lo},{lo * 4}]")


def _head(points: np.ndarray) -> np.ndarray:
    """The point with the least summed distance to the others (the medoid)."""
    d = np.linalg.norm(points[:, None] - points[None], axis=-1).sum(1)
    return points[int(np.argmin(d))]


def build_tree(positions: np.ndarray, groups: np.ndarray, *, fanout: list[int], periods: list[int],
               seed: int = 0) -> Tree:
    """E-Tree over devices already grouped (level 1 = ``groups``).

    Args:
        positions: float [N, 2] device positions.
        groups: int64 [N] level-1 group of each device.
        fanout: for levels 2..depth-1, children per node (the top level is one root over the rest);
            ``depth = len(fanout) + 2`` when there is more than one group, 1 when there is one.
        periods: local steps between aggregations, one per level (each a multiple of the one before).
    """
    _check_periods(periods)
    positions = np.asarray(positions, dtype=np.float64)
    children = [[np.flatnonzero(groups == g) for g in range(int(groups.max()) + 1)]]
    heads = [np.stack([_head(positions[c]) for c in children[0]])]
    for f in fanout:
        if f < 2:
            raise ConfigError(f"edge.fanout={fanout}: a node needs at least 2 children. Fix: use values >= 2")
        n_nodes = math.ceil(len(heads[-1]) / f)
        if n_nodes == 1:
            break
        assign = kmeans_groups(heads[-1], n_nodes, seed=seed)
        children.append([np.flatnonzero(assign == g) for g in range(n_nodes)])
        heads.append(np.stack([_head(heads[-1][c]) for c in children[-1]]))
    if len(heads[-1]) > 1:  # the root
        children.append([np.arange(len(heads[-1]))])
        heads.append(_head(heads[-1])[None])
    if len(periods) != len(children):
        raise ConfigError(f"edge.periods={periods} gives {len(periods)} levels but the tree over {len(groups)} "
                          f"devices in {len(children[0])} groups with edge.fanout={fanout} has {len(children)}. "
                          f"Fix: give {len(children)} periods")
    return Tree(children, heads, list(periods))


def server_tree(n_devices: int, server: np.ndarray, period: int) -> Tree:
    """FedAvg as a tree: one node over every device, headed by an outside server at ``server``."""
    _check_periods([period])
    return Tree([[np.arange(n_devices)]], [np.asarray(server, dtype=np.float64)[None]], [period])


def add_public_nodes(tree: Tree, positions: np.ndarray, per_group: int) -> Tree:
    """``tree`` with E-Tree's *public nodes*: each level-1 group also takes in the ``per_group`` devices of other
    groups nearest to its head (no group's head among them), so that models travel between groups between the
    rounds of the levels above. E-Tree's paper picks them by distance and then keeps those that do not hurt accuracy
    (as a third party's notes on it tell); here distance alone picks them."""
    if per_group < 0:
        raise ConfigError(f"edge.public_nodes={per_group} must be >= 0. Fix: 0 (none) or a few devices a group")
    if per_group == 0:
        return tree
    positions = np.asarray(positions, dtype=np.float64)
    heads = set(head_devices(tree, positions)[0].tolist())
    public = []
    for g, own in enumerate(tree.children[0]):
        skip = heads | set(own.tolist())
        others = np.array([d for d in range(len(positions)) if d not in skip], dtype=np.int64)
        near = np.argsort(np.linalg.norm(positions[others] - tree.heads[0][g], axis=-1), kind="stable")
        public.append(np.sort(others[near[:per_group]]))
    return Tree(tree.children, tree.heads, list(tree.periods), public)


def tree_aggregate(tree: Tree, states: list[State], samples: np.ndarray, level: int) -> list[State]:
    """Aggregate levels 1..``level`` bottom-up, then hand each device its level-``level`` node's model.

    Args:
        states: per device, its current model.
        samples: [N] training samples per device (the weights).

    Returns:
        per device, its new model (devices under one level-``level`` node share one state object).
    """
    values, weights = states, np.asarray(samples, dtype=np.float64)
    first = None  # level 1's averages and the samples behind each (its public devices' included)
    for lvl in range(level):
        kids = tree.children[lvl]
        groups = [tree.members(g) for g in range(len(kids))] if lvl == 0 else kids
        values = [weighted_average([values[c] for c in ch], weights[ch]) for ch in groups]
        if lvl == 0:
            first = (values, np.array([weights[ch].sum() for ch in groups]))
        weights = np.array([weights[ch].sum() for ch in kids])  # above level 1 every device counts once
    out: list[State] = list(states)
    for node, devs in enumerate(tree.leaves(level)):
        for d in devs:
            out[d] = values[node]
    if level == 1 and first is not None:  # a public device: the mean of its groups' averages, by their samples
        for d, gs in tree.memberships().items():
            out[d] = weighted_average([first[0][g] for g in gs], first[1][gs])
    return out


class Cost(NamedTuple):
    """What one exchange costs in the simulated network."""

    bytes: int  # bytes moved over every link
    ms: float  # simulated wall-clock
    byte_distance: float  # sum over transfers of bytes x link length (plane units)


def tree_cost(tree: Tree, positions: np.ndarray, level: int, n_bytes: int, link: Link) -> Cost:
    """The :class:`Cost` of one aggregation of levels 1..``level``: every child-to-head link carries the model
    up and back (the head's own model stays put); each level waits for its slowest link, up then down."""
    total_bytes, ms, byte_distance = 0, 0.0, 0.0
    below = np.asarray(positions, dtype=np.float64)
    for lvl in range(level):
        slowest = 0.0
        for node, ch in enumerate(tree.children[lvl]):
            if lvl == 0:  # a public device sends to (and hears from) every group it is in
                ch = tree.members(node)
            # the head's own model (a child at the head's position) never leaves its device
            dist = np.linalg.norm(below[ch] - tree.heads[lvl][node], axis=-1)
            away = below[ch][dist > 0]
            total_bytes += 2 * n_bytes * len(away)
            byte_distance += 2 * n_bytes * float(dist.sum())
            if len(away):
                slowest = max(slowest, float(link.transfer_ms(away, tree.heads[lvl][node], n_bytes).max()))
        ms += 2 * slowest
        below = tree.heads[lvl]
    return Cost(total_bytes, ms, byte_distance)


def gossip_peers(n: int, rng: np.random.Generator, peers: int = 1) -> np.ndarray:
    """int64 [N, peers] the random peers each of ``n`` devices pulls from in one gossip round (never itself).

    Every process of the multi-process mode draws the same peers from the same ``rng`` state."""
    if not 1 <= peers < n:
        raise ConfigError(f"edge.gossip_peers={peers} must be between 1 and the devices minus one ({n - 1}). "
                          "Fix: e.g. edge.gossip_peers=1")
    return np.stack([rng.choice(np.delete(np.arange(n), i), peers, replace=False) for i in range(n)])


def gossip_average(states: list[State], samples: np.ndarray, picked: np.ndarray) -> list[State]:
    """Per device i, the sample-weighted average of its model and its peers' ``picked[i]``, all from the models
    before the round."""
    samples = np.asarray(samples, dtype=np.float64)
    return [weighted_average([states[i]] + [states[j] for j in picked[i]], np.r_[samples[i], samples[picked[i]]])
            for i in range(len(states))]


def gossip_round(states: list[State], samples: np.ndarray, rng: np.random.Generator, *,
                 peers: int = 1) -> tuple[list[State], np.ndarray]:
    """Every device averages (sample-weighted) its model with ``peers`` random others' models, all from
    the models before the round.

    Returns:
        (new models, int64 [N, peers] the peers each device pulled from).
    """
    picked = gossip_peers(len(states), rng, peers)
    return gossip_average(states, samples, picked), picked


def gossip_cost(positions: np.ndarray, picked: np.ndarray, n_bytes: int, link: Link) -> Cost:
    """The :class:`Cost` of a gossip round: one model transfer per pull, all in parallel."""
    positions = np.asarray(positions, dtype=np.float64)
    ms = link.transfer_ms(positions[picked], positions[:, None, :], n_bytes).max()
    dist = np.linalg.norm(positions[picked] - positions[:, None, :], axis=-1)
    return Cost(int(picked.size * n_bytes), float(ms), float(n_bytes * dist.sum()))


def head_devices(tree: Tree, positions: np.ndarray) -> list[np.ndarray]:
    """Per level, int64 [nodes] the device that heads each node (the same medoid rule as :func:`build_tree`:
    a level-1 head is one of the group's devices, a higher head one of its children's heads)."""
    positions = np.asarray(positions, dtype=np.float64)
    below = np.arange(len(positions))
    out = []
    for kids in tree.children:
        heads = []
        for ch in kids:
            pts = positions[below[ch]]
            heads.append(below[ch][int(np.argmin(np.linalg.norm(pts[:, None] - pts[None], axis=-1).sum(1)))])
        below = np.array(heads, dtype=np.int64)
        out.append(below)
    return out


def reattach(tree: Tree, positions: np.ndarray, group: int, level: int = 1) -> Tree | None:
    """The tree after the aggregator of node ``group`` of ``level`` (1: a device group) dies; the device that ran it
    keeps training, and keeps heading the nodes below that it headed: only this aggregator role is gone.

    * Below the top, E-Tree re-attaches the node's children straight to the next level up, each as a one-child node
      headed by its own head (a level-1 node's devices become one-device nodes). Node indices of ``level`` stay
      valid: ``group`` keeps its first child, the others are appended.
    * At the top (E-Tree's root) there is no level above: the nodes below it go on aggregating, each the top of its
      own subtree, and no round mixes them any more (the returned tree has one level less, several nodes at its top).
      A top node of such a rootless tree that dies leaves its children alone, each its own top.
    * With one level and one node (FedAvg's server) nothing aggregates any more: returns None, and the devices train
      on alone.
    """
    if not 1 <= level <= tree.depth:
        raise ConfigError(f"a fault at level {level}: the tree has levels 1..{tree.depth}. Fix: pick one of those")
    if not 0 <= group < len(tree.children[level - 1]):
        raise ConfigError(f"a fault in node {group} of level {level}, which has {len(tree.children[level - 1])} "
                          "nodes. Fix: pick one of those")
    top = level == tree.depth
    if top and len(tree.children[-1]) == 1:  # the root, or FedAvg's server
        return None if tree.depth == 1 else Tree(tree.children[:-1], tree.heads[:-1], list(tree.periods[:-1]),
                                                 tree.public)
    li = level - 1
    below = np.asarray(positions, dtype=np.float64) if li == 0 else tree.heads[li - 1]
    nodes = [c.copy() for c in tree.children[li]]
    heads = list(tree.heads[li])
    kids = nodes[group]
    nodes[group] = kids[:1]
    heads[group] = below[kids[0]]
    new_nodes = list(range(len(nodes), len(nodes) + len(kids) - 1))
    nodes += [np.array([k]) for k in kids[1:]]
    heads += [below[k] for k in kids[1:]]
    public = tree.public
    if public and li == 0:  # the dead group's public devices have no group round left; the new nodes none
        public = [*public[:group], np.zeros(0, np.int64), *public[group + 1:],
                  *[np.zeros(0, np.int64) for _ in new_nodes]]
    if top:  # a top node of a rootless tree: its children go on alone, each its own top
        return Tree([*tree.children[:li], nodes], [*tree.heads[:li], np.stack(heads)], list(tree.periods), public)
    parents = [c.copy() for c in tree.children[li + 1]]
    parent = next(i for i, c in enumerate(parents) if group in c)
    parents[parent] = np.concatenate([parents[parent], np.array(new_nodes, dtype=np.int64)])
    return Tree([*tree.children[:li], nodes, parents, *tree.children[li + 2:]],
                [*tree.heads[:li], np.stack(heads), *tree.heads[li + 1:]], list(tree.periods), public)
