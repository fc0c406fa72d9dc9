"""Fixtures shared by the training tests."""

import numpy as np
import pytest

from onerec.config import ModelConfig
from onerec.features import HistoryFeaturizer, TrainExamples


@pytest.fixture
def tiny_train(cyclic):
    """(model config, codebook sizes, train examples): a tiny generator on the cyclic dataset with
    shuffled two-level codes (8 x 5)."""
    ds, splits = cyclic
    rng = np.random.default_rng(0)
    codes = np.stack([np.arange(ds.n_items) // 5, np.arange(ds.n_items) % 5], axis=1)
    rng.shuffle(codes)
    cfg = ModelConfig(d_model=32, n_heads=2, enc_layers=1, dec_layers=1, max_history=8, dropout=0.1)
    sizes = [int(codes[:, 0].max()) + 1, int(codes[:, 1].max()) + 1]
    return cfg, sizes, TrainExamples(splits["train"], HistoryFeaturizer(codes, cfg.max_history))
