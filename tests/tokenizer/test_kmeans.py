"""Lloyd's k-means and OneRec V1 balanced k-means: the fast paths against references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from onerec.errors import DataError
from onerec.tokenizer import (
    assignment_cost,
    balanced_kmeans,
    balanced_kmeans_reference,
    balanced_sizes,
    inertia,
    kmeans_plus_plus,
    nearest_centroid,
    nearest_centroid_reference,
)
from onerec.tokenizer.kmeans import auto_chunk, kmeans

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def _blobs(n: int = 2000, d: int = 8, centers: int = 10, seed: int = 0) -> np.ndarray:
    x, _ = make_blobs(n, n_features=d, centers=centers, cluster_std=1.0, center_box=(-20, 20), random_state=seed)
    return x.astype(np.float32)


# ---------------------------------------------------------------------------- plain k-means
def test_kmeans_shapes_dtypes_and_determinism() -> None:
    x = torch.randn(500, 6, generator=torch.Generator().manual_seed(0))
    c, a = kmeans(x, 12, iters=10, seed=3)
    assert c.shape == (12, 6) and c.dtype == torch.float32
    assert a.shape == (500,) and a.dtype == torch.int64
    c2, a2 = kmeans(x, 12, iters=10, seed=3)
    assert torch.equal(c, c2) and torch.equal(a, a2)
    # assign is the nearest centroid of the returned centroids
    assert torch.equal(a, nearest_centroid(x, c)[0])


def test_kmeans_float64_and_numpy_input() -> None:
    x = np.random.default_rng(0).normal(size=(300, 4))
    c, a = kmeans(x, 5, iters=5, seed=0)
    assert c.dtype == torch.float64 and a.shape == (300,)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_matches_sklearn_on_blobs(seed: int) -> None:
    x = _blobs(seed=seed)
    ours = inertia(x, kmeans(x, 10, iters=25, seed=0)[0])
    ref = KMeans(10, n_init=1, max_iter=25, random_state=0).fit(x).inertia_
    assert ours <= 1.03 * ref


def test_kmeans_close_to_sklearn_without_structure() -> None:
    x = np.random.default_rng(1).normal(size=(3000, 8)).astype(np.float32)
    ours = inertia(x, kmeans(x, 32, iters=25, seed=0)[0])
    ref = KMeans(32, n_init=1, max_iter=25, random_state=0).fit(x).inertia_
    assert abs(ours / ref - 1) < 0.03


def test_kmeans_beats_random_assignment() -> None:
    x = _blobs()
    c, a = kmeans(x, 10, iters=25, seed=0)
    rand = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(0))
    rand_centroids = torch.stack([torch.from_numpy(x)[rand == j].mean(0) for j in range(10)])
    assert assignment_cost(x, c, a) < 0.2 * assignment_cost(x, rand_centroids, rand)


def test_nearest_centroid_chunks_agree() -> None:
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(1000, 5, generator=g), torch.randn(17, 5, generator=g)
    a_full, d_full = nearest_centroid(x, c)
    a_chunk, d_chunk = nearest_centroid(x, c, chunk=7)
    assert torch.equal(a_full, a_chunk)
    torch.testing.assert_close(d_full, d_chunk)
    torch.testing.assert_close(d_full, torch.cdist(x, c).pow(2).min(1).values, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("n", "d", "k"), [(5003, 64, 256), (3001, 16, 40), (500, 8, 300)])
def test_cache_sized_chunks_assign_exactly_as_the_one_block_reference(n: int, d: int, k: int) -> None:
    """The CPU default (blocks of ~2^16 distances, several of them here, the last one partial) makes the
    same assignments as one [N, K] block, bit for bit, on points near several centroids at once."""
    g = torch.Generator().manual_seed(n)
    c = torch.randn(k, d, generator=g)
    x = c[torch.randint(0, k, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)
    chunk = auto_chunk(n, k, x.device)
    assert chunk < n  # the default really splits the rows
    a_ref, d_ref = nearest_centroid_reference(x, c)
    a, dist = nearest_centroid(x, c)
    assert torch.equal(a, a_ref) and torch.equal(dist, d_ref)
    assert torch.equal(kmeans(x, k, iters=3, seed=0)[1], kmeans(x, k, iters=3, seed=0, chunk=n)[1])


def test_empty_clusters_are_reseeded() -> None:
    x = _blobs(n=600, centers=6)
    init = torch.from_numpy(np.repeat(x[:1], 6, axis=0))  # six identical centres: five stay empty
    c, a = kmeans(x, 6, iters=20, seed=0, init=init)
    assert torch.bincount(a, minlength=6).min() > 0
    assert len(torch.unique(c, dim=0)) == 6


def test_kmeans_plus_plus_spreads_over_blobs() -> None:
    x = torch.from_numpy(_blobs(n=1000, centers=8, seed=4))
    labels, _ = nearest_centroid(x, kmeans_plus_plus(x, 8, seed=0))
    assert len(torch.unique(labels)) == 8


def test_kmeans_handles_all_identical_points() -> None:
    c, a = kmeans(torch.ones(50, 3), 4, iters=3, seed=0)
    assert torch.isfinite(c).all() and a.shape == (50,)


def test_too_few_points_names_the_fix() -> None:
    with pytest.raises(DataError, match="at most 5"):
        kmeans(torch.randn(5, 2), 8, iters=3, seed=0)
    with pytest.raises(DataError, match="at most 5"):
        balanced_kmeans(torch.randn(5, 2), 8, iters=3, seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kmeans_on_cuda_matches_cpu() -> None:
    x = torch.from_numpy(_blobs())
    c_cpu, a_cpu = kmeans(x, 10, iters=10, seed=0)
    c_gpu, a_gpu = kmeans(x, 10, iters=10, seed=0, device="cuda")
    assert a_gpu.is_cuda and (a_gpu.cpu() == a_cpu).float().mean() > 0.99
    assert abs(inertia(x, c_gpu.cpu()) / inertia(x, c_cpu) - 1) < 1e-3
    init = kmeans_plus_plus(x.double(), 10, seed=0)
    _, ab = balanced_kmeans(x.double(), 10, iters=5, seed=0, device="cuda", init=init)
    _, ab_ref = balanced_kmeans_reference(x.double(), 10, iters=5, seed=0, init=init)
    assert ab.is_cuda and torch.bincount(ab.cpu()).tolist() == balanced_sizes(len(x), 10)
    np.testing.assert_array_equal(ab.cpu().numpy(), ab_ref)


# ------------------------------------------------------------------------- balanced k-means
def test_balanced_sizes() -> None:
    assert balanced_sizes(10, 3) == [4, 3, 3]
    assert balanced_sizes(9, 3) == [3, 3, 3]
    assert sum(balanced_sizes(1001, 64)) == 1001


@pytest.mark.parametrize(("n", "k"), [(1000, 10), (1003, 64), (64, 64)])
def test_balanced_is_exactly_balanced(n: int, k: int) -> None:
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(n))
    c, a = balanced_kmeans(x, k, iters=5, seed=0)
    assert torch.bincount(a, minlength=k).tolist() == balanced_sizes(n, k)
    # centroids are the means of the returned assignment
    means = torch.stack([x[a == j].mean(0) for j in range(k)])
    torch.testing.assert_close(c, means, atol=1e-5, rtol=1e-5)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(n=st.integers(9, 400), k=st.integers(1, 24), d=st.integers(1, 4), iters=st.integers(1, 4),
       block=st.sampled_from([None, 1, 2, 3]), seed=st.integers(0, 2**16))
def test_balanced_fast_equals_reference(n: int, k: int, d: int, iters: int, block: int | None, seed: int) -> None:
    # At least 3 items per cluster: the two members of a 2-item cluster are exactly equidistant
    # from its mean, a real tie that the two distance formulas round differently (the fast one
    # uses ||x||^2 - 2 x.c, the reference sum((x - c)^2)). Exact ties are tested below.
    k = min(k, n // 3)
    x = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    init = kmeans_plus_plus(x, k, seed=seed)
    c_fast, a_fast = balanced_kmeans(x, k, iters=iters, seed=seed, init=init, block=block)
    c_ref, a_ref = balanced_kmeans_reference(x, k, iters=iters, seed=seed, init=init)
    np.testing.assert_array_equal(a_fast.numpy(), a_ref)
    np.testing.assert_allclose(c_fast.numpy(), c_ref, atol=1e-10)


@pytest.mark.parametrize(("n", "k", "block", "structured"),
                         [(3000, 16, None, True), (3000, 40, 5, False), (2000, 24, 2, True)])
def test_balanced_fast_equals_reference_on_larger_pools(n: int, k: int, block: int | None, structured: bool) -> None:
    # Pools large enough that clusters claim from per-row candidate lists (and fall back to
    # full rows when a list runs dry), which the small hypothesis cases rarely reach.
    x = torch.from_numpy(_blobs(n=n, d=4, centers=8)).double() if structured else \
        torch.randn(n, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    init = kmeans_plus_plus(x, k, seed=1)
    _, a_fast = balanced_kmeans(x, k, iters=3, seed=0, init=init, block=block)
    _, a_ref = balanced_kmeans_reference(x, k, iters=3, seed=0, init=init)
    np.testing.assert_array_equal(a_fast.numpy(), a_ref)


@pytest.mark.parametrize(("n", "block"), [(200, None), (200, 1), (200, 3), (3000, None), (3000, 4)])
def test_balanced_ties_go_to_the_lower_index(n: int, block: int | None) -> None:
    # Small integers: every distance is exact in float64 whatever the formula, so many ties
    # are real and both implementations must break them by item index.
    x = torch.randint(0, 3, (n, 2), generator=torch.Generator().manual_seed(0)).double()
    init = x[:10].clone()
    _, a_fast = balanced_kmeans(x, 10, iters=1, seed=0, init=init, block=block)
    _, a_ref = balanced_kmeans_reference(x, 10, iters=1, seed=0, init=init)
    np.testing.assert_array_equal(a_fast.numpy(), a_ref)


def test_balanced_default_init_matches_reference() -> None:
    x = torch.randn(120, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    _, a_fast = balanced_kmeans(x, 6, iters=6, seed=11)
    _, a_ref = balanced_kmeans_reference(x, 6, iters=6, seed=11)
    np.testing.assert_array_equal(a_fast.numpy(), a_ref)


def test_balanced_objective_is_sensible() -> None:
    x = _blobs(n=1000, centers=10)
    c, a = balanced_kmeans(x, 10, iters=15, seed=0)
    cb, _ = kmeans(x, 10, iters=15, seed=0)
    # equal-size blobs: balance costs little; far better than a random balanced split
    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(0)) % 10
    rand_c = torch.stack([torch.from_numpy(x)[perm == j].mean(0) for j in range(10)])
    assert assignment_cost(x, c, a) < 0.2 * assignment_cost(x, rand_c, perm)
    assert assignment_cost(x, c, a) >= inertia(x, cb) * 0.999
