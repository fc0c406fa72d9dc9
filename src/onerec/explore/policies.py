"""Exploration policies in one harness: each scores the candidates of a block of events; the replay picks each
event's best-scored candidate.

=============  ================================================================================================
random         uniform scores: the logging policy itself (the floor every policy should beat)
greedy         f(h), the CTR model without dropout: no exploration
epsilon        greedy, but a share ``explore.epsilon`` of the events get a uniformly random pick
ucb            mean + alpha * spread of f over N MC-dropout passes (no adversarial step)
thompson       f under one dropout mask (no adversarial step)
age_ucb        AGE: f(h') with h' = h + lambda * spread * g/||g|| (FGM or PGD), gated
age_ts         AGE: the same with delta_y = f under one mask - f(h), gated
age_nounc      AGE with the uncertainty off: every candidate of the block moves by lambda * (the block's mean
               spread), so the step is as long on average but the same for certain and uncertain items
=============  ================================================================================================

With ``explore.uncertainty=count`` the spread is ``explore.count_sigma / sqrt(1 + n)`` (n: the item's showings
so far) instead of the dropout passes' (ucb: plain + alpha * spread; age_ucb: delta_y = spread), and the Thompson
forms draw spread x a standard normal (thompson: plain + that draw; age_ts: delta_y = that draw).

The score is the predicted probability of ``explore.objective`` (click by default). With
``explore.max_impressions`` (the AGE paper's online deployment explored only items with fewer than 3,000
impressions), ucb, thompson and AGE explore only the items shown fewer times than that, and score the others as
greedy does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from onerec.config import ExploreConfig
from onerec.explore.age import count_spread, fgm, gate_mask, gated_scores, mc_spread, pgd, thompson_delta, ucb_scores
from onerec.explore.model import OBJECTIVES, ExplorationCTR, ItemGate

POLICIES = ("random", "greedy", "epsilon", "ucb", "thompson", "age_ucb", "age_ts", "age_nounc")
#: the policies that read the CTR model's MC-dropout passes
MC_POLICIES = ("ucb", "thompson", "age_ucb", "age_ts", "age_nounc")


def score_candidates(policy: str, model: ExplorationCTR, gate: ItemGate, b: dict[str, Tensor],
                     cfg: ExploreConfig, gen: torch.Generator, fresh: Tensor | None = None,
                     counts: Tensor | None = None) -> tuple[Tensor, float | None]:
    """Scores [B] of the rows of ``b`` under ``policy``, and for AGE the share of rows the gate let explore.

    ``gen`` draws the random policy's scores; dropout masks (and the count uncertainty's normal draws) come from
    torch's global generator (seeded by the replay). ``fresh`` [B] bool: the rows whose item may be explored
    (``explore.max_impressions``: shown fewer times than that); ucb, thompson and AGE score the others as greedy
    does. None: every row. ``counts`` [B]: each row's item's showings so far, which ``explore.uncertainty=count``
    reads (required there)."""
    if policy == "random":
        return torch.rand(b["item"].shape[0], generator=gen), None
    j = OBJECTIVES.index(cfg.objective)
    with torch.no_grad():
        x, _ = model.features(b)
        plain = torch.sigmoid(model.heads(x, dropout=False, only=j)[:, 0])
        if policy in ("greedy", "epsilon"):
            return plain, None
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; one of {POLICIES}")
        if cfg.uncertainty == "count":
            if counts is None:
                raise ValueError("explore.uncertainty=count needs each candidate's showings (counts)")
            spread = count_spread(counts, cfg.count_sigma)
            if policy in ("thompson", "age_ts"):
                spread = spread * torch.randn(spread.shape)
            if policy in ("ucb", "thompson"):
                alpha = cfg.ucb_alpha if policy == "ucb" else 1.0
                return _fresh_only(plain + alpha * spread, plain, fresh), None
            delta = spread
        elif policy == "thompson":
            return _fresh_only(torch.sigmoid(model.heads(x, dropout=True, only=j)[:, 0]), plain, fresh), None
        elif policy in ("ucb", "age_ucb", "age_nounc"):
            samples = torch.sigmoid(model.heads(x.expand(cfg.mc_passes, *x.shape), dropout=True, only=j)[..., 0])
            if policy == "ucb":
                return _fresh_only(ucb_scores(samples, cfg.ucb_alpha, cfg.ucb_stat), plain, fresh), None
            delta = mc_spread(samples, cfg.ucb_stat)
        else:  # age_ts
            delta = thompson_delta(torch.sigmoid(model.heads(x, dropout=True, only=j)[:, 0]), plain)
        if policy == "age_nounc":  # the same step for every row: the block's mean uncertainty
            delta = delta.mean().expand_as(delta)
        explore = gate_mask(plain, torch.sigmoid(gate(b))) if cfg.gate else torch.ones_like(plain, dtype=torch.bool)
        if fresh is not None:
            explore = explore & fresh
    explored = age_explored(model, b, cfg.age_lambda * delta, cfg, j)
    return gated_scores(plain, explored, explore), float(explore.float().mean())


def fresh_rows(counts: Tensor, cap: int | None) -> Tensor | None:
    """``score_candidates``' ``fresh`` mask [B] from the candidates' showings so far ``counts`` [B]
    (:func:`row_counts`): shown fewer than ``cap`` times; None without a cap."""
    return None if cap is None else counts < cap


def row_counts(shows: np.ndarray, items: np.ndarray) -> Tensor:
    """``score_candidates``' ``counts`` [B]: the showings so far (``shows`` [N], per item) of candidate ``items``."""
    return torch.from_numpy(np.ascontiguousarray(shows[items]))


def _fresh_only(scores: Tensor, plain: Tensor, fresh: Tensor | None) -> Tensor:
    """A baseline's exploring ``scores`` where ``fresh``, the plain prediction elsewhere."""
    return scores if fresh is None else torch.where(fresh, scores, plain)


def age_explored(model: ExplorationCTR, b: dict[str, Tensor], radius: Tensor, cfg: ExploreConfig,
                 j: int) -> Tensor:
    """Pseudo-exploration: f(h') [B] with h' the FGM or PGD step of length ``radius`` [B] from h."""
    f: Callable[[Tensor], Tensor] = lambda h: torch.sigmoid(model(b, h)[:, j])  # noqa: E731
    h = model.item_vec(b).detach()
    if cfg.attack == "fgm":
        moved = fgm(f, h, radius)
    else:
        moved = pgd(f, h, radius, steps=cfg.pgd_steps, step=cfg.pgd_step)
    with torch.no_grad():
        return f(moved)
