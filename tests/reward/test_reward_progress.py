"""The P-Score's training shows a bar of its steps when asked (`onerec reward` asks), and is quiet otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onerec.config import RewardConfig, SimConfig
from onerec.reward.data import exposure_splits
from onerec.reward.train import fit_variants


@pytest.mark.parametrize("log_every", [0, 5])
def test_reward_training_progress(capsys, log_every: int) -> None:
    from onerec.data.simulator import simulate

    torch.set_num_threads(1)
    ds, world = simulate(SimConfig(n_users=60, n_items=40, n_events=2000, calib_pairs=2000, n_topics=4))
    codes = np.stack([world.item_topic, np.arange(40) % 5, np.arange(40) // 5], axis=1)
    cfg = RewardConfig(d_model=8, long_len=8, short_len=4, top_k=2, tower_hidden=8, epochs=1, batch_size=256)
    splits, feat = exposure_splits(ds.interactions, ds.n_users, codes, ds.items, objectives=cfg.objectives,
                                   long_len=cfg.long_len, test_frac=0.2, pref_cap_s=60.0)
    capsys.readouterr()
    variants = {"pscore": {}, "no_can": {"can": False}}
    fit_variants(cfg, splits, feat, ds.n_users, variants=variants, log_every=log_every)
    err = capsys.readouterr().err
    steps = -(-len(splits["train"]) // cfg.batch_size)
    if not log_every:
        assert err == ""
    else:
        assert "reward pscore (1/2): 100%" in err and "reward no_can (2/2): 100%" in err
        assert f"{steps}/{steps}" in err and "loss=" in err
