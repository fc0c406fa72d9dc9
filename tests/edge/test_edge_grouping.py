"""KMA on a toy layout with a known answer; distance-only and random grouping; the cost formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onerec.edge.grouping import (
    grouping_cost,
    kma_groups,
    kmeans_groups,
    model_signature,
    random_groups,
    similar_groups,
)
from onerec.errors import ConfigError


def _rectangle() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two devices at each corner of a 3 x 1 rectangle; the left column holds data X, the right Y.

    Distance alone pairs the columns (groups XX / YY). Balanced groups are the rows (bottom / top,
    within-group squared spread 9 each) or the diagonals and mixes (spread 10): KMA must pick rows.
    """
    corners = np.array([[0, 0], [0, 1], [3, 0], [3, 1]], dtype=float)
    jitter = np.array([[0.0, 0.0], [0.01, 0.0]])
    pos = (corners[:, None, :] + jitter[None]).reshape(8, 2)
    sig = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]).repeat(2, axis=0)
    left = pos[:, 0] < 1.5
    bottom = pos[:, 1] < 0.5
    return pos, sig, left, bottom


def _same_partition(assign: np.ndarray, mask: np.ndarray) -> bool:
    return bool(len(set(assign[mask])) == 1 and len(set(assign[~mask])) == 1 and assign[mask][0] != assign[~mask][0])


def test_distance_only_pairs_the_columns() -> None:
    pos, sig, left, _ = _rectangle()
    for seed in range(5):
        assert _same_partition(kmeans_groups(pos, 2, seed=seed), left)
        assert _same_partition(kma_groups(pos, sig, 2, balance=0.0, seed=seed), left)


def test_kma_balances_data_and_keeps_groups_close() -> None:
    pos, sig, _, bottom = _rectangle()
    for seed in range(5):
        assert _same_partition(kma_groups(pos, sig, 2, balance=5.0, seed=seed), bottom)


def test_similar_groups_pick_the_alike_centre_among_the_near_ones() -> None:
    """similar: k random devices are centres; every other device joins, of the ceil(k/2) centres nearest to it,
    the one with the closest signature (checked against a loop over the rule, and on a layout with a known answer)."""
    rng = np.random.default_rng(3)
    pos, sig = rng.random((30, 2)), rng.normal(size=(30, 4))
    for k in (1, 2, 4, 5):
        got = similar_groups(pos, sig, k, seed=7)
        centres = np.random.default_rng(7).choice(30, k, replace=False)
        for i in range(30):
            if i in centres:
                assert got[i] == list(centres).index(i)
                continue
            near = sorted(range(k), key=lambda g: (np.linalg.norm(pos[i] - pos[centres[g]]), g))[:-(-k // 2)]
            assert got[i] == min(near, key=lambda g: np.linalg.norm(sig[i] - sig[centres[g]])), (k, i)
    # with k = 2 a device has one candidate, its nearest centre, whatever its data
    line = np.array([[0.0, 0], [0.1, 0], [0.2, 0], [0.3, 0]])
    xy = np.array([[1.0, 0], [0, 1], [1, 0], [0, 1]])
    assign = similar_groups(line, xy, 2, seed=0)
    c = np.random.default_rng(0).choice(4, 2, replace=False)
    assert all(assign[d] == assign[c[int(np.argmin(np.abs(line[c, 0] - line[d, 0])))]] for d in range(4))
    with pytest.raises(ConfigError, match=r"edge\.n_groups"):
        similar_groups(line, xy, 5)


def test_grouping_cost_by_hand() -> None:
    pos, sig, left, bottom = _rectangle()
    pos = np.round(pos)  # exact corners: total variance 8 * (1.5^2 + 0.5^2) = 20
    samples = np.ones(8)
    # columns: spread 8 * 0.25 = 2 -> 2/20; group means X, Y vs overall (0.5, 0.5): 4 * 0.5 * 2 = 4 over s_m = 4
    assert grouping_cost(left.astype(np.int64), pos, sig, samples, 1.0) == pytest.approx(2 / 20 + 1.0)
    # rows: spread 8 * 2.25 = 18 -> 18/20, perfectly balanced signatures
    assert grouping_cost(bottom.astype(np.int64), pos, sig, samples, 3.0) == pytest.approx(18 / 20)


def test_equal_sizes_and_random_grouping() -> None:
    rng = np.random.default_rng(0)
    pos = rng.random((23, 2))
    for assign in (kmeans_groups(pos, 5), random_groups(23, 5, seed=3), kma_groups(pos, rng.random((23, 4)), 5)):
        sizes = np.bincount(assign, minlength=5)
        assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 23
    assert not np.array_equal(random_groups(23, 5, seed=1), random_groups(23, 5, seed=2))
    with pytest.raises(ConfigError, match=r"edge\.n_groups"):
        kmeans_groups(pos, 30)


def test_model_signature_keeps_directions() -> None:
    start = {"a": torch.zeros(50), "b": torch.zeros(3, 4)}
    up = {"a": torch.ones(50), "b": torch.ones(3, 4)}
    down = {"a": -torch.ones(50), "b": -torch.ones(3, 4)}
    s_up, s_down = model_signature(start, up, dim=16), model_signature(start, down, dim=16)
    assert s_up.shape == (16,) and np.allclose(s_up, -s_down)
    assert np.allclose(model_signature(start, start, dim=16), 0.0)
