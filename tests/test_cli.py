"""The quickstart and every stage verb, end to end on the tiny preset (seconds)."""

import json

import pytest
from click.testing import CliRunner

from onerec.cli import cli


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    _ok(CliRunner().invoke(cli, ["quickstart", "--preset", "tiny", "--out", str(run)]))
    return run


def test_quickstart_writes_a_complete_run(quick_run):
    metrics = json.loads((quick_run / "metrics.json").read_text())
    assert set(metrics["models"]) == {"onerec", "popular", "sasrec"}
    for model in metrics["models"].values():
        for k in (1, 5, 10, 20):
            assert 0.0 <= model[f"recall@{k}"] <= 1.0 and 0.0 <= model[f"ndcg@{k}"] <= model[f"recall@{k}"] + 1e-9
    for path in ("config.yaml", "report.md", "plots/training.png", "plots/metrics.png", "train/model.safetensors",
                 "train/model.json", "tokenizer/codes.parquet", "data/split/test.parquet", "data/world/world.json"):
        assert (quick_run / path).exists(), path
    assert "plots/metrics.png" in (quick_run / "report.md").read_text()


def test_stage_verbs_rerun_on_the_run_directory(quick_run):
    runner = CliRunner()
    _ok(runner.invoke(cli, ["tokenize", str(quick_run), "tokenizer.iters=5"]))
    assert "iters: 5" in (quick_run / "config.yaml").read_text()
    _ok(runner.invoke(cli, ["train", str(quick_run), "train.max_steps=6", "train.checkpoint_every=3"]))
    _ok(runner.invoke(cli, ["train", str(quick_run), "--resume", "train.max_steps=9", "train.checkpoint_every=3"]))
    res = _ok(runner.invoke(cli, ["eval", str(quick_run), "eval.baselines=[popular]"]))
    assert "recall@10" in res.output
    res = _ok(runner.invoke(cli, ["eval", str(quick_run), "eval.baselines=[]", "generate.succession_prior=2"]))
    assert "recall@10" in res.output
    import pyarrow.parquet as pq

    user = pq.read_table(quick_run / "data" / "users.parquet")["raw_id"][0].as_py()
    res = _ok(runner.invoke(cli, ["generate", str(quick_run), "--user", user, "-k", "5"]))
    assert res.output.count("item sim_v") == 5 and res.output.count("(index ") == 5  # the dataset's ids first


def test_a_killed_training_with_other_model_settings_is_named_and_the_trained_model_scored(quick_run, tmp_path):
    """A training saves RUN/config.yaml first (so --resume continues with it): killed, the config names model
    settings that RUN/train's model was not trained with. Scoring says so, scores the trained model and records
    that model's settings in RUN/eval/config.yaml."""
    import shutil

    import pyarrow.parquet as pq
    import yaml

    run = tmp_path / "run"
    shutil.copytree(quick_run, run)
    trained = yaml.safe_load((run / "train" / "config.yaml").read_text())["model"]["d_model"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["d_model"] = trained * 2  # what a killed `onerec train RUN model.d_model=...` leaves
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "train.staging").mkdir()
    user = pq.read_table(run / "data" / "users.parquet")["raw_id"][0].as_py()
    res = _ok(CliRunner().invoke(cli, ["generate", str(run), "--user", user, "-k", "3"]))
    assert (f"holds a model trained with model.d_model={trained}, and that model is what is scored here; the run's "
            f"config (with this call's overrides) has model.d_model={trained * 2} (a later training with those "
            f"settings did not finish: `onerec train {run} --resume` finishes it)") in " ".join(res.output.split())
    assert res.output.count("(index ") == 3
    shutil.rmtree(run / "train.staging")
    res = _ok(CliRunner().invoke(cli, ["eval", str(run), "eval.baselines=[]"]))
    assert f"model settings change a model only by training it again: `onerec train {run}`" in res.output
    assert yaml.safe_load((run / "eval" / "config.yaml").read_text())["model"]["d_model"] == trained
    # overriding the model settings back to the trained ones: nothing to say
    res = _ok(CliRunner().invoke(cli, ["generate", str(run), "--user", user, "-k", "3", f"model.d_model={trained}"]))
    assert "holds a model trained with" not in res.output


def test_serve_workers_name_a_model_drift_once_in_the_parent(quick_run, tmp_path, monkeypatch, capsys):
    """`serve --workers N`: the parent prints the drift note once; its N workers load the run without it."""
    import shutil

    import uvicorn
    import yaml

    from onerec.pipeline import run_config
    from onerec.serve.service import RecommendService
    from onerec.serve.workers import ENV, serve_workers

    monkeypatch.delenv(ENV, raising=False)  # serve_workers sets it for its workers: undone after the test
    run = tmp_path / "run"
    shutil.copytree(quick_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["d_model"] *= 2
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    cfg = run_config(run, overrides=["serve.workers=3"])
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(kw["workers"]))
    serve_workers(run, cfg)
    assert started == [3] and capsys.readouterr().out.count("holds a model trained with") == 1
    RecommendService(run, cfg, note_drift=False)  # what each worker builds
    assert "holds a model trained with" not in capsys.readouterr().out
    RecommendService(run, cfg)  # a single-process `onerec serve` still says it
    assert "holds a model trained with" in capsys.readouterr().out


def test_errors_are_one_clear_line(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["train", str(tmp_path / "nowhere")], standalone_mode=False)
    # the fix is the first missing stage, as a command that runs (`onerec data` needs --out)
    assert res.exception is not None and f"onerec data --out {tmp_path / 'nowhere'}`" in str(res.exception)
    _ok(runner.invoke(cli, ["data", "--out", str(tmp_path / "r"), "--preset", "tiny"]))
    res = runner.invoke(cli, ["train", str(tmp_path / "r")], standalone_mode=False)
    assert f"onerec tokenize {tmp_path / 'r'}`" in str(res.exception)
    res = runner.invoke(cli, ["data", "--out", str(tmp_path / "r"), "train.lrr=1"], standalone_mode=False)
    assert "Did you mean 'train.lr'" in str(res.exception)


def test_every_verb_has_help():
    runner = CliRunner()
    for verb in ("data", "tokenize", "train", "eval", "tune-prior", "generate", "quickstart", "config", "reward",
                 "align"):
        res = _ok(runner.invoke(cli, [verb, "--help"]))
        assert "Usage" in res.output


def test_tune_prior_chooses_on_valid_and_the_run_then_ranks_with_it(quick_run):
    """`onerec tune-prior` scores every rule x weight on the valid split, saves the best in config.yaml (which the
    other verbs read) and the grid in eval/prior.json; each grid number is what the recommender scores on those
    valid users with that prior."""
    import numpy as np

    from onerec.eval.harness import evaluate
    from onerec.pipeline import load_codes, load_recommender, load_splits, run_config, sample_rows

    runner = CliRunner()
    res = _ok(runner.invoke(cli, ["tune-prior", str(quick_run), "--weights", "0,2,1e6", "--rules", "10:0.1,3:1",
                                  "--users", "60"]))
    out = json.loads((quick_run / "eval" / "prior.json").read_text())
    metric = out["metric"]
    grid = {(r["window"], r["decay"], r["weight"]): r[metric] for r in out["grid"]}
    assert out["users"] == 60 and set(grid) == {(w, d, x) for w, d in ((10, 0.1), (3, 1.0)) for x in (0, 2, 1e6)}
    best = max(grid, key=grid.__getitem__)
    cfg = run_config(quick_run)
    g = cfg.generate
    assert (g.succession_window, g.succession_decay, g.succession_prior) == best
    assert f"generate.succession_prior={best[2]:g}" in res.output
    k = int(metric.split("@")[1])
    valid = sample_rows(load_splits(quick_run / "data" / "split", n_items=len(load_codes(quick_run)))["valid"], 60,
                        cfg.train.seed)
    rec = load_recommender(quick_run, cfg)  # the saved choice
    assert rec.prior_weight == best[2]
    for key in (best, (3, 1.0, 0.0), (10, 0.1, 1e6)):
        rec.prior_window, rec.prior_decay, rec.prior_weight = key
        np.testing.assert_allclose(evaluate(rec, valid, ks=(k,))[metric], grid[key], atol=1e-9)


def test_tune_prior_refuses_a_bad_grid_and_keeps_the_config(quick_run):
    runner = CliRunner()
    before = (quick_run / "config.yaml").read_text()
    res = runner.invoke(cli, ["tune-prior", str(quick_run), "--rules", "10-0.1"])
    assert res.exit_code == 2 and "WINDOW:DECAY" in res.output
    res = runner.invoke(cli, ["tune-prior", str(quick_run), "--weights", "-1,2"], standalone_mode=False)
    assert "-1.0 is not allowed" in str(res.exception) and "weights >= 0" in str(res.exception)
    assert (quick_run / "config.yaml").read_text() == before


def test_data_says_what_loading_normalised(tmp_path):
    """An interactions table out of (user, time) order is sorted, and `onerec data` says so (summary.json too)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from onerec.data.schema import make_dataset

    src = tmp_path / "tables"
    users, items, ts = zip(*[(f"u{u}", (u + t) % 15, 1_650_000_000 + 3600 * t) for u in range(20) for t in range(8)])
    inter = pa.table({"user_id": users, "item_id": items, "timestamp": ts})
    catalogue = pa.table({"raw_id": [str(i) for i in range(15)], "title": [f"item {i}" for i in range(15)]})
    make_dataset(name="walk", source="test", interactions=inter, items=catalogue).save(src)
    inter = pq.read_table(src / "interactions.parquet")
    pq.write_table(inter.take(list(range(inter.num_rows))[::-1]), src / "interactions.parquet")
    res = _ok(CliRunner().invoke(cli, ["data", "--out", str(tmp_path / "r"), "--preset", "tiny", "data.source=parquet",
                                       f"data.path={src}"]))
    assert "normalised: interactions sorted by (user_id, timestamp)" in res.output
    summary = json.loads((tmp_path / "r" / "data" / "summary.json").read_text())
    assert any("sorted" in note for note in summary["normalised"])


def test_config_of_a_run_and_overrides_saved_in_it(tmp_path, capsys):
    """`onerec config RUN` prints the run's resolved config (`--stage` the one a stage ran with, `--changed` only
    what differs from the defaults); a work limit saved in the run by an earlier call is announced, not silent."""
    from onerec.pipeline import run_config

    runner = CliRunner()
    run = tmp_path / "r"
    _ok(runner.invoke(cli, ["data", "--out", str(run), "--preset", "tiny", "train.max_steps=15"]))
    out = _ok(runner.invoke(cli, ["config", str(run), "--changed"])).output
    assert out.startswith(f"# {run / 'config.yaml'}") and "train.max_steps = 15  (default: None)" in out
    assert "train.lr =" not in out
    assert "data.sim.n_users = 300" in _ok(runner.invoke(cli, ["config", str(run), "--stage", "data"])).output
    res = runner.invoke(cli, ["config", str(run), "--stage", "train"])
    assert res.exit_code != 0 and "stage 'train'" in res.output
    capsys.readouterr()
    assert run_config(run, overrides=["train.epochs=1"]).train.max_steps == 15
    assert "note: train.max_steps=15 comes from" in capsys.readouterr().out
    assert run_config(run, overrides=["train.max_steps=null"]).train.max_steps is None
    assert "note:" not in capsys.readouterr().out


def test_progress_bars_written_to_a_log_update_every_30_seconds() -> None:
    """stderr a file or a pipe: TQDM_MININTERVAL set for the process (a user's own value kept); a terminal: not."""
    import io
    import subprocess
    import sys

    from onerec.cli import LOGGED_PROGRESS_INTERVAL, pace_progress_for_logs

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    env: dict[str, str] = {}
    pace_progress_for_logs(Terminal(), env)
    assert env == {}
    pace_progress_for_logs(io.StringIO(), env)
    assert env == {"TQDM_MININTERVAL": str(LOGGED_PROGRESS_INTERVAL)}
    env = {"TQDM_MININTERVAL": "2"}
    pace_progress_for_logs(io.StringIO(), env)
    assert env == {"TQDM_MININTERVAL": "2"}
    # tqdm reads TQDM_* once, when it is imported (torch imports it): main() must set the variable before that
    code = ("import io, os, sys; os.environ.pop('TQDM_MININTERVAL', None); sys.argv = ['onerec', '--version']; "
            "from onerec.cli import main; assert 'tqdm' not in sys.modules, 'onerec.cli imports tqdm'; main(); "
            "assert 'tqdm' in sys.modules; from tqdm import tqdm; print(tqdm(total=1, file=io.StringIO()).mininterval)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)  # stderr: a pipe
    assert float(out.stdout.split()[-1]) == LOGGED_PROGRESS_INTERVAL
