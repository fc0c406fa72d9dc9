"""The Technical Report's encoder pathways: features, leak-freedom, switches, session-wise target."""

import numpy as np
import pytest
import torch

from onerec.config import ModelConfig, SimConfig
from onerec.data.simulator import simulate
from onerec.data.splits import make_splits
from onerec.features import EvalExamples, HistoryFeaturizer, TrainExamples
from onerec.features.side import SideInfo, log_bucket
from onerec.model.generator import Generator

ALL = ["static", "short", "positive", "lifelong"]
FEATS = ["sid", "item", "author", "tag", "time", "play", "duration", "label"]


@pytest.fixture(scope="module")
def world():
    ds, _ = simulate(SimConfig(n_users=60, n_items=80, n_events=4000, n_authors=10, calib_pairs=20000, seed=1))
    splits = make_splits(ds, protocol="loo", min_positives=3)
    rng = np.random.default_rng(0)
    codes = np.stack([rng.integers(0, 4, ds.n_items), rng.integers(0, 4, ds.n_items), np.arange(ds.n_items)], 1)
    return ds, splits, codes


def _cfg(**kw):
    base = dict(d_model=32, n_heads=2, enc_layers=1, dec_layers=1, max_history=8, dropout=0.0, pathways=ALL,
                behaviour_features=FEATS, sparse_buckets=64, short_len=5, lifelong_max=500, lifelong_reps=6,
                qformer_queries=3, qformer_layers=1, pathway_mlp=True)
    return ModelConfig(**{**base, **kw})


def test_short_and_lifelong_read_only_the_log_before_the_request(world):
    ds, splits, codes = world
    side = SideInfo.from_dataset(ds)
    cfg = _cfg()
    ex = EvalExamples(splits["test"], HistoryFeaturizer(codes, cfg.max_history, side=side, cfg=cfg))
    b = ex.batch(np.arange(len(ex)))
    uid = splits["test"]["user_id"].to_numpy()
    ts = ds.interactions["timestamp"].to_numpy()
    users = ds.interactions["user_id"].to_numpy()
    items = ds.interactions["item_id"].to_numpy()
    play = ds.interactions["watch_time_ms"].to_numpy()
    for j in range(0, len(ex), 7):
        before = (users == uid[j]) & (ts < ex.request_ts[j])
        want = items[before][-5:]
        got = b["short_item"][j][b["short_mask"][j]].numpy() - 1
        np.testing.assert_array_equal(got, want)  # the last 5 behaviours of any kind, in order
        np.testing.assert_array_equal(b["short_play"][j][b["short_mask"][j]].numpy(),
                                      log_bucket(play[before][-5:] / 1000))
        life = b["life_item"][j][b["life_mask"][j]].numpy() - 1
        assert set(life) <= set(items[before]) and len(life) <= 6
        if before.sum() > 6:  # compressed: the cluster sizes add up to the behaviours seen
            assert b["life_count"][j][b["life_mask"][j]].min() >= 1
    assert b["user_cats"].shape[1] == ds.users.num_columns - 2 and (b["user_cats"] > 0).all()
    assert (b["hist_author"][b["hist_mask"]] > 0).all() and (b["hist_dur"][b["hist_mask"]] > 0).all()


def test_compress_keeps_the_most_recent_member_of_each_cluster():
    f = HistoryFeaturizer(np.zeros((1, 2), dtype=np.int64), 4)
    codes = np.array([[0, 0], [1, 0], [0, 1], [0, 0], [1, 1], [2, 0]])
    idx, size = f._compress(codes, 4)  # level 1 has 3 clusters (<= 4), level 2 has 5 (> 4)
    np.testing.assert_array_equal(idx, [3, 4, 5])  # most recent of prefix 0, 1, 2, chronological
    np.testing.assert_array_equal(size, [3, 2, 1])
    idx, size = f._compress(codes, 2)  # even level 1 has too many: keep the 2 biggest clusters
    np.testing.assert_array_equal(idx, [3, 4])
    idx, size = f._compress(codes, 10)  # fits: no compression
    np.testing.assert_array_equal(idx, np.arange(6))


@pytest.mark.parametrize("pathways", [ALL, ["positive"], ["static", "short"], ["lifelong"]])
def test_every_pathway_switch_trains_and_masks_padding(world, pathways):
    ds, splits, codes = world
    cfg = _cfg(pathways=pathways)
    feat = HistoryFeaturizer(codes, cfg.max_history, side=SideInfo.from_dataset(ds), cfg=cfg)
    tr = TrainExamples(splits["train"], feat)
    batch = tr.batch(np.arange(16))
    torch.manual_seed(0)
    model = Generator(cfg, [4, 4, ds.n_items])
    memory, mask = model.encode_batch(batch)
    lengths = {"static": 1, "short": 5, "positive": 8, "lifelong": 3}
    assert memory.shape[1] == mask.shape[1] == sum(lengths[p] for p in pathways)
    loss = model(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for n, p in model.named_parameters() if "path_type" not in n)
    model.eval()
    # content behind the positive pathway's padding does not matter
    if "positive" in pathways:
        b2 = dict(batch, hist_item=torch.where(batch["hist_mask"], batch["hist_item"], 5))
        torch.testing.assert_close(model(b2), model(batch))


def test_missing_side_information_is_padding_and_missing_keys_are_a_clear_error(world):
    ds, splits, codes = world
    cfg = _cfg()
    feat = HistoryFeaturizer(codes, cfg.max_history, cfg=cfg)  # no side info (e.g. Amazon): positive log
    b = TrainExamples(splits["train"], feat).batch(np.arange(8))
    assert (b["short_author"] == 0).all() and (b["user_cats"].shape[1] == 0)
    assert torch.isfinite(Generator(cfg, [4, 4, ds.n_items])(b))
    plain = HistoryFeaturizer(codes, cfg.max_history)  # built without the model config
    with pytest.raises(ValueError, match="static pathway"):
        Generator(cfg, [4, 4, ds.n_items]).encode_batch(TrainExamples(splits["train"], plain).batch(np.arange(4)))


def test_session_wise_target_is_the_next_m_positives(world):
    ds, splits, codes = world
    cfg = _cfg(pathways=["positive"], session_len=3)
    tr = TrainExamples(splits["train"], HistoryFeaturizer(codes, cfg.max_history, cfg=cfg))
    idx = np.arange(len(tr))
    b = tr.batch(idx)
    seqs = tr.seqs
    for j in range(0, len(tr), 11):
        t, end = tr.target_idx[j], seqs.offsets[tr.rows[j] + 1]
        n = min(3, end - t)
        np.testing.assert_array_equal(b["session"][j, :n].numpy(), codes[seqs.items[t:t + n]])
        assert b["session_mask"][j].sum() == n
    np.testing.assert_array_equal(b["session"][:, 0].numpy(), b["target"].numpy())
    torch.manual_seed(0)
    model = Generator(cfg, [4, 4, ds.n_items])
    loss = model(tr.batch(idx[:32]))
    assert torch.isfinite(loss)
    # the point-wise loss on the same batch is the session loss restricted to the first item
    point = Generator(_cfg(pathways=["positive"]), [4, 4, ds.n_items])
    point.load_state_dict({k: v[:3] if k == "dec_pos.weight" else v for k, v in model.state_dict().items()})
    first = dict(tr.batch(idx[:32]))
    first["session_mask"] = torch.zeros_like(first["session_mask"])
    first["session_mask"][:, 0] = True
    torch.testing.assert_close(model.eval()(first), point.eval()(first))


def test_pipeline_featurizer_feeds_generation_with_every_pathway(world, tmp_path):
    from onerec.generate.generative import GenerativeRecommender
    from onerec.pipeline import make_featurizer

    ds, splits, codes = world
    ds.save(tmp_path / "data")
    cfg = _cfg()
    feat = make_featurizer(tmp_path, cfg, codes)
    assert feat.side is not None and feat.side.log_offsets is not None
    assert make_featurizer(tmp_path, ModelConfig(), codes).side is None  # v0 needs no side information
    torch.manual_seed(0)
    rec = GenerativeRecommender(Generator(cfg, [4, 4, ds.n_items]), codes, beam_size=12, featurizer=feat)
    out = rec.recommend(splits["test"].drop_columns(["targets"]), k=5)
    assert out.shape == (splits["test"].num_rows, 5) and ((out >= 0) & (out < ds.n_items)).all()


def test_a_model_that_reads_side_information_refuses_the_side_less_default(world):
    from onerec.align.loop import AlignContext
    from onerec.generate.generative import GenerativeRecommender

    ds, _, codes = world
    model = Generator(_cfg(), [4, 4, ds.n_items])
    # without the run's featurizer these pathways would be fed padding, unlike in training
    with pytest.raises(ValueError, match="make_featurizer"):
        GenerativeRecommender(model, codes, beam_size=4)
    with pytest.raises(ValueError, match="make_featurizer"):
        AlignContext(model, codes, None, None, None)
    plain = _cfg(pathways=["positive"], behaviour_features=["sid", "label", "time"])
    assert GenerativeRecommender(Generator(plain, [4, 4, ds.n_items]), codes, beam_size=4).featurizer.side is None


def test_session_generation_gives_distinct_valid_items_and_matches_point_wise_first(world):
    from onerec.generate.generative import GenerativeRecommender
    from onerec.model.session import generate_sessions

    ds, splits, codes = world
    cfg = _cfg(pathways=["positive"], behaviour_features=["sid", "label", "time"], session_len=3)
    torch.manual_seed(0)
    model = Generator(cfg, [4, 4, ds.n_items]).eval()
    feat = HistoryFeaturizer(codes, cfg.max_history, cfg=cfg)
    rec = GenerativeRecommender(model, codes, beam_size=8, featurizer=feat)
    batch = EvalExamples(splits["test"], feat).batch(np.arange(10))
    sessions = generate_sessions(model, batch, rec.table, m=3, beam_size=8).numpy()
    assert sessions.shape == (10, 3) and ((sessions >= 0) & (sessions < ds.n_items)).all()
    assert all(len(set(s)) == 3 for s in sessions)
    np.testing.assert_array_equal(sessions[:, 0], rec.recommend_batch(batch, 1)[:, 0])


def test_code_tokens_flatten_each_behaviour_into_its_levels(world):
    """history_tokens=code (TIGER's flattened history): short and positive give D tokens per
    behaviour, each its code's embedding + a level embedding + the behaviour's other features."""
    ds, splits, codes = world
    cfg = _cfg(history_tokens="code")
    feat = HistoryFeaturizer(codes, cfg.max_history, side=SideInfo.from_dataset(ds), cfg=cfg)
    batch = TrainExamples(splits["train"], feat).batch(np.arange(16))
    torch.manual_seed(0)
    model = Generator(cfg, [4, 4, ds.n_items])
    tokens, mask = model.behaviour(batch, "hist", per_code=True)
    assert tokens.shape[1] == mask.shape[1] == 8 * 3
    torch.testing.assert_close(mask, batch["hist_mask"].repeat_interleave(3, dim=1))
    item, _ = model.behaviour(batch, "hist")  # one token per behaviour: all codes + the other features
    per_level = [model.codes.level(t, batch["hist_codes"][..., t]) for t in range(3)]
    others = item - sum(per_level) * batch["hist_mask"].unsqueeze(-1)
    for t in range(3):
        want = (per_level[t] + model.behaviour.level_emb.weight[t] + others) * batch["hist_mask"].unsqueeze(-1)
        torch.testing.assert_close(tokens[:, t::3], want)
    memory, memory_mask = model.encode_batch(batch)
    assert memory.shape[1] == memory_mask.shape[1] == 1 + 5 * 3 + 8 * 3 + 3  # static, short, positive, lifelong
    loss = model(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.behaviour.level_emb.weight.grad.abs().sum() > 0
    model.eval()  # content behind padding does not matter
    b2 = dict(batch, hist_codes=torch.where(batch["hist_mask"].unsqueeze(-1), batch["hist_codes"], 1))
    torch.testing.assert_close(model(b2), model(batch))
    with pytest.raises(Exception, match="add 'sid'"):
        Generator(_cfg(history_tokens="code", behaviour_features=["label"]), [4, 4, ds.n_items])


def test_succession_pathway_trains_generates_and_ignores_padded_candidates(world, tmp_path):
    from onerec.data.splits import save_splits
    from onerec.generate.generative import GenerativeRecommender
    from onerec.pipeline import make_featurizer

    ds, splits, codes = world
    ds.save(tmp_path / "data")
    save_splits(splits, tmp_path / "data" / "split")
    cfg = _cfg(pathways=["positive", "succession"], succession_len=4)
    feat = make_featurizer(tmp_path, cfg, codes)  # counts the saved train split
    assert feat.succession is not None and feat.succession.n_items == ds.n_items
    batch = TrainExamples(splits["train"], feat).batch(np.arange(32))
    assert batch["succ_codes"].shape == (32, 4, codes.shape[1]) and batch["succ_mask"].any()
    torch.manual_seed(0)
    model = Generator(cfg, [4, 4, ds.n_items])
    memory, mask = model.encode_batch(batch)
    assert memory.shape[1] == mask.shape[1] == 8 + 4
    loss = model(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.succ_count.weight.grad.abs().sum() > 0
    model.eval()
    # what stands behind a padded candidate does not matter
    pad = ~batch["succ_mask"]
    assert pad.any()
    b2 = dict(batch, succ_codes=torch.where(pad[..., None], 1, batch["succ_codes"]),
              succ_count=torch.where(pad, 3, batch["succ_count"]))
    torch.testing.assert_close(model(b2), model(batch))
    rec = GenerativeRecommender(model, codes, beam_size=12, featurizer=feat)
    out = rec.recommend(splits["test"].drop_columns(["targets"]), k=5)
    assert out.shape == (splits["test"].num_rows, 5) and ((out >= 0) & (out < ds.n_items)).all()


def test_a_pathway_type_table_saved_before_the_succession_pathway_still_loads(world):
    ds, _, _ = world
    model = Generator(_cfg(), [4, 4, ds.n_items])
    state = model.state_dict()
    old = dict(state, **{"path_type.weight": state["path_type.weight"][:4].clone()})  # 4 pathways then
    model.load_state_dict(model.upgrade_state(old))
    torch.testing.assert_close(model.path_type.weight[:4], old["path_type.weight"])


def test_succession_prior_pools_the_beam_with_the_counts_and_fuses_their_scores(world):
    from onerec.features.succession import Succession
    from onerec.generate.generative import GenerativeRecommender

    ds, splits, codes = world
    cfg = _cfg(pathways=["positive"])
    feat = HistoryFeaturizer(codes, cfg.max_history, side=SideInfo.from_dataset(ds), cfg=cfg)
    succ = Succession.from_train(splits["train"], ds.n_items)
    torch.manual_seed(0)
    model = Generator(cfg, [4, 4, ds.n_items]).eval()
    batch = EvalExamples(splits["test"], feat).batch(np.arange(24))
    with pytest.raises(ValueError, match="needs prior"):
        GenerativeRecommender(model, codes, featurizer=feat, prior_weight=1.0)
    rec = GenerativeRecommender(model, codes, beam_size=8, featurizer=feat, prior=succ, prior_weight=1.0,
                                prior_pool=6, prior_window=3, prior_decay=0.5)
    # teacher-forced log-probabilities are the beam's scores
    items, scores, _ = rec.generate(batch, 8)
    np.testing.assert_allclose(rec.log_probs(batch, items.numpy()), scores.numpy(), atol=1e-4)
    # the cached scoring (items as beams, packed left) against the plain full decoder, padding and all
    mixed = np.concatenate([items.numpy()[:, :3], np.full((len(items), 2), -1), items.numpy()[:, 5:]], 1)
    mixed[::3, 5:] = -1  # rows of different lengths
    fast, plain = rec.log_probs(batch, mixed), rec.log_probs(batch, mixed, cached=False)
    np.testing.assert_allclose(fast, plain, atol=1e-4)
    assert np.isneginf(fast[mixed < 0]).all() and np.isfinite(fast[mixed >= 0]).all()
    pool, log_p, prior = rec.pool(batch, 5)
    fused = log_p + prior
    # the fast path keeps the beam's sums and teacher-forces only the rest: the plain reference rescoring
    # every pool item gives the same pool and numbers
    ref_pool, ref_log_p, ref_prior = rec.pool(batch, 5, rescore_beam=True)
    np.testing.assert_array_equal(pool, ref_pool)
    np.testing.assert_allclose(log_p, ref_log_p, atol=1e-4)
    np.testing.assert_array_equal(prior, ref_prior)
    assert (pool[:, 8:] >= 0).any() and (pool[:, 8:] < 0).any()  # rule items outside the beam, and padding
    hist = [row[m] - 1 for row, m in zip(batch["hist_item"].numpy(), batch["hist_mask"].numpy())]
    counts = succ.scores(hist, 3, 0.5)
    for r in range(len(pool)):
        kept = pool[r][pool[r] >= 0]
        assert len(set(kept)) == len(kept) and set(items[r].tolist()) <= set(kept.tolist())
        rule = succ.candidates([hist[r]], 6, 3, 0.5)[0][0]
        assert set(rule[rule >= 0].tolist()) <= set(kept.tolist())
        np.testing.assert_allclose(prior[r][pool[r] >= 0], np.log1p(counts[r, kept]))
        assert np.isneginf(log_p[r][pool[r] < 0]).all()
    top = rec.recommend_batch(batch, 5)
    np.testing.assert_array_equal(top, np.take_along_axis(pool, np.argsort(-fused, axis=1, kind="stable")[:, :5], 1))
    # one beam per batch for every rule and weight: each ranking equals rank() under that rule and weight
    tops = rec.rank_by_priors(splits["test"].slice(0, 24), [0.5, 2.0], rules=[(3, 0.5), (10, 0.1)], k=5)
    assert sorted(tops) == [(3, 0.5, 0.5), (3, 0.5, 2.0), (10, 0.1, 0.5), (10, 0.1, 2.0)]
    for (window, decay, weight), got in tops.items():
        rec.prior_window, rec.prior_decay, rec.prior_weight = window, decay, weight
        np.testing.assert_array_equal(got, rec.recommend_batch(batch, 5))
    assert not np.array_equal(tops[3, 0.5, 2.0], tops[10, 0.1, 2.0])  # the rule matters
    # choosing on a table with targets: the best of the grid is set, ties go to the first in grid order
    grid = rec.choose_prior(splits["test"].slice(0, 24), [0.5, 2.0], [(3, 0.5), (10, 0.1)], "recall@5")
    assert list(grid) == list(tops) and (rec.prior_window, rec.prior_decay, rec.prior_weight) == max(grid, key=grid.get)
    for bad in ("mrr@10", "ndcg@0", "ndcg"):
        with pytest.raises(ValueError, match="recall@K or ndcg@K"):
            rec.choose_prior(splits["test"].slice(0, 4), [1.0], [(3, 0.5)], bad)
    rec.prior_window, rec.prior_decay = 3, 0.5
    # a heavy prior puts a most-followed item first wherever the history has a successor
    rec.prior_weight = 1e6
    heavy = rec.recommend_batch(batch, 5)
    for r in range(len(heavy)):
        if counts[r].max() > 0:
            assert counts[r, heavy[r, 0]] == counts[r].max()
