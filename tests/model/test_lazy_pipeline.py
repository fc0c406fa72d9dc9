"""``model.arch=lazy`` through the whole pipeline: trained on every position, then evaluated, generated for,
served, prior-tuned, rewarded and aligned with each method (a tiny simulated run, seconds)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from onerec.cli import cli

TINY = ["data.sim.n_users=200", "data.sim.n_items=150", "data.sim.n_events=10000", "train.epochs=1",
        "train.threads=1", "reward.epochs=1", "reward.ablations=false", "align.iterations=1",
        "align.users_per_iter=24", "align.steps_per_iter=2", "align.batch_users=8", "align.beam_size=6",
        "align.eval_users=20", "generate.beam_size=8", "eval.baselines=[popular]"]


def _ok(*args: str) -> str:
    res = CliRunner().invoke(cli, list(args))
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


@pytest.fixture(scope="module")
def lazy_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("lazy") / "run"
    _ok("data", "--out", str(run), "--preset", "tiny", *TINY, "model.arch=lazy", "model.dec_layers=2",
        "model.kv_layers=2")
    _ok("tokenize", str(run))
    _ok("train", str(run))
    return run


def test_train_uses_every_position_and_saves_a_lazy_model(lazy_run):
    from onerec.model.lazy import LazyGenerator
    from onerec.pipeline import load_generator

    meta = json.loads((lazy_run / "train" / "model.json").read_text())
    assert meta["model"]["arch"] == "lazy" and meta["train"]["objective"] == "auto"
    summary = json.loads((lazy_run / "train" / "metrics.json").read_text())
    model = load_generator(lazy_run)
    assert isinstance(model, LazyGenerator) and summary["parameters"] == model.num_parameters()
    # about batch_size targets per step: as many steps as per-prefix training would take
    assert summary["steps"] == pytest.approx(summary["examples"] / 128, abs=3)
    assert np.isfinite(summary["final_loss"]) and np.isfinite(summary["valid_loss"])


def test_eval_generate_and_tune_prior(lazy_run):
    _ok("eval", str(lazy_run))
    metrics = json.loads((lazy_run / "metrics.json").read_text())
    assert 0.0 <= metrics["models"]["onerec"]["recall@10"] <= 1.0
    from onerec.io import read_parquet
    from onerec.pipeline import raw_ids

    user = raw_ids(read_parquet(lazy_run / "data" / "users.parquet"))[0]
    assert _ok("generate", str(lazy_run), "--user", user, "-k", "5").strip()
    _ok("tune-prior", str(lazy_run), "--weights", "0,1")
    assert (lazy_run / "eval" / "prior.json").exists()


def test_service_answers_as_the_pipeline_does(lazy_run):
    pytest.importorskip("fastapi")
    from onerec.pipeline import recommend_users, run_config
    from onerec.serve import RecommendService

    cfg = run_config(lazy_run)
    service = RecommendService(lazy_run, cfg)
    users = list(service.user_index)[:3]
    got = service.recommend([service.user_query(u, 5) for u in users] + [service.history_query([3, 1, 4], 5)])
    expected = recommend_users(lazy_run, cfg, users, 5)
    assert [items for items, _ in got[:3]] == [[i for i, _, _ in expected[u]] for u in users]
    assert len(got[3][0]) == 5


@pytest.mark.parametrize("method", ["dpo", "ecpo", "gbpo"])
def test_alignment_rounds_update_the_lazy_policy(lazy_run, method):
    from onerec.align.loop import dpo_round, ecpo_round, gbpo_round
    from onerec.pipeline import align_setup, run_config

    if not (lazy_run / "reward" / "metrics.json").exists():
        _ok("reward", str(lazy_run))
    cfg = run_config(lazy_run)
    ctx, _, _, pool = align_setup(lazy_run, cfg)
    before = [p.detach().clone() for p in ctx.model.parameters()]
    opt = torch.optim.Adam(ctx.model.parameters(), lr=1e-3)
    fn = {"dpo": dpo_round, "ecpo": ecpo_round, "gbpo": gbpo_round}[method]
    stats = fn(ctx, dataclasses.replace(cfg.align, method=method), pool[:16], opt, np.random.default_rng(0))
    assert np.isfinite(stats["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, ctx.model.parameters()))


def test_every_pathway_trains_per_prefix(tmp_path):
    """Pathways beyond the positive one are per-request: auto trains them per prefix, all_positions refuses."""
    run = tmp_path / "run"
    paths = ["model.arch=lazy", "model.pathways=static,short,positive,lifelong,succession",
             "model.behaviour_features=sid,item,author,tag,time,play,duration,label", "model.sparse_buckets=256",
             "train.max_steps=3"]
    _ok("data", "--out", str(run), "--preset", "tiny", *TINY, *paths)
    _ok("tokenize", str(run))
    res = CliRunner().invoke(cli, ["train", str(run), "train.objective=all_positions"])
    assert res.exit_code != 0 and "train.objective=prefix" in res.output + str(res.exception)
    _ok("train", str(run))
    _ok("eval", str(run))
    assert 0.0 <= json.loads((run / "metrics.json").read_text())["models"]["onerec"]["recall@10"] <= 1.0
