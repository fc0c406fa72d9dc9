"""Devices: every user on exactly one device, non-IID skew follows alpha, latency formula."""

from __future__ import annotations

import numpy as np
import pytest

from onerec.edge.devices import latency_matrix, latency_ms, partition_dirichlet, partition_iid, world_clusters
from onerec.errors import ConfigError


def _skew(devices, labels: np.ndarray) -> float:
    """Mean share of a device's users that belong to its largest cluster."""
    return float(np.mean([np.bincount(labels[u]).max() / len(u) for u in devices.users]))


def test_every_user_on_exactly_one_device() -> None:
    labels = np.repeat(np.arange(5), 40)
    for devices in (partition_iid(200, 30, seed=1), partition_dirichlet(labels, 30, alpha=0.2, seed=1)):
        everyone = np.concatenate(devices.users)
        assert sorted(everyone.tolist()) == list(range(200))
        assert devices.sizes.min() >= 1 and devices.positions.shape == (30, 2)
        assert (devices.device_of_user(200) >= 0).all()
    assert partition_dirichlet(labels, 30, alpha=0.05, min_users=5, seed=1).sizes.min() == 5


def test_small_alpha_is_skewed_and_iid_is_not() -> None:
    labels = np.repeat(np.arange(4), 500)
    skewed = _skew(partition_dirichlet(labels, 20, alpha=0.05, seed=0), labels)
    mixed = _skew(partition_dirichlet(labels, 20, alpha=100.0, seed=0), labels)
    iid = _skew(partition_iid(2000, 20, seed=0), labels)
    assert skewed > 0.9 and mixed < 0.4 and iid < 0.4  # 4 clusters: a uniform device is ~0.25-0.35


def test_devices_sit_near_their_home_cluster() -> None:
    labels = np.repeat(np.arange(4), 500)
    d = partition_dirichlet(labels, 40, alpha=0.05, spread=0.01, seed=0)
    same = d.home[:, None] == d.home[None, :]
    dist = np.linalg.norm(d.positions[:, None] - d.positions[None], axis=-1)
    assert dist[same].max() < dist[~same].min()


def test_latency_formula() -> None:
    assert latency_ms(np.array([0.0, 0.0]), np.array([0.3, 0.4])) == pytest.approx(55.0)
    lat = latency_matrix(np.array([[0.0, 0.0], [0.3, 0.4], [0.0, 1.0]]), base_ms=1.0, ms_per_unit=10.0)
    assert lat[0, 1] == pytest.approx(6.0) and lat[0, 2] == pytest.approx(11.0) and lat[1, 1] == 0.0
    assert np.allclose(lat, lat.T)


def test_world_clusters_folds_dominant_topic() -> None:
    interest = np.array([[0.1, 0.7, 0.2, 0.0], [0.0, 0.1, 0.1, 0.8]])
    assert world_clusters(interest, 2).tolist() == [1, 1] and world_clusters(interest, 4).tolist() == [1, 3]


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"edge\.n_devices"):
        partition_iid(5, 10)
    with pytest.raises(ConfigError, match=r"edge\.alpha"):
        partition_dirichlet(np.zeros(10, dtype=np.int64), 2, alpha=0.0)


def test_item_label_clusters_take_each_users_most_frequent_item_label() -> None:
    from onerec.edge.devices import item_label_clusters

    labels = np.array([0, 0, 1, 2, -1])  # item 4 has no label
    users = np.array([0, 1, 2, 0])
    items = [np.array([0, 2]), np.array([2, 3, 3, 4]), np.array([4]), np.array([1, 2, 2])]
    got = item_label_clusters(users, items, labels, n_users=4)
    # user 0: labels 0, 1, 0, 1, 1 -> 1; user 1: 1, 2, 2 -> 2; users 2 and 3: nothing labelled -> overall top (1)
    assert got.tolist() == [1, 2, 1, 1]
