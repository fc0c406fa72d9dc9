import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch

from onerec.config import RewardConfig, SimConfig
from onerec.reward.data import Positives, exposure_splits
from onerec.reward.model import CoAction, PScoreModel, hard_search, soft_search
from onerec.reward.train import VARIANTS, evaluate_pscore, load_pscore, save_pscore, train_pscore

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world_splits():
    from onerec.data.simulator import simulate

    ds, world = simulate(SimConfig(n_users=200, n_items=120, n_events=12000, calib_pairs=5000, n_topics=6))
    codes = np.stack([world.item_topic, np.arange(120) % 7, np.arange(120) // 7], axis=1)
    cfg = RewardConfig(d_model=16, long_len=24, short_len=8, top_k=4, tower_hidden=16, epochs=2, batch_size=256)
    splits, feat = exposure_splits(ds.interactions, ds.n_users, codes, ds.items, objectives=cfg.objectives,
                                   long_len=cfg.long_len, test_frac=0.2, pref_cap_s=60.0)
    return cfg, splits, feat, ds


def test_history_is_strictly_before_the_exposure():
    inter = pa.table({"user_id": [0, 0, 0, 1, 0], "item_id": [1, 2, 3, 4, 5], "timestamp": [10, 20, 20, 5, 30],
                      "long_view": [1, 1, 0, 1, 1]})
    pos = Positives.from_interactions(inter, 2)
    ends = pos.end_before(np.array([0, 0, 0, 1]), np.array([20, 21, 31, 5]))
    assert [list(pos.items[pos.offsets[u]:e]) for u, e in zip([0, 0, 0, 1], ends)] == \
        [[1], [1, 2], [1, 2, 5], []]


def test_hard_search_keeps_most_recent_same_category():
    cat = torch.tensor([[1, 2, 1, 3, 1, 2]])
    mask = torch.tensor([[False, True, True, True, True, True]])
    idx, ok = hard_search(cat, torch.tensor([1]), mask, 3)
    assert sorted(idx[0][ok[0]].tolist()) == [2, 4]  # position 0 is padding
    assert ok.sum() == 2


def test_soft_search_ignores_padding():
    scores = torch.tensor([[9.0, 1.0, 3.0, 2.0]])
    idx, ok = soft_search(scores, torch.tensor([[False, True, True, True]]), 2)
    assert idx[0].tolist() == [2, 3] and ok.all()


def test_coaction_equals_per_sample_mlp_loop():
    torch.manual_seed(0)
    unit = CoAction(5, 7, [4, 3, 2], orders=3)
    target = torch.tensor([1, 4])
    hist = torch.tensor([[0, 6, -1], [2, 2, 5]])
    mask = hist >= 0
    out = unit(target, hist, mask)
    for b in range(2):
        p = unit.target_params.weight[target[b]]
        w1, w2 = p[:12].view(4, 3), p[12:].view(3, 2)
        parts = []
        for order in (1, 2, 3):
            h1 = torch.zeros(3)
            h2 = torch.zeros(2)
            for s in range(3):
                if mask[b, s]:
                    x = unit.hist_params.weight[hist[b, s]] ** order
                    a = x @ w1
                    h1 = h1 + torch.tanh(a)
                    h2 = h2 + torch.tanh(a) @ w2
            parts += [h1, h2]
        torch.testing.assert_close(out[b], torch.cat(parts))


def test_every_variant_learns_above_chance(world_splits):
    cfg, splits, feat, ds = world_splits
    side = feat.side
    for name in ("pscore", "din"):
        vcfg = dataclasses.replace(cfg, **VARIANTS[name])
        model = PScoreModel(vcfg, ds.n_users, len(side.cat), side.n_cats, side.n_authors)
        losses = train_pscore(model, splits["train"], vcfg)
        assert np.mean(losses[-5:]) < np.mean(losses[:5])
        m = evaluate_pscore(model, splits["test"])
        assert m["click"]["auc"] > 0.55 and m["long_view"]["auc"] > 0.55
        assert 0.0 <= m["click"]["gauc"] <= 1.0
        assert ("aux" in model(splits["test"].batch(np.arange(4)))) == (name == "pscore")


def test_save_load_roundtrip(world_splits, tmp_path):
    cfg, splits, feat, ds = world_splits
    side = feat.side
    model = PScoreModel(cfg, ds.n_users, len(side.cat), side.n_cats, side.n_authors).eval()
    meta = {"n_users": ds.n_users, "n_items": len(side.cat), "n_cats": side.n_cats, "n_authors": side.n_authors}
    save_pscore(tmp_path, model, meta)
    loaded, _ = load_pscore(tmp_path)
    b = splits["test"].batch(np.arange(8))
    torch.testing.assert_close(model.predict(b)["pscore"], loaded.predict(b)["pscore"])
    # a crafted pscore.json asking for a huge model is refused from the weights' header, before allocating
    import json

    from onerec.errors import CheckpointError

    crafted = json.loads((tmp_path / "pscore.json").read_text())
    crafted["n_users"] = 10**11  # a ~TB user table
    (tmp_path / "pscore.json").write_text(json.dumps(crafted))
    with pytest.raises(CheckpointError, match=r"pscore.safetensors: key .* but .*pscore.json describes"):
        load_pscore(tmp_path)
    del crafted["n_cats"]
    (tmp_path / "pscore.json").write_text(json.dumps(crafted))
    with pytest.raises(CheckpointError, match="missing key 'n_cats'"):
        load_pscore(tmp_path)


def test_missing_objective_column_is_a_clear_error():
    from onerec.errors import DataError

    inter = pa.table({"user_id": [0], "item_id": [0], "timestamp": [1], "click": [1]})
    with pytest.raises(DataError, match="lacks"):
        exposure_splits(inter, 1, np.zeros((1, 2), np.int64), None, objectives=["click", "like"], long_len=4,
                        test_frac=0.2, pref_cap_s=60.0)


def test_authors_are_numbered_densely_whatever_their_ids():
    """A crafted or sparse author_id (here 10**12) costs one row of the author table, not 10**12."""
    from onerec.reward.data import ItemSide

    items = pa.table({"author_id": pa.array([10**12, 5, None, 5], type=pa.int64())})
    side = ItemSide.build(np.zeros((4, 2), np.int64), items)
    assert side.author.tolist() == [2, 1, 0, 1] and side.n_authors == 3
    legacy = ItemSide.build(np.zeros((3, 2), np.int64), items.slice(1), dense_authors=False)  # older models
    assert legacy.author.tolist() == [6, 0, 6] and legacy.n_authors == 7
