"""The exploration CTR model, the policies in one harness, the random-exposure log, the replay and `onerec explore`."""

import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from onerec.cli import cli
from onerec.config import ExploreConfig
from onerec.errors import ConfigError
from onerec.explore import POLICIES, check_explore, replay_log, replay_policy, run_replay, score_candidates
from onerec.explore import replay as replay_module
from onerec.explore.model import ExplorationCTR, ItemGate
from onerec.io import read_json

CFG = ExploreConfig(events=1500, candidates=5, pool=30, block=50, d_model=8, tower_hidden=8, history=8,
                    mc_passes=4, seeds=[0])


@pytest.fixture(scope="module")
def world(explore_world):
    return explore_world


@pytest.fixture(scope="module")
def log(world):
    return replay_log(world, events=CFG.events, candidates=CFG.candidates, pool=CFG.pool, history=CFG.history, seed=0)


def _models(log):
    side = log.featurizer.side
    torch.manual_seed(0)
    return (ExplorationCTR(CFG, log.n_users, len(side.cat), side.n_cats, side.n_authors),
            ItemGate(CFG, side.n_cats, side.n_authors))


def _batch(log, n=40):
    e = np.arange(n)
    K = log.cand.shape[1]
    return log.featurizer.batch(np.repeat(log.user[e], K), log.cand[e].ravel(), np.repeat(log.ts[e], K))


def test_log_is_a_uniform_random_policy_over_a_turning_pool(world, log):
    E, K = log.cand.shape
    assert (CFG.events, CFG.candidates) == (E, K)
    assert all(len(set(row)) == K for row in log.cand.tolist())  # K distinct candidates
    assert np.bincount(log.logged, minlength=K).min() > 0.8 * E / K  # the logged one is uniform among them
    arrival = log.arrival[log.cand]
    assert (arrival <= np.arange(E)[:, None]).all()  # only items that have arrived
    assert (log.arrival[log.cand].max(axis=1) > 0).mean() > 0.5  # new items keep coming
    assert np.all(np.diff(log.ts) > 0)
    # the world's random-exposure click rate (calibrated to KuaiRand's 0.176)
    assert abs(log.rates()["click"] - 0.176) < 0.04


def test_model_mc_dropout_and_item_representation(log):
    model, gate = _models(log)
    b = _batch(log)
    x, _ = model.features(b)
    plain = model.heads(x, dropout=False)
    assert torch.equal(plain, model.heads(x, dropout=False))
    assert not torch.allclose(plain, model.heads(x, dropout=True))  # fresh masks
    passes = model.heads(x.expand(3, *x.shape), dropout=True, only=0)
    assert passes.shape == (3, x.shape[0], 1) and passes.std(dim=0).mean() > 0
    h = model.item_vec(b)
    assert torch.allclose(model(b, h), plain, atol=1e-6)
    assert not torch.allclose(model(b, h + 1.0), plain)  # h really is the input
    thr = gate(b)
    b2 = {**b, "user": torch.zeros_like(b["user"]), "hist_mask": torch.zeros_like(b["hist_mask"])}
    assert torch.equal(thr, gate(b2))  # the gate sees the item only


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_scores_every_row(log, policy):
    model, gate = _models(log)
    b = _batch(log)
    scores, share = score_candidates(policy, model, gate, b, CFG, torch.Generator().manual_seed(0))
    assert scores.shape == b["item"].shape and torch.isfinite(scores).all()
    assert (share is not None) == policy.startswith("age")


def test_age_without_a_step_is_greedy_and_the_gate_limits_exploration(log):
    model, gate = _models(log)
    b = _batch(log)
    gen = torch.Generator()
    greedy, _ = score_candidates("greedy", model, gate, b, CFG, gen)
    still, _ = score_candidates("age_ucb", model, gate, b, dataclasses.replace(CFG, age_lambda=0.0), gen)
    assert torch.allclose(still, greedy, atol=1e-6)
    big = dataclasses.replace(CFG, age_lambda=50.0, gate=False)
    torch.manual_seed(1)  # the same dropout masks for the gated and the ungated call
    moved, share = score_candidates("age_ucb", model, gate, b, big, gen)
    assert share == 1.0 and (moved > greedy + 1e-4).float().mean() > 0.9  # UCB's delta >= 0: scored up
    torch.manual_seed(1)
    gated, share = score_candidates("age_ucb", model, gate, b, dataclasses.replace(big, gate=True), gen)
    thr = torch.sigmoid(gate(b))
    kept = greedy <= thr
    assert share == pytest.approx(1.0 - kept.float().mean().item())
    assert torch.allclose(gated[kept], greedy[kept]) and torch.allclose(gated[~kept], moved[~kept])


def test_max_impressions_explores_only_fresh_items(log):
    """explore.max_impressions: where ``fresh`` is False, ucb, thompson and AGE score as greedy; where True, as
    without the cap (the same dropout masks)."""
    model, gate = _models(log)
    b = _batch(log)
    fresh = torch.arange(b["item"].shape[0]) % 3 == 0
    cfg = dataclasses.replace(CFG, age_lambda=50.0, gate=False)
    greedy, _ = score_candidates("greedy", model, gate, b, cfg, torch.Generator())
    for policy in ("ucb", "thompson", "age_ucb", "age_ts"):
        torch.manual_seed(3)
        free, _ = score_candidates(policy, model, gate, b, cfg, torch.Generator())
        torch.manual_seed(3)
        capped, share = score_candidates(policy, model, gate, b, cfg, torch.Generator(), fresh)
        assert torch.allclose(capped[~fresh], greedy[~fresh]), policy
        assert torch.allclose(capped[fresh], free[fresh]), policy
        assert not torch.allclose(free[~fresh], greedy[~fresh]), policy  # the cap is what made them greedy
        if share is not None:
            assert share == pytest.approx(fresh.float().mean().item())


def test_count_uncertainty_scores_by_each_items_showings(log):
    """explore.uncertainty=count: ucb = plain + alpha * sigma / sqrt(1 + n); thompson = plain + that spread x one
    normal draw; AGE moves h by lambda times the spread (a row shown often moves less); no dropout is read."""
    model, gate = _models(log)
    b = _batch(log)
    n = b["item"].shape[0]
    counts = torch.arange(n) % 4 * 10  # 0, 10, 20, 30 showings
    cfg = dataclasses.replace(CFG, uncertainty="count", count_sigma=0.2, ucb_alpha=2.0, gate=False,
                              age_lambda=50.0)
    greedy, _ = score_candidates("greedy", model, gate, b, cfg, torch.Generator())
    spread = 0.2 / torch.sqrt(1.0 + counts.float())
    ucb, _ = score_candidates("ucb", model, gate, b, cfg, torch.Generator(), counts=counts)
    assert torch.allclose(ucb, greedy + 2.0 * spread, atol=1e-6)
    torch.manual_seed(5)
    ts, _ = score_candidates("thompson", model, gate, b, cfg, torch.Generator(), counts=counts)
    torch.manual_seed(5)
    assert torch.allclose(ts, greedy + spread * torch.randn(n), atol=1e-6)
    age, share = score_candidates("age_ucb", model, gate, b, cfg, torch.Generator(), counts=counts)
    assert share == 1.0
    up = age - greedy
    assert (up > 0).all() and up[counts == 0].mean() > 2 * up[counts == 30].mean()  # the less shown, the more
    fresh = counts < 15  # the cap still applies
    capped, _ = score_candidates("ucb", model, gate, b, cfg, torch.Generator(), fresh, counts)
    assert torch.allclose(capped, torch.where(fresh, ucb, greedy))
    with pytest.raises(ValueError, match="counts"):
        score_candidates("ucb", model, gate, b, cfg, torch.Generator())


def test_replay_counts_an_items_accepted_events_for_max_impressions(log, monkeypatch):
    seen = []

    def first(policy, model, gate, b, cfg, gen, fresh=None, counts=None):  # always picks candidate 0
        seen.append((b["item"].numpy().copy(), fresh.numpy().copy(), counts.numpy().copy()))
        return (torch.arange(b["item"].shape[0]) % CFG.candidates == 0).float(), None

    monkeypatch.setattr(replay_module, "score_candidates", first)
    replay_policy(log, "ucb", dataclasses.replace(CFG, max_impressions=2), seed=0)
    counts = np.zeros(len(log.featurizer.side.cat), np.int64)
    for start, (items, fresh, shown) in zip(range(0, len(log), CFG.block), seen):
        assert np.array_equal(fresh, counts[items] < 2)
        assert np.array_equal(shown, counts[items])  # what explore.uncertainty=count reads
        ev = np.arange(start, min(len(log), start + CFG.block))
        np.add.at(counts, log.logged_item[ev[log.logged[ev] == 0]], 1)
    assert (counts >= 2).any()  # the cap was reached


def test_replay_counts_only_events_whose_pick_is_the_logged_item(log, monkeypatch):
    def first(policy, model, gate, b, cfg, gen, fresh=None, counts=None):  # always picks candidate 0
        n = b["item"].shape[0]
        return (torch.arange(n) % CFG.candidates == 0).float(), None

    monkeypatch.setattr(replay_module, "score_candidates", first)
    out = replay_policy(log, "greedy", CFG, seed=0)
    hit = log.logged == 0
    assert out["accepted"] == hit.sum()
    assert out["clicks"] == log.labels[hit, 0].sum() and out["long_views"] == log.labels[hit, 1].sum()
    assert out["clicks_per_1000"] == pytest.approx(1000 * log.labels[hit, 0].mean())
    assert out["curve"]["accepted"][-1] == out["accepted"]
    # the truth of the picks at every event, accepted or not: candidate 0's true probabilities
    assert out["expected_clicks_per_1000"] == pytest.approx(1000 * log.truth[:, 0, 0].mean(), rel=1e-5)
    assert out["expected_long_views_per_1000"] == pytest.approx(1000 * log.truth[:, 0, 1].mean(), rel=1e-5)


def test_replay_log_truth_is_the_worlds_expectation_and_the_logged_labels_follow_it(log, world):
    events, k = log.cand.shape
    assert log.truth.shape == (events, k, 2)
    assert np.all((log.truth >= 0) & (log.truth <= 1)) and np.all(log.truth[..., 1] <= log.truth[..., 0] + 1e-7)
    picked = log.truth[np.arange(events), log.logged]  # the logged items' truth
    # the logged responses were drawn from it: their rate agrees with its mean within sampling noise
    for j in range(2):
        p = picked[:, j].astype(np.float64)
        assert abs(log.labels[:, j].mean() - p.mean()) < 4 * np.sqrt((p * (1 - p)).sum()) / events
    # and each event's row is World.expected of its user and candidates under one current interest (the event's)
    for e in range(20):
        rows = [np.stack([world.expected(np.repeat(log.user[e], k), log.cand[e], current_topic=t)[o]
                          for o in ("click", "long_view")], axis=1) for t in range(world.cfg.n_topics)]
        assert any(np.allclose(r, log.truth[e], atol=1e-6) for r in rows)


def test_replay_learns_online_and_summarises_over_seeds(world):
    cfg = dataclasses.replace(CFG, policies=["random", "greedy", "age_ts"], seeds=[0, 1])
    out = run_replay(world, cfg)
    s = out["summary"]
    assert set(s) == {"random", "greedy", "age_ts"}
    for row in s.values():
        vals = row["clicks_per_1000"]["values"]
        assert len(vals) == 2 and row["clicks_per_1000"]["mean"] == pytest.approx(np.mean(vals))
        assert len(row["expected_clicks_per_1000"]["values"]) == 2
    assert 0.0 <= s["age_ts"]["explored_share"]["mean"] <= 1.0
    random_rate = s["random"]["clicks_per_1000"]["mean"]
    assert abs(random_rate - 1000 * np.mean([r["click"] for r in out["logged_rates"].values()])) < 60


@pytest.mark.parametrize("key,value,needle", [
    ("policies", ["greedy", "age"], r"explore\.policies"), ("candidates", 1, r"explore\.candidates"),
    ("pool", 3, r"explore\.pool"), ("dropout", 0.0, r"explore\.dropout"), ("epsilon", 1.5, r"explore\.epsilon"),
    ("max_impressions", 0, r"explore\.max_impressions"),
    ("count_sigma", 0.0, r"explore\.count_sigma"),
])
def test_bad_settings_name_the_key_and_the_fix(key, value, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        check_explore(dataclasses.replace(CFG, **{"policies": ["greedy", "ucb"], key: value}))
    assert "Fix:" in str(e.value)


def test_pool_larger_than_the_world(world):
    with pytest.raises(ConfigError, match=r"explore\.pool"):
        check_explore(dataclasses.replace(CFG, pool=10_000), world.n_items)


def test_cli_explore_runs_on_a_simulated_run(tmp_path):
    run = tmp_path / "run"
    runner = CliRunner()
    sim = ["data.sim.n_users=120", "data.sim.n_items=100", "data.sim.n_events=2000", "data.sim.calib_pairs=2000",
           "data.sim.n_topics=6"]
    res = runner.invoke(cli, ["data", "--out", str(run), "--preset", "tiny", *sim])
    assert res.exit_code == 0, res.output
    online = ["explore.online_days=2", "explore.online_initial=40", "explore.online_new_per_day=10",
              "explore.online_requests=40", "explore.online_slate=3", "explore.online_candidates=10",
              "explore.online_new_candidates=5", "explore.online_warmup=300", "explore.online_epochs=1",
              "explore.online_codebook=4", "explore.online_new_days=1", "explore.d_model=8", "explore.tower_hidden=8"]
    res = runner.invoke(cli, ["explore", str(run), "explore.events=600", "explore.pool=20", "explore.candidates=4",
                              "explore.policies=[random,age_ts]", "explore.mc_passes=3", "explore.block=50", *online])
    assert res.exit_code == 0, res.output
    assert "age_ts" in res.output and "explore online" in res.output
    metrics = read_json(run / "explore" / "metrics.json")
    assert set(metrics["replay"]["summary"]) == {"random", "age_ts"}
    assert set(metrics["online"]["summary"]) == {"none", "random", "age_ts"}
    assert metrics["online"]["summary"]["none"]["watch_time_gain"]["mean"] == 0.0
    res = runner.invoke(cli, ["explore", str(run), "explore.evaluations=[replay,onlin]"])
    assert res.exit_code != 0 and "explore.evaluations" in str(res.exception or res.output)
    res = runner.invoke(cli, ["explore", str(run), "explore.evaluations=[online]", "explore.online_days=50"])
    assert res.exit_code != 0 and "explore.online_days" in str(res.exception or res.output)
    res = runner.invoke(cli, ["explore", str(run), "explore.policies=[greedy,agets]"])
    assert res.exit_code != 0 and "explore.policies" in str(res.exception or res.output)
    res = runner.invoke(cli, ["config"])
    assert "explore.age_lambda" in res.output and "explore.online_explore_slots" in res.output
    assert "serve.explore_slots" in res.output
