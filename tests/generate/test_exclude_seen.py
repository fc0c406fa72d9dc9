"""exclude_seen: the generator (with and without the succession prior), the baselines, eval, `onerec generate`
never return an item of the user's history when asked, still return k items where the catalogue allows, and
leave results unchanged by default."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner

from onerec.baselines import build_baseline
from onerec.cli import cli
from onerec.config import ModelConfig, SasrecConfig, load_config
from onerec.data.splits import list_column
from onerec.features import EvalExamples, HistoryFeaturizer
from onerec.features.succession import Succession
from onerec.generate.generative import GenerativeRecommender
from onerec.io import read_json, read_parquet
from onerec.model.generator import Generator
from onerec.pipeline import recommend_users, stage_data, stage_eval, stage_tokenize, stage_train


def _codes(n_items: int) -> np.ndarray:
    return np.stack([np.arange(n_items) // 8, np.arange(n_items) % 8], axis=1)


def _generator(ds, prior: Succession | None = None, **kw) -> GenerativeRecommender:
    codes = _codes(ds.n_items)
    torch.manual_seed(0)
    model = Generator(ModelConfig(d_model=32, n_heads=2, enc_layers=1, dec_layers=1, max_history=8),
                      [int(codes[:, 0].max()) + 1, 8])
    return GenerativeRecommender(model, codes, beam_size=12, prior=prior, prior_weight=2.0 if prior else 0.0, **kw)


def _check(recs: np.ndarray, examples: pa.Table, k: int, n_items: int) -> None:
    """No row holds an item of its history, items are distinct, and min(k, unseen items) come back."""
    for row, hist in zip(recs, list_column(examples, "history")):
        real = row[row >= 0]
        assert not set(real.tolist()) & set(hist.tolist())
        assert len(set(real.tolist())) == len(real) == min(k, n_items - len(set(hist.tolist())))
        assert (row[len(real):] == -1).all()


def _overlap(recs: np.ndarray, examples: pa.Table) -> int:
    return sum(len(set(r.tolist()) & set(h.tolist())) for r, h in zip(recs, list_column(examples, "history")))


@pytest.mark.parametrize("with_prior", [False, True])
@pytest.mark.parametrize("k", [10, 35])
def test_generator_excludes_the_history_and_still_returns_k(cyclic, with_prior: bool, k: int) -> None:
    ds, splits = cyclic
    test = splits["test"].drop_columns(["targets"])
    prior = Succession.from_train(splits["train"], ds.n_items) if with_prior else None
    plain = _generator(ds, prior).recommend(test, k)
    excluded = _generator(ds, prior, exclude_seen=True).recommend(test, k)
    _check(excluded, test, k, ds.n_items)
    if k == 35:  # 35 of 40 items cannot miss an 11-item history: the default does return seen items
        assert _overlap(plain, test) > 0
    # the default is the search as it was: rank() without an exclusion, the same numbers
    ex = EvalExamples(test, HistoryFeaturizer(_codes(ds.n_items), 8))
    rec = _generator(ds, prior)
    assert np.array_equal(plain, rec.rank(ex.batch(np.arange(len(ex))), k)[0])


def test_unseen_items_keep_their_order_of_the_plain_ranking(cyclic) -> None:
    """Exclusion removes items; it does not reorder the rest: the unseen items of the plain whole-beam ranking
    come first, in the same order (the beam covers every item here, so the search is exact both ways)."""
    ds, splits = cyclic
    test = splits["test"].drop_columns(["targets"]).slice(0, 8)
    rec = _generator(ds)
    rec.beam_size = ds.n_items
    plain = rec.recommend(test, ds.n_items)
    rec.exclude_seen = True
    excluded = rec.recommend(test, 10)
    for p, e, h in zip(plain, excluded, list_column(test, "history")):
        assert e.tolist() == [i for i in p.tolist() if i not in set(h.tolist())][:10]


@pytest.mark.parametrize("name", ["popular", "transitions", "sasrec"])
def test_baselines_honour_exclude_seen(cyclic, name: str) -> None:
    ds, splits = cyclic
    test = splits["test"].drop_columns(["targets"])
    sasrec = SasrecConfig(d_model=16, epochs=1, patience=1, max_len=12)
    out = {}
    for exclude in (False, True):
        rec = build_baseline(name, sasrec, exclude_seen=exclude)
        rec.fit(splits["train"], n_items=ds.n_items, valid=splits["valid"])
        out[exclude] = rec.recommend(test, 35)
    _check(out[True], test, 35, ds.n_items)
    assert _overlap(out[False], test) > 0  # the default (TIGER protocol) leaves the history in


def test_sasrec_own_setting_is_kept(cyclic) -> None:
    rec = build_baseline("sasrec", SasrecConfig(exclude_history=True))
    assert rec.cfg.exclude_history
    assert build_baseline("sasrec", SasrecConfig(), exclude_seen=True).cfg.exclude_history
    assert not build_baseline("sasrec", SasrecConfig()).cfg.exclude_history


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("exclude") / "tiny"
    cfg = load_config(preset="tiny", overrides=["train.max_steps=3"])
    for stage in (stage_data, stage_tokenize, stage_train):
        stage(run, cfg, progress=False)
    return run, cfg


def test_eval_and_generate_exclude_seen(tiny_run) -> None:
    run, cfg = tiny_run
    cfg = load_config(file=run / "config.yaml", overrides=["eval.exclude_seen=true", "eval.baselines=[popular]",
                                                             "eval.ks=[5,10]"])
    metrics = stage_eval(run, cfg, progress=False)
    assert metrics["exclude_seen"] is True and set(metrics["models"]) == {"onerec", "popular"}
    recs = read_parquet(run / "eval" / "recommendations.parquet")
    test = read_parquet(run / "data" / "split" / "test.parquet")
    hist = dict(zip(test["user_id"].to_pylist(), list_column(test, "history")))
    for user, items in zip(recs["user_id"].to_pylist(), recs["items"].to_pylist()):
        assert len(items) == 10 and not set(items) & set(hist[user].tolist())
    assert read_json(run / "metrics.json")["exclude_seen"] is True

    # onerec generate: the config default, and the flag that overrides it
    from onerec.data.schema import Dataset
    from onerec.data.splits import Sequences

    ds = Dataset.load(run / "data", validate=False)
    seq = Sequences.from_interactions(ds.interactions, ds.n_users, cfg.data.positive)
    users = ds.users["raw_id"].to_pylist()[:20]
    base = load_config(file=run / "config.yaml")
    plain = recommend_users(run, base, users, 20)
    seen = recommend_users(run, base, users, 20, exclude_seen=True)
    assert seen == recommend_users(run, load_config(file=run / "config.yaml",
                                                    overrides=["generate.exclude_seen=true"]), users, 20)
    overlap = 0
    for u, raw in enumerate(users):
        history = set(seq.items[seq.offsets[u]:seq.offsets[u + 1]].tolist())
        items = [r[0] for r in seen[raw]]
        assert len(items) == 20 and not set(items) & history
        overlap += len({r[0] for r in plain[raw]} & history)
    assert overlap > 0  # the default (generate.exclude_seen=false) still recommends seen items
    runner = CliRunner()
    flag = runner.invoke(cli, ["generate", str(run), "--user", users[0], "-k", "20", "--exclude-seen"],
                         catch_exceptions=False)
    assert flag.exit_code == 0, flag.output
    for rank, rec in enumerate(seen[users[0]], 1):
        assert f"{rank:>3}. item {rec[1] if len(rec) == 3 else rec[0]}" in flag.output
