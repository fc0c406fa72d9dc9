"""Alignment on a tiny simulated run: the rounds, the CLI verbs and the world scoring (seconds)."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from onerec.align.loop import (
    AlignContext,
    align,
    clone_model,
    dpo_round,
    ecpo_round,
    format_shaped_reward,
    gbpo_round,
    generate_unconstrained,
)
from onerec.cli import cli
from onerec.config import load_config
from onerec.errors import ConfigError

TINY = ["data.sim.n_users=200", "data.sim.n_items=150", "data.sim.n_events=10000", "train.epochs=1",
        "train.threads=1", "reward.epochs=1", "reward.ablations=false", "align.iterations=1",
        "align.users_per_iter=24", "align.steps_per_iter=2", "align.batch_users=8", "align.beam_size=6",
        "align.eval_users=20", "generate.beam_size=8"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("align") / "run"
    runner = CliRunner()
    for args in (["data", "--out", str(run), "--preset", "tiny", *TINY], ["tokenize", str(run)],
                 ["train", str(run)], ["reward", str(run)]):
        res = runner.invoke(cli, args)
        assert res.exit_code == 0, res.output + repr(res.exception)
    return run


def _ctx(run):
    from onerec.pipeline import align_setup, run_config

    cfg = run_config(run)
    ctx, world, eval_rows, pool = align_setup(run, cfg)
    return cfg, ctx, world, eval_rows, pool


def test_reward_verb_writes_model_and_metrics(tiny_run):
    m = json.loads((tiny_run / "reward" / "metrics.json").read_text())
    assert set(m["models"]) == {"pscore"}
    assert 0.0 <= m["models"]["pscore"]["click"]["auc"] <= 1.0
    assert (tiny_run / "reward" / "pscore.safetensors").exists()


def test_align_verb_scores_before_and_after(tiny_run):
    res = CliRunner().invoke(cli, ["align", str(tiny_run), "align.method=dpo"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    m = json.loads((tiny_run / "align" / "metrics.json").read_text())
    for when in ("before", "after"):
        assert m[when]["watch_time"] > 0 and 0 <= m[when]["legality"] <= 1 and 0 < m[when]["click"] < 1
        assert 5 <= m[when]["duration"] <= 300 and 0 < m[when]["complete_play"] < m[when]["click"]
        assert 0 < m[when]["play_fraction"] <= 2  # replays: up to twice the duration
    assert (tiny_run / "align" / "model.safetensors").exists()


VARIANTS = {"gbpo-log": {"top_of": "log"}, "gbpo-pscore": {"gbpo_reward": "pscore"}}


@pytest.mark.parametrize("method", ["dpo", "ecpo", "gbpo", "gbpo-log", "gbpo-pscore"])
def test_a_round_updates_the_policy(tiny_run, method):
    cfg, ctx, _, _, pool = _ctx(tiny_run)
    before = [p.detach().clone() for p in ctx.model.parameters()]
    ac = dataclasses.replace(cfg.align, method=method.split("-")[0], **VARIANTS.get(method, {}))
    opt = torch.optim.Adam(ctx.model.parameters(), lr=1e-3)
    fn = {"dpo": dpo_round, "ecpo": ecpo_round, "gbpo": gbpo_round}[ac.method]
    stats = fn(ctx, ac, pool[:16], opt, np.random.default_rng(0))
    assert np.isfinite(stats["loss"])
    if method == "dpo":
        assert stats["pairs"] > 0 and stats["reward_best"] >= stats["reward_mean"]
    else:
        assert 0.0 <= stats["legal"] <= 1.0
    if method in ("gbpo", "gbpo-log"):  # the users responded: some rollouts played in their bucket's top quarter
        assert stats["positive"] > 0 and stats["play_s"] > 0 and 0.0 <= stats["negative"] <= 1.0
    if method == "gbpo":  # the top quarter of the round's shown rollouts (ties aside)
        assert stats["positive"] <= 0.25 * stats["legal"] + 0.02
    assert any(not torch.equal(a, b) for a, b in zip(before, ctx.model.parameters()))


def test_align_verb_runs_gbpo(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # the verb saves align.method=gbpo into the run's config: not the shared one
    res = CliRunner().invoke(cli, ["align", str(run), "align.method=gbpo", "align.iterations=2"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    m = json.loads((run / "align" / "metrics.json").read_text())
    assert m["method"] == "gbpo" and len(m["history"]) == 2
    assert all({"positive", "negative", "play_s", "legal", "loss"} <= set(h) for h in m["history"])
    assert all(np.isfinite(h["loss"]) for h in m["history"])
    for when in ("before", "after"):
        assert m[when]["watch_time"] > 0 and 0 <= m[when]["legality"] <= 1


def test_simulated_feedback_shows_only_real_items(tiny_run):
    _, ctx, _, _, pool = _ctx(tiny_run)
    rows = pool[:6]
    items = np.tile(np.arange(5), (6, 1))
    items[:, 0] = -1  # an illegal code: never shown
    fb = ctx.feedback(ctx.users[rows], items, np.random.default_rng(3))
    again = ctx.feedback(ctx.users[rows], items, np.random.default_rng(3))
    np.testing.assert_array_equal(fb["advantage"], again["advantage"])  # seeded responses
    assert np.isnan(fb["advantage"][:, 0]).all() and (fb["play_ms"][:, 0] == 0).all()
    shown = fb["advantage"][:, 1:]
    assert set(np.unique(shown)) <= {-1.0, 0.0, 1.0}
    assert 1 <= (shown == 1).sum() <= 0.25 * shown.size + 1  # the top quarter of the shown batch (ties aside)
    assert ((fb["percentile"][:, 1:] >= 0) & (fb["percentile"][:, 1:] <= 1)).all()
    # the shaping's reference is the run's logged exposures, bucketed by the world's durations
    assert sum(len(r) for r in ctx.feedback.shaping.ref.values()) == 10000


def test_gbpo_duration_reward_needs_a_world(tiny_run):
    cfg, ctx, _, _, pool = _ctx(tiny_run)
    ctx.feedback = None
    with pytest.raises(ConfigError, match="gbpo_reward=pscore"):
        align(ctx, dataclasses.replace(cfg.align, method="gbpo"), pool)


def test_align_on_a_clone_leaves_the_original(tiny_run):
    cfg, ctx, _, _, pool = _ctx(tiny_run)
    twin = AlignContext(clone_model(ctx.model), ctx.codes, ctx.requests, ctx.ranker, ctx.rank_feat,
                        ctx.train_examples, ctx.featurizer)
    ref = [p.detach().clone() for p in ctx.model.parameters()]
    hist = align(twin, cfg.align, pool)
    assert len(hist) == cfg.align.iterations
    assert all(torch.equal(a, b) for a, b in zip(ref, ctx.model.parameters()))


def test_unconstrained_generation_codes_are_in_range(tiny_run):
    _, ctx, _, eval_rows, _ = _ctx(tiny_run)
    codes = generate_unconstrained(ctx, eval_rows[:4], 5)
    assert codes.shape == (4, 5, len(ctx.sizes))
    assert (codes >= 0).all() and (codes < np.array(ctx.sizes)).all()


def test_format_reward_puts_illegal_samples_last():
    r = np.array([[0.2, np.nan, 0.5, 0.3], [np.nan, np.nan, np.nan, np.nan]])
    s = format_shaped_reward(r, -1.0)
    assert s[0, 1] < np.nanmin(r[0]) and np.isfinite(s).all()
    np.testing.assert_array_equal(s[0, [0, 2, 3]], r[0, [0, 2, 3]])
    assert np.all(s[1] == s[1, 0])  # all illegal: no preference among them


def test_config_has_documented_sections():
    cfg = load_config(preset="tiny", overrides=["align.method=dpo", "reward.gsu=hard"])
    assert cfg.align.method == "dpo" and cfg.reward.gsu == "hard"


def test_a_model_with_every_pathway_aligns(tmp_path):
    """Alignment featurizes requests as training does: full log, user and item features."""
    run = tmp_path / "run"
    runner = CliRunner()
    extra = ["model.pathways=static,short,positive,lifelong", "model.sparse_buckets=512",
             "model.behaviour_features=sid,item,author,tag,time,play,duration,label"]
    for args in (["data", "--out", str(run), "--preset", "tiny", *TINY, *extra], ["tokenize", str(run)],
                 ["train", str(run)], ["reward", str(run)], ["align", str(run), "align.method=ecpo"]):
        res = runner.invoke(cli, args)
        assert res.exit_code == 0, res.output + repr(res.exception)
    _, ctx, _, _, _ = _ctx(run)
    assert ctx.featurizer.side is not None and ctx.train_examples.f is ctx.featurizer
    batch = ctx.batch(np.arange(4))
    assert {"user_id", "short_codes", "hist_author"} <= set(batch)


@pytest.mark.parametrize("log", [False, True])
def test_align_shows_progress_only_when_asked(tiny_run, capsys, log):
    cfg, ctx, _, _, pool = _ctx(tiny_run)
    twin = AlignContext(clone_model(ctx.model), ctx.codes, ctx.requests, ctx.ranker, ctx.rank_feat,
                        ctx.train_examples, ctx.featurizer)
    ac = dataclasses.replace(cfg.align, iterations=2, steps_per_iter=2)
    capsys.readouterr()
    align(twin, ac, pool, log=log)
    out = capsys.readouterr()
    if not log:
        assert out.out == "" and out.err == ""
    else:
        assert f"align {ac.method}: 100%" in out.err and "4/4" in out.err and "loss " in out.err
        assert f"{ac.method} round 1:" in out.out + out.err and f"{ac.method} round 2:" in out.out + out.err
