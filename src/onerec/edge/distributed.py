"""Edge training on a real distributed engine: one device a process under torch.distributed (gloo on CPUs).

``torchrun --nproc_per_node=N -m onerec edge RUN edge.n_devices=N`` starts N processes (the stage,
:func:`onerec.edge.stage.stage_edge`, runs :func:`train_rank` on each); rank d is device d and trains its own
model on its own users. Every rank computes the same partition, positions, KMA groups, trees, gossip peers and
seeds from ``edge.seed``, and the schedule (which exchange fires after which local step, the fault, the simulated
bytes and clock, the accuracy curve) is the simulation's own :func:`onerec.edge.simulate.schedule`. Only the
exchanges differ: here each is a collective over a process subgroup (:func:`torch.distributed.new_group`, made
by every rank in the same order, as PyTorch requires):

* E-Tree: a level-1 node's group is its devices: ``all_reduce(SUM)`` of ``(n_d / n_node) * w_d`` gives every
  member the group's sample-weighted average (the upload to the head and the download back, as one
  collective); a higher node's group is its children's *heads* (:func:`onerec.edge.tree.head_devices`): each head
  contributes its child's average weighted by the child's samples, then every lower node's head broadcasts the
  result down its own group, level by level.
* FedAvg: the depth-1 tree (one group of every rank; the server's sum is the all-reduce).
* Gossip: device i's pull from its peers (the same draw as the simulation's, :func:`onerec.edge.tree.gossip_peers`)
  is an all-reduce over the subgroup of i and its peers: each member adds its model from before the round, times
  its share of the group's samples, and only i keeps the sum. A subgroup is made the first time its set of
  devices is drawn and reused after. Every rank walks the pulls in device order, so that the lowest pull not yet
  done always has all its members waiting in it: overlapping groups cannot deadlock.
* Local: no collective.
* KMA's model signatures: each rank computes its own device's, then an ``all_gather`` gives every rank all of them.
* Accuracy: each rank scores its own users with its own model; an ``all_gather`` of the per-device means and
  user counts lets every rank pool them in device order, as the simulation does.
* Centralised training is one model on the pooled data, not a device scheme: it does not run here (``onerec
  edge`` skips it under torchrun).

The arithmetic is the simulation's up to the order of float additions, which the tests check on small cases, for
SASRec and for the generator, when training draws nothing at random (dropout 0 and SASRec's ``ce`` loss). With
dropout (or ``bce``'s sampled negatives) each process draws from its own stream, seeded by ``edge.seed`` and the
device, while the simulation's devices take turns on one stream: the two modes then differ as two seeds do. A MoE
generator is refused (its routing balance sums the experts' load over every process, i.e. over devices that should
not see each other's data).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from onerec.edge.devices import Devices
from onerec.edge.simulate import (
    METRICS,
    DeviceData,
    EdgeSettings,
    GeneratorSpec,
    ModelSpec,
    _Fleet,
    check_settings,
    device_score,
    device_signatures,
    make_groups,
    pooled_score,
    schedule,
    scheme_tree,
)
from onerec.edge.tree import Tree, head_devices, model_bytes
from onerec.errors import ConfigError

CENTRAL = ("central trains one model on the pooled data of every device: not a device scheme, so it does not run "
           "with one device a process")


@dataclass
class NodeGroups:
    """The process groups of a tree, per level and node, and which ranks belong to / head each."""

    groups: list[list[object]]  # per level, per node: a ProcessGroup (None where this rank is not a member)
    members: list[list[np.ndarray]]  # per level, per node: member ranks
    heads: list[np.ndarray]  # per level: the head rank of each node
    weights: list[list[np.ndarray]]  # per level, per node: samples behind each member


def node_groups(tree: Tree, positions: np.ndarray, samples: np.ndarray) -> NodeGroups:
    """Create every node's subgroup (collective: every rank calls this with the same tree)."""
    heads = head_devices(tree, positions)
    under = np.asarray(samples, dtype=np.float64)  # samples behind each node of the level below
    below = np.arange(len(samples))  # the rank standing for each node of the level below
    groups, members, weights = [], [], []
    rank = dist.get_rank()
    for lvl, kids in enumerate(tree.children):
        g_lvl, m_lvl, w_lvl = [], [], []
        for node, ch in enumerate(kids):
            if lvl == 0:  # a level-1 node's public devices take part in its rounds too
                ch = tree.members(node)
            ranks = below[ch]
            pg = dist.new_group(ranks=sorted(int(r) for r in ranks))
            g_lvl.append(pg if rank in ranks else None)
            m_lvl.append(ranks)
            w_lvl.append(under[ch])
        groups.append(g_lvl)
        members.append(m_lvl)
        weights.append(w_lvl)
        under = np.array([under[ch].sum() for ch in kids])  # above level 1 every device counts once
        below = heads[lvl]
    return NodeGroups(groups, members, heads, weights)


def _weighted_sum(tensors: list[torch.Tensor], share: float, group: object) -> None:
    """In place, on every member of ``group``: each tensor becomes the sum over the members of ``share * tensor``
    (each member's ``share`` its weight in a weighted average)."""
    for t in tensors:
        t.mul_(share)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The model's state tensors, changed in place by the exchanges."""
    return [p.data for p in model.state_dict().values()]


def aggregate(model: torch.nn.Module, ng: NodeGroups, level: int) -> None:
    """This rank's part of one aggregation of levels 1..``level``; afterwards every rank holds its
    level-``level`` node's sample-weighted average, in place."""
    rank = dist.get_rank()
    params = _weights(model)
    for lvl in range(level):  # up: average within each node this rank takes part in
        mine = [node for node, pg in enumerate(ng.groups[lvl]) if pg is not None]
        before = [t.clone() for t in params] if len(mine) > 1 else None  # a public device: in several groups
        averages, totals = [], []
        for node in mine:  # in node order on every rank, so that no two ranks wait on each other
            ranks, w = ng.members[lvl][node], ng.weights[lvl][node]
            work = params if before is None else [t.clone() for t in before]
            _weighted_sum(work, float(w[int(np.flatnonzero(ranks == rank)[0])] / w.sum()), ng.groups[lvl][node])
            averages.append(work)
            totals.append(float(w.sum()))
        if before is not None:  # the sample-weighted mean of its groups' averages (onerec.edge.tree.tree_aggregate)
            share = np.asarray(totals) / np.sum(totals)
            for i, t in enumerate(params):
                t.copy_(sum(float(c) * a[i] for c, a in zip(share, averages)))
    for lvl in range(level - 2, -1, -1):  # down: each lower node's head hands the result to its group
        for node, pg in enumerate(ng.groups[lvl]):
            if pg is None:
                continue
            for t in params:
                dist.broadcast(t, src=int(ng.heads[lvl][node]), group=pg)


def _check_dense(cfg: ModelSpec) -> None:
    if isinstance(cfg, GeneratorSpec) and cfg.model.moe_experts:
        raise ConfigError(f"model.moe_experts={cfg.model.moe_experts}: the multi-process edge mode trains dense "
                          "generators only (a MoE's routing balance sums the load over every process). Fix: "
                          "model.moe_experts=0, or the single-process simulation (`onerec edge RUN` without torchrun)")


def _rank_fleet(n_items: int, cfg: ModelSpec, s: EdgeSettings, stream: int) -> _Fleet:
    """This rank's device as a one-device :class:`onerec.edge.simulate._Fleet`: the shared initial weights and the
    device's own batches, then its own stream for dropout and sampled negatives (every process would otherwise
    draw the same masks)."""
    rank = dist.get_rank()
    fleet = _Fleet(1, n_items, cfg, s.lr, s.seed, stream=stream, ids=[rank], optimizer=s.optimizer)
    seed = int(np.random.SeedSequence([s.seed, stream, rank]).generate_state(1)[0])
    torch.manual_seed(seed)
    fleet.gen.manual_seed(seed)
    return fleet


def _gather(row: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``row`` (same shape and dtype on each), in rank order."""
    out = [torch.empty_like(row) for _ in range(dist.get_world_size())]
    dist.all_gather(out, row)
    return out


def rank_groups(devices: Devices, data: DeviceData, n_items: int, cfg: ModelSpec, s: EdgeSettings) -> np.ndarray:
    """E-Tree's level-1 groups, the same on every rank; for KMA each rank computes its own device's signature and
    all of them are gathered (collective)."""
    _check_dense(cfg)
    signatures = None
    if s.grouping in ("kma", "similar"):
        mine = device_signatures(_rank_fleet(n_items, cfg, s, stream=1), data, [dist.get_rank()], s)
        signatures = torch.cat(_gather(torch.from_numpy(mine))).numpy()
    return make_groups(devices, data, n_items, cfg, s, signatures=signatures)


class RankDevice:
    """This process's device (rank d is device d) and its part of every exchange (the
    :class:`onerec.edge.simulate.Exchanges` of the multi-process mode)."""

    def __init__(self, devices: Devices, data: DeviceData, n_items: int, cfg: ModelSpec, s: EdgeSettings) -> None:
        self.rank, self.positions, self.data, self.s = dist.get_rank(), devices.positions, data, s
        self.fleet = _rank_fleet(n_items, cfg, s, stream=0)
        self.model = self.fleet.recs[0].model
        self._tree: Tree | None = None
        self._nodes: NodeGroups | None = None
        self._pulls: dict[tuple[int, ...], object] = {}  # gossip: a subgroup per set of devices drawn

    def tick(self) -> None:
        self.fleet.step(0, self.data.windows[self.rank], self.s.batch_size)

    def tree_exchange(self, tree: Tree, level: int) -> None:
        if tree is not self._tree:  # a new tree (the first, or after a fault): its groups, on every rank
            self._tree, self._nodes = tree, node_groups(tree, self.positions, self.data.samples)
        aggregate(self.model, self._nodes, level)

    def gossip_exchange(self, picked: np.ndarray) -> None:
        samples = np.asarray(self.data.samples, dtype=np.float64)
        params = _weights(self.model)
        before = [t.clone() for t in params]
        mine = before
        for i, peers in enumerate(picked):  # every rank, in device order
            members = [i, *(int(j) for j in peers)]
            key = tuple(sorted(members))
            if key not in self._pulls:
                self._pulls[key] = dist.new_group(ranks=list(key))
            if self.rank in members:
                pulled = [t.clone() for t in before]
                _weighted_sum(pulled, float(samples[self.rank] / samples[members].sum()), self._pulls[key])
                if i == self.rank:
                    mine = pulled
        for t, v in zip(params, mine):
            t.copy_(v)

    def weights(self) -> list[torch.Tensor]:
        return _weights(self.model)

    def node_models(self, tree: Tree, level: int) -> dict[int, list[torch.Tensor]]:
        node = next(n for n, devs in enumerate(tree.leaves(level)) if self.rank in devs)
        return {node: _weights(self.model)}

    def set_node_models(self, tree: Tree, level: int, models: dict[int, list[torch.Tensor]]) -> None:
        for weights in models.values():  # the one node over this device
            for t, w in zip(_weights(self.model), weights):
                t.copy_(w)

    def score(self) -> dict[str, float]:
        test = self.data.test[self.rank]
        m = device_score(self.fleet.recs[0], test)
        rows = _gather(torch.tensor([*(m[k] for k in METRICS), test.num_rows], dtype=torch.float64))
        return pooled_score([dict(zip(METRICS, r[:-1].tolist())) for r in rows], [int(r[-1]) for r in rows])


def check_world(n_devices: int, world: int) -> None:
    """One device a process: ``edge.n_devices`` must be the number of processes torchrun started."""
    if n_devices != world:
        raise ConfigError(f"edge.n_devices={n_devices} but torchrun started {world} processes, and each process is "
                          f"one device. Fix: add edge.n_devices={world} to the command, or start "
                          f"--nproc_per_node={n_devices} processes")


def train_rank(scheme: str, devices: Devices, data: DeviceData, n_items: int, cfg: ModelSpec, s: EdgeSettings,
               groups: np.ndarray | None = None, *, keep_state: bool = False) -> dict:
    """This rank's device under one scheme (collective: every rank calls it with the same arguments), as
    :func:`onerec.edge.simulate.run_scheme` trains all devices at once.

    Args:
        scheme: etree, fedavg, gossip or local.
        devices: every device (the same on every rank; ``devices.n`` must be the world size).
        data: every device's data (the same on every rank); rank d trains on ``data.windows[d]``.
        n_items: the catalogue's size.
        cfg: a SasrecConfig or a GeneratorSpec (a dense generator).
        s: the EdgeSettings.
        groups: E-Tree's level-1 groups (None: from ``s.grouping``, see :func:`rank_groups`).
        keep_state: also return this device's final weights.

    Returns:
        ``{"curve", "final", "model_bytes", "seconds"}`` as ``run_scheme``'s (the same on every rank; ``curve``'s
        accuracy pools every device's users), and with ``keep_state``, ``"state"``: this device's final weights.
    """
    check_settings(s, scheme)
    if scheme == "central":
        raise ConfigError(f"edge.schemes: {CENTRAL}. Fix: run it in one process (`onerec edge RUN` without torchrun)")
    _check_dense(cfg)
    check_world(devices.n, dist.get_world_size())
    t0 = time.monotonic()
    if scheme == "etree" and groups is None:
        groups = rank_groups(devices, data, n_items, cfg, s)
    device = RankDevice(devices, data, n_items, cfg, s)
    out = schedule(scheme, device, devices.positions, scheme_tree(scheme, devices, s, groups),
                   model_bytes(device.model.state_dict()), s)
    out["seconds"] = time.monotonic() - t0
    if keep_state:
        out["state"] = {k: v.detach().clone() for k, v in device.model.state_dict().items()}
    return out
