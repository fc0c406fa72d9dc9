"""Evaluation harness: score any :class:`~onerec.baselines.base.Recommender` on a held-out split.

Full ranking (TIGER protocol): the recommender returns its top ``max(ks)`` items over the whole
catalogue and :mod:`onerec.eval.metrics` looks the targets up in that list. Targets the model
could not know (items never seen in training) simply count as misses; they stay in ``|T|``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from onerec.data.splits import list_column
from onerec.errors import DataError
from onerec.eval.metrics import DEFAULT_KS, metric_names, per_user_metrics

if TYPE_CHECKING:  # a runtime import would be circular: baselines import this module
    from onerec.baselines.base import Recommender


def _check_recs(recs: np.ndarray, rows: int, k: int, name: str) -> np.ndarray:
    recs = np.asarray(recs)
    if recs.shape != (rows, k) or recs.dtype.kind not in "iu":
        raise ValueError(f"recommender '{name}' returned {recs.dtype} {recs.shape}; expected int [{rows}, {k}]")
    return recs.astype(np.int64, copy=False)


def evaluate(recommender: Recommender, examples: pa.Table, *, ks: Sequence[int] = DEFAULT_KS,
             batch_size: int = 1024, progress: bool = False) -> dict[str, float]:
    """Mean Recall@K / NDCG@K of ``recommender`` over the rows of a valid/test table.

    The recommender sees each batch *without* the ``targets`` column, so it cannot leak them.

    Args:
        recommender: a fitted recommender.
        examples: valid/test table (``history``, ``targets``, ... see :mod:`onerec.data.splits`).
        ks: cut-offs; the recommender is asked for ``max(ks)`` items.
        batch_size: rows passed to ``recommend`` at once.
        progress: show a tqdm bar.

    Returns:
        ``{"recall@1": ..., "ndcg@1": ..., ..., "n_users": B}`` (means over users).
    """
    if "targets" not in examples.column_names:
        raise DataError("the examples table has no 'targets' column",
                        fix="pass a valid/test split table (see onerec.data.splits)")
    ks = sorted({int(k) for k in ks})
    kmax = ks[-1]
    name = getattr(recommender, "name", type(recommender).__name__)
    sums = dict.fromkeys(metric_names(ks), 0.0)
    starts = range(0, examples.num_rows, max(1, batch_size))
    for start in tqdm(starts, desc=f"eval {name}", disable=not progress):
        batch = examples.slice(start, batch_size)
        recs = recommender.recommend(batch.drop_columns(["targets"]), kmax)
        recs = _check_recs(recs, batch.num_rows, kmax, name)
        per = per_user_metrics(recs, list_column(batch, "targets"), ks)
        for key in sums:
            sums[key] += float(per[key].sum())
    n = examples.num_rows
    out: dict[str, float] = {key: (s / n if n else 0.0) for key, s in sums.items()}
    out["n_users"] = n
    return out


def evaluate_shared(recommender: Recommender, examples: pa.Table, *, rank: int, world: int,
                    sum_over_ranks: Callable[[list[float]], list[float]], ks: Sequence[int] = DEFAULT_KS,
                    batch_size: int = 1024, progress: bool = False) -> dict[str, float]:
    """:func:`evaluate` with the rows split over ``world`` processes: process ``rank`` scores its contiguous share
    and ``sum_over_ranks`` (an all-reduce, e.g. :meth:`onerec.train.distributed.Dist.sum`) adds the per-user sums,
    so every process returns the means over all rows, as :func:`evaluate` on one process does."""
    if world == 1:
        return evaluate(recommender, examples, ks=ks, batch_size=batch_size, progress=progress)
    n = examples.num_rows
    lo, hi = rank * n // world, (rank + 1) * n // world
    part = evaluate(recommender, examples.slice(lo, hi - lo), ks=ks, batch_size=batch_size, progress=progress) \
        if hi > lo else {key: 0.0 for key in metric_names(sorted({int(k) for k in ks}))} | {"n_users": 0}
    keys = [k for k in part if k != "n_users"]
    totals = sum_over_ranks([part[k] * part["n_users"] for k in keys] + [float(part["n_users"])])
    out = {k: (t / totals[-1] if totals[-1] else 0.0) for k, t in zip(keys, totals)}
    out["n_users"] = int(totals[-1])
    return out


def evaluate_many(recommenders: Mapping[str, Recommender], examples: pa.Table, *,
                  ks: Sequence[int] = DEFAULT_KS, batch_size: int = 1024,
                  progress: bool = False) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`evaluate` each fitted recommender on the same examples.

    Returns:
        ``{"models": {name: metrics}}`` in the order given.
    """
    return {"models": {name: evaluate(rec, examples, ks=ks, batch_size=batch_size, progress=progress)
                       for name, rec in recommenders.items()}}


def _metric_keys(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Metric columns present in any row, ordered by K then recall before ndcg."""
    keys = {k for m in rows.values() for k in m if re.fullmatch(r"(recall|ndcg)@\d+", k)}
    return sorted(keys, key=lambda k: (int(k.split("@")[1]), k.split("@")[0] != "recall"))


def format_table(result: Mapping[str, Any], *, digits: int = 4, name: str = "model") -> str:
    """A markdown table (readable as plain text) of one metrics dict or an ``evaluate_many`` result.

    Args:
        result: ``{"recall@10": ..., ...}`` or ``{"models": {name: metrics}}``.
        digits: decimals shown.
        name: row label when ``result`` is a single metrics dict.

    Returns:
        One header row, a separator and one row per model, e.g.
        ``| model | R@10 | N@10 | users |``.
    """
    rows = result.get("models", {name: result})
    keys = _metric_keys(rows)
    header = ["model"] + [("R@" if k.startswith("recall") else "N@") + k.split("@")[1] for k in keys] + ["users"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for model, metrics in rows.items():
        cells = [f"{metrics[k]:.{digits}f}" if k in metrics else "-" for k in keys]
        users = metrics.get("n_users")
        lines.append("| " + " | ".join([str(model), *cells, "-" if users is None else str(int(users))]) + " |")
    return "\n".join(lines)
