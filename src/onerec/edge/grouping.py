"""Grouping devices under aggregators: KMA (E-Tree's "K-means and average accuracy"), distance only, random.

E-Tree (arXiv 2008.01553, Sec. on device clustering) groups devices by *network distance* and by *how
alike their data are*, with model similarity as the proxy for the data, because the data never leave
the devices. The paper names the method but our summary (``PAPERS.md``) does not fix its details, so
this is our reading, stated so it can be checked against the paper:

1. **K-means** on the devices' network positions gives ``k`` groups of close devices, made equal in
   size (a tree node's fan-out).
2. **Average** step: devices are swapped between groups (first-improvement passes) while that lowers

       cost = sum_d |x_d - c_g(d)|^2 / s_x  +  balance * sum_g n_g |m_g - m|^2 / s_m

   where x_d is a device's position, c_g its group's centroid, m_g the sample-weighted mean model
   signature of group g, m the overall mean, n_g the group's samples, and s_x, s_m the total
   variances (so both terms are unit-free). The second term asks every group's *average* data to look
   like everybody's -- each group aggregate then sees close to IID data, which is what lets frequent
   group aggregation help under non-IID data -- while the first keeps groups near each other.
   Swaps keep the group sizes. ``balance = 0`` is distance-only grouping.

A second reading, :func:`similar_groups` (``edge.grouping=similar``), follows a third party's notes on the paper
rather than our summary: ``k`` devices drawn at random are the groups' centres; every other device takes, among the
``ceil(k / 2)`` centres nearest to it in the plane, the one whose model behaves most like its own. Its groups hold
devices with *alike* data (KMA's "average" balances them instead), and their sizes are not fixed.

A device's *signature* is any vector that reflects its data through its model, e.g. the (projected)
change of its weights after a few local steps from a shared start (:func:`model_signature`).

Shapes: N = devices, K = groups, S = signature size.
"""

from __future__ import annotations

import numpy as np
import torch

from onerec.errors import ConfigError


def _check_groups(n_devices: int, n_groups: int) -> None:
    if not 1 <= n_groups <= n_devices:
        raise ConfigError(f"edge.n_groups={n_groups} must be between 1 and the {n_devices} devices. "
                          "Fix: lower the fan-out's group count or add devices")


def _balanced_assign(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Assign points to the nearest centre with room (capacities ceil / floor of N/K), most decided first."""
    n, k = len(points), len(centres)
    cap = np.full(k, n // k)
    cap[: n % k] += 1
    d2 = ((points[:, None, :] - centres[None]) ** 2).sum(-1)  # [N, K]
    srt = np.sort(d2, axis=1)
    regret = srt[:, 1] - srt[:, 0] if k > 1 else np.zeros(n)
    out = np.empty(n, dtype=np.int64)
    for i in np.argsort(-regret, kind="stable"):
        for g in np.argsort(d2[i], kind="stable"):
            if cap[g] > 0:
                out[i], cap[g] = g, cap[g] - 1
                break
    return out


def _kmeans_once(positions: np.ndarray, n_groups: int, iters: int, rng: np.random.Generator) -> np.ndarray:
    # k-means++ seeding: each next centre drawn with probability proportional to squared distance
    centres = [positions[rng.integers(len(positions))]]
    for _ in range(n_groups - 1):
        d2 = ((positions[:, None] - np.array(centres)[None]) ** 2).sum(-1).min(1)
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(positions), 1 / len(positions))
        centres.append(positions[rng.choice(len(positions), p=p)])
    assign = _balanced_assign(positions, np.array(centres))
    for _ in range(iters):
        new = _balanced_assign(positions, np.stack([positions[assign == g].mean(0) for g in range(n_groups)]))
        if np.array_equal(new, assign):
            break
        assign = new
    return assign


def _spread(assign: np.ndarray, positions: np.ndarray) -> float:
    return float(sum(((positions[assign == g] - positions[assign == g].mean(0)) ** 2).sum()
                     for g in range(int(assign.max()) + 1)))


def kmeans_groups(positions: np.ndarray, n_groups: int, *, iters: int = 50, restarts: int = 8,
                  seed: int = 0) -> np.ndarray:
    """Equal-size k-means on positions (k-means++ seeds, Lloyd steps with a capacity-respecting
    assignment; the lowest within-group spread of ``restarts`` runs).

    Returns:
        int64 [N] the group of each device (0..K-1), group sizes differ by at most one.
    """
    positions = np.asarray(positions, dtype=np.float64)
    _check_groups(len(positions), n_groups)
    rng = np.random.default_rng(seed)
    runs = [_kmeans_once(positions, n_groups, iters, rng) for _ in range(restarts)]
    return min(runs, key=lambda a: _spread(a, positions))


def random_groups(n_devices: int, n_groups: int, *, seed: int = 0) -> np.ndarray:
    """int64 [N]: devices dealt at random into K groups of (near) equal size."""
    _check_groups(n_devices, n_groups)
    return np.random.default_rng(seed).permutation(n_devices) % n_groups


def grouping_cost(assign: np.ndarray, positions: np.ndarray, signatures: np.ndarray, samples: np.ndarray,
                  balance: float) -> float:
    """The cost KMA lowers (module docstring): distance spread + balance * signature imbalance."""
    k = int(assign.max()) + 1
    onehot = np.eye(k)[assign]  # [N, K]
    count = onehot.sum(0)
    centre = (onehot.T @ positions) / count[:, None]
    spread = ((positions - centre[assign]) ** 2).sum() / max(((positions - positions.mean(0)) ** 2).sum(), 1e-12)
    w = onehot * samples[:, None]  # [N, K]
    n_g = w.sum(0)
    m = (samples @ signatures) / samples.sum()
    m_g = (w.T @ signatures) / np.maximum(n_g, 1e-12)[:, None]
    s_m = max(float(samples @ ((signatures - m) ** 2).sum(1)), 1e-12)
    return float(spread + balance * (n_g * ((m_g - m) ** 2).sum(1)).sum() / s_m)


def kma_groups(positions: np.ndarray, signatures: np.ndarray, n_groups: int, *, samples: np.ndarray | None = None,
               balance: float = 1.0, max_swaps: int = 10_000, seed: int = 0) -> np.ndarray:
    """KMA: equal-size k-means on positions, then swaps lowering :func:`grouping_cost`.

    Args:
        positions: float [N, 2] network positions.
        signatures: float [N, S] model signatures (proxy for each device's data).
        n_groups: K.
        samples: [N] training samples per device (weights of the group means); default all 1.
        balance: weight of the signature-imbalance term (0: distance only).

    Returns:
        int64 [N] the group of each device.
    """
    positions = np.asarray(positions, dtype=np.float64)
    signatures = np.asarray(signatures, dtype=np.float64).reshape(len(positions), -1)
    samples = np.ones(len(positions)) if samples is None else np.asarray(samples, dtype=np.float64)
    if balance < 0:
        raise ConfigError(f"edge.kma_balance={balance} must be >= 0. Fix: 0 (distance only) to ~10")
    assign = kmeans_groups(positions, n_groups, seed=seed)
    if balance == 0 or n_groups == 1:
        return assign
    cost = grouping_cost(assign, positions, signatures, samples, balance)
    swaps, improved = 0, True
    while improved and swaps < max_swaps:  # passes of first-improvement swaps until none helps
        improved = False
        for i in range(len(assign)):
            for j in np.flatnonzero(assign != assign[i]):
                assign[i], assign[j] = assign[j], assign[i]
                c = grouping_cost(assign, positions, signatures, samples, balance)
                if c < cost - 1e-12:
                    cost, improved, swaps = c, True, swaps + 1
                else:
                    assign[i], assign[j] = assign[j], assign[i]
    return assign


def similar_groups(positions: np.ndarray, signatures: np.ndarray, n_groups: int, *, seed: int = 0) -> np.ndarray:
    """Groups of near devices with alike models: ``n_groups`` devices drawn at random are the centres; every other
    device joins, among the ``ceil(n_groups / 2)`` centres nearest to it, the one whose signature is closest to its
    own (Euclidean; with one candidate, the nearest centre).

    Args:
        positions: float [N, 2] network positions.
        signatures: float [N, S] model signatures (proxy for each device's data).
        n_groups: K.

    Returns:
        int64 [N] the group of each device (0..K-1; group g's centre is the g-th device drawn).
    """
    positions = np.asarray(positions, dtype=np.float64)
    signatures = np.asarray(signatures, dtype=np.float64).reshape(len(positions), -1)
    _check_groups(len(positions), n_groups)
    centres = np.random.default_rng(seed).choice(len(positions), n_groups, replace=False)
    near = -(-n_groups // 2)
    dist = np.linalg.norm(positions[:, None] - positions[centres][None], axis=-1)  # [N, K]
    alike = np.linalg.norm(signatures[:, None] - signatures[centres][None], axis=-1)  # [N, K]
    candidates = np.argsort(dist, axis=1, kind="stable")[:, :near]  # [N, near]
    assign = candidates[np.arange(len(positions)), np.argmin(np.take_along_axis(alike, candidates, 1), axis=1)]
    assign[centres] = np.arange(n_groups)
    return assign.astype(np.int64)


def model_signature(start: dict[str, torch.Tensor], trained: dict[str, torch.Tensor], *, dim: int = 32,
                    seed: int = 0) -> np.ndarray:
    """float [dim]: the weight change ``trained - start``, flattened and randomly projected to ``dim``
    (a fixed Gaussian projection, the same for every device with the same seed, keeps distances)."""
    delta = torch.cat([(trained[k].detach() - start[k].detach()).flatten().float() for k in sorted(start)])
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(delta.numel(), dim, generator=gen) / dim ** 0.5
    return (delta @ proj).numpy().astype(np.float64)
