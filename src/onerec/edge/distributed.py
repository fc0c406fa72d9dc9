"""E-Tree on a real distributed engine: one device a process under torch.distributed (gloo on CPUs).

``torchrun --nproc_per_node=N`` starts N processes; rank d is device d and trains its own model on its own
users. Every tree node has a process subgroup (:func:`torch.distributed.new_group`, made by every rank in
the same order, as PyTorch requires):

* a level-1 node's group is its devices: ``all_reduce(SUM)`` of ``(n_d / n_node) * w_d`` gives every member
  the group's sample-weighted average (the upload to the head and the download back, as one collective);
* a higher node's group is its children's *heads* (:func:`onerec.edge.tree.head_devices`): each head
  contributes its child's average weighted by the child's samples, then every lower node's head
  broadcasts the result down its own group, level by level.

FedAvg is the depth-1 tree (one group of every rank; the server's sum is the all-reduce). The arithmetic
is the single-process simulation's (:func:`onerec.edge.tree.tree_aggregate`) up to the order of float
additions, which a test checks on a small case, for SASRec and for the generator. Gossip in this mode is not
built yet, nor a MoE generator (its routing balance sums the experts' load over every process, i.e. over
devices that should not see each other's data). This is a library mode: ``onerec edge RUN`` runs the
single-process simulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from onerec.edge.tree import Tree, head_devices
from onerec.errors import ConfigError

if TYPE_CHECKING:
    from onerec.edge.simulate import EdgeSettings, ModelSpec


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
        for ch in kids:
            ranks = below[ch]
            pg = dist.new_group(ranks=sorted(int(r) for r in ranks))
            g_lvl.append(pg if rank in ranks else None)
            m_lvl.append(ranks)
            w_lvl.append(under[ch])
        groups.append(g_lvl)
        members.append(m_lvl)
        weights.append(w_lvl)
        under = np.array([under[ch].sum() for ch in kids])
        below = heads[lvl]
    return NodeGroups(groups, members, heads, weights)


def aggregate(model: torch.nn.Module, ng: NodeGroups, level: int) -> None:
    """This rank's part of one aggregation of levels 1..``level``; afterwards every rank holds its
    level-``level`` node's sample-weighted average, in place."""
    rank = dist.get_rank()
    params = [p.data for p in model.state_dict().values()]
    for lvl in range(level):  # up: average within each node this rank takes part in
        for node, pg in enumerate(ng.groups[lvl]):
            if pg is None:
                continue
            ranks, w = ng.members[lvl][node], ng.weights[lvl][node]
            share = float(w[int(np.flatnonzero(ranks == rank)[0])] / w.sum())
            for t in params:
                t.mul_(share)
                dist.all_reduce(t, op=dist.ReduceOp.SUM, group=pg)
    for lvl in range(level - 2, -1, -1):  # down: each lower node's head hands the result to its group
        for node, pg in enumerate(ng.groups[lvl]):
            if pg is None:
                continue
            for t in params:
                dist.broadcast(t, src=int(ng.heads[lvl][node]), group=pg)


def train_rank(tree: Tree, positions: np.ndarray, windows: Any, samples: np.ndarray, n_items: int,
               cfg: ModelSpec, s: EdgeSettings) -> dict[str, torch.Tensor]:
    """This rank's device: ``s.local_steps`` local steps with the tree's aggregations (collectives) after the
    steps where a level fires, as :func:`onerec.edge.simulate.run_scheme` does for all devices at once.

    Args:
        windows: this device's training data (``DeviceData.windows[rank]``: SASRec's token windows or the
            generator's training examples); samples: [N] every device's sample count (the weights).
        cfg: a SasrecConfig or a GeneratorSpec (a dense generator); s: the EdgeSettings.

    Returns:
        this device's final weights.
    """
    from onerec.edge.simulate import GeneratorSpec, _Fleet

    if isinstance(cfg, GeneratorSpec) and cfg.model.moe_experts:
        raise ConfigError(f"model.moe_experts={cfg.model.moe_experts}: the multi-process edge mode trains dense "
                          "generators only (a MoE's routing balance sums the load over every process). Fix: "
                          "model.moe_experts=0, or the single-process simulation (onerec.edge.simulate)")

    rank = dist.get_rank()
    ng = node_groups(tree, positions, samples)
    fleet = _Fleet(1, n_items, cfg, s.lr, s.seed, ids=[rank])
    model = fleet.recs[0].model
    for step in range(1, s.local_steps + 1):
        fleet.step(0, windows, s.batch_size)
        if level := tree.fired(step):
            aggregate(model, ng, level)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
