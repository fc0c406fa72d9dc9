"""Offline top-K metrics under full ranking: Recall@K and NDCG@K.

Protocol (TIGER, arXiv 2305.05065, and the SASRec papers it compares with): every model ranks
*all* items for a user, the top ``Kmax`` ids are kept, and the held-out target(s) are looked up
in that list. Leave-one-out has exactly one target per user; the time split may have several.

Definitions, per user with target set ``T`` and ranked list ``r_1..r_Kmax`` (binary relevance):

* ``Recall@K = |{r_1..r_K} ∩ T| / |T|`` (with one target: the hit rate HR@K).
* ``NDCG@K = DCG@K / IDCG@K`` with ``DCG@K = sum_{j<=K, r_j in T} 1 / log2(j + 1)`` and the ideal
  ``IDCG@K = sum_{j <= min(K, |T|)} 1 / log2(j + 1)``.

Both are averaged over users. These match ``torchmetrics.retrieval.RetrievalRecall`` /
``RetrievalNormalizedDCG`` with ``top_k=K`` (recall is normalised by ``|T|``, not by
``min(K, |T|)``), except where torchmetrics differs by construction:

* torchmetrics scores a full score vector; it averages DCG over tied scores, while here the list
  is already ranked (ties are broken by :func:`topk_from_scores`: lower item id first);
* torchmetrics' recall ignores items whose score is ``<= 0``; here rank is all that matters;
* a target that is not in the catalogue (never scored) still counts in ``|T|`` here.

A user with no target gets 0 for every metric (torchmetrics' default ``empty_target_action="neg"``).
Padding (``-1``) and repeated ids in a list never count as hits (a repeat is not a second hit).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20, 50)


def metric_names(ks: Sequence[int] = DEFAULT_KS) -> list[str]:
    """Keys of a metrics dict in display order: ``recall@K, ndcg@K`` for each K."""
    return [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]


def hit_matrix(recs: np.ndarray, targets: Sequence[np.ndarray]) -> np.ndarray:
    """Which recommended ids are targets.

    Args:
        recs: int64 [B, Kmax] ranked item ids, ``-1`` = padding.
        targets: B arrays of target item ids (distinct ids; a duplicate counts once).

    Returns:
        bool [B, Kmax]: ``hits[b, j]`` is True when ``recs[b, j]`` is a target of user b and
        is that id's first occurrence in the row.
    """
    recs = np.asarray(recs, dtype=np.int64)
    if recs.ndim != 2 or len(recs) != len(targets):
        raise ValueError(f"recs must be [B, K] with B = len(targets) = {len(targets)}; got shape {recs.shape}")
    b, kmax = recs.shape
    if b == 0 or kmax == 0:
        return np.zeros((b, kmax), dtype=bool)
    lens = np.fromiter((len(t) for t in targets), dtype=np.int64, count=b)
    flat_t = np.concatenate([np.asarray(t, dtype=np.int64).ravel() for t in targets]) if lens.sum() else \
        np.empty(0, dtype=np.int64)
    # Encode (row, item) pairs as one int64 key so a single np.isin does the whole batch.
    # Items are shifted by +1 so that padding (-1) maps to 0, which no real target uses.
    width = int(max(recs.max(initial=0), flat_t.max(initial=0))) + 2
    rows = np.arange(b, dtype=np.int64)
    rec_key = rows[:, None] * width + (recs + 1)
    tgt_key = np.repeat(rows, lens) * width + (flat_t + 1)
    hits = np.isin(rec_key, tgt_key) & (recs >= 0)
    # Keep only the first occurrence of each id in a row so a repeated item is not a second hit.
    _, first = np.unique(rec_key.ravel(), return_index=True)
    is_first = np.zeros(b * kmax, dtype=bool)
    is_first[first] = True
    return hits & is_first.reshape(b, kmax)


def per_user_metrics(recs: np.ndarray, targets: Sequence[np.ndarray],
                     ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Recall@K and NDCG@K of every user.

    Args:
        recs: int64 [B, Kmax] ranked item ids (``-1`` = padding). K > Kmax is allowed: the
            missing ranks count as misses.
        targets: B arrays of distinct target ids.
        ks: cut-offs.

    Returns:
        ``{"recall@K": float64 [B], "ndcg@K": float64 [B], ...}``.
    """
    hits = hit_matrix(recs, targets).astype(np.float64)  # [B, Kmax]
    n_t = np.fromiter((len(np.unique(t)) for t in targets), dtype=np.float64, count=len(targets))
    kmax = max(max(ks), hits.shape[1])
    if hits.shape[1] < kmax:  # pad so every K can be sliced
        hits = np.pad(hits, ((0, 0), (0, kmax - hits.shape[1])))
    disc = 1.0 / np.log2(np.arange(kmax, dtype=np.float64) + 2.0)  # rank j (0-based) -> 1/log2(j+2)
    dcg = np.cumsum(hits * disc, axis=1)  # [B, kmax]
    idcg_cum = np.concatenate([[0.0], np.cumsum(disc)])  # idcg_cum[m] = ideal DCG with m hits
    safe = np.maximum(n_t, 1.0)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        n_hit = hits[:, :k].sum(axis=1)
        ideal = idcg_cum[np.minimum(n_t, k).astype(np.int64)]
        out[f"recall@{k}"] = np.where(n_t > 0, n_hit / safe, 0.0)
        out[f"ndcg@{k}"] = np.where(n_t > 0, dcg[:, k - 1] / np.where(ideal > 0, ideal, 1.0), 0.0)
    return out


def compute_metrics(recs: np.ndarray, targets: Sequence[np.ndarray],
                    ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over users (see :func:`per_user_metrics`); keys in display order."""
    per = per_user_metrics(recs, targets, ks)
    return {name: float(per[name].mean()) if len(targets) else 0.0 for name in metric_names(ks)}


def _exclude_mask(exclude: torch.Tensor | Sequence[np.ndarray], shape: tuple[int, int],
                  device: torch.device) -> torch.Tensor:
    """bool [B, N] mask from a mask or from per-row id lists (ids outside 0..N-1 are ignored)."""
    if isinstance(exclude, torch.Tensor):
        if exclude.shape != shape:
            raise ValueError(f"exclude mask has shape {tuple(exclude.shape)}, scores {shape}")
        return exclude.to(device=device, dtype=torch.bool)
    b, n = shape
    if len(exclude) != b:
        raise ValueError(f"exclude has {len(exclude)} rows, scores {b}")
    lens = [len(e) for e in exclude]
    flat = np.concatenate([np.asarray(e, dtype=np.int64).ravel() for e in exclude]) if sum(lens) else \
        np.empty(0, dtype=np.int64)
    rows = np.repeat(np.arange(b), lens)
    ok = (flat >= 0) & (flat < n)
    mask = torch.zeros(shape, dtype=torch.bool, device=device)
    mask[torch.as_tensor(rows[ok], device=device), torch.as_tensor(flat[ok], device=device)] = True
    return mask


def _select_with_ties(scores: torch.Tensor, kk: int, kth: torch.Tensor) -> torch.Tensor:
    """Exactly ``kk`` ids per row: all above ``kth`` [B, 1], then the lowest-id items equal to it."""
    above = scores > kth
    tied = scores == kth
    need = kk - above.sum(dim=1, keepdim=True)  # slots left for tied items
    # cumsum along ids ranks the tied items by id: keep the first `need` of them.
    chosen = above | (tied & (tied.cumsum(dim=1) <= need))
    return chosen.nonzero()[:, 1].view(-1, kk)


def topk_from_scores(scores: torch.Tensor, k: int,
                     exclude: torch.Tensor | Sequence[np.ndarray] | None = None) -> torch.Tensor:
    """The ``k`` best items per row, best first, with deterministic tie-breaking.

    ``torch.topk`` returns tied items in an unspecified (device-dependent) order, which would
    make metrics depend on the hardware. Here ties are broken by **lower item id first**:
    ``torch.topk`` takes the k+1 best; in rows where the (k+1)-th equals the k-th (the cut falls
    inside a run of ties) the kept set is rebuilt from everything strictly above the k-th score
    plus the lowest-id items equal to it. The kept items are then ordered by a stable descending
    sort of id-sorted items, so equal scores stay in id order. Rows without ties at the cut cost
    one ``torch.topk``; a row with ties costs a few O(N) passes.

    Args:
        scores: float [B, N], item ``i``'s score in column ``i`` (ranked in float32, or in float64 if given).
        k: how many items to return; ``k > N`` pads with ``-1``.
        exclude: items never returned: a bool mask [B, N], or B arrays of item ids (e.g. the
            user's history; ids outside ``0..N-1`` are ignored).

    Returns:
        int64 [B, k] item ids (on ``scores.device``); ``-1`` where fewer than k items are left
        after exclusion (items scored ``-inf`` or NaN count as excluded).
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be [B, N]; got shape {tuple(scores.shape)}")
    b, n = scores.shape
    scores = scores if scores.dtype == torch.float64 else scores.float()  # float64 keeps its precision
    if exclude is not None:
        scores = scores.masked_fill(_exclude_mask(exclude, (b, n), scores.device), float("-inf"))
    kk = min(k, n)
    if kk <= 0 or b == 0:
        return torch.full((b, max(k, 0)), -1, dtype=torch.long, device=scores.device)
    # One extra candidate tells whether the cut falls inside a run of ties.
    vals, idx = torch.topk(scores, min(kk + 1, n), dim=1)
    if torch.isnan(vals).any():  # topk ranks NaN first, so any NaN shows up here; treat it as excluded
        scores = scores.masked_fill(torch.isnan(scores), float("-inf"))
        vals, idx = torch.topk(scores, min(kk + 1, n), dim=1)
    kth = vals[:, kk - 1:kk]  # [B, 1]
    # Ambiguous rows: the (k+1)-th best equals the k-th, so topk's choice among the ties is arbitrary.
    ambiguous = vals[:, kk] == vals[:, kk - 1] if kk < n else torch.zeros(b, dtype=torch.bool, device=vals.device)
    idx = idx[:, :kk]
    if bool(ambiguous.any()):
        idx[ambiguous] = _select_with_ties(scores[ambiguous], kk, kth[ambiguous])
    idx = idx.sort(dim=1).values  # ascending ids, so the stable sort below keeps ties in id order
    order = torch.sort(scores.gather(1, idx), dim=1, descending=True, stable=True).indices
    top = idx.gather(1, order)
    top = top.masked_fill(torch.isneginf(scores.gather(1, top)), -1)  # excluded items are padding
    if k > kk:
        top = torch.cat([top, top.new_full((b, k - kk), -1)], dim=1)
    return top


# ------------------------------------------------------------------------ ranking-model AUC
def _rank_sum_auc(scores: np.ndarray, labels: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-group ROC AUC by the Mann-Whitney rank sum with average ranks for ties, vectorised.

    Returns (auc per group, valid per group): a group is valid when it holds both classes.
    ``group`` must hold dense ids 0..G-1.
    """
    g_count = int(group.max()) + 1 if len(group) else 0
    order = np.lexsort((scores, group))  # by group, then score
    g, s = group[order], scores[order]
    n = len(s)
    # runs of equal (group, score) share the average of their 1-based within-group ranks
    new_run = np.r_[True, (g[1:] != g[:-1]) | (s[1:] != s[:-1])] if n else np.zeros(0, bool)
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_len = np.diff(np.r_[run_start, n])
    group_start = np.r_[0, np.cumsum(np.bincount(g, minlength=g_count))][:-1]
    first_rank = run_start - group_start[g[run_start]] + 1
    avg_rank = (first_rank + (run_len - 1) / 2.0)[run_id]
    pos = labels[order].astype(bool)
    n_pos = np.bincount(g, weights=pos, minlength=g_count)
    n_all = np.bincount(g, minlength=g_count).astype(np.float64)
    n_neg = n_all - n_pos
    rank_pos = np.bincount(g, weights=np.where(pos, avg_rank, 0.0), minlength=g_count)
    valid = (n_pos > 0) & (n_neg > 0)
    auc = np.where(valid, (rank_pos - n_pos * (n_pos + 1) / 2.0) / np.where(valid, n_pos * n_neg, 1.0), np.nan)
    return auc, valid


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (ties count one half), equal to ``sklearn.metrics.roc_auc_score``; NaN with one class."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    a, _ = _rank_sum_auc(scores, labels, np.zeros(len(scores), dtype=np.int64))
    return float(a[0]) if len(a) else float("nan")


def gauc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC (Zhou et al., DIN, arXiv 1706.06978): per-user AUC weighted by the user's number of
    samples, over users with both classes; NaN when no user has both."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    _, dense = np.unique(np.asarray(groups), return_inverse=True)
    a, valid = _rank_sum_auc(scores, labels, dense.astype(np.int64))
    w = np.bincount(dense, minlength=len(a)).astype(np.float64) * valid
    return float(np.nansum(np.where(valid, a, 0.0) * w) / w.sum()) if w.sum() > 0 else float("nan")


def gauc_reference(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Plain per-group loop over sklearn-free pairwise counting (the check of :func:`gauc`)."""
    total, weight = 0.0, 0.0
    for gid in np.unique(groups):
        sel = groups == gid
        s, y = np.asarray(scores)[sel], np.asarray(labels)[sel].astype(bool)
        if y.all() or not y.any():
            continue
        p, q = s[y][:, None], s[~y][None, :]
        a = ((p > q).sum() + 0.5 * (p == q).sum()) / (len(p) * q.shape[1])
        total += a * sel.sum()
        weight += sel.sum()
    return total / weight if weight else float("nan")
