"""Swing item-item similarity (Yang et al., "Large Scale Product Graph Construction for
Recommendation in E-commerce", arXiv 2010.05525), the item->item pairs of the OneRec Technical
Report's collaborative alignment (arXiv 2506.13695, Sec. 2.1: "high Swing similarity").

Two items are Swing-similar when *pairs of users* both engaged with both of them, and a user pair
counts more the less else it shares::

    swing(i, j) = sum over user pairs {u, v} (u != v) with i, j in I_u and I_v of 1 / (alpha + |I_u & I_v|)

:func:`swing` computes it with sparse matrices: the user-user overlap ``C = A A^T`` gives every
user pair sharing at least two items and its weight ``1 / (alpha + C[u, v])``; the items the pair
shares are the row-wise product ``A[u] * A[v]`` and ``swing = sum_p w_p s_p s_p^T`` is one sparse
``P^T W P`` per chunk of pairs. :func:`swing_reference` is the definition in plain Python; the
tests check the two agree.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import scipy.sparse as sp

from onerec.errors import DataError


def _user_item_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    if users.shape != items.shape:
        raise DataError(f"users and items differ in length ({users.shape} vs {items.shape})")
    if len(items) and (items.min() < 0 or items.max() >= n_items or users.min() < 0 or users.max() >= n_users):
        raise DataError("user or item id out of range", fix="pass dense ids below n_users / n_items")
    a = sp.csr_matrix((np.ones(len(users), dtype=np.float64), (users, items)), shape=(n_users, n_items))
    a.sum_duplicates()
    a.data[:] = 1.0  # engagement is binary: repeats count once
    return a


def swing(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, *, alpha: float = 1.0,
          chunk_pairs: int = 200_000) -> sp.csr_matrix:
    """Swing similarity of every item pair as a symmetric sparse ``[n_items, n_items]`` matrix
    (zero diagonal) from (user, item) engagement events."""
    a = _user_item_matrix(users, items, n_users, n_items)
    overlap = sp.triu(a @ a.T, k=1).tocoo()  # |I_u & I_v| for u < v
    keep = overlap.data >= 2  # a pair must share two items to link any item pair
    pu, pv, pc = overlap.row[keep], overlap.col[keep], overlap.data[keep]
    out = sp.csr_matrix((n_items, n_items), dtype=np.float64)
    for s in range(0, len(pu), chunk_pairs):
        sl = slice(s, s + chunk_pairs)
        shared = a[pu[sl]].multiply(a[pv[sl]]).tocsr()  # [pairs, items]: the items each pair shares
        weighted = sp.diags(1.0 / (alpha + pc[sl])) @ shared
        out = out + (shared.T @ weighted).tocsr()
    out.setdiag(0.0)
    out.eliminate_zeros()
    return out.tocsr()


def swing_reference(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, *,
                    alpha: float = 1.0) -> np.ndarray:
    """The definition, pair by pair in plain Python (dense result; for tests on small data)."""
    sets: dict[int, set[int]] = {}
    for u, i in zip(np.asarray(users).tolist(), np.asarray(items).tolist()):
        sets.setdefault(u, set()).add(i)
    by_item: dict[int, set[int]] = {}
    for u, its in sets.items():
        for i in its:
            by_item.setdefault(i, set()).add(u)
    out = np.zeros((n_items, n_items))
    for i in range(n_items):
        for j in range(n_items):
            if i == j:
                continue
            both = sorted(by_item.get(i, set()) & by_item.get(j, set()))
            for u, v in combinations(both, 2):
                out[i, j] += 1.0 / (alpha + len(sets[u] & sets[v]))
    return out


def top_neighbours(sim: sp.csr_matrix, k: int, min_score: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` most similar items of each item: (anchor, neighbour, score) arrays, scores > min_score."""
    sim = sim.tocsr()
    anchors, neigh, scores = [], [], []
    for i in range(sim.shape[0]):
        s, e = sim.indptr[i], sim.indptr[i + 1]
        if e == s:
            continue
        cols, vals = sim.indices[s:e], sim.data[s:e]
        order = np.argsort(-vals, kind="stable")[:k]
        order = order[vals[order] > min_score]
        anchors.append(np.full(len(order), i, dtype=np.int64))
        neigh.append(cols[order].astype(np.int64))
        scores.append(vals[order])
    if not anchors:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    return np.concatenate(anchors), np.concatenate(neigh), np.concatenate(scores)
