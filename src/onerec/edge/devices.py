"""Edge devices: whose users each device holds, and where it sits in the network.

E-Tree (arXiv 2008.01553) trains across devices that keep their users' behaviour. A device here is
a set of users (its data never leaves it) and a point in a plane; the network latency between two
points grows with their distance. Two partitions of the users:

* **non-IID** -- users carry a cluster label (the simulated world's dominant interest, or a region);
  for every cluster, the shares going to each device are drawn from a Dirichlet(``alpha``), so a
  small ``alpha`` gives devices that hold one or two clusters (McMahan et al.'s pathological split,
  made continuous). Devices are placed near their main cluster's centre: regional interests are
  regional, which is what makes grouping by distance alone unbalanced.
* **IID** (the control) -- users dealt to devices uniformly at random, devices placed uniformly.

Shapes: U = users, N = devices, C = clusters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onerec.errors import ConfigError


@dataclass
class Devices:
    """N edge devices.

    Attributes:
        users: per device, the sorted user ids it holds (int64 arrays).
        positions: float [N, 2] points in the unit plane.
        home: int64 [N] the cluster most of a device's users belong to (-1 under IID).
    """

    users: list[np.ndarray]
    positions: np.ndarray
    home: np.ndarray

    @property
    def n(self) -> int:
        return len(self.users)

    @property
    def sizes(self) -> np.ndarray:
        """int64 [N] users per device."""
        return np.array([len(u) for u in self.users], dtype=np.int64)

    def device_of_user(self, n_users: int) -> np.ndarray:
        """int64 [U] the device of each user (-1: on no device)."""
        out = np.full(n_users, -1, dtype=np.int64)
        for d, u in enumerate(self.users):
            out[u] = d
        return out


def latency_ms(a: np.ndarray, b: np.ndarray, *, base_ms: float = 5.0, ms_per_unit: float = 100.0) -> np.ndarray:
    """One-way latency between points: ``base_ms + ms_per_unit * euclidean distance``.

    Args:
        a: float [..., 2]; b: float [..., 2] (broadcast against each other).

    Example: points (0, 0) and (0.3, 0.4) are 0.5 apart: 5 + 100 * 0.5 = 55 ms.
    """
    return base_ms + ms_per_unit * np.linalg.norm(np.asarray(a, float) - np.asarray(b, float), axis=-1)


def latency_matrix(positions: np.ndarray, **kw: float) -> np.ndarray:
    """float [N, N] one-way latencies between all devices (0 on the diagonal)."""
    lat = latency_ms(positions[:, None, :], positions[None, :, :], **kw)
    np.fill_diagonal(lat, 0.0)
    return lat


def _check(n_devices: int, n_users: int, alpha: float | None) -> None:
    if n_devices < 1:
        raise ConfigError(f"edge.n_devices={n_devices}: need at least one device. Fix: set edge.n_devices >= 1")
    if n_users < n_devices:
        raise ConfigError(f"edge.n_devices={n_devices} exceeds the {n_users} users, so some device would hold "
                          "nobody. Fix: use fewer devices or more users")
    if alpha is not None and not alpha > 0:
        raise ConfigError(f"edge.alpha={alpha}: the Dirichlet concentration must be > 0. Fix: e.g. edge.alpha=0.3 "
                          "(smaller: more skewed devices)")


def _fill_small(assign: np.ndarray, n_devices: int, min_users: int, rng: np.random.Generator) -> np.ndarray:
    """Top every device up to ``min_users`` users, each taken from the currently largest device."""
    counts = np.bincount(assign, minlength=n_devices)
    for d in np.flatnonzero(counts < min_users):
        while counts[d] < min_users:
            donor = int(np.argmax(counts))
            user = rng.choice(np.flatnonzero(assign == donor))
            assign[user] = d
            counts[donor] -= 1
            counts[d] += 1
    return assign


def partition_iid(n_users: int, n_devices: int, seed: int = 0) -> Devices:
    """Deal the users to devices uniformly at random (sizes differ by at most one); uniform positions."""
    _check(n_devices, n_users, None)
    rng = np.random.default_rng(seed)
    assign = rng.permutation(n_users) % n_devices
    users = [np.flatnonzero(assign == d) for d in range(n_devices)]
    return Devices(users, rng.random((n_devices, 2)), np.full(n_devices, -1, dtype=np.int64))


def partition_dirichlet(labels: np.ndarray, n_devices: int, *, alpha: float = 0.3, spread: float = 0.08,
                        min_users: int = 1, seed: int = 0) -> Devices:
    """Non-IID split: each cluster's users shared over devices by a Dirichlet(alpha) draw.

    Args:
        labels: int64 [U] cluster of each user (0..C-1).
        n_devices: N.
        alpha: Dirichlet concentration (0.1: nearly one cluster per device; 100: close to IID).
        spread: standard deviation of a device's position around its home cluster's centre; the C
            centres sit evenly on a circle of radius 0.35 around (0.5, 0.5).
        min_users: every device ends with at least this many users (taken from the largest devices).
        seed: random seed.
    """
    labels = np.asarray(labels, dtype=np.int64)
    _check(n_devices, len(labels), alpha)
    if min_users * n_devices > len(labels):
        raise ConfigError(f"edge.min_users={min_users} x {n_devices} devices exceeds the {len(labels)} users. "
                          "Fix: lower edge.min_users or edge.n_devices")
    rng = np.random.default_rng(seed)
    n_clusters = int(labels.max()) + 1
    assign = np.empty(len(labels), dtype=np.int64)
    for c in range(n_clusters):
        members = rng.permutation(np.flatnonzero(labels == c))
        share = rng.dirichlet(np.full(n_devices, alpha))
        assign[members] = rng.choice(n_devices, size=len(members), p=share)
    assign = _fill_small(assign, n_devices, max(min_users, 1), rng)
    users = [np.flatnonzero(assign == d) for d in range(n_devices)]
    home = np.array([np.bincount(labels[u], minlength=n_clusters).argmax() for u in users], dtype=np.int64)
    angle = 2 * np.pi * home / n_clusters
    centres = 0.5 + 0.35 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    positions = np.clip(centres + spread * rng.standard_normal((n_devices, 2)), 0.0, 1.0)
    return Devices(users, positions, home)


def world_clusters(interest: np.ndarray, n_clusters: int) -> np.ndarray:
    """int64 [U] a user's cluster from the simulated world's interests: the dominant topic, folded into
    ``n_clusters`` groups of topics (topic t -> t mod n_clusters)."""
    if n_clusters < 1:
        raise ConfigError(f"edge.n_clusters={n_clusters}: need at least one cluster. Fix: set edge.n_clusters >= 1")
    return (np.asarray(interest).argmax(axis=1) % n_clusters).astype(np.int64)


def item_label_clusters(user_ids: np.ndarray, items: list[np.ndarray], item_labels: np.ndarray,
                        n_users: int) -> np.ndarray:
    """int64 [U] a user's cluster from the labels of the items they interacted with: the most frequent label
    among their items (ties: the smaller label; a user with no labelled item: the most common label overall).

    For data sets without regions or a simulated world (Amazon: an item's top-level category under the root).

    Args:
        user_ids: int64 [R] the user of each row of ``items`` (e.g. the train split's rows).
        items: per row, that user's item ids (e.g. the train split's ``items``, never valid / test targets).
        item_labels: int64 [N_items] label of each item (0..C-1; -1: unknown, ignored).
        n_users: U.
    """
    item_labels = np.asarray(item_labels, dtype=np.int64)
    n_labels = int(item_labels.max()) + 1 if len(item_labels) else 0
    if n_labels < 1:
        raise ConfigError("no item has a label, so users cannot be clustered by their items' labels. Fix: give "
                          "the items a category (e.g. the Amazon text files' categories)")
    counts = np.zeros((n_users, n_labels), dtype=np.int64)
    for u, seq in zip(np.asarray(user_ids, dtype=np.int64), items):
        lab = item_labels[np.asarray(seq, dtype=np.int64)]
        counts[u] += np.bincount(lab[lab >= 0], minlength=n_labels)
    out = counts.argmax(axis=1)
    out[counts.sum(axis=1) == 0] = int(counts.sum(axis=0).argmax())
    return out.astype(np.int64)
