"""Scoring recommended lists in the simulated world, whose ground-truth response model plays the users.

For each user's top-K list: the expected watch time (seconds per recommended item), click,
long-view, complete-play and like probabilities from :meth:`onerec.data.simulator.World.expected`
(closed forms, no sampling noise), the shown videos' mean duration and expected play fraction (watch
time / duration: what a duration-debiased reward such as OneRec-V2's aims at), the mean P-Score of the
list (the reward DPO / ECPO were aligned to), and the legality of the model's *unconstrained* top-K
generations (share of codes that map to an item).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from onerec.align.loop import AlignContext, generate_constrained, generate_unconstrained, pscore


def world_scores(world, users: np.ndarray, items: np.ndarray) -> dict[str, float]:
    """Mean ground-truth response per recommended item over all (user, slot) pairs (-1 slots skipped)."""
    users = np.asarray(users)
    u = np.repeat(users, items.shape[1])
    flat = items.reshape(-1)
    ok = flat >= 0
    exp = world.expected(u[ok], flat[ok])
    dur = world.item_duration_ms[flat[ok]].astype(np.float64)
    return {"watch_time": float(exp["watch_time_ms"].mean() / 1000.0), "click": float(exp["click"].mean()),
            "long_view": float(exp["long_view"].mean()), "like": float(exp["like"].mean()),
            "complete_play": float(exp["complete_play"].mean()), "duration": float(dur.mean() / 1000.0),
            "play_fraction": float((exp["watch_time_ms"] / dur).mean()), "filled": float(ok.mean())}


def evaluate_generator(ctx: AlignContext, world, rows: np.ndarray, *, k: int, beam: int,
                       batch: int = 128) -> dict[str, Any]:
    """World scores, P-Score and unconstrained legality of the generator's top-k for the request rows."""
    ctx.model.eval()
    items, legal = [], []
    for s in range(0, len(rows), batch):
        r = rows[s:s + batch]
        it, _ = generate_constrained(ctx, r, max(beam, k), k)
        items.append(it)
        codes = generate_unconstrained(ctx, r, k)
        legal.append(ctx.index.lookup(codes) >= 0)
    items_a = np.concatenate(items)
    out = world_scores(world, ctx.users[rows], items_a)
    out["pscore"] = float(np.nanmean(pscore(ctx, rows, items_a)))
    out["legality"] = float(np.concatenate(legal).mean())
    out["distinct_items"] = len(np.unique(items_a[items_a >= 0]))
    return out


def evaluate_cascade(ctx: AlignContext, world, rows: np.ndarray, retriever, *, k: int,
                     retrieve: int) -> dict[str, Any]:
    """The cascaded baseline: ``retriever`` (e.g. SASRec) proposes ``retrieve`` items per user, the
    P-Score ranks them, the best k are shown."""
    table: pa.Table = ctx.requests.take(pa.array(rows))
    cand = retriever.recommend(table, retrieve)  # [B, retrieve]
    score = pscore(ctx, rows, cand)
    order = np.argsort(-np.nan_to_num(score, nan=-np.inf), axis=1, kind="stable")[:, :k]
    items = np.take_along_axis(cand, order, axis=1)
    out = world_scores(world, ctx.users[rows], items)
    out["pscore"] = float(np.nanmean(np.take_along_axis(score, order, axis=1)))
    out["legality"] = 1.0  # a cascade only ever shows real items
    out["distinct_items"] = len(np.unique(items[items >= 0]))
    return out


def oracle_scores(world, users: np.ndarray, n_items: int, k: int) -> dict[str, float]:
    """Upper reference: each user's true top-k items by expected watch time (what no model can beat)."""
    tops = []
    for u in np.asarray(users):
        wt = world.expected(np.full(n_items, u), np.arange(n_items))["watch_time_ms"]
        tops.append(np.argsort(-wt)[:k])
    return world_scores(world, users, np.stack(tops))


__all__ = ["evaluate_cascade", "evaluate_generator", "oracle_scores", "world_scores"]
