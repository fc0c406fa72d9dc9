"""K-means for semantic IDs: Lloyd's k-means and OneRec V1's balanced k-means (Algorithm 1).

Shapes: N = items (points), D = dimension, K = clusters (codebook size).

Everything runs in torch on the device of the input (or ``device=``), so the same code runs on
CPU and CUDA. Squared-Euclidean distances are never materialised as a full ``[N, K]`` matrix:
they are computed ``chunk`` rows at a time as ``||x||^2 - 2 x c^T + ||c||^2`` with one matmul
per chunk, so 1M x 256 points with K = 8192 need about 1 GB for the points plus ~128 MB of
scratch. On CPU the blocks are much smaller than that, sized to stay in cache
(:func:`auto_chunk`): :func:`nearest_centroid` then equals :func:`nearest_centroid_reference`
(one block of all rows, the plain formula) and is faster.

Three entry points:

* :func:`kmeans` -- Lloyd's algorithm with k-means++ seeding on a subsample.
* :func:`balanced_kmeans` -- OneRec V1 (arXiv 2502.18965) Algorithm 1, fast torch version.
* :func:`balanced_kmeans_reference` -- the same algorithm as a literal numpy loop, for tests.

The two balanced versions make the same assignment given the same initial centroids (ties
broken by the lower item index in both); ``tests/tokenizer/test_kmeans.py`` checks this. The
one exception is distances equal in exact arithmetic but rounded differently by the two
formulas (e.g. both members of a 2-item cluster are equidistant from its mean): such a tie may
go either way.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from onerec.errors import DataError

# Elements of one distance block (chunk rows x K): 2^25 float32 = 128 MB of scratch.
_BLOCK_ELEMENTS = 1 << 25
# On CPU, elements of one block of nearest_centroid: 2^16 float32 = 256 KB, so the block that addmm
# writes (its bias copied in first) and the min that reads it back stay in a core's L2 cache instead
# of streaming 100 MB through memory twice (100k x 256); at least _CPU_MIN_ROWS rows, so that
# each block's matmul still reuses the centroids it loads (large K).
_CPU_BLOCK_ELEMENTS = 1 << 16
_CPU_MIN_ROWS = 64
# k-means++ runs on at most this many sampled points (or 2K when K is larger), because its K
# sequential passes over all N points would dominate the whole fit at N = 1M, K = 8192.
_INIT_SAMPLE = 16_384
# Clusters per distance block in balanced k-means (see balanced_kmeans' ``block``).
_BALANCED_BLOCK = 32


def auto_chunk(n: int, k: int, device: str | torch.device | None = None) -> int:
    """Rows per distance block: a ``[rows, K]`` block of about 2^25 elements, or on CPU (``device``
    None or a CPU) a cache-sized one of about 2^16 elements (at least 64 rows)."""
    if device is None or torch.device(device).type == "cpu":
        return max(1, min(n, max(_CPU_MIN_ROWS, _CPU_BLOCK_ELEMENTS // max(k, 1))))
    return max(1, min(n, _BLOCK_ELEMENTS // max(k, 1)))


def _check_k(n: int, k: int) -> None:
    if k < 1:
        raise DataError(f"k-means needs at least one cluster, got k={k}", fix="use a codebook size >= 1")
    if n < k:
        raise DataError(f"{n} points but {k} clusters: k-means needs at least as many points as clusters",
                        fix=f"lower the codebook size (tokenizer.codebook_size) to at most {n}")


def _prepare(x: Tensor | np.ndarray, device: str | torch.device | None) -> Tensor:
    """As a floating 2-D tensor on ``device`` (float32 unless it already is floating)."""
    x = torch.as_tensor(x)
    if x.ndim != 2:
        raise DataError(f"expected a 2-D array of points [N, D], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    return x.to(device) if device is not None else x


def sq_norms(x: Tensor) -> Tensor:
    """Row-wise squared L2 norms. ``[N, D] -> [N]``."""
    return torch.einsum("nd,nd->n", x, x)


def nearest_centroid(x: Tensor, centroids: Tensor, *, chunk: int | None = None,
                     x_sq: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Index of and squared distance to the nearest centroid of every point.

    Args:
        x: ``[N, D]`` points.
        centroids: ``[K, D]``, same dtype and device as ``x``.
        chunk: rows per distance block (default :func:`auto_chunk`).
        x_sq: optional precomputed ``sq_norms(x)``, ``[N]``.

    Returns:
        ``assign`` int64 ``[N]`` (lowest index on ties) and ``dist`` ``[N]`` (clamped at 0).
    """
    n, k = x.shape[0], centroids.shape[0]
    chunk = min(n, chunk or auto_chunk(n, k, x.device))
    x_sq = sq_norms(x) if x_sq is None else x_sq
    c_sq = sq_norms(centroids)
    c_t = centroids.T
    assign = torch.empty(n, dtype=torch.long, device=x.device)
    best = torch.empty(n, dtype=x.dtype, device=x.device)
    part = torch.empty(chunk, k, dtype=x.dtype, device=x.device)  # one block, reused: no allocation per chunk
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        # ||x||^2 is constant per row, so the argmin only needs ||c||^2 - 2 x.c (one addmm).
        block = torch.addmm(c_sq, x[s:e], c_t, alpha=-2.0, out=part[:e - s])
        torch.min(block, dim=1, out=(best[s:e], assign[s:e]))
    return assign, best.add_(x_sq).clamp_min_(0.0)


def nearest_centroid_reference(x: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`nearest_centroid` in one block of all N rows: the plain formula, for tests and benchmarks.

    Same arithmetic per element (``addmm`` of ``||c||^2 - 2 x.c``, then the row minimum), so both give
    the same assignments; the ``[N, K]`` block is far larger than any cache (100 MB at 100k x 256),
    which is what the chunked version avoids. Shapes as in :func:`nearest_centroid`.
    """
    part = torch.addmm(sq_norms(centroids), x, centroids.T, alpha=-2.0)  # [N, K]
    best, assign = part.min(dim=1)
    return assign, (best + sq_norms(x)).clamp_min_(0.0)


def inertia(x: Tensor | np.ndarray, centroids: Tensor | np.ndarray, *, chunk: int | None = None) -> float:
    """Sum over points of the squared distance to the nearest centroid (k-means objective).

    Args:
        x: ``[N, D]`` points.
        centroids: ``[K, D]``.

    Returns:
        The objective as a Python float, accumulated in float64.
    """
    x = _prepare(x, None)
    c = torch.as_tensor(centroids).to(device=x.device, dtype=x.dtype)
    _, dist = nearest_centroid(x, c, chunk=chunk)
    return float(dist.double().sum())


def assignment_cost(x: Tensor | np.ndarray, centroids: Tensor | np.ndarray, assign: Tensor | np.ndarray) -> float:
    """Sum of squared distances of each point to the centroid it is *assigned* to (not the nearest).

    For balanced k-means, whose assignment is not nearest-centroid, this is the objective.
    Shapes: ``x [N, D]``, ``centroids [K, D]``, ``assign [N]``.
    """
    x = _prepare(x, None)
    c = torch.as_tensor(centroids).to(device=x.device, dtype=x.dtype)
    a = torch.as_tensor(assign).to(device=x.device, dtype=torch.long)
    return float(sq_norms(x - c[a]).double().sum())


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run a loop of many small sequential torch ops on one CPU thread (no-op on other devices).

    Each op of k-means++'s K steps touches ~1e5 elements: too little to gain from threads,
    while every parallel region pays a fork/join that on a busy, oversubscribed CPU stalls for
    milliseconds (measured on a loaded 2-core box: K=256 seeding took 9.5 s on 2 threads and
    ~1 s on one). The previous thread count is restored; the setting is process-wide, so other
    Python threads running torch meanwhile also run on one thread.
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def kmeans_plus_plus(x: Tensor, k: int, *, seed: int, sample: int | None = None, trials: int | None = None) -> Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007) on a random subsample of the points.

    Each step draws ``trials`` candidates with probability proportional to their squared
    distance to the nearest centre chosen so far, and keeps the one that lowers the potential
    most (the greedy variant the k-means++ paper suggests; ``2 + ln K`` trials as in
    scikit-learn). Plain one-draw k-means++ too often puts two centres in one cluster. To
    scale to millions of points the seeding runs on ``sample`` points only (default
    ``max(16384, 2K)``); Lloyd iterations on all points then refine it. Random numbers come
    from a CPU generator seeded with ``seed`` and the draws are inverse-CDF searches on the
    device, so the result is deterministic and needs no host sync.

    Args:
        x: ``[N, D]`` points, N >= K.
        k: number of centres K.
        seed: random seed.
        sample: number of points to seed from (clipped to ``[K, N]``).
        trials: candidates per step (default ``2 + int(ln K)``).

    Returns:
        ``[K, D]`` initial centroids (rows of ``x``), same dtype and device as ``x``.
    """
    n = x.shape[0]
    _check_k(n, k)
    gen = torch.Generator().manual_seed(seed)
    m = min(n, max(sample or max(_INIT_SAMPLE, 2 * k), k))
    trials = trials or 2 + int(np.log(k))
    pool = x[torch.randperm(n, generator=gen)[:m].to(x.device)] if m < n else x
    u = torch.rand(k, trials, generator=gen, dtype=torch.float64).to(x.device)
    with _one_cpu_thread(x.device):
        return pool[_greedy_seeding(pool, u)]


def _greedy_seeding(pool: Tensor, u: Tensor) -> Tensor:
    """Indices of K greedy k-means++ centres among ``pool [m, D]``, from uniforms ``u [K, trials]``."""
    k, m = u.shape[0], pool.shape[0]
    pool_sq = sq_norms(pool)
    chosen = torch.empty(k, dtype=torch.long, device=pool.device)
    chosen[0] = (u[0, 0] * m).long().clamp_max(m - 1)
    best = (pool_sq - 2.0 * (pool @ pool[chosen[0]]) + pool_sq[chosen[0]]).clamp_min(0.0)  # [m]
    for i in range(1, k):
        cdf = torch.cumsum(best.double(), 0)
        # A point at distance 0 (already chosen, or a duplicate) adds nothing to the CDF and
        # cannot be drawn unless every distance is 0 (then the last point is taken).
        cand = torch.searchsorted(cdf, u[i] * cdf[-1], right=True).clamp_max(m - 1)  # [trials]
        d = torch.addmm(pool_sq[cand].unsqueeze(1), pool[cand], pool.T, alpha=-2.0) + pool_sq  # [trials, m]
        after = torch.minimum(best, d.clamp_min(0.0))
        pick = after.double().sum(dim=1).argmin()  # the candidate leaving the smallest potential
        chosen[i] = cand[pick]
        best = after[pick]
    return chosen


def cluster_sums(x: Tensor, assign: Tensor, k: int) -> Tensor:
    """Sum of the points of every cluster. ``x [N, D]``, ``assign [N]`` -> ``[K, D]``.

    Computed as ``onehot(assign)^T @ x`` with a sparse ``[K, N]`` matrix: on a busy 2-core CPU
    this measured ~4x faster than ``index_add_`` at 1M x 256 and far faster on small inputs
    (where multi-threaded ``index_add_`` stalls), and it runs on CUDA too.
    """
    n = x.shape[0]
    idx = torch.stack([assign, torch.arange(n, device=x.device)])
    onehot = torch.sparse_coo_tensor(idx, torch.ones(n, dtype=x.dtype, device=x.device), (k, n),
                                     check_invariants=False)  # built valid here; skip the check (and its warning)
    return torch.sparse.mm(onehot, x)


def _update_centroids(x: Tensor, assign: Tensor, dist: Tensor, centroids: Tensor) -> Tensor:
    """Cluster means; an empty cluster is re-seeded with one of the points farthest from its centroid.

    Shapes: ``x [N, D]``, ``assign [N]``, ``dist [N]`` (to the assigned centroid), ``centroids [K, D]``.
    """
    k = centroids.shape[0]
    sums = cluster_sums(x, assign, k)
    counts = torch.bincount(assign, minlength=k)
    new = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
    empty = torch.nonzero(counts == 0).flatten()
    if empty.numel():
        # Farthest points are the worst served; moving an empty centre onto them lowers the
        # objective the most (the usual remedy, as in faiss and scikit-learn).
        far = torch.topk(dist, empty.numel()).indices
        new[empty] = x[far]
    return new


def kmeans(x: Tensor | np.ndarray, k: int, *, iters: int, seed: int, device: str | torch.device | None = None,
           chunk: int | None = None, init: Tensor | None = None, init_sample: int | None = None
           ) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding, chunked distances and empty-cluster re-seeding.

    Runs at most ``iters`` assign/update rounds, stopping early once the assignment no longer
    changes, then one final assignment so that ``assign`` matches the returned centroids.

    Args:
        x: ``[N, D]`` points (tensor or array; integers are cast to float32).
        k: number of clusters K (N >= K).
        iters: maximum Lloyd iterations.
        seed: random seed of the initialisation (the result is deterministic given it).
        device: where to compute (default: the device of ``x``).
        chunk: rows per distance block (default :func:`auto_chunk`: cache-sized on CPU).
        init: optional ``[K, D]`` initial centroids instead of k-means++.
        init_sample: points used by k-means++ (default ``max(16384, 2K)``).

    Returns:
        ``centroids [K, D]`` (dtype of ``x``) and ``assign`` int64 ``[N]`` (nearest centroid),
        both on the compute device.
    """
    x = _prepare(x, device)
    _check_k(x.shape[0], k)
    c = kmeans_plus_plus(x, k, seed=seed, sample=init_sample) if init is None else torch.as_tensor(init).to(x).clone()
    x_sq = sq_norms(x)
    prev: Tensor | None = None
    for _ in range(iters):
        assign, dist = nearest_centroid(x, c, chunk=chunk, x_sq=x_sq)
        if prev is not None and torch.equal(assign, prev):
            return c, assign  # converged: c is already the mean of this assignment
        c = _update_centroids(x, assign, dist, c)
        prev = assign
    assign, _ = nearest_centroid(x, c, chunk=chunk, x_sq=x_sq)
    return c, assign


# --------------------------------------------------------------------------- balanced
def balanced_sizes(n: int, k: int) -> list[int]:
    """Cluster sizes of balanced k-means: ``ceil(N/K)`` for the first ``N mod K`` clusters, else ``floor``."""
    base, extra = divmod(n, k)
    return [base + 1 if j < extra else base for j in range(k)]


def _smallest(dist: np.ndarray, items: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` items with the smallest (distance, item index).

    Shapes: ``dist [R]``, ``items [R]`` (item indices, any order); returns ``[size]`` indices.
    """
    cut = np.partition(dist, size - 1)[size - 1]
    below = dist < cut
    # Items exactly at the cut: the lowest indices fill the cluster, as a stable sort by
    # (distance, index) would; this is what keeps us identical to the reference.
    ties = np.sort(items[dist == cut])[: size - int(below.sum())]
    return np.concatenate([items[below], ties])


def _candidates(d: Tensor, free: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every row of ``d``, all free columns below a row threshold chosen to keep about ``want``.

    The threshold is a quantile of an evenly spaced sample of the free columns. Whatever it is,
    *every* free column strictly below it is kept, which is what makes the claims exact; a full
    top-k would cost ~4x more (it is a partial sort of the whole ``[b, R]`` block).

    Args:
        d: ``[b, R]`` distances (taken columns set to +inf).
        free: ``[R]`` bool, the free columns.
        want: target number of candidates per row.

    Returns:
        ``start [b + 1]`` offsets, ``pos [C]`` column of each candidate (grouped by row), and
        ``dist [C]`` its distance.
    """
    free_cols = np.flatnonzero(free)
    sample = torch.from_numpy(free_cols[:: max(1, len(free_cols) // 4096)]).to(d.device)
    rank = min(len(sample), math.ceil(want * len(sample) / len(free_cols)))
    cut = torch.kthvalue(d[:, sample], rank, dim=1).values  # [b]
    rows, pos = torch.nonzero(d < cut.unsqueeze(1), as_tuple=True)
    dist = d[rows, pos].cpu().numpy()
    start = np.searchsorted(rows.cpu().numpy(), np.arange(d.shape[0] + 1))
    return start, pos.cpu().numpy(), dist


def _claim_block(d: Tensor, pool: np.ndarray, free: np.ndarray, taken: np.ndarray,
                 sizes: list[int]) -> list[np.ndarray]:
    """Clusters of one block claim, in order, their nearest free items (Algorithm 1 lines 5-9).

    Each cluster first looks only at its candidates: every item free at the block start whose
    distance is below a per-row threshold (about ``2 * size + 32`` of them). If enough of them
    are still free when its turn comes, its ``size`` nearest free candidates are exactly its
    ``size`` nearest free items (everything outside is farther); otherwise, or when the pool
    is small, the full row is scanned. Either way the result is exact.

    Args:
        d: ``[b, R]`` distances of the block's clusters to the pool (taken items set to +inf).
        pool: ``[R]`` item index of every column.
        free: ``[R]`` bool, the pool items not yet taken when the block starts.
        taken: ``[N]`` bool, updated in place.
        sizes: the b cluster sizes.

    Returns:
        The items each of the b clusters claimed.
    """
    want = 2 * max(sizes) + 32
    use_candidates = 4 * want < int(free.sum())
    if use_candidates:
        start, pos, dist = _candidates(d, free, want)
    rows = None if use_candidates else d.cpu().numpy()
    claims = []
    for j, size in enumerate(sizes):
        if use_candidates:
            items, cd = pool[pos[start[j]:start[j + 1]]], dist[start[j]:start[j + 1]]
            ok = ~taken[items]
            if int(ok.sum()) >= size:
                chosen = _smallest(cd[ok], items[ok], size)
                taken[chosen] = True
                claims.append(chosen)
                continue
            rows = d.cpu().numpy() if rows is None else rows
        ok = ~taken[pool]
        chosen = _smallest(rows[j][ok], pool[ok], size)
        taken[chosen] = True
        claims.append(chosen)
    return claims


def _balanced_assign(x: Tensor, x_sq: Tensor, c: Tensor, sizes: list[int], block: int) -> Tensor:
    """One pass of Algorithm 1's assignment: cluster 0, 1, ... each claims its nearest unassigned items.

    Distances of a block of clusters to a pool of items come from one matmul. The pool starts
    as all items and is compacted to the free ones whenever fewer than half of it is free, so
    later blocks do less work without re-gathering ``x`` for every block.

    Shapes: ``x [N, D]``, ``x_sq [N]``, ``c [K, D]``; returns ``assign`` int64 ``[N]``.
    """
    n, k = x.shape[0], c.shape[0]
    assign = np.empty(n, dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    pool, xp, xp_sq = np.arange(n), x, x_sq
    for k0 in range(0, k, block):
        free = ~taken[pool]
        if 2 * int(free.sum()) < len(pool):
            pool = pool[free]
            idx = torch.from_numpy(pool).to(x.device)
            xp, xp_sq, free = x[idx], x_sq[idx], np.ones(len(pool), dtype=bool)
        cb = c[k0:k0 + block]
        # ||x||^2 - 2 x.c: the ||c||^2 term is constant along a row, and every comparison below
        # is within one row (one cluster), so leaving it out changes no claim and saves a pass.
        d = torch.addmm(xp_sq, cb, xp.T, alpha=-2.0)  # [b, R]
        # The claims are many short memory-bound passes: threads gain little there and stall
        # on a busy CPU (4.5x slower on 2 threads in our runs), unlike the matmul above.
        with _one_cpu_thread(x.device):
            if not free.all():
                d.masked_fill_(torch.from_numpy(~free).to(x.device), float("inf"))
            claims = _claim_block(d, pool, free, taken, sizes[k0:k0 + block])
        for j, items in enumerate(claims):
            assign[items] = k0 + j
    return torch.from_numpy(assign).to(x.device)


def _means(x: Tensor, assign: Tensor, k: int) -> Tensor:
    """Cluster means ``[K, D]`` (every balanced cluster is non-empty)."""
    return cluster_sums(x, assign, k) / torch.bincount(assign, minlength=k).unsqueeze(1).to(x.dtype)


def balanced_kmeans(x: Tensor | np.ndarray, k: int, *, iters: int, seed: int, device: str | torch.device | None = None,
                    init: Tensor | None = None, init_sample: int | None = None, block: int | None = None
                    ) -> tuple[Tensor, Tensor]:
    """Balanced k-means, OneRec V1 (arXiv 2502.18965) Algorithm 1, fast torch version.

    Every iteration starts with all items unassigned; cluster 0, then 1, ..., K-1 each claims
    its ``w`` nearest still-unassigned items (``w = N/K``: ``ceil`` for the first ``N mod K``
    clusters, ``floor`` for the rest), then every centroid becomes the mean of its items. It
    stops after ``iters`` iterations or when the assignment repeats. The paper initialises
    centroids "randomly"; we use the same k-means++ seeding as :func:`kmeans`.

    Args:
        x: ``[N, D]`` points.
        k: number of clusters K (N >= K).
        iters: maximum iterations (at least one is run).
        seed: random seed of the initialisation.
        device: where to compute (default: the device of ``x``).
        init: optional ``[K, D]`` initial centroids.
        init_sample: points used by k-means++.
        block: clusters whose distances are computed in one matmul (default: 32, fewer when
            32 x N would pass 2^25 elements). Larger blocks stream ``x`` fewer times but make
            late clusters of a block find their candidates taken more often (then they scan
            the full row); 32 was fastest at 100k x 64 and 1M x 256 with K = 256.

    Returns:
        ``centroids [K, D]`` (the means of the final assignment) and ``assign`` int64 ``[N]``
        with exactly ``balanced_sizes(N, K)[j]`` items in cluster j.
    """
    x = _prepare(x, device)
    n = x.shape[0]
    _check_k(n, k)
    c = kmeans_plus_plus(x, k, seed=seed, sample=init_sample) if init is None else torch.as_tensor(init).to(x).clone()
    sizes = balanced_sizes(n, k)
    block = block or max(1, min(k, _BALANCED_BLOCK, _BLOCK_ELEMENTS // n))
    x_sq = sq_norms(x)
    prev: Tensor | None = None
    for _ in range(max(iters, 1)):  # at least one assignment, so that iters=0 still balances
        assign = _balanced_assign(x, x_sq, c, sizes, block)
        c = _means(x, assign, k)  # Algorithm 1 line 8
        if prev is not None and torch.equal(assign, prev):
            break  # "until convergence"
        prev = assign
    return c, assign


def balanced_kmeans_reference(x: np.ndarray | Tensor, k: int, *, iters: int, seed: int,
                              init: np.ndarray | Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Literal numpy transcription of OneRec V1 Algorithm 1 (slow: for small N and tests).

    Same contract as :func:`balanced_kmeans`; returns numpy arrays ``centroids [K, D]`` and
    ``assign`` int64 ``[N]``. Distances are computed directly as ``sum((x - c)^2)`` and sorted
    stably, so ties go to the lower item index.
    """
    xs = np.asarray(torch.as_tensor(x).cpu().numpy())
    if not np.issubdtype(xs.dtype, np.floating):
        xs = xs.astype(np.float32)
    n = xs.shape[0]
    _check_k(n, k)
    if init is None:
        init = kmeans_plus_plus(torch.from_numpy(xs), k, seed=seed)
    c = np.array(torch.as_tensor(init).cpu().numpy(), dtype=xs.dtype)
    sizes = balanced_sizes(n, k)
    prev = None
    for _ in range(max(iters, 1)):
        assign = np.empty(n, dtype=np.int64)
        unassigned = np.arange(n)  # line 4: U <- V
        for j in range(k):  # line 5: for each cluster
            d = ((xs[unassigned] - c[j]) ** 2).sum(axis=1)
            mine = unassigned[np.argsort(d, kind="stable")[: sizes[j]]]  # lines 6-7
            assign[mine] = j
            c[j] = xs[mine].mean(axis=0)  # line 8
            unassigned = np.setdiff1d(unassigned, mine, assume_unique=True)  # line 9
        if prev is not None and np.array_equal(assign, prev):
            break
        prev = assign
    return c, assign
