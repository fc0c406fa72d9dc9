"""AGE in serving: ``serve.explore_slots=N`` gives the last N positions of each ``onerec`` answer to new items that
AGE chose, and the answer marks them (``explore: true``).

* **New items**: those shown fewer than ``serve.explore_new`` times in the run's log (``data/interactions``).
* **The explorer** (:class:`Explorer`): the exploration CTR model and its gate (:mod:`onerec.explore.model`),
  trained when the service starts on every exposure of the run's log (``explore.online_epochs`` passes, click and
  long-view labels), with the run's semantic IDs (first level) as the category -- the features of the online
  evaluation (:mod:`onerec.explore.online`), where a new item is scored from its SID, author and duration.
* **Per request** (:meth:`Explorer.fill`): the new items not in the answer's first k - N (nor, with
  ``exclude_seen``, in the history) are scored by ``serve.explore_policy`` (AGE-UCB or AGE-TS: f(h') where the
  gate lets the item be explored, f(h) elsewhere) for the request's user and history; the best N take the last N
  positions (:func:`place`). Their ``score`` is that AGE score, a click probability, not the generator's
  log-probability. MC dropout draws fresh masks, so two identical requests may explore different items.
* **Budget** (``serve.explore_budget`` < 1, :func:`worth_exploring`): a pick takes a position only where its AGE
  score is at least (1 - budget) x the exploration CTR model's plain prediction for the item it displaces; the
  others leave the generator's item in place (1, the default: the last N positions always explore).

The generator itself does not explore: a new item reaches users through these slots until its own log earns it
a place in the generator's training data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from onerec.config import RunConfig
from onerec.errors import ConfigError
from onerec.explore.model import OBJECTIVES, ExplorationCTR, ItemGate
from onerec.explore.online import _train
from onerec.explore.policies import row_counts, score_candidates
from onerec.reward.data import ItemSide, Positives, RankFeaturizer

#: most new items scored per request (the least shown first)
MAX_CANDIDATES = 1000


def place(items: list[int], scores: list[float], picks: list[int], pick_scores: list[float],
          k: int) -> tuple[list[int], list[float], list[bool]]:
    """The answer with the exploration picks in its last positions: the first ``k - len(picks)`` of ``items``,
    then ``picks``, then -- where that is still short of k -- the rest of ``items``; with each one's score and
    whether it is an exploration pick.

    Example: items [1, 2, 3, 4], picks [9], k 4 -> [1, 2, 3, 9] (9 marked); items [1, 2], picks [9], k 4 ->
    [1, 2, 9] (the list was short: nothing is displaced); picks [] -> items unchanged.
    """
    n = min(len(picks), k)
    head = min(len(items), k - n)
    out, out_s, flag = list(items[:head]), list(scores[:head]), [False] * head
    out += picks[:n]
    out_s += pick_scores[:n]
    flag += [True] * n
    for it, sc in zip(items[head:], scores[head:]):
        if len(out) >= k:
            break
        if it not in out:
            out.append(it)
            out_s.append(sc)
            flag.append(False)
    return out, out_s, flag


def worth_exploring(pick_scores: list[float], displaced: list[float], budget: float) -> int:
    """How many of the picks (best first) take a position under ``serve.explore_budget``: pick j displaces the
    j-th item from the end of the answer, whose plain CTR is ``displaced[j]`` (shorter than the picks where the
    answer is short: those picks displace nothing and are free); the picks are kept up to the first whose score is
    below (1 - budget) x the value it displaces.

    Example: picks .5, .3 against displaced .4, .6 with budget 0 -> 1 (.5 >= .4, .3 < .6); budget 0.5 -> 2
    (.3 >= .3); budget 1 -> all.
    """
    m = 0
    for j, s in enumerate(pick_scores):
        if j < len(displaced) and s < (1.0 - budget) * displaced[j]:
            break
        m += 1
    return m


def check_serve_explore(cfg: RunConfig, inter: pa.Table | None = None) -> None:
    """ConfigError naming the serve.explore_* key and the fix for a setting the service cannot explore with."""
    sc = cfg.serve
    if sc.explore_slots < 0 or sc.explore_slots > sc.max_k:
        raise ConfigError(f"serve.explore_slots={sc.explore_slots}: must be in 0..serve.max_k={sc.max_k}. Fix: "
                          "e.g. serve.explore_slots=2 (0: no exploration)")
    if sc.explore_budget < 0.0:
        raise ConfigError(f"serve.explore_budget={sc.explore_budget}: must be at least 0. Fix: e.g. "
                          "serve.explore_budget=1 (always explore) or 0")
    if sc.explore_new < 1:
        raise ConfigError(f"serve.explore_new={sc.explore_new}: must be at least 1. Fix: e.g. serve.explore_new=30")
    if sc.explore_policy not in ("age_ucb", "age_ts"):
        raise ConfigError(f"serve.explore_policy={sc.explore_policy!r}: one of age_ucb, age_ts. Fix: "
                          "serve.explore_policy=age_ucb")
    drop, mc = cfg.explore.dropout, cfg.explore.uncertainty == "mc_dropout"
    if not 0.0 <= drop < 1.0 or (mc and drop == 0.0):
        raise ConfigError(f"explore.dropout={drop}: " + ("AGE's uncertainty needs MC dropout in (0, 1)" if mc else
                                                          "must be in [0, 1)") + ". Fix: e.g. explore.dropout=0.1")
    if cfg.explore.count_sigma <= 0.0:
        raise ConfigError(f"explore.count_sigma={cfg.explore.count_sigma}: must be positive. Fix: e.g. "
                          "explore.count_sigma=0.1")
    if inter is not None:
        missing = [c for c in OBJECTIVES if c not in inter.column_names]
        if missing:
            raise ConfigError(f"serve.explore_slots={sc.explore_slots}: the run's log has no {missing[0]} column, "
                              "which the exploration CTR model learns from (a log with feedback signals: the "
                              "simulator, KuaiRand). Fix: serve.explore_slots=0")


@dataclasses.dataclass
class Explorer:
    """The exploration CTR model of a run, its gate, the item features and the run's new items."""

    model: ExplorationCTR
    gate: ItemGate
    side: ItemSide
    new_items: np.ndarray  # int64, the least shown first
    cfg: RunConfig
    anonymous: int  # the user index of explicit histories (a zero embedding)
    shows: np.ndarray  # int64 [N], each item's exposures in the run's log (explore.uncertainty=count reads them)

    @classmethod
    def fit(cls, inter: pa.Table, n_users: int, codes: np.ndarray, items: pa.Table | None, cfg: RunConfig, *,
            seed: int = 0) -> Explorer:
        """Train on every exposure of ``inter`` (the run's log); ``codes`` [N, L]: the run's semantic IDs."""
        check_serve_explore(cfg, inter)
        n_items = len(codes)
        side = ItemSide.build(codes, items)
        shows = np.bincount(inter["item_id"].to_numpy().astype(np.int64), minlength=n_items)
        new = np.flatnonzero(shows < cfg.serve.explore_new)
        new = new[np.argsort(shows[new], kind="stable")]
        torch.manual_seed(seed)
        model = ExplorationCTR(cfg.explore, n_users + 1, n_items, side.n_cats, side.n_authors)
        with torch.no_grad():
            model.user_emb.weight[n_users].zero_()  # never trained: Adam leaves a row with zero gradient alone
        gate = ItemGate(cfg.explore, side.n_cats, side.n_authors)
        opt = torch.optim.Adam([*model.parameters(), *gate.parameters()], lr=cfg.explore.lr)
        log = inter.select(["user_id", "item_id", "timestamp", *OBJECTIVES])
        feat = RankFeaturizer(Positives.from_interactions(inter, n_users, cfg.data.positive), side, cfg.explore.history)
        _train(model, gate, opt, feat, log, max(1, cfg.explore.online_epochs), np.random.default_rng([seed, 48]))
        model.eval()
        return cls(model, gate, side, new.astype(np.int64), cfg, n_users, shows.astype(np.int64))

    def candidates(self, shown: list[int], history: np.ndarray | None) -> np.ndarray:
        """The new items not in ``shown`` (nor in ``history`` when given), the least shown first, at most
        :data:`MAX_CANDIDATES`."""
        drop = np.asarray(list(shown) + ([] if history is None else list(history)), dtype=np.int64)
        return self.new_items[~np.isin(self.new_items, drop)][:MAX_CANDIDATES]

    def scores(self, query: Any, cand: np.ndarray, policy: str | None = None) -> np.ndarray:
        """AGE scores [len(cand)] of the candidates for the query's user (or an anonymous one) and history
        (``policy``: another policy's, e.g. greedy for the plain prediction)."""
        L, C = len(query.items), len(cand)
        pos = Positives(np.array([0, L], dtype=np.int64), np.asarray(query.items, dtype=np.int64),
                        np.asarray(query.ts, dtype=np.int64), np.asarray(query.flags, dtype=np.int64))
        feat = RankFeaturizer(pos, self.side, self.cfg.explore.history)
        b = feat.batch(np.zeros(C, np.int64), cand, np.full(C, query.request_ts, np.int64),
                       ends=np.full(C, L, np.int64))  # the whole given history, whatever its timestamps
        b["user"] = torch.full((C,), self.anonymous if query.user is None else int(query.user), dtype=torch.long)
        out, _ = score_candidates(policy or self.cfg.serve.explore_policy, self.model, self.gate, b,
                                  self.cfg.explore, torch.Generator(), counts=row_counts(self.shows, cand))
        return out.numpy()

    def fill(self, query: Any, items: list[int], scores: list[float]) -> tuple[list[int], list[float], list[bool]]:
        """``items`` / ``scores`` (the generator's answer, k long) with the last ``serve.explore_slots`` positions
        given to the best new items by AGE (:func:`place`), as many as ``serve.explore_budget`` allows
        (:func:`worth_exploring`), and which positions those are."""
        k, n = query.k, min(self.cfg.serve.explore_slots, query.k)
        cand = self.candidates(items[:k - n], query.items if query.exclude_seen else None)
        if n == 0 or len(cand) == 0:
            return list(items), list(scores), [False] * len(items)
        s = self.scores(query, cand)
        best = np.argsort(-s, kind="stable")[:n]
        picks, pick_s = cand[best].tolist(), s[best].astype(float).tolist()
        if self.cfg.serve.explore_budget < 1.0:
            tail = list(items[max(0, k - n):k])[::-1]  # what the picks displace, the last position first
            value = self.scores(query, np.asarray(tail, np.int64), "greedy").tolist() if tail else []
            m = worth_exploring(pick_s, value, self.cfg.serve.explore_budget)
            picks, pick_s = picks[:m], pick_s[:m]
        return place(items, scores, picks, pick_s, k)
