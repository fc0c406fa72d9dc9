"""Fixtures shared by the training tests."""

import numpy as np
import pytest
import torch

from onerec.config import ModelConfig
from onerec.features import HistoryFeaturizer, TrainExamples
from onerec.model.generator import Generator
from onerec.train import train_generator
from onerec.train.checkpoint import model_meta


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


@pytest.fixture
def train_tiny(tiny_train):
    """``train_tiny(out, cfg, seed=0, **kw)``: trains a fresh tiny generator (initialised under ``seed``) with
    :func:`train_generator` into ``out`` and returns its result."""
    mcfg, sizes, ex = tiny_train

    def run(out, cfg, seed=0, **kw):
        torch.manual_seed(seed)
        return train_generator(Generator(mcfg, sizes), ex, cfg, out, meta=model_meta(mcfg, sizes), progress=False,
                               **kw)

    return run


@pytest.fixture
def scripted_scorer():
    """``scripted_scorer(scores)`` -> (score, seen): a valid scorer returning the next scripted score and
    remembering the weights it saw."""

    def make(scores):
        seen = []

        def score(model):
            seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            return scores[len(seen) - 1]

        return score, seen

    return make
