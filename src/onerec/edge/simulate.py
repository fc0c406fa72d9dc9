"""Single-process simulation of training across edge devices: many devices (100+) in one process.

Every device holds a SASRec (:mod:`onerec.baselines.sasrec`; ``cfg`` a :class:`SasrecConfig`) or a generator
(:mod:`onerec.model`; ``cfg`` a :class:`GeneratorSpec`, trained by the project's training step
:func:`onerec.train.loop._step` and scored by beam search) trained only on its own users' train sequences, with its
own Adam (optimizer moments stay on the device and are never averaged; ``optimizer="sgd"``: plain SGD). All
devices start from the same initial weights and take one local step each per tick; after the tick the
scheme exchanges models:

* ``etree`` -- :func:`onerec.edge.tree.tree_aggregate` on a tree whose groups come from KMA, distance-only
  or random grouping (``grouping``); the level that fires follows ``periods``;
* ``fedavg`` -- one outside server at the plane's centre averages every device every ``periods[0]``
  local steps (the same local steps between rounds as E-Tree's groups);
* ``gossip`` -- every ``periods[0]`` local steps each device averages with ``gossip_peers`` random peers;
* ``local`` -- no exchange;
* ``central`` -- one model on the pooled data, ``local_steps`` steps of ``batch_size * n_devices``
  sequences: the same sequential updates and the same training samples as all devices together, i.e.
  perfectly synchronous data-parallel training, the upper bound the averaging schemes approximate.

Faults (``fail_step``): after that local step the aggregator of one node of ``fail_level`` dies
(:func:`onerec.edge.tree.reattach`): E-Tree re-attaches the node's children to the level above (at its root, the
subtrees below go on without it), while FedAvg, whose only aggregator is the server, has nothing left and its
devices train on alone.

A scheme's schedule (:func:`schedule`: exchanges, fault, costs, curve) is shared with the multi-process mode
(:mod:`onerec.edge.distributed`, one device a process), which holds the devices differently (:class:`Exchanges`).

Recall@10 / NDCG@10 come from :func:`onerec.eval.harness.evaluate` with each user scored by *their
device's* model (what on-device recommendation serves); under a scheme that just aggregated every
device holds the same model. Bytes and the simulated clock follow the cost model of
:mod:`onerec.edge.tree`; a local step costs ``step_ms`` of simulated time on every device at once.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from onerec.baselines.sasrec import SASRecRecommender, _left_pad, _trim
from onerec.config import SasrecConfig
from onerec.data.splits import list_column
from onerec.edge.devices import Devices
from onerec.edge.grouping import kma_groups, kmeans_groups, model_signature, random_groups, similar_groups
from onerec.edge.tree import (
    AggregatorAdam,
    Link,
    Tree,
    add_public_nodes,
    build_tree,
    gossip_average,
    gossip_cost,
    gossip_peers,
    model_bytes,
    reattach,
    server_tree,
    tree_aggregate,
    tree_cost,
)
from onerec.errors import ConfigError
from onerec.eval.harness import evaluate

SCHEMES = ("etree", "fedavg", "gossip", "local", "central")
METRICS = ("recall@10", "ndcg@10")
GROUPINGS = ("kma", "distance", "random", "similar")
OPTIMIZERS = ("adam", "sgd")


@dataclass
class EdgeSettings:
    """How the devices train and exchange (a scheme's run)."""

    local_steps: int = 60  # local steps per device over the whole run
    batch_size: int = 16
    lr: float = 1e-2
    optimizer: str = "adam"  # each device's own: adam (AdamW for the generator) | sgd (plain SGD, FedAvg's)
    server_lr: float | None = None  # Adam at the tree's top (ServerAdam, FedAdam) with this rate; None: plain averaging
    group_lr: float | None = None  # Adam at every aggregator below the top (AggregatorAdam); None: plain averaging
    group_size: int = 10  # devices per level-1 group: n_groups = ceil(N / group_size)
    fanout: list[int] = field(default_factory=list)  # children per node above level 1, below the root
    periods: list[int] = field(default_factory=lambda: [5, 20])  # local steps between aggregations, per level
    grouping: str = "kma"
    kma_balance: float = 1.0
    signature_steps: int = 5  # local steps from the shared start that give each device its KMA signature
    gossip_peers: int = 1
    eval_every: int = 20  # local steps between points of the accuracy curve
    step_ms: float = 20.0  # simulated compute time of one local step
    fail_step: int | None = None  # after this local step the aggregator of node ``fail_group`` of ``fail_level`` dies
    fail_group: int = 0  # (E-Tree re-attaches its children to the level above; FedAvg's one server is gone)
    fail_level: int = 1  # 1: a device group's; the top level: E-Tree's root (its subtrees go on alone)
    public_nodes: int = 0  # E-Tree: devices of other groups that each group also takes in (add_public_nodes)
    link: Link = field(default_factory=Link)
    seed: int = 0


def check_settings(s: EdgeSettings, scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ConfigError(f"edge.scheme='{scheme}' is not one of {', '.join(SCHEMES)}. Fix: pick one of those")
    if s.optimizer not in OPTIMIZERS:
        raise ConfigError(f"edge.optimizer='{s.optimizer}' is not one of {', '.join(OPTIMIZERS)}. Fix: pick one")
    for key in ("server_lr", "group_lr"):
        if getattr(s, key) is not None and not getattr(s, key) > 0:
            raise ConfigError(f"edge.{key}={getattr(s, key)} must be > 0. Fix: a positive rate, or null (plain "
                              "averaging)")
    if s.grouping not in GROUPINGS:
        raise ConfigError(f"edge.grouping='{s.grouping}' is not one of {', '.join(GROUPINGS)}. Fix: pick one")
    if s.public_nodes < 0:
        raise ConfigError(f"edge.public_nodes={s.public_nodes} must be >= 0. Fix: 0 (none) or a few devices a group")
    if s.public_nodes and (s.server_lr is not None or s.group_lr is not None):
        raise ConfigError("edge.public_nodes with edge.server_lr / edge.group_lr: an aggregator's Adam steps from its "
                          "group's average, which a public device (in two groups) does not hold. Fix: one or the other")
    for key in ("local_steps", "batch_size", "group_size", "eval_every"):
        if getattr(s, key) < 1:
            raise ConfigError(f"edge.{key}={getattr(s, key)} must be >= 1. Fix: use a positive integer")


@dataclass
class GeneratorSpec:
    """A generator on every device: its model config, the items' semantic IDs and the training examples' maker.

    Attributes:
        model: the generator's :class:`onerec.config.ModelConfig` (e.g. the ``tiny`` preset's).
        codes: int64 [N_items, D] semantic IDs (unique per item).
        sizes: codebook size per level.
        examples: ``examples(train_table) -> TrainExamples | SequenceExamples`` (with the run's featurizer,
            e.g. ``lambda t: onerec.pipeline.train_examples(t, featurizer, cfg)``).
        featurizer: the featurizer the examples use (for scoring).
        train: the training config (label smoothing, weight decay, precision) of the project's training step.
        beam_size: beams per user when scoring (>= 10).
    """

    model: Any
    codes: np.ndarray
    sizes: list[int]
    examples: Callable[[pa.Table], Any]
    featurizer: Any
    train: Any
    beam_size: int = 16


ModelSpec = SasrecConfig | GeneratorSpec


@dataclass
class DeviceData:
    """Per device: its training data (SASRec: token windows; generator: training examples) and its users' test
    rows."""

    windows: list[Any]  # SASRec: int64 [rows, max_len + 1] per device; generator: TrainExamples per device
    test: list[pa.Table]
    samples: np.ndarray  # int64 [N] training windows (examples) per device (the aggregation weights)
    pooled: Any = None  # generator: the examples of every device's users together (centralised training)


def device_data(devices: Devices, train: pa.Table, test: pa.Table, max_len: int,
                spec: GeneratorSpec | None = None) -> DeviceData:
    """Split the train / test tables by the users' devices (a device with no train rows is an error); with
    ``spec``, each device's training examples for the generator."""
    windows, tests, kept = [], [], []
    for d, users in enumerate(devices.users):
        keep = pc.is_in(train["user_id"], value_set=pa.array(users, pa.int64()))
        mine = train.filter(keep)
        seqs = [s + 1 for s in list_column(mine, "items") if len(s) >= 2]
        if not seqs:
            raise ConfigError(f"device {d} has no user with 2 or more train items. Fix: use fewer edge.n_devices "
                              "or a larger data set")
        windows.append(_left_pad(seqs, max_len + 1) if spec is None else spec.examples(mine))
        kept.append(mine)
        tests.append(test.filter(pc.is_in(test["user_id"], value_set=pa.array(users, pa.int64()))))
    pooled = spec.examples(pa.concat_tables(kept)) if spec is not None else None
    return DeviceData(windows, tests, np.array([len(w) for w in windows], dtype=np.int64), pooled)


class _Fleet:
    """The devices' models and optimizers (one SASRecRecommender or GenerativeRecommender each, for its loss and
    recommend)."""

    def __init__(self, n: int, n_items: int, cfg: ModelSpec, lr: float, seed: int, stream: int = 0,
                 ids: list[int] | None = None, optimizer: str = "adam") -> None:
        torch.manual_seed(seed)
        # one batch-sampling stream per device (``ids``: which devices these are), so that a device's batches do
        # not depend on the others: the multi-process mode, one device a process, draws the same ones
        self.rngs = [np.random.default_rng([seed, stream, d]) for d in (ids if ids is not None else range(n))]
        self.spec = cfg if isinstance(cfg, GeneratorSpec) else None
        if self.spec is not None:
            self._generators(n, lr, seed, optimizer)
            return
        base = SASRecRecommender(cfg)
        base.model = base._build(n_items)
        self.recs = []
        for _ in range(n):
            rec = SASRecRecommender(cfg)
            rec.model, rec.n_items = copy.deepcopy(base.model), n_items
            self.recs.append(rec)
        self.opts = [_optimizer(optimizer, r.model, lr) for r in self.recs]
        self.gen = torch.Generator().manual_seed(seed)

    def _generators(self, n: int, lr: float, seed: int, optimizer: str) -> None:
        from onerec.generate.generative import GenerativeRecommender
        from onerec.model import build_generator

        spec = self.spec
        base = build_generator(spec.model, spec.sizes)
        self.recs = [GenerativeRecommender(copy.deepcopy(base), spec.codes, beam_size=spec.beam_size,
                                           featurizer=spec.featurizer) for _ in range(n)]
        # AdamW as the project's trainer (onerec.train.loop), at the edge settings' constant learning rate
        self.opts = [_optimizer(optimizer, r.model, lr, spec.train.weight_decay) for r in self.recs]
        self.gen = torch.Generator().manual_seed(seed)

    def states(self) -> list[dict[str, torch.Tensor]]:
        return [r.model.state_dict() for r in self.recs]

    def load(self, states: list[dict[str, torch.Tensor]]) -> None:
        """Copy new weights into every device's own tensors (shared results are never aliased)."""
        with torch.no_grad():
            for r, s in zip(self.recs, states):
                for k, v in r.model.state_dict().items():
                    v.copy_(s[k])

    def step(self, d: int, windows: Any, batch_size: int) -> float:
        rec, opt = self.recs[d], self.opts[d]
        rows = self.rngs[d].choice(len(windows), size=min(batch_size, len(windows)), replace=False)
        rec.model.train()
        if self.spec is not None:  # the project's training step: forward, backward, gradients left in the model
            from onerec.train.distributed import Dist
            from onerec.train.loop import _step

            tc = self.spec.train
            # a device trains alone (Dist(): one process), also when it is one rank of the multi-process mode
            loss = _step(rec.model, windows, rows, Dist(), tc, torch.device("cpu"), tc.precision == "bf16")
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(rec.model.parameters(), tc.grad_clip)
            opt.step()
            return loss
        loss = rec._batch_loss(torch.as_tensor(_trim(windows[rows], keep=2)), self.gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())


def _optimizer(name: str, model: torch.nn.Module, lr: float, weight_decay: float | None = None
               ) -> torch.optim.Optimizer:
    """A device's optimizer: ``adam`` (Adam; AdamW with the generator's weight decay) or ``sgd`` (plain SGD, as
    FedAvg and E-Tree train locally: the average of the devices' steps is then the average of their gradients)."""
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr)
    if weight_decay is None:
        return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98))
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))


def device_score(rec: Any, test: pa.Table) -> dict[str, float]:
    """Recall@10 / NDCG@10 of one device's model over its own users (zeros when it has none)."""
    if test.num_rows == 0:
        return dict.fromkeys(METRICS, 0.0)
    rec.model.eval()
    m = evaluate(rec, test, ks=(10,))
    return {k: m[k] for k in METRICS}


def pooled_score(scores: list[dict[str, float]], rows: list[int]) -> dict[str, float]:
    """The means over all users of per-device means (``scores``, from :func:`device_score`) over ``rows`` users
    each, summed in device order (so that every mode adds the same floats in the same order)."""
    sums, n = dict.fromkeys(METRICS, 0.0), 0
    for m, r in zip(scores, rows):
        if r == 0:
            continue
        for k in sums:
            sums[k] += m[k] * r
        n += r
    return {k: v / max(n, 1) for k, v in sums.items()}


def _score(recs: list[Any], tests: list[pa.Table]) -> dict[str, float]:
    """Recall@10 / NDCG@10 over all users, each scored by their own device's model."""
    return pooled_score([device_score(r, t) for r, t in zip(recs, tests)], [t.num_rows for t in tests])


def device_signatures(fleet: _Fleet, data: DeviceData, ids: list[int], s: EdgeSettings) -> np.ndarray:
    """float [len(ids), 32] KMA's model signatures of devices ``ids`` (held by ``fleet``, in that order, all at the
    shared start): how far ``signature_steps`` local steps move each one's model
    (:func:`onerec.edge.grouping.model_signature`)."""
    start = {k: v.clone() for k, v in fleet.recs[0].model.state_dict().items()}
    for i, d in enumerate(ids):
        for _ in range(s.signature_steps):
            fleet.step(i, data.windows[d], s.batch_size)
    return np.stack([model_signature(start, st, seed=s.seed) for st in fleet.states()])


def make_groups(devices: Devices, data: DeviceData, n_items: int, cfg: ModelSpec, s: EdgeSettings,
                signatures: np.ndarray | None = None) -> np.ndarray:
    """Level-1 groups by ``s.grouping``; KMA's signatures come from ``signature_steps`` local steps
    (``signatures``: already computed, e.g. one a process and gathered, else computed here for every device)."""
    n_groups = max(1, math.ceil(devices.n / s.group_size))
    if s.grouping == "random":
        return random_groups(devices.n, n_groups, seed=s.seed)
    if s.grouping == "distance":
        return kmeans_groups(devices.positions, n_groups, seed=s.seed)
    if signatures is None:
        fleet = _Fleet(devices.n, n_items, cfg, s.lr, s.seed, stream=1, optimizer=s.optimizer)
        signatures = device_signatures(fleet, data, list(range(devices.n)), s)
    if s.grouping == "similar":
        return similar_groups(devices.positions, signatures, n_groups, seed=s.seed)
    return kma_groups(devices.positions, signatures, n_groups, samples=data.samples, balance=s.kma_balance,
                      seed=s.seed)


def scheme_tree(scheme: str, devices: Devices, s: EdgeSettings, groups: np.ndarray | None) -> Tree | None:
    """The aggregation tree of ``scheme``: E-Tree over ``groups``, FedAvg's one server at the plane's centre, or
    None (gossip, local)."""
    if scheme == "etree":
        tree = build_tree(devices.positions, groups, fanout=s.fanout, periods=s.periods, seed=s.seed)
        return add_public_nodes(tree, devices.positions, s.public_nodes)
    if scheme == "fedavg":
        return server_tree(devices.n, np.array([0.5, 0.5]), s.periods[0])
    return None


class Exchanges(Protocol):
    """What a scheme's schedule asks of the devices: the single-process simulation holds them all
    (:class:`Simulated`), the multi-process mode one a process (:class:`onerec.edge.distributed.RankDevice`)."""

    def tick(self) -> None:
        """One local step on every device (that this process holds)."""

    def tree_exchange(self, tree: Tree, level: int) -> None:
        """Aggregate levels 1..``level`` of ``tree``; each device then holds its level-``level`` node's model."""

    def gossip_exchange(self, picked: np.ndarray) -> None:
        """Each device i averages with its peers ``picked[i]`` (from the models before the round)."""

    def weights(self) -> list[torch.Tensor]:
        """The model tensors of the first device this process holds (before the first tick: every device's)."""

    def node_models(self, tree: Tree, level: int) -> dict[int, list[torch.Tensor]]:
        """Right after :meth:`tree_exchange` at ``level``: per level-``level`` node over a device this process
        holds, the node's model (its tensors, in :meth:`weights`' order)."""

    def set_node_models(self, tree: Tree, level: int, models: dict[int, list[torch.Tensor]]) -> None:
        """Every device this process holds under each node of ``models`` takes that node's tensors."""

    def score(self) -> dict[str, float]:
        """Recall@10 / NDCG@10 over every device's users, each scored by their own device's model."""


class Simulated:
    """Every device in this process (:class:`_Fleet`)."""

    def __init__(self, fleet: _Fleet, data: DeviceData, batch_size: int) -> None:
        self.fleet, self.data, self.batch_size = fleet, data, batch_size

    def tick(self) -> None:
        for d, windows in enumerate(self.data.windows):
            self.fleet.step(d, windows, self.batch_size)

    def tree_exchange(self, tree: Tree, level: int) -> None:
        self.fleet.load(tree_aggregate(tree, self.fleet.states(), self.data.samples, level))

    def gossip_exchange(self, picked: np.ndarray) -> None:
        self.fleet.load(gossip_average(self.fleet.states(), self.data.samples, picked))

    def weights(self) -> list[torch.Tensor]:
        return list(self.fleet.recs[0].model.state_dict().values())

    def node_models(self, tree: Tree, level: int) -> dict[int, list[torch.Tensor]]:
        recs = self.fleet.recs
        return {node: list(recs[devs[0]].model.state_dict().values()) for node, devs in enumerate(tree.leaves(level))}

    def set_node_models(self, tree: Tree, level: int, models: dict[int, list[torch.Tensor]]) -> None:
        states, keys = self.fleet.states(), list(self.fleet.recs[0].model.state_dict())
        for node, devs in enumerate(tree.leaves(level)):
            for d in devs:
                states[d] = dict(zip(keys, models[node]))
        self.fleet.load(states)

    def score(self) -> dict[str, float]:
        return _score(self.fleet.recs, self.data.test)


def run_scheme(scheme: str, devices: Devices, data: DeviceData, n_items: int, cfg: ModelSpec,
               s: EdgeSettings, groups: np.ndarray | None = None, *, keep_states: bool = False) -> dict:
    """Train under one scheme; returns ``{"curve": [...] (see :func:`schedule`),
    "final": {...}, "model_bytes", "seconds"}`` (+ ``"states"``, every device's final weights, with
    ``keep_states``)."""
    check_settings(s, scheme)
    t0 = time.monotonic()
    if scheme == "central":
        return _run_central(devices, data, n_items, cfg, s, t0)
    fleet = _Fleet(devices.n, n_items, cfg, s.lr, s.seed, optimizer=s.optimizer)
    if scheme == "etree" and groups is None:
        groups = make_groups(devices, data, n_items, cfg, s)
    n_bytes = model_bytes(fleet.recs[0].model.state_dict())
    out = schedule(scheme, Simulated(fleet, data, s.batch_size), devices.positions,
                   scheme_tree(scheme, devices, s, groups), n_bytes, s)
    out["seconds"] = time.monotonic() - t0
    if keep_states:
        out["states"] = [{k: v.clone() for k, v in st.items()} for st in fleet.states()]
    return out


def schedule(scheme: str, devices: Exchanges, positions: np.ndarray, tree: Tree | None, n_bytes: int,
             s: EdgeSettings) -> dict:
    """A scheme's run, whichever mode holds the devices: ``s.local_steps`` ticks, the exchanges after the ticks
    where they fire (with ``s.server_lr`` / ``s.group_lr``, a round's average goes through its aggregators' Adam,
    :class:`onerec.edge.tree.AggregatorAdam`), the fault,
    the simulated bytes and clock (:mod:`onerec.edge.tree`'s cost model) and the
    accuracy curve.

    Returns:
        ``{"curve": [{step, exchanges, top_rounds, bytes, byte_distance, sim_s, recall@10, ndcg@10}], "final":
        curve[-1], "model_bytes"}``: ``exchanges`` counts every exchange, ``top_rounds`` those that reached the top
        of the tree (E-Tree's root, FedAvg's server: global rounds), ``byte_distance`` the bytes times the
        lengths of the links they crossed (:class:`onerec.edge.tree.Cost`).
    """
    rng = np.random.default_rng(s.seed + 2)  # gossip's peers: every process draws the same
    total_bytes, sim_ms, byte_distance, exchanges, top_rounds = 0, 0.0, 0.0, 0, 0
    curve = []
    adam = None
    depth = tree.depth if tree is not None else 0  # the top: a round up to it is global (none after the root dies)
    if tree is not None and (s.server_lr is not None or s.group_lr is not None):
        adam = AggregatorAdam(s.server_lr, s.group_lr, devices.weights(), tree)
    for step in range(1, s.local_steps + 1):
        devices.tick()
        sim_ms += s.step_ms
        cost = None
        if tree is not None and step == s.fail_step:
            # FedAvg's tree has one level: its server dies whatever the level named
            tree = reattach(tree, positions, s.fail_group, min(s.fail_level, tree.depth))
        if tree is not None and (level := tree.fired(step)):
            devices.tree_exchange(tree, level)
            if adam is not None:  # the averages, read as steps, through the aggregators' Adam
                models = devices.node_models(tree, level)
                stepped = adam.step(tree, level, models)
                if adam.rate(tree, level) is not None:
                    devices.set_node_models(tree, level, stepped)
            cost = tree_cost(tree, positions, level, n_bytes, s.link)
            top_rounds += level == depth
        elif scheme == "gossip" and step % s.periods[0] == 0:
            picked = gossip_peers(len(positions), rng, s.gossip_peers)
            devices.gossip_exchange(picked)
            cost = gossip_cost(positions, picked, n_bytes, s.link)
        if cost is not None:
            total_bytes, sim_ms, exchanges = total_bytes + cost.bytes, sim_ms + cost.ms, exchanges + 1
            byte_distance += cost.byte_distance
        if step % s.eval_every == 0 or step == s.local_steps:
            curve.append({"step": step, "exchanges": exchanges, "top_rounds": top_rounds, "bytes": total_bytes,
                          "byte_distance": byte_distance, "sim_s": sim_ms / 1e3, **devices.score()})
    return {"curve": curve, "final": curve[-1], "model_bytes": n_bytes}


def _run_central(devices: Devices, data: DeviceData, n_items: int, cfg: ModelSpec, s: EdgeSettings,
                 t0: float) -> dict:
    fleet = _Fleet(1, n_items, cfg, s.lr, s.seed, optimizer=s.optimizer)
    pooled = np.concatenate(data.windows) if data.pooled is None else data.pooled
    test = pa.concat_tables([t for t in data.test if t.num_rows])
    curve = []
    for step in range(1, s.local_steps + 1):
        fleet.step(0, pooled, s.batch_size * devices.n)  # the samples all devices see in one tick
        if step % s.eval_every == 0 or step == s.local_steps:
            curve.append({"step": step, "exchanges": 0, "top_rounds": 0, "bytes": 0, "byte_distance": 0.0,
                          "sim_s": step * s.step_ms / 1e3,
                          **_score(fleet.recs, [test])})
    p = model_bytes(fleet.recs[0].model.state_dict())
    return {"curve": curve, "final": curve[-1], "model_bytes": p, "seconds": time.monotonic() - t0}


def settings_dict(s: EdgeSettings) -> dict:
    return dataclasses.asdict(s)
