"""Shared fixtures: small deterministic datasets built in memory (no files, no downloads)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from onerec.data.schema import make_dataset
from onerec.data.splits import make_splits

REPO = Path(__file__).resolve().parents[1]


def shared_datasets() -> Path:
    """The read-only real datasets folder (../shared/datasets beside the repo, or $ONEREC_DATASETS)."""
    return Path(os.environ.get("ONEREC_DATASETS", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="module")
def one_thread():
    """Run a test module's tiny models on one torch thread: on a shared, oversubscribed CPU every
    multi-threaded op on tiny inputs stalls for milliseconds. The previous setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def datasets_dir() -> Path:
    path = shared_datasets()
    if not path.exists():
        pytest.skip(f"real datasets not found at {path} (set ONEREC_DATASETS or place ../shared/datasets)")
    return path


def cyclic_dataset(n_users: int = 60, n_items: int = 40, length: int = 12, seed: int = 0):
    """Users walk item ids upward from a random start (i -> i+1 mod N): a learnable pattern."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(n_users):
        start = rng.integers(n_items)
        for t in range(length):
            users.append(f"u{u}")
            items.append((start + t) % n_items)
            ts.append(1_650_000_000 + 3600 * t)
    inter = pa.table({"user_id": users, "item_id": items, "timestamp": ts})
    item_tab = pa.table({"raw_id": [str(i) for i in range(n_items)], "title": [f"item {i}" for i in range(n_items)]})
    return make_dataset(name="cyclic", source="test", interactions=inter, items=item_tab)


@pytest.fixture
def cyclic():
    ds = cyclic_dataset()
    return ds, make_splits(ds, protocol="loo")


def random_codes(sizes: list[int], n: int, seed: int) -> torch.Tensor:
    """n distinct codes drawn uniformly from the product of the codebooks, in random item order."""
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(math.prod(sizes), generator=g)[:n]
    digits = []
    for v in reversed(sizes):
        digits.append(flat % v)
        flat = flat // v
    return torch.stack(digits[::-1], dim=1)
